"""The public functions for ``dask.array.Array`` input: the same checks as
for NumPy input (run on the arrays' shapes and dtypes before any graph is
built), then a graph of CPU-kernel calls per block (:mod:`.blocks`).

When every reduced axis lies within a chunk, a norm is one call of the
in-memory function per block. Otherwise statistics are moments per block
merged exactly in a tree reduction, applied block by block, and backward sums
its two sums per statistic the same way before applying ``dx``.

When statistics are computed: the running statistics of batch and instance
norm are NumPy arrays updated in place, so a training-mode call that has
them (batch norm always) computes its statistics at once, in one pass over
``x``; everything else, ``y`` and ``dx`` included, stays lazy.
"""

import functools
import operator

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.core import flatten
from dask.highlevelgraph import HighLevelGraph

from .. import _grouped_norms as grouped
from .. import _layout
from .. import _row_norms as row_norms
from .. import _weight_norm
from .._cpu import engine as cpu
from .._moments import Moments
from .._types import NormStats
from . import blocks
from .blocks import Layout


# --------------------------------------------------------------- checks ---


def _shadow(a):
    """A NumPy stand-in for the Dask array ``a``: its shape and dtype and no
    memory, so the in-memory functions' checks run on it unchanged."""
    return np.broadcast_to(np.zeros((), a.dtype), a.shape)


def _check_dask(x, name="x"):
    """``x``, a Dask array whose chunks are known and whose blocks are plain
    NumPy arrays."""
    if any(np.isnan(c) for chunks in x.chunks for c in chunks):
        raise ValueError(
            f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() first"
        )
    meta = getattr(x, "_meta", None)
    if isinstance(meta, np.ma.MaskedArray):
        _layout.not_masked(meta, name)
    if meta is not None and not isinstance(meta, np.ndarray):
        raise TypeError(
            f"{name} is a Dask array of {type(meta).__name__} blocks; numbanorm's Dask "
            "engine runs the CPU kernels and takes Dask arrays of NumPy blocks"
        )
    return x


def _like(a, x, dtype, name):
    """``dy``, ``dh`` or ``residual``: a Dask or NumPy array with ``x``'s shape
    and ``dtype``, as a Dask array chunked like ``x``."""
    if _layout.is_dask_array(a):
        _layout.check_like(_shadow(_check_dask(a, name)), x.shape, dtype, name)
        return a.rechunk(x.chunks)
    a = _layout.check_like(a, x.shape, dtype, name)
    return da.from_array(a, chunks=x.chunks)


def _no_out(out):
    if out is not None:
        raise TypeError(
            "out= is not supported for Dask input: Dask arrays are immutable "
            "(write the result with dask.array.store)"
        )


def _stat_host(a, shape, name):
    """A saved statistic as a checked NumPy or Dask float64 array."""
    if a is None:
        raise ValueError(f"{name} is missing: pass the `saved` returned by the forward pass")
    if _layout.is_dask_array(a):
        _layout.check_stats(np.zeros(a.shape), shape, name, cpu)
        return a.astype(np.float64)
    return _layout.check_stats(a, shape, name, cpu)


# --------------------------------------------------- graph building blocks ---


def _kd_shape(x, reduced):
    return tuple(1 if i in reduced else n for i, n in enumerate(x.shape))


def _kd_chunks(x, reduced):
    return tuple((1,) * len(c) if i in reduced else c for i, c in enumerate(x.chunks))


def _stat_chunks(x, reduced):
    """Chunks of a keepdims statistic: ``x``'s on the kept axes, one of 1 on the reduced."""
    return tuple((1,) if i in reduced else c for i, c in enumerate(x.chunks))


def _meta(ndim, dtype):
    return np.empty((0,) * ndim, dtype)


def _within_chunks(x, axes):
    return all(len(x.chunks[i]) == 1 for i in axes)


