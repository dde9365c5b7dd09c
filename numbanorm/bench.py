"""Benchmark numbanorm against PyTorch and the streaming floor: ``make bench``.

``python -m numbanorm.bench [--quick] [--only SUBSTR] [--json FILE] [--plot FILE.png]``

For every row of the standard shape set (float32), numbanorm, PyTorch (same
thread count) and the floor are timed interleaved, in one process, and the
median of each is reported:

* forward floor: ``np.copyto(y, x)`` (read x, write y);
* backward floor: ``np.add(x, dy, out=dx)`` (read x and dy, write dx).

``ratio`` is PyTorch's time over numbanorm's (> 1: numbanorm is faster);
``floor`` is the floor's time over numbanorm's (1.0: at memory bandwidth;
the floor is NumPy's single-threaded copy, so 2 threads can pass it). Both
libraries allocate their outputs.

numbanorm's kernels run on Numba's threading layer (TBB with the default
install), PyTorch's on its own OpenMP runtime; both get the same thread count.

``--device cuda`` benchmarks the GPU back end against ``torch.cuda`` on
PyTorch CUDA tensors (numbanorm reads them in place through
``__cuda_array_interface__``). Layer, RMS, batch and group norm run at
``GPU_SHAPES``, and each row is timed against a device-to-device copy of the
same bytes. Without a GPU it says so and exits cleanly.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from numbanorm._cases import calls

LN_SHAPES = [(8, 64), (64, 4096), (4096, 1024), (65536, 128), (8192, 4096)]
CONV_SHAPES = [(32, 64, 56, 56), (8, 256, 28, 28), (256, 512, 7, 7)]
WN_SHAPES = [(4096, 4096), (256, 128, 3, 3)]
GROUPS = 32
#: Seconds between two bursts (see :func:`_time`).
SETTLE_S = float(os.environ.get("BENCH_SETTLE_S", "0.05"))


def _rows():
    """(norm, layout, shape) for the standard set."""
    rows = [("layer", "rows", s) for s in LN_SHAPES]
    rows += [("rms", "rows", s) for s in LN_SHAPES]
    for norm in ("batch", "group", "instance"):
        for layout in ("nchw", "nhwc"):
            rows += [(norm, layout, s) for s in CONV_SHAPES]
    rows += [("weight", "rows", s) for s in WN_SHAPES]
    return rows


class Case:
    """Data and the three timed callables of one benchmark row and direction."""

    def __init__(self, norm, layout, shape, torch, rng, dtype=np.float32):
        self.norm, self.layout, self.shape = norm, layout, shape
        x = rng.standard_normal(shape).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        if layout == "nhwc":  # same logical NCHW tensor, channels-last memory
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            dy = np.ascontiguousarray(dy.transpose(0, 2, 3, 1))
        self.x, self.dy = x, dy
        self.y_floor = np.empty_like(x)
        c = shape[1] if norm in ("batch", "group", "instance") else shape[-1]
        self.axis = -1 if layout == "nhwc" else 1
        self.w = (1.0 + 0.1 * rng.standard_normal(c if norm != "weight" else shape[0])).astype(dtype)
        self.b = (0.1 * rng.standard_normal(c)).astype(dtype)
        self._ours()
        self._numpy()
        if torch is not None:
            self._theirs(torch)
        else:
            self.torch_fwd = self.torch_bwd = None

    # ----------------------------------------------------------- numbanorm
    def _ours(self):
        options = {"groups": GROUPS} if self.norm == "group" else {}
        if self.norm == "batch":  # the running statistics' update is timed too
            c = len(self.w)
            options = {"running_mean": np.zeros(c, np.float32), "running_var": np.ones(c, np.float32)}
        fwd, bwd = calls(self.norm, self.layout, self.x.shape, self.w, self.b, **options)
        x, dy = self.x, self.dy
        saved = fwd(x)[1]
        self.ours_fwd = lambda: fwd(x)
        self.ours_bwd = lambda: bwd(dy, x, saved)

    # ---------------------------------------------------- plain NumPy baseline
    def _numpy(self):
        """The textbook NumPy formulas, in the data's dtype."""
        x, dy, w, b, norm = self.x, self.dy, self.w, self.b, self.norm
        nd, shape = x.ndim, x.shape
        channel = nd - 1 if (self.layout != "nchw") else 1
        if norm == "weight":
            rows = shape[0]
            g = w.reshape((rows,) + (1,) * (nd - 1))
            reduce = tuple(range(1, nd))

            def fwd():
                return g * x / np.sqrt((x * x).sum(axis=reduce, keepdims=True))

            def bwd():
                norm2 = np.sqrt((x * x).sum(axis=reduce, keepdims=True))
                t = (dy * x).sum(axis=reduce, keepdims=True)
                return g / norm2 * dy - g * t / norm2**3 * x, (t / norm2).ravel()

            self.numpy_fwd, self.numpy_bwd = fwd, bwd
            return
        pshape = [1] * nd
        pshape[channel] = shape[channel]
        wb, bb = w.reshape(pshape), b.reshape(pshape)
        if norm in ("layer", "rms"):
            view, reduce = (lambda a: a), (nd - 1,)
        elif norm == "batch":
            view, reduce = (lambda a: a), tuple(i for i in range(nd) if i != channel)
        elif norm == "instance":
            view, reduce = (lambda a: a), tuple(i for i in range(1, nd) if i != channel)
        elif self.layout == "nchw":  # group
            view, reduce = (lambda a: a.reshape(shape[0], GROUPS, -1)), (2,)
        else:
            view = lambda a: a.reshape(shape[0], -1, GROUPS, shape[-1] // GROUPS)  # noqa: E731
            reduce = (1, 3)
        center = norm != "rms"
        eps = float(np.finfo(x.dtype).eps) if norm == "rms" else 1e-5  # each's default

        def stats():
            xv = view(x)
            mean = xv.mean(axis=reduce, keepdims=True) if center else 0.0
            var = ((xv - mean) ** 2).mean(axis=reduce, keepdims=True)
            return xv, mean, 1.0 / np.sqrt(var + eps)

        def fwd():
            xv, mean, rstd = stats()
            y = ((xv - mean) * rstd).reshape(shape) * wb
            return y if norm == "rms" else y + bb

        def bwd():
            xv, mean, rstd = stats()
            xhat = (xv - mean) * rstd
            g = view(dy * wb)
            mg = g.mean(axis=reduce, keepdims=True) if center else 0.0
            dx = rstd * (g - mg - xhat * (g * xhat).mean(axis=reduce, keepdims=True))
            psum = tuple(i for i in range(nd) if i != channel)
            return dx.reshape(shape), (dy * xhat.reshape(shape)).sum(axis=psum), dy.sum(axis=psum)

        self.numpy_fwd, self.numpy_bwd = fwd, bwd

    # ------------------------------------------------------------- PyTorch
    def _theirs(self, torch):
        F = torch.nn.functional
        x = torch.from_numpy(self.x)
        dy = torch.from_numpy(self.dy)
        if self.layout == "nhwc":  # a channels_last NCHW view of the same memory
            x, dy = x.permute(0, 3, 1, 2), dy.permute(0, 3, 1, 2)
        w, b = torch.from_numpy(self.w), torch.from_numpy(self.b)
        norm, shape = self.norm, self.x.shape
        if norm == "layer":
            f = lambda x, w, b: F.layer_norm(x, shape[-1:], w, b)  # noqa: E731
        elif norm == "rms":
            f = lambda x, w, b: F.rms_norm(x, shape[-1:], w)  # noqa: E731
        elif norm == "batch":
            rm, rv = torch.zeros(len(self.w), dtype=x.dtype), torch.ones(len(self.w), dtype=x.dtype)
            f = lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=True)  # noqa: E731
        elif norm == "group":
            f = lambda x, w, b: F.group_norm(x, GROUPS, w, b)  # noqa: E731
        elif norm == "instance":
            f = lambda x, w, b: F.instance_norm(x, weight=w, bias=b)  # noqa: E731
        else:
            g = w.reshape((-1,) + (1,) * (x.ndim - 1))
            f = lambda x, w, b: torch._weight_norm(x, g if w is None else w, 0)  # noqa: E731
            w = g

        def fwd():
            with torch.no_grad():
                return f(x, w, b)

        xg = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
        wg = w.detach().clone().requires_grad_(True)
        bg = b.detach().clone().requires_grad_(True)
        inputs = [xg, wg] + ([bg] if norm not in ("rms", "weight") else [])
        yg = f(xg, wg, bg)

        def bwd():
            return torch.autograd.grad(yg, inputs, dy, retain_graph=True)

        self.torch_fwd, self.torch_bwd = fwd, bwd

    def floor_fwd(self):
        np.copyto(self.y_floor, self.x)

    def floor_bwd(self):
        np.add(self.x, self.dy, out=self.y_floor)


