"""Mergeable moments: count, mean and sum of squared deviations."""

from typing import Iterable, NamedTuple, Optional

import numpy as np

from ._types import ArrayLike, Axis
from ._layout import (
    dask_dispatch,
    as_array,
    engine_for,
    is_device_array,
    compute_dtype,
    normalize_axes,
    require_nonempty_reduction,
    result_dtype,
    row_view,
)


class Moments(NamedTuple):
    r"""Moments of a sample: ``count``, ``mean`` and ``m2 = sum((x - mean)**2)``.

    Moments of disjoint parts merge exactly (Chan et al.), so statistics of
    data that arrives in pieces equal those of the whole.

    Attributes
    ----------
    count : int
        Number of values reduced into each entry.
    mean : ndarray
        float64 mean.
    m2 : ndarray
        float64 sum of squared deviations from the mean.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @property
    def var(self) -> np.ndarray:
        """Biased (population) variance ``m2 / count``, as ``np.var``."""
        return self.m2 / self.count

    @property
    def unbiased_var(self) -> np.ndarray:
        """Unbiased (sample) variance ``m2 / (count - 1)``, as ``np.var(ddof=1)``."""
        return self.m2 / (self.count - 1)

    def merge(self, other: "Moments") -> "Moments":
        r"""Moments of the union of two disjoint samples (Chan's formula).

        .. math::

            n = n_a + n_b,\quad \delta = \bar x_b - \bar x_a,\quad
            \bar x = \bar x_a + \delta \frac{n_b}{n},\quad
            M_2 = M_{2,a} + M_{2,b} + \delta^2 \frac{n_a n_b}{n}

        Parameters
        ----------
        other : Moments
            Moments of the other sample, with the same ``mean`` shape.

        Returns
        -------
        Moments
            Moments of both samples together.
        """
        if not isinstance(other, Moments):
            raise TypeError(f"can only merge Moments, got {type(other).__name__}")
        if np.shape(self.mean) != np.shape(other.mean):
            raise ValueError(
                f"cannot merge moments of shape {np.shape(self.mean)} and {np.shape(other.mean)}"
            )
        n = self.count + other.count
        if n == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / n)
        return Moments(n, mean, m2)

    @staticmethod
    def merge_all(parts: Iterable["Moments"]) -> "Moments":
        """Merge an iterable of :class:`Moments` in order.

        Parameters
        ----------
        parts : iterable of Moments
            At least one.

        Returns
        -------
        Moments
            Moments of all the parts together.
        """
        parts = iter(parts)
        try:
            total = next(parts)
        except StopIteration:
            raise ValueError("merge_all needs at least one Moments") from None
        for part in parts:
            total = total.merge(part)
        return total


@dask_dispatch
def moments(x: ArrayLike, axis: Optional[Axis] = None) -> "Moments":
    r"""Count, mean and sum of squared deviations of ``x`` over ``axis``.

    .. math::

        \bar x = \frac{1}{n}\sum x_i, \qquad M_2 = \sum (x_i - \bar x)^2

    accumulated in float64 per block of the data about the block's first
    value, the blocks merged exactly, so the result is accurate whatever the
    mean and wherever the data start.

    Parameters
    ----------
    x : array_like or dask.array.Array
        Real input (integers and bool promoted to float64). A Dask array is
        reduced block by block, the blocks' moments merged exactly in a tree:
        ``mean`` and ``m2`` are then Dask arrays, computed together in one
        pass over ``x``.
    axis : None, int or tuple of int, default None
        Axes to reduce; None reduces all of them.

    Returns
    -------
    Moments
        ``mean`` and ``m2`` (float64) shaped like ``x`` without ``axis``.
    """
    if is_device_array(x):
        raise TypeError(
            "moments() runs on the host (Moments are merged with NumPy arithmetic): "
            "pass a NumPy array, e.g. x.copy_to_host()"
        )
    x = as_array(x, "x")
    dtype = compute_dtype(result_dtype(x, "x"))
    axes = tuple(range(x.ndim)) if axis is None else normalize_axes(axis, x.ndim)
    view, stat_shape, _ = row_view(x.shape, axes)
    rows, length = view.kshape
    require_nonempty_reduction(length, "axis={!r} of shape {}", axis, x.shape)
    # Each row as a column of one channel, so that it is summed in chunks.
    view = view._replace(kshape=(rows, length, 1, 1))
    count, mean, m2 = engine_for(False).group_m2(view.to_kernel(x, dtype), 1)
    return Moments(count, mean.reshape(stat_shape), m2.reshape(stat_shape))
