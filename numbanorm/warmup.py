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
call's time and the total: the cost a new user pays on first use. With
``--by-function`` it also lists the functions Numba compiled, by the seconds
each took itself (its nested compiles not counted): where to cut.
"""

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from numba.core import event

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


class CompileTimes(event.Listener):
    """Seconds Numba spends compiling each function, its nested compiles
    (helpers it calls) not counted: a listener on Numba's ``numba:compile``
    events, active inside ``with CompileTimes() as times:``."""

    def __init__(self):
        self.seconds = collections.Counter()
        self._open = []  # [name, start, seconds of nested compiles]

    def on_start(self, ev):
        func = getattr(ev.data.get("dispatcher"), "py_func", None)
        name = func.__qualname__ if func is not None else "?"
        self._open.append([name, time.perf_counter(), 0.0])

    def on_end(self, ev):
        name, start, nested = self._open.pop()
        took = time.perf_counter() - start
        self.seconds[name] += took - nested
        if self._open:
            self._open[-1][2] += took

    def __enter__(self):
        event.register("numba:compile", self)
        return self

    def __exit__(self, *exc):
        event.unregister("numba:compile", self)


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


def _cold(dtypes, by_function):
    """Run :func:`warm_and_report` in a fresh process with an empty cache,
    timing its ``import numbanorm`` too."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        code = (
            "import time; t = time.perf_counter(); import numbanorm; "
            "i = time.perf_counter() - t; from numbanorm.warmup import warm_and_report; "
            f"warm_and_report({list(dtypes)!r}, {by_function!r}, import_s=i)"
        )
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        print(f"process, start to end: {time.perf_counter() - start:.1f} s")


def warm_and_report(dtypes, by_function, import_s=None, progress=False):
    """:func:`warm`, then its :func:`report` (with ``import_s``, the import
    time, where the caller measured one) and, if ``by_function``, the
    compiled functions by their own compile seconds."""
    with CompileTimes() as times:
        timings = warm(dtypes, progress=progress)
    report(timings, import_s)
    if by_function:
        report_functions(times)


def report(timings, import_s=None):
    """Print the import time (if given), the slowest first calls and the total."""
    if import_s is not None:
        print(f"import numbanorm: {import_s:.2f} s")
    for label, s in sorted(timings, key=lambda t: -t[1])[:10]:
        print(f"  {s:6.2f} s  {label}")
    total = sum(s for _, s in timings)
    print(f"{len(timings)} first calls: {total:.1f} s, slowest {max(s for _, s in timings):.2f} s")


def report_functions(times, top=20):
    """Print the ``top`` functions by their own compile seconds."""
    total = sum(times.seconds.values())
    print(f"compiling, by function (its own seconds; {total:.1f} s in all):")
    for name, s in times.seconds.most_common(top):
        print(f"  {s:6.2f} s  {name}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m numbanorm.warmup", description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    p.add_argument("--cold", action="store_true",
                   help="measure compile time in a fresh process with an empty cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--by-function", action="store_true",
                   help="also list the compiled functions by their own compile time")
    args = p.parse_args(argv)
    if args.cold:
        _cold(args.dtype, args.by_function)
        return
    # numbanorm was imported with this module: only --cold can time its import.
    warm_and_report(args.dtype, args.by_function, progress=not args.quiet)


if __name__ == "__main__":
    main()
