"""Measure forward accuracy at large offsets against a float64 reference.

Run ``python -m numbanorm.accuracy``: float32 data drawn from N(offset, 1),
normalized by numbanorm and (when installed) PyTorch, compared with the
float64 result of the same formula on the same float32 data. Prints the
maximum absolute error per norm and offset.
"""

import argparse

import numpy as np

import numbanorm as nn

OFFSETS = (1e2, 1e4, 1e6)


def _normalized(x, reduce):
    """float64 ``(x - mean) / sqrt(var + 1e-5)`` over the axes ``reduce``."""
    x = x.astype(np.float64)
    mean = x.mean(axis=reduce, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=reduce, keepdims=True) + 1e-5)


def _cases():
    """(name, shape, numbanorm, float64 reference, torch) per norm."""
    groups = 4
    nchw = (16, 32, 28, 28)
    return [
        ("layer_norm (256, 1024)", (256, 1024),
         lambda a: nn.layer_norm(a)[0],
         lambda a: _normalized(a, -1),
         lambda t, F: F.layer_norm(t, t.shape[-1:])),
        ("batch_norm (16, 32, 28, 28)", nchw,
         lambda a: nn.batch_norm(a)[0],
         lambda a: _normalized(a, (0, 2, 3)),
         lambda t, F: F.batch_norm(t, None, None, training=True)),
        ("group_norm, 4 groups", nchw,
         lambda a: nn.group_norm(a, groups)[0],
         lambda a: _normalized(a.reshape(nchw[0], groups, -1), -1).reshape(nchw),
         lambda t, F: F.group_norm(t, groups)),
        ("instance_norm", nchw,
         lambda a: nn.instance_norm(a)[0],
         lambda a: _normalized(a, (2, 3)),
         lambda t, F: F.instance_norm(t)),
    ]


def measure(seed=0):
    """Rows of (norm, offset, numbanorm error, PyTorch error or None)."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        torch = None
    rng = np.random.default_rng(seed)
    rows = []
    for offset in OFFSETS:
        for name, shape, ours, reference, theirs in _cases():
            x = (offset + rng.standard_normal(shape)).astype(np.float32)
            ref = reference(x)
            err = float(np.abs(ours(x) - ref).max())
            terr = None
            if torch is not None:
                terr = float(np.abs(theirs(torch.from_numpy(x), F).numpy() - ref).max())
            rows.append((name, offset, err, terr))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"{'norm':30s} {'offset':>8s} {'numbanorm':>11s} {'pytorch':>11s}")
    for name, offset, err, terr in measure(args.seed):
        t = f"{terr:11.2e}" if terr is not None else f"{'n/a':>11s}"
        print(f"{name:30s} {offset:8.0e} {err:11.2e} {t}")


if __name__ == "__main__":
    main()
