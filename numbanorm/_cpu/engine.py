"""Norms as compositions of the CPU back end's kernels.

:mod:`numbanorm._cuda.engine` is the GPU counterpart, function for function;
the public functions get one or the other from
:func:`numbanorm._layout.engine_for`.

Host-side code shared by every norm: it sizes the work split, allocates the
partial-sum arrays, adds them in a fixed order and forms the small
per-``(n, c)`` coefficient arrays the elementwise kernels take. It sees only
canonical views (see :mod:`numbanorm._layout`) and float64 statistics.

Grouped statistics over an ``(N, P, C, Q)`` view with ``G`` groups of
``C // G`` consecutive channels cover batch norm (``N = 1, G = C``), group norm
and instance norm (``G = C``).

Grouped kernels take float64 statistics per ``(n, group)`` and parameters per
channel, and form each channel's coefficients themselves: no ``(N, C)``
arrays are built on the host.

A norm's pass is a ``*_steps`` function of the kernel shape (and dtypes,
settings): it works out once what they decide (work split, kernel, scratch
shapes) and returns the steps a call runs, ``steps(xk, yk, *params)`` forward
and ``steps(dyk, xk, dxk, stats, *params)`` backward, ``stats`` the saved
statistics as the forward steps returned them. The public functions ask for
them once per call signature (see the runners in :mod:`numbanorm._layout`);
the CUDA engine has the same ones (:mod:`numbanorm._interface`).
"""

import math

import numpy as np

from . import memory
from . import channels as channel_kernels
from . import samples as sample_kernels
from .channel_loops import SHORT_RUN
from . import finish
from . import rows as row_kernels

#: Elements one channel-kernel task handles (at least one ``P`` index); fixed,
#: so the split and hence every result depends on the shape only.
CHUNK_ELEMENTS = 1 << 16
#: ... and ``P`` is split into at most this many chunks per sample, so the
#: partial sums stay O(channels), never O(input).
MAX_CHUNKS = 32
#: Row-kernel backward splits rows into at most this many blocks of partial
#: parameter-gradient sums, each of at least ``MIN_ROWS_PER_BLOCK`` rows (the
#: partial sums stay small next to the data).
MAX_ROW_BLOCKS = 16
MIN_ROWS_PER_BLOCK = 16
#: Group and instance norm run one fused task per sample from this many
#: samples on (see :func:`sample_forward_steps`).
SAMPLE_KERNEL_MIN_N = 4
#: Their backward adds the samples' parameter-gradient sums in at most this
#: many blocks of consecutive samples, one task each (enough tasks for many
#: threads, few partial sums). Their channels-last forward splits the
#: samples the same way.
SAMPLE_BLOCKS = 64


#: Batch norm backward on long channels-first runs takes one task per channel
#: (:func:`numbanorm._cpu.channels.channel_runs_backward`) from this many
#: channels on; fewer channels (an RGB input's 3) would leave threads idle,
#: so they stay chunked by samples.
CHANNEL_TASKS_MIN = 16


#: Weight norm forward on rows of at least this many values gives each task
#: ``SCALE_ROWS_PER_TASK`` rows and sums the next row's squares while it
#: scales the current one (:func:`numbanorm._cpu.rows.row_scale_forward`);
#: shorter rows, whose data stays in L2, take a task per row.
SCALE_PIPELINE_MIN_LENGTH = 4096
SCALE_ROWS_PER_TASK = 16


def _scale_rows_per_task(length):
    """Rows per task of weight norm's forward on rows of ``length`` values."""
    return SCALE_ROWS_PER_TASK if length >= SCALE_PIPELINE_MIN_LENGTH else 1


