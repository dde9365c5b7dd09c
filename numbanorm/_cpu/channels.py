"""Channel kernels over an ``(N, P, C, Q)`` view: sums per ``(n, c)`` and
elementwise passes with per-channel coefficients.

Batch norm is ``N = 1`` (statistics per channel over ``P x Q``); group and
instance norm reduce per ``(n, group)`` by adding the per-channel sums of a
group. NCHW data has ``P = 1``; channels-last data has ``Q = 1``, where the
loops run along ``C`` with the task's coefficients in local arrays, aligned to
cache lines (that form vectorizes).

Two ways to split the work, both chosen from the shape alone, so every result
is the same for any thread count:

* chunked kernels (``channel_*``): tasks ``(n, chunk of P)``, each writing its
  own slot of a partial-sum array that the caller adds in order; used for
  batch norm, whose statistics span every sample;
* per-sample kernels (``sample_norm_*``): one task per sample computes the
  sample's group statistics and then, while the sample is still in cache,
  normalizes it (or forms its gradient); used for group and instance norm.

The loop bodies are shared helpers. Sums are float64. Statistics come per
``(n, group)`` (``G`` groups of ``C // G`` consecutive channels), parameters
per channel; elementwise passes run in ``x``'s dtype with the float64 mean
split into ``hi + lo`` of that dtype, so ``(x - hi) - lo`` is the accurate
difference (channels-last passes fold ``lo`` into their additive
coefficient instead, see :func:`_affine_coefficients`).
"""

import numpy as np
from numba import prange

from .._jit import (
    aligned_empty, aligned_zeros, cast_like, helper, kernel, muladd, split_like, wide_vectors,
)

#: Channels-last reductions fold this many rows together in float64 registers
#: before updating the per-channel sums, so the sums are loaded and stored once
#: per block of rows instead of once per element (8 rows: channels-last moments
#: 2x faster than with 4, measured on 32x56x56x64 float32), on rows of at
#: least ``PAIRED_ROWS_MAX_C`` channels.
ROW_BLOCK = 8
#: Narrower channels-last rows are summed two at a time (see :func:`_add_row_moments`).
PAIRED_ROWS_MAX_C = 256

#: Channel runs (``Q`` values) up to this long count as short (7x7 images: 49).
SHORT_RUN = 256

#: Channels-last backward sums add this many rows per channel in ``x``'s
#: dtype before the float64 sums (see :func:`_add_grad_sums`).
GRAD_ROW_BLOCK = 16


# ------------------------------------------------------------ loop bodies ---


@helper
def _add_moments(x, n, p, p_stop, sh, s1, s2):
    """Add ``sum(x - sh[c])`` and ``sum((x - sh[c])**2)`` over rows
    ``p:p_stop`` of sample ``n`` into ``s1[c]``, ``s2[c]`` (float64):
    channels last (``Q == 1``) through :func:`_add_row_moments`, the rows
    it leaves and channels-first runs (``Q > 1``) run by run, 256 bits wide
    (512-bit vectors made batch norm 256x512x7x7 forward 14% slower).
    """
    N, P, C, Q = x.shape
    r = 0  # channels-last rows taken below; the rest, and Q > 1, go run by run
    if Q == 1:
        r = _add_row_moments(_rows(x, n, p, p_stop), sh, s1, s2)
    for p in range(p + r, p_stop):
        for c in range(C):
            a1, a2 = _run_moments(x[n, p, c], sh[c])
            s1[c] += a1
            s2[c] += a2


@helper
def _add_row_moments(xc, sh, s1, s2):
    """Channels last: add the moments of the rows of ``xc`` (``(rows, C)``)
    about ``sh[c]`` into ``s1[c]``, ``s2[c]``; returns how many rows it took
    (the rest are fewer than a block).

    Rows of fewer than ``PAIRED_ROWS_MAX_C`` channels two at a time (``s1``
    and ``s2`` loaded and stored once per pair), wider ones ``ROW_BLOCK`` at
    a time, folded in registers, 512 bits wide. Moments through the public
    forward, alternating in one process, pairs against blocks of 8:
    32x56x56x64 8-9% faster (group and batch norm), 8x28x28x256 the same,
    256x7x7x512 2-4% slower.
    """
    wide_vectors()
    rows, C = xc.shape
    r = 0
    if C < PAIRED_ROWS_MAX_C:
        while r + 2 <= rows:
            for c in range(C):
                s = sh[c]
                d0 = np.float64(xc[r, c]) - s
                d1 = np.float64(xc[r + 1, c]) - s
                s1[c] += d0 + d1
                s2[c] += muladd(d0, d0, d1 * d1)
            r += 2
    else:
        while r + ROW_BLOCK <= rows:
            for c in range(C):
                s = sh[c]
                d0 = np.float64(xc[r, c]) - s
                d1 = np.float64(xc[r + 1, c]) - s
                d2 = np.float64(xc[r + 2, c]) - s
                d3 = np.float64(xc[r + 3, c]) - s
                d4 = np.float64(xc[r + 4, c]) - s
                d5 = np.float64(xc[r + 5, c]) - s
                d6 = np.float64(xc[r + 6, c]) - s
                d7 = np.float64(xc[r + 7, c]) - s
                s1[c] += ((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7))
                s2[c] += ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)) + (
                    (d4 * d4 + d5 * d5) + (d6 * d6 + d7 * d7)
                )
            r += ROW_BLOCK
    return r


