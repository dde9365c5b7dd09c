"""Stateful normalization layers for NumPy models, with PyTorch's semantics.

Each layer keeps what its ``backward`` needs from the last ``forward``, stores
parameter gradients in ``grads`` and has ``train()``/``eval()``. Its
``state_dict()`` has the keys and shapes of the matching ``torch.nn`` module,
so a PyTorch state dict converted to NumPy arrays loads unchanged.
"""

import numbers
from typing import Iterable, Mapping, Optional, Union

import numpy as np
import numpy.typing as npt

from ._grouped_norms import (
    batch_norm,
    batch_norm_backward,
    group_norm,
    group_norm_backward,
    instance_norm,
    instance_norm_backward,
)
from ._layout import check_eps, is_dask_array, is_float, normalize_axis, not_masked
from ._moments import Moments, moments
from ._row_norms import layer_norm, layer_norm_backward, rms_norm, rms_norm_backward
from ._types import Array, ArrayLike
from ._weight_norm import weight_norm, weight_norm_backward

#: A ``normalized_shape``: one dimension or several.
Shape = Union[int, tuple[int, ...]]


class _Layer:
    """Shared state handling: parameters, buffers, gradients, modes, state dicts."""

    _param_names = ()
    _buffer_names = ()

    def __init__(self) -> None:
        self.training = True
        self.grads = {}
        self._saved = None

    # ------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> "_Layer":
        """Set training mode (``mode=True``) or eval mode; returns ``self``."""
        self.training = bool(mode)
        return self

    def eval(self) -> "_Layer":
        """Set eval mode; returns ``self``."""
        return self.train(False)

    # ------------------------------------------------------------- state
    @property
    def params(self) -> dict[str, np.ndarray]:
        """Trainable parameters by name (the arrays themselves, updated in place)."""
        return {k: getattr(self, k) for k in self._param_names if getattr(self, k) is not None}

    def _buffers(self):
        return {k: getattr(self, k) for k in self._buffer_names if getattr(self, k) is not None}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of parameters and buffers, with PyTorch's keys and shapes."""
        return {k: np.array(v, copy=True) for k, v in {**self.params, **self._buffers()}.items()}

    def load_state_dict(self, state: Mapping[str, ArrayLike]) -> None:
        """Load arrays from ``state`` (keys and shapes as ``state_dict()``).

        Every key and shape is checked before anything is assigned: a missing,
        unexpected or mis-shaped entry raises a ``ValueError`` naming it and
        leaves the layer unchanged.
        """
        own = {**self.params, **self._buffers()}
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"state dict does not match {type(self).__name__}: "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        arrays = {}
        for key, target in own.items():
            value = np.asarray(state[key])
            if value.shape != target.shape:
                raise ValueError(
                    f"state dict entry {key!r} has shape {value.shape}, expected {target.shape}"
                )
            if value.dtype.kind not in "biu" and not is_float(value.dtype):
                raise ValueError(f"state dict entry {key!r} has dtype {value.dtype}, expected real")
            arrays[key] = value
        for key, value in arrays.items():
            getattr(self, key)[...] = value

    def _require_forward(self):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._saved

    def _store_grads(self, **grads):
        self.grads = {k: v for k, v in grads.items() if v is not None}

    def __call__(self, *args: ArrayLike, **kwargs: ArrayLike) -> Array:
        """``layer(x)`` is ``layer.forward(x)``, as a framework's module."""
        return self.forward(*args, **kwargs)

    def forward(self, x: ArrayLike) -> Array:
        """Normalize ``x``; keeps what :meth:`backward` needs."""
        y, saved = self._norm(x)
        self._saved = (x, saved)
        return y

    def backward(self, dy: ArrayLike) -> Array:
        """Return ``dx`` for the last forward's ``x``; store the parameters'
        gradients in ``grads`` (by parameter name)."""
        x, saved = self._require_forward()
        dx, *param_grads = self._norm_backward(dy, x, saved)
        self._store_grads(**dict(zip(self._param_names, param_grads)))
        return dx

    def __repr__(self):
        return f"{type(self).__name__}({self._describe()})"

    def _describe(self):
        return ""


def _eps(value, allow_none=False):
    """A layer's ``eps``: finite and >= 0 (or None where the dtype decides)."""
    if value is None and allow_none:
        return None
    return check_eps(value)


