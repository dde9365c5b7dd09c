"""Per-sample channel kernels over an ``(N, P, C, Q)`` view: one task per
sample (or block of samples) computes the sample's group statistics and then,
while the sample is still in cache, normalizes it or forms its gradient.
Group and instance norm use them.
"""

import numpy as np
from numba import prange

from .compile import (
    aligned_empty, cast_like, far_shift, helper, kernel, split_like,
)
from .channel_loops import (
    SHORT_RUN,
    _add_moments,
    _run_moments,
    _mean_rstd,
    _group_totals,
    _affine,
    _add_grad_sums,
    _backward_affine,
    _run_grad_sums,
    _run_dx,
    _affine_group_runs,
    _split_mean,
    _affine_coefficients,
    _backward_coefficients,
    _group_coefficients,
)


@helper(inline=True)
def _group_backward_runs(dy, x, dx, n, g, mean, rstd, weight, inv_count, sa, sb):
    """Channels first (``Q > 1``), group ``g`` of sample ``n``: its channels'
    float64 sums of ``dy`` and ``dy * (x - mean)`` into ``sa``/``sb``, then its
    ``dx`` (see :func:`sample_norm_backward`).
    """
    N, P, C, Q = x.shape
    cg = C // mean.shape[0]
    mu = mean[g]
    h, l = split_like(x, mu)
    for p in range(P):
        for c in range(g * cg, (g + 1) * cg):
            a1, a2 = _run_grad_sums(dy[n, p, c], x[n, p, c], h, l)
            sa[c] += a1
            sb[c] += a2
    rs = rstd[g]
    beta, gamma = _group_coefficients(sa, sb, weight, g, cg, rs, inv_count)
    be = cast_like(x, beta)
    ga = cast_like(x, gamma)
    for p in range(P):
        for c in range(g * cg, (g + 1) * cg):
            al = cast_like(x, rs * weight[c])
            _run_dx(dy[n, p, c], x[n, p, c], dx[n, p, c], h, l, al, be, ga)


@helper(inline=True)
def _pair_sums(g2, x2, h0, l0, h1, l1):
    """``sum(dy)`` and ``sum(dy * ((x - h) - l))`` over two short runs (the rows
    of ``g2``/``x2``), summed in ``x``'s dtype, returned as float64.

    Two channels share one loop: a 49-value run is too short for a loop of
    its own to pay. One array per operand keeps the loop's overlap checks few.
    """
    zero = cast_like(x2, 0.0)
    a0, b0, a1, b1 = zero, zero, zero, zero
    for q in range(x2.shape[1]):
        e0 = g2[0, q]
        e1 = g2[1, q]
        a0 += e0
        b0 += e0 * ((x2[0, q] - h0) - l0)
        a1 += e1
        b1 += e1 * ((x2[1, q] - h1) - l1)
    return np.float64(a0), np.float64(b0), np.float64(a1), np.float64(b1)


@helper(inline=True)
def _pair_dx(g2, x2, d2, h0, l0, al0, be0, ga0, h1, l1, al1, be1, ga1):
    """``dx = al*dy + be*((x - h) - l) + ga`` over two short runs, one loop."""
    for q in range(x2.shape[1]):
        d2[0, q] = al0 * g2[0, q] + be0 * ((x2[0, q] - h0) - l0) + ga0
        d2[1, q] = al1 * g2[1, q] + be1 * ((x2[1, q] - h1) - l1) + ga1


@helper(inline=True)
def _group_pairs_backward(gs, xs, ds, g, cg, mu, rs, weight, inv_count, sa, sb):
    """:func:`_group_backward_runs` for group ``g`` of ``cg`` short channels
    (an even number) of one sample, two channels per loop; ``gs``, ``xs``,
    ``ds`` are the sample's ``(C, Q)`` arrays of ``dy``, ``x``, ``dx`` (``P == 1``),
    ``mu``/``rs`` the group's statistics."""
    h, l = split_like(xs, mu)
    for c in range(g * cg, (g + 1) * cg, 2):
        sa[c], sb[c], sa[c + 1], sb[c + 1] = _pair_sums(gs[c:c + 2], xs[c:c + 2], h, l, h, l)
    beta, gamma = _group_coefficients(sa, sb, weight, g, cg, rs, inv_count)
    be = cast_like(xs, beta)
    ga = cast_like(xs, gamma)
    for c in range(g * cg, (g + 1) * cg, 2):
        al0 = cast_like(xs, rs * weight[c])
        al1 = cast_like(xs, rs * weight[c + 1])
        _pair_dx(gs[c:c + 2], xs[c:c + 2], ds[c:c + 2], h, l, al0, be, ga, h, l, al1, be, ga)


