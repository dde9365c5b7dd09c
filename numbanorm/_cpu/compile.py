"""The one place that decides how numbanorm's CPU kernels are compiled and run.

Every kernel is built by :func:`kernel`, so the project's choices are made
once:

* two builds of each kernel: ``parallel=True`` (outer loops are ``prange``
  over tasks whose number depends on the array shape only, never on the
  thread count) and a serial one for small inputs, where starting threads
  costs more than the work. Both run the same tasks in the same order, so
  they give identical results, whichever :meth:`Kernel.for_size` picks.
  A ``prange`` index is unsigned in the parallel build and signed in the
  serial one; kernels convert it (``np.int64(task)``) so that each helper it
  reaches compiles once, for both builds.
* ``cache=True``: compiled code is stored beside the module; each build's
  name, and so its cache file's, carries the fastmath flags
  (:data:`CACHE_TAG`). Where the package folder is read-only and there is
  no other cache location, kernels compile in memory (one warning).
* ``fastmath={"reassoc"}``: lets LLVM vectorize the float64 accumulations
  inside one task (a fixed order for a given shape and build). ``nnan`` and
  ``ninf`` are absent so that NaN and Inf propagate to their row, channel or
  group; so is ``contract``, which fused multiply-adds differently in a
  compiled and a cached build: kernels fuse only where they say so, with
  :func:`muladd`, and get the same bits either way.
* ``error_model="numpy"``: division by zero gives inf/nan as NumPy does.
* the threading layer: Numba's, chosen by Numba at the first parallel call.
  TBB (the ``tbb`` package, a dependency) is safe with threads and with
  ``fork``; its shared library is installed beside Python, where the loader
  does not look, so it is loaded here by path when Numba could not find it
  otherwise (:func:`_load_tbb`). Numba's own ``workqueue`` layer, its
  fallback, aborts when two threads run parallel code at once: there the
  parallel builds are run one call at a time (:meth:`Kernel.for_size`).
  Nothing here sets an environment variable or another library's option.
"""

import ctypes
import os
import sys
import threading
import types
import warnings

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit
from numba.core import types as numba_types
from numba.extending import intrinsic, overload

FASTMATH = frozenset({"reassoc"})
#: Ends the name of every kernel build, and so of its cache file: Numba's
#: cache key holds a function's bytecode and signature but not its compile
#: flags, so after a change of flags a kernel whose source did not change
#: would load code compiled under the old ones.
CACHE_TAG = "_" + "_".join(sorted(FASTMATH))

#: Inputs with fewer elements than this run the serial build of a kernel.
SERIAL_MAX_ELEMENTS = 1 << 15

#: The name of TBB's shared library that Numba's ``tbb`` layer loads.
TBB_LIBRARY = "libtbb.so.12"


def _load_tbb():
    """Load TBB's shared library from ``sys.prefix/lib`` (where the ``tbb``
    wheel puts it) when the loader cannot find it by name, so that Numba's
    default choice of threading layer, TBB first, can take it. Returns the
    path loaded, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        ctypes.CDLL(TBB_LIBRARY)
        return None  # found by name: Numba finds it too
    except OSError:
        pass
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        path = os.path.join(prefix, "lib", TBB_LIBRARY)
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return path
            except OSError:
                return None
    return None


_load_tbb()

_layer = []  # the threading layer, once the pool runs
#: Serializes the parallel builds under the ``workqueue`` layer.
_WORKQUEUE_LOCK = threading.Lock()


def threading_layer():
    """The name of the threading layer Numba runs parallel kernels on
    (``"tbb"``, ``"omp"`` or ``"workqueue"``), starting its pool if needed."""
    if not _layer:
        from numba.np.ufunc import parallel

        parallel._launch_threads()
        _layer.append(numba.threading_layer())
    return _layer[0]


_cache_warned = []


def _compile(func, parallel):
    options = dict(parallel=parallel, fastmath=set(FASTMATH), error_model="numpy", nogil=True)
    try:
        return njit(cache=True, **options)(func)
    except RuntimeError as exc:  # no writable cache location (a read-only install)
        if "cannot cache" not in str(exc):
            raise
        if not _cache_warned:
            _cache_warned.append(True)
            warnings.warn(
                f"numbanorm cannot write its compile cache ({exc}); kernels are compiled "
                "in memory in every process. Set NUMBA_CACHE_DIR to a writable folder "
                "to keep them.",
                RuntimeWarning,
                stacklevel=2,
            )
        return njit(cache=False, **options)(func)


def _renamed(func, suffix):
    """A copy of ``func`` under another qualified name.

    Numba names a function's cache file after its qualified name and line, and
    its cache key does not include ``parallel``: two builds of one function
    would share cache entries and load each other's code.
    """
    copy = types.FunctionType(
        func.__code__, func.__globals__, func.__name__ + suffix, func.__defaults__,
        func.__closure__,
    )
    copy.__qualname__ = func.__qualname__ + suffix
    copy.__doc__ = func.__doc__
    copy.__module__ = func.__module__
    return copy


class Kernel:
    """A kernel's parallel and serial builds (compiled lazily, cached on disk
    under separate names)."""

    def __init__(self, func):
        self.__wrapped__ = func
        self.__doc__ = func.__doc__
        self.parallel = _compile(_renamed(func, CACHE_TAG), parallel=True)
        self.serial = _compile(_renamed(func, "_serial" + CACHE_TAG), parallel=False)

    def for_size(self, elements):
        """The build to run for an input of ``elements`` elements."""
        if elements < SERIAL_MAX_ELEMENTS:
            return self.serial
        if threading_layer() == "workqueue":
            return self._one_at_a_time
        return self.parallel

    def _one_at_a_time(self, *args):
        with _WORKQUEUE_LOCK:
            return self.parallel(*args)


def kernel(func):
    """Compile ``func`` as a numbanorm CPU kernel (see the module docstring)."""
    return Kernel(func)


def cast_like(arr, value):
    """``value`` converted to ``arr``'s element type (usable inside kernels)."""
    return arr.dtype.type(value)


