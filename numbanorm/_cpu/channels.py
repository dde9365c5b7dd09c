"""Channel kernels over an ``(N, P, C, Q)`` view: sums per ``(n, c)`` and
elementwise passes with per-``(n, c)`` coefficients.

Batch norm is ``N = 1`` (statistics per channel over ``P x Q``); group and
instance norm reduce per ``(n, group)`` by adding the per-channel sums of a
group; weight norm and :func:`numbanorm.moments` use ``(rows, 1, 1, L)``.
NCHW data has ``P = 1``; channels-last data has ``Q = 1``, where the loops run
along ``C`` so they stay contiguous and vectorize.

Work is split into tasks ``(n, chunk of P)``; the chunk length is chosen from
the shape alone. Each task writes its own slot of a partial-sum array, and the
caller adds the slots in order: results are the same for any thread count.
Sums are float64. Elementwise passes run in ``x``'s dtype with coefficients of
that dtype; the mean comes as ``hi + lo`` so that ``(x - hi) - lo`` is the
accurate difference.
"""

import numpy as np
from numba import prange

from .._jit import kernel


@kernel
def channel_moments(x, shift, p_chunk, s1_part, s2_part):
    """Partial sums of ``d = x - shift[n, c]`` and ``d**2`` per task and channel.

    ``s1_part`` and ``s2_part`` have shape ``(N, nchunks, C)``.
    """
    N, P, C, Q = x.shape
    nchunks = s1_part.shape[1]
    for t in prange(N * nchunks):
        n = t // nchunks
        k = t - n * nchunks
        s1 = np.zeros(C)
        s2 = np.zeros(C)
        for p in range(k * p_chunk, min(P, (k + 1) * p_chunk)):
            if Q == 1:
                for c in range(C):
                    d = np.float64(x[n, p, c, 0]) - shift[n, c]
                    s1[c] += d
                    s2[c] += d * d
            else:
                for c in range(C):
                    sh = shift[n, c]
                    a1 = 0.0
                    a2 = 0.0
                    for q in range(Q):
                        d = np.float64(x[n, p, c, q]) - sh
                        a1 += d
                        a2 += d * d
                    s1[c] += a1
                    s2[c] += a2
        s1_part[n, k, :] = s1
        s2_part[n, k, :] = s2


@kernel
def channel_affine(x, mean_hi, mean_lo, scale, bias, p_chunk, y):
    """``y = ((x - mean_hi) - mean_lo) * scale + bias``, coefficients per ``(n, c)``."""
    N, P, C, Q = x.shape
    nchunks = (P + p_chunk - 1) // p_chunk
    for t in prange(N * nchunks):
        n = t // nchunks
        k = t - n * nchunks
        for p in range(k * p_chunk, min(P, (k + 1) * p_chunk)):
            if Q == 1:
                for c in range(C):
                    y[n, p, c, 0] = (
                        (x[n, p, c, 0] - mean_hi[n, c]) - mean_lo[n, c]
                    ) * scale[n, c] + bias[n, c]
            else:
                for c in range(C):
                    hi = mean_hi[n, c]
                    lo = mean_lo[n, c]
                    a = scale[n, c]
                    b = bias[n, c]
                    for q in range(Q):
                        y[n, p, c, q] = ((x[n, p, c, q] - hi) - lo) * a + b


@kernel
def channel_grad_sums(dy, x, mean, p_chunk, a_part, b_part):
    """Partial sums of ``dy`` and ``dy * (x - mean[n, c])`` per task and channel."""
    N, P, C, Q = x.shape
    nchunks = a_part.shape[1]
    for t in prange(N * nchunks):
        n = t // nchunks
        k = t - n * nchunks
        sa = np.zeros(C)
        sb = np.zeros(C)
        for p in range(k * p_chunk, min(P, (k + 1) * p_chunk)):
            if Q == 1:
                for c in range(C):
                    g = np.float64(dy[n, p, c, 0])
                    sa[c] += g
                    sb[c] += g * (np.float64(x[n, p, c, 0]) - mean[n, c])
            else:
                for c in range(C):
                    mu = mean[n, c]
                    a1 = 0.0
                    a2 = 0.0
                    for q in range(Q):
                        g = np.float64(dy[n, p, c, q])
                        a1 += g
                        a2 += g * (np.float64(x[n, p, c, q]) - mu)
                    sa[c] += a1
                    sb[c] += a2
        a_part[n, k, :] = sa
        b_part[n, k, :] = sb


@kernel
def channel_backward_apply(dy, x, mean_hi, mean_lo, alpha, beta, gamma, p_chunk, dx):
    """``dx = alpha*dy + beta*((x - mean_hi) - mean_lo) + gamma`` per ``(n, c)``."""
    N, P, C, Q = x.shape
    nchunks = (P + p_chunk - 1) // p_chunk
    for t in prange(N * nchunks):
        n = t // nchunks
        k = t - n * nchunks
        for p in range(k * p_chunk, min(P, (k + 1) * p_chunk)):
            if Q == 1:
                for c in range(C):
                    dx[n, p, c, 0] = (
                        alpha[n, c] * dy[n, p, c, 0]
                        + beta[n, c] * ((x[n, p, c, 0] - mean_hi[n, c]) - mean_lo[n, c])
                        + gamma[n, c]
                    )
            else:
                for c in range(C):
                    hi = mean_hi[n, c]
                    lo = mean_lo[n, c]
                    al = alpha[n, c]
                    be = beta[n, c]
                    ga = gamma[n, c]
                    for q in range(Q):
                        dx[n, p, c, q] = al * dy[n, p, c, q] + be * ((x[n, p, c, q] - hi) - lo) + ga