@helper(inline=True)
def _instance_pair_backward(gs, xs, ds, c, mean, rstd, weight, inv_count, sa, sb):
    """:func:`_group_backward_runs` for instance norm's channels ``c`` and
    ``c + 1`` of one sample (its ``(C, Q)`` arrays, as in
    :func:`_group_pairs_backward`), in one loop each for the sums and for
    ``dx``."""
    h0, l0 = split_like(xs, mean[c])
    h1, l1 = split_like(xs, mean[c + 1])
    g2, x2, d2 = gs[c:c + 2], xs[c:c + 2], ds[c:c + 2]
    sa[c], sb[c], sa[c + 1], sb[c + 1] = _pair_sums(g2, x2, h0, l0, h1, l1)
    r0, r1 = rstd[c], rstd[c + 1]
    beta0, gamma0 = _group_coefficients(sa, sb, weight, c, 1, r0, inv_count)
    beta1, gamma1 = _group_coefficients(sa, sb, weight, c + 1, 1, r1, inv_count)
    _pair_dx(
        g2, x2, d2,
        h0, l0, cast_like(xs, r0 * weight[c]), cast_like(xs, beta0), cast_like(xs, gamma0),
        h1, l1, cast_like(xs, r1 * weight[c + 1]), cast_like(xs, beta1), cast_like(xs, gamma1),
    )


# ----------------------------------------------------- per-sample kernels ---


@helper
def _channels_last_samples(x, groups, weight, bias, eps, n0, n1, y, mean, rstd):
    """Samples ``n0:n1`` of :func:`sample_norm_forward`, channels last, with
    one set of per-channel work arrays (a helper of its own so that both
    builds compile its loops alike)."""
    N, P, C, Q = x.shape
    cg = C // groups
    inv_count = 1.0 / (P * Q * cg)
    sh = aligned_empty(C, mean)
    s1 = aligned_empty(C, mean)
    s2 = aligned_empty(C, mean)
    hi = aligned_empty(C, x)
    a = aligned_empty(C, x)
    b = aligned_empty(C, x)
    for n in range(n0, n1):
        for g in range(groups):
            s = np.float64(x[n, 0, g * cg, 0])
            for c in range(g * cg, (g + 1) * cg):
                sh[c] = s
        s1[:] = 0.0
        s2[:] = 0.0
        _add_moments(x, n, 0, P, sh, s1, s2)
        again = False
        for g in range(groups):
            t1, t2 = _group_totals(s1, s2, g, cg)
            offset = far_shift(t1, t2, inv_count)
            if offset != 0.0:  # this group's first value lies far from its mean
                again = True
                for c in range(g * cg, (g + 1) * cg):
                    sh[c] += offset
        if again:
            s1[:] = 0.0
            s2[:] = 0.0
            _add_moments(x, n, 0, P, sh, s1, s2)
        for g in range(groups):
            t1, t2 = _group_totals(s1, s2, g, cg)
            mean[n, g], rstd[n, g] = _mean_rstd(t1, t2, sh[g * cg], inv_count, eps)
        _affine_coefficients(x, mean, rstd, weight, bias, n, cg, hi, a, b)
        _affine(x, y, n, 0, P, hi, a, b)


@helper(inline=True)
def _group_run_moments(xs, n, g, s):
    """The sums of ``x - s`` and ``(x - s)**2`` over group ``g`` of sample
    ``n`` of the channels-first view ``xs`` (``(N, P, groups, run)``)."""
    t1 = 0.0
    t2 = 0.0
    for p in range(xs.shape[1]):
        a1, a2 = _run_moments(xs[n, p, g], s)
        t1 += a1
        t2 += a2
    return t1, t2


@helper
def _channels_first_sample(x, groups, weight, bias, eps, n, y, mean, rstd):
    """Sample ``n`` of :func:`sample_norm_forward`, channels first, one group
    at a time (a helper of its own: a kernel's loop body is typed once per
    build and once more for its parallel loop, a helper's once)."""
    N, P, C, Q = x.shape
    cg = C // groups
    inv_count = 1.0 / (P * Q * cg)
    # In each row p, a group's runs are contiguous: sum them as one run.
    xs = x.reshape((N, P, groups, cg * Q))
    for g in range(groups):
        s = np.float64(xs[n, 0, g, 0])
        t1, t2 = _group_run_moments(xs, n, g, s)
        offset = far_shift(t1, t2, inv_count)
        if offset != 0.0:  # the group's first value lies far from its mean
            s += offset
            t1, t2 = _group_run_moments(xs, n, g, s)
        mu, rs = _mean_rstd(t1, t2, s, inv_count, eps)
        mean[n, g] = mu
        rstd[n, g] = rs
        if P == 1:  # NCHW: no loop around a short run
            _affine_group_runs(x, y, n, 0, g, cg, mu, rs, weight, bias)
        else:
            for p in range(P):
                _affine_group_runs(x, y, n, p, g, cg, mu, rs, weight, bias)


