"""Norms as compositions of the CUDA kernels: the GPU counterpart of
:mod:`numbanorm._cpu.engine`, function for function (its ``*_steps`` functions
wrap the plain ones here, which work everything out on every call).

The CPU engine finishes on the host with NumPy (adding partial sums, forming
coefficients); here every such step is a small kernel from
:mod:`numbanorm._cuda.finish`, so statistics, ``saved``, running statistics
and gradients stay on the device. Work splits depend on the shape only.
"""

import numpy as np

from . import arrays, finish
from .arrays import param
from .channels import channel_affine, channel_backward_apply, channel_grad_sums, channel_moments
from .rows import row_backward as _row_backward
from .rows import row_forward as _row_forward
from .rows import row_forward_residual as _row_forward_residual
from .rows import row_scale_backward, row_scale_forward
from .target import SIMULATOR, empty

#: Elements of one ``(n, chunk of P)`` partial sum (smaller than the CPU's: a
#: GPU needs many more independent sums to fill its cores; the simulator's
#: tiny test shapes still span several chunks).
CHUNK_ELEMENTS = 1 << 6 if SIMULATOR else 1 << 12
#: Row backward: partial parameter-gradient sums over blocks of rows.
MAX_ROW_BLOCKS = 4 if SIMULATOR else 256
MIN_ROWS_PER_BLOCK = 2 if SIMULATOR else 16

# Array steps shared with the CPU engine's interface.
to_kernel = arrays.to_kernel
output = arrays.output


def stats(a):
    """A saved statistic as a contiguous float64 device array."""
    return arrays.contiguous(a, np.float64)


def float64_copy(a):
    """A float64 copy of ``a`` (running statistics in eval mode)."""
    return arrays.cast(a, np.float64)


def cast(a, dtype):
    """``a`` as a new array of ``dtype``."""
    return arrays.cast(a, dtype)


def zeros(n):
    """``n`` float64 zeros."""
    return arrays.full(n, 0.0)


def rstd_of(var, eps):
    """``1 / sqrt(var + eps)`` elementwise."""
    rstd = empty(var.shape, np.float64)
    finish.rstd_of(var.reshape(var.size), eps, rstd.reshape(var.size))
    return rstd


def running_update(running_mean, running_var, mean, var, momentum, unbiased):
    """Update the running statistics in place (on the device)."""
    finish.running_update(running_mean, running_var, mean, var, momentum, unbiased)


def instance_batch_stats(mean, rstd, eps):
    """Per-channel batch statistics from instance statistics ``(N, C)``: the
    averages over samples of the means and of the biased variances."""
    channels = mean.shape[1]
    batch_mean = empty((channels,), np.float64)
    batch_var = empty((channels,), np.float64)
    finish.instance_batch_stats(mean, rstd, float(eps), batch_mean, batch_var)
    return batch_mean, batch_var


