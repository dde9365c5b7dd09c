"""Reuse of large output buffers.

A large array that NumPy allocates is new memory from the operating system
(glibc maps every block over 32 MiB afresh and unmaps it when freed), and the
kernel zeroes each of its pages on first touch: for a 128 MiB output that
costs a quarter of a layer norm's whole forward pass (8192x4096: 8.5 ms with
new arrays, 6.4 ms with reused ones; a plain elementwise pass takes 2.95 ms
into warm memory and 6.2 ms into a new array).

So outputs of at least :data:`REUSE_MIN_BYTES` are carved from blocks that
numbanorm keeps after the caller drops its last reference to them. The
output is a view of its block (its ``base``), and so is every view of it;
a block is handed out again only when nothing but numbanorm's own list
refers to it (its reference count says so), so no memory that the caller
can still see through an array, a view or a buffer export is ever written.
At most :data:`REUSE_MAX_BYTES` are kept (the environment variable
``NUMBANORM_REUSE_BYTES`` sets it; 0 turns reuse off), and
:func:`numbanorm.release_memory` gives the unused blocks back to the system.

Nothing runs when an output is dropped: the list is checked when the next
large output is asked for. An earlier version gave blocks back from a
finalizer on an owner object that NumPy read through
``__array_interface__``; handing out an output cost 30-40 us then, right
after a pass over memory (the interpreter's caches cold), against about
10 us for a view of the block.

These large outputs start on a page (:data:`START_BYTES`), reused or not.
"""

import functools
import math
import os
import sys
import threading

import numpy as np

from ._jit import ALIGN_BYTES, bytes_to_boundary

#: Outputs from this size on come from reusable blocks; smaller ones are plain
#: ``np.empty`` (glibc's heap already recycles them).
REUSE_MIN_BYTES = 16 << 20

#: Outputs from :data:`ALIGN_MIN_BYTES` to :data:`ALIGN_MAX_BYTES` start on a
#: cache line (:data:`numbanorm._jit.ALIGN_BYTES`); others below
#: :data:`REUSE_MIN_BYTES` are plain ``np.empty``. glibc starts a block 16
#: bytes past a 32-byte boundary as often as on one, and a kernel's 32-byte
#: vector stores into such an output split cache lines. That costs the
#: kernels whose data stays in L2 (weight norm 256x128x3x3 forward kernel
#: 18.9 us into an output on a cache line, 22.8 us 16 bytes past one; layer
#: norm 64x4096 forward 28.9 against 32.1 us 48 bytes past one), not those
#: that stream from L3 (group norm 8x256x28x28 forward, layer norm
#: 4096x1024 forward: no difference). Aligning takes four more steps, which
#: run with the interpreter's caches cold after a pass over memory: 1-4 us
#: on the small rows, 8 us on group norm 8x256x28x28 forward, alternating
#: in one process. So only outputs small enough to stay in L2 are aligned.
ALIGN_MIN_BYTES = 64 << 10
ALIGN_MAX_BYTES = 2 << 20

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

#: The most memory kept in blocks, in use or free (a larger output is a
#: plain array).
REUSE_MAX_BYTES = int(os.environ.get("NUMBANORM_REUSE_BYTES", 512 << 20))

_lock = threading.RLock()  # re-entrant: a collection inside a locked step may run numbanorm
#: ``[block, start]`` for each block handed out (uint8 arrays, and where the
#: output starts in them), least recently handed out first.
_blocks = []


def _refcounts(entries):
    """The reference counts of the entries' blocks, as this function sees them."""
    return [sys.getrefcount(entry[0]) for entry in entries]


#: What :func:`_refcounts` reports for a block only the list refers to
#: (measured, not assumed: the interpreter decides how many references its
#: own frames hold); :func:`_take`'s loop reads the count with the same
#: expression, ``sys.getrefcount(entry[0])`` (``tests/test_buffers.py``
#: checks that a dropped block is reused and a block in use is not).
_UNUSED = _refcounts([[np.empty(0, np.uint8), 0]])[0]


def _new_block(nbytes):
    """A new block of ``nbytes`` as ``[block, start]``, ``start`` the offset of
    its first page boundary."""
    block = np.empty(nbytes, np.uint8)
    return [block, bytes_to_boundary(block, START_BYTES)]


def _take(nbytes):
    """A block of ``nbytes`` that nothing uses, reused or new, as ``[block, start]``.

    The block handed out last comes first: a runner called again takes it
    back (its pages are the likeliest to be in cache), and with the
    interpreter's caches cold after a pass over memory each step is slow
    (measured after a 48 MiB pass: the lock 16 us, a loop over the list 21
    us, an array's ``nbytes`` 7 us; the whole step took 46-51 us with a
    scan of every block's reference count, 31 us so). Blocks are 1-D bytes,
    so ``len`` is their size."""
    with _lock:
        last = i = len(_blocks) - 1
        while i >= 0:
            entry = _blocks[i]
            if len(entry[0]) == nbytes and sys.getrefcount(entry[0]) == _UNUSED:
                if i != last:  # the list runs from least to most recently handed out
                    del _blocks[i]
                    _blocks.append(entry)
                return entry
            i -= 1
        counts = _refcounts(_blocks)
        entry = _new_block(nbytes)
        if nbytes > REUSE_MAX_BYTES:
            return entry
        # Room for it: drop unused blocks, the least recently handed out first
        # (a list full of one workload's blocks would otherwise turn every
        # output of the next into new, page-faulting memory; measured in the
        # benchmark after the 128 MiB layer-norm rows: batch norm 32x56x56x64
        # forward 1.26 ms against 0.83 ms).
        kept = sum(e[0].nbytes for e in _blocks)
        for e, count in zip(list(_blocks), counts):
            if kept + nbytes <= REUSE_MAX_BYTES:
                break
            if count == _UNUSED:
                _blocks.remove(e)
                kept -= e[0].nbytes
        if kept + nbytes <= REUSE_MAX_BYTES:
            _blocks.append(entry)
        return entry