@helper(inline=True)
def _run_moments(xr, s):
    """``sum(xr - s)`` and ``sum((xr - s)**2)`` over one run, in float64."""
    a1 = 0.0
    a2 = 0.0
    for q in range(xr.shape[0]):
        d = np.float64(xr[q]) - s
        a1 += d
        a2 = muladd(d, d, a2)
    return a1, a2


@helper(inline=True)
def _mean_var(t1, t2, s, inv_count):
    """Mean and biased variance from the sums ``t1``, ``t2`` of ``x - s`` and
    ``(x - s)**2`` over ``1 / inv_count`` values (float64; NaN stays NaN).

    The statistics helpers take the reciprocal of the count, not the count:
    a division per group or channel is a slow instruction, and instance
    norm has 512 groups per sample (divisions were 7% of its 256x512x7x7
    backward's samples in perf)."""
    m = t1 * inv_count
    var = t2 * inv_count - m * m
    if var < 0.0:
        var = 0.0
    return s + m, var


@helper(inline=True)
def _mean_rstd(t1, t2, s, inv_count, eps):
    """Mean and ``1/sqrt(var + eps)`` (see :func:`_mean_var`)."""
    mu, var = _mean_var(t1, t2, s, inv_count)
    return mu, 1.0 / np.sqrt(var + eps)


@helper(inline=True)
def _group_totals(s1, s2, g, per):
    """The sums of ``s1`` and of ``s2`` over group ``g``'s ``per`` columns."""
    t1 = 0.0
    t2 = 0.0
    for c in range(g * per, (g + 1) * per):
        t1 += s1[c]
        t2 += s2[c]
    return t1, t2


@helper(inline=True)
def _rows(x, n, p_start, p_stop):
    """Channels last (``Q == 1``): rows ``p_start:p_stop`` of sample ``n`` as a
    ``(rows, C)`` array.

    The channels-last loops run over such a view from row 0: LLVM then checks
    once per task that the output does not overlap the inputs, where loops
    over ``x[n, p, c]`` with ``p`` from ``p_start`` checked once per row (five
    checks per 64-channel row: batch norm 32x56x56x64 apply 1.37 ms against
    1.02 ms, one thread).
    """
    N, P, C, Q = x.shape
    return x.reshape((N, P, C))[n, p_start:p_stop]


@helper
def _affine(x, y, n, p_start, p_stop, hi, a, b):
    """Channels last (``Q == 1``): ``y = (x - hi[c]) * a[c] + b[c]`` over rows
    ``p_start:p_stop`` (coefficients from :func:`_affine_coefficients`)."""
    wide_vectors()
    xc = _rows(x, n, p_start, p_stop)
    yc = _rows(y, n, p_start, p_stop)
    for p in range(xc.shape[0]):
        for c in range(xc.shape[1]):
            yc[p, c] = muladd(xc[p, c] - hi[c], a[c], b[c])


@helper
def _add_grad_sums(dy, x, n, p_start, p_stop, hi, lo, sa, sb):
    """Channels last (``Q == 1``): add ``sum(dy)`` and ``sum(dy * (x - mean[c]))``
    over rows ``p_start:p_stop`` into ``sa[c]``, ``sb[c]`` (float64), with
    ``mean = hi + lo``.

    Two rows per loop, not the moments' blocks of 8: two arrays read in
    blocks of 4 rows are 8 streams with a row's stride between them, and
    memory served them slower than 2 (batch norm 32x56x56x64 backward's
    sums, one thread: 2.0 ms in blocks of 4 rows, 1.16 ms row by row;
    256x7x7x512: 1.76 against 1.30 ms).

    Each channel's terms ``dy`` and ``dy * (x - hi)`` of ``GRAD_ROW_BLOCK``
    rows are added in ``x``'s dtype (one sum of a few values per channel, as
    a short channel-first run's), and then to the float64 sums, with
    ``sum(dy * (x - hi - lo)) = sum(dy * (x - hi)) - lo * sum(dy)``: a row
    of float32 sums is twice as many values per vector as one of float64
    sums, and ``lo`` leaves the loop. Two rows per loop load and store the
    block's sums once for both. Public backward, alternating with the
    float64 row-by-row loop in one process: group norm 256x7x7x512 3.44 ->
    3.01 ms, instance norm 256x7x7x512 3.96 -> 3.52 ms, batch norm
    256x7x7x512 3.15 -> 2.93 ms (``docs/accuracy.rst`` gives the errors).
    """
    wide_vectors()
    xc = _rows(x, n, p_start, p_stop)
    gc = _rows(dy, n, p_start, p_stop)
    rows, channels = xc.shape
    a = aligned_empty(channels, x)
    b = aligned_empty(channels, x)
    for p0 in range(0, rows, GRAD_ROW_BLOCK):
        p1 = min(rows, p0 + GRAD_ROW_BLOCK)
        a[:] = 0
        b[:] = 0
        p = p0
        while p + 2 <= p1:  # two rows per loop: a and b loaded and stored once
            for c in range(channels):
                g0 = gc[p, c]
                g1 = gc[p + 1, c]
                h = hi[c]
                a[c] += g0 + g1
                b[c] += g0 * (xc[p, c] - h) + g1 * (xc[p + 1, c] - h)
            p += 2
        if p < p1:
            for c in range(channels):
                g = gc[p, c]
                a[c] += g
                b[c] += g * (xc[p, c] - hi[c])
        for c in range(channels):
            ac = np.float64(a[c])
            sa[c] += ac
            sb[c] += np.float64(b[c]) - np.float64(lo[c]) * ac


