"""numbanorm: fast, exact normalization layers for NumPy, with Numba kernels.

Every norm has a forward function returning ``(y, saved)`` and a backward
function returning the gradients, and a stateful layer (``BatchNorm``,
``LayerNorm``, ...) with PyTorch's state-dict keys; see the docstrings for the
formulas. NumPy arrays run on the CPU kernels, device arrays on the CUDA
kernels, and Dask arrays block by block through the CPU kernels, returning
Dask arrays.
"""

from ._cpu.memory import release_memory
from ._grouped_norms import (
    batch_norm,
    batch_norm_backward,
    group_norm,
    group_norm_backward,
    instance_norm,
    instance_norm_backward,
)
from ._layers import (
    BatchNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    RMSNorm,
    WeightNorm,
    precise_batch_norm_stats,
)
from ._moments import Moments, moments
from ._row_norms import layer_norm, layer_norm_backward, rms_norm, rms_norm_backward
from ._types import NormStats
from ._weight_norm import weight_norm, weight_norm_backward

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "Moments",
    "RMSNorm",
    "WeightNorm",
    "precise_batch_norm_stats",
    "NormStats",
    "batch_norm",
    "batch_norm_backward",
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
    "layer_norm",
    "layer_norm_backward",
    "moments",
    "release_memory",
    "rms_norm",
    "rms_norm_backward",
    "weight_norm",
    "weight_norm_backward",
]
