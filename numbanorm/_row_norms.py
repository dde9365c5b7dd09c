"""Layer norm and RMS norm: statistics per row of the normalized axes."""

from typing import Optional, Union

import numpy as np

from ._layout import (
    dask_dispatch,
    as_input,
    backward,
    check_eps,
    check_like,
    check_out,
    check_param,
    check_saved,
    check_stats,
    compute_dtype,
    engine_for,
    forward,
    normalize_axes,
    grads_maker,
    require_nonempty_reduction,
    result_dtype,
    row_view,
    runner_key,
    runners,
)
from ._types import Array, ArrayLike, Axis, NormStats


def _prepare(x, axis, weight, bias):
    x, device = as_input(x, "x")
    result = result_dtype(x, "x")
    axes = normalize_axes(axis, x.ndim)
    shape = tuple(x.shape)
    view, stat_shape, pshape = row_view(shape, axes)
    w = check_param(weight, pshape, "weight", device)
    b = check_param(bias, pshape, "bias", device)
    require_nonempty_reduction(view.kshape[1], "axis={!r} of shape {}", axis, shape)
    return x, device, result, compute_dtype(result), pshape, w, b, view, stat_shape


def _machine_eps(dtype):
    """The machine epsilon of a result ``dtype``: RMS norm's default ``eps``,
    as ``torch.nn.functional.rms_norm``'s."""
    return float(np.finfo(dtype).eps)


def _forward(x, weight, bias, axis, eps, out, center, residual=None):
    if residual is not None:
        return _forward_residual(x, residual, weight, bias, axis, eps, out, center)
    key = None if out is not None else runner_key("row forward", (center, axis), x, weight, bias)
    run = runners.get(key)
    if run is not None:
        default_eps = eps is None and not center
        return run(x, weight, bias, check_eps(_machine_eps(x.dtype) if default_eps else eps))
    x, device, result, dtype, _, w, b, view, stat_shape = _prepare(x, axis, weight, bias)
    engine = engine_for(device)
    eps = check_eps(_machine_eps(result) if eps is None and not center else eps)
    if out is not None:
        out = check_out(out, view.shape, result, {"x": x, "weight": w, "bias": b}, device=device)
    steps = engine.row_forward_steps(view.kshape, dtype, center)
    has_bias = bias is not None

    def saved(stats):
        mean, rstd = stats
        if rstd.shape != stat_shape:
            mean, rstd = mean.reshape(stat_shape), rstd.reshape(stat_shape)
        return NormStats(mean if center else None, rstd, True, has_bias)

    return forward(key, engine, view, dtype, result, steps, saved, x, (w, b, eps), out)


def _forward_residual(x, residual, weight, bias, axis, eps, out, center):
    """``h = x + residual``, then the norm of ``h``: ``(y, saved, h)``. One
    pass for the kernels' dtypes (float32, float64); other dtypes add in
    NumPy first, in ``x``'s dtype, and normalize ``h``."""
    x, device, result, dtype, _, w, b, view, stat_shape = _prepare(x, axis, weight, bias)
    engine = engine_for(device)
    eps = check_eps(_machine_eps(result) if eps is None and not center else eps)
    residual = check_like(residual, view.shape, x.dtype, "residual", device=device)
    if not (x.dtype == result == dtype):
        if device:
            raise TypeError(
                f"residual on the device needs x of float32 or float64, got {x.dtype}"
            )
        h = np.add(x, residual)
        y, saved = _forward(h, weight, bias, axis, eps, out, center)
        return y, saved, h
    if out is not None:
        out = check_out(
            out, view.shape, result, {"x": x, "residual": residual, "weight": w, "bias": b},
            device=device,
        )
    xk, rk = engine.to_kernel(view, x, dtype), engine.to_kernel(view, residual, dtype)
    hk, finish_h = engine.output(view, dtype, result, None)
    yk, finish_y = engine.output(view, dtype, result, out)
    steps = engine.row_forward_residual_steps(view.kshape, dtype, center)
    mean, rstd = steps(xk, rk, hk, yk, w, b, eps)
    if rstd.shape != stat_shape:
        mean, rstd = mean.reshape(stat_shape), rstd.reshape(stat_shape)
    saved = NormStats(mean if center else None, rstd, True, bias is not None)
    return finish_y(), saved, finish_h()


