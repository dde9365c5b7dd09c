"""Batch, group and instance norm: statistics per channel or per group of
channels, on the ``(N, P, C, Q)`` channel view."""

import numbers
from typing import Optional

import numpy as np

from ._layout import (
    dask_dispatch,
    as_array,
    backward,
    as_input,
    channel_view,
    check_eps,
    check_like,
    check_out,
    check_param,
    check_saved,
    check_stats,
    compute_dtype,
    engine_for,
    is_float,
    forward,
    normalize_axis,
    not_masked,
    grads_maker,
    require_nonempty_reduction,
    result_dtype,
    runner_key,
    runners,
    shares_memory,
    writeable,
)
from ._cpu import memory
from ._types import Array, ArrayLike, NormStats


def _prepare(x, axis, weight, bias, batched):
    x, device = as_input(x, "x")
    result = result_dtype(x, "x")
    shape = tuple(x.shape)
    if batched and x.ndim < 2:
        raise ValueError(f"x must have a batch axis and a channel axis, got shape {shape}")
    axis = normalize_axis(axis, x.ndim)
    if batched and axis == 0:
        raise ValueError("axis=0 is the batch axis; the channel axis must be another axis")
    channels = shape[axis]
    w = check_param(weight, (channels,), "weight", device)
    b = check_param(bias, (channels,), "bias", device)
    view = channel_view(shape, axis, batched)
    return x, device, result, compute_dtype(result), w, b, view


# ------------------------------------------------------------ batch norm ---


def _check_running(a, channels, name, x, device, training):
    if a is None:
        return None
    if device:
        a = as_array(a, name, device)
    elif not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray (it is updated in place)")
    else:
        not_masked(a, name)
    if not is_float(a.dtype):
        raise TypeError(f"{name} must be a float array, got dtype {a.dtype}")
    if tuple(a.shape) != (channels,):
        raise ValueError(f"{name} must have shape ({channels},), got {tuple(a.shape)}")
    if training and not writeable(a, device):
        raise ValueError(f"{name} is read-only, but training mode updates it in place")
    if shares_memory(a, x, device):
        raise ValueError(f"{name} must not share memory with x")
    return a


def _check_running_pair(training, momentum, running_mean, running_var, channels, x, device):
    """Check ``training``, ``momentum`` and the running statistics of a batch or
    instance norm call; returns the running statistics."""
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training must be a bool, got {training!r}")
    if type(momentum) is not float and (
        isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, numbers.Real)
    ):  # a float skips the abstract-class check, slow with cold caches
        raise TypeError(f"momentum must be a real number, got {momentum!r}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")
    running_mean = _check_running(running_mean, channels, "running_mean", x, device, training)
    running_var = _check_running(running_var, channels, "running_var", x, device, training)
    if training and running_mean is not None and shares_memory(running_mean, running_var, device):
        raise ValueError("running_mean and running_var must not share memory")
    if not training and running_mean is None:
        raise ValueError("eval mode (training=False) needs running_mean and running_var")
    return running_mean, running_var