@helper
def _backward_affine(dy, x, dx, n, p_start, p_stop, hi, al, be, ga):
    """Channels last (``Q == 1``): ``dx = al[c]*dy + be[c]*(x - hi[c]) + ga[c]``
    over rows ``p_start:p_stop`` (coefficients from
    :func:`_backward_coefficients`)."""
    wide_vectors()
    xc = _rows(x, n, p_start, p_stop)
    gc = _rows(dy, n, p_start, p_stop)
    dc = _rows(dx, n, p_start, p_stop)
    for p in range(xc.shape[0]):
        for c in range(xc.shape[1]):
            dc[p, c] = al[c] * gc[p, c] + be[c] * (xc[p, c] - hi[c]) + ga[c]


@helper(inline=True)
def _run_grad_sums(gr, xr, h, l):
    """``sum(dy)`` and ``sum(dy * ((x - h) - l))`` over one channel's run, as
    float64. A run of at most ``SHORT_RUN`` values is summed in ``x``'s dtype
    first (one float32 sum of a few hundred values: float64 products cost
    7-10% of a 7x7 backward)."""
    if xr.shape[0] <= SHORT_RUN:
        b1 = cast_like(xr, 0.0)
        b2 = cast_like(xr, 0.0)
        for q in range(xr.shape[0]):
            d = gr[q]
            b1 += d
            b2 += d * ((xr[q] - h) - l)
        return np.float64(b1), np.float64(b2)
    a1 = 0.0
    a2 = 0.0
    for q in range(xr.shape[0]):
        d = np.float64(gr[q])
        a1 += d
        a2 += d * np.float64((xr[q] - h) - l)
    return a1, a2


@helper(inline=True)
def _run_dx(gr, xr, dr, h, l, al, be, ga):
    """``dx = al*dy + be*((x - h) - l) + ga`` over one channel's run."""
    for q in range(xr.shape[0]):
        dr[q] = al * gr[q] + be * ((xr[q] - h) - l) + ga


@helper(inline=True)
def _affine_group_runs(x, y, n, p, g, cg, mu, rs, weight, bias):
    """Channels first (``Q > 1``): ``y = (x - mu) * rs * weight[c] + bias[c]``
    over the runs of group ``g``'s ``cg`` channels in row ``p`` of sample
    ``n``, with ``mu``/``rs`` the group's float64 statistics.

    The group's runs are one ``(channels, Q)`` view; the mean is split into
    ``h + l`` once per group, and each run's ``a`` and ``b = bias - l * a``
    (see :func:`_affine_coefficients`) are formed in registers: a run is
    short (49 values for 7x7 images), and per-channel coefficient arrays
    cost as much as it. Indexing the view rather than ``x[n, p, c]`` per
    run, and splitting the mean per group rather than per run: group norm
    256x512x7x7 forward kernel, 2 threads, 0.81-0.84 -> 0.58-0.64 ms with
    the per-row sums of :func:`sample_norm_forward`; instance norm 1.72 ->
    1.25 ms.
    """
    c0 = g * cg
    xg = x[n, p, c0:c0 + cg]
    yg = y[n, p, c0:c0 + cg]
    h, l = split_like(x, mu)
    l64 = np.float64(l)
    for c in range(cg):
        a = cast_like(x, rs * weight[c0 + c])
        b = cast_like(x, bias[c0 + c] - l64 * np.float64(a))
        for q in range(xg.shape[1]):
            yg[c, q] = muladd(xg[c, q] - h, a, b)


@helper
def _affine_runs(x, y, n, p_start, p_stop, mean, rstd, weight, bias):
    """:func:`_affine_group_runs` over every group of rows ``p_start:p_stop``."""
    cg = x.shape[2] // mean.shape[0]
    for p in range(p_start, p_stop):
        for g in range(mean.shape[0]):
            _affine_group_runs(x, y, n, p, g, cg, mean[g], rstd[g], weight, bias)


@helper
def _add_grad_sums_runs(dy, x, n, p_start, p_stop, mean, sa, sb):
    """Channels first (``Q > 1``): add ``sum(dy)`` and ``sum(dy * (x - mean[g]))``
    per channel over rows ``p_start:p_stop`` of sample ``n`` into ``sa[c]``,
    ``sb[c]`` (float64); ``mean`` holds the sample's group means."""
    N, P, C, Q = x.shape
    groups = mean.shape[0]
    cg = C // groups
    for p in range(p_start, p_stop):
        for g in range(groups):
            mu = mean[g]
            h, l = split_like(x, mu)
            for c in range(g * cg, (g + 1) * cg):
                a1, a2 = _run_grad_sums(dy[n, p, c], x[n, p, c], h, l)
                sa[c] += a1
                sb[c] += a2


