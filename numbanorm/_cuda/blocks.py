"""Device functions shared by the CUDA kernels: the fixed-order block sum,
the split of a float64 mean into ``hi + lo`` of the input's dtype, and the
index of an element of an ``(N, P, C, Q)`` view.

Every block has :data:`~numbanorm._cuda.target.THREADS` threads. A block sum
stores each thread's partial in shared memory and adds them in a binary tree
whose shape depends on ``THREADS`` only: no warp shuffles (the simulator has
none) and no atomics, so the result is the same on every run.
"""

import numpy as np

from .._cpu.compile import cast_like
from .target import THREADS, cuda


@cuda.jit(device=True)
def block_sum2(a, b, sa, sb):
    """The sums of ``a`` and of ``b`` over the block's threads (float64).

    ``sa`` and ``sb`` are shared arrays of ``THREADS`` float64; every thread
    of the block must call this, and every thread gets both sums.
    """
    t = cuda.threadIdx.x
    sa[t] = a
    sb[t] = b
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if t < step:
            sa[t] += sa[t + step]
            sb[t] += sb[t + step]
        cuda.syncthreads()
        step //= 2
    a = sa[0]
    b = sb[0]
    cuda.syncthreads()  # the shared arrays may be reused after this
    return a, b



@cuda.jit(device=True)
def split_mean(x, mu):
    """``hi + lo == mu`` with ``hi``, ``lo`` of ``x``'s dtype, so that
    ``(x - hi) - lo`` is the accurate ``x - mu``."""
    hi = cast_like(x, mu)
    return hi, cast_like(x, mu - np.float64(hi))


@cuda.jit(device=True)
def channel_index(i, P, C, Q):
    """``(n, p, c, q)`` of flat index ``i`` in a C-contiguous ``(N, P, C, Q)`` array."""
    r = i // Q
    s = r // C
    n = s // P
    return n, s - n * P, r - s * C, i - r * Q