def _keepdims_array(a, x, reduced):
    """A statistic of ``x``, or weight norm's ``g`` (NumPy or Dask, shaped
    without ``reduced`` or with them of length 1), as a float64 keepdims
    Dask array chunked like ``x`` on the kept axes."""
    if a is None:
        return None
    if _layout.is_dask_array(a):
        return a.astype(np.float64).reshape(_kd_shape(x, reduced)).rechunk(
            _stat_chunks(x, reduced)
        )
    kd = np.asarray(a, np.float64).reshape(_kd_shape(x, reduced))
    return da.from_array(kd, chunks=_stat_chunks(x, reduced))


def _param_array(p, x, layout):
    """A weight or bias (NumPy) as a keepdims Dask array chunked like ``x``."""
    if p is None:
        return None
    axes = layout.param_axes(x.ndim)
    others = tuple(i for i in range(x.ndim) if i not in axes)
    kd = np.asarray(p).reshape(_kd_shape(x, others))
    return da.from_array(kd, chunks=_stat_chunks(x, others))


def _tuple_blocks(function, *args, like, **kwargs):
    """``function`` on every block, returning a tuple per block: a Dask array
    of those tuples, blocked like ``like``, whose parts :func:`_part` takes;
    each block is computed once however many parts are used."""
    return da.map_blocks(
        function, *args, dtype=object, meta=_meta(like.ndim, object), chunks=like.chunks,
        **kwargs,
    )


def _part(tuples, index, chunks, dtype):
    """Part ``index`` of every tuple of :func:`_tuple_blocks`, as an array of
    ``chunks``: the same blocks, or one block from one tuple.

    A graph layer of ``getitem`` tasks rather than a ``map_blocks``: Dask
    fuses ``map_blocks`` layers together, and fused with a reduction of the
    part, the tuples would be taken for arrays."""
    name = f"{tuples.name.split('-')[0]}-part{index}-{tokenize(tuples.name, index, chunks)}"
    keys = list(flatten(tuples.__dask_keys__()))
    if len(chunks) == tuples.ndim:
        layer = {(name, *key[1:]): (operator.getitem, key, index) for key in keys}
    else:
        (key,) = keys
        layer = {(name, *(0,) * len(chunks)): (operator.getitem, key, index)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[tuples])
    return da.Array(graph, name, chunks, meta=_meta(len(chunks), dtype))


def _moments(x, layout):
    """:data:`blocks.MOMENTS` per statistic of ``x`` (keepdims): moments per
    block, merged exactly in a tree."""
    reduced = layout.reduced(x.ndim)
    return da.reduction(
        x, functools.partial(blocks.moments, layout=layout), blocks.merge_moments,
        axis=reduced, keepdims=True, combine=blocks.merge_moments, dtype=blocks.MOMENTS,
        meta=_meta(x.ndim, blocks.MOMENTS), concatenate=True,
    )


def _group_moments(x, axis, groups):
    """Moments per sample and group (keepdims, the groups on ``axis``)."""
    parts = _moments(x, Layout("samples", axis))
    if groups == x.shape[axis]:
        return parts
    parts = parts.rechunk({axis: -1})
    chunks = tuple((groups,) if i == axis else c for i, c in enumerate(parts.chunks))
    return parts.map_blocks(
        blocks.merge_groups, axis, groups, chunks=chunks, dtype=blocks.MOMENTS,
        meta=_meta(x.ndim, blocks.MOMENTS),
    )