def reuses(nbytes, min_bytes=None):
    """Whether an array of ``nbytes`` comes from a reused block in
    :func:`empty_maker` (``min_bytes`` as there)."""
    return nbytes >= (REUSE_MIN_BYTES if min_bytes is None else min_bytes)


def empty_maker(shape, dtype, min_bytes=None):
    """The function of no arguments that gives ``np.empty(shape, dtype)``
    (``dtype`` a ``np.dtype``); when it has at least ``min_bytes`` (default
    :data:`REUSE_MIN_BYTES`), a view of a reused block, starting on a page;
    from :data:`ALIGN_MIN_BYTES` to :data:`ALIGN_MAX_BYTES`, a view of a new
    array, starting on a cache line.

    A runner makes it once per signature: with the interpreter's caches cold
    after a pass over memory, each NumPy or ``math`` function a call runs
    costs several microseconds, and working out the size and the kind of
    array is three of them."""
    nbytes = math.prod(shape) * dtype.itemsize
    if reuses(nbytes, min_bytes):
        size = nbytes + START_BYTES

        def reused():
            block, start = (_take if REUSE_MAX_BYTES > 0 else _new_block)(size)
            # One constructor instead of slicing, viewing and reshaping the
            # block: 20 us against 40 us with the caches cold (the output's
            # base is the block either way, and so is that of its views).
            return np.ndarray(shape, dtype, block, start)

        return reused
    if ALIGN_MIN_BYTES <= nbytes <= ALIGN_MAX_BYTES:
        def aligned():
            block = np.empty(nbytes + ALIGN_BYTES, np.uint8)
            return np.ndarray(shape, dtype, block, bytes_to_boundary(block, ALIGN_BYTES))

        return aligned
    return functools.partial(np.empty, shape, dtype)


def empty(shape, dtype, min_bytes=None):
    """``empty_maker(shape, dtype, min_bytes)()`` (see :func:`empty_maker`)."""
    return empty_maker(shape, dtype, min_bytes)()


def release_memory():
    """Give every kept output block back to the operating system.

    numbanorm keeps the memory of large outputs (16 MiB and more) and saved
    statistics (256 KiB and more) that the caller has dropped, up to 512 MiB
    in all (environment variable ``NUMBANORM_REUSE_BYTES``, read at import; 0
    turns this off), and hands it out again for the next array of the same
    size: a new block costs the operating system's zeroing of every page, a
    quarter of a large forward pass. Memory an array still uses is never
    reused; it goes back to the system when the caller drops it. The calling
    thread's work arrays (partial sums kept between calls, at most 16 of at
    most 16 MiB each per thread) are dropped too.

    Returns
    -------
    int
        The number of bytes released.
    """
    with _lock:
        counts = _refcounts(_blocks)
        released = sum(e[0].nbytes for e, c in zip(_blocks, counts) if c == _UNUSED)
        _blocks.clear()
    arrays = getattr(_scratch, "arrays", {})
    released += sum(a.nbytes for a in arrays.values())
    arrays.clear()
    return released


#: Saved statistics (float64, returned to the caller) from this size on come
#: from reusable blocks too (see :func:`stats`).
STATS_REUSE_MIN_BYTES = 256 << 10

_FLOAT64 = np.dtype(np.float64)


def stats_maker(shape):
    """The function of no arguments that gives a float64 array of ``shape``
    for statistics the caller gets back (``saved.mean``, ``saved.rstd``):
    from a reusable block when it has at least
    :data:`STATS_REUSE_MIN_BYTES`. Plain arrays of that size are new pages on
    every call in a process that frees little else (see :func:`scratch`):
    instance norm 256x512x7x7 forward took 480 page faults a call for its
    two 1 MiB statistics, layer norm 65536x128 forward 224."""
    return empty_maker(shape, _FLOAT64, STATS_REUSE_MIN_BYTES)


def stats(shape):
    """``stats_maker(shape)()``."""
    return stats_maker(shape)()


# ------------------------------------------------------------ scratch ---

#: Work arrays up to this size are kept between calls (see :func:`scratch`).
SCRATCH_MAX_BYTES = 16 << 20
#: ... at most this many per thread, the least recently used dropped first.
SCRATCH_ENTRIES = 16

_scratch = threading.local()


def scratch(name, shape):
    """A float64 work array of ``shape`` that this thread reuses from call to
    call: its contents are undefined, and it must not outlive the call that
    asked for it (partial sums the kernels write in full and the engine then
    adds up). ``name`` tells apart the arrays one call uses at once.

    A new array of a few hundred kilobytes each call is not free: glibc gives
    freed memory back to the system once enough of it sits at the top of its
    heap, and the next call's array is then new pages, zeroed by the
    operating system on first touch. In a process that does nothing else,
    instance norm 256x512x7x7 backward took 480 page faults a call for its two
    1 MiB per-sample sums (2.2 ms a call, 1.5 ms without them).
    """
    cache = getattr(_scratch, "arrays", None)
    if cache is None:
        cache = _scratch.arrays = {}
    key = (name, shape)
    a = cache.pop(key, None)
    if a is None:
        a = np.empty(shape)
        if a.nbytes > SCRATCH_MAX_BYTES:
            return a
        if len(cache) >= SCRATCH_ENTRIES:
            del cache[next(iter(cache))]
    cache[key] = a  # now the most recently used
    return a
