"""Weight normalization: ``w = g * v / ||v||`` with a 2-norm per output slice."""

import functools

from ._layout import (
    as_array,
    as_input,
    check_like,
    check_stats,
    compute_dtype,
    engine_for,
    normalize_axis,
    param_grad_dtype,
    result_dtype,
    row_view,
)
from ._types import NormStats


@functools.lru_cache(maxsize=256)
def _layout(shape, axis):
    """The row view of ``v`` (one row per slice), the shape of the per-slice
    statistics and the two accepted shapes of ``g``, for ``axis`` a
    non-negative int or None (cached: a small weight norm is a 20 us call)."""
    if axis is None:
        kept_axes, stat_shape = (), ()
        g_shapes = ((), (1,) * len(shape))
    else:
        kept_axes, stat_shape = (axis,), (shape[axis],)
        keepdims = tuple(shape[axis] if i == axis else 1 for i in range(len(shape)))
        g_shapes = (stat_shape, keepdims)
    reduced = tuple(i for i in range(len(shape)) if i not in kept_axes)
    view, _, _ = row_view(shape, reduced)
    return view, stat_shape, g_shapes


def _prepare(v, g, axis):
    v, device = as_input(v, "v")
    result = result_dtype(v, "v")
    if axis is not None:
        axis = normalize_axis(axis, v.ndim)
    view, stat_shape, g_shapes = _layout(tuple(v.shape), axis)
    g = as_array(g, "g", device)
    result_dtype(g, "g")
    if tuple(g.shape) not in g_shapes:
        raise ValueError(
            f"g must have shape {g_shapes[0]} or {g_shapes[1]}, got {tuple(g.shape)}"
        )
    return v, engine_for(device), device, result, compute_dtype(result), g, view, stat_shape


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
    v, engine, _, result, dtype, g, view, stat_shape = _prepare(v, g, axis)
    wk, finish = engine.output(view, dtype, result, None)
    rstd = engine.weight_norm_forward(engine.to_kernel(view, v, dtype), g, wk)
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
    v, engine, device, result, dtype, g, view, stat_shape = _prepare(v, g, axis)
    dw = check_like(dw, view.shape, result, "dw", like="v", device=device)
    rstd = check_stats(saved.rstd, stat_shape, "saved.rstd", engine, device)
    rstd = rstd.reshape(view.kshape[0])
    dvk, finish = engine.output(view, dtype, result, None)
    dg = engine.weight_norm_backward(
        engine.to_kernel(view, dw, dtype), engine.to_kernel(view, v, dtype), g, rstd, dvk
    )
    return finish(), engine.cast(dg.reshape(g.shape), param_grad_dtype(g))