def _time(fns, budget, burst=10, blocks=4):
    """Median seconds of each callable over about ``budget`` seconds.

    Each callable is timed in blocks of back-to-back bursts of ``burst``
    calls, with its thread pool warm, as in a program that uses only it.
    numbanorm's kernels run on TBB and PyTorch's on its own OpenMP runtime:
    a pool's idle threads spin for a while after a parallel region, so a
    library timed right after the other would share the cores with the
    other's spinning threads. Each block therefore starts after a pause of
    ``SETTLE_S`` seconds. The libraries' blocks alternate, in reversed order
    every other time; the floor (the last callable) ends every round.
    """
    live = [f for f in fns if f is not None]
    for f in live:  # warm up
        f()
    t0 = time.perf_counter()
    for f in live:
        f()
    one = max(time.perf_counter() - t0, 1e-6)
    bursts = int(min(15, max(1, budget / (one * burst * blocks))))
    samples = [[] for _ in fns]
    libraries = list(range(len(fns) - 1))
    for r in range(blocks):
        order = (libraries if r % 2 == 0 else libraries[::-1]) + [len(fns) - 1]
        for i in order:
            f = fns[i]
            if f is None:
                continue
            time.sleep(SETTLE_S)  # the other library's idle threads go to sleep
            for _ in range(burst):  # this library's threads wake up
                f()
            for _ in range(bursts * burst):
                t = time.perf_counter()
                f()
                samples[i].append(time.perf_counter() - t)
    return [float(np.median(s)) if s else None for s in samples]


