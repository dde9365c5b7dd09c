"""The one place that decides how numbanorm's CPU kernels are compiled.

Every kernel is built by :func:`kernel`, so the project's choices are made
once:

* two builds of each kernel: ``parallel=True`` (outer loops are ``prange``
  over tasks whose number depends on the array shape only, never on the
  thread count) and a serial one for small inputs, where starting threads
  costs more than the work. Both builds run the same tasks in the same
  order, so they give identical results, whichever :func:`Kernel.for_size`
  picks. It picks by size and by what waking the thread pool costs: when its
  idle threads sleep (see below), a parallel call first waits for the kernel
  to wake them (measured here: 45 us for an empty parallel loop, 1-3 us when
  they spin), so inputs up to ``PASSIVE_SERIAL_MAX_ELEMENTS`` run serially
  (layer norm 64x4096: 79 us in parallel, 41 us serially on the AMD CI
  machine; 131 and 89 us on the Intel one).
* ``cache=True``: compiled code is stored beside the module, so a new process
  does not recompile; each build's name, and so its cache file's, carries
  the fastmath flags (:data:`CACHE_TAG`).
* ``fastmath={"reassoc"}``: lets LLVM vectorize the float64 accumulations
  inside one task (a fixed order for a given shape and build).
  ``nnan``/``ninf`` are deliberately absent: NaN and Inf must propagate to the
  row, channel or group they belong to. So is ``contract``: it lets the code
  generator fuse a multiply and an add into one instruction (one rounding
  instead of two) where it finds it worthwhile, and it decided differently
  for the code a process compiles and runs than for the object code Numba
  writes to its cache, so a process that compiled a kernel and one that
  loaded it got different bits (group norm 256x7x7x512 channels-last: 16 of
  8192 ``rstd`` values one unit in the last place apart). It costs speed
  where a float64 sum of squares bounds a loop: with ``contract``, layer
  norm 64x4096 forward was 16% faster, RMS norm 64x4096 forward 12%, layer
  and RMS norm 65536x128 forward 10-12%, weight norm 256x128x3x3 3-6%
  (alternating with a copy of the package in one process; two identical
  copies measured within 2% of each other on these rows). So kernels fuse
  where they say so, with :func:`muladd` (``llvm.fmuladd``): the vectorizer
  takes a sum of its products as a reduction, and the code generator
  decides whether to fuse it from the target, not from the code around it:
  a process that compiles the kernels and one that loads them get the same
  bits (``tests/test_contract.py``); ``llvm.fma`` left the loop scalar. In
  the row forward kernel's sum of squares and last multiply-add that won
  back most of it: layer norm 64x4096 forward 8%, RMS norm 12%, 65536x128
  8% faster than without.
* 256-bit vectors, LLVM's default on this hardware, except in the helpers
  that ask for 512 (:func:`wide_vectors`).
* ``error_model="numpy"``: division by zero gives inf/nan as NumPy does,
  instead of raising inside a kernel.
* idle kernel threads sleep instead of spinning: ``OMP_WAIT_POLICY=PASSIVE``
  is set (unless the user set it) before Numba's OpenMP pool starts, which is
  at the first parallel kernel, after this module is imported. A spinning pool
  starves NumPy's BLAS threads in the same pipeline: measured, the demo's MLP
  step with layer norm and matmuls ran 80x slower (0.78 s vs 0.010 s per epoch).
"""

import os
import time
import types

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, prange
from numba.core import types as numba_types
from numba.extending import intrinsic, overload

#: The user's own setting, before numbanorm's default (the benchmark gives it
#: back to PyTorch's separate OpenMP runtime).
USER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

FASTMATH = frozenset({"reassoc"})
#: Ends the name of every kernel build, and so of its cache file: Numba's
#: cache key holds a function's bytecode and signature but not its compile
#: flags, so after a change of flags a kernel whose source file did not
#: change (an installation updated in place) would load code compiled under
#: the old ones. With the flags in the name, it compiles anew.
CACHE_TAG = "_" + "_".join(sorted(FASTMATH))

#: Inputs with fewer elements than this run the serial build of a kernel.
SERIAL_MAX_ELEMENTS = 1 << 15
#: ... and so do inputs with fewer than this when waking the pool is slow.
PASSIVE_SERIAL_MAX_ELEMENTS = 1 << 19
#: An empty parallel loop slower than this (median of a few back-to-back
#: calls) means the pool's idle threads sleep.
SLOW_WAKE_S = 15e-6


def _compile(func, parallel):
    return njit(
        parallel=parallel,
        cache=True,
        fastmath=set(FASTMATH),
        error_model="numpy",
        nogil=True,
    )(func)


