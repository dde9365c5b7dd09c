"""Loop bodies of the channel kernels over an ``(N, P, C, Q)`` view: sums per
``(n, c)`` and elementwise passes with per-channel coefficients.

Batch norm is ``N = 1`` (statistics per channel over ``P x Q``); group and
instance norm reduce per ``(n, group)`` by adding the per-channel sums of a
group. NCHW data has ``P = 1``; channels-last data has ``Q = 1``, where the
loops run along ``C`` with the task's coefficients in local arrays, aligned to
cache lines (that form vectorizes).

Two ways to split the work, both chosen from the shape alone, so every result
is the same for any thread count:

* chunked kernels (``channel_*``, :mod:`.channels`): tasks ``(n, chunk of P)``, each writing its
  own slot of a partial-sum array that the caller adds in order; used for
  batch norm, whose statistics span every sample;
* per-sample kernels (``sample_norm_*``, :mod:`.samples`): one task per sample computes the
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

from .compile import aligned_empty, cast_like, helper, muladd, split_like

#: Channels-last reductions fold this many rows together in float64 registers
#: before updating the per-channel sums, so the sums are loaded and stored once
#: per block of rows instead of once per element, on rows of at least
#: ``PAIRED_ROWS_MAX_C`` channels.
FOLDED_ROWS = 8
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
    it leaves and channels-first runs (``Q > 1``) run by run.
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
    and ``s2`` loaded and stored once per pair), wider ones ``FOLDED_ROWS`` at
    a time, folded in registers.
    """
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
        while r + FOLDED_ROWS <= rows:
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
            r += FOLDED_ROWS
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


@helper
def _mean_var(t1, t2, s, inv_count):
    """Mean and biased variance from the sums ``t1``, ``t2`` of ``x - s`` and
    ``(x - s)**2`` over ``1 / inv_count`` values (float64; NaN stays NaN).

    The statistics helpers take the reciprocal of the count, not the count:
    a division per group or channel is a slow instruction, and instance
    norm has hundreds of groups per sample."""
    m = t1 * inv_count
    var = t2 * inv_count - m * m
    if var < 0.0:
        var = 0.0
    return s + m, var


@helper
def _mean_rstd(t1, t2, s, inv_count, eps):
    """Mean and ``1/sqrt(var + eps)`` (see :func:`_mean_var`)."""
    mu, var = _mean_var(t1, t2, s, inv_count)
    return mu, 1.0 / np.sqrt(var + eps)


@helper
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
    over ``x[n, p, c]`` with ``p`` from ``p_start`` checked once per row.
    """
    N, P, C, Q = x.shape
    return x.reshape((N, P, C))[n, p_start:p_stop]


@helper
def _affine(x, y, n, p_start, p_stop, hi, a, b):
    """Channels last (``Q == 1``): ``y = (x - hi[c]) * a[c] + b[c]`` over rows
    ``p_start:p_stop`` (coefficients from :func:`_affine_coefficients`)."""
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
    blocks of 4 rows are 8 streams with a row's stride between them, which
    memory serves slower than 2.

    Each channel's terms ``dy`` and ``dy * (x - hi)`` of ``GRAD_ROW_BLOCK``
    rows are added in ``x``'s dtype (one sum of a few values per channel, as
    a short channel-first run's), and then to the float64 sums, with
    ``sum(dy * (x - hi - lo)) = sum(dy * (x - hi)) - lo * sum(dy)``: a row
    of float32 sums is twice as many values per vector as one of float64
    sums, and ``lo`` leaves the loop. Two rows per loop load and store the
    block's sums once for both (``docs/accuracy.rst`` gives the errors).
    """
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
    first (one float32 sum of a few hundred values instead of float64
    products)."""
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
    would cost as much as it.
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

    Per-channel set-up loops run over groups, then their channels, with no
    division per channel.
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
    multiply-add (``muladd``).
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



@helper
def _beta_gamma(sg, sgx, rs, inv_count):
    """``beta`` and ``gamma`` from a group's sums of ``g = weight[c] * dy``
    (``sg``) and of ``g * (x - mean)`` (``sgx``)."""
    return -rs * rs * rs * sgx * inv_count, -rs * sg * inv_count



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