def import_torch():
    """PyTorch, or None where it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def run(only=None, budget=1.0, threads=None, seed=0):
    """Time every row; returns a list of result dicts."""
    torch = import_torch()
    import numba

    threads = threads or numba.get_num_threads()
    numba.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    results = []
    for norm, layout, shape in _rows():
        label = f"{norm} {layout} {'x'.join(map(str, shape))}"
        if only and not any(o in label for o in only):
            continue
        case = Case(norm, layout, shape, torch, rng)
        for direction in ("fwd", "bwd"):
            ours = case.ours_fwd if direction == "fwd" else case.ours_bwd
            theirs = case.torch_fwd if direction == "fwd" else case.torch_bwd
            floor = case.floor_fwd if direction == "fwd" else case.floor_bwd
            t_ours, t_torch, t_floor = _time([ours, theirs, floor], budget)
            results.append({
                "norm": norm, "layout": layout, "shape": list(shape), "direction": direction,
                "numbanorm_s": t_ours, "torch_s": t_torch, "floor_s": t_floor,
                "ratio": (t_torch / t_ours) if t_torch else None,
                "floor_fraction": t_floor / t_ours,
            })
            _print_row(results[-1])
        del case
    return results


# ----------------------------------------------------- fused residual add --

#: Shapes of the fused residual rows (layer and RMS norm of ``h = x + r``).
RESIDUAL_SHAPES = [(4096, 1024), (8192, 4096)]


def run_residual(only=None, budget=1.0, seed=0):
    """Time ``norm(x, residual=r)`` and its backward with ``dh`` against
    PyTorch's composite (``h = x + r``, then the norm; autograd for the
    backward of both paths). The floor moves the bytes each pass needs:
    forward ``h = x + r`` and a write of ``y`` (``np.add``, ``fill``),
    backward ``dx = dy + dh`` and a read of ``h`` (``np.add``, ``max``)."""
    import numbanorm as nn

    torch = import_torch()
    rng = np.random.default_rng(seed)
    results = []
    for norm in ("layer", "rms"):
        for shape in RESIDUAL_SHAPES:
            label = f"{norm}+res rows {'x'.join(map(str, shape))}"
            if only and not any(o in label for o in only):
                continue
            x, r, dy, dh = (rng.standard_normal(shape, dtype=np.float32) for _ in range(4))
            w = (1 + 0.1 * rng.standard_normal(shape[-1])).astype(np.float32)
            b = (0.1 * rng.standard_normal(shape[-1])).astype(np.float32)
            params = {"weight": w, "bias": b} if norm == "layer" else {"weight": w}
            f = nn.layer_norm if norm == "layer" else nn.rms_norm
            back = nn.layer_norm_backward if norm == "layer" else nn.rms_norm_backward
            _, saved, h = f(x, residual=r, **params)
            ours_fwd = lambda: f(x, residual=r, **params)  # noqa: E731
            ours_bwd = lambda: back(dy, h, saved, weight=w, dh=dh)  # noqa: E731
            torch_fwd = torch_bwd = None
            if torch is not None:
                F = torch.nn.functional
                tx, tr, tw, tb = (torch.from_numpy(a) for a in (x, r, w, b))
                tdy, tdh = torch.from_numpy(dy), torch.from_numpy(dh)

                def composite(xx, rr, ww, bb):
                    hh = xx + rr
                    if norm == "layer":
                        return F.layer_norm(hh, shape[-1:], ww, bb), hh
                    return F.rms_norm(hh, shape[-1:], ww), hh

                def torch_fwd():
                    with torch.no_grad():
                        return composite(tx, tr, tw, tb)

                leaves = [a.clone().requires_grad_(True) for a in (tx, tr, tw)]
                yg, hg = composite(*leaves, tb)

                def torch_bwd():
                    return torch.autograd.grad((yg, hg), leaves, (tdy, tdh), retain_graph=True)

            hf, yf, dxf = np.empty_like(x), np.empty_like(x), np.empty_like(x)

            def floor_fwd():
                np.add(x, r, out=hf)
                yf.fill(0.0)

            def floor_bwd():
                np.add(dy, dh, out=dxf)
                h.max()

            for direction in ("fwd", "bwd"):
                fns = [ours_fwd, torch_fwd, floor_fwd] if direction == "fwd" else [
                    ours_bwd, torch_bwd, floor_bwd]
                t_ours, t_torch, t_floor = _time(fns, budget)
                results.append({
                    "norm": f"{norm}+res", "layout": "rows", "shape": list(shape),
                    "direction": direction, "numbanorm_s": t_ours, "torch_s": t_torch,
                    "floor_s": t_floor, "ratio": (t_torch / t_ours) if t_torch else None,
                    "floor_fraction": t_floor / t_ours,
                })
                _print_row(results[-1])
    return results


# --------------------------------------------------------------- GPU -------

GPU_ROWS = [
    ("layer", "rows", (8192, 4096)),
    ("layer", "rows", (65536, 1024)),
    ("rms", "rows", (8192, 4096)),
    ("rms", "rows", (65536, 1024)),
    ("batch", "nchw", (32, 256, 56, 56)),
    ("batch", "nhwc", (32, 256, 56, 56)),
    ("group", "nchw", (32, 256, 56, 56)),
    ("group", "nhwc", (32, 256, 56, 56)),
]


def _time_cuda(fns, sync, budget):
    """Median seconds per call of each callable, synchronizing the device
    around bursts of calls (kernel launches are asynchronous)."""
    burst = 10
    for f in fns:
        f()
    sync()
    samples = [[] for _ in fns]
    t_end = time.perf_counter() + budget * len(fns)
    while time.perf_counter() < t_end or len(samples[0]) < 5:
        for i, f in enumerate(fns):
            sync()
            t = time.perf_counter()
            for _ in range(burst):
                f()
            sync()
            samples[i].append((time.perf_counter() - t) / burst)
    return [float(np.median(s)) for s in samples]


def _gpu_case(torch, norm, layout, shape):
    """(ours_fwd, ours_bwd, torch_fwd, torch_bwd, floor_fwd, floor_bwd) on CUDA tensors."""
    F = torch.nn.functional
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(shape, device=dev, generator=g)
    dy = torch.randn(shape, device=dev, generator=g)
    if layout == "nhwc":  # numbanorm gets NHWC memory, PyTorch the channels-last NCHW view
        x = x.permute(0, 2, 3, 1).contiguous()
        dy = dy.permute(0, 2, 3, 1).contiguous()
        x_t, dy_t = x.permute(0, 3, 1, 2), dy.permute(0, 3, 1, 2)
    else:
        x_t, dy_t = x, dy
    c = shape[-1] if norm in ("layer", "rms") else shape[1]
    w = 1.0 + 0.1 * torch.randn(c, device=dev, generator=g)
    b = 0.1 * torch.randn(c, device=dev, generator=g)
    fwd, bwd = calls(norm, layout, tuple(x.shape), w, b, **({"groups": GROUPS} if norm == "group" else {}))
    ours = lambda: fwd(x)  # noqa: E731
    back = lambda s: bwd(dy, x, s)  # noqa: E731
    if norm == "layer":
        theirs = lambda xr, wr, br: F.layer_norm(xr, (c,), wr, br)  # noqa: E731
    elif norm == "rms":
        theirs = lambda xr, wr, br: F.rms_norm(xr, (c,), wr)  # noqa: E731
    elif norm == "batch":
        theirs = lambda xr, wr, br: F.batch_norm(xr, None, None, wr, br, training=True)  # noqa: E731
    else:
        theirs = lambda xr, wr, br: F.group_norm(xr, GROUPS, wr, br)  # noqa: E731
    saved = ours()[1]
    xr = x_t.detach().requires_grad_(True)
    wr = w.detach().requires_grad_(True)
    br = b.detach().requires_grad_(True)
    y_t = theirs(xr, wr, br)
    params = (xr, wr) if norm == "rms" else (xr, wr, br)
    copy_dst = torch.empty_like(x)
    return (
        ours,
        lambda: back(saved),
        lambda: theirs(x_t, w, b),
        lambda: torch.autograd.grad(y_t, params, dy_t, retain_graph=True),
        lambda: copy_dst.copy_(x),
        lambda: torch.add(x, dy, out=copy_dst),
    )


def run_cuda(only=None, budget=1.0):
    """Time the GPU rows; returns result dicts like :func:`run` (the floor is
    a device-to-device copy: read x, write y; backward: read x and dy, write dx)."""
    torch = import_torch()
    sync = torch.cuda.synchronize
    results = []
    for norm, layout, shape in GPU_ROWS:
        label = f"{norm} {layout} {'x'.join(map(str, shape))}"
        if only and not any(o in label for o in only):
            continue
        fns = _gpu_case(torch, norm, layout, shape)
        for direction, (ours, theirs, floor) in (("fwd", fns[0::2]), ("bwd", fns[1::2])):
            t_ours, t_torch, t_floor = _time_cuda([ours, theirs, floor], sync, budget)
            results.append({
                "norm": norm, "layout": layout, "shape": list(shape), "direction": direction,
                "numbanorm_s": t_ours, "torch_s": t_torch, "floor_s": t_floor,
                "ratio": t_torch / t_ours, "floor_fraction": t_floor / t_ours,
            })
            _print_row(results[-1])
        del fns
        torch.cuda.empty_cache()
    return results


def _fmt_t(t):
    if t is None:
        return "n/a"
    return f"{t * 1e3:9.3f}ms" if t >= 1e-4 else f"{t * 1e6:9.1f}us"


def _print_row(r):
    shape = "x".join(map(str, r["shape"]))
    ratio = f"{r['ratio']:6.2f}x" if r["ratio"] else "   n/a"
    print(
        f"{r['norm']:9s} {r['layout']:5s} {shape:16s} {r['direction']:3s} "
        f"{_fmt_t(r['numbanorm_s']):>11s} {_fmt_t(r['torch_s']):>11s} {ratio} "
        f"{r['floor_fraction']:6.2f}",
        flush=True,
    )


def geomean(values):
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _label(r):
    return f"{r['norm']} {r['layout']} {'x'.join(map(str, r['shape']))} {r['direction']}"


def combine(runs):
    """Rows of several runs (lists of result dicts, same rows) as
    ``[(label, [ratio per run])]``, in the first run's order."""
    ratios = {}
    for results in runs:
        for r in results:
            ratios.setdefault(_label(r), []).append(r["ratio"] or float("nan"))
    return list(ratios.items())


