"""Row kernels: statistics, forward and backward per row of a ``(rows, L)`` view.

Layer norm (``center=True``) and RMS norm (``center=False``) run here, and
weight norm (one 2-norm per row). A task takes a row or a block of rows; each
row's result is its own. Statistics are float64 sums taken about a shift (the
row's first element when centering, and the row's mean in a second pass when
that lies far from it), so ``x - mean`` never cancels even when the mean is
1e6 times the spread. Elementwise outputs are computed in the
input's dtype with the mean split into ``hi + lo`` parts of that dtype, so
``(x - hi) - lo`` keeps float64 accuracy of the difference while the
arithmetic runs at float32 vector width.
"""

import numpy as np
from numba import prange

from .compile import cast_like, copy_into, far_shift, helper, kernel, muladd, split_like

#: Rows per task of :func:`row_forward`.
FORWARD_ROWS_PER_TASK = 8
#: Rows whose parameter-gradient terms are added together (see row_backward).
PARAM_ROWS = 4
#: Rows at least this long take dx and the parameter terms in one loop
#: (:func:`_backward_block`).
FUSED_ROW_MIN = 2048


@helper(inline=True)
def _row_moments(x, r, shift):
    """The sums of ``x[r] - shift`` and ``(x[r] - shift)**2``, in float64."""
    s1 = 0.0
    s2 = 0.0
    for j in range(x.shape[1]):
        d = np.float64(x[r, j]) - shift
        s1 += d
        s2 = muladd(d, d, s2)
    return s1, s2


@helper
def _normalize_rows(x, weight, bias, eps, center, r0, r1, y, mean, rstd):
    """Rows ``r0:r1`` of :func:`row_forward` (a helper of its own so that
    both builds compile its loops alike)."""
    n = x.shape[1]
    for r in range(r0, r1):
        shift = np.float64(x[r, 0]) if center else 0.0
        s1, s2 = _row_moments(x, r, shift)
        if center:
            offset = far_shift(s1, s2, 1.0 / n)
            if offset != 0.0:  # the row's first value lies far from its mean
                shift += offset
                s1, s2 = _row_moments(x, r, shift)
        m = s1 / n
        if center:
            var = s2 / n - m * m
            mu = shift + m
        else:
            var = s2 / n
            mu = 0.0
        if var < 0.0:
            var = 0.0
        rs = 1.0 / np.sqrt(var + eps)
        mean[r] = mu
        rstd[r] = rs
        hi, lo = split_like(x, mu)
        rs_x = cast_like(x, rs)
        for j in range(n):
            y[r, j] = muladd(((x[r, j] - hi) - lo) * rs_x, weight[j], bias[j])