def cast_like_typer(arr, value):
    """The compiled form of :func:`cast_like` (registered for the CPU here, and
    for numba-cuda's own registry in :mod:`numbanorm._cuda.target`)."""
    dtype = arr.dtype

    def impl(arr, value):
        return dtype(value)

    return impl


overload(cast_like, inline="always")(cast_like_typer)


@intrinsic
def muladd(typingctx, a, b, c):
    """``a * b + c`` with one rounding on a machine with fused multiply-add
    (LLVM's ``llvm.fmuladd``), for three floats of one type (usable inside
    kernels): the one way a kernel fuses a multiply and an add (see the
    module docstring on ``contract``)."""
    if not (isinstance(a, numba_types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(signature.return_type)
        fnty = llvm_ir.FunctionType(ty, [ty, ty, ty])
        return builder.call(builder.module.declare_intrinsic("llvm.fmuladd", [ty], fnty), args)

    return a(a, b, c), codegen


def helper(func=None, *, inline=False):
    """Compile a loop body shared by several kernels (serial, same flags).

    Not cached on its own: each kernel that calls a helper compiles it into
    itself, so the kernel's own cache entry holds everything it runs and the
    kernel build (serial or parallel) alone decides how the helper is compiled.
    ``@helper(inline=True)`` has Numba paste the body into each caller, for a
    loop over one run or row that its caller repeats, where a call with a
    dozen array arguments costs more than a short run of work. Each pasted
    copy is typed and compiled again, so helpers run once per task, group or
    channel (allocations, scalar formulas) are plain calls.
    """
    options = dict(fastmath=set(FASTMATH), error_model="numpy", nogil=True)
    if inline:
        options["inline"] = "always"
    if func is None:
        return lambda f: njit(**options)(f)
    return njit(**options)(func)


#: Work arrays made in kernels start on a boundary of this many bytes, a
#: cache line: a 64-byte vector load from Numba's 32-byte alignment may span
#: two lines.
ALIGN_BYTES = 64


@helper
def bytes_to_boundary(buf, boundary):
    """How many bytes past the start of ``buf`` the first multiple of
    ``boundary`` is (usable inside kernels)."""
    return (-buf.ctypes.data) % boundary


@helper
def aligned_empty(n, like):
    """``np.empty(n, like.dtype)`` whose first element starts on an
    ``ALIGN_BYTES`` boundary (usable inside kernels)."""
    buf = np.empty(n + ALIGN_BYTES // like.itemsize, like.dtype)
    skip = bytes_to_boundary(buf, ALIGN_BYTES) // like.itemsize
    return buf[skip:skip + n]


@helper
def aligned_zeros(n, like):
    """:func:`aligned_empty` filled with zeros."""
    a = aligned_empty(n, like)
    a[:] = 0
    return a


@helper
def copy_into(dst, src):
    """``dst[:] = src`` for two 1-D arrays of one length, as a loop: Numba's
    slice assignment from an array compiles its shape-mismatch error message
    (string formatting, seconds of compiling once per process)."""
    for i in range(src.shape[0]):
        dst[i] = src[i]


@helper
def split_like(arr, value):
    """The float64 ``value`` as ``hi + lo``, both of ``arr``'s element type:
    ``hi`` is ``value`` rounded and ``lo`` the rest, rounded. With ``hi`` close
    to ``x``, ``(x - hi) - lo`` is ``x - value`` to the accuracy of ``x``'s
    dtype, without the cancellation of ``x - round(value)``."""
    hi = cast_like(arr, value)
    return hi, cast_like(arr, value - np.float64(hi))


#: Sums taken about a shift further than this many standard deviations from
#: their mean are taken again about the mean (they lose about the square of
#: this ratio in relative accuracy, whatever the data's first value).
RECENTER_STDS = 4.0


@helper
def far_shift(t1, t2, inv_count):
    """The mean's offset from the shift of the sums ``t1``, ``t2`` of
    ``x - shift`` and ``(x - shift)**2`` over ``1 / inv_count`` values when
    the shift lies more than ``RECENTER_STDS`` standard deviations from the
    mean, else 0.0: then a second pass about ``shift + offset`` is due."""
    m = t1 * inv_count
    var = t2 * inv_count - m * m
    if m * m > RECENTER_STDS * RECENTER_STDS * var and m == m:
        return m
    return 0.0
