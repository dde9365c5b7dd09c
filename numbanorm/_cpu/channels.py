"""Chunked channel kernels over an ``(N, P, C, Q)`` view: tasks ``(n, chunk
of P)``, each writing its own slot of a partial-sum array that a serial
kernel then adds up in order. Batch norm uses them (its statistics span every
sample), and group and instance norm on fewer samples than threads.
"""

import numpy as np
from numba import prange

from .compile import (
    aligned_empty, aligned_zeros, cast_like, copy_into, far_shift, helper, kernel,
    split_like,
)
from .channel_loops import (
    _add_moments,
    _affine,
    _add_grad_sums,
    _backward_affine,
    _run_grad_sums,
    _run_dx,
    _affine_runs,
    _add_grad_sums_runs,
    _backward_runs,
    _split_mean,
    _affine_coefficients,
    _backward_coefficients,
    _beta_gamma,
    _group_coefficients,
)


# -------------------------------------------------------- chunked kernels ---


@helper
def _recenter(s1, s2, count, sh):
    """Whether some column's shift ``sh[c]`` lies far from the mean that its
    sums ``s1``, ``s2`` (of ``count`` values about ``sh``) give (see
    :func:`far_shift`); if so every such shift moves to its mean, for a
    second pass."""
    again = False
    inv_count = 1.0 / count
    for c in range(s1.shape[0]):
        offset = far_shift(s1[c], s2[c], inv_count)
        if offset != 0.0:
            sh[c] += offset
            again = True
    return again


@kernel
def channel_moments(x, p_chunk, shift_part, s1_part, s2_part):
    """Sums per task (sample ``n``, chunk ``k`` of ``P``) and channel, taken
    about the chunk's own first value of the channel: ``shift_part[n, k, c]``,
    and the sums of ``d = x - shift`` and ``d**2`` in ``s1_part``,
    ``s2_part`` (all float64, ``(N, nchunks, C)``).

    A chunk whose first value lies far from its mean is summed again about
    that mean (:func:`_recenter`), so the digits lost to the shift do not
    depend on where the data happen to start; :func:`channel_moments_totals`
    merges the chunks exactly.
    """
    N, P, C, Q = x.shape
    nchunks = s1_part.shape[1]
    for task in prange(N * nchunks):
        t = np.int64(task)  # signed in both builds (see kernel)
        n = t // nchunks
        k = t - n * nchunks
        p0 = k * p_chunk
        sh = aligned_empty(C, s1_part)
        for c in range(C):
            sh[c] = np.float64(x[n, p0, c, 0])
        s1 = aligned_zeros(C, s1_part)
        s2 = aligned_zeros(C, s1_part)
        p1 = min(P, p0 + p_chunk)
        _add_moments(x, n, p0, p1, sh, s1, s2)
        if _recenter(s1, s2, (p1 - p0) * Q, sh):
            s1[:] = 0.0
            s2[:] = 0.0
            _add_moments(x, n, p0, p1, sh, s1, s2)
        copy_into(shift_part[n, k], sh)
        copy_into(s1_part[n, k], s1)
        copy_into(s2_part[n, k], s2)


@kernel
def channel_moments_totals(shift_part, s1_part, s2_part, p_chunk, rows, run, mean, m2):
    """Mean and sum of squared deviations per ``(n, group)`` (float64) from
    the chunk sums of :func:`channel_moments` over ``rows`` rows of runs of
    ``run`` values: each (chunk, column) becomes a count, mean and ``M2``,
    merged in order, chunks first, then a group's columns, with Chan's
    formula. A serial kernel."""
    N, K, W = s1_part.shape
    groups = mean.shape[1]
    per = W // groups
    for n in range(N):
        for g in range(groups):
            count = 0.0
            mu = 0.0
            acc = 0.0
            for c in range(g * per, (g + 1) * per):
                for k in range(K):
                    nb = np.float64((min(rows, (k + 1) * p_chunk) - k * p_chunk) * run)
                    t1 = s1_part[n, k, c]
                    mb = t1 / nb
                    m2b = s2_part[n, k, c] - t1 * mb
                    if m2b < 0.0:
                        m2b = 0.0
                    mb += shift_part[n, k, c]
                    if count == 0.0:
                        mu = mb
                        acc = m2b
                        count = nb
                    else:
                        total = count + nb
                        delta = mb - mu
                        mu += delta * (nb / total)
                        acc += m2b + delta * delta * (count * nb / total)
                        count = total
            mean[n, g] = mu
            m2[n, g] = acc


