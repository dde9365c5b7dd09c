"""Invariants of normalization, stated as the math says them."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numbanorm as nn
from helpers import assert_close, channel_shapes, normal, seeds

offsets = st.floats(-100, 100)
log_scales = st.floats(-1, 1)


def _moments_ok(y, reduce, rms=False):
    if rms:
        np.testing.assert_allclose((y * y).mean(axis=reduce), 1.0, rtol=1e-9)
    else:
        np.testing.assert_allclose(y.mean(axis=reduce), 0.0, atol=1e-9)
        np.testing.assert_allclose(y.var(axis=reduce), 1.0, rtol=1e-9)


@given(st.integers(1, 6), st.integers(2, 50), seeds, offsets, log_scales)
def test_layer_and_rms_norm_give_zero_mean_unit_variance(rows, length, seed, loc, ls):
    rng = np.random.default_rng(seed)
    x = normal(rng, (rows, length), loc=loc, scale=10**ls)
    _moments_ok(nn.layer_norm(x, eps=0.0)[0], 1)
    _moments_ok(nn.rms_norm(x, eps=0.0)[0], 1, rms=True)


@given(channel_shapes(), seeds, offsets, log_scales)
def test_channel_norms_give_zero_mean_unit_variance(sa, seed, loc, ls):
    shape, axis = sa
    axis %= len(shape)
    shape = shape + (3,)  # at least 2 values per channel / instance
    rng = np.random.default_rng(seed)
    x = normal(rng, shape, loc=loc, scale=10**ls)
    ax = axis % len(shape)
    xc = np.moveaxis(nn.batch_norm(x, axis=axis, eps=0.0)[0], ax, 0).reshape(shape[ax], -1)
    _moments_ok(xc, 1)
    yi = np.moveaxis(nn.instance_norm(x, axis=axis, eps=0.0)[0], ax, 1)
    _moments_ok(yi.reshape(shape[0], shape[ax], -1), 2)
    yg = np.moveaxis(nn.group_norm(x, 1, axis=axis, eps=0.0)[0], ax, 1)
    _moments_ok(yg.reshape(shape[0], -1), 1)


@given(channel_shapes(), seeds, offsets, st.floats(0.1, 10))
def test_shift_and_positive_scale_invariance(sa, seed, shift, scale):
    shape, axis = sa
    axis %= len(shape)
    shape = shape + (3,)
    rng = np.random.default_rng(seed)
    x = normal(rng, shape)
    c = shape[axis]
    cases = [
        lambda a: nn.layer_norm(a, axis=-1, eps=0.0)[0],
        lambda a: nn.batch_norm(a, axis=axis, eps=0.0)[0],
        lambda a: nn.group_norm(a, 1, axis=axis, eps=0.0)[0],
        lambda a: nn.instance_norm(a, axis=axis, eps=0.0)[0],
    ]
    for f in cases:
        assert_close(f(x + shift), f(x), 1e-9, "shift")
        assert_close(f(x * scale), f(x), 1e-9, "scale")
    # RMS and weight norm are scale invariant only.
    assert_close(nn.rms_norm(x * scale, eps=0.0)[0], nn.rms_norm(x, eps=0.0)[0], 1e-9)
    g = normal(rng, (shape[0],))
    assert_close(nn.weight_norm(x * scale, g)[0], nn.weight_norm(x, g)[0], 1e-9)
    assert c >= 1


@given(channel_shapes(), seeds)
def test_instance_norm_is_group_norm_with_one_channel_per_group(sa, seed):
    shape, axis = sa
    axis %= len(shape)
    shape = shape + (2,)
    rng = np.random.default_rng(seed)
    c = shape[axis]
    x, w, b = normal(rng, shape, loc=3.0), normal(rng, (c,)), normal(rng, (c,))
    yi, si = nn.instance_norm(x, weight=w, bias=b, axis=axis)
    yg, sg = nn.group_norm(x, c, weight=w, bias=b, axis=axis)
    assert_close(yi, yg, 1e-12)
    dy = normal(rng, shape)
    for a, b_ in zip(nn.instance_norm_backward(dy, x, si, weight=w, axis=axis),
                     nn.group_norm_backward(dy, x, sg, weight=w, axis=axis)):
        assert_close(a, b_, 1e-12)


@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), seeds)
def test_layer_norm_over_chw_is_group_norm_with_one_group(n, c, h, w, seed):
    rng = np.random.default_rng(seed)
    x = normal(rng, (n, c, h, w), loc=-2.0)
    y_ln, s_ln = nn.layer_norm(x, axis=(1, 2, 3))
    y_gn, s_gn = nn.group_norm(x, 1)
    assert_close(y_ln, y_gn, 1e-12)
    assert_close(s_ln.mean, s_gn.mean[:, 0], 1e-12)
    dy = normal(rng, x.shape)
    assert_close(nn.layer_norm_backward(dy, x, s_ln, axis=(1, 2, 3))[0],
                 nn.group_norm_backward(dy, x, s_gn)[0], 1e-12)


@given(st.integers(2, 4), st.integers(1, 5), st.integers(1, 4), st.integers(1, 4), seeds)
def test_batch_norm_channels_last_equals_channels_first(n, c, h, w, seed):
    rng = np.random.default_rng(seed)
    x = normal(rng, (n, c, h, w))
    wt, bt = normal(rng, (c,)), normal(rng, (c,))
    y_first, _ = nn.batch_norm(x, weight=wt, bias=bt, axis=1)
    y_last, _ = nn.batch_norm(np.ascontiguousarray(np.moveaxis(x, 1, -1)), weight=wt, bias=bt, axis=-1)
    assert_close(np.moveaxis(y_last, -1, 1), y_first, 1e-12)


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.1])
def test_eps_is_added_to_the_variance_inside_the_square_root(eps, rng):
    """A classic mistake is y = (x - mean) / (std + eps); pin the right one."""
    x = normal(rng, (3, 50), scale=0.05)
    y, saved = nn.layer_norm(x, eps=eps)
    expected = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + eps)
    wrong = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + eps)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    assert np.abs(y - wrong).max() > 1e-3