def _p_chunk(kshape):
    _, p, c, q = kshape
    chunk = max(1, CHUNK_ELEMENTS // max(1, c * q))
    return chunk, -(-p // chunk)


# ------------------------------------------------------------- row norms ---


def row_forward(xk, weight, bias, eps, center, yk):
    """Layer norm (``center``) or RMS norm of each row of ``xk`` into ``yk``."""
    rows, length = xk.shape
    mean = empty((rows,), np.float64)
    rstd = empty((rows,), np.float64)
    _row_forward(
        xk, param(weight, length, 1.0, xk.dtype), param(bias, length, 0.0, xk.dtype),
        eps, center, yk, mean, rstd,
    )
    return mean, rstd


def row_forward_residual(xk, rk, hk, weight, bias, eps, center, yk):
    """:func:`row_forward` of ``h = x + residual``, written to ``hk`` too."""
    rows, length = xk.shape
    mean = empty((rows,), np.float64)
    rstd = empty((rows,), np.float64)
    _row_forward_residual(
        xk, rk, param(weight, length, 1.0, xk.dtype), param(bias, length, 0.0, xk.dtype),
        eps, center, hk, yk, mean, rstd,
    )
    return mean, rstd


def row_backward(dyk, xk, mean, rstd, weight, center, param_grads, dxk, dhk=None):
    """dx (plus ``dhk`` when given) into ``dxk``; returns float64 ``(dweight,
    dbias)`` sums (or Nones)."""
    rows, length = xk.shape
    rows_per_block = max(MIN_ROWS_PER_BLOCK, -(-rows // MAX_ROW_BLOCKS))
    nblocks = -(-rows // rows_per_block)
    part_shape = (nblocks, length) if param_grads else (1, 1)
    dw_part = empty(part_shape, np.float64)
    db_part = empty(part_shape, np.float64)
    if dhk is None:
        dhk = empty((0, length), xk.dtype)
    _row_backward(
        dyk, xk, mean, rstd, param(weight, length, 1.0, xk.dtype), center, param_grads,
        rows_per_block, dhk, dxk, dw_part, db_part,
    )
    if not param_grads:
        return None, None
    dweight = empty((length,), np.float64)
    dbias = empty((length,), np.float64)
    finish.sum_blocks(dw_part, dweight)
    finish.sum_blocks(db_part, dbias)
    return dweight, dbias


def row_forward_steps(kshape, dtype, center):
    """:func:`row_forward` as ``steps(xk, yk, weight, bias, eps)`` (the
    counterpart of :func:`numbanorm._cpu.engine.row_forward_steps`)."""

    def steps(xk, yk, weight, bias, eps):
        return row_forward(xk, weight, bias, eps, center, yk)

    return steps


def row_backward_steps(kshape, dtype, center, param_grads, weight_dtype):
    """:func:`row_backward` as ``steps(dyk, xk, dxk, (mean, rstd), weight)``
    (the counterpart of :func:`numbanorm._cpu.engine.row_backward_steps`)."""

    def steps(dyk, xk, dxk, stats, weight, dhk=None):
        return row_backward(dyk, xk, *stats, weight, center, param_grads, dxk, dhk)

    return steps


def row_forward_residual_steps(kshape, dtype, center):
    """:func:`row_forward_residual` as ``steps(xk, rk, hk, yk, weight, bias,
    eps)`` (the counterpart of
    :func:`numbanorm._cpu.engine.row_forward_residual_steps`)."""

    def steps(xk, rk, hk, yk, weight, bias, eps):
        return row_forward_residual(xk, rk, hk, weight, bias, eps, center, yk)

    return steps


# --------------------------------------------------------- grouped norms ---


def group_moments(xk, groups):
    """Mean and biased variance per ``(n, group)``, float64, shape ``(N, G)``."""
    n, p, c, q = xk.shape
    cg = c // groups
    shift = empty((n, groups), np.float64)
    finish.group_shift(xk, shift)
    if p == 1 and cg > 1:
        # Channels first: a group's channels are one contiguous run.
        xk = xk.reshape((n, 1, groups, cg * q))
    chunk, nchunks = _p_chunk(xk.shape)
    width = xk.shape[2]
    s1_part = empty((n, nchunks, width), np.float64)
    s2_part = empty((n, nchunks, width), np.float64)
    channel_moments(xk, shift, chunk, s1_part, s2_part)
    mean = empty((n, groups), np.float64)
    var = empty((n, groups), np.float64)
    finish.finish_moments(s1_part, s2_part, shift, width // groups, p * q * cg, mean, var)
    return mean, var


def group_apply(xk, mean, rstd, weight, bias, yk):
    """``y = (x - mean) * rstd * weight[c] + bias[c]`` with ``mean``/``rstd`` per
    ``(n, group)``."""
    c = xk.shape[2]
    channel_affine(xk, mean, rstd, param(weight, c, 1.0), param(bias, c, 0.0), 0, yk)


def group_backward(dyk, xk, mean, rstd, weight, batch_stats, param_grads, dxk):
    """Backward of :func:`group_apply`; dx into ``dxk`` (formulas in
    :func:`numbanorm._cpu.engine.group_backward`). Returns float64
    ``(dweight, dbias)`` of shape ``(C,)`` (or Nones)."""
    n, p, c, q = xk.shape
    groups = mean.shape[1]
    count = p * q * (c // groups)
    w = param(weight, c, 1.0)
    beta = empty((n, groups), np.float64)
    gamma = empty((n, groups), np.float64)
    dweight = dbias = None
    if batch_stats or param_grads:
        chunk, nchunks = _p_chunk(xk.shape)
        a_part = empty((n, nchunks, c), np.float64)
        b_part = empty((n, nchunks, c), np.float64)
        channel_grad_sums(dyk, xk, mean, chunk, a_part, b_part)
        sum_dy = empty((n, c), np.float64)
        sum_dy_xc = empty((n, c), np.float64)
        finish.channel_totals(a_part, b_part, sum_dy, sum_dy_xc)
        if param_grads:
            dweight = empty((c,), np.float64)
            dbias = empty((c,), np.float64)
            finish.param_totals(sum_dy, sum_dy_xc, rstd, dweight, dbias)
    if batch_stats:
        finish.backward_coefficients(sum_dy, sum_dy_xc, w, rstd, count, beta, gamma)
    else:
        finish.fill(beta.reshape(beta.size), 0.0)
        finish.fill(gamma.reshape(gamma.size), 0.0)
    channel_backward_apply(dyk, xk, mean, rstd, w, beta, gamma, 0, dxk)
    return dweight, dbias


def sample_forward(xk, groups, weight, bias, eps, yk):
    """Group/instance norm forward; returns float64 ``(mean, rstd)``, ``(N, G)``.

    The CPU's fused per-sample kernels keep a sample in cache; a GPU gains
    nothing from that, so this is :func:`group_moments` and :func:`group_apply`.
    """
    mean, var = group_moments(xk, groups)
    rstd = rstd_of(var, eps)
    group_apply(xk, mean, rstd, weight, bias, yk)
    return mean, rstd


def sample_forward_steps(kshape, groups):
    """:func:`sample_forward` for kernel arrays of shape ``kshape``:
    ``steps(xk, yk, weight, bias, eps) -> (mean, rstd)`` (the counterpart of
    :func:`numbanorm._cpu.engine.sample_forward_steps`)."""

    def steps(xk, yk, weight, bias, eps):
        return sample_forward(xk, groups, weight, bias, eps, yk)

    return steps


def sample_backward(dyk, xk, mean, rstd, weight, param_grads, dxk):
    """Backward of :func:`sample_forward`; returns float64 ``(dweight, dbias)``."""
    return group_backward(dyk, xk, mean, rstd, weight, True, param_grads, dxk)


def sample_backward_steps(kshape, groups, param_grads):
    """:func:`sample_backward` as ``steps(dyk, xk, dxk, (mean, rstd), weight)``
    (the counterpart of :func:`numbanorm._cpu.engine.sample_backward_steps`)."""

    def steps(dyk, xk, dxk, stats, weight):
        return sample_backward(dyk, xk, *stats, weight, param_grads, dxk)

    return steps


# ----------------------------------------------------------- weight norm ---


def weight_norm_forward(vk, g, wk):
    """``w = g[r] * v / ||v[r]||`` per row of ``vk``; returns float64 ``1/||v||``."""
    rstd = empty((vk.shape[0],), np.float64)
    row_scale_forward(vk, param(g, vk.shape[0], 1.0), wk, rstd)
    return rstd


def weight_norm_backward(dwk, vk, g, rstd, dvk):
    """dv into ``dvk``; returns float64 ``dg`` per row."""
    dg = empty((vk.shape[0],), np.float64)
    row_scale_backward(dwk, vk, param(g, vk.shape[0], 1.0), rstd, dvk, dg)
    return dg


def weight_norm_forward_steps(kshape):
    """:func:`weight_norm_forward` as ``steps(vk, wk, g)`` (the counterpart
    of :func:`numbanorm._cpu.engine.weight_norm_forward_steps`)."""

    def steps(vk, wk, g):
        return weight_norm_forward(vk, g, wk)

    return steps


def weight_norm_backward_steps(kshape):
    """:func:`weight_norm_backward` as ``steps(dwk, vk, dvk, rstd, g)`` (the
    counterpart of :func:`numbanorm._cpu.engine.weight_norm_backward_steps`)."""

    def steps(dwk, vk, dvk, rstd, g):
        return weight_norm_backward(dwk, vk, g, rstd, dvk)

    return steps
