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