@helper
def _backward_runs(dy, x, dx, n, p_start, p_stop, mean, rstd, weight, beta, gamma):
    """Channels first (``Q > 1``): ``dx = rstd[g]*weight[c]*dy + beta[g]*(x - mean[g])
    + gamma[g]`` over rows ``p_start:p_stop`` of sample ``n`` (the sample's
    float64 per-group values), coefficients formed per run."""
    N, P, C, Q = x.shape
    groups = mean.shape[0]
    cg = C // groups
    for p in range(p_start, p_stop):
        for g in range(groups):
            mu = mean[g]
            h, l = split_like(x, mu)
            rs = rstd[g]
            be = cast_like(x, beta[g])
            ga = cast_like(x, gamma[g])
            for c in range(g * cg, (g + 1) * cg):
                al = cast_like(x, rs * weight[c])
                _run_dx(dy[n, p, c], x[n, p, c], dx[n, p, c], h, l, al, be, ga)


@helper
def _split_mean(x, mean, n, cg, hi, lo):
    """``hi[c] + lo[c] = mean[n, c // cg]`` in ``x``'s dtype.

    Per-channel set-up loops run over groups, then their channels: a division
    per channel cost a quarter of group norm's channels-last forward on
    256x7x7x512 (measured with perf).
    """
    for g in range(mean.shape[1]):
        mu = mean[n, g]
        h, l = split_like(x, mu)
        for c in range(g * cg, (g + 1) * cg):
            hi[c] = h
            lo[c] = l


@helper
def _affine_coefficients(x, mean, rstd, weight, bias, n, cg, hi, a, b):
    """Channels last: ``hi``, ``a``, ``b`` in ``x``'s dtype with
    ``(x - hi[c]) * a[c] + b[c] = (x - mean) * rstd * weight[c] + bias[c]``
    for sample ``n``.

    ``hi`` is the group mean rounded; the rest of the mean, ``lo``, goes into
    ``b = bias - lo * a`` (in float64, then rounded), so the elementwise pass
    reads three coefficient arrays and does one subtraction (exact for ``x``
    within a factor of 2 of the mean, one rounding otherwise) and one fused
    multiply-add (``muladd``). Batch norm 32x56x56x64 apply, 2
    threads: 0.86 ms with ``((x - hi) - lo) * a + b``, 0.62 ms so (with the
    aligned arrays and row views).
    """
    for g in range(rstd.shape[1]):
        h, l = split_like(x, mean[n, g])
        rs = rstd[n, g]
        for c in range(g * cg, (g + 1) * cg):
            ac = cast_like(x, rs * weight[c])
            hi[c] = h
            a[c] = ac
            b[c] = cast_like(x, bias[c] - np.float64(l) * np.float64(ac))


@helper
def _backward_coefficients(x, mean, rstd, weight, beta, gamma, n, cg, hi, al, be, ga):
    """Channels last: ``hi``, ``al``, ``be``, ``ga`` in ``x``'s dtype with
    ``al[c]*dy + be[c]*(x - hi[c]) + ga[c]
    = rstd*weight[c]*dy + beta*(x - mean) + gamma`` for sample ``n``
    (``beta``, ``gamma`` per group; the rest of the mean folded into ``ga``
    as in :func:`_affine_coefficients`)."""
    for g in range(rstd.shape[1]):
        h, l = split_like(x, mean[n, g])
        rs = rstd[n, g]
        bg = cast_like(x, beta[g])
        gg = cast_like(x, gamma[g] - np.float64(l) * np.float64(bg))
        for c in range(g * cg, (g + 1) * cg):
            hi[c] = h
            al[c] = cast_like(x, rs * weight[c])
            be[c] = bg
            ga[c] = gg


# -------------------------------------------------------- chunked kernels ---


@kernel
def channel_moments(x, shift, p_chunk, s1_part, s2_part):
    """Partial sums of ``d = x - shift[n, g]`` and ``d**2`` per task and channel.

    ``shift`` is float64 per ``(n, group)``; ``s1_part`` and ``s2_part`` have
    shape ``(N, nchunks, C)``.
    """
    N, P, C, Q = x.shape
    cg = C // shift.shape[1]
    nchunks = s1_part.shape[1]
    sh = aligned_empty(N * C, shift).reshape((N, C))
    for n in range(N):
        for g in range(shift.shape[1]):
            for c in range(g * cg, (g + 1) * cg):
                sh[n, c] = shift[n, g]
    for t in prange(N * nchunks):
        n = t // nchunks
        k = t - n * nchunks
        s1 = aligned_zeros(C, shift)
        s2 = aligned_zeros(C, shift)
        _add_moments(x, n, k * p_chunk, min(P, (k + 1) * p_chunk), sh[n], s1, s2)
        s1_part[n, k, :] = s1
        s2_part[n, k, :] = s2


@helper(inline=True)
def _chunk_totals(part1, part2, n, t1, t2):
    """``t1 = part1[n].sum(axis=0)`` and ``t2`` likewise: the partial sums of
    sample ``n``'s chunks, added in chunk order."""
    t1[:] = part1[n, 0]
    t2[:] = part2[n, 0]
    for k in range(1, part1.shape[1]):
        for c in range(t1.shape[0]):
            t1[c] += part1[n, k, c]
            t2[c] += part2[n, k, c]


