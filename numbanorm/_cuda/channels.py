"""Channel kernels on the GPU over an ``(N, P, C, Q)`` view, mirroring
:mod:`numbanorm._cpu.channels`.

Sums per ``(n, chunk of P, c)`` go to a partial array (the same layout as on
the CPU) that the finishing kernels add in a fixed order:

* ``Q > 1`` (channels first): one block per ``(n, chunk, c)``; its threads
  stride over the chunk's ``P x Q`` values (consecutive threads read
  consecutive addresses) and the block adds them in a fixed tree;
* ``Q == 1`` (channels last): one thread per ``(n, chunk, c)``; consecutive
  threads read consecutive channels of a row.

Elementwise passes are one thread per element (grid-stride), in ``x``'s dtype
with the float64 mean split into ``hi + lo`` of that dtype. Statistics come
per ``(n, group)`` (``G`` groups of ``C // G`` consecutive channels) and
parameters per channel, as on the CPU.
"""

import numpy as np

from .._cpu.compile import cast_like
from .blocks import block_sum2, channel_index, split_mean
from .target import THREADS, blocks_for, cuda


@cuda.jit
def _sums_runs(dy, x, center, grad, p_chunk, first, second):
    sa = cuda.shared.array(THREADS, np.float64)
    sb = cuda.shared.array(THREADS, np.float64)
    N, P, C, Q = x.shape
    nchunks = first.shape[1]
    cg = C // center.shape[1]
    t = cuda.threadIdx.x
    for b in range(cuda.blockIdx.x, N * nchunks * C, cuda.gridDim.x):
        n = b // (nchunks * C)
        rem = b - n * nchunks * C
        k = rem // C
        c = rem - k * C
        p0 = k * p_chunk
        m = (min(P, p0 + p_chunk) - p0) * Q
        ctr = center[n, c // cg]
        a1 = 0.0
        a2 = 0.0
        for e in range(t, m, THREADS):
            p = p0 + e // Q
            q = e - (e // Q) * Q
            d = np.float64(x[n, p, c, q]) - ctr
            u = np.float64(dy[n, p, c, q]) if grad else d
            a1 += u
            a2 += u * d
        a1, a2 = block_sum2(a1, a2, sa, sb)
        if t == 0:
            first[n, k, c] = a1
            second[n, k, c] = a2


@cuda.jit
def _sums_rows(dy, x, center, grad, p_chunk, first, second):
    N, P, C, Q = x.shape
    nchunks = first.shape[1]
    cg = C // center.shape[1]
    for i in range(cuda.grid(1), N * nchunks * C, cuda.gridDim.x * THREADS):
        n = i // (nchunks * C)
        rem = i - n * nchunks * C
        k = rem // C
        c = rem - k * C
        ctr = center[n, c // cg]
        a1 = 0.0
        a2 = 0.0
        for p in range(k * p_chunk, min(P, (k + 1) * p_chunk)):
            d = np.float64(x[n, p, c, 0]) - ctr
            u = np.float64(dy[n, p, c, 0]) if grad else d
            a1 += u
            a2 += u * d
        first[n, k, c] = a1
        second[n, k, c] = a2


def _channel_sums(dy, x, center, grad, p_chunk, first, second):
    """``first = sum(u)``, ``second = sum(u * d)`` per ``(n, chunk, c)`` with
    ``d = x - center[n, g]`` and ``u = dy`` (``grad``) or ``u = d``."""
    if x.shape[3] == 1:
        _sums_rows[blocks_for(first.size), THREADS](dy, x, center, grad, p_chunk, first, second)
    else:
        _sums_runs[blocks_for(first.size * THREADS), THREADS](
            dy, x, center, grad, p_chunk, first, second
        )


def channel_moments(x, shift, p_chunk, s1_part, s2_part):
    """Partial sums of ``d = x - shift[n, g]`` and ``d**2`` per ``(n, chunk, c)``
    (see :func:`numbanorm._cpu.channels.channel_moments`)."""
    _channel_sums(x, x, shift, False, p_chunk, s1_part, s2_part)


def channel_grad_sums(dy, x, mean, p_chunk, a_part, b_part):
    """Partial float64 sums of ``dy`` and ``dy * (x - mean[n, g])`` per
    ``(n, chunk, c)``."""
    _channel_sums(dy, x, mean, True, p_chunk, a_part, b_part)


@cuda.jit
def _channel_affine(x, mean, rstd, weight, bias, y):
    N, P, C, Q = x.shape
    cg = C // mean.shape[1]
    for i in range(cuda.grid(1), x.size, cuda.gridDim.x * THREADS):
        n, p, c, q = channel_index(i, P, C, Q)
        g = c // cg
        hi, lo = split_mean(x, mean[n, g])
        a = cast_like(x, rstd[n, g] * weight[c])
        b = cast_like(x, bias[c])
        y[n, p, c, q] = ((x[n, p, c, q] - hi) - lo) * a + b


def channel_affine(x, mean, rstd, weight, bias, p_chunk, y):
    """``y = (x - mean[n, g]) * rstd[n, g] * weight[c] + bias[c]``; ``p_chunk``
    is unused on the GPU (one thread per element)."""
    _channel_affine[blocks_for(x.size), THREADS](x, mean, rstd, weight, bias, y)


@cuda.jit
def _channel_backward_apply(dy, x, mean, rstd, weight, beta, gamma, dx):
    N, P, C, Q = x.shape
    cg = C // mean.shape[1]
    for i in range(cuda.grid(1), x.size, cuda.gridDim.x * THREADS):
        n, p, c, q = channel_index(i, P, C, Q)
        g = c // cg
        hi, lo = split_mean(x, mean[n, g])
        al = cast_like(x, rstd[n, g] * weight[c])
        be = cast_like(x, beta[n, g])
        ga = cast_like(x, gamma[n, g])
        dx[n, p, c, q] = al * dy[n, p, c, q] + be * ((x[n, p, c, q] - hi) - lo) + ga


def channel_backward_apply(dy, x, mean, rstd, weight, beta, gamma, p_chunk, dx):
    """``dx = rstd*weight[c]*dy + beta[n, g]*(x - mean[n, g]) + gamma[n, g]``."""
    _channel_backward_apply[blocks_for(x.size), THREADS](
        dy, x, mean, rstd, weight, beta, gamma, dx
    )
