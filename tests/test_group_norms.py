"""Group norm and instance norm against the reference and finite differences."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numbanorm as nn
import reference as ref
from helpers import (
    RTOL, assert_close, assert_gradients_close, channel_shapes, finite_difference, normal, seeds,
)


@st.composite
def gn_case(draw):
    shape, axis = draw(channel_shapes())
    c = shape[axis]
    divisors = [g for g in range(1, c + 1) if c % g == 0]
    groups = draw(st.sampled_from(divisors))
    return shape, axis, groups


@given(gn_case(), seeds, st.sampled_from([np.float64, np.float32]), st.booleans())
def test_group_norm_matches_reference(case, seed, dtype, affine):
    shape, axis, groups = case
    rng = np.random.default_rng(seed)
    c = shape[axis]
    x = normal(rng, shape, dtype, loc=rng.uniform(-5, 5), scale=rng.uniform(0.5, 3))
    w = normal(rng, (c,)) if affine else None
    b = normal(rng, (c,)) if affine else None
    y, saved = nn.group_norm(x, groups, weight=w, bias=b, axis=axis)
    assert saved.mean.shape == saved.rstd.shape == (shape[0], groups)
    assert_close(y, ref.group_norm(x, groups, w, b, axis), RTOL[dtype], "y")
    dy = normal(rng, shape, dtype)
    assert_gradients_close(
        nn.group_norm_backward(dy, x, saved, weight=w, axis=axis),
        ref.group_norm_backward(dy, x, groups, w, axis), RTOL[dtype] * 10, affine,
    )


@st.composite
def in_case(draw):
    shape, axis = draw(channel_shapes())
    axis %= len(shape)
    if int(np.prod(shape[1:])) // shape[axis] < 2:
        shape = shape + (2,)
    return shape, axis


@given(in_case(), seeds, st.sampled_from([np.float64, np.float32]))
def test_instance_norm_matches_reference(case, seed, dtype):
    shape, axis = case
    rng = np.random.default_rng(seed)
    c = shape[axis]
    x = normal(rng, shape, dtype, loc=1.0, scale=2.0)
    w, b = normal(rng, (c,)), normal(rng, (c,))
    y, saved = nn.instance_norm(x, weight=w, bias=b, axis=axis)
    assert saved.mean.shape == (shape[0], c)
    assert_close(y, ref.instance_norm(x, w, b, axis), RTOL[dtype], "y")
    dy = normal(rng, shape, dtype)
    dx, dw, db = nn.instance_norm_backward(dy, x, saved, weight=w, axis=axis)
    rdx, rdw, rdb = ref.instance_norm_backward(dy, x, w, axis)
    assert_close(dx, rdx, RTOL[dtype] * 10, "dx")
    assert_close(dw, rdw, RTOL[dtype] * 10, "dweight")
    assert_close(db, rdb, RTOL[dtype] * 10, "dbias")


@given(gn_case(), seeds)
def test_group_norm_gradients_equal_finite_differences(case, seed):
    shape, axis, groups = case
    rng = np.random.default_rng(seed)
    c = shape[axis]
    x, dy = normal(rng, shape), normal(rng, shape)
    w, b = normal(rng, (c,)), normal(rng, (c,))
    _, saved = nn.group_norm(x, groups, weight=w, bias=b, axis=axis)
    dx, dw, db = nn.group_norm_backward(dy, x, saved, weight=w, axis=axis)

    def f(xx, ww, bb):
        return nn.group_norm(xx, groups, weight=ww, bias=bb, axis=axis)[0]

    assert_close(dx, finite_difference(lambda a: f(a, w, b), x, dy), 1e-6, "dx")
    assert_close(dw, finite_difference(lambda a: f(x, a, b), w, dy), 1e-6, "dweight")
    assert_close(db, finite_difference(lambda a: f(x, w, a), b, dy), 1e-6, "dbias")


@given(in_case(), seeds)
def test_instance_norm_gradients_equal_finite_differences(case, seed):
    shape, axis = case
    rng = np.random.default_rng(seed)
    c = shape[axis]
    x, dy = normal(rng, shape), normal(rng, shape)
    w, b = normal(rng, (c,)), normal(rng, (c,))
    _, saved = nn.instance_norm(x, weight=w, bias=b, axis=axis)
    dx, dw, db = nn.instance_norm_backward(dy, x, saved, weight=w, axis=axis)
    assert_close(dx, finite_difference(lambda a: nn.instance_norm(a, weight=w, bias=b, axis=axis)[0], x, dy), 1e-6)
    assert_close(dw, finite_difference(lambda a: nn.instance_norm(x, weight=a, bias=b, axis=axis)[0], w, dy), 1e-6)
    assert_close(db, finite_difference(lambda a: nn.instance_norm(x, weight=w, bias=a, axis=axis)[0], b, dy), 1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape, axis, groups",
    [
        ((5, 32, 7, 7), 1, 4),  # channels first: a group's runs summed as one run
        ((5, 32, 7, 7), 1, 32),  # instance norm: one channel per group
        ((5, 3, 8, 6), 2, 4),  # channel axis in the middle: P = 3 rows of runs
        ((5, 7, 7, 32), -1, 8),  # channels last
        ((67, 3, 5, 16), -1, 4),  # channels last, tasks of 2 samples and a last one of 1
    ],
)
def test_per_sample_forward_matches_reference(shape, axis, groups, dtype, rng):
    # From SAMPLE_KERNEL_MIN_N samples on, one task per sample takes each
    # group's statistics and then its y; each layout takes its own branch.
    from numbanorm._cpu import engine as _engine

    assert shape[0] >= _engine.SAMPLE_KERNEL_MIN_N
    c = shape[axis]
    x = normal(rng, shape, dtype, loc=1e3, scale=2.0)
    w, b = normal(rng, (c,)), normal(rng, (c,))
    y, saved = nn.group_norm(x, groups, weight=w, bias=b, axis=axis)
    assert_close(y, ref.group_norm(x, groups, w, b, axis), RTOL[dtype], "y")
    x64 = np.moveaxis(x.astype(np.float64), axis, 1).reshape(shape[0], groups, -1)
    np.testing.assert_allclose(saved.mean, x64.mean(axis=2), rtol=1e-12)
    np.testing.assert_allclose(saved.rstd, 1.0 / np.sqrt(x64.var(axis=2) + 1e-5), rtol=1e-9)


@pytest.mark.parametrize(
    "shape, axis, groups",
    [
        ((67, 8, 7, 7), 1, 8),  # instance norm on short runs: two channels per loop
        ((67, 7, 7, 7), 1, 7),  # ... an odd channel count: the last channel alone
        ((67, 1, 7, 7), 1, 1),  # ... one channel
        ((67, 8, 7, 7), 1, 4),  # groups of short runs, two channels per loop
        ((67, 6, 5, 5), 1, 2),  # groups of an odd channel count: run by run
        ((67, 4, 5, 12), -1, 4),  # channels last
    ],
)
def test_per_sample_backward_adds_blocks_of_samples(shape, axis, groups, rng):
    # The per-sample backward kernels (instance norm on short NCHW runs has
    # its own) add their parameter-gradient sums in blocks of consecutive
    # samples; 67 samples make blocks of 2 and a last one of 1.
    from numbanorm._cpu import engine as _engine

    per_block = -(-shape[0] // _engine.SAMPLE_BLOCKS)
    assert per_block > 1 and shape[0] % per_block != 0
    c = shape[axis]
    x = normal(rng, shape, np.float64, loc=50.0, scale=2.0)
    w, b = normal(rng, (c,)), normal(rng, (c,))
    dy = normal(rng, shape)
    _, saved = nn.group_norm(x, groups, weight=w, bias=b, axis=axis)
    dx, dw, db = nn.group_norm_backward(dy, x, saved, weight=w, axis=axis)
    rdx, rdw, rdb = ref.group_norm_backward(dy, x, groups, w, axis)
    assert_close(dx, rdx, RTOL[np.float64] * 10, "dx")
    assert_close(dw, rdw, RTOL[np.float64] * 10, "dweight")
    assert_close(db, rdb, RTOL[np.float64] * 10, "dbias")
