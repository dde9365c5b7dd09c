"""Channel kernels over an ``(N, P, C, Q)`` view: sums per ``(n, c)`` and
elementwise passes with per-``(n, c)`` coefficients.

Batch norm is ``N = 1`` (statistics per channel over ``P x Q``); group and
instance norm reduce per ``(n, group)`` by adding the per-channel sums of a
group; weight norm and :func:`numbanorm.moments` use ``(rows, 1, 1, L)``.
NCHW data has ``P = 1``; channels-last data has ``Q = 1``, where the loops run
along ``C`` over 1-D row slices, with the task's coefficients copied into
local arrays: that form vectorizes (measured: channels-last apply 2.1 ms ->
1.1 ms on 32x56x56x64 float32, the speed of ``np.copyto``).

Work is split into tasks ``(n, chunk of P)``; the chunk length is chosen from
the shape alone. Each task writes its own slot of a partial-sum array, and the
caller adds the slots in order: results are the same for any thread count.
Sums are float64.

Statistics come per ``(n, group)`` (``G`` groups of ``C // G`` consecutive
channels) and parameters per channel; a kernel forms each channel's
coefficients itself, once per task. Elementwise passes run in ``x``'s dtype,
with the float64 mean split into ``hi + lo`` of that dtype so that
``(x - hi) - lo`` is the accurate difference.
"""

import numpy as np
from numba import prange

from .._jit import cast_like, kernel


#: Channels-last reductions fold this many rows together in float64 registers
#: before updating the per-channel sums, so the sums are loaded and stored once
#: per block of rows instead of once per element.
ROW_BLOCK = 4


