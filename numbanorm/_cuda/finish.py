"""Small GPU kernels that finish what the main kernels started, on the device.

The CPU engine runs the same steps as serial kernels on the host
(:mod:`numbanorm._cpu.finish`, and the glue kernels of
:mod:`numbanorm._cpu.channels`); on the GPU they are these kernels, so
statistics, running statistics and gradients never leave the device. Each
thread owns one output and adds its inputs in a fixed order (no atomics).
"""

import math

from .target import THREADS, blocks_for, cuda

#: Most axes a strided copy handles after merging contiguous axes.
COPY_NDIM = 6


@cuda.jit
def _copy6(src, dst):
    s0, s1, s2, s3, s4, s5 = dst.shape
    for i in range(cuda.grid(1), dst.size, cuda.gridDim.x * THREADS):
        r = i
        i5 = r % s5
        r //= s5
        i4 = r % s4
        r //= s4
        i3 = r % s3
        r //= s3
        i2 = r % s2
        r //= s2
        i1 = r % s1
        i0 = r // s1
        dst[i0, i1, i2, i3, i4, i5] = src[i0, i1, i2, i3, i4, i5]


def copy6(src, dst):
    """``dst[...] = src`` (cast to ``dst``'s dtype) for two 6-d strided arrays."""
    if dst.size:
        _copy6[blocks_for(dst.size), THREADS](src, dst)


@cuda.jit
def _fill(a, value):
    for i in range(cuda.grid(1), a.size, cuda.gridDim.x * THREADS):
        a[i] = value


def fill(a, value):
    """Set every element of the 1-d device array ``a`` to ``value``."""
    if a.size:
        _fill[blocks_for(a.size), THREADS](a, value)


@cuda.jit
def _sum_blocks(part, out):
    nblocks, n = part.shape
    for j in range(cuda.grid(1), n, cuda.gridDim.x * THREADS):
        s = 0.0
        for k in range(nblocks):
            s += part[k, j]
        out[j] = s


def sum_blocks(part, out):
    """``out[j] = sum(part[:, j])``, adding the blocks in order."""
    if out.size:
        _sum_blocks[blocks_for(out.size), THREADS](part, out)


@cuda.jit
def _group_shift(x, shift):
    N, P, C, Q = x.shape
    groups = shift.shape[1]
    cg = C // groups
    for i in range(cuda.grid(1), N * groups, cuda.gridDim.x * THREADS):
        n = i // groups
        g = i - n * groups
        shift[n, g] = x[n, 0, g * cg, 0]


def group_shift(x, shift):
    """``shift[n, g]`` = the first element of group ``g`` of sample ``n``."""
    _group_shift[blocks_for(shift.size), THREADS](x, shift)


@cuda.jit
def _finish_moments(s1_part, s2_part, shift, per, count, mean, var):
    N, nchunks, width = s1_part.shape
    groups = shift.shape[1]
    for i in range(cuda.grid(1), N * groups, cuda.gridDim.x * THREADS):
        n = i // groups
        g = i - n * groups
        t1 = 0.0
        t2 = 0.0
        for c in range(g * per, (g + 1) * per):
            for k in range(nchunks):
                t1 += s1_part[n, k, c]
                t2 += s2_part[n, k, c]
        m = t1 / count
        v = t2 / count - m * m
        if v < 0.0:
            v = 0.0
        mean[n, g] = shift[n, g] + m
        var[n, g] = v


def finish_moments(s1_part, s2_part, shift, per, count, mean, var):
    """Mean and biased variance per ``(n, group)`` from the partial sums about
    ``shift`` (columns ``g*per:(g+1)*per`` of the partials are group ``g``)."""
    _finish_moments[blocks_for(mean.size), THREADS](s1_part, s2_part, shift, per, count, mean, var)


@cuda.jit
def _rstd_of(var, eps, rstd):
    for i in range(cuda.grid(1), var.size, cuda.gridDim.x * THREADS):
        rstd[i] = 1.0 / math.sqrt(var[i] + eps)


def rstd_of(var, eps, rstd):
    """``rstd = 1/sqrt(var + eps)`` elementwise (1-d float64 arrays)."""
    _rstd_of[blocks_for(var.size), THREADS](var, eps, rstd)