@kernel
def channel_moments_totals(s1_part, s2_part, shift, count, mean, var):
    """Mean and biased variance per ``(n, group)`` (float64) from the partial
    sums of :func:`channel_moments` (added over chunks in order, then over a
    group's columns), taken about ``shift``. A serial kernel."""
    N, _, W = s1_part.shape
    groups = shift.shape[1]
    per = W // groups
    inv_count = 1.0 / count
    s1 = np.empty(W)
    s2 = np.empty(W)
    for n in range(N):
        _chunk_totals(s1_part, s2_part, n, s1, s2)
        for g in range(groups):
            t1, t2 = _group_totals(s1, s2, g, per)
            mean[n, g], var[n, g] = _mean_var(t1, t2, shift[n, g], inv_count)


# The chunked kernels' channels-last coefficients are formed once per sample,
# before the tasks: formed per task, they cost a quarter of batch norm's
# 256x7x7x512 backward apply (512 channels for every 128-row task).


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
        for t in prange(N * nchunks):
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
    for t in prange(N * nchunks):
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
    for t in prange(N * nchunks):
        n = t // nchunks
        k = t - n * nchunks
        p_start, p_stop = k * p_chunk, min(P, (k + 1) * p_chunk)
        sa = aligned_zeros(C, mean)
        sb = aligned_zeros(C, mean)
        if Q > 1:
            _add_grad_sums_runs(dy, x, n, p_start, p_stop, mean[n], sa, sb)
        else:
            _add_grad_sums(dy, x, n, p_start, p_stop, hi[n], lo[n], sa, sb)
        a_part[n, k, :] = sa
        b_part[n, k, :] = sb


@kernel
def channel_backward_coefficients(
    a_part, b_part, weight, rstd, count, batch_stats, beta, gamma, dweight, dbias
):
    """From the partial sums of :func:`channel_grad_sums` (added over chunks in
    order): ``beta``, ``gamma`` per ``(n, group)`` of
    ``dx = rstd*weight[c]*dy + beta*(x - mean) + gamma`` (zeros unless
    ``batch_stats``), and, when ``dweight``/``dbias`` have length ``C``,
    ``dweight[c] = sum_n sum(dy * xhat)`` and ``dbias[c] = sum_n sum(dy)``.

    A serial kernel: the same steps in NumPy, a dozen small calls right after
    a pass over memory that has evicted the interpreter from the caches,
    took 85 us of batch norm 32x56x56x64 backward (2.9 ms).
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

    Tasks run in order. Each thread running its chunks from last to first, so
    as to start on what the sums pass read last, was 1-4% slower here in
    paired kernel runs (batch norm 256x7x7x512 and 32x56x56x64, both
    layouts): that data is no longer in the cache.
    """
    N, P, C, Q = x.shape
    cg = C // mean.shape[1]
    nchunks = (P + p_chunk - 1) // p_chunk
    tasks = N * nchunks
    if Q > 1:
        for t in prange(tasks):
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
    for t in prange(tasks):
        n = t // nchunks
        k = t - n * nchunks
        _backward_affine(
            dy, x, dx, n, k * p_chunk, min(P, (k + 1) * p_chunk), hi[n], al[n], be[n], ga[n]
        )


@helper(inline=True)
def _beta_gamma(sg, sgx, rs, inv_count):
    """``beta`` and ``gamma`` from a group's sums of ``g = weight[c] * dy``
    (``sg``) and of ``g * (x - mean)`` (``sgx``)."""
    return -rs * rs * rs * sgx * inv_count, -rs * sg * inv_count


@kernel
def channel_runs_backward(dy, x, mean, rstd, weight, dx, dweight, dbias):
    """Batch norm backward on long channels-first runs (``N == 1``, one group
    per channel, ``Q > SHORT_RUN``), one task per channel: the channel's
    float64 sums of ``dy`` and ``dy * (x - mean)`` over its ``P`` runs, its
    ``dweight[c]``/``dbias[c]``, then its ``dx`` while the runs are still in
    cache (the formulas of :func:`channel_backward_coefficients`).

    The chunked kernels read ``x`` and ``dy`` twice from memory, once for
    the sums and once for ``dx``; a channel of 8x256x28x28 is 8 runs of
    3 KiB, 50 KiB with ``dy``, which the second pass finds in L2 (batch norm
    8x256x28x28 backward, 2 threads, alternating in one process: 0.43 ms
    here, 0.64 ms chunked; 32x64x56x56: 2.57 against 2.92 ms). The sums are
    added in the chunked kernels' order when a chunk is one sample, so both
    give the same bits then. Short runs (7x7 images) stay chunked: 256 runs
    of 196 bytes, a sample's length apart, were 2.2x slower read this way.
    """
    N, P, C, Q = x.shape
    inv_count = 1.0 / (P * Q)
    for c in prange(C):
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


@helper(inline=True)
def _group_coefficients(sa, sb, weight, g, cg, rs, inv_count):
    """``beta`` and ``gamma`` of group ``g`` in
    ``dx = rstd*weight[c]*dy + beta*(x - mean) + gamma``, from its channels'
    sums of ``dy`` (``sa``) and ``dy * (x - mean)`` (``sb``)."""
    sg = 0.0
    sgx = 0.0
    for c in range(g * cg, (g + 1) * cg):
        sg += weight[c] * sa[c]
        sgx += weight[c] * sb[c]
    return _beta_gamma(sg, sgx, rs, inv_count)