def _backward(dy, x, saved, weight, axis, center, has_bias, dh=None):
    key = None
    if dh is None:
        key = runner_key("row backward", (center, has_bias, axis), x, dy, weight)
    run = runners.get(key)
    if run is not None:
        return run(dy, x, saved, weight)
    x, device, result, dtype, pshape, w, _, view, stat_shape = _prepare(x, axis, weight, None)
    engine = engine_for(device)
    dy = check_like(dy, view.shape, result, "dy", device=device)
    params = (w,)
    if dh is not None:
        dh = check_like(dh, view.shape, result, "dh", device=device)
        params = (w, engine.to_kernel(view, dh, dtype))
    rows = view.kshape[0]
    steps = engine.row_backward_steps(
        view.kshape, dtype, center, weight is not None or has_bias,
        w.dtype if w is not None else None,
    )
    grads = grads_maker(engine, w, has_bias, result, pshape)

    def statistics(saved):
        rstd = check_stats(saved.rstd, stat_shape, "saved.rstd", engine, device).reshape(rows)
        if center:
            mean = check_stats(saved.mean, stat_shape, "saved.mean", engine, device).reshape(rows)
        else:
            mean = engine.zeros(rows)
        return mean, rstd

    return backward(key, engine, view, dtype, result, steps, statistics, grads, dy, x, saved, params)


@dask_dispatch
def layer_norm(
    x: ArrayLike, *, weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None,
    axis: Axis = -1, eps: float = 1e-5, out: Optional[Array] = None,
    residual: Optional[ArrayLike] = None,
) -> Union[tuple[Array, NormStats], tuple[Array, NormStats, Array]]:
    r"""Layer normalization over ``axis``.

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot w + b

    with the mean and the biased variance taken over the axes in ``axis``,
    separately for every index of the other axes. ``axis=(-2, -1)`` is
    PyTorch's ``normalized_shape`` of the last two dimensions.

    Parameters
    ----------
    x : array_like
        Input. float16 is computed with float32 arithmetic and float64
        accumulation; integers and bool are promoted to float64.
    weight, bias : array_like, optional
        Affine parameters with the shape of ``x`` over ``axis``.
    axis : int or tuple of int, default -1
        The normalized axes.
    eps : float, default 1e-5
        Added to the variance inside the square root; must be >= 0.
    out : ndarray, optional
        Where to write ``y``: shape of ``x``, dtype of the result, no memory
        shared with the inputs.
    residual : array_like, optional
        Shape and dtype of ``x``: normalize ``h = x + residual`` instead of
        ``x`` and return ``h`` too (a transformer block's residual add, fused
        into the norm: one pass over memory for float32 and float64).

    Returns
    -------
    y : ndarray
        The normalized array, dtype of ``x`` (float64 for integer input).
    saved : NormStats
        ``mean`` and ``rstd = 1/sqrt(var + eps)`` (float64), shaped like ``x``
        without ``axis``; pass it to :func:`layer_norm_backward`.
    h : ndarray
        Only with ``residual``: ``x + residual``, computed in ``x``'s dtype;
        pass it to :func:`layer_norm_backward` as its ``x``.
    """
    return _forward(x, weight, bias, axis, eps, out, center=True, residual=residual)


@dask_dispatch
def layer_norm_backward(
    dy: ArrayLike, x: ArrayLike, saved: NormStats, *, weight: Optional[ArrayLike] = None,
    axis: Axis = -1, dh: Optional[ArrayLike] = None,
) -> tuple[Array, Optional[Array], Optional[Array]]:
    r"""Gradients of :func:`layer_norm`.

    With :math:`\hat x = (x - \mu)\,r`, :math:`r` = ``saved.rstd``,
    :math:`g = dy \cdot w` and :math:`\langle\cdot\rangle` the mean over ``axis``:

    .. math::

        dx = r\,(g - \langle g \rangle - \hat x \langle g \hat x \rangle),\quad
        dw = \sum dy\,\hat x,\quad db = \sum dy

    the parameter sums running over every index outside ``axis``.

    Parameters
    ----------
    dy : array_like
        Gradient of the loss with respect to ``y``; shape and dtype of ``y``.
    x : array_like
        The forward pass's input.
    saved : NormStats
        The forward pass's ``saved``.
    weight : array_like, optional
        The forward pass's weight.
    axis : int or tuple of int, default -1
        The forward pass's ``axis``.
    dh : array_like, optional
        With a residual forward (``x`` is then its ``h``): the gradient that
        reaches ``h`` by the residual path, shape and dtype of ``dy``. It is
        added to ``dx`` in the same pass, so ``dx`` is the whole gradient of
        ``h``, which is that of ``x`` and of ``residual``.

    Returns
    -------
    dx : ndarray
        Gradient with respect to ``x``.
    dweight : ndarray or None
        Gradient with respect to ``weight`` (None when ``weight`` is None).
    dbias : ndarray or None
        Gradient with respect to ``bias`` (None when the forward had no bias).
    """
    check_saved(saved)
    return _backward(dy, x, saved, weight, axis, center=True, has_bias=bool(saved.has_bias), dh=dh)