@kernel
def row_forward(x, weight, bias, eps, center, y, mean, rstd):
    """Normalize each row of ``x`` into ``y``; write its ``mean`` and ``rstd``.

    ``y = (x - mean) * rstd * weight + bias`` with ``rstd = 1/sqrt(var + eps)``,
    ``var`` the biased variance (``center=True``) or the mean square
    (``center=False``, then ``mean`` is written as 0). ``weight`` and ``bias``
    have ``x``'s dtype. Tasks of ``FORWARD_ROWS_PER_TASK`` rows: each row's
    result is its own, whatever the task.
    """
    rows = x.shape[0]
    for task in prange((rows + FORWARD_ROWS_PER_TASK - 1) // FORWARD_ROWS_PER_TASK):
        t = np.int64(task)  # signed in both builds (see kernel)
        r0 = t * FORWARD_ROWS_PER_TASK
        r1 = min(rows, r0 + FORWARD_ROWS_PER_TASK)
        _normalize_rows(x, weight, bias, eps, center, r0, r1, y, mean, rstd)


@helper
def _add_and_normalize_rows(x, residual, weight, bias, eps, center, r0, r1, h, y, mean, rstd):
    """Rows ``r0:r1`` of :func:`row_forward_residual`, one row at a time."""
    for r in range(r0, r1):
        for j in range(x.shape[1]):
            h[r, j] = x[r, j] + residual[r, j]
        _normalize_rows(h, weight, bias, eps, center, r, r + 1, y, mean, rstd)


@kernel
def row_forward_residual(x, residual, weight, bias, eps, center, h, y, mean, rstd):
    """:func:`row_forward` of ``h = x + residual`` (added in ``x``'s dtype, as
    NumPy would), which is written to ``h`` too: each row is added, then
    normalized while it is in cache, so memory is read and written once.
    The tasks are :func:`row_forward`'s."""
    rows = x.shape[0]
    for task in prange((rows + FORWARD_ROWS_PER_TASK - 1) // FORWARD_ROWS_PER_TASK):
        t = np.int64(task)  # signed in both builds (see kernel)
        r0 = t * FORWARD_ROWS_PER_TASK
        r1 = min(rows, r0 + FORWARD_ROWS_PER_TASK)
        _add_and_normalize_rows(x, residual, weight, bias, eps, center, r0, r1, h, y, mean, rstd)


@helper(inline=True)
def _row_dx_coefficients(dy, x, weight, r, mu, rs, center):
    """Row ``r``'s ``hi``, ``lo`` (its mean split), ``rstd`` in ``x``'s dtype,
    and the two ``dx`` coefficients ``mean(g)`` (0 unless ``center``) and
    ``mean(g * xhat)``.

    The terms ``g`` and ``g * xhat`` are formed in ``x``'s dtype, as the
    ``dx`` loop forms them, and summed in float64 (float64 products were
    slower and no more accurate; see ``docs/accuracy.rst``).
    """
    n = x.shape[1]
    hi, lo = split_like(x, mu)
    rs_x = cast_like(x, rs)
    sg = 0.0
    sgx = 0.0
    for j in range(n):
        g = dy[r, j] * weight[j]
        sg += np.float64(g)
        sgx += np.float64(g * (((x[r, j] - hi) - lo) * rs_x))
    cg = cast_like(x, sg / n if center else 0.0)
    return hi, lo, rs_x, cg, cast_like(x, sgx / n)


@helper(inline=True)
def _row_dx(dy, x, weight, r, hi, lo, rs_x, cg, cgx, dh, dx):
    """``dx`` of row ``r`` (see :func:`row_backward`), plus ``dh``'s row when
    ``dh`` has rows."""
    if dh.shape[0] == 0:
        for j in range(x.shape[1]):
            xh = ((x[r, j] - hi) - lo) * rs_x
            dx[r, j] = rs_x * (dy[r, j] * weight[j] - cg - xh * cgx)
    else:
        for j in range(x.shape[1]):
            xh = ((x[r, j] - hi) - lo) * rs_x
            dx[r, j] = rs_x * (dy[r, j] * weight[j] - cg - xh * cgx) + dh[r, j]


@helper(inline=True)
def _add_rows_param_terms(dy, x, r0, r1, his, los, rss, dw, db):
    """Rows ``r0:r1``'s terms ``dy * xhat`` and ``dy`` added to ``dw`` and
    ``db``, row by row (``his[r - r0]`` etc. hold row ``r``'s mean and rstd)."""
    for r in range(r0, r1):
        hi, lo, rs_x = his[r - r0], los[r - r0], rss[r - r0]
        for j in range(x.shape[1]):
            g = dy[r, j]
            dw[j] += np.float64(g * (((x[r, j] - hi) - lo) * rs_x))
            db[j] += np.float64(g)


@helper
def _block_work(x, param_grads):
    """A row block's float64 parameter sums (empty unless ``param_grads``),
    and room for the hi, lo, rstd and two ``dx`` coefficients of its last
    ``PARAM_ROWS`` rows."""
    width = x.shape[1] if param_grads else 0
    last = np.empty((5, PARAM_ROWS), x.dtype)
    return np.zeros(width), np.zeros(width), last[0], last[1], last[2], last[3], last[4]


#: Columns of the parameter gradients per task of :func:`_block_totals`.
TOTAL_COLUMNS = 1024


@helper
def _block_totals(dweight_part, dbias_part, dweight, dbias):
    """``dweight = dweight_part.sum(axis=0)`` and ``dbias`` likewise: the row
    blocks' float64 sums added in block order (NumPy's order, the same bits),
    one task per ``TOTAL_COLUMNS`` columns, then stored in ``dweight``'s and
    ``dbias``'s dtype (the weight's: rounded once, as ``astype`` would).
    Inside the kernel rather than in NumPy after it, where a few NumPy
    calls would cost more than the additions."""
    blocks, n = dweight_part.shape
    for task in prange((n + TOTAL_COLUMNS - 1) // TOTAL_COLUMNS):
        t = np.int64(task)  # signed in both builds (see kernel)
        j0 = t * TOTAL_COLUMNS
        j1 = min(n, j0 + TOTAL_COLUMNS)
        tw = dweight_part[0, j0:j1].copy()
        tb = dbias_part[0, j0:j1].copy()
        for k in range(1, blocks):
            for j in range(j1 - j0):
                tw[j] += dweight_part[k, j0 + j]
                tb[j] += dbias_part[k, j0 + j]
        for j in range(j1 - j0):
            dweight[j0 + j] = tw[j]
            dbias[j0 + j] = tb[j]


@helper
def _backward_block(
    dy, x, mean, rstd, weight, center, param_grads, rows_per_block, k, dh, dx,
    dweight_part, dbias_part,
):
    """Block ``k`` of :func:`row_backward` (a helper of its own so that both
    builds compile its loops alike).

    Rows go ``PARAM_ROWS`` at a time: each row's sums and coefficients
    first, then the rows' parameter terms in a loop of their own, in ``x``'s
    dtype before the float64 sums (loading and storing those sums once per
    row would cost more than the rest of the pass). Rows of at least
    ``FUSED_ROW_MIN`` values, too long for four of them to stay in L1, take
    their ``dx`` in that same loop, which reads them once instead of twice;
    shorter ones take ``dx`` row by row, a loop that vectorizes better.
    Both orders give the same bits.
    """
    rows, n = x.shape
    dw, db, his, los, rss, cgs, cgxs = _block_work(x, param_grads)
    stop = min(rows, (k + 1) * rows_per_block)
    long_rows = n >= FUSED_ROW_MIN
    for r0 in range(k * rows_per_block, stop, PARAM_ROWS):
        r1 = min(stop, r0 + PARAM_ROWS)
        four = param_grads and r1 - r0 == PARAM_ROWS
        fused = four and long_rows  # dx in the four-row loop below
        for r in range(r0, r1):
            hi, lo, rs_x, cg, cgx = _row_dx_coefficients(
                dy, x, weight, r, mean[r], rstd[r], center
            )
            his[r - r0], los[r - r0], rss[r - r0] = hi, lo, rs_x
            cgs[r - r0], cgxs[r - r0] = cg, cgx
            if not fused:
                _row_dx(dy, x, weight, r, hi, lo, rs_x, cg, cgx, dh, dx)
        if not param_grads:
            continue
        if not four:
            _add_rows_param_terms(dy, x, r0, r1, his, los, rss, dw, db)
            continue
        h0, h1, h2, h3 = his[0], his[1], his[2], his[3]
        l0, l1, l2, l3 = los[0], los[1], los[2], los[3]
        s0, s1, s2, s3 = rss[0], rss[1], rss[2], rss[3]
        g4 = dy[r0:r1]  # one array each: the loops need few overlap checks
        x4 = x[r0:r1]
        if not fused:
            for j in range(n):
                g0, g1, g2, g3 = g4[0, j], g4[1, j], g4[2, j], g4[3, j]
                t0 = g0 * (((x4[0, j] - h0) - l0) * s0)
                t1 = g1 * (((x4[1, j] - h1) - l1) * s1)
                t2 = g2 * (((x4[2, j] - h2) - l2) * s2)
                t3 = g3 * (((x4[3, j] - h3) - l3) * s3)
                dw[j] += np.float64((t0 + t1) + (t2 + t3))
                db[j] += np.float64((g0 + g1) + (g2 + g3))
            continue
        c0, c1, c2, c3 = cgs[0], cgs[1], cgs[2], cgs[3]
        e0, e1, e2, e3 = cgxs[0], cgxs[1], cgxs[2], cgxs[3]
        d4 = dx[r0:r1]
        for j in range(n):
            wj = weight[j]
            g0, g1, g2, g3 = g4[0, j], g4[1, j], g4[2, j], g4[3, j]
            xh0 = ((x4[0, j] - h0) - l0) * s0
            xh1 = ((x4[1, j] - h1) - l1) * s1
            xh2 = ((x4[2, j] - h2) - l2) * s2
            xh3 = ((x4[3, j] - h3) - l3) * s3
            d4[0, j] = s0 * (g0 * wj - c0 - xh0 * e0)
            d4[1, j] = s1 * (g1 * wj - c1 - xh1 * e1)
            d4[2, j] = s2 * (g2 * wj - c2 - xh2 * e2)
            d4[3, j] = s3 * (g3 * wj - c3 - xh3 * e3)
            dw[j] += np.float64((g0 * xh0 + g1 * xh1) + (g2 * xh2 + g3 * xh3))
            db[j] += np.float64((g0 + g1) + (g2 + g3))
        if dh.shape[0] != 0:  # the four rows' dx are still in cache
            for r in range(r0, r1):
                for j in range(n):
                    dx[r, j] += dh[r, j]
    if param_grads:
        copy_into(dweight_part[k], dw)
        copy_into(dbias_part[k], db)


@kernel
def row_backward(
    dy, x, mean, rstd, weight, center, param_grads, rows_per_block, dh, dx, dweight_part,
    dbias_part, dweight, dbias,
):
    """Gradient of :func:`row_forward` with respect to ``x`` (and the affine).

    With ``xhat = (x - mean) * rstd`` and ``g = dy * weight``:
    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` (``mean(g)`` is
    dropped when ``center=False``). When ``param_grads``, block ``k`` of
    ``rows_per_block`` rows writes its float64 sums of ``dy * xhat`` and ``dy``
    to ``dweight_part[k]`` and ``dbias_part[k]``, and :func:`_block_totals`
    adds the blocks in order into ``dweight`` and ``dbias``, so the result
    does not depend on the thread count. A ``dh`` with rows (the gradient
    reaching ``x`` by another path, as a residual's) is added to ``dx`` in
    the same pass; give it 0 rows for none.
    """
    rows = x.shape[0]
    for task in prange((rows + rows_per_block - 1) // rows_per_block):
        k = np.int64(task)  # signed in both builds (see kernel)
        _backward_block(
            dy, x, mean, rstd, weight, center, param_grads, rows_per_block, k, dh, dx,
            dweight_part, dbias_part,
        )
    if param_grads:
        _block_totals(dweight_part, dbias_part, dweight, dbias)


@helper(inline=True)
def _four_squares(v, r, j, quarter):
    """The squares of ``v[r, j]`` and of the values 1, 2 and 3 quarters of
    the row after it, added in ``v``'s dtype, as float64."""
    a0 = v[r, j]
    a1 = v[r, j + quarter]
    a2 = v[r, j + 2 * quarter]
    a3 = v[r, j + 3 * quarter]
    return np.float64((a0 * a0 + a1 * a1) + (a2 * a2 + a3 * a3))


@helper(inline=True)
def _sum_of_squares(v, r):
    """``sum(v[r]**2)`` over row ``r``, float64, four squares at a time (see
    :func:`row_scale_forward`)."""
    n = v.shape[1]
    quarter = n // 4
    s = 0.0
    for j in range(quarter):
        s += _four_squares(v, r, j, quarter)
    for j in range(4 * quarter, n):
        d = np.float64(v[r, j])
        s += d * d
    return s


@helper(inline=True)
def _scale_and_sum_next(v, r, scale, w):
    """``w[r] = v[r] * scale``, and in the same loop :func:`_sum_of_squares`
    of row ``r + 1`` (the same steps)."""
    n = v.shape[1]
    quarter = n // 4
    s = 0.0
    for j in range(quarter):
        s += _four_squares(v, r + 1, j, quarter)
        w[r, j] = v[r, j] * scale
        w[r, j + quarter] = v[r, j + quarter] * scale
        w[r, j + 2 * quarter] = v[r, j + 2 * quarter] * scale
        w[r, j + 3 * quarter] = v[r, j + 3 * quarter] * scale
    for j in range(4 * quarter, n):
        d = np.float64(v[r + 1, j])
        s += d * d
        w[r, j] = v[r, j] * scale
    return s


@helper(inline=True)
def _scale_task(v, g, rows_per_task, k, w, rstd):
    """Task ``k`` of :func:`row_scale_forward`: its rows' ``rstd`` and ``w``."""
    rows, n = v.shape
    r0 = k * rows_per_task
    r1 = min(rows, r0 + rows_per_task)
    s = _sum_of_squares(v, r0)
    for r in range(r0, r1):
        rs = 1.0 / np.sqrt(s)
        rstd[r] = rs
        scale = cast_like(v, g[r] * rs)
        if r + 1 < r1:
            s = _scale_and_sum_next(v, r, scale, w)
        else:
            for j in range(n):
                w[r, j] = v[r, j] * scale


@kernel
def row_scale_forward(v, g, rows_per_task, w, rstd):
    """Weight norm per row of ``v``: ``rstd = 1/||v||``, ``w = v * (g * rstd)``.

    Each task takes ``rows_per_task`` consecutive rows: the first row's
    float64 sum of squares, then each row's scaling, which also sums the
    next row's squares in the same loop. With one row per task that is the
    sum and then the scaling while the row is in cache; with several, the
    loads of the next row overlap the stores of this one. A task's first
    row is summed in a loop
    of its own, the others inside the scaling loop: the same steps, but
    LLVM may vectorize the two loops differently, and the sums of float64
    rows can differ in the last bit. Which rows are first depends on the
    shape alone, so the results do not depend on the thread count.

    The squares of four values a quarter of the row apart are added in
    ``v``'s dtype, then to the float64 sum: four float32 lanes per float64
    conversion instead of one. On float32 data this moves ``rstd`` by at
    most 9e-8 of itself (three float32
    roundings of a sum of positive terms, halved by the square root) and by
    5e-9 on normal data, under the float32 rounding of ``w``
    (``docs/accuracy.rst``).

    Rows are indexed as ``v[r, j]``, never taken as views ``v[r]``: in the
    serial build each view takes and drops a reference to ``v``'s memory.
    """
    rows = v.shape[0]
    for task in prange((rows + rows_per_task - 1) // rows_per_task):
        k = np.int64(task)  # signed in both builds (see kernel)
        _scale_task(v, g, rows_per_task, k, w, rstd)


@kernel
def row_scale_backward(dw, v, g, rstd, dv, dg):
    """Gradients of :func:`row_scale_forward` per row.

    With ``t = sum(dw * v)``: ``dg = t * rstd`` and
    ``dv = g*rstd*dw - g*t*rstd**3 * v``.
    """
    rows, n = v.shape
    for task in prange(rows):
        r = np.int64(task)  # signed in both builds (see kernel)
        t = 0.0
        for j in range(n):
            t += np.float64(dw[r, j]) * np.float64(v[r, j])
        rs = rstd[r]
        dg[r] = t * rs
        a = cast_like(v, g[r] * rs)
        b = cast_like(v, -g[r] * t * rs * rs * rs)
        for j in range(n):
            dv[r, j] = a * dw[r, j] + b * v[r, j]