@helper(inline=True)
def _group_backward_runs(dy, x, dx, n, g, mean, rstd, weight, inv_count, sa, sb):
    """Channels first (``Q > 1``), group ``g`` of sample ``n``: its channels'
    float64 sums of ``dy`` and ``dy * (x - mean)`` into ``sa``/``sb``, then its
    ``dx`` (see :func:`sample_norm_backward`).
    """
    N, P, C, Q = x.shape
    cg = C // mean.shape[0]
    mu = mean[g]
    h, l = split_like(x, mu)
    for p in range(P):
        for c in range(g * cg, (g + 1) * cg):
            a1, a2 = _run_grad_sums(dy[n, p, c], x[n, p, c], h, l)
            sa[c] += a1
            sb[c] += a2
    rs = rstd[g]
    beta, gamma = _group_coefficients(sa, sb, weight, g, cg, rs, inv_count)
    be = cast_like(x, beta)
    ga = cast_like(x, gamma)
    for p in range(P):
        for c in range(g * cg, (g + 1) * cg):
            al = cast_like(x, rs * weight[c])
            _run_dx(dy[n, p, c], x[n, p, c], dx[n, p, c], h, l, al, be, ga)


@helper(inline=True)
def _pair_sums(g2, x2, h0, l0, h1, l1):
    """``sum(dy)`` and ``sum(dy * ((x - h) - l))`` over two short runs (the rows
    of ``g2``/``x2``), summed in ``x``'s dtype, returned as float64.

    Two channels share one loop: a 49-value run is too short for a loop of
    its own to pay (instance norm 256x512x7x7 backward: 1.5x faster in
    pairs). One array per operand keeps the loop's overlap checks few.
    """
    zero = cast_like(x2, 0.0)
    a0, b0, a1, b1 = zero, zero, zero, zero
    for q in range(x2.shape[1]):
        e0 = g2[0, q]
        e1 = g2[1, q]
        a0 += e0
        b0 += e0 * ((x2[0, q] - h0) - l0)
        a1 += e1
        b1 += e1 * ((x2[1, q] - h1) - l1)
    return np.float64(a0), np.float64(b0), np.float64(a1), np.float64(b1)


@helper(inline=True)
def _pair_dx(g2, x2, d2, h0, l0, al0, be0, ga0, h1, l1, al1, be1, ga1):
    """``dx = al*dy + be*((x - h) - l) + ga`` over two short runs, one loop."""
    for q in range(x2.shape[1]):
        d2[0, q] = al0 * g2[0, q] + be0 * ((x2[0, q] - h0) - l0) + ga0
        d2[1, q] = al1 * g2[1, q] + be1 * ((x2[1, q] - h1) - l1) + ga1


@helper(inline=True)
def _group_pairs_backward(gs, xs, ds, g, cg, mu, rs, weight, inv_count, sa, sb):
    """:func:`_group_backward_runs` for group ``g`` of ``cg`` short channels
    (an even number) of one sample, two channels per loop; ``gs``, ``xs``,
    ``ds`` are the sample's ``(C, Q)`` arrays of ``dy``, ``x``, ``dx`` (``P == 1``),
    ``mu``/``rs`` the group's statistics."""
    h, l = split_like(xs, mu)
    for c in range(g * cg, (g + 1) * cg, 2):
        sa[c], sb[c], sa[c + 1], sb[c + 1] = _pair_sums(gs[c:c + 2], xs[c:c + 2], h, l, h, l)
    beta, gamma = _group_coefficients(sa, sb, weight, g, cg, rs, inv_count)
    be = cast_like(xs, beta)
    ga = cast_like(xs, gamma)
    for c in range(g * cg, (g + 1) * cg, 2):
        al0 = cast_like(xs, rs * weight[c])
        al1 = cast_like(xs, rs * weight[c + 1])
        _pair_dx(gs[c:c + 2], xs[c:c + 2], ds[c:c + 2], h, l, al0, be, ga, h, l, al1, be, ga)


@helper(inline=True)
def _instance_pair_backward(gs, xs, ds, c, mean, rstd, weight, inv_count, sa, sb):
    """:func:`_group_backward_runs` for instance norm's channels ``c`` and
    ``c + 1`` of one sample (its ``(C, Q)`` arrays, as in
    :func:`_group_pairs_backward`), in one loop each for the sums and for
    ``dx``."""
    h0, l0 = split_like(xs, mean[c])
    h1, l1 = split_like(xs, mean[c + 1])
    g2, x2, d2 = gs[c:c + 2], xs[c:c + 2], ds[c:c + 2]
    sa[c], sb[c], sa[c + 1], sb[c + 1] = _pair_sums(g2, x2, h0, l0, h1, l1)
    r0, r1 = rstd[c], rstd[c + 1]
    beta0, gamma0 = _group_coefficients(sa, sb, weight, c, 1, r0, inv_count)
    beta1, gamma1 = _group_coefficients(sa, sb, weight, c + 1, 1, r1, inv_count)
    _pair_dx(
        g2, x2, d2,
        h0, l0, cast_like(xs, r0 * weight[c]), cast_like(xs, beta0), cast_like(xs, gamma0),
        h1, l1, cast_like(xs, r1 * weight[c + 1]), cast_like(xs, beta1), cast_like(xs, gamma1),
    )


# ----------------------------------------------------- per-sample kernels ---


