"""Row kernels on the GPU, mirroring :mod:`numbanorm._cpu.rows`.

One block per row (a grid-stride loop over rows): each thread sums its
strided share of the row in float64 about the row's first element, the block
adds the partials in a fixed tree (:func:`~numbanorm._cuda.blocks.block_sum2`),
and the elementwise pass runs in the input's dtype with the mean split into
``hi + lo`` of that dtype, as on the CPU. Parameter gradients are summed per
column over fixed blocks of rows into a partial array that a second kernel
adds in order: no atomics, results depend on the shape only.
"""

import math

import numpy as np

from .._cpu.compile import cast_like
from .blocks import block_sum2, split_mean
from .target import THREADS, blocks_for, cuda


@cuda.jit(device=True)
def _normalize_row(x, weight, bias, eps, center, r, y, mean, rstd, sa, sb):
    """Row ``r`` of :func:`_row_forward`, by the block's threads."""
    n = x.shape[1]
    t = cuda.threadIdx.x
    shift = np.float64(x[r, 0]) if center else 0.0
    s1 = 0.0
    s2 = 0.0
    for j in range(t, n, THREADS):
        d = np.float64(x[r, j]) - shift
        s1 += d
        s2 += d * d
    s1, s2 = block_sum2(s1, s2, sa, sb)
    m = s1 / n
    if center:
        var = s2 / n - m * m
        mu = shift + m
    else:
        var = s2 / n
        mu = 0.0
    if var < 0.0:
        var = 0.0
    rs = 1.0 / math.sqrt(var + eps)
    if t == 0:
        mean[r] = mu
        rstd[r] = rs
    hi, lo = split_mean(x, mu)
    rs_x = cast_like(x, rs)
    for j in range(t, n, THREADS):
        y[r, j] = ((x[r, j] - hi) - lo) * rs_x * weight[j] + bias[j]


@cuda.jit
def _row_forward(x, weight, bias, eps, center, y, mean, rstd):
    sa = cuda.shared.array(THREADS, np.float64)
    sb = cuda.shared.array(THREADS, np.float64)
    for r in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
        _normalize_row(x, weight, bias, eps, center, r, y, mean, rstd, sa, sb)


@cuda.jit
def _row_forward_residual(x, residual, weight, bias, eps, center, h, y, mean, rstd):
    sa = cuda.shared.array(THREADS, np.float64)
    sb = cuda.shared.array(THREADS, np.float64)
    t = cuda.threadIdx.x
    for r in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
        for j in range(t, x.shape[1], THREADS):
            h[r, j] = x[r, j] + residual[r, j]
        cuda.syncthreads()  # every thread reads h[r, 0], the shift
        _normalize_row(h, weight, bias, eps, center, r, y, mean, rstd, sa, sb)


def row_forward(x, weight, bias, eps, center, y, mean, rstd):
    """Normalize each row of ``x`` into ``y``; write its ``mean`` and ``rstd``
    (see :func:`numbanorm._cpu.rows.row_forward`)."""
    _row_forward[blocks_for(x.shape[0] * THREADS), THREADS](
        x, weight, bias, eps, center, y, mean, rstd
    )


def row_forward_residual(x, residual, weight, bias, eps, center, h, y, mean, rstd):
    """:func:`row_forward` of ``h = x + residual``, written to ``h`` too (see
    :func:`numbanorm._cpu.rows.row_forward_residual`)."""
    _row_forward_residual[blocks_for(x.shape[0] * THREADS), THREADS](
        x, residual, weight, bias, eps, center, h, y, mean, rstd
    )


@cuda.jit
def _row_backward_dx(dy, x, mean, rstd, weight, center, dh, dx):
    sa = cuda.shared.array(THREADS, np.float64)
    sb = cuda.shared.array(THREADS, np.float64)
    rows, n = x.shape
    t = cuda.threadIdx.x
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        mu = mean[r]
        rs = rstd[r]
        hi, lo = split_mean(x, mu)
        rs_x = cast_like(x, rs)
        sg = 0.0
        sgx = 0.0
        for j in range(t, n, THREADS):
            g = np.float64(dy[r, j]) * np.float64(weight[j])
            sg += g
            sgx += g * (np.float64((x[r, j] - hi) - lo) * rs)
        sg, sgx = block_sum2(sg, sgx, sa, sb)
        cg = cast_like(x, sg / n if center else 0.0)
        cgx = cast_like(x, sgx / n)
        add_dh = dh.shape[0] != 0
        for j in range(t, n, THREADS):
            xh = ((x[r, j] - hi) - lo) * rs_x
            d = rs_x * (dy[r, j] * weight[j] - cg - xh * cgx)
            dx[r, j] = d + dh[r, j] if add_dh else d