@dask_dispatch
def batch_norm(
    x: ArrayLike,
    *,
    weight: Optional[ArrayLike] = None,
    bias: Optional[ArrayLike] = None,
    axis: int = 1,
    eps: float = 1e-5,
    training: bool = True,
    running_mean: Optional[Array] = None,
    running_var: Optional[Array] = None,
    momentum: float = 0.1,
    out: Optional[Array] = None,
) -> tuple[Array, NormStats]:
    r"""Batch normalization with statistics per channel.

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot w_c + b_c

    with the mean and biased variance of each channel ``c`` (index along
    ``axis``) taken over every other axis. In training mode the batch's own
    statistics are used and, when given, the running statistics are updated in
    place: ``running = (1 - momentum) * running + momentum * batch`` with the
    **unbiased** batch variance, as PyTorch. In eval mode
    (``training=False``) the running statistics normalize ``x``, and an
    empty batch gives an empty result, as PyTorch.

    Parameters
    ----------
    x : array_like
        Input, e.g. ``(N, C)``, ``(N, C, L)``, NCHW or NHWC.
    weight, bias : array_like, optional
        Affine parameters, shape ``(C,)``.
    axis : int, default 1
        The channel axis (1 for NCHW, -1 for channels-last).
    eps : float, default 1e-5
        Added to the variance inside the square root; must be >= 0.
    training : bool, default True
        Normalize with batch statistics (True) or the running ones (False).
    running_mean, running_var : ndarray, optional
        Float arrays of shape ``(C,)``; both or neither. Updated in place in
        training mode; required in eval mode.
    momentum : float, default 0.1
        Weight of the batch statistics in the running update, in ``[0, 1]``.
    out : ndarray, optional
        Where to write ``y``.

    Returns
    -------
    y : ndarray
        The normalized array.
    saved : NormStats
        ``mean``/``rstd`` per channel (float64) and ``training``.
    """
    x, device, result, dtype, w, b, view = _prepare(x, axis, weight, bias, batched=False)
    engine = engine_for(device)
    shape = view.shape
    channels = view.kshape[2]
    eps = check_eps(eps)
    running_mean, running_var = _check_running_pair(
        training, momentum, running_mean, running_var, channels, x, device
    )
    count = view.kshape[1] * view.kshape[3]
    if training:
        require_nonempty_reduction(count, "channel axis {} of shape {}", axis, shape)
        if count == 1:
            raise ValueError(
                f"batch norm in training mode needs more than 1 value per channel, "
                f"got input shape {shape}"
            )
    out = check_out(
        out, shape, result,
        {"x": x, "weight": w, "bias": b,
         "running_mean": running_mean, "running_var": running_var},
        device=device,
    )
    if count == 0:  # eval mode on an empty batch: nothing to normalize
        _, finish = engine.output(view, dtype, result, out)
        rstd = engine.rstd_of(engine.float64_copy(running_var), eps)
        return finish(), NormStats(engine.float64_copy(running_mean), rstd, False,
                                   bias is not None)

    steps = _batch_forward_steps(engine, view.kshape, bool(training))
    has_bias = bias is not None

    def saved(stats):
        mean, rstd = stats
        return NormStats(mean, rstd, bool(training), has_bias)

    params = (w, b, eps, running_mean, running_var, momentum)
    return forward(None, engine, view, dtype, result, steps, saved, x, params, out)


@memory.cache(maxsize=64)
def _batch_forward_steps(engine, kshape, training):
    """Batch norm forward on ``engine`` for kernel arrays of shape ``kshape``:
    ``steps(xk, yk, weight, bias, eps, running_mean, running_var, momentum)
    -> (mean, rstd)``, per channel (float64), from ``x`` itself when
    ``training`` (then updating the running statistics, when given) or from
    the running statistics."""
    _, p, channels, q = kshape
    count = p * q

    def steps(xk, yk, weight, bias, eps, running_mean, running_var, momentum):
        if training:
            mean, var = engine.group_moments(xk, channels)
            mean, var = mean.reshape(channels), var.reshape(channels)
        else:
            mean = engine.float64_copy(running_mean)
            var = engine.float64_copy(running_var)
        rstd = engine.rstd_of(var, eps)
        engine.group_apply(xk, mean.reshape(1, channels), rstd.reshape(1, channels),
                           weight, bias, yk)
        if training and running_mean is not None:
            unbiased = count / (count - 1)
            engine.running_update(running_mean, running_var, mean, var, momentum, unbiased)
        return mean, rstd

    return steps


