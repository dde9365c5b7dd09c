"""Device functions shared by the CUDA kernels: the fixed-order block sum.

Every block has :data:`~numbanorm._cuda.target.THREADS` threads. A block sum
stores each thread's partial in shared memory and adds them in a binary tree
whose shape depends on ``THREADS`` only: no warp shuffles (the simulator has
none) and no atomics, so the result is the same on every run.
"""

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