#: Element types the CPU kernels take.
_KERNEL_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def coefficients(a, dtype=np.float64):
    """A small array (statistics, coefficients) as a C-contiguous, writeable
    kernel argument of ``dtype``: one type for every call, whatever the
    caller's array was (a read-only one is copied; these arrays are tiny)."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.flags.writeable else a.copy()


# ------------------------------------------- array steps (both engines) ---
# The public functions call these through the engine of x's back end
# (numbanorm._layout.engine_for); numbanorm._cuda.engine has the same ones.


def to_kernel(view, a, dtype):
    """``a`` (shaped like x) as a C-contiguous, read-only kernel array."""
    return view.to_kernel(a, dtype)


def output(view, dtype, result, out):
    """A kernel-shaped buffer and a function giving the result."""
    return view.output(dtype, result, out)


def stats(a):
    """A saved statistic as a contiguous float64 array."""
    return np.ascontiguousarray(a, dtype=np.float64)


def float64_copy(a):
    """A float64 copy of ``a`` (running statistics in eval mode)."""
    return a.astype(np.float64)


def cast(a, dtype):
    """``a`` as a new array of ``dtype``."""
    return a.astype(dtype)


def zeros(n):
    """``n`` float64 zeros."""
    return np.zeros(n)


def running_update(running_mean, running_var, mean, var, momentum, unbiased):
    """``running = (1 - momentum) * running + momentum * batch`` in place, with
    the batch variance scaled by ``unbiased = M / (M - 1)``: a serial kernel
    for float32/float64 running arrays (Numba has no float16 on the CPU),
    NumPy for the others."""
    if running_mean.dtype in _KERNEL_FLOATS and running_var.dtype in _KERNEL_FLOATS:
        finish.running_update.serial(
            running_mean, running_var, mean, var, float(momentum), float(unbiased)
        )
        return
    running_mean[...] = (1.0 - momentum) * running_mean + momentum * mean
    running_var[...] = (1.0 - momentum) * running_var + momentum * (var * unbiased)


def instance_batch_stats(mean, rstd, eps):
    """Per-channel batch statistics from instance statistics ``(N, C)``: the
    averages over samples of the means and of the biased variances."""
    channels = mean.shape[1]
    batch_mean = np.empty(channels)
    batch_var = np.empty(channels)
    finish.instance_batch_stats.serial(mean, rstd, float(eps), batch_mean, batch_var)
    return batch_mean, batch_var


def rstd_of(var, eps):
    """``1 / sqrt(var + eps)``, without warnings for zero or non-finite input."""
    rstd = np.empty(var.shape)
    finish.rstd_of.serial(_flat(var), float(eps), _flat(rstd))
    return rstd


def _blocks(count, max_blocks, min_per_block=1):
    """``count`` items (rows, samples) split into at most ``max_blocks`` blocks
    of consecutive items, at least ``min_per_block`` each (the last may be
    shorter): ``(per_block, blocks)``, from the shape alone."""
    per_block = max(min_per_block, -(-count // max_blocks))
    return per_block, -(-count // per_block)


def _flat(a):
    """``a`` as a 1-D array (itself when it is one)."""
    return a if a.ndim == 1 else a.reshape(-1)


def _p_chunk(kshape):
    """Chunk length along ``P`` and the number of chunks, from the shape alone."""
    _, p, c, q = kshape
    chunk = max(1, CHUNK_ELEMENTS // max(1, c * q), -(-p // MAX_CHUNKS))
    return chunk, -(-p // chunk)


# ------------------------------------------------------------- row norms ---


@memory.cache(maxsize=64)
def row_forward_steps(kshape, dtype, center):
    """Layer norm (``center``) or RMS norm of each row, for kernel arrays of
    shape ``kshape`` and ``dtype``: ``steps(xk, yk, weight, bias, eps) ->
    (mean, rstd)`` writes ``yk``."""
    rows, length = kshape
    kernel = row_kernels.row_forward
    elements = rows * length

    def steps(xk, yk, weight, bias, eps):
        mean = np.empty(rows)
        rstd = np.empty(rows)
        kernel.for_size(elements)(
            xk, _row_param(weight, length, 1.0, dtype), _row_param(bias, length, 0.0, dtype),
            eps, center, yk, mean, rstd,
        )
        return mean, rstd

    return steps


@memory.cache(maxsize=64)
def row_forward_residual_steps(kshape, dtype, center):
    """:func:`row_forward_steps` of ``h = x + residual``: ``steps(xk, rk, hk,
    yk, weight, bias, eps) -> (mean, rstd)`` writes ``hk`` and ``yk``."""
    rows, length = kshape
    kernel = row_kernels.row_forward_residual
    elements = rows * length

    def steps(xk, rk, hk, yk, weight, bias, eps):
        mean = np.empty(rows)
        rstd = np.empty(rows)
        kernel.for_size(elements)(
            xk, rk, _row_param(weight, length, 1.0, dtype), _row_param(bias, length, 0.0, dtype),
            eps, center, hk, yk, mean, rstd,
        )
        return mean, rstd

    return steps


@memory.cache(maxsize=64)
def row_backward_steps(kshape, dtype, center, param_grads, weight_dtype):
    """Backward of :func:`row_forward_steps` for kernel arrays of shape
    ``kshape`` and ``dtype`` and a weight of ``weight_dtype`` (None without
    one): ``steps(dyk, xk, dxk, (mean, rstd), weight, dhk=None) -> (dweight,
    dbias)`` writes dx (plus ``dhk``, a kernel view, when given) into ``dxk``
    and returns the float64 sums stored in the weight's dtype when that is
    float32 or float64 (or Nones)."""
    rows, length = kshape
    rows_per_block, nblocks = _blocks(rows, MAX_ROW_BLOCKS, MIN_ROWS_PER_BLOCK)
    part_shape = (nblocks, length if param_grads else 0)
    kernel = row_kernels.row_backward
    elements = rows * length
    # The kernel stores the gradients in the weight's dtype (float64 without a
    # weight, or for other dtypes): no cast left for the caller.
    if weight_dtype is not None and weight_dtype in _KERNEL_FLOATS:
        grad_dtype = weight_dtype
    else:
        grad_dtype = np.dtype(np.float64)

    no_dh = np.empty((0, length), dtype)  # read-only, as a kernel view of dh is
    no_dh.setflags(write=False)

    def steps(dyk, xk, dxk, stats, weight, dhk=None):
        mean, rstd = stats
        dw_part = np.empty(part_shape)
        db_part = np.empty(part_shape)
        dweight = np.empty(part_shape[1], grad_dtype)
        dbias = np.empty(part_shape[1], grad_dtype)
        kernel.for_size(elements)(
            dyk, xk, coefficients(mean), coefficients(rstd),
            _row_param(weight, length, 1.0, dtype), center, param_grads,
            rows_per_block, no_dh if dhk is None else dhk, dxk, dw_part, db_part, dweight, dbias,
        )
        if not param_grads:
            return None, None
        return dweight, dbias

    return steps


# --------------------------------------------------------- grouped norms ---


def _param(p, channels, value):
    """A per-channel parameter (a checked ``(C,)`` array, or None) as a
    float64 kernel argument; ``channels`` values ``value`` if None."""
    return p.astype(np.float64) if p is not None else memory.filled(channels, value, np.float64)


def _row_param(p, length, value, dtype):
    """A row parameter (a checked array of the row's shape, or None) as a
    kernel argument of ``dtype``; ``length`` values ``value`` if None."""
    return coefficients(_flat(p), dtype) if p is not None else memory.filled(length, value, dtype)


def group_m2(xk, groups):
    """Count, mean and sum of squared deviations per ``(n, group)`` of an
    ``(N, P, C, Q)`` view with ``groups`` groups of consecutive channels:
    ``(count, mean, m2)``, ``mean`` and ``m2`` float64 ``(N, G)``.

    Each task sums its chunk about the chunk's first values, and the chunks
    are merged exactly (:func:`numbanorm._cpu.channels.channel_moments_totals`).
    """
    n, p, c, q = xk.shape
    cg = c // groups
    count = p * q * cg
    if p == 1 and cg > 1:
        # Channels first: a group's channels are contiguous, so reduce each
        # group as one long run instead of cg short ones.
        xk = xk.reshape(n, 1, groups, cg * q)
    chunk, nchunks = _p_chunk(xk.shape)
    parts = np.empty((3, n, nchunks, xk.shape[2]))
    channel_kernels.channel_moments.for_size(xk.size)(xk, chunk, parts[0], parts[1], parts[2])
    mean = np.empty((n, groups))
    m2 = np.empty((n, groups))
    channel_kernels.channel_moments_totals.serial(
        parts[0], parts[1], parts[2], chunk, xk.shape[1], xk.shape[3], mean, m2
    )
    return count, mean, m2


def group_moments(xk, groups):
    """Mean and biased variance per ``(n, group)``, float64, shape ``(N, G)``
    (see :func:`group_m2`)."""
    count, mean, m2 = group_m2(xk, groups)
    return mean, m2 / count


def group_apply(xk, mean, rstd, weight, bias, yk):
    """``y = (x - mean) * rstd * weight[c] + bias[c]`` with ``mean``/``rstd`` per
    ``(n, group)``."""
    c = xk.shape[2]
    chunk, _ = _p_chunk(xk.shape)
    channel_kernels.channel_affine.for_size(xk.size)(
        xk, coefficients(mean), coefficients(rstd), _param(weight, c, 1.0),
        _param(bias, c, 0.0), chunk, yk,
    )


def group_backward(dyk, xk, mean, rstd, weight, batch_stats, param_grads, dxk):
    """Backward of :func:`group_apply`; dx into ``dxk``.

    ``batch_stats``: ``mean``/``rstd`` were computed from ``x`` itself, so the
    gradient flows through them too. With ``g = dy * weight``, ``M`` elements
    per group and ``xhat = (x - mean) * rstd``:
    ``dx = rstd * (g - sum(g)/M - xhat * sum(g * xhat)/M)``, i.e.
    ``rstd*weight[c]*dy + beta*(x - mean) + gamma`` with ``beta``, ``gamma``
    per ``(n, group)``. Returns float64 ``(dweight, dbias)`` of shape ``(C,)``
    (or Nones).
    """
    n, p, c, q = xk.shape
    groups = mean.shape[1]
    mean = coefficients(mean)
    rstd = coefficients(rstd)
    w = _param(weight, c, 1.0)
    if n == 1 and groups == c and q > SHORT_RUN and c >= CHANNEL_TASKS_MIN and batch_stats:
        # Batch norm on long channels-first runs: one fused task per channel.
        dweight = np.empty(c)
        dbias = np.empty(c)
        channel_kernels.channel_runs_backward.for_size(xk.size)(dyk, xk, mean, rstd, w, dxk, dweight, dbias)
        return (dweight, dbias) if param_grads else (None, None)
    count = p * q * (c // groups)
    chunk, nchunks = _p_chunk(xk.shape)
    beta = np.zeros((n, groups))
    gamma = np.zeros((n, groups))
    dweight = np.empty(c if param_grads else 0)
    dbias = np.empty(c if param_grads else 0)
    if batch_stats or param_grads:
        a_part = np.empty((n, nchunks, c))
        b_part = np.empty((n, nchunks, c))
        channel_kernels.channel_grad_sums.for_size(xk.size)(dyk, xk, mean, chunk, a_part, b_part)
        channel_kernels.channel_backward_coefficients.serial(
            a_part, b_part, w, rstd, count, batch_stats, beta, gamma, dweight, dbias
        )
    channel_kernels.channel_backward_apply.for_size(xk.size)(
        dyk, xk, mean, rstd, w, beta, gamma, chunk, dxk
    )
    if not param_grads:
        return None, None
    return dweight, dbias


# The backward of grouped statistics in its three steps, for the Dask engine
# (numbanorm._dask), whose sums come from many blocks: sums per block, the
# coefficients from the sums of all blocks, dx per block. Host only.


def group_grad_sums(dyk, xk, mean):
    """Float64 sums of ``dy`` and of ``dy * (x - mean[n, g])`` per ``(n, c)``
    of an ``(N, P, C, Q)`` view: ``(sum_dy, sum_dy_xc)``, each ``(N, C)``."""
    n, _, c, _ = xk.shape
    chunk, nchunks = _p_chunk(xk.shape)
    a_part = np.empty((n, nchunks, c))
    b_part = np.empty((n, nchunks, c))
    channel_kernels.channel_grad_sums.for_size(xk.size)(
        dyk, xk, coefficients(mean), chunk, a_part, b_part
    )
    return a_part.sum(axis=1), b_part.sum(axis=1)


def group_backward_coefficients(sum_dy, sum_dy_xc, weight, rstd, count, batch_stats):
    """From the sums of :func:`group_grad_sums` over all of x: ``beta``,
    ``gamma`` per ``(n, group)`` of ``dx = rstd*weight[c]*dy + beta*(x - mean)
    + gamma`` (zeros unless ``batch_stats``), ``count`` values per group, and
    ``dweight``, ``dbias`` of shape ``(C,)`` (see :func:`group_backward`)."""
    n, c = sum_dy.shape
    groups = rstd.shape[1]
    beta = np.empty((n, groups))
    gamma = np.empty((n, groups))
    dweight = np.empty(c)
    dbias = np.empty(c)
    channel_kernels.channel_backward_coefficients.serial(
        coefficients(sum_dy).reshape(n, 1, c), coefficients(sum_dy_xc).reshape(n, 1, c),
        _param(weight, c, 1.0), coefficients(rstd), int(count), bool(batch_stats),
        beta, gamma, dweight, dbias,
    )
    return beta, gamma, dweight, dbias


def group_backward_apply(dyk, xk, mean, rstd, weight, beta, gamma, dxk):
    """``dx = rstd*weight[c]*dy + beta*(x - mean) + gamma`` into ``dxk``, the
    statistics and coefficients per ``(n, group)``."""
    c = xk.shape[2]
    chunk, _ = _p_chunk(xk.shape)
    channel_kernels.channel_backward_apply.for_size(xk.size)(
        dyk, xk, coefficients(mean), coefficients(rstd), _param(weight, c, 1.0),
        coefficients(beta), coefficients(gamma), chunk, dxk,
    )


@memory.cache(maxsize=64)
def sample_forward_steps(kshape, groups):
    """Group/instance norm forward for kernel arrays of shape ``kshape``:
    ``steps(xk, yk, weight, bias, eps) -> (mean, rstd)``, statistics per
    ``(n, group)`` from ``x`` itself (float64, ``(N, G)``), then the affine
    map into ``yk``.

    From ``SAMPLE_KERNEL_MIN_N`` samples on, one fused task per sample (one
    pass over memory); fewer samples use the chunked kernels so that both
    threads have work. The choice depends on the shape only.
    """
    n, _, c, _ = kshape
    if n < SAMPLE_KERNEL_MIN_N:
        def chunked(xk, yk, weight, bias, eps):
            mean, var = group_moments(xk, groups)
            rstd = rstd_of(var, eps)
            group_apply(xk, mean, rstd, weight, bias, yk)
            return mean, rstd

        return chunked
    samples_per_task, _ = _blocks(n, SAMPLE_BLOCKS)
    kernel = sample_kernels.sample_norm_forward
    elements = math.prod(kshape)
    stat_shape = (n, groups)

    def fused(xk, yk, weight, bias, eps):
        mean = np.empty(stat_shape)
        rstd = np.empty(stat_shape)
        kernel.for_size(elements)(
            xk, groups, _param(weight, c, 1.0), _param(bias, c, 0.0), eps, samples_per_task,
            yk, mean, rstd,
        )
        return mean, rstd

    return fused


@memory.cache(maxsize=64)
def sample_backward_steps(kshape, groups, param_grads):
    """Backward of :func:`sample_forward_steps` for kernel arrays of shape
    ``kshape`` and statistics of ``groups`` groups: ``steps(dyk, xk, dxk,
    (mean, rstd), weight) -> (dweight, dbias)`` writes dx into ``dxk`` and
    returns float64 sums (or Nones)."""
    n, p, c, q = kshape
    if n < SAMPLE_KERNEL_MIN_N:
        def chunked(dyk, xk, dxk, stats, weight):
            return group_backward(dyk, xk, *stats, weight, True, param_grads, dxk)

        return chunked
    samples_per_block, nblocks = _blocks(n, SAMPLE_BLOCKS)
    part_shape = (nblocks, c)
    if p == 1 and q <= SHORT_RUN and groups == c:
        kernel = sample_kernels.instance_runs_backward  # instance norm, NCHW short runs
    else:
        kernel = sample_kernels.sample_norm_backward
    elements = math.prod(kshape)

    def fused(dyk, xk, dxk, stats, weight):
        mean, rstd = stats
        sum_dy = np.empty(part_shape)
        sum_dy_xhat = np.empty(part_shape)
        kernel.for_size(elements)(
            dyk, xk, coefficients(mean), coefficients(rstd),
            _param(weight, c, 1.0), samples_per_block, sum_dy, sum_dy_xhat, dxk,
        )
        if not param_grads:
            return None, None
        return sum_dy_xhat.sum(axis=0), sum_dy.sum(axis=0)

    return fused


# ----------------------------------------------------------- weight norm ---


def _magnitude(g):
    """Weight norm's ``g`` as a 1-D kernel argument: itself when it is a
    writeable, contiguous float32 or float64 array (the kernels promote each
    value to float64, exactly), else a float64 copy."""
    g = _flat(g)
    if g.dtype in _KERNEL_FLOATS and g.flags.c_contiguous and g.flags.writeable:
        return g
    return coefficients(g)


@memory.cache(maxsize=64)
def weight_norm_forward_steps(kshape):
    """Weight norm for kernel arrays of shape ``kshape``: ``steps(vk, wk, g)
    -> rstd`` writes ``w = g[r] * v / ||v[r]||`` per row into ``wk`` and
    returns float64 ``1/||v||``."""
    rows, length = kshape
    rows_per_task = _scale_rows_per_task(length)
    kernel = row_kernels.row_scale_forward
    elements = rows * length

    def steps(vk, wk, g):
        rstd = np.empty(rows)
        kernel.for_size(elements)(vk, _magnitude(g), rows_per_task, wk, rstd)
        return rstd

    return steps


@memory.cache(maxsize=64)
def weight_norm_backward_steps(kshape):
    """Backward of :func:`weight_norm_forward_steps`: ``steps(dwk, vk, dvk,
    rstd, g) -> dg`` writes dv into ``dvk`` and returns float64 ``dg`` per
    row."""
    rows, length = kshape
    kernel = row_kernels.row_scale_backward
    elements = rows * length

    def steps(dwk, vk, dvk, rstd, g):
        dg = np.empty(rows)
        kernel.for_size(elements)(dwk, vk, _magnitude(g), coefficients(rstd), dvk, dg)
        return dg

    return steps
