"""Batch norm: training and eval mode, running statistics, gradients."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numbanorm as nn
import reference as ref
from numbanorm._cpu import engine as _engine
from helpers import (
    RTOL, assert_close, assert_gradients_close, finite_difference, normal, seeds, shapes,
)


@st.composite
def bn_shapes(draw):
    shape = draw(shapes(2, 4, 1, 6))
    axis = draw(st.integers(0, len(shape) - 1))
    if np.prod(shape) // shape[axis] < 2:  # training needs 2 values per channel
        shape = (shape[0] + 1,) + shape[1:] if axis != 0 else shape[:1] + (shape[1] + 1,) + shape[2:]
    return shape, axis - len(shape) if draw(st.booleans()) else axis


@given(bn_shapes(), seeds, st.sampled_from([np.float64, np.float32]), st.booleans())
def test_training_matches_reference_and_updates_running_stats(sa, seed, dtype, affine):
    shape, axis = sa
    rng = np.random.default_rng(seed)
    c = shape[axis]
    x = normal(rng, shape, dtype, loc=rng.uniform(-5, 5), scale=rng.uniform(0.5, 3))
    w = normal(rng, (c,)) if affine else None
    b = normal(rng, (c,)) if affine else None
    rm, rv = normal(rng, (c,)), rng.uniform(0.5, 2, c)
    rm0, rv0 = rm.copy(), rv.copy()
    momentum = float(rng.uniform(0, 1))
    y, saved = nn.batch_norm(
        x, weight=w, bias=b, axis=axis, running_mean=rm, running_var=rv, momentum=momentum
    )
    ry, mean, var = ref.batch_norm(x, w, b, axis)
    assert_close(y, ry, RTOL[dtype], "y")
    assert saved.training
    m = x.size // c
    assert_close(rm, (1 - momentum) * rm0 + momentum * mean, 1e-12, "running_mean")
    assert_close(rv, (1 - momentum) * rv0 + momentum * var * m / (m - 1), 1e-12, "running_var")

    dy = normal(rng, shape, dtype)
    assert_gradients_close(
        nn.batch_norm_backward(dy, x, saved, weight=w, axis=axis),
        ref.batch_norm_backward(dy, x, w, axis), RTOL[dtype] * 10, affine,
    )


@given(bn_shapes(), seeds, st.sampled_from([np.float64, np.float32]))
def test_eval_mode_uses_running_stats_and_leaves_them_alone(sa, seed, dtype):
    shape, axis = sa
    rng = np.random.default_rng(seed)
    c = shape[axis]
    x = normal(rng, shape, dtype)
    w, b = normal(rng, (c,)), normal(rng, (c,))
    rm, rv = normal(rng, (c,)), rng.uniform(0.5, 2, c)
    rm0, rv0 = rm.copy(), rv.copy()
    y, saved = nn.batch_norm(x, weight=w, bias=b, axis=axis, training=False, running_mean=rm, running_var=rv)
    assert not saved.training
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    assert_close(y, ref.batch_norm_eval(x, rm, rv, w, b, axis), RTOL[dtype], "y")
    dy = normal(rng, shape, dtype)
    dx, dw, db = nn.batch_norm_backward(dy, x, saved, weight=w, axis=axis)
    rdx, rdw, rdb = ref.batch_norm_eval_backward(dy, x, rm, rv, w, axis)
    assert_close(dx, rdx, RTOL[dtype] * 10, "dx")
    assert_close(dw, rdw, RTOL[dtype] * 10, "dweight")
    assert_close(db, rdb, RTOL[dtype] * 10, "dbias")


@given(bn_shapes(), seeds, st.booleans())
def test_gradients_equal_finite_differences(sa, seed, training):
    shape, axis = sa
    rng = np.random.default_rng(seed)
    c = shape[axis]
    x, dy = normal(rng, shape), normal(rng, shape)
    w, b = normal(rng, (c,)), normal(rng, (c,))
    rm, rv = normal(rng, (c,)), rng.uniform(0.5, 2, c)

    def f(xx, ww, bb):
        return nn.batch_norm(
            xx, weight=ww, bias=bb, axis=axis, training=training,
            running_mean=rm.copy(), running_var=rv.copy(),
        )[0]

    _, saved = nn.batch_norm(x, weight=w, bias=b, axis=axis, training=training,
                             running_mean=rm.copy(), running_var=rv.copy())
    dx, dw, db = nn.batch_norm_backward(dy, x, saved, weight=w, axis=axis)
    assert_close(dx, finite_difference(lambda a: f(a, w, b), x, dy), 1e-6, "dx")
    assert_close(dw, finite_difference(lambda a: f(x, a, b), w, dy), 1e-6, "dweight")
    assert_close(db, finite_difference(lambda a: f(x, w, a), b, dy), 1e-6, "dbias")


def test_nhwc_equals_nchw_transpose(rng):
    x = normal(rng, (4, 3, 5, 6), np.float32, loc=2.0)
    w, b = normal(rng, (3,)), normal(rng, (3,))
    y1, s1 = nn.batch_norm(x, weight=w, bias=b, axis=1)
    y2, s2 = nn.batch_norm(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), weight=w, bias=b, axis=-1)
    assert_close(y2.transpose(0, 3, 1, 2), y1, 1e-6)
    assert_close(s2.mean, s1.mean, 1e-12)
    dy = normal(rng, x.shape, np.float32)
    d1 = nn.batch_norm_backward(dy, x, s1, weight=w, axis=1)
    d2 = nn.batch_norm_backward(
        np.ascontiguousarray(dy.transpose(0, 2, 3, 1)), x.transpose(0, 2, 3, 1), s2, weight=w, axis=3
    )
    assert_close(d2[0].transpose(0, 3, 1, 2), d1[0], 1e-5)
    assert_close(d2[1], d1[1], 1e-5)
    assert_close(d2[2], d1[2], 1e-5)


def test_running_stats_keep_their_dtype(rng):
    x = normal(rng, (8, 3), np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    nn.batch_norm(x, running_mean=rm, running_var=rv, momentum=1.0)
    assert rm.dtype == rv.dtype == np.float32
    np.testing.assert_allclose(rm, x.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(rv, x.astype(np.float64).var(0, ddof=1), rtol=1e-6)


# Each of the channels-first backward paths: one task per channel (long runs,
# 16 channels or more), chunks of samples (fewer channels; short runs).
BACKWARD_PATHS = [((3, 16, 20, 20), "channel tasks"), ((3, 8, 20, 20), "few channels"),
                  ((3, 16, 7, 7), "short runs")]


@pytest.mark.parametrize("shape,path", BACKWARD_PATHS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("affine", [True, False])
def test_channels_first_backward_paths_match_reference(shape, path, dtype, affine, rng):
    c = shape[1]
    x = normal(rng, shape, dtype, loc=3.0, scale=2.0)
    dy = normal(rng, shape, dtype)
    w = normal(rng, (c,)) if affine else None
    _, saved = nn.batch_norm(x, weight=w, bias=w, axis=1)
    assert_gradients_close(
        nn.batch_norm_backward(dy, x, saved, weight=w, axis=1),
        ref.batch_norm_backward(dy, x, w, 1), RTOL[dtype] * 10, affine,
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_channel_tasks_give_the_chunked_kernels_bits(dtype, rng, monkeypatch):
    # With one sample per chunk the chunked kernels add each channel's run sums
    # in sample order, as the per-channel tasks do: the same bits.
    shape = (3, 16, 20, 20)
    x = normal(rng, shape, dtype, loc=3.0)
    dy = normal(rng, shape, dtype)
    w = normal(rng, (16,))
    _, saved = nn.batch_norm(x, weight=w, bias=w, axis=1)
    tasks = nn.batch_norm_backward(dy, x, saved, weight=w, axis=1)
    monkeypatch.setattr(_engine, "CHANNEL_TASKS_MIN", 1 << 30)
    chunked = nn.batch_norm_backward(dy, x, saved, weight=w, axis=1)
    for a, b in zip(tasks, chunked):
        np.testing.assert_array_equal(a, b)