@cuda.jit
def _row_param_partials(dy, x, mean, rstd, rows_per_block, dweight_part, dbias_part):
    """Thread per (block of rows k, column j): float64 sums of ``dy * xhat``
    and ``dy`` over the block's rows, in row order."""
    rows, n = x.shape
    nblocks = dweight_part.shape[0]
    start = cuda.grid(1)
    for i in range(start, nblocks * n, cuda.gridDim.x * THREADS):
        k = i // n
        j = i - k * n
        dw = 0.0
        db = 0.0
        for r in range(k * rows_per_block, min(rows, (k + 1) * rows_per_block)):
            g = np.float64(dy[r, j])
            dw += g * ((np.float64(x[r, j]) - mean[r]) * rstd[r])
            db += g
        dweight_part[k, j] = dw
        dbias_part[k, j] = db


def row_backward(
    dy, x, mean, rstd, weight, center, param_grads, rows_per_block, dh, dx, dweight_part,
    dbias_part,
):
    """Gradient of :func:`row_forward` (see :func:`numbanorm._cpu.rows.row_backward`),
    plus ``dh`` when it has rows."""
    rows, n = x.shape
    _row_backward_dx[blocks_for(rows * THREADS), THREADS](
        dy, x, mean, rstd, weight, center, dh, dx
    )
    if param_grads:
        _row_param_partials[blocks_for(dweight_part.size), THREADS](
            dy, x, mean, rstd, rows_per_block, dweight_part, dbias_part
        )


@cuda.jit
def _row_scale_forward(v, g, w, rstd):
    sa = cuda.shared.array(THREADS, np.float64)
    sb = cuda.shared.array(THREADS, np.float64)
    rows, n = v.shape
    t = cuda.threadIdx.x
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        s = 0.0
        for j in range(t, n, THREADS):
            d = np.float64(v[r, j])
            s += d * d
        s, _ = block_sum2(s, 0.0, sa, sb)
        rs = 1.0 / math.sqrt(s)
        if t == 0:
            rstd[r] = rs
        scale = cast_like(v, g[r] * rs)
        for j in range(t, n, THREADS):
            w[r, j] = v[r, j] * scale


def row_scale_forward(v, g, w, rstd):
    """Weight norm per row: ``rstd = 1/||v||``, ``w = v * (g * rstd)``."""
    _row_scale_forward[blocks_for(v.shape[0] * THREADS), THREADS](v, g, w, rstd)


@cuda.jit
def _row_scale_backward(dw, v, g, rstd, dv, dg):
    sa = cuda.shared.array(THREADS, np.float64)
    sb = cuda.shared.array(THREADS, np.float64)
    rows, n = v.shape
    t = cuda.threadIdx.x
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        s = 0.0
        for j in range(t, n, THREADS):
            s += np.float64(dw[r, j]) * np.float64(v[r, j])
        s, _ = block_sum2(s, 0.0, sa, sb)
        rs = rstd[r]
        if t == 0:
            dg[r] = s * rs
        a = cast_like(v, g[r] * rs)
        b = cast_like(v, -g[r] * s * rs * rs * rs)
        for j in range(t, n, THREADS):
            dv[r, j] = a * dw[r, j] + b * v[r, j]


def row_scale_backward(dw, v, g, rstd, dv, dg):
    """Gradients of :func:`row_scale_forward`: ``dg = t * rstd`` and
    ``dv = g*rstd*dw - g*t*rstd**3 * v`` with ``t = sum(dw * v)`` per row."""
    _row_scale_backward[blocks_for(v.shape[0] * THREADS), THREADS](dw, v, g, rstd, dv, dg)