@helper
def _channels_last_samples(x, groups, weight, bias, eps, n0, n1, y, mean, rstd):
    """Samples ``n0:n1`` of :func:`sample_norm_forward`, channels last, with
    one set of per-channel work arrays (a helper of its own so that both
    builds compile its loops alike, 512 bits wide)."""
    wide_vectors()
    N, P, C, Q = x.shape
    cg = C // groups
    inv_count = 1.0 / (P * Q * cg)
    sh = aligned_empty(C, mean)
    s1 = aligned_empty(C, mean)
    s2 = aligned_empty(C, mean)
    hi = aligned_empty(C, x)
    a = aligned_empty(C, x)
    b = aligned_empty(C, x)
    for n in range(n0, n1):
        for g in range(groups):
            s = np.float64(x[n, 0, g * cg, 0])
            for c in range(g * cg, (g + 1) * cg):
                sh[c] = s
        s1[:] = 0.0
        s2[:] = 0.0
        _add_moments(x, n, 0, P, sh, s1, s2)
        for g in range(groups):
            t1, t2 = _group_totals(s1, s2, g, cg)
            mean[n, g], rstd[n, g] = _mean_rstd(t1, t2, sh[g * cg], inv_count, eps)
        _affine_coefficients(x, mean, rstd, weight, bias, n, cg, hi, a, b)
        _affine(x, y, n, 0, P, hi, a, b)


