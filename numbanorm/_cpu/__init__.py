"""CPU back end: Numba ``parallel=True`` kernels over canonical views.

The kernels know nothing of axes: they see a row view ``(rows, length)`` or a
channel view ``(N, P, C, Q)`` (see :mod:`numbanorm._layout`). Every input
array is C-contiguous; accumulation is float64.
"""

from .channels import (
    SHORT_RUN,
    channel_affine,
    channel_backward_apply,
    channel_backward_coefficients,
    channel_grad_sums,
    channel_moments,
    channel_moments_totals,
    channel_runs_backward,
    instance_runs_backward,
    sample_norm_backward,
    sample_norm_forward,
)
from .finish import rstd_of, running_update
from .rows import (
    FUSED_ROW_MIN,
    long_row_backward,
    new_row_scale_forward,
    row_backward,
    row_forward,
    row_scale_backward,
    row_scale_forward,
)

__all__ = [
    "FUSED_ROW_MIN",
    "SHORT_RUN",
    "channel_affine",
    "channel_backward_apply",
    "channel_backward_coefficients",
    "channel_grad_sums",
    "channel_moments",
    "channel_moments_totals",
    "channel_runs_backward",
    "instance_runs_backward",
    "long_row_backward",
    "new_row_scale_forward",
    "row_backward",
    "row_forward",
    "row_scale_backward",
    "row_scale_forward",
    "rstd_of",
    "running_update",
    "sample_norm_backward",
    "sample_norm_forward",
]