def _renamed(func, suffix):
    """A copy of ``func`` under another qualified name.

    Numba names a function's cache file after its qualified name and line, and
    its cache key does not include ``parallel``: two builds of one function
    would share cache entries and load each other's code (measured: the serial
    layer norm on 8x64 ran the parallel code, 50 us instead of 0.6 us).
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
        if elements < PASSIVE_SERIAL_MAX_ELEMENTS and pool_sleeps():
            return self.serial
        return self.parallel


def _empty_parallel_loop(a):
    for i in prange(a.shape[0]):
        a[i] += 1.0


_wake_probe = _compile(_empty_parallel_loop, parallel=True)
_pool_sleeps = []


def pool_sleeps():
    """Whether the OpenMP pool's idle threads sleep, so that each parallel call
    waits for them to wake (measured once, on first need, with an empty
    parallel loop).

    Which OpenMP runtime Numba's pool runs on, and so its wait policy, is
    fixed when the pool starts: the first library in the process to load
    libgomp (PyTorch, imported first, brings its own, whose threads spin)
    sets it for all. Measuring is the one reliable way to know.
    """
    if not _pool_sleeps:
        a = np.zeros(2)
        _wake_probe(a)  # starts the pool
        times = []
        for _ in range(5):
            t = time.perf_counter()
            _wake_probe(a)
            times.append(time.perf_counter() - t)
        _pool_sleeps.append(sorted(times)[2] > SLOW_WAKE_S)
    return _pool_sleeps[0]


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


#: The LLVM function attribute :func:`wide_vectors` sets.
PREFER_512_BIT_VECTORS = '"prefer-vector-width"="512"'


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorize the calling function's loops with 512-bit vectors
    on a CPU with AVX-512: a statement of its own, first in a
    :func:`helper` (not inlined), never in a kernel's body. Both builds of a
    kernel call the same compiled helper, so they vectorize its loops alike
    and give the same bits; in a kernel's body it would widen the whole
    serial build (whose ``prange`` body is part of the kernel function) but
    only the ``prange`` body of the parallel one (measured: channels-first
    group norm's two builds then differed in the last bits).

    LLVM's x86 targets with AVX-512 prefer 256-bit vectors (its
    ``prefer-256-bit`` tuning, for the clock drops of early AVX-512 parts),
    Numba compiles for the host with that default, and its options have no
    per-function switch; the function attribute ``prefer-vector-width``
    lifts it for one function. A function whose loops were vectorized in
    its own module keeps its width when inlined, so each helper with hot
    loops says so itself. Where there is no AVX-512 it changes nothing.
    Used where it measured faster (public function, alternating in one
    process with a copy of the package in which it does nothing; figures
    in ``docs/performance.rst``): layer and RMS norm backward 65536x128 13%
    and 25% faster, 4096x1024 7% and 11%, 64x4096 4% and 7%; channels-last
    group norm 32x56x56x64 forward 6%; group and instance norm NCHW
    32x64x56x56 backward 3-5%. Slower: layer and RMS norm 8x64 backward 7%,
    channels-last instance norm 256x7x7x512 forward 5%. Not used where it
    was slower or no faster: channels-first batch norm (256x512x7x7 forward
    12% slower, 32x64x56x56 backward 8%), the channels-first sample forward
    (instance norm 256x512x7x7: 1.50 -> 2.03 ms in a process compiled with
    512-bit vectors throughout), weight norm.

    llvmlite's ``FunctionAttributes`` accepts only LLVM's enum attributes;
    a string attribute goes into the set as it is written, and llvmlite
    prints it as is into the function's attributes. Whether the attribute
    reaches the IR and the machine code is tested
    (``tests/test_contract.py``).
    """

    def codegen(context, builder, signature, args):
        set.add(builder.function.attributes, PREFER_512_BIT_VECTORS)
        return context.get_dummy_value()

    return numba_types.none(), codegen


def helper(func=None, *, inline=False):
    """Compile a loop body shared by several kernels (serial, same flags).

    Not cached on its own: each kernel that calls a helper compiles it into
    itself, so the kernel's own cache entry holds everything it runs and the
    kernel build (serial or parallel) alone decides how the helper is compiled.
    ``@helper(inline=True)`` has Numba paste the body into each caller, for a
    helper called once per channel: a call with a dozen array arguments costs
    more than a 49-value run (instance norm 256x512x7x7 backward: 4.6 ms as a
    call per channel, 2.1 ms without one).
    """
    options = dict(fastmath=set(FASTMATH), error_model="numpy", nogil=True)
    if inline:
        options["inline"] = "always"
    if func is None:
        return lambda f: njit(**options)(f)
    return njit(**options)(func)


#: Scratch arrays made in kernels, and large outputs, start on a boundary of
#: this many bytes, a cache line: a 64-byte vector load from a 32-byte aligned
#: address (Numba's own alignment) spans two lines, and loops that read
#: per-channel coefficients paid for it (batch norm channels-last apply,
#: 256x7x7x512: 0.79 ms with 32-byte aligned coefficients, 0.57 ms with
#: 64-byte aligned ones).
ALIGN_BYTES = 64


@njit(cache=True, nogil=True)
def bytes_to_boundary(buf, boundary):
    """How many bytes past the start of ``buf`` the first multiple of
    ``boundary`` is (usable inside kernels and from Python: reading an
    array's address from Python, ``ctypes.data`` or ``__array_interface__``,
    costs 0.8-0.9 us, this call 0.2 us)."""
    return (-buf.ctypes.data) % boundary


@helper(inline=True)
def aligned_empty(n, like):
    """``np.empty(n, like.dtype)`` whose first element starts on an
    ``ALIGN_BYTES`` boundary (usable inside kernels)."""
    buf = np.empty(n + ALIGN_BYTES // like.itemsize, like.dtype)
    skip = bytes_to_boundary(buf, ALIGN_BYTES) // like.itemsize
    return buf[skip:skip + n]


@helper(inline=True)
def aligned_zeros(n, like):
    """:func:`aligned_empty` filled with zeros."""
    a = aligned_empty(n, like)
    a[:] = 0
    return a


@helper(inline=True)
def split_like(arr, value):
    """The float64 ``value`` as ``hi + lo``, both of ``arr``'s element type:
    ``hi`` is ``value`` rounded and ``lo`` the rest, rounded. With ``hi`` close
    to ``x``, ``(x - hi) - lo`` is ``x - value`` to the accuracy of ``x``'s
    dtype, without the cancellation of ``x - round(value)``."""
    hi = cast_like(arr, value)
    return hi, cast_like(arr, value - np.float64(hi))