@dask_dispatch
def rms_norm(
    x: ArrayLike, *, weight: Optional[ArrayLike] = None, axis: Axis = -1,
    eps: Optional[float] = None, out: Optional[Array] = None,
    residual: Optional[ArrayLike] = None,
) -> Union[tuple[Array, NormStats], tuple[Array, NormStats, Array]]:
    r"""RMS normalization over ``axis``.

    .. math::

        y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \cdot w

    with the mean square over the axes in ``axis`` (no centering), as
    ``torch.nn.functional.rms_norm``.

    Parameters
    ----------
    x : array_like
        Input (float16 computed in float32; integers/bool promoted to float64).
    weight : array_like, optional
        Scale with the shape of ``x`` over ``axis``.
    axis : int or tuple of int, default -1
        The normalized axes.
    eps : float or None, default None
        Added to the mean square inside the square root; must be >= 0. None
        is the machine epsilon of the result's dtype (``np.finfo(dtype).eps``),
        as ``torch.nn.functional.rms_norm`` and :class:`RMSNorm`.
    out : ndarray, optional
        Where to write ``y``.
    residual : array_like, optional
        Shape and dtype of ``x``: normalize ``h = x + residual`` and return
        ``h`` too, in one pass for float32 and float64 (see :func:`layer_norm`).

    Returns
    -------
    y : ndarray
        The normalized array.
    saved : NormStats
        ``mean`` is None; ``rstd = 1/sqrt(mean(x**2) + eps)`` (float64).
    h : ndarray
        Only with ``residual``: ``x + residual`` in ``x``'s dtype; pass it to
        :func:`rms_norm_backward` as its ``x``.
    """
    return _forward(x, weight, None, axis, eps, out, center=False, residual=residual)


@dask_dispatch
def rms_norm_backward(
    dy: ArrayLike, x: ArrayLike, saved: NormStats, *, weight: Optional[ArrayLike] = None,
    axis: Axis = -1, dh: Optional[ArrayLike] = None,
) -> tuple[Array, Optional[Array]]:
    r"""Gradients of :func:`rms_norm`.

    With :math:`\hat x = x\,r`, :math:`r` = ``saved.rstd`` and
    :math:`g = dy \cdot w`:
    :math:`dx = r\,(g - \hat x \langle g \hat x \rangle)` and
    :math:`dw = \sum dy\,\hat x`.

    Parameters
    ----------
    dy : array_like
        Gradient with respect to ``y``.
    x : array_like
        The forward pass's input.
    saved : NormStats
        The forward pass's ``saved``.
    weight : array_like, optional
        The forward pass's weight.
    axis : int or tuple of int, default -1
        The forward pass's ``axis``.
    dh : array_like, optional
        With a residual forward (``x`` is then its ``h``): the gradient that
        reaches ``h`` by the residual path, shape and dtype of ``dy``. It is
        added to ``dx`` in the same pass, so ``dx`` is the whole gradient of
        ``h``, which is that of ``x`` and of ``residual``.

    Returns
    -------
    dx : ndarray
        Gradient with respect to ``x``.
    dweight : ndarray or None
        Gradient with respect to ``weight`` (None when ``weight`` is None).
    """
    check_saved(saved)
    dx, dweight, _ = _backward(dy, x, saved, weight, axis, center=False, has_bias=False, dh=dh)
    return dx, dweight
