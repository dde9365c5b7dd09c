"""Weight normalization: ``w = g * v / ||v||`` with a 2-norm per output slice."""

from . import _engine as engine
from ._layout import (
    as_array,
    check_like,
    check_stats,
    compute_dtype,
    normalize_axis,
    param_grad_dtype,
    result_dtype,
    row_view,
)
from ._types import NormStats


def _prepare(v, g, axis):
    v = as_array(v, "v")
    result = result_dtype(v, "v")
    if axis is None:
        slices, kept_axes, stat_shape = 1, (), ()
        g_shapes = ((), (1,) * v.ndim)
    else:
        axis = normalize_axis(axis, v.ndim)
        slices, kept_axes = v.shape[axis], (axis,)
        stat_shape = (slices,)
        keepdims = tuple(v.shape[axis] if i == axis else 1 for i in range(v.ndim))
        g_shapes = ((slices,), keepdims)
    g = as_array(g, "g")
    result_dtype(g, "g")
    if g.shape not in g_shapes:
        raise ValueError(f"g must have shape {g_shapes[0]} or {g_shapes[1]}, got {g.shape}")
    reduced = tuple(i for i in range(v.ndim) if i not in kept_axes)
    view, _ = row_view(v.shape, reduced)
    return v, result, compute_dtype(result), g, view, stat_shape


def weight_norm(v, g, *, axis=0):
    r"""Weight normalization of ``v`` with magnitude ``g``.

    .. math::

        w = g \, \frac{v}{\lVert v \rVert}

    the 2-norm taken over every axis except ``axis`` (one norm per output
    slice), as ``torch._weight_norm(v, g, dim=axis)``; ``axis=None`` takes
    one norm over the whole array. A slice of zeros gives NaN, as PyTorch.

    Parameters
    ----------
    v : array_like
        Direction.
    g : array_like
        Magnitude per slice: shape ``(v.shape[axis],)`` or PyTorch's
        ``weight_g`` shape (``v.shape[axis]`` on ``axis``, 1 elsewhere); for
        ``axis=None`` a scalar or all-ones shape.
    axis : int or None, default 0
        The axis whose slices are normalized separately.

    Returns
    -------
    w : ndarray
        The weight, shape and dtype of ``v``.
    saved : NormStats
        ``mean`` is None; ``rstd = 1/||v||`` per slice (float64, shape
        ``(v.shape[axis],)``).
    """
    v, result, dtype, g, view, stat_shape = _prepare(v, g, axis)
    wk, finish = view.output(dtype, result, None)
    rstd = engine.weight_norm_forward(view.to_kernel(v, dtype), g.ravel(), wk)
    return finish(), NormStats(None, rstd.reshape(stat_shape), True, False)


def weight_norm_backward(dw, v, g, saved, *, axis=0):
    r"""Gradients of :func:`weight_norm`.

    With :math:`r = 1/\lVert v\rVert` and :math:`t = \sum dw\,v` per slice:

    .. math::

        dg = t\,r, \qquad dv = g\,r\,dw - g\,t\,r^3\,v

    Parameters
    ----------
    dw : array_like
        Gradient with respect to ``w``; shape and dtype of ``v``.
    v : array_like
        The forward pass's direction.
    g : array_like
        The forward pass's magnitude.
    saved : NormStats
        The forward pass's ``saved``.
    axis : int or None, default 0
        The forward pass's ``axis``.

    Returns
    -------
    dv : ndarray
        Gradient with respect to ``v``.
    dg : ndarray
        Gradient with respect to ``g``, shape and dtype of ``g``.
    """
    v, result, dtype, g, view, stat_shape = _prepare(v, g, axis)
    dw = check_like(dw, v.shape, result, "dw", like="v")
    rstd = check_stats(saved.rstd, stat_shape, "saved.rstd").ravel()
    dvk, finish = view.output(dtype, result, None)
    dg = engine.weight_norm_backward(
        view.to_kernel(dw, dtype), view.to_kernel(v, dtype), g.ravel(), rstd, dvk
    )
    return finish(), dg.reshape(g.shape).astype(param_grad_dtype(g))
