"""Weight normalization: ``w = g * v / ||v||`` with a 2-norm per output slice."""

import functools

from typing import Optional
from ._layout import (
    dask_dispatch,
    as_array,
    as_input,
    backward,
    check_like,
    check_saved,
    check_stats,
    compute_dtype,
    result_dtype_of,
    engine_for,
    forward,
    normalize_axis,
    param_grad_dtype,
    row_view,
    runner_key,
    runners,
)
from ._types import Array, ArrayLike, NormStats


@functools.lru_cache(maxsize=256)
def _checks(shape, v_dtype, g_shape, g_dtype, axis, device):
    """Everything about a call that depends on shapes, dtypes and the device
    only, checked once per combination (cached: a small weight norm is a
    short call, and these steps are a good part of it):
    the engine, the result and kernel dtypes, the row view of ``v`` (one row
    per slice) and the shape of the per-slice statistics. ``axis`` is an int
    or None; an out-of-range ``axis``, a bad dtype or ``g`` shape raise here
    (and are not cached)."""
    result = result_dtype_of(v_dtype, "v")
    result_dtype_of(g_dtype, "g")
    if axis is None:
        kept_axes, stat_shape = (), ()
        g_shapes = ((), (1,) * len(shape))
    else:
        axis = normalize_axis(axis, len(shape))
        kept_axes, stat_shape = (axis,), (shape[axis],)
        keepdims = tuple(shape[axis] if i == axis else 1 for i in range(len(shape)))
        g_shapes = (stat_shape, keepdims)
    if g_shape not in g_shapes:
        raise ValueError(f"g must have shape {g_shapes[0]} or {g_shapes[1]}, got {g_shape}")
    reduced = tuple(i for i in range(len(shape)) if i not in kept_axes)
    view, _, _ = row_view(shape, reduced)
    return engine_for(device), result, compute_dtype(result), view, stat_shape


def _prepare(v, g, axis):
    v, device = as_input(v, "v")
    g = as_array(g, "g", device)
    if axis is not None and type(axis) is not int:  # numpy integers; bad types raise
        axis = normalize_axis(axis, v.ndim)
    engine, result, dtype, view, stat_shape = _checks(
        tuple(v.shape), v.dtype, tuple(g.shape), g.dtype, axis, device
    )
    return v, engine, device, result, dtype, g, view, stat_shape


@dask_dispatch
def weight_norm(
    v: ArrayLike, g: ArrayLike, *, axis: Optional[int] = 0
) -> tuple[Array, NormStats]:
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
    key = runner_key("weight forward", (axis,), v, g)
    run = runners.get(key)
    if run is not None:
        return run(v, g)
    v, engine, _, result, dtype, g, view, stat_shape = _prepare(v, g, axis)
    reshape = (view.kshape[0],) != stat_shape
    steps = engine.weight_norm_forward_steps(view.kshape)

    def saved(rstd):
        return NormStats(None, rstd.reshape(stat_shape) if reshape else rstd, True, False)

    return forward(key, engine, view, dtype, result, steps, saved, v, (g,), None)


@dask_dispatch
def weight_norm_backward(
    dw: ArrayLike, v: ArrayLike, g: ArrayLike, saved: NormStats, *, axis: Optional[int] = 0
) -> tuple[Array, Array]:
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
    check_saved(saved)
    key = runner_key("weight backward", (axis,), v, g, dw)
    run = runners.get(key)
    if run is not None:
        return run(dw, v, saved, g)
    v, engine, device, result, dtype, g, view, stat_shape = _prepare(v, g, axis)
    dw = check_like(dw, view.shape, result, "dw", like="v", device=device)
    steps = engine.weight_norm_backward_steps(view.kshape)
    rows = view.kshape[0]
    g_shape, g_dtype = g.shape, param_grad_dtype(g)

    def statistics(saved):
        return check_stats(saved.rstd, stat_shape, "saved.rstd", engine, device).reshape(rows)

    def grads(dg):
        return (engine.cast(dg.reshape(g_shape), g_dtype),)

    return backward(key, engine, view, dtype, result, steps, statistics, grads, dw, v, saved, (g,))
