"""What runs on one block of a Dask array: NumPy in, NumPy out, through the
CPU engine's kernels (:mod:`numbanorm._cpu.engine`).

Every block is mapped to the channel form ``(n, p, c, q)`` of the CPU engine
(:func:`view4`), with float64 statistics per ``(n, c)``: a channel for batch
norm (``n = 1``), a sample and channel for group and instance norm, a row for
layer and RMS norm (whose row is then ``c``, one group: weights are per
position in the row). Statistics arrive with the block's shape, reduced axes
of length 1 ("keepdims" arrays), and leave the same way.
"""

from typing import NamedTuple

import numpy as np

from .._cpu import engine as cpu
from .._layout import channel_view, compute_dtype, result_dtype, row_view
from .._types import NormStats

#: Moments of a block, per statistic: count, mean and sum of squared deviations.
MOMENTS = np.dtype([("count", "f8"), ("mean", "f8"), ("m2", "f8")])


class Layout(NamedTuple):
    """How a norm reads ``x``: ``kind`` is ``"rows"`` (``axes`` the normalized
    axes), ``"channels"`` (batch norm: ``axes`` the channel axis, every other
    axis reduced) or ``"samples"`` (group and instance norm: the channel axis;
    axis 0 and it are kept)."""

    kind: str
    axes: object

    def reduced(self, ndim):
        """The axes a statistic reduces."""
        if self.kind == "rows":
            return self.axes
        first = 0 if self.kind == "channels" else 1
        return tuple(i for i in range(first, ndim) if i != self.axes)

    def param_axes(self, ndim):
        """The axes a weight or bias spans."""
        return self.axes if self.kind == "rows" else (self.axes,)


def view4(layout, shape):
    """The block's kernel view and its shape as ``(n, p, c, q)``."""
    if layout.kind == "rows":
        view, _, _ = row_view(shape, layout.axes)
        rows, length = view.kshape
        return view, (rows, 1, length, 1)
    view = channel_view(shape, layout.axes, layout.kind == "samples")
    return view, view.kshape


def _kernel_input(layout, a, dtype=None):
    view, k4 = view4(layout, a.shape)
    dtype = dtype or compute_dtype(result_dtype(a))
    return view, k4, view.to_kernel(a, dtype).reshape(k4), dtype


def _per_nc(stat, k4):
    """A keepdims statistic block as the engine's float64 ``(n, c)`` array
    (``(rows, 1)`` for rows)."""
    if stat is None:
        return None
    return np.ascontiguousarray(stat, np.float64).reshape(k4[0], -1)


def _param(p, k4):
    return None if p is None else np.ascontiguousarray(p).reshape(k4[2])


def _keepdims(a, shape, reduced):
    return a.reshape(tuple(1 if i in reduced else n for i, n in enumerate(shape)))


# ------------------------------------------------------------- forward ---


def moments(x, axis, keepdims, layout):
    """:data:`MOMENTS` of block ``x`` per statistic, keepdims (``axis`` are
    the reduced axes; the ``da.reduction`` chunk function). Rows are summed
    as :func:`numbanorm.moments` sums them."""
    view, k4 = view4(layout, x.shape)
    xk = view.to_kernel(x, compute_dtype(result_dtype(x)))
    if layout.kind == "rows":
        count, mean, m2 = cpu.group_m2(xk.reshape(k4[0], k4[2], 1, 1), 1)
    else:
        count, mean, m2 = cpu.group_m2(xk, k4[2])
    out = np.empty(mean.size, MOMENTS)
    out["count"], out["mean"], out["m2"] = count, mean.reshape(-1), m2.reshape(-1)
    return _keepdims(out, x.shape, axis)


def merge_moments(parts, axis, keepdims=True):
    """Moments of the union of ``parts`` (:data:`MOMENTS`) along ``axis``,
    exactly: ``n = sum n_k``, ``mean = sum n_k mean_k / n``,
    ``m2 = sum m2_k + sum n_k (mean_k - mean)**2`` (Chan et al.)."""
    count = parts["count"].sum(axis=axis, keepdims=True)
    mean = (parts["count"] * parts["mean"]).sum(axis=axis, keepdims=True) / count
    deviation = parts["mean"] - mean
    m2 = parts["m2"].sum(axis=axis, keepdims=True) + (
        parts["count"] * deviation * deviation
    ).sum(axis=axis, keepdims=True)
    out = np.empty(count.shape, MOMENTS)
    out["count"], out["mean"], out["m2"] = count, mean, m2
    return out if keepdims else out.reshape(np.squeeze(count, axis).shape)


