"""Memory the CPU engine holds between calls: bounded caches, and their release.

Outputs are plain new NumPy arrays (``out=`` is how a caller reuses memory)
and work arrays live for one call. What is kept between calls is what a
call signature decides (work splits, compiled steps) and the arrays that
stand for an absent parameter; each such cache holds a fixed number of
entries, and :func:`release_memory` empties them all.
"""

import functools
import threading

import numpy as np

_caches = []


def cache(maxsize):
    """``functools.lru_cache(maxsize)`` whose entries :func:`release_memory` drops."""

    def decorate(func):
        cached = functools.lru_cache(maxsize=maxsize)(func)
        _caches.append(cached.cache_clear)
        return cached

    return decorate


def on_release(clear):
    """Have :func:`release_memory` call ``clear()`` too (a cache not made by
    :func:`cache`, such as the runners); returns ``clear``."""
    _caches.append(clear)
    return clear


#: Arrays of :func:`filled`, at most :data:`FILLED_MAX` (the oldest go first).
FILLED_MAX = 8
_filled = {}
_filled_lock = threading.Lock()


def filled(length, value, dtype):
    """An array of ``length`` values ``value`` of ``dtype`` (never handed to the
    caller): what an
    absent weight or bias stands for in the kernels, which only read it."""
    key = (length, value, dtype)
    a = _filled.get(key)
    if a is None:
        a = np.full(length, value, dtype)
        with _filled_lock:
            _filled[key] = a
            while len(_filled) > FILLED_MAX:
                del _filled[next(iter(_filled))]
    return a


def release_memory():
    """Drop every array and compiled step numbanorm keeps between calls.

    numbanorm keeps, per call signature, what the shapes decide (work
    splits, the steps a call runs) and a few arrays of ones and zeros that
    stand for an absent weight or bias, each in a cache of a fixed number
    of entries. Outputs and work arrays are never kept. This empties the
    caches; the next call of each signature works its steps out again.

    Returns
    -------
    int
        The bytes of the arrays that were held.
    """
    with _filled_lock:
        held = sum(a.nbytes for a in _filled.values())
        _filled.clear()
    for clear in _caches:
        clear()
    return held
