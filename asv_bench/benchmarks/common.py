"""Shared, seeded benchmark data: the cases of ``numbanorm.bench``.

Each asv class times numbanorm, PyTorch (same thread count) and the plain
NumPy formula on the same arrays, forward and backward separately. Data is
built and every library's first call made in ``setup`` (numbanorm's JIT
compilation, PyTorch's thread pool and allocator), so no start-up cost is
timed here (``bench_compile.py`` measures numbanorm's).
"""

import numpy as np

from numbanorm.bench import Case, import_torch

torch = import_torch()  # None without PyTorch: its rows are skipped
if torch is not None:
    torch.set_num_threads(2)

DTYPES = ["float32", "float64"]
# A small, fast grid: ``make bench`` (numbanorm.bench) runs the full shape set.
ROWS = [(8, 64), (4096, 1024)]
CONV = [(8, 256, 28, 28)]
WEIGHT = [(256, 128, 3, 3)]


class _NormBenchmark:
    """Base class (underscored so asv does not collect it): subclasses set
    ``norm``, ``params`` and ``param_names``."""

    norm = None
    timeout = 120

    def setup(self, shape, layout, dtype):
        self.case = Case(
            self.norm, layout, shape, torch, np.random.default_rng(0), np.dtype(dtype)
        )
        c = self.case
        for f in (c.ours_fwd, c.ours_bwd, c.torch_fwd, c.torch_bwd, c.numpy_fwd, c.numpy_bwd,
                  c.floor_fwd, c.floor_bwd):
            if f is not None:
                f()

    def time_numbanorm_forward(self, shape, layout, dtype):
        self.case.ours_fwd()

    def time_numbanorm_backward(self, shape, layout, dtype):
        self.case.ours_bwd()

    def time_torch_forward(self, shape, layout, dtype):
        if self.case.torch_fwd is None:
            raise NotImplementedError("PyTorch is not installed")
        self.case.torch_fwd()

    def time_torch_backward(self, shape, layout, dtype):
        if self.case.torch_bwd is None:
            raise NotImplementedError("PyTorch is not installed")
        self.case.torch_bwd()

    def time_numpy_forward(self, shape, layout, dtype):
        self.case.numpy_fwd()

    def time_numpy_backward(self, shape, layout, dtype):
        self.case.numpy_bwd()

    def time_floor_forward(self, shape, layout, dtype):
        """``np.copyto(y, x)``: the bytes a forward pass must move."""
        self.case.floor_fwd()

    def time_floor_backward(self, shape, layout, dtype):
        """``np.add(x, dy, out=dx)``: the bytes a backward pass must move."""
        self.case.floor_bwd()
