"""CUDA back end: ``numba.cuda`` kernels over the same canonical views as the
CPU back end (:mod:`numbanorm._cpu`), with the same kernel names.

Imported only when a device array is passed (see
:func:`numbanorm._layout.engine_for`), so CPU users never import the CUDA
target. :mod:`.target` is the one module that imports it; :mod:`.engine`
composes the kernels into norms, as :mod:`numbanorm._cpu.engine` does on the CPU.
The CPU's fused per-sample kernels (``sample_norm_*``) have no GPU
counterpart: there, group and instance norm use the channel kernels.
"""

from .channels import channel_affine, channel_backward_apply, channel_grad_sums, channel_moments
from .rows import row_backward, row_forward, row_scale_backward, row_scale_forward

__all__ = [
    "channel_affine",
    "channel_backward_apply",
    "channel_grad_sums",
    "channel_moments",
    "row_backward",
    "row_forward",
    "row_scale_backward",
    "row_scale_forward",
]