@dask_dispatch
def batch_norm_backward(
    dy: ArrayLike, x: ArrayLike, saved: NormStats, *, weight: Optional[ArrayLike] = None,
    axis: int = 1,
) -> tuple[Array, Optional[Array], Optional[Array]]:
    r"""Gradients of :func:`batch_norm`.

    Training mode (``saved.training``), with :math:`\hat x = (x-\mu)\,r`,
    :math:`g = dy\,w_c` and :math:`\langle\cdot\rangle` the mean over a channel:
    :math:`dx = r\,(g - \langle g\rangle - \hat x\langle g\hat x\rangle)`.
    Eval mode (running statistics are constants): :math:`dx = r\,g`.
    Both: :math:`dw_c = \sum dy\,\hat x`, :math:`db_c = \sum dy`.

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
    axis : int, default 1
        The forward pass's channel axis.

    Returns
    -------
    dx : ndarray
        Gradient with respect to ``x``.
    dweight, dbias : ndarray or None
        Gradients of the affine parameters (None when absent).
    """
    check_saved(saved)
    x, device, result, dtype, w, _, view = _prepare(x, axis, weight, None, batched=False)
    engine = engine_for(device)
    channels = view.kshape[2]
    dy = check_like(dy, view.shape, result, "dy", device=device)
    mean = check_stats(saved.mean, (channels,), "saved.mean", engine, device)
    rstd = check_stats(saved.rstd, (channels,), "saved.rstd", engine, device)
    has_bias = bool(saved.has_bias)
    batch_stats = bool(saved.training)
    param_grads = weight is not None or has_bias

    def steps(dyk, xk, dxk, stats, weight):
        mean, rstd = stats
        return engine.group_backward(
            dyk, xk, mean.reshape(1, channels), rstd.reshape(1, channels), weight,
            batch_stats, param_grads, dxk,
        )

    def statistics(saved):
        return mean, rstd

    grads = grads_maker(engine, w, has_bias, result, (channels,))
    if view.kshape[1] * view.kshape[3] == 0:  # an empty batch (eval mode): zero gradients
        steps = _empty_batch_backward_steps(engine, channels, param_grads)
    return backward(None, engine, view, dtype, result, steps, statistics, grads, dy, x, saved, (w,))


def _empty_batch_backward_steps(engine, channels, param_grads):
    """Backward steps for an empty batch: nothing to write into ``dx``, and
    parameter gradients that are sums over no values, zeros."""

    def steps(dyk, xk, dxk, stats, weight):
        if not param_grads:
            return None, None
        return engine.zeros(channels), engine.zeros(channels)

    return steps


# ----------------------------------------------- group and instance norm ---


def _check_groups(num_groups, channels):
    if type(num_groups) is int and num_groups >= 1 and channels % num_groups == 0:
        # The common case, without the abstract-class check below (slow
        # after a pass over memory, with the interpreter's caches cold).
        return num_groups
    if isinstance(num_groups, (bool, np.bool_)) or not isinstance(num_groups, numbers.Integral):
        raise TypeError(f"num_groups must be an int, got {num_groups!r}")
    if num_groups < 1 or channels % num_groups:
        raise ValueError(
            f"num_groups={num_groups} must be a positive divisor of the number of "
            f"channels C={channels}"
        )
    return int(num_groups)


