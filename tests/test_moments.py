"""Mergeable moments: any split, merged in any order, equals the whole."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numbanorm as nn
from helpers import normal, seeds


@given(st.integers(2, 200), st.integers(1, 4), seeds, st.floats(-1e6, 1e6), st.data())
def test_moments_of_any_split_merged_in_any_order_equal_the_whole(n, k, seed, loc, data):
    rng = np.random.default_rng(seed)
    x = normal(rng, (n, 3), loc=loc)
    cuts = sorted(data.draw(st.lists(st.integers(1, n - 1), max_size=k, unique=True)))
    parts = np.split(x, cuts)
    order = data.draw(st.permutations(range(len(parts))))
    merged = nn.Moments.merge_all(nn.moments(parts[i], axis=0) for i in order)
    whole = nn.moments(x, axis=0)
    assert merged.count == whole.count == n
    # float64 rounding of a mean is relative to the size of the values: |loc| + 1 sd
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=0, atol=1e-14 * (abs(loc) + 1))
    # Chan's merge term delta**2 * na*nb/n inherits the means' rounding
    # (~eps * |loc|): an absolute error of order eps * |loc| * sqrt(n * m2).
    m2_atol = 1e-13 * (abs(loc) + 1) * np.sqrt(n * whole.m2.max())
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-10, atol=m2_atol)
    np.testing.assert_allclose(whole.var, x.var(axis=0), rtol=1e-10)
    np.testing.assert_allclose(whole.unbiased_var, x.var(axis=0, ddof=1), rtol=1e-10)


def test_moments_over_axes(rng):
    x = normal(rng, (4, 5, 6), np.float32, loc=1e4)
    m = nn.moments(x, axis=(0, 2))
    x64 = x.astype(np.float64)
    assert m.count == 24 and m.mean.shape == (5,)
    np.testing.assert_allclose(m.mean, x64.mean(axis=(0, 2)), rtol=1e-14)
    np.testing.assert_allclose(m.var, x64.var(axis=(0, 2)), rtol=1e-10)
    whole = nn.moments(x)
    assert whole.count == x.size and whole.mean.shape == ()


def test_merge_rejects_mismatched_parts(rng):
    a = nn.moments(normal(rng, (4, 3)), axis=0)
    with pytest.raises(ValueError, match="shape"):
        a.merge(nn.moments(normal(rng, (4, 2)), axis=0))
    with pytest.raises(TypeError):
        a.merge((1, 2, 3))
    with pytest.raises(ValueError, match="at least one"):
        nn.Moments.merge_all([])