def _per_channel(stat, x, axis, groups):
    """Group statistics (keepdims, groups on ``axis``) repeated for each
    channel of their group and chunked like ``x``'s channel axis."""
    if stat is None or groups == x.shape[axis]:
        return stat
    if not _layout.is_dask_array(stat):
        stat = da.from_array(stat)
    stat = da.repeat(stat, x.shape[axis] // groups, axis=axis)
    return stat.rechunk({axis: x.chunks[axis]})


def _apply(x, mean, rstd, weight, bias, layout, result):
    return da.map_blocks(
        blocks.apply, x, mean, rstd, _param_array(weight, x, layout),
        _param_array(bias, x, layout), layout=layout, dtype=result,
        meta=_meta(x.ndim, result),
    )


def _squeeze(kd, reduced):
    return None if kd is None else da.squeeze(kd, axis=reduced)


def _param_grads(sums, weight, has_bias, result, shape):
    """Float64 parameter-gradient sums as the in-memory functions return them."""
    dtype = _layout.param_grad_dtype(weight) if weight is not None else result
    dweight, dbias = sums
    return (
        dweight.reshape(shape).astype(dtype) if weight is not None else None,
        dbias.reshape(shape).astype(dtype) if has_bias else None,
    )


# ------------------------------------------------------------- row norms ---


def _row_forward(x, weight, bias, axis, eps, out, center, residual):
    _check_dask(x)
    _no_out(out)
    shadow = _shadow(x)
    _, _, result, _, _, w, b, _, stat_shape = row_norms._prepare(shadow, axis, weight, bias)
    eps = _layout.check_eps(
        row_norms._machine_eps(result) if eps is None and not center else eps
    )
    h = None
    if residual is not None:
        residual = _like(residual, x, x.dtype, "residual")
        x = h = x + residual
    axes = _layout.normalize_axes(axis, x.ndim)
    layout = Layout("rows", axes)
    if _within_chunks(x, axes):
        function = row_norms.layer_norm if center else row_norms.rms_norm
        settings = dict(axis=axes, eps=eps)
        if not center:
            b = None
        tuples = _tuple_blocks(
            blocks.cpu_forward, x, w, b, function, axes, like=x, **settings
        )
        chunks = _stat_chunks(x, axes)
        y = _part(tuples, 0, x.chunks, result)
        mean = _part(tuples, 1, chunks, np.float64)
        rstd = _part(tuples, 2, chunks, np.float64)
    else:
        parts = _moments(x, layout)
        mean = parts["mean"] if center else da.zeros_like(parts["mean"])
        rstd = parts.map_blocks(blocks.rstd, eps, center, dtype=np.float64,
                                meta=_meta(x.ndim, np.float64))
        y = _apply(x, mean, rstd, w, b, layout, result)
    saved = NormStats(
        _squeeze(mean, axes).reshape(stat_shape) if center else None,
        _squeeze(rstd, axes).reshape(stat_shape), True, bias is not None and center,
    )
    return (y, saved) if h is None else (y, saved, h)


def _row_backward(dy, x, saved, weight, axis, center, has_bias, dh):
    _check_dask(x)
    _layout.check_saved(saved)
    shadow = _shadow(x)
    _, _, result, _, pshape, w, _, _, stat_shape = row_norms._prepare(shadow, axis, weight, None)
    dy = _like(dy, x, result, "dy")
    if dh is not None:
        dh = _like(dh, x, result, "dh")
    axes = _layout.normalize_axes(axis, x.ndim)
    layout = Layout("rows", axes)
    rstd = _keepdims_array(_stat_host(saved.rstd, stat_shape, "saved.rstd"), x, axes)
    if center:
        mean = _keepdims_array(_stat_host(saved.mean, stat_shape, "saved.mean"), x, axes)
    else:
        mean = da.zeros_like(rstd)
    others = tuple(i for i in range(x.ndim) if i not in axes)
    param_chunks = _kd_chunks(x, others)
    if _within_chunks(x, axes):
        function = row_norms.layer_norm_backward if center else _rms_backward_with_bias
        tuples = _tuple_blocks(
            blocks.cpu_backward, dy, x, mean if center else None, rstd, w, function, axes,
            has_bias and center, like=x, axis=axes,
        )
        dx = _part(tuples, 0, x.chunks, result)
        sums = [_part(tuples, i, param_chunks, np.float64).sum(axis=others)
                for i in (1, 2)]
    else:
        count = int(np.prod([x.shape[i] for i in axes]))
        tuples = _tuple_blocks(
            blocks.row_grad_sums, dy, x, mean, rstd, _param_array(w, x, layout), layout,
            center, like=x,
        )
        row_chunks = _kd_chunks(x, axes)
        sum_g, sum_gx = (
            _part(tuples, i, row_chunks, np.float64).sum(axis=axes, keepdims=True)
            .rechunk(_stat_chunks(x, axes)) for i in (0, 1)
        )
        dx = da.map_blocks(
            blocks.row_backward_apply, dy, x, mean, rstd, _param_array(w, x, layout),
            sum_g, sum_gx, count, layout, dtype=result, meta=_meta(x.ndim, result),
        )
        sums = [_part(tuples, i, param_chunks, np.float64).sum(axis=others) for i in (2, 3)]
    if dh is not None:
        dx = dx + dh
    grads = _param_grads(sums, w, has_bias and center, result, pshape)
    return dx, *grads


def _rms_backward_with_bias(dy, x, saved, weight=None, axis=-1):
    """:func:`numbanorm.rms_norm_backward` shaped as layer norm's, for
    :func:`blocks.cpu_backward`."""
    dx, dweight = row_norms.rms_norm_backward(dy, x, saved, weight=weight, axis=axis)
    return dx, dweight, None


def layer_norm(x, *, weight=None, bias=None, axis=-1, eps=1e-5, out=None, residual=None):
    return _row_forward(x, weight, bias, axis, eps, out, True, residual)


def layer_norm_backward(dy, x, saved, *, weight=None, axis=-1, dh=None):
    _layout.check_saved(saved)
    x = _as_dask_pair(dy, x)
    return _row_backward(dy, x, saved, weight, axis, True, bool(saved.has_bias), dh)


def rms_norm(x, *, weight=None, axis=-1, eps=None, out=None, residual=None):
    return _row_forward(x, weight, None, axis, eps, out, False, residual)


def rms_norm_backward(dy, x, saved, *, weight=None, axis=-1, dh=None):
    _layout.check_saved(saved)
    x = _as_dask_pair(dy, x)
    dx, dweight, _ = _row_backward(dy, x, saved, weight, axis, False, False, dh)
    return dx, dweight


def _as_dask_pair(dy, x):
    """``x`` as a Dask array: itself, or a NumPy ``x`` chunked like the Dask ``dy``."""
    if _layout.is_dask_array(x):
        return _check_dask(x)
    x = _layout.as_array(x, "x")
    if _layout.is_dask_array(dy) and tuple(dy.shape) == x.shape:
        return da.from_array(x, chunks=_check_dask(dy, "dy").chunks)
    return da.from_array(x)


# --------------------------------------------------------- grouped norms ---


def _channel_backward(dy, x, mean, rstd, w, layout, groups, batch_stats, param_grads, result):
    """dx and the float64 parameter sums of a channel norm (batch, group,
    instance) whose statistics ``mean``/``rstd`` are keepdims per channel:
    sums per block, added in a tree, the coefficients from them, dx per block."""
    axis = layout.axes
    reduced = layout.reduced(x.ndim)
    n = x.shape[0] if layout.kind == "samples" else 1
    channels = x.shape[axis]
    count = int(np.prod([x.shape[i] for i in reduced])) * (channels // groups)
    if not (batch_stats or param_grads):
        zeros = da.zeros(_kd_shape(x, reduced), chunks=_stat_chunks(x, reduced))
        dx = da.map_blocks(
            blocks.backward_apply, dy, x, mean, rstd, _param_array(w, x, layout), zeros,
            zeros, layout, dtype=result, meta=_meta(x.ndim, result),
        )
        return dx, (None, None)
    tuples = _tuple_blocks(blocks.grad_sums, dy, x, mean, layout, reduced, like=x)
    sum_dy, sum_dy_xc = (
        _part(tuples, i, _kd_chunks(x, reduced), np.float64).sum(axis=reduced, keepdims=True)
        .rechunk(-1).reshape(n, channels) for i in (0, 1)
    )
    # One task forms the coefficients from the whole sums, a map_blocks on
    # single-chunk (n, C) arrays: the blocks' sums are computed once for
    # beta, gamma and the grads. (A blockwise that contracts its indices, or
    # dask.delayed, broke that or failed when fused with a reduction of dx.)
    coefficients = da.map_blocks(
        blocks.coefficients, sum_dy, sum_dy_xc, _channels_in_one_chunk(rstd, x, layout), channels // groups,
        weight=w, count=count, batch_stats=batch_stats, dtype=object, meta=_meta(2, object),
    )
    beta, gamma = (
        _per_channel(
            _part(coefficients, i, ((n,), (groups,)), np.float64)
            .reshape(_group_kd_shape(x, layout, groups)),
            x, axis, groups,
        ).rechunk(_stat_chunks(x, reduced))
        for i in (0, 1)
    )
    dx = da.map_blocks(
        blocks.backward_apply, dy, x, mean, rstd, _param_array(w, x, layout), beta, gamma,
        layout, dtype=result, meta=_meta(x.ndim, result),
    )
    sums = [_part(coefficients, i, ((channels,),), np.float64) for i in (2, 3)]
    return dx, sums


def _group_kd_shape(x, layout, groups):
    return _group_kd_block(x.shape, layout.axes, groups, layout.reduced(x.ndim))


def _channels_in_one_chunk(stat_kd, x, layout):
    """A per-channel keepdims statistic as one ``(n, C)`` chunk."""
    n = x.shape[0] if layout.kind == "samples" else 1
    return stat_kd.rechunk(-1).reshape(n, x.shape[layout.axes])


def batch_norm(x, *, weight=None, bias=None, axis=1, eps=1e-5, training=True,
               running_mean=None, running_var=None, momentum=0.1, out=None):
    _check_dask(x)
    _no_out(out)
    shadow = _shadow(x)
    _, _, result, _, w, b, view = grouped._prepare(shadow, axis, weight, bias, batched=False)
    axis = _layout.normalize_axis(axis, x.ndim)
    channels = view.kshape[2]
    eps = _layout.check_eps(eps)
    running_mean, running_var = grouped._check_running_pair(
        training, momentum, running_mean, running_var, channels, shadow, False
    )
    count = view.kshape[1] * view.kshape[3]
    if training:
        _layout.require_nonempty_reduction(count, "channel axis {} of shape {}", axis, x.shape)
        if count == 1:
            raise ValueError(
                f"batch norm in training mode needs more than 1 value per channel, "
                f"got input shape {tuple(x.shape)}"
            )
    layout = Layout("channels", axis)
    reduced = layout.reduced(x.ndim)
    if training:
        parts = _moments(x, layout).compute().reshape(channels)
        mean = parts["mean"]
        var = parts["m2"] / count
        if running_mean is not None:
            cpu.running_update(running_mean, running_var, mean, var, momentum, count / (count - 1))
    else:
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
    rstd = cpu.rstd_of(var, eps)
    saved = NormStats(mean, rstd, bool(training), bias is not None)
    if count == 0:
        return x.astype(result), saved
    y = _apply(x, _keepdims_array(mean, x, reduced), _keepdims_array(rstd, x, reduced), w, b,
               layout, result)
    return y, saved


def _prepare_backward(dy, x, saved, weight, axis, batched):
    """The checks of a channel norm's backward: ``(dy, x, result, w, view,
    axis)``, ``dy`` and ``x`` as Dask arrays chunked alike."""
    _layout.check_saved(saved)
    x = _check_dask(_as_dask_pair(dy, x))
    _, _, result, _, w, _, view = grouped._prepare(_shadow(x), axis, weight, None, batched)
    dy = _like(dy, x, result, "dy")
    return dy, x, result, w, view, _layout.normalize_axis(axis, x.ndim)


def batch_norm_backward(dy, x, saved, *, weight=None, axis=1):
    dy, x, result, w, view, axis = _prepare_backward(dy, x, saved, weight, axis, False)
    channels = view.kshape[2]
    layout = Layout("channels", axis)
    reduced = layout.reduced(x.ndim)
    mean = _keepdims_array(_stat_host(saved.mean, (channels,), "saved.mean"), x, reduced)
    rstd = _keepdims_array(_stat_host(saved.rstd, (channels,), "saved.rstd"), x, reduced)
    has_bias = bool(saved.has_bias)
    param_grads = weight is not None or has_bias
    if view.kshape[1] * view.kshape[3] == 0:
        sums = (np.zeros(channels), np.zeros(channels)) if param_grads else (None, None)
        dx = dy.astype(result)
    else:
        dx, sums = _channel_backward(dy, x, mean, rstd, w, layout, channels,
                                     bool(saved.training), param_grads, result)
    if not param_grads:
        return dx, None, None
    return dx, *_param_grads(sums, w, has_bias, result, (channels,))


def _grouped_forward(x, groups, weight, bias, axis, eps, out, per_channel, stats_now=False):
    _check_dask(x)
    _no_out(out)
    shadow = _shadow(x)
    _, _, result, _, w, b, view = grouped._prepare(shadow, axis, weight, bias, batched=True)
    axis = _layout.normalize_axis(axis, x.ndim)
    n, p, channels, q = view.kshape
    groups = channels if per_channel else grouped._check_groups(groups, channels)
    eps = _layout.check_eps(eps)
    _layout.require_nonempty_reduction(p * q * (channels // max(groups, 1)), "shape {}", x.shape)
    if per_channel and p * q == 1:
        raise ValueError(
            f"instance norm needs more than 1 spatial element per channel, got shape {x.shape}"
        )
    layout = Layout("samples", axis)
    reduced = layout.reduced(x.ndim)
    cg = channels // groups
    aligned = all(c % cg == 0 for c in x.chunks[axis])
    group_chunks = tuple(
        tuple(c // cg for c in x.chunks[axis]) if i == axis else c
        for i, c in enumerate(_stat_chunks(x, reduced))
    )
    if _within_chunks(x, reduced) and aligned and not stats_now:
        tuples = _tuple_blocks(
            _grouped_block_forward, x, _param_array(w, x, layout), _param_array(b, x, layout),
            axis, cg, eps, reduced, like=x,
        )
        y = _part(tuples, 0, x.chunks, result)
        mean, rstd = (_part(tuples, i, group_chunks, np.float64) for i in (1, 2))
    else:
        parts = _group_moments(x, axis, groups)
        if stats_now:  # one pass now; the statistics go on as NumPy arrays
            parts = parts.compute()
            saved = NormStats(parts["mean"].reshape(n, groups),
                              blocks.rstd(parts, eps, True).reshape(n, groups), True,
                              bias is not None)
            mean, rstd = (da.from_array(np.reshape(a, parts.shape), chunks=group_chunks)
                          for a in saved[:2])
        else:
            mean = parts["mean"]
            rstd = parts.map_blocks(
                blocks.rstd, eps, True, dtype=np.float64, meta=_meta(x.ndim, np.float64)
            )
        y = _apply(x, _per_channel(mean, x, axis, groups), _per_channel(rstd, x, axis, groups),
                   w, b, layout, result)
        if stats_now:
            return y, saved
    return y, NormStats(mean.reshape(n, groups), rstd.reshape(n, groups), True, bias is not None)


def _grouped_block_forward(x, weight, bias, axis, cg, eps, reduced):
    channels = x.shape[axis]
    y, saved = grouped.group_norm(
        x, channels // cg, weight=None if weight is None else weight.reshape(channels),
        bias=None if bias is None else bias.reshape(channels), axis=axis, eps=eps,
    )
    kd = _group_kd_block(x.shape, axis, channels // cg, reduced)
    return y, saved.mean.reshape(kd), saved.rstd.reshape(kd)


def _group_kd_block(shape, axis, groups, reduced):
    return tuple(groups if i == axis else (1 if i in reduced else s) for i, s in enumerate(shape))


def _grouped_backward(dy, x, saved, weight, axis, per_channel):
    dy, x, result, w, view, axis = _prepare_backward(dy, x, saved, weight, axis, True)
    n, _, channels, _ = view.kshape
    rstd_shape = tuple(saved.rstd.shape) if saved.rstd is not None else ()
    if per_channel:
        groups = channels
    elif len(rstd_shape) == 2 and rstd_shape[1] >= 1 and channels % rstd_shape[1] == 0:
        groups = rstd_shape[1]
    else:
        raise ValueError(
            f"saved.rstd has shape {rstd_shape}, expected (N, num_groups) with "
            f"num_groups dividing C={channels}"
        )
    layout = Layout("samples", axis)
    reduced = layout.reduced(x.ndim)
    group_kd = _group_kd_shape(x, layout, groups)

    def per_channel_stat(a, name):
        a = _stat_host(a, (n, groups), name)
        a = a.reshape(group_kd) if _layout.is_dask_array(a) else np.reshape(a, group_kd)
        return _per_channel(a, x, axis, groups)

    mean = per_channel_stat(saved.mean, "saved.mean")
    rstd = per_channel_stat(saved.rstd, "saved.rstd")
    if not _layout.is_dask_array(mean):
        mean, rstd = (da.from_array(a, chunks=_stat_chunks(x, reduced)) for a in (mean, rstd))
    mean, rstd = (a.rechunk(_stat_chunks(x, reduced)) for a in (mean, rstd))
    has_bias = bool(saved.has_bias)
    param_grads = weight is not None or has_bias
    dx, sums = _channel_backward(dy, x, mean, rstd, w, layout, groups, True, param_grads, result)
    if not param_grads:
        return dx, None, None
    return dx, *_param_grads(sums, w, has_bias, result, (channels,))


def group_norm(x, num_groups, *, weight=None, bias=None, axis=1, eps=1e-5, out=None):
    return _grouped_forward(x, num_groups, weight, bias, axis, eps, out, per_channel=False)


def group_norm_backward(dy, x, saved, *, weight=None, axis=1):
    return _grouped_backward(dy, x, saved, weight, axis, per_channel=False)


def instance_norm(x, *, weight=None, bias=None, axis=1, eps=1e-5, training=True,
                  running_mean=None, running_var=None, momentum=0.1, out=None):
    if training is True and running_mean is None and running_var is None:
        return _grouped_forward(x, None, weight, bias, axis, eps, out, per_channel=True)
    _check_dask(x)
    shadow = _shadow(x)
    _, _, _, _, _, _, view = grouped._prepare(shadow, axis, weight, bias, batched=True)
    running_mean, running_var = grouped._check_running_pair(
        training, momentum, running_mean, running_var, view.kshape[2], shadow, False
    )
    if not training:
        return batch_norm(
            x, weight=weight, bias=bias, axis=axis, eps=eps, training=False,
            running_mean=running_mean, running_var=running_var, out=out,
        )
    y, saved = _grouped_forward(x, None, weight, bias, axis, eps, out, per_channel=True,
                                stats_now=True)
    eps = _layout.check_eps(eps)
    batch_mean, batch_var = cpu.instance_batch_stats(
        np.ascontiguousarray(saved.mean), np.ascontiguousarray(saved.rstd), eps
    )
    count = view.kshape[1] * view.kshape[3]
    cpu.running_update(
        running_mean, running_var, batch_mean, batch_var, float(momentum), count / (count - 1)
    )
    return y, saved


def instance_norm_backward(dy, x, saved, *, weight=None, axis=1):
    if not _layout.check_saved(saved).training:
        return batch_norm_backward(dy, x, saved, weight=weight, axis=axis)
    return _grouped_backward(dy, x, saved, weight, axis, per_channel=True)


# ------------------------------------------------------------- moments ---


def moments(x, axis=None):
    _check_dask(x)
    shadow = _shadow(x)
    _layout.result_dtype(shadow, "x")
    axes = tuple(range(x.ndim)) if axis is None else _layout.normalize_axes(axis, x.ndim)
    count = int(np.prod([x.shape[i] for i in axes]))
    _layout.require_nonempty_reduction(count, "axis={!r} of shape {}", axis, x.shape)
    parts = _moments(x, Layout("rows", axes))
    return Moments(count, _squeeze(parts["mean"], axes), _squeeze(parts["m2"], axes))


# ----------------------------------------------------------- weight norm ---


def _weight_layout(v, axis):
    axis = None if axis is None else _layout.normalize_axis(axis, v.ndim)
    reduced = tuple(i for i in range(v.ndim) if i != axis)
    return Layout("rows", reduced), reduced


def weight_norm(v, g, *, axis=0):
    _check_dask(v, "v")
    _, _, _, result, _, g, _, stat_shape = _weight_norm._prepare(_shadow(v), g, axis)
    layout, reduced = _weight_layout(v, axis)
    g_kd = _keepdims_array(g, v, reduced)
    if _within_chunks(v, reduced):
        tuples = _tuple_blocks(_weight_block_forward, v, g_kd, axis, reduced, like=v)
        w = _part(tuples, 0, v.chunks, result)
        rstd = _part(tuples, 1, _stat_chunks(v, reduced), np.float64)
        return w, NormStats(None, _squeeze(rstd, reduced).reshape(stat_shape), True, False)
    parts = _moments(v, layout)
    rstd = parts.map_blocks(_inverse_norm, dtype=np.float64, meta=_meta(v.ndim, np.float64))
    zeros = da.zeros_like(rstd)
    w = da.map_blocks(
        blocks.apply, v, zeros, g_kd * rstd, None, None, layout=layout, dtype=result,
        meta=_meta(v.ndim, result),
    )
    return w, NormStats(None, _squeeze(rstd, reduced).reshape(stat_shape), True, False)


def _inverse_norm(parts):
    """``1 / ||v||`` per slice from its moments: ``||v||**2 = m2 + n mean**2``."""
    return cpu.rstd_of(parts["m2"] + parts["count"] * parts["mean"] * parts["mean"], 0.0)


def weight_norm_backward(dw, v, g, saved, *, axis=0):
    _layout.check_saved(saved)
    v = _as_dask_pair(dw, v)
    _check_dask(v, "v")
    _, _, _, result, _, g, _, stat_shape = _weight_norm._prepare(_shadow(v), g, axis)
    dw = _like(dw, v, result, "dw")
    layout, reduced = _weight_layout(v, axis)
    rstd = _keepdims_array(_stat_host(saved.rstd, stat_shape, "saved.rstd"), v, reduced)
    g_kd = _keepdims_array(g, v, reduced)
    g_dtype = _layout.param_grad_dtype(g)
    if _within_chunks(v, reduced):
        tuples = _tuple_blocks(_weight_block_backward, dw, v, g_kd, rstd, axis, reduced, like=v)
        dv = _part(tuples, 0, v.chunks, result)
        dg = _part(tuples, 1, _stat_chunks(v, reduced), np.float64)
        return dv, dg.reshape(g.shape).astype(g_dtype)
    zeros = da.zeros_like(rstd)
    tuples = _tuple_blocks(blocks.row_grad_sums, dw, v, zeros, rstd, None, layout, False, like=v)
    t = _part(tuples, 1, _kd_chunks(v, reduced), np.float64).sum(axis=reduced, keepdims=True)
    t = t.rechunk(_stat_chunks(v, reduced))
    scale = g_kd * rstd
    dv = da.map_blocks(
        blocks.backward_apply, dw, v, zeros, scale, None, -scale * t * rstd * rstd, zeros,
        layout, dtype=result, meta=_meta(v.ndim, result),
    )
    return dv, (t * rstd).reshape(g.shape).astype(g_dtype)


def _weight_block_forward(v, g, axis, reduced):
    """The in-memory weight norm of a block of whole slices: ``(w, rstd)``."""
    w, saved = _weight_norm.weight_norm(v, g.reshape(-1) if axis is not None else g, axis=axis)
    return w, np.reshape(saved.rstd, _kd_shape(v, reduced))


def _weight_block_backward(dw, v, g, rstd, axis, reduced):
    """Its backward: ``(dv, dg)``, ``dg`` float64 keepdims."""
    saved = NormStats(None, np.reshape(rstd, np.shape(rstd)[axis] if axis is not None else ()),
                      True, False)
    g = g.reshape(-1) if axis is not None else g.reshape(())
    dv, dg = _weight_norm.weight_norm_backward(dw, v, g, saved, axis=axis)
    return dv, np.reshape(dg.astype(np.float64), _kd_shape(v, reduced))

