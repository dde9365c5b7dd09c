"""Small serial kernels that finish a batch-norm forward pass on the host,
mirroring :mod:`numbanorm._cuda.finish`.

The same steps in NumPy are a few ufunc calls each (and an ``errstate``
context), which cost more than the arithmetic right after a pass over
memory that has evicted the interpreter from the caches.
"""

import numpy as np

from .compile import kernel


@kernel
def rstd_of(var, eps, rstd):
    """``rstd = 1 / sqrt(var + eps)`` elementwise (float64; NaN and Inf pass
    through as NumPy's do, without warnings)."""
    for i in range(var.shape[0]):
        rstd[i] = 1.0 / np.sqrt(var[i] + eps)


@kernel
def running_update(running_mean, running_var, mean, var, momentum, unbiased):
    """``running = (1 - momentum) * running + momentum * batch`` in place, in
    float64 and then rounded to the running arrays' dtype, with the batch
    variance scaled by ``unbiased = M / (M - 1)``."""
    keep = 1.0 - momentum
    for c in range(mean.shape[0]):
        running_mean[c] = keep * np.float64(running_mean[c]) + momentum * mean[c]
        running_var[c] = keep * np.float64(running_var[c]) + momentum * (var[c] * unbiased)


@kernel
def instance_batch_stats(mean, rstd, eps, batch_mean, batch_var):
    """Per channel, the average over samples of the instance means and of the
    instance (biased) variances ``1 / rstd**2 - eps``, added in sample order
    (``mean``/``rstd`` are ``(N, C)``)."""
    samples, channels = mean.shape
    for c in range(channels):
        s1 = 0.0
        s2 = 0.0
        for n in range(samples):
            r = rstd[n, c]
            s1 += mean[n, c]
            s2 += 1.0 / (r * r) - eps
        batch_mean[c] = s1 / samples
        batch_var[c] = s2 / samples
