"""Reuse of large output buffers.

A large array that NumPy allocates is new memory from the operating system
(glibc maps every block over 32 MiB afresh and unmaps it when freed), and the
kernel zeroes each of its pages on first touch: for a 128 MiB output that
costs a quarter of a layer norm's whole forward pass (8192x4096: 8.5 ms with
new arrays, 6.4 ms with reused ones; a plain elementwise pass takes 2.95 ms
into warm memory and 6.2 ms into a new array).

So outputs of at least :data:`REUSE_MIN_BYTES` are carved from blocks that
numbanorm keeps after the caller drops its last reference to them. A block
is handed out again only when no array, view or buffer export of it is left
(the returned array's ``base`` owns the block and gives it back when it is
garbage-collected), so no memory that the caller can still see is ever
written. At most :data:`REUSE_MAX_BYTES` are kept (the environment variable
``NUMBANORM_REUSE_BYTES`` sets it; 0 turns reuse off), and
:func:`numbanorm.release_memory` gives them all back to the system.

These large outputs start on a page (:data:`START_BYTES`), reused or not.
"""

import math
import os
import threading

import numpy as np

#: Outputs from this size on come from reusable blocks; smaller ones are plain
#: ``np.empty`` (glibc's heap already recycles them).
REUSE_MIN_BYTES = 16 << 20

#: Large outputs start on a boundary of this many bytes, a page. Where an
#: output starts within a page, next to where the inputs do, matters: a
#: store and a load 4096 bytes apart look alike to the CPU for a moment
#: (4K aliasing), so a store a few dozen bytes ahead of the inputs' loads in
#: page offset stalls the loads that follow it. Large NumPy arrays start 16
#: bytes past a page; an output on a cache line 48 bytes past one is that
#: far ahead, on a page it is 16 bytes behind (group norm 256x512x7x7
#: forward kernel, 2 threads: 2-6% slower 48 or 112 bytes ahead than 0, 16
#: or 2048 bytes behind). A page start is also a cache-line start.
START_BYTES = 4096

#: The most memory kept in free blocks at any time.
REUSE_MAX_BYTES = int(os.environ.get("NUMBANORM_REUSE_BYTES", 512 << 20))

_lock = threading.RLock()  # re-entrant: a collection inside a locked step may give a block back
_free = []  # free blocks (uint8 arrays), oldest first


def _free_bytes():
    return sum(block.nbytes for block in _free)


class _Lease:
    """Owner of one block while an array uses it: the ``base`` of the arrays
    :func:`empty` returns. When it is collected, the block goes back to the
    free list (or to the system, if the list is full)."""

    __slots__ = ("block", "__array_interface__")

    def __init__(self, block, shape, dtype):
        self.block = block
        start = block.ctypes.data
        self.__array_interface__ = {
            "shape": shape,
            "typestr": dtype.str,
            "data": (start + (-start) % START_BYTES, False),
            "version": 3,
        }

    def __del__(self):
        try:
            _give_back(self.block)
        except (TypeError, AttributeError):  # module globals gone at interpreter exit
            pass


def _give_back(block):
    """Keep ``block`` for reuse, dropping the oldest kept blocks if they leave
    no room: the block just freed is the likeliest to be asked for again (a
    list full of one workload's blocks would otherwise turn every output of
    the next into new, page-faulting memory; measured in the benchmark, after
    the 128 MiB layer-norm rows: batch norm 32x56x56x64 forward 1.26 ms
    against 0.83 ms)."""
    if block.nbytes > REUSE_MAX_BYTES:
        return
    with _lock:
        while _free and _free_bytes() + block.nbytes > REUSE_MAX_BYTES:
            del _free[0]
        _free.append(block)


def _take(nbytes):
    with _lock:
        for i, block in enumerate(_free):
            if block.nbytes == nbytes:
                del _free[i]
                return block
    return None


def empty(shape, dtype):
    """``np.empty(shape, dtype)`` (``dtype`` a ``np.dtype``); when it is large,
    from a reused block and starting on a page."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < REUSE_MIN_BYTES:
        return np.empty(shape, dtype)
    block = _take(nbytes + START_BYTES) if REUSE_MAX_BYTES > 0 else None
    if block is None:
        block = np.empty(nbytes + START_BYTES, np.uint8)
    return np.asarray(_Lease(block, tuple(shape), dtype))


def release_memory():
    """Give every kept output block back to the operating system.

    numbanorm keeps the memory of large outputs (16 MiB and more) that the
    caller has dropped, up to 512 MiB in all (environment variable
    ``NUMBANORM_REUSE_BYTES``, read at import; 0 turns this off), and hands it
    out again for the next output of the same size: a new block costs the
    operating system's zeroing of every page, a quarter of a large forward
    pass. Memory an array still uses is never reused.

    Returns
    -------
    int
        The number of bytes released.
    """
    with _lock:
        released = _free_bytes()
        _free.clear()
    return released
