"""Compile every CPU kernel ahead of time, and measure what compiling costs.

``python -m numbanorm.warmup [--dtype float32 float64]`` runs every norm,
forward and backward, in every layout, on a small input (the serial builds)
and a large one (the parallel builds), so that Numba compiles each kernel
once and stores it in its cache. Run it when building a Docker image or
filling a CI cache: later processes load the kernels instead of compiling
them. The cache lives in ``__pycache__`` beside numbanorm's modules, or under
``NUMBA_CACHE_DIR`` when that is set.

``--cold`` runs the same calls in a fresh process with an empty cache (a
temporary ``NUMBA_CACHE_DIR``) and reports the import time, every first
call's time and the total: the cost a new user pays on first use.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

#: Inputs of each layout: a small one (below the parallel threshold) and a
#: large one (above it).
SHAPES = {
    "rows": ((4, 16), (256, 256)),
    "nchw": ((2, 4, 3, 3), (8, 16, 16, 16)),
    "nhwc": ((2, 3, 3, 4), (8, 16, 16, 16)),
}


def _calls(dtype):
    """``(label, thunk)`` for every first call a user makes, in ``dtype``."""
    from . import moments
    from ._cases import CASES, calls, param_length

    rng = np.random.default_rng(0)
    for norm, case in CASES.items():
        for layout in case.layouts:
            for size, shape in zip(("small", "large"), SHAPES[layout]):
                n = param_length(norm, shape, layout)
                w = rng.standard_normal(n).astype(dtype)
                b = rng.standard_normal(n).astype(dtype)
                forward, backward = calls(norm, layout, shape, w, b)
                x = rng.standard_normal(shape).astype(dtype)
                dy = rng.standard_normal(shape).astype(dtype)
                label = f"{norm} {layout} {size}"
                state = {}

                def fwd(forward=forward, x=x, state=state):
                    state["saved"] = forward(x)[1]

                def bwd(backward=backward, x=x, dy=dy, state=state):
                    backward(dy, x, state["saved"])

                yield f"{label} forward", fwd
                yield f"{label} backward", bwd
    for size, shape in zip(("small", "large"), SHAPES["nchw"]):
        x = rng.standard_normal(shape).astype(dtype)
        yield f"moments {size}", lambda x=x: moments(x, axis=(0, 2, 3))


def warm(dtypes, progress=True, stream=sys.stderr):
    """Run every first call in each of ``dtypes``; returns ``[(label, seconds)]``."""
    todo = [(f"{np.dtype(d).name} {label}", thunk) for d in dtypes for label, thunk in _calls(d)]
    timings = []
    for i, (label, thunk) in enumerate(todo):
        if progress:
            done = 30 * i // len(todo)
            stream.write(f"\r[{'#' * done}{'.' * (30 - done)}] {i}/{len(todo)} {label:<40}")
            stream.flush()
        start = time.perf_counter()
        thunk()
        timings.append((label, time.perf_counter() - start))
    if progress:
        stream.write(f"\r[{'#' * 30}] {len(todo)}/{len(todo)} {'done':<40}\n")
    return timings


def _cold(dtypes):
    """Run :func:`warm` in a fresh process with an empty cache; print its report."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        code = (
            "import time; t = time.perf_counter(); import numbanorm; "
            "i = time.perf_counter() - t; from numbanorm.warmup import warm, report; "
            f"report(i, warm({list(dtypes)!r}, progress=False))"
        )
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        print(f"process, start to end: {time.perf_counter() - start:.1f} s")


def report(import_s, timings):
    """Print the import time, the slowest first calls and the total."""
    print(f"import numbanorm: {import_s:.2f} s")
    for label, s in sorted(timings, key=lambda t: -t[1])[:10]:
        print(f"  {s:6.2f} s  {label}")
    total = sum(s for _, s in timings)
    print(f"{len(timings)} first calls: {total:.1f} s, slowest {max(s for _, s in timings):.2f} s")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m numbanorm.warmup", description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    p.add_argument("--cold", action="store_true",
                   help="measure compile time in a fresh process with an empty cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.cold:
        _cold(args.dtype)
        return
    start = time.perf_counter()
    import numbanorm  # noqa: F401

    report(time.perf_counter() - start, warm(args.dtype, progress=not args.quiet))


if __name__ == "__main__":
    main()