def print_combined(rows):
    """Each row's ratio per run and their median."""
    n = len(rows[0][1])
    print(f"{'row':40s} " + " ".join(f"run {i + 1:<3d}" for i in range(n)) + "  median")
    for label, values in rows:
        print(f"{label:40s} " + " ".join(f"{v:6.2f}x" for v in values)
              + f"  {float(np.median(values)):6.2f}x")
    medians = [float(np.median(v)) for _, v in rows]
    print(f"\ngeometric mean of the medians: {geomean(medians):.2f}x over {len(rows)} rows; "
          f"per run: " + ", ".join(f"{geomean([v[i] for _, v in rows]):.2f}x" for i in range(n)))


def plot(runs, path, title="numbanorm vs PyTorch, float32"):
    """A bar per row at the median ratio over ``runs`` (lists of result
    dicts), a line from its lowest to its highest run, and the 1.0x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    rows = combine(runs)
    labels = [label for label, _ in rows]
    values = [np.asarray(v, dtype=float) for _, v in rows]
    medians = np.array([np.median(v) for v in values])
    low = medians - np.array([v.min() for v in values])
    high = np.array([v.max() for v in values]) - medians
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(rows) + 1.6))
    colors = ["tab:green" if m >= 1 else "tab:red" for m in medians]
    y = np.arange(len(rows))
    ax.barh(y, medians, color=colors, alpha=0.8)
    if len(runs) > 1:
        ax.errorbar(medians, y, xerr=[low, high], fmt="none", ecolor="k", elinewidth=0.8,
                    capsize=2)
    ax.axvline(1.0, color="k", lw=1.2, ls="--")
    ax.set_xscale("log")
    ticks = [t for t in (0.25, 0.5, 1, 2, 3, 5, 10, 20, 50)
             if 0.5 * np.nanmin(medians - low) <= t <= 2 * np.nanmax(medians + high)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{t:g}x"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(axis="x", lw=0.4, alpha=0.5)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up over PyTorch (PyTorch time / numbanorm time); "
                  "right of the dashed line is faster")
    spread = f"\nbars: median of {len(runs)} runs; lines: lowest to highest run" if len(runs) > 1 else ""
    ax.set_title(f"{title}\ngeometric mean {geomean(medians):.2f}x{spread}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description="numbanorm vs PyTorch and the streaming floor")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--only", action="append", help="run rows whose label contains this")
    p.add_argument("--quick", action="store_true", help="shorter timing budget per row")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--plot", metavar="FILE.png")
    p.add_argument("--combine", nargs="+", metavar="RUN.json",
                   help="no timing: the --json files of several runs, their medians and chart")
    args = p.parse_args(argv)
    if args.combine:
        runs = []
        for name in args.combine:
            with open(name) as f:
                runs.append(json.load(f)["rows"])
        print_combined(combine(runs))
        if args.plot:
            plot(runs, args.plot)
        return 0
    budget = 0.3 if args.quick else 1.0
    if args.device == "cuda":
        torch = import_torch()
        if torch is None or not torch.cuda.is_available():
            print("no CUDA GPU available (torch.cuda.is_available() is False): "
                  "skipping the GPU benchmark")
            return 0
        from numba import cuda

        if not cuda.is_available():
            print("PyTorch sees a GPU but Numba does not: install the gpu extra (numba-cuda)")
            return 0
    print(f"{'norm':9s} {'lay':5s} {'shape':16s} dir {'numbanorm':>11s} {'pytorch':>11s}  ratio  floor")
    if args.device == "cuda":
        results = run_cuda(args.only, budget=budget)
    else:
        results = run(args.only, budget=budget, threads=args.threads)
    g = geomean([r["ratio"] for r in results])
    worst = min((r for r in results if r["ratio"]), key=lambda r: r["ratio"], default=None)
    print(f"\ngeometric mean speed-up over PyTorch: {g:.2f}x over {len(results)} rows")
    if worst:
        print(f"slowest row: {worst['norm']} {worst['layout']} {worst['shape']} {worst['direction']} {worst['ratio']:.2f}x")
    residual = []
    if args.device == "cpu":
        print("\nfused residual add, against PyTorch's composite (h = x + r; norm(h)):")
        residual = run_residual(args.only, budget=budget)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"geomean": g, "rows": results, "residual_rows": residual}, f, indent=1)
    if args.plot:
        plot([results], args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