@kernel
def sample_norm_forward(x, groups, weight, bias, eps, samples_per_task, y, mean, rstd):
    """Group norm of each sample: statistics per ``(n, group)`` into ``mean``
    and ``rstd`` (float64, ``rstd = 1/sqrt(var + eps)``), then
    ``y = (x - mean) * rstd * weight[c] + bias[c]`` while the data is in cache.

    Sums are taken about each group's first element. Channels first
    (``Q > 1``), one group at a time: its sums, then its ``y`` while the
    group is in the L1 cache (a 7x7 group of 16 channels is 3 KiB). Taking
    the whole sample's statistics first and then its ``y`` read the sample
    back from L2 and left memory idle during the arithmetic: group norm
    256x512x7x7 forward through the public function, 2 threads, 1.20-1.24 ms
    against 0.94-1.08 ms group by group.

    Channels last (``Q == 1``), a task takes ``samples_per_task``
    consecutive samples, one after the other, with one set of per-channel
    work arrays (group norm 256x7x7x512 forward, alternating in one
    process: 1.47 ms with a task and its six arrays per sample, 1.45 ms with
    4 samples per task). Taking the next sample's sums in the pass that
    writes this one's ``y`` was 5-9% slower on 32x56x56x64 and 8x28x28x256
    and 2-4% faster on 256x7x7x512.
    """
    N, P, C, Q = x.shape
    cg = C // groups
    inv_count = 1.0 / (P * Q * cg)
    if Q > 1:
        # In each row p, a group's runs are contiguous: sum them as one run.
        xs = x.reshape((N, P, groups, cg * Q))
        for n in prange(N):
            for g in range(groups):
                s = np.float64(xs[n, 0, g, 0])
                t1 = 0.0
                t2 = 0.0
                for p in range(P):
                    a1, a2 = _run_moments(xs[n, p, g], s)
                    t1 += a1
                    t2 += a2
                mu, rs = _mean_rstd(t1, t2, s, inv_count, eps)
                mean[n, g] = mu
                rstd[n, g] = rs
                if P == 1:  # NCHW: no loop (instance norm 7x7 kernel: 1.45 -> 1.25 ms)
                    _affine_group_runs(x, y, n, 0, g, cg, mu, rs, weight, bias)
                else:
                    for p in range(P):
                        _affine_group_runs(x, y, n, p, g, cg, mu, rs, weight, bias)
        return
    per = samples_per_task
    for k in prange((N + per - 1) // per):
        _channels_last_samples(
            x, groups, weight, bias, eps, k * per, min(N, (k + 1) * per), y, mean, rstd
        )


@helper(inline=True)
def _sample_backward(dy, x, mean, rstd, weight, n, groups, cg, inv_count, sa, sb, dx):
    """Sample ``n`` of :func:`sample_norm_backward`: its ``dx``, and its
    channels' sums of ``dy`` and ``dy * (x - mean)`` into the zeroed ``sa``
    and ``sb``."""
    N, P, C, Q = x.shape
    if Q > 1:
        # Channels first: one group at a time, its sums and then its dx
        # while the group's runs are still in the L1 cache. Short runs of
        # NCHW data: two channels per loop, on the sample's (C, Q) arrays
        # (sliced once per sample, not per pair); instance norm's have a
        # kernel of their own, instance_runs_backward.
        short = P == 1 and Q <= SHORT_RUN
        gs, xs, ds = dy[n, 0], x[n, 0], dx[n, 0]
        for g in range(groups):
            if short and cg % 2 == 0:
                _group_pairs_backward(
                    gs, xs, ds, g, cg, mean[n, g], rstd[n, g], weight, inv_count, sa, sb
                )
            else:
                _group_backward_runs(
                    dy, x, dx, n, g, mean[n], rstd[n], weight, inv_count, sa, sb
                )
        return
    hi = aligned_empty(C, x)
    lo = aligned_empty(C, x)
    _split_mean(x, mean, n, cg, hi, lo)
    _add_grad_sums(dy, x, n, 0, P, hi, lo, sa, sb)
    beta = aligned_empty(groups, mean)
    gamma = aligned_empty(groups, mean)
    for g in range(groups):
        beta[g], gamma[g] = _group_coefficients(
            sa, sb, weight, g, cg, rstd[n, g], inv_count
        )
    al = aligned_empty(C, x)
    be = aligned_empty(C, x)
    ga = aligned_empty(C, x)
    _backward_coefficients(x, mean, rstd, weight, beta, gamma, n, cg, hi, al, be, ga)
    _backward_affine(dy, x, dx, n, 0, P, hi, al, be, ga)


@helper(inline=True)
def _block_sums(sum_dy, sum_dy_xhat, k):
    """Block ``k``'s rows of ``sum_dy`` and ``sum_dy_xhat``, zeroed, and two
    work arrays for one sample's channel sums."""
    block_dy = sum_dy[k]
    block_dy_xhat = sum_dy_xhat[k]
    block_dy[:] = 0.0
    block_dy_xhat[:] = 0.0
    channels = block_dy.shape[0]
    return block_dy, block_dy_xhat, aligned_empty(channels, sum_dy), aligned_empty(channels, sum_dy)


@helper(inline=True)
def _add_sample_sums(sa, sb, rstd, cg, block_dy, block_dy_xhat):
    """Add a sample's channel sums of ``dy`` (``sa``) and ``dy * (x - mean)``
    (``sb``, times its group's ``rstd``) to its block's rows."""
    for g in range(rstd.shape[0]):
        rs = rstd[g]
        for c in range(g * cg, (g + 1) * cg):
            block_dy[c] += sa[c]
            block_dy_xhat[c] += sb[c] * rs


@helper
def _sample_block_backward(
    dy, x, mean, rstd, weight, samples_per_block, k, sum_dy, sum_dy_xhat, dx
):
    """Block ``k`` of :func:`sample_norm_backward` (a helper of its own so
    that both builds compile its loops alike, 512 bits wide)."""
    wide_vectors()
    N, P, C, Q = x.shape
    groups = mean.shape[1]
    cg = C // groups
    inv_count = 1.0 / (P * Q * cg)
    block_dy, block_dy_xhat, sa, sb = _block_sums(sum_dy, sum_dy_xhat, k)
    for n in range(k * samples_per_block, min(N, (k + 1) * samples_per_block)):
        sa[:] = 0.0
        sb[:] = 0.0
        _sample_backward(dy, x, mean, rstd, weight, n, groups, cg, inv_count, sa, sb, dx)
        _add_sample_sums(sa, sb, rstd[n], cg, block_dy, block_dy_xhat)


@kernel
def sample_norm_backward(
    dy, x, mean, rstd, weight, samples_per_block, sum_dy, sum_dy_xhat, dx
):
    """Backward of :func:`sample_norm_forward`, one task per block of
    ``samples_per_block`` samples, one sample after the other.

    Each sample's per-channel sums of ``dy`` and ``dy * xhat`` (float64) are
    added, in sample order, to its block's row ``k`` of ``sum_dy`` and
    ``sum_dy_xhat`` (the parameter gradients are the sums of those rows);
    then, with ``g = dy * weight`` and ``M`` elements per group,
    ``dx = rstd * (g - sum(g)/M - xhat * sum(g * xhat)/M)``.

    A row per block rather than per sample keeps the partial sums small next
    to the data: NumPy adds them up after the pass, with the caches cold
    (instance norm 256x512x7x7: 2 MiB of per-sample rows took 60 us to add).
    """
    N = x.shape[0]
    nblocks = (N + samples_per_block - 1) // samples_per_block
    for k in prange(nblocks):
        _sample_block_backward(
            dy, x, mean, rstd, weight, samples_per_block, k, sum_dy, sum_dy_xhat, dx
        )


@kernel
def instance_runs_backward(
    dy, x, mean, rstd, weight, samples_per_block, sum_dy, sum_dy_xhat, dx
):
    """:func:`sample_norm_backward` for instance norm (one channel per group)
    on short channels-first runs (``P == 1``, ``Q <= SHORT_RUN``): two
    channels per loop, for the sums and for ``dx``.

    A kernel of its own: the same loops inside :func:`sample_norm_backward`,
    among its other layouts, ran 9-16% slower (instance norm 256x512x7x7
    backward kernel, 2 threads, alternating in one process: 1.14-1.21 ms
    there, 1.02-1.08 ms here).
    """
    N, P, C, Q = x.shape
    inv_count = 1.0 / Q
    paired = C - C % 2
    nblocks = (N + samples_per_block - 1) // samples_per_block
    for k in prange(nblocks):
        block_dy, block_dy_xhat, sa, sb = _block_sums(sum_dy, sum_dy_xhat, k)
        for n in range(k * samples_per_block, min(N, (k + 1) * samples_per_block)):
            gs, xs, ds = dy[n, 0], x[n, 0], dx[n, 0]
            for c in range(0, paired, 2):
                _instance_pair_backward(
                    gs, xs, ds, c, mean[n], rstd[n], weight, inv_count, sa, sb
                )
            if paired < C:  # an odd channel count: the last channel alone
                sa[C - 1] = 0.0
                sb[C - 1] = 0.0
                _group_backward_runs(
                    dy, x, dx, n, C - 1, mean[n], rstd[n], weight, inv_count, sa, sb
                )
            _add_sample_sums(sa, sb, rstd[n], 1, block_dy, block_dy_xhat)