@kernel
def sample_norm_forward(x, groups, weight, bias, eps, samples_per_task, y, mean, rstd):
    """Group norm of each sample: statistics per ``(n, group)`` into ``mean``
    and ``rstd`` (float64, ``rstd = 1/sqrt(var + eps)``), then
    ``y = (x - mean) * rstd * weight[c] + bias[c]`` while the data is in cache.

    Sums are taken about each group's first element, and again about the
    mean when that lies far from it (:func:`far_shift`). Channels first
    (``Q > 1``), one group at a time: its sums, then its ``y`` while the
    group is in the L1 cache (a 7x7 group of 16 channels is 3 KiB). Taking
    the whole sample's statistics first and then its ``y`` would read the
    sample back from L2 and leave memory idle during the arithmetic.

    Channels last (``Q == 1``), a task takes ``samples_per_task``
    consecutive samples, one after the other, with one set of per-channel
    work arrays.
    """
    N, P, C, Q = x.shape
    if Q > 1:
        for task in prange(N):
            n = np.int64(task)  # signed in both builds (see kernel)
            _channels_first_sample(x, groups, weight, bias, eps, n, y, mean, rstd)
        return
    per = samples_per_task
    for task in prange((N + per - 1) // per):
        k = np.int64(task)  # signed in both builds (see kernel)
        _channels_last_samples(
            x, groups, weight, bias, eps, k * per, min(N, (k + 1) * per), y, mean, rstd
        )


@helper(inline=True)
def _sample_backward(dy, x, mean, rstd, weight, n, groups, cg, inv_count, sa, sb, dx):
    """Sample ``n`` of :func:`sample_norm_backward`: its ``dx``, and its
    channels' sums of ``dy`` and ``dy * (x - mean)`` into the zeroed ``sa``
    and ``sb``."""
    N, P, C, Q = x.shape
    if Q > 1:
        # Channels first: one group at a time, its sums and then its dx
        # while the group's runs are still in the L1 cache. Short runs of
        # NCHW data: two channels per loop, on the sample's (C, Q) arrays
        # (sliced once per sample, not per pair); instance norm's have a
        # kernel of their own, instance_runs_backward.
        short = P == 1 and Q <= SHORT_RUN
        gs, xs, ds = dy[n, 0], x[n, 0], dx[n, 0]
        for g in range(groups):
            if short and cg % 2 == 0:
                _group_pairs_backward(
                    gs, xs, ds, g, cg, mean[n, g], rstd[n, g], weight, inv_count, sa, sb
                )
            else:
                _group_backward_runs(
                    dy, x, dx, n, g, mean[n], rstd[n], weight, inv_count, sa, sb
                )
        return
    hi = aligned_empty(C, x)
    lo = aligned_empty(C, x)
    _split_mean(x, mean, n, cg, hi, lo)
    _add_grad_sums(dy, x, n, 0, P, hi, lo, sa, sb)
    beta = aligned_empty(groups, mean)
    gamma = aligned_empty(groups, mean)
    for g in range(groups):
        beta[g], gamma[g] = _group_coefficients(
            sa, sb, weight, g, cg, rstd[n, g], inv_count
        )
    al = aligned_empty(C, x)
    be = aligned_empty(C, x)
    ga = aligned_empty(C, x)
    _backward_coefficients(x, mean, rstd, weight, beta, gamma, n, cg, hi, al, be, ga)
    _backward_affine(dy, x, dx, n, 0, P, hi, al, be, ga)


@helper(inline=True)
def _block_sums(sum_dy, sum_dy_xhat, k):
    """Block ``k``'s rows of ``sum_dy`` and ``sum_dy_xhat``, zeroed, and two
    work arrays for one sample's channel sums."""
    block_dy = sum_dy[k]
    block_dy_xhat = sum_dy_xhat[k]
    block_dy[:] = 0.0
    block_dy_xhat[:] = 0.0
    channels = block_dy.shape[0]
    return block_dy, block_dy_xhat, aligned_empty(channels, sum_dy), aligned_empty(channels, sum_dy)


@helper(inline=True)
def _add_sample_sums(sa, sb, rstd, cg, block_dy, block_dy_xhat):
    """Add a sample's channel sums of ``dy`` (``sa``) and ``dy * (x - mean)``
    (``sb``, times its group's ``rstd``) to its block's rows."""
    for g in range(rstd.shape[0]):
        rs = rstd[g]
        for c in range(g * cg, (g + 1) * cg):
            block_dy[c] += sa[c]
            block_dy_xhat[c] += sb[c] * rs


@helper
def _sample_block_backward(
    dy, x, mean, rstd, weight, samples_per_block, k, sum_dy, sum_dy_xhat, dx
):
    """Block ``k`` of :func:`sample_norm_backward` (a helper of its own so
    that both builds compile its loops alike)."""
    N, P, C, Q = x.shape
    groups = mean.shape[1]
    cg = C // groups
    inv_count = 1.0 / (P * Q * cg)
    block_dy, block_dy_xhat, sa, sb = _block_sums(sum_dy, sum_dy_xhat, k)
    for n in range(k * samples_per_block, min(N, (k + 1) * samples_per_block)):
        sa[:] = 0.0
        sb[:] = 0.0
        _sample_backward(dy, x, mean, rstd, weight, n, groups, cg, inv_count, sa, sb, dx)
        _add_sample_sums(sa, sb, rstd[n], cg, block_dy, block_dy_xhat)


@kernel
def sample_norm_backward(
    dy, x, mean, rstd, weight, samples_per_block, sum_dy, sum_dy_xhat, dx
):
    """Backward of :func:`sample_norm_forward`, one task per block of
    ``samples_per_block`` samples, one sample after the other.

    Each sample's per-channel sums of ``dy`` and ``dy * xhat`` (float64) are
    added, in sample order, to its block's row ``k`` of ``sum_dy`` and
    ``sum_dy_xhat`` (the parameter gradients are the sums of those rows);
    then, with ``g = dy * weight`` and ``M`` elements per group,
    ``dx = rstd * (g - sum(g)/M - xhat * sum(g * xhat)/M)``.

    A row per block rather than per sample keeps the partial sums small next
    to the data: NumPy adds them up after the pass, with the caches cold.
    """
    N = x.shape[0]
    nblocks = (N + samples_per_block - 1) // samples_per_block
    for task in prange(nblocks):
        k = np.int64(task)  # signed in both builds (see kernel)
        _sample_block_backward(
            dy, x, mean, rstd, weight, samples_per_block, k, sum_dy, sum_dy_xhat, dx
        )


@helper
def _instance_block_backward(
    dy, x, mean, rstd, weight, samples_per_block, k, sum_dy, sum_dy_xhat, dx
):
    """Block ``k`` of :func:`instance_runs_backward` (a helper of its own, see
    :func:`_channels_first_sample`)."""
    N, P, C, Q = x.shape
    inv_count = 1.0 / Q
    paired = C - C % 2
    block_dy, block_dy_xhat, sa, sb = _block_sums(sum_dy, sum_dy_xhat, k)
    for n in range(k * samples_per_block, min(N, (k + 1) * samples_per_block)):
        gs, xs, ds = dy[n, 0], x[n, 0], dx[n, 0]
        for c in range(0, paired, 2):
            _instance_pair_backward(gs, xs, ds, c, mean[n], rstd[n], weight, inv_count, sa, sb)
        if paired < C:  # an odd channel count: the last channel alone
            sa[C - 1] = 0.0
            sb[C - 1] = 0.0
            _group_backward_runs(
                dy, x, dx, n, C - 1, mean[n], rstd[n], weight, inv_count, sa, sb
            )
        _add_sample_sums(sa, sb, rstd[n], 1, block_dy, block_dy_xhat)


@kernel
def instance_runs_backward(
    dy, x, mean, rstd, weight, samples_per_block, sum_dy, sum_dy_xhat, dx
):
    """:func:`sample_norm_backward` for instance norm (one channel per group)
    on short channels-first runs (``P == 1``, ``Q <= SHORT_RUN``): two
    channels per loop, for the sums and for ``dx``.

    A kernel of its own: the same loops inside :func:`sample_norm_backward`,
    among its other layouts, compiled slower.
    """
    N = x.shape[0]
    nblocks = (N + samples_per_block - 1) // samples_per_block
    for task in prange(nblocks):
        k = np.int64(task)  # signed in both builds (see kernel)
        _instance_block_backward(
            dy, x, mean, rstd, weight, samples_per_block, k, sum_dy, sum_dy_xhat, dx
        )