# The chunked kernels' channels-last coefficients are formed once per sample,
# before the tasks: formed per task, hundreds of channels' coefficients
# would be formed again for every short task.


@kernel
def channel_affine(x, mean, rstd, weight, bias, p_chunk, y):
    """``y = (x - mean[n, g]) * rstd[n, g] * weight[c] + bias[c]``.

    ``mean``/``rstd`` are float64 per ``(n, group)``; ``weight``/``bias``
    float64 per channel.
    """
    N, P, C, Q = x.shape
    cg = C // mean.shape[1]
    nchunks = (P + p_chunk - 1) // p_chunk
    if Q > 1:
        for task in prange(N * nchunks):
            t = np.int64(task)  # signed in both builds (see kernel)
            n = t // nchunks
            k = t - n * nchunks
            p_start, p_stop = k * p_chunk, min(P, (k + 1) * p_chunk)
            _affine_runs(x, y, n, p_start, p_stop, mean[n], rstd[n], weight, bias)
        return
    hi = aligned_empty(N * C, x).reshape((N, C))
    a = aligned_empty(N * C, x).reshape((N, C))
    b = aligned_empty(N * C, x).reshape((N, C))
    for n in range(N):
        _affine_coefficients(x, mean, rstd, weight, bias, n, cg, hi[n], a[n], b[n])
    for task in prange(N * nchunks):
        t = np.int64(task)  # signed in both builds (see kernel)
        n = t // nchunks
        k = t - n * nchunks
        _affine(x, y, n, k * p_chunk, min(P, (k + 1) * p_chunk), hi[n], a[n], b[n])


@kernel
def channel_grad_sums(dy, x, mean, p_chunk, a_part, b_part):
    """Partial float64 sums of ``dy`` and ``dy * (x - mean[n, g])`` per task and
    channel."""
    N, P, C, Q = x.shape
    cg = C // mean.shape[1]
    nchunks = a_part.shape[1]
    width = C if Q == 1 else 0  # channels-last split means; runs form their own
    hi = aligned_empty(N * width, x).reshape((N, width))
    lo = aligned_empty(N * width, x).reshape((N, width))
    if Q == 1:
        for n in range(N):
            _split_mean(x, mean, n, cg, hi[n], lo[n])
    for task in prange(N * nchunks):
        t = np.int64(task)  # signed in both builds (see kernel)
        n = t // nchunks
        k = t - n * nchunks
        p_start, p_stop = k * p_chunk, min(P, (k + 1) * p_chunk)
        sa = aligned_zeros(C, mean)
        sb = aligned_zeros(C, mean)
        if Q > 1:
            _add_grad_sums_runs(dy, x, n, p_start, p_stop, mean[n], sa, sb)
        else:
            _add_grad_sums(dy, x, n, p_start, p_stop, hi[n], lo[n], sa, sb)
        copy_into(a_part[n, k], sa)
        copy_into(b_part[n, k], sb)


@helper
def _chunk_totals(part1, part2, n, t1, t2):
    """``t1 = part1[n].sum(axis=0)`` and ``t2`` likewise: the partial sums of
    sample ``n``'s chunks, added in chunk order."""
    copy_into(t1, part1[n, 0])
    copy_into(t2, part2[n, 0])
    for k in range(1, part1.shape[1]):
        for c in range(t1.shape[0]):
            t1[c] += part1[n, k, c]
            t2[c] += part2[n, k, c]


@kernel
def channel_backward_coefficients(
    a_part, b_part, weight, rstd, count, batch_stats, beta, gamma, dweight, dbias
):
    """From the partial sums of :func:`channel_grad_sums` (added over chunks in
    order): ``beta``, ``gamma`` per ``(n, group)`` of
    ``dx = rstd*weight[c]*dy + beta*(x - mean) + gamma`` (zeros unless
    ``batch_stats``), and, when ``dweight``/``dbias`` have length ``C``,
    ``dweight[c] = sum_n sum(dy * xhat)`` and ``dbias[c] = sum_n sum(dy)``.

    A serial kernel: the same steps in NumPy are a dozen small calls right
    after a pass over memory that has evicted the interpreter from the caches.
    """
    N, _, C = a_part.shape
    groups = beta.shape[1]
    cg = C // groups
    inv_count = 1.0 / count
    sa = np.empty(C)
    sb = np.empty(C)
    dweight[:] = 0.0
    dbias[:] = 0.0
    for n in range(N):
        _chunk_totals(a_part, b_part, n, sa, sb)
        for g in range(groups):
            rs = rstd[n, g]
            if batch_stats:
                beta[n, g], gamma[n, g] = _group_coefficients(sa, sb, weight, g, cg, rs, inv_count)
            else:
                beta[n, g] = 0.0
                gamma[n, g] = 0.0
            if dweight.shape[0] == C:
                for c in range(g * cg, (g + 1) * cg):
                    dweight[c] += sb[c] * rs
                    dbias[c] += sa[c]