def merge_groups(parts, axis, groups):
    """Moments per channel (keepdims, every channel on ``axis``) merged into
    ``groups`` groups of consecutive channels, on ``axis``."""
    shape = parts.shape
    c = shape[axis]
    grouped = parts.reshape(shape[:axis] + (groups, c // groups) + shape[axis + 1 :])
    return merge_moments(grouped, axis + 1).reshape(
        shape[:axis] + (groups,) + shape[axis + 1 :]
    )


def rstd(parts, eps, center):
    """``1/sqrt(var + eps)`` from moments (``center``), or ``1/sqrt(mean(x**2)
    + eps)`` (RMS norm: the mean square is ``m2/n + mean**2``)."""
    var = parts["m2"] / parts["count"]
    if not center:
        var = var + parts["mean"] * parts["mean"]
    return cpu.rstd_of(var, eps)


def apply(x, mean, rstd, weight, bias, layout):
    """``y = (x - mean) * rstd * weight + bias`` for block ``x``."""
    view, k4, xk, dtype = _kernel_input(layout, x)
    yk, finish = view.output(dtype, result_dtype(x), None)
    cpu.group_apply(
        xk, _per_nc(mean, k4), _per_nc(rstd, k4), _param(weight, k4), _param(bias, k4),
        yk.reshape(k4),
    )
    return finish()


def cpu_forward(x, weight, bias, function, reduced, **settings):
    """The in-memory ``function`` (a numbanorm norm) on block ``x``, whose
    statistics lie within it: ``(y, mean, rstd)``, the statistics keepdims."""
    if bias is not None:
        settings["bias"] = bias
    y, saved = function(x, weight=weight, **settings)
    mean = saved.mean if saved.mean is not None else np.zeros(saved.rstd.shape)
    return y, _keepdims(mean, x.shape, reduced), _keepdims(saved.rstd, x.shape, reduced)


# ------------------------------------------------------------ backward ---


def cpu_backward(dy, x, mean, rstd, weight, function, reduced, has_bias, **settings):
    """The in-memory backward ``function`` of a row norm on a block whose rows
    lie within it: ``(dx, dweight, dbias)``, the parameter sums float64 and
    keepdims over the other axes."""
    stat_shape = tuple(n for i, n in enumerate(x.shape) if i not in reduced)
    saved = cpu_saved(mean, rstd, stat_shape, has_bias)
    dx, *grads = function(dy, x, saved, weight=weight, **settings)
    others = tuple(i for i in range(x.ndim) if i not in reduced)
    grads = [None if g is None else _keepdims(g.astype(np.float64), x.shape, others)
             for g in grads]
    return (dx, *grads)


def cpu_saved(mean, rstd, stat_shape, has_bias):
    """A :class:`numbanorm.NormStats` of keepdims statistic blocks."""
    mean = None if mean is None else np.ascontiguousarray(mean, np.float64).reshape(stat_shape)
    return NormStats(mean, np.ascontiguousarray(rstd, np.float64).reshape(stat_shape), True, has_bias)


def grad_sums(dy, x, mean, layout, reduced):
    """Sums of ``dy`` and ``dy * (x - mean)`` per ``(n, c)`` of a channel
    block, keepdims, float64."""
    _, k4, xk, dtype = _kernel_input(layout, x)
    _, _, dyk, _ = _kernel_input(layout, dy, dtype)
    sum_dy, sum_dy_xc = cpu.group_grad_sums(dyk, xk, _per_nc(mean, k4))
    return _keepdims(sum_dy, x.shape, reduced), _keepdims(sum_dy_xc, x.shape, reduced)


def row_grad_sums(dy, x, mean, rstd, weight, layout, center):
    """Per row of a block: ``sum(g)`` (0 without ``center``) and
    ``sum(g * (x - mean))`` with ``g = dy * weight``, keepdims over the
    normalized axes; per position: ``sum(dy * xhat)`` and ``sum(dy)`` over the
    block's rows, keepdims over the other axes. float64."""
    view, _ = view4(layout, x.shape)
    xk = view.to_kernel(x, np.float64)
    dyk = view.to_kernel(dy, np.float64)
    mean = np.ascontiguousarray(mean, np.float64).reshape(-1, 1)
    rstd = np.ascontiguousarray(rstd, np.float64).reshape(-1, 1)
    centered = xk - mean
    g = dyk if weight is None else dyk * np.ascontiguousarray(weight, np.float64).reshape(-1)
    sum_g = g.sum(axis=1) if center else np.zeros(len(xk))
    sum_gx = np.einsum("rl,rl->r", g, centered)
    sum_dy_xhat = np.einsum("rl,rl->l", dyk, centered * rstd)
    sum_dy = dyk.sum(axis=0)
    reduced = layout.axes
    others = tuple(i for i in range(x.ndim) if i not in reduced)
    return (
        _keepdims(sum_g, x.shape, reduced), _keepdims(sum_gx, x.shape, reduced),
        _keepdims(sum_dy_xhat, x.shape, others), _keepdims(sum_dy, x.shape, others),
    )


def backward_apply(dy, x, mean, rstd, weight, beta, gamma, layout):
    """``dx = rstd*weight*dy + beta*(x - mean) + gamma`` for a block, the
    statistics and coefficients keepdims per ``(n, c)``."""
    view, k4, xk, dtype = _kernel_input(layout, x)
    _, _, dyk, _ = _kernel_input(layout, dy, dtype)
    dxk, finish = view.output(dtype, result_dtype(x), None)
    cpu.group_backward_apply(
        dyk, xk, _per_nc(mean, k4), _per_nc(rstd, k4), _param(weight, k4),
        _per_nc(beta, k4), _per_nc(gamma, k4), dxk.reshape(k4),
    )
    return finish()


def row_backward_apply(dy, x, mean, rstd, weight, sum_g, sum_gx, count, layout):
    """:func:`backward_apply` for a row block, its coefficients formed from
    the rows' sums over all their blocks (``count`` values a row)."""
    rows = view4(layout, x.shape)[1][0]
    rstd2 = np.ascontiguousarray(rstd, np.float64).reshape(rows, 1)
    beta, gamma, _, _ = cpu.group_backward_coefficients(
        np.ascontiguousarray(sum_g, np.float64).reshape(rows, 1),
        np.ascontiguousarray(sum_gx, np.float64).reshape(rows, 1),
        None, rstd2, count, True,
    )
    return backward_apply(dy, x, mean, rstd2, weight, beta, gamma, layout)


def coefficients(sum_dy, sum_dy_xc, rstd, group_size, weight, count, batch_stats):
    """The engine's backward coefficients from the sums over every block,
    ``rstd`` per ``(n, c)`` (see
    :func:`numbanorm._cpu.engine.group_backward_coefficients`)."""
    return cpu.group_backward_coefficients(
        sum_dy, sum_dy_xc, weight, np.ascontiguousarray(rstd[:, ::group_size]), count,
        batch_stats,
    )