def _grouped_forward(x, groups, weight, bias, axis, eps, out, per_channel):
    key = None
    if out is None:
        key = runner_key("grouped forward", (per_channel, groups, axis), x, weight, bias)
    run = runners.get(key)
    if run is not None:
        return run(x, weight, bias, check_eps(eps))
    x, device, result, dtype, w, b, view = _prepare(x, axis, weight, bias, batched=True)
    engine = engine_for(device)
    n, p, channels, q = view.kshape
    groups = channels if per_channel else _check_groups(groups, channels)
    eps = check_eps(eps)
    require_nonempty_reduction(p * q * (channels // max(groups, 1)), "shape {}", view.shape)
    if per_channel and p * q == 1:
        raise ValueError(
            f"instance norm needs more than 1 spatial element per channel, got shape {view.shape}"
        )
    if out is not None:
        out = check_out(out, view.shape, result, {"x": x, "weight": w, "bias": b}, device=device)
    steps = engine.sample_forward_steps(view.kshape, groups)
    has_bias = bias is not None

    def saved(stats):
        return NormStats(*stats, True, has_bias)

    return forward(key, engine, view, dtype, result, steps, saved, x, (w, b, eps), out)


def _grouped_backward(dy, x, saved, weight, axis, per_channel):
    rstd = check_saved(saved).rstd
    key = runner_key(
        "grouped backward", (per_channel, bool(saved.has_bias), axis), x, dy, weight, rstd
    )
    run = runners.get(key)
    if run is not None:
        return run(dy, x, saved, weight)
    x, device, result, dtype, w, _, view = _prepare(x, axis, weight, None, batched=True)
    engine = engine_for(device)
    n, _, channels, _ = view.kshape
    dy = check_like(dy, view.shape, result, "dy", device=device)
    rstd = as_array(saved.rstd, "saved.rstd", device)
    if per_channel:
        groups = channels
    elif len(rstd.shape) == 2 and rstd.shape[1] >= 1 and channels % rstd.shape[1] == 0:
        groups = rstd.shape[1]
    else:
        raise ValueError(
            f"saved.rstd has shape {tuple(rstd.shape)}, expected (N, num_groups) with "
            f"num_groups dividing C={channels}"
        )
    has_bias = bool(saved.has_bias)
    steps = engine.sample_backward_steps(view.kshape, groups, weight is not None or has_bias)
    grads = grads_maker(engine, w, has_bias, result, (channels,))
    stat_shape = (n, groups)

    def statistics(saved):
        mean = check_stats(saved.mean, stat_shape, "saved.mean", engine, device)
        return mean, check_stats(saved.rstd, stat_shape, "saved.rstd", engine, device)

    return backward(key, engine, view, dtype, result, steps, statistics, grads, dy, x, saved, (w,))


@dask_dispatch
def group_norm(
    x: ArrayLike, num_groups: int, *, weight: Optional[ArrayLike] = None,
    bias: Optional[ArrayLike] = None, axis: int = 1, eps: float = 1e-5,
    out: Optional[Array] = None,
) -> tuple[Array, NormStats]:
    r"""Group normalization: statistics per sample and group of channels.

    The ``C`` channels (index along ``axis``) are split into ``num_groups``
    groups of consecutive channels; for each sample (axis 0) and group

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot w_c + b_c

    with the mean and biased variance over the group's channels and every
    spatial axis, as ``torch.nn.functional.group_norm``.

    Parameters
    ----------
    x : array_like
        Input with the batch on axis 0, e.g. NCHW or NHWC.
    num_groups : int
        Number of groups; must divide ``C``.
    weight, bias : array_like, optional
        Affine parameters, shape ``(C,)``.
    axis : int, default 1
        The channel axis (not 0).
    eps : float, default 1e-5
        Added to the variance inside the square root; must be >= 0.
    out : ndarray, optional
        Where to write ``y``.

    Returns
    -------
    y : ndarray
        The normalized array.
    saved : NormStats
        ``mean``/``rstd`` of shape ``(N, num_groups)`` (float64).
    """
    return _grouped_forward(x, num_groups, weight, bias, axis, eps, out, per_channel=False)


@dask_dispatch
def group_norm_backward(
    dy: ArrayLike, x: ArrayLike, saved: NormStats, *, weight: Optional[ArrayLike] = None,
    axis: int = 1,
) -> tuple[Array, Optional[Array], Optional[Array]]:
    r"""Gradients of :func:`group_norm`.

    Per sample and group of :math:`M` elements, with :math:`\hat x = (x-\mu)\,r`
    and :math:`g = dy\,w_c`:
    :math:`dx = r\,(g - \langle g\rangle - \hat x\langle g\hat x\rangle)`;
    :math:`dw_c = \sum dy\,\hat x`, :math:`db_c = \sum dy` over samples and
    spatial positions. ``num_groups`` is read from ``saved``.

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
    axis : int, default 1
        The forward pass's channel axis.

    Returns
    -------
    dx : ndarray
        Gradient with respect to ``x``.
    dweight, dbias : ndarray or None
        Gradients of the affine parameters (None when absent).
    """
    return _grouped_backward(dy, x, saved, weight, axis, per_channel=False)


@dask_dispatch
def instance_norm(
    x: ArrayLike,
    *,
    weight: Optional[ArrayLike] = None,
    bias: Optional[ArrayLike] = None,
    axis: int = 1,
    eps: float = 1e-5,
    training: bool = True,
    running_mean: Optional[Array] = None,
    running_var: Optional[Array] = None,
    momentum: float = 0.1,
    out: Optional[Array] = None,
) -> tuple[Array, NormStats]:
    r"""Instance normalization: statistics per sample and channel.

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot w_c + b_c

    with the mean and biased variance over the spatial axes of each
    ``(sample, channel)``; equal to ``group_norm(x, C, ...)``. Needs more than
    one spatial element, as PyTorch.

    Running statistics follow ``torch.nn.functional.instance_norm``
    (``training`` is its ``use_input_stats``). In training mode, when given,
    they are updated in place with the averages over the batch of the
    instances' means and **unbiased** variances:
    ``running = (1 - momentum) * running + momentum * average``; an
    instance's biased variance is recovered from its float64
    ``rstd`` as ``1 / rstd**2 - eps``. With ``training=False`` the running
    statistics normalize every instance of a channel alike, as
    :func:`batch_norm` in eval mode (an empty batch gives an empty result).

    Parameters
    ----------
    x : array_like
        Input with the batch on axis 0, e.g. NCHW or NHWC.
    weight, bias : array_like, optional
        Affine parameters, shape ``(C,)``.
    axis : int, default 1
        The channel axis (not 0).
    eps : float, default 1e-5
        Added to the variance inside the square root; must be >= 0.
    training : bool, default True
        Normalize with each instance's statistics (True) or the running ones
        (False).
    running_mean, running_var : ndarray, optional
        Float arrays of shape ``(C,)``; both or neither. Updated in place in
        training mode; required when ``training=False``.
    momentum : float, default 0.1
        Weight of the batch's statistics in the running update, in ``[0, 1]``.
    out : ndarray, optional
        Where to write ``y``.

    Returns
    -------
    y : ndarray
        The normalized array.
    saved : NormStats
        ``mean``/``rstd`` of shape ``(N, C)`` (float64) in training mode;
        of shape ``(C,)``, from the running statistics, when ``training=False``.
    """
    if training is True and running_mean is None and running_var is None:
        return _grouped_forward(x, None, weight, bias, axis, eps, out, per_channel=True)
    x_checked, device, _, _, _, _, view = _prepare(x, axis, weight, bias, batched=True)
    running_mean, running_var = _check_running_pair(
        training, momentum, running_mean, running_var, view.kshape[2], x_checked, device
    )
    if not training:
        return batch_norm(
            x, weight=weight, bias=bias, axis=axis, eps=eps, training=False,
            running_mean=running_mean, running_var=running_var, out=out,
        )
    y, saved = _grouped_forward(x, None, weight, bias, axis, eps, out, per_channel=True)
    engine = engine_for(device)
    batch_mean, batch_var = engine.instance_batch_stats(saved.mean, saved.rstd, check_eps(eps))
    count = view.kshape[1] * view.kshape[3]
    engine.running_update(
        running_mean, running_var, batch_mean, batch_var, float(momentum), count / (count - 1)
    )
    return y, saved


@dask_dispatch
def instance_norm_backward(
    dy: ArrayLike, x: ArrayLike, saved: NormStats, *, weight: Optional[ArrayLike] = None,
    axis: int = 1,
) -> tuple[Array, Optional[Array], Optional[Array]]:
    r"""Gradients of :func:`instance_norm` (:func:`group_norm_backward` with one
    channel per group; :func:`batch_norm_backward` in eval mode when the
    forward pass used the running statistics).

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
    axis : int, default 1
        The forward pass's channel axis.

    Returns
    -------
    dx : ndarray
        Gradient with respect to ``x``.
    dweight, dbias : ndarray or None
        Gradients of the affine parameters (None when absent).
    """
    if not check_saved(saved).training:
        return batch_norm_backward(dy, x, saved, weight=weight, axis=axis)
    return _grouped_backward(dy, x, saved, weight, axis, per_channel=True)