def _count(value, name):
    """A positive int (a number of features, channels or groups)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def _momentum(value):
    """A running-statistics momentum in [0, 1], or None (cumulative average)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"momentum must be a real number or None, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {value!r}")
    return float(value)


def _channel_axis(axis):
    """A channel axis: an int (checked against ``x`` at each call)."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {axis!r}")
    return int(axis)


def _normalized_shape(normalized_shape):
    """``normalized_shape`` as a tuple of positive ints."""
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (normalized_shape,)
    shape = tuple(normalized_shape)
    if not shape:
        raise ValueError("normalized_shape must name at least one dimension")
    return tuple(_count(s, "normalized_shape") for s in shape)


def _check_trailing_shape(x, normalized_shape):
    """``x``'s trailing dimensions must be ``normalized_shape`` (PyTorch's error)."""
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    n = len(normalized_shape)
    if len(shape) < n or shape[len(shape) - n:] != normalized_shape:
        raise ValueError(
            f"Given normalized_shape={list(normalized_shape)}, expected input with shape "
            f"[*, {', '.join(map(str, normalized_shape))}], but got input of size {list(shape)}"
        )


class _RowNorm(_Layer):
    """Layer and RMS norm over the trailing ``normalized_shape`` dimensions,
    with a residual add fused into the norm. Subclasses set ``_function``
    and ``_backward_function``; their parameters are ``_param_names``."""

    def _norm(self, x, residual=None):
        _check_trailing_shape(x, self.normalized_shape)
        params = {name: getattr(self, name) for name in self._param_names}
        return self._function(x, **params, axis=self.axis, eps=self.eps, residual=residual)

    def _norm_backward(self, dy, x, saved, dh=None):
        return self._backward_function(dy, x, saved, weight=self.weight, axis=self.axis, dh=dh)

    def forward(self, x: ArrayLike, residual: Optional[ArrayLike] = None):
        """Normalize ``x`` and return ``y``; with ``residual``, normalize
        ``h = x + residual`` and return ``(y, h)`` (one pass). Keeps what
        :meth:`backward` needs."""
        if residual is None:
            return super().forward(x)
        y, saved, h = self._norm(x, residual)
        self._saved = (h, saved)
        return y, h

    def backward(self, dy: ArrayLike, dh: Optional[ArrayLike] = None) -> Array:
        """Return ``dx`` for the last forward's input (its ``h`` after a
        residual forward), plus ``dh``, the gradient reaching ``h`` by the
        residual path, when given; store the parameters' gradients in
        ``grads``."""
        x, saved = self._require_forward()
        dx, *param_grads = self._norm_backward(dy, x, saved, dh)
        self._store_grads(**dict(zip(self._param_names, param_grads)))
        return dx

    def _describe(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class LayerNorm(_RowNorm):
    """Layer normalization over the trailing ``normalized_shape`` dimensions.

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias``, as
    ``torch.nn.LayerNorm``; state dict keys ``weight``, ``bias``.
    ``layer(x, residual=r)`` normalizes ``h = x + r`` and returns ``(y, h)``
    in one pass; ``layer.backward(dy, dh=dh)`` then adds the gradient
    reaching ``h`` by the residual path.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        Shape of the trailing dimensions that are normalized.
    eps : float, default 1e-5
        Added to the variance inside the square root.
    elementwise_affine : bool, default True
        Learn ``weight`` (ones) and ``bias`` (zeros).
    bias : bool, default True
        With ``elementwise_affine``, also learn ``bias``.
    dtype : dtype, default float32
        dtype of the parameters.
    """

    _param_names = ("weight", "bias")

    def __init__(self, normalized_shape: Shape, eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True,
                 dtype: npt.DTypeLike = np.float32) -> None:
        super().__init__()
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.eps = _eps(eps)
        self.weight = np.ones(self.normalized_shape, dtype) if elementwise_affine else None
        self.bias = np.zeros(self.normalized_shape, dtype) if elementwise_affine and bias else None
        self.axis = tuple(range(-len(self.normalized_shape), 0))

    _function = staticmethod(layer_norm)
    _backward_function = staticmethod(layer_norm_backward)


class RMSNorm(_RowNorm):
    """RMS normalization over the trailing ``normalized_shape`` dimensions.

    ``y = x / sqrt(E[x**2] + eps) * weight``, as ``torch.nn.RMSNorm``:
    ``eps=None`` uses the machine epsilon of the input's dtype. State dict
    key ``weight``. A residual add is fused as in :class:`LayerNorm`.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        Shape of the trailing dimensions that are normalized.
    eps : float or None, default None
        Added to the mean square; None means ``np.finfo(x.dtype).eps``.
    elementwise_affine : bool, default True
        Learn ``weight`` (ones).
    dtype : dtype, default float32
        dtype of the parameters.
    """

    _param_names = ("weight",)

    def __init__(self, normalized_shape: Shape, eps: Optional[float] = None,
                 elementwise_affine: bool = True, dtype: npt.DTypeLike = np.float32) -> None:
        super().__init__()
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.eps = _eps(eps, allow_none=True)
        self.weight = np.ones(self.normalized_shape, dtype) if elementwise_affine else None
        self.axis = tuple(range(-len(self.normalized_shape), 0))

    _function = staticmethod(rms_norm)
    _backward_function = staticmethod(rms_norm_backward)


class _RunningStatsNorm(_Layer):
    """Batch-norm-style running statistics with PyTorch's update rules."""

    _param_names = ("weight", "bias")
    _buffer_names = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(self, num_features, eps, momentum, affine, track_running_stats, axis, dtype):
        super().__init__()
        self.num_features = _count(num_features, "num_features")
        self.eps = _eps(eps)
        self.momentum = _momentum(momentum)
        self.axis = _channel_axis(axis)
        self.weight = np.ones(self.num_features, dtype) if affine else None
        self.bias = np.zeros(self.num_features, dtype) if affine else None
        self.track_running_stats = bool(track_running_stats)
        if self.track_running_stats:
            self.running_mean = np.zeros(self.num_features, dtype)
            self.running_var = np.ones(self.num_features, dtype)
            self.num_batches_tracked = np.zeros((), np.int64)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches tracked."""
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def _momentum(self):
        """The update's momentum; ``momentum=None`` is PyTorch's cumulative
        average, ``1 / (number of batches including this one)``."""
        if self.momentum is None:
            return 1.0 / (int(self.num_batches_tracked) + 1)
        return self.momentum


class BatchNorm(_RunningStatsNorm):
    """Batch normalization over every axis except the channel ``axis``.

    As ``torch.nn.BatchNorm1d/2d/3d``: in training mode the batch statistics
    normalize ``x`` and update the running statistics (unbiased variance,
    ``running = (1 - momentum) * running + momentum * batch``; with
    ``momentum=None`` a cumulative average); in eval mode the running
    statistics are used. With ``track_running_stats=False`` batch statistics
    are used in both modes. State dict keys ``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``.

    Parameters
    ----------
    num_features : int
        Number of channels ``C``.
    eps : float, default 1e-5
        Added to the variance inside the square root.
    momentum : float or None, default 0.1
        Weight of the batch statistics in the running update; None for a
        cumulative moving average.
    affine : bool, default True
        Learn ``weight`` and ``bias``.
    track_running_stats : bool, default True
        Keep running statistics.
    axis : int, default 1
        The channel axis (1 for NCHW, -1 for channels-last).
    dtype : dtype, default float32
        dtype of parameters and running statistics.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, axis: int = 1,
                 dtype: npt.DTypeLike = np.float32) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, axis, dtype)

    def _norm(self, x):
        use_batch = self.training or not self.track_running_stats
        update = self.training and self.track_running_stats
        running = update or not use_batch
        out = batch_norm(
            x, weight=self.weight, bias=self.bias, axis=self.axis, eps=self.eps, training=use_batch,
            running_mean=self.running_mean if running else None,
            running_var=self.running_var if running else None,
            momentum=self._momentum() if update else 0.0,
        )
        if update:  # counted only once batch_norm has accepted the batch
            self.num_batches_tracked += 1
        return out

    def _norm_backward(self, dy, x, saved):
        return batch_norm_backward(dy, x, saved, weight=self.weight, axis=self.axis)

    def _describe(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, axis={self.axis}"


class GroupNorm(_Layer):
    """Group normalization, as ``torch.nn.GroupNorm``; keys ``weight``, ``bias``.

    Parameters
    ----------
    num_groups : int
        Number of groups; must divide ``num_channels``.
    num_channels : int
        Number of channels ``C``.
    eps : float, default 1e-5
        Added to the variance inside the square root.
    affine : bool, default True
        Learn ``weight`` and ``bias``.
    axis : int, default 1
        The channel axis.
    dtype : dtype, default float32
        dtype of the parameters.
    """

    _param_names = ("weight", "bias")

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, axis: int = 1,
                 dtype: npt.DTypeLike = np.float32) -> None:
        super().__init__()
        num_groups = _count(num_groups, "num_groups")
        num_channels = _count(num_channels, "num_channels")
        if num_channels % num_groups:
            raise ValueError(
                f"num_groups={num_groups} must divide num_channels={num_channels}"
            )
        self.num_groups, self.num_channels = num_groups, num_channels
        self.eps = _eps(eps)
        self.axis = _channel_axis(axis)
        self.weight = np.ones(self.num_channels, dtype) if affine else None
        self.bias = np.zeros(self.num_channels, dtype) if affine else None

    def _norm(self, x):
        return group_norm(
            x, self.num_groups, weight=self.weight, bias=self.bias, axis=self.axis, eps=self.eps
        )

    def _norm_backward(self, dy, x, saved):
        return group_norm_backward(dy, x, saved, weight=self.weight, axis=self.axis)

    def _describe(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


class InstanceNorm(_RunningStatsNorm):
    """Instance normalization, as ``torch.nn.InstanceNorm1d/2d/3d``.

    Each sample's channels are normalized with their own statistics. With
    ``track_running_stats=True`` the running statistics are updated in
    training mode (averages over the batch of the instances' means and
    unbiased variances, see :func:`instance_norm`) and normalize ``x`` in
    eval mode; ``momentum=None`` leaves them unchanged, as PyTorch (whose
    instance norm has no cumulative average). State dict keys ``weight``,
    ``bias`` when affine; ``running_mean``, ``running_var``,
    ``num_batches_tracked`` (never incremented, as PyTorch) when tracking.

    Parameters
    ----------
    num_features : int
        Number of channels ``C``.
    eps : float, default 1e-5
        Added to the variance inside the square root.
    momentum : float or None, default 0.1
        Weight of the batch's statistics in the running update.
    affine : bool, default False
        Learn ``weight`` and ``bias`` (PyTorch's default is False).
    track_running_stats : bool, default False
        Keep running statistics (PyTorch's default is False).
    axis : int, default 1
        The channel axis.
    dtype : dtype, default float32
        dtype of parameters and running statistics.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = False, track_running_stats: bool = False, axis: int = 1,
                 dtype: npt.DTypeLike = np.float32) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, axis, dtype)

    def _norm(self, x):
        use_input_stats = self.training or not self.track_running_stats
        tracked = self.track_running_stats
        return instance_norm(
            x, weight=self.weight, bias=self.bias, axis=self.axis, eps=self.eps,
            training=use_input_stats,
            running_mean=self.running_mean if tracked else None,
            running_var=self.running_var if tracked else None,
            momentum=self.momentum if self.momentum is not None else 0.0,
        )

    def _norm_backward(self, dy, x, saved):
        return instance_norm_backward(dy, x, saved, weight=self.weight, axis=self.axis)

    def _describe(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"track_running_stats={self.track_running_stats}")


class WeightNorm(_Layer):
    """A weight reparametrized as ``w = g * v / ||v||``, as
    ``torch.nn.utils.weight_norm`` (keys ``weight_g``, ``weight_v``; PyTorch's
    parametrization keys load too, see :meth:`load_state_dict`).

    ``forward()`` returns the weight ``w``; ``backward(dw)`` takes the
    gradient of the loss with respect to ``w`` and stores ``grads['weight_g']``
    and ``grads['weight_v']``.

    Parameters
    ----------
    weight : array_like
        Initial weight; ``weight_v`` starts as a copy and ``weight_g`` as its
        norm per slice, so ``forward()`` first returns ``weight`` itself.
    axis : int or None, default 0
        The axis whose slices get their own magnitude (PyTorch's ``dim``).
    """

    _param_names = ("weight_g", "weight_v")

    def __init__(self, weight: ArrayLike, axis: Optional[int] = 0) -> None:
        super().__init__()
        v = np.array(not_masked(weight, "weight"), copy=True)
        if not is_float(v.dtype):
            v = v.astype(np.float64)
        if axis is not None:
            axis = normalize_axis(axis, v.ndim)
        self.axis = axis
        if axis is None:
            g_shape = (1,) * v.ndim
            norm = np.sqrt((v.astype(np.float64) ** 2).sum())
        else:
            g_shape = tuple(s if i == axis else 1 for i, s in enumerate(v.shape))
            other = tuple(i for i in range(v.ndim) if i != axis)
            norm = np.sqrt((v.astype(np.float64) ** 2).sum(axis=other))
        self.weight_v = v
        self.weight_g = np.asarray(norm, dtype=v.dtype).reshape(g_shape)

    #: PyTorch's parametrization keys (``torch.nn.utils.parametrizations.weight_norm``),
    #: without their ``parametrizations.weight.`` prefix, and the names they map to.
    _PARAMETRIZATION_KEYS = {"original0": "weight_g", "original1": "weight_v"}
    _PARAMETRIZATION_PREFIX = "parametrizations.weight."

    def load_state_dict(self, state: Mapping[str, ArrayLike]) -> None:
        """Load ``weight_g``/``weight_v`` (``torch.nn.utils.weight_norm``) or
        ``parametrizations.weight.original0``/``original1``
        (``torch.nn.utils.parametrizations.weight_norm``, with or without the
        ``parametrizations.weight.`` prefix); checked as
        :meth:`_Layer.load_state_dict`."""
        renamed = {}
        for key, value in state.items():
            short = key[len(self._PARAMETRIZATION_PREFIX):] if key.startswith(
                self._PARAMETRIZATION_PREFIX) else key
            name = self._PARAMETRIZATION_KEYS.get(short, key)
            if name in renamed:
                raise ValueError(f"state dict gives {name} twice (as {key!r} too)")
            renamed[name] = value
        super().load_state_dict(renamed)

    def forward(self) -> Array:
        """The weight ``g * v / ||v||``."""
        w, saved = weight_norm(self.weight_v, self.weight_g, axis=self.axis)
        self._saved = saved
        return w

    def backward(self, dw: ArrayLike) -> None:
        """Store ``grads['weight_g']`` and ``grads['weight_v']`` for ``dw``."""
        saved = self._require_forward()
        dv, dg = weight_norm_backward(dw, self.weight_v, self.weight_g, saved, axis=self.axis)
        self._store_grads(weight_g=dg, weight_v=dv)

    def _describe(self):
        return f"shape={self.weight_v.shape}, axis={self.axis}"


def precise_batch_norm_stats(layer: BatchNorm, batches: Iterable[ArrayLike]) -> Moments:
    """Set a :class:`BatchNorm`'s running statistics to the exact statistics of
    all ``batches`` together.

    After training with small batches, the exponential running averages are
    noisy; this recomputes them from the layer's inputs over a whole pass of
    data, merging per-batch :class:`Moments` (Chan's formula, float64):
    ``running_mean`` becomes the mean and ``running_var`` the unbiased
    variance of every value per channel, as if seen in one batch.

    Parameters
    ----------
    layer : BatchNorm
        A layer with ``track_running_stats=True``.
    batches : iterable of array_like, or a Dask array
        The layer's inputs, batch by batch. Dask batches are reduced where
        they live, in one pass over the data, each chunk's moments merged
        exactly; a Dask array itself (not in a list) is the whole dataset,
        one batch, not iterated as a NumPy array would be.

    Returns
    -------
    Moments
        The merged moments per channel.
    """
    if not isinstance(layer, BatchNorm) or not layer.track_running_stats:
        raise TypeError("precise_batch_norm_stats needs a BatchNorm with track_running_stats=True")
    if is_dask_array(batches):
        batches = [batches]
    total = None
    lazy = False
    for index, batch in enumerate(batches):
        if is_dask_array(batch):
            lazy = True
        elif isinstance(batch, np.ndarray):
            batch = not_masked(batch, "batch")
        else:
            batch = np.asarray(batch)
        axis = normalize_axis(layer.axis, batch.ndim, "the layer's axis")
        if batch.shape[axis] != layer.num_features:
            raise ValueError(
                f"batch {index} has {batch.shape[axis]} channels on axis {layer.axis} (shape "
                f"{batch.shape}), but the layer has num_features={layer.num_features}"
            )
        reduce = tuple(i for i in range(batch.ndim) if i != axis)
        m = moments(batch, axis=reduce)
        total = m if total is None else total.merge(m)
    if total is None:
        raise ValueError("batches is empty")
    if lazy:  # Dask batches: every batch's moments in one pass, merged in float64
        import dask

        total = Moments(total.count, *dask.compute(total.mean, total.m2))
    if total.count < 2:
        raise ValueError("need more than one value per channel")
    layer.running_mean[...] = total.mean
    layer.running_var[...] = total.unbiased_var
    return total