@cuda.jit
def _channel_totals(a_part, b_part, sum_a, sum_b):
    N, nchunks, C = a_part.shape
    for i in range(cuda.grid(1), N * C, cuda.gridDim.x * THREADS):
        n = i // C
        c = i - n * C
        ta = 0.0
        tb = 0.0
        for k in range(nchunks):
            ta += a_part[n, k, c]
            tb += b_part[n, k, c]
        sum_a[n, c] = ta
        sum_b[n, c] = tb


def channel_totals(a_part, b_part, sum_a, sum_b):
    """Add the chunks of two ``(N, chunks, C)`` partial arrays into ``(N, C)``."""
    _channel_totals[blocks_for(sum_a.size), THREADS](a_part, b_part, sum_a, sum_b)


@cuda.jit
def _backward_coefficients(sum_dy, sum_dy_xc, weight, rstd, count, beta, gamma):
    N, C = sum_dy.shape
    groups = rstd.shape[1]
    cg = C // groups
    for i in range(cuda.grid(1), N * groups, cuda.gridDim.x * THREADS):
        n = i // groups
        g = i - n * groups
        sg = 0.0
        sgx = 0.0
        for c in range(g * cg, (g + 1) * cg):
            sg += weight[c] * sum_dy[n, c]
            sgx += weight[c] * sum_dy_xc[n, c]
        rs = rstd[n, g]
        beta[n, g] = -rs * rs * rs * sgx / count
        gamma[n, g] = -rs * sg / count


def backward_coefficients(sum_dy, sum_dy_xc, weight, rstd, count, beta, gamma):
    """``beta = -rstd**3 * sum(g*(x-mean))/M`` and ``gamma = -rstd * sum(g)/M``
    per ``(n, group)``, with ``g = dy * weight`` and ``M = count``."""
    _backward_coefficients[blocks_for(beta.size), THREADS](
        sum_dy, sum_dy_xc, weight, rstd, count, beta, gamma
    )


@cuda.jit
def _param_totals(sum_dy, sum_dy_xc, rstd, dweight, dbias):
    N, C = sum_dy.shape
    cg = C // rstd.shape[1]
    for c in range(cuda.grid(1), C, cuda.gridDim.x * THREADS):
        dw = 0.0
        db = 0.0
        for n in range(N):
            dw += sum_dy_xc[n, c] * rstd[n, c // cg]
            db += sum_dy[n, c]
        dweight[c] = dw
        dbias[c] = db


def param_totals(sum_dy, sum_dy_xc, rstd, dweight, dbias):
    """``dweight[c] = sum_n sum_dy_xc[n, c] * rstd[n, g]``, ``dbias[c] = sum_n sum_dy[n, c]``."""
    _param_totals[blocks_for(dweight.size), THREADS](sum_dy, sum_dy_xc, rstd, dweight, dbias)


@cuda.jit
def _running_update(running_mean, running_var, mean, var, momentum, unbiased):
    for c in range(cuda.grid(1), mean.size, cuda.gridDim.x * THREADS):
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean[c]
        running_var[c] = (1.0 - momentum) * running_var[c] + momentum * (var[c] * unbiased)


def running_update(running_mean, running_var, mean, var, momentum, unbiased):
    """``running = (1 - momentum) * running + momentum * batch`` in place, with
    the variance scaled by ``unbiased = M / (M - 1)``."""
    _running_update[blocks_for(mean.size), THREADS](
        running_mean, running_var, mean, var, momentum, unbiased
    )


@cuda.jit
def _instance_batch_stats(mean, rstd, eps, batch_mean, batch_var):
    samples, channels = mean.shape
    for c in range(cuda.grid(1), channels, cuda.gridDim.x * THREADS):
        s1 = 0.0
        s2 = 0.0
        for n in range(samples):
            r = rstd[n, c]
            s1 += mean[n, c]
            s2 += 1.0 / (r * r) - eps
        batch_mean[c] = s1 / samples
        batch_var[c] = s2 / samples


def instance_batch_stats(mean, rstd, eps, batch_mean, batch_var):
    """Per channel, the average over samples of the instance means and of the
    instance (biased) variances ``1 / rstd**2 - eps``, in sample order."""
    _instance_batch_stats[blocks_for(batch_mean.size), THREADS](
        mean, rstd, eps, batch_mean, batch_var
    )
