"""The one module that imports Numba's CUDA target.

Everything GPU-specific that is not a kernel lives here: the import itself
(a future move of the CUDA target to another package is a change to this
file only), the block size, and the handful of device-array operations the
back end needs (adopting a foreign device array, strided views, allocation,
overlap checks). They work the same on a real GPU and under the CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``), whose device arrays wrap NumPy arrays.

Numba's CUDA target ships with ``numba`` (it includes the simulator); on a
machine with a GPU, the ``numba-cuda`` package (the ``gpu`` extra) is the
maintained target and replaces ``numba.cuda`` when installed.
"""

import numpy as np
from numba import cuda

from .._cpu.compile import cast_like, cast_like_typer

#: True when kernels run in Numba's CUDA simulator (pure Python, slow).
SIMULATOR = "simulator" in cuda.device_array.__module__

#: Threads per block. Every block reduction is a shared-memory tree over this
#: many values, so results depend on it (and on the shape) only. Under the
#: simulator each thread is a Python thread: small blocks keep it fast.
THREADS = 16 if SIMULATOR else 256

def _teach_cast_like():
    """Make :func:`numbanorm._cpu.compile.cast_like` usable in CUDA kernels.

    Numba's built-in CUDA target shares the CPU's ``overload`` registry (the
    registration in ``_jit`` suffices); ``numba-cuda`` has its own typing
    registry and its own ``overload``, so the function is registered there too.
    """
    try:
        from numba.cuda.extending import overload
    except ImportError:
        return
    overload(cast_like, inline="always")(cast_like_typer)


if not SIMULATOR:
    _teach_cast_like()

#: Most blocks a grid-stride kernel launches (the loop covers the rest).
MAX_BLOCKS = 1 << 16


def blocks_for(items):
    """Blocks for a grid-stride loop over ``items`` work items."""
    return max(1, min(MAX_BLOCKS, -(-items // THREADS)))


def empty(shape, dtype):
    """An uninitialized C-contiguous device array."""
    return cuda.device_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype))


def as_device_array(a, name="x"):
    """``a`` (anything exposing ``__cuda_array_interface__``, or a simulator
    array) as a Numba device array sharing its memory.

    ``RuntimeError`` when Numba finds no usable GPU; ``TypeError`` when ``a``
    is not an array this target can use.
    """
    if getattr(type(a), "__cuda_ndarray__", False):
        return a
    if SIMULATOR:
        raise TypeError(
            f"{name} is a {type(a).__name__}; under the CUDA simulator only Numba's "
            "simulated device arrays (numba.cuda.to_device) can be used"
        )
    if not cuda.is_available():
        raise RuntimeError(
            f"{name} is a device array, but Numba finds no usable CUDA GPU "
            "(numba.cuda.is_available() is False); install the gpu extra "
            "(numba-cuda) and a matching NVIDIA driver, or pass NumPy arrays"
        )
    try:
        return cuda.as_cuda_array(a)
    except Exception as exc:
        raise TypeError(
            f"{name} exposes __cuda_array_interface__, but it could not be used: {exc!r}"
        ) from exc


def c_contiguous(a):
    """Whether device array ``a`` is C-contiguous."""
    return bool(a.is_c_contiguous())


class _Strided:
    """A ``__cuda_array_interface__`` for a strided view of ``base``'s memory;
    it holds ``base`` so the memory outlives the view."""

    def __init__(self, base, shape, strides):
        self.base = base
        data = base.__cuda_array_interface__["data"][0]
        self.__cuda_array_interface__ = {
            "shape": tuple(shape),
            "strides": tuple(strides),
            "typestr": base.dtype.str,
            "data": (data, False),
            "version": 3,
        }


def strided(a, shape, strides):
    """A view of device array ``a``'s memory with ``shape`` and byte ``strides``
    (starting at ``a``'s first element; no copy)."""
    if SIMULATOR:
        host = np.lib.stride_tricks.as_strided(a._ary, shape, strides)
        return type(a)(host)
    return cuda.as_cuda_array(_Strided(a, shape, strides))


def transpose(a, perm):
    """``a`` with its axes in the order ``perm`` (a strided view, no copy)."""
    if tuple(perm) == tuple(range(len(perm))):
        return a
    return strided(a, [a.shape[i] for i in perm], [a.strides[i] for i in perm])


def _extent(a):
    """``[first, last]`` byte addresses of device array ``a``'s elements."""
    if SIMULATOR:
        start = a._ary.__array_interface__["data"][0]
    else:
        start = a.__cuda_array_interface__["data"][0]
    low = high = start
    for n, s in zip(a.shape, a.strides):
        if n == 0:
            return None
        if s > 0:
            high += (n - 1) * s
        else:
            low += (n - 1) * s
    return low, high + a.dtype.itemsize - 1


def may_share_memory(a, b):
    """Whether two device arrays' memory extents overlap (as ``np.may_share_memory``)."""
    ea, eb = _extent(a), _extent(b)
    return ea is not None and eb is not None and ea[0] <= eb[1] and eb[0] <= ea[1]


def read_only(a):
    """Whether the device array's owner declared it read-only (CUDA array interface)."""
    if SIMULATOR:
        return not a._ary.flags.writeable
    return bool(a.__cuda_array_interface__["data"][1])