@kernel
def channel_backward_apply(dy, x, mean, rstd, weight, beta, gamma, p_chunk, dx):
    """``dx = rstd*weight[c]*dy + beta[n, g]*(x - mean[n, g]) + gamma[n, g]``.

    Statistics and ``beta``/``gamma`` are float64 per ``(n, group)``,
    ``weight`` float64 per channel.

    Tasks run in order (from last to first, to start on what the sums pass
    read last, was no faster: that data is no longer in the cache).
    """
    N, P, C, Q = x.shape
    cg = C // mean.shape[1]
    nchunks = (P + p_chunk - 1) // p_chunk
    tasks = N * nchunks
    if Q > 1:
        for task in prange(tasks):
            t = np.int64(task)  # signed in both builds (see kernel)
            n = t // nchunks
            k = t - n * nchunks
            p_start, p_stop = k * p_chunk, min(P, (k + 1) * p_chunk)
            _backward_runs(
                dy, x, dx, n, p_start, p_stop, mean[n], rstd[n], weight, beta[n], gamma[n]
            )
        return
    hi = aligned_empty(N * C, x).reshape((N, C))
    al = aligned_empty(N * C, x).reshape((N, C))
    be = aligned_empty(N * C, x).reshape((N, C))
    ga = aligned_empty(N * C, x).reshape((N, C))
    for n in range(N):
        _backward_coefficients(
            x, mean, rstd, weight, beta[n], gamma[n], n, cg, hi[n], al[n], be[n], ga[n]
        )
    for task in prange(tasks):
        t = np.int64(task)  # signed in both builds (see kernel)
        n = t // nchunks
        k = t - n * nchunks
        _backward_affine(
            dy, x, dx, n, k * p_chunk, min(P, (k + 1) * p_chunk), hi[n], al[n], be[n], ga[n]
        )


@kernel
def channel_runs_backward(dy, x, mean, rstd, weight, dx, dweight, dbias):
    """Batch norm backward on long channels-first runs (``N == 1``, one group
    per channel, ``Q > SHORT_RUN``), one task per channel: the channel's
    float64 sums of ``dy`` and ``dy * (x - mean)`` over its ``P`` runs, its
    ``dweight[c]``/``dbias[c]``, then its ``dx`` while the runs are still in
    cache (the formulas of :func:`channel_backward_coefficients`).

    The chunked kernels read ``x`` and ``dy`` twice from memory, once for
    the sums and once for ``dx``; a channel of 8x256x28x28 is 8 runs of
    3 KiB, 50 KiB with ``dy``, which the second pass finds in L2. The sums
    are added in the chunked kernels' order when a chunk is one sample, so
    both give the same bits then. Short runs (7x7 images) stay chunked:
    hundreds of runs of 196 bytes, a sample's length apart, read slowly this
    way.
    """
    N, P, C, Q = x.shape
    inv_count = 1.0 / (P * Q)
    for task in prange(C):
        c = np.int64(task)  # signed in both builds (see kernel)
        mu = mean[0, c]
        rs = rstd[0, c]
        h, l = split_like(x, mu)
        sa = 0.0
        sb = 0.0
        for p in range(P):
            a1, a2 = _run_grad_sums(dy[0, p, c], x[0, p, c], h, l)
            sa += a1
            sb += a2
        dweight[c] = sb * rs
        dbias[c] = sa
        w = weight[c]
        beta, gamma = _beta_gamma(w * sa, w * sb, rs, inv_count)
        al = cast_like(x, rs * w)
        be = cast_like(x, beta)
        ga = cast_like(x, gamma)
        for p in range(P):
            _run_dx(dy[0, p, c], x[0, p, c], dx[0, p, c], h, l, al, be, ga)
