"""Small result types shared by the functional API."""

from typing import Any, NamedTuple, Optional, Union

import numpy as np
import numpy.typing as npt

#: An input array: anything ``np.asarray`` takes, or a CUDA device array
#: (``__cuda_array_interface__``).
ArrayLike = Union[npt.ArrayLike, Any]
#: A result: a NumPy array for host input, a Numba device array for device
#: input, a Dask array for Dask input.
Array = Any
#: One axis or several.
Axis = Union[int, tuple[int, ...]]


class NormStats(NamedTuple):
    """What a forward pass saves for its backward pass.

    The arrays live where ``x`` lived: NumPy arrays for host input, Numba
    device arrays for device input.

    Attributes
    ----------
    mean : ndarray or None
        float64 mean per row / channel / group (``None`` for RMS and weight norm).
    rstd : ndarray
        float64 ``1 / sqrt(var + eps)`` with the biased variance (RMS norm:
        ``1 / sqrt(mean(x**2) + eps)``; weight norm: ``1 / ||v||``).
    training : bool
        Batch norm only: True when ``mean``/``rstd`` are the batch's own
        statistics, False when they came from the running statistics (eval
        mode); backward uses this to pick the right formula.
    has_bias : bool
        The forward pass had a bias, so backward returns its gradient.
    """

    mean: Optional[np.ndarray]
    rstd: np.ndarray
    training: bool = True
    has_bias: bool = False