@kernel
def channel_moments(x, shift, p_chunk, s1_part, s2_part):
    """Partial sums of ``d = x - shift[n, g]`` and ``d**2`` per task and channel.

    ``shift`` is float64 per ``(n, group)``; ``s1_part`` and ``s2_part`` have
    shape ``(N, nchunks, C)``.
    """
    N, P, C, Q = x.shape
    cg = C // shift.shape[1]
    nchunks = s1_part.shape[1]
    for t in prange(N * nchunks):
        n = t // nchunks
        k = t - n * nchunks
        sh = np.empty(C)
        for c in range(C):
            sh[c] = shift[n, c // cg]
        s1 = np.zeros(C)
        s2 = np.zeros(C)
        p = k * p_chunk
        p_stop = min(P, p + p_chunk)
        if Q == 1:
            x3 = x.reshape((N, P, C))
            while p + ROW_BLOCK <= p_stop:
                for c in range(C):
                    d0 = np.float64(x3[n, p, c]) - sh[c]
                    d1 = np.float64(x3[n, p + 1, c]) - sh[c]
                    d2 = np.float64(x3[n, p + 2, c]) - sh[c]
                    d3 = np.float64(x3[n, p + 3, c]) - sh[c]
                    s1[c] += (d0 + d1) + (d2 + d3)
                    s2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
                p += ROW_BLOCK
        for p in range(p, p_stop):
            for c in range(C):
                a1 = 0.0
                a2 = 0.0
                for q in range(Q):
                    d = np.float64(x[n, p, c, q]) - sh[c]
                    a1 += d
                    a2 += d * d
                s1[c] += a1
                s2[c] += a2
        s1_part[n, k, :] = s1
        s2_part[n, k, :] = s2


@kernel
def channel_affine(x, mean, rstd, weight, bias, p_chunk, y):
    """``y = (x - mean[n, g]) * rstd[n, g] * weight[c] + bias[c]``.

    ``mean``/``rstd`` are float64 per ``(n, group)``; ``weight``/``bias``
    float64 per channel.
    """
    N, P, C, Q = x.shape
    cg = C // mean.shape[1]
    nchunks = (P + p_chunk - 1) // p_chunk
    for t in prange(N * nchunks):
        n = t // nchunks
        k = t - n * nchunks
        hi = np.empty(C, x.dtype)
        lo = np.empty(C, x.dtype)
        a = np.empty(C, x.dtype)
        b = np.empty(C, x.dtype)
        for c in range(C):
            mu = mean[n, c // cg]
            hi[c] = cast_like(x, mu)
            lo[c] = cast_like(x, mu - np.float64(hi[c]))
            a[c] = cast_like(x, rstd[n, c // cg] * weight[c])
            b[c] = cast_like(x, bias[c])
        p_stop = min(P, (k + 1) * p_chunk)
        if Q == 1:
            x3 = x.reshape((N, P, C))
            y3 = y.reshape((N, P, C))
            for p in range(k * p_chunk, p_stop):
                for c in range(C):
                    y3[n, p, c] = ((x3[n, p, c] - hi[c]) - lo[c]) * a[c] + b[c]
        else:
            for p in range(k * p_chunk, p_stop):
                for c in range(C):
                    h, l, ac, bc = hi[c], lo[c], a[c], b[c]
                    for q in range(Q):
                        y[n, p, c, q] = ((x[n, p, c, q] - h) - l) * ac + bc


@kernel
def channel_grad_sums(dy, x, mean, p_chunk, a_part, b_part):
    """Partial float64 sums of ``dy`` and ``dy * (x - mean[n, g])`` per task and
    channel."""
    N, P, C, Q = x.shape
    cg = C // mean.shape[1]
    nchunks = a_part.shape[1]
    for t in prange(N * nchunks):
        n = t // nchunks
        k = t - n * nchunks
        hi = np.empty(C, x.dtype)
        lo = np.empty(C, x.dtype)
        for c in range(C):
            mu = mean[n, c // cg]
            hi[c] = cast_like(x, mu)
            lo[c] = cast_like(x, mu - np.float64(hi[c]))
        sa = np.zeros(C)
        sb = np.zeros(C)
        p = k * p_chunk
        p_stop = min(P, p + p_chunk)
        if Q == 1:
            x3 = x.reshape((N, P, C))
            dy3 = dy.reshape((N, P, C))
            while p + ROW_BLOCK <= p_stop:
                for c in range(C):
                    g0 = np.float64(dy3[n, p, c])
                    g1 = np.float64(dy3[n, p + 1, c])
                    g2 = np.float64(dy3[n, p + 2, c])
                    g3 = np.float64(dy3[n, p + 3, c])
                    h, l = hi[c], lo[c]
                    sa[c] += (g0 + g1) + (g2 + g3)
                    sb[c] += (
                        g0 * np.float64((x3[n, p, c] - h) - l)
                        + g1 * np.float64((x3[n, p + 1, c] - h) - l)
                    ) + (
                        g2 * np.float64((x3[n, p + 2, c] - h) - l)
                        + g3 * np.float64((x3[n, p + 3, c] - h) - l)
                    )
                p += ROW_BLOCK
        for p in range(p, p_stop):
            for c in range(C):
                h, l = hi[c], lo[c]
                a1 = 0.0
                a2 = 0.0
                for q in range(Q):
                    g = np.float64(dy[n, p, c, q])
                    a1 += g
                    a2 += g * np.float64((x[n, p, c, q] - h) - l)
                sa[c] += a1
                sb[c] += a2
        a_part[n, k, :] = sa
        b_part[n, k, :] = sb


@kernel
def channel_backward_apply(dy, x, mean, rstd, weight, beta, gamma, p_chunk, dx):
    """``dx = rstd*weight[c]*dy + beta[n, g]*(x - mean[n, g]) + gamma[n, g]``.

    Statistics and ``beta``/``gamma`` are float64 per ``(n, group)``,
    ``weight`` float64 per channel.
    """
    N, P, C, Q = x.shape
    cg = C // mean.shape[1]
    nchunks = (P + p_chunk - 1) // p_chunk
    for t in prange(N * nchunks):
        n = t // nchunks
        k = t - n * nchunks
        hi = np.empty(C, x.dtype)
        lo = np.empty(C, x.dtype)
        al = np.empty(C, x.dtype)
        be = np.empty(C, x.dtype)
        ga = np.empty(C, x.dtype)
        for c in range(C):
            g = c // cg
            mu = mean[n, g]
            hi[c] = cast_like(x, mu)
            lo[c] = cast_like(x, mu - np.float64(hi[c]))
            al[c] = cast_like(x, rstd[n, g] * weight[c])
            be[c] = cast_like(x, beta[n, g])
            ga[c] = cast_like(x, gamma[n, g])
        p_stop = min(P, (k + 1) * p_chunk)
        if Q == 1:
            x3 = x.reshape((N, P, C))
            dy3 = dy.reshape((N, P, C))
            dx3 = dx.reshape((N, P, C))
            for p in range(k * p_chunk, p_stop):
                for c in range(C):
                    dx3[n, p, c] = (
                        al[c] * dy3[n, p, c] + be[c] * ((x3[n, p, c] - hi[c]) - lo[c]) + ga[c]
                    )
        else:
            for p in range(k * p_chunk, p_stop):
                for c in range(C):
                    h, l, a, b, g0 = hi[c], lo[c], al[c], be[c], ga[c]
                    for q in range(Q):
                        dx[n, p, c, q] = a * dy[n, p, c, q] + b * ((x[n, p, c, q] - h) - l) + g0
