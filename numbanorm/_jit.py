"""The one place that decides how numbanorm's CPU kernels are compiled.

Every kernel is built by :func:`kernel`, so the project's choices are made
once:

* ``parallel=True``: outer loops are ``prange`` over independent tasks whose
  number depends on the array shape only, never on the thread count.
* ``cache=True``: compiled code is stored beside the module, so a new process
  does not recompile.
* ``fastmath={"reassoc", "contract"}``: lets LLVM vectorize the float64
  accumulations inside one task (a fixed order for a given shape and build,
  independent of threads). ``nnan``/``ninf`` are deliberately absent: NaN and
  Inf must propagate to the row, channel or group they belong to.
* ``error_model="numpy"``: division by zero gives inf/nan as NumPy does,
  instead of raising inside a kernel.
"""

from numba import njit

FASTMATH = frozenset({"reassoc", "contract"})


def kernel(func):
    """Compile ``func`` as a parallel, cached numbanorm CPU kernel."""
    return njit(
        parallel=True,
        cache=True,
        fastmath=set(FASTMATH),
        error_model="numpy",
        nogil=True,
    )(func)
