"""Layer norm and RMS norm against the float64 reference and finite differences."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numbanorm as nn
import reference as ref
from helpers import RTOL, assert_close, finite_difference, normal, seeds, shape_and_axes

float_dtypes = st.sampled_from([np.float64, np.float32])


def _pshape(shape, axis):
    axes = axis if isinstance(axis, tuple) else (axis,)
    return tuple(shape[a] for a in sorted(a % len(shape) for a in axes))


@given(shape_and_axes(), seeds, float_dtypes, st.booleans(), st.booleans())
def test_layer_norm_matches_reference(sa, seed, dtype, with_weight, with_bias):
    shape, axis = sa
    rng = np.random.default_rng(seed)
    x = normal(rng, shape, dtype, loc=rng.uniform(-5, 5), scale=rng.uniform(0.5, 3))
    ps = _pshape(shape, axis)
    w = normal(rng, ps) if with_weight else None
    b = normal(rng, ps) if with_bias else None
    y, saved = nn.layer_norm(x, weight=w, bias=b, axis=axis)
    assert y.dtype == dtype and y.shape == shape
    assert_close(y, ref.layer_norm(x, w, b, axis), RTOL[dtype], "y")

    dy = normal(rng, shape, dtype)
    dx, dw, db = nn.layer_norm_backward(dy, x, saved, weight=w, axis=axis)
    rdx, rdw, rdb = ref.layer_norm_backward(dy, x, w, axis)
    assert dx.dtype == dtype
    assert_close(dx, rdx, RTOL[dtype] * 10, "dx")
    assert (dw is None) == (w is None) and (db is None) == (b is None)
    if w is not None:
        assert_close(dw, rdw, RTOL[dtype] * 10, "dweight")
    if b is not None:
        assert_close(db, rdb, RTOL[dtype] * 10, "dbias")


@given(shape_and_axes(), seeds, float_dtypes, st.booleans())
def test_rms_norm_matches_reference(sa, seed, dtype, with_weight):
    shape, axis = sa
    rng = np.random.default_rng(seed)
    x = normal(rng, shape, dtype, loc=rng.uniform(-2, 2), scale=rng.uniform(0.5, 3))
    w = normal(rng, _pshape(shape, axis)) if with_weight else None
    y, saved = nn.rms_norm(x, weight=w, axis=axis)
    assert saved.mean is None
    assert_close(y, ref.rms_norm(x, w, axis), RTOL[dtype], "y")
    dy = normal(rng, shape, dtype)
    dx, dw = nn.rms_norm_backward(dy, x, saved, weight=w, axis=axis)
    rdx, rdw = ref.rms_norm_backward(dy, x, w, axis)
    assert_close(dx, rdx, RTOL[dtype] * 10, "dx")
    assert (dw is None) == (w is None)
    if w is not None:
        assert_close(dw, rdw, RTOL[dtype] * 10, "dweight")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("center", [True, False])
def test_long_rows_backward_matches_reference(dtype, center, rng):
    # Rows of FUSED_ROW_MIN values and more take dx and the parameter terms in
    # one loop over 4 rows; 7 rows leave a block of 3 for the plain loops.
    from numbanorm._cpu.rows import FUSED_ROW_MIN

    x = normal(rng, (7, FUSED_ROW_MIN + 16), dtype, loc=3.0)
    dy = normal(rng, x.shape, dtype)
    w = normal(rng, x.shape[-1:])
    if center:
        y, saved = nn.layer_norm(x, weight=w, bias=w)
        dx, dw, db = nn.layer_norm_backward(dy, x, saved, weight=w)
        rdx, rdw, rdb = ref.layer_norm_backward(dy, x, w)
        assert_close(db, rdb, RTOL[dtype] * 10, "dbias")
    else:
        y, saved = nn.rms_norm(x, weight=w)
        dx, dw = nn.rms_norm_backward(dy, x, saved, weight=w)
        rdx, rdw = ref.rms_norm_backward(dy, x, w)
    assert_close(dx, rdx, RTOL[dtype] * 10, "dx")
    assert_close(dw, rdw, RTOL[dtype] * 10, "dweight")


@pytest.mark.parametrize("length", [64, 2048 + 16])
def test_backward_without_affine_matches_reference(length, rng):
    # Without weight or bias there are no parameter sums: both row kernels
    # (short rows and rows of FUSED_ROW_MIN values and more) take dx alone.
    x = normal(rng, (7, length), np.float64, loc=3.0)
    dy = normal(rng, x.shape)
    y, saved = nn.layer_norm(x)
    dx, dw, db = nn.layer_norm_backward(dy, x, saved)
    assert dw is None and db is None
    assert_close(dx, ref.layer_norm_backward(dy, x, None)[0], RTOL[np.float64] * 10, "dx")


@given(shape_and_axes(max_dims=3, max_side=4), seeds)
def test_layer_norm_gradients_equal_finite_differences(sa, seed):
    shape, axis = sa
    rng = np.random.default_rng(seed)
    x, dy = normal(rng, shape), normal(rng, shape)
    ps = _pshape(shape, axis)
    w, b = normal(rng, ps), normal(rng, ps)
    _, saved = nn.layer_norm(x, weight=w, bias=b, axis=axis)
    dx, dw, db = nn.layer_norm_backward(dy, x, saved, weight=w, axis=axis)
    assert_close(dx, finite_difference(lambda a: nn.layer_norm(a, weight=w, bias=b, axis=axis)[0], x, dy), 1e-6)
    assert_close(dw, finite_difference(lambda a: nn.layer_norm(x, weight=a, bias=b, axis=axis)[0], w, dy), 1e-6)
    assert_close(db, finite_difference(lambda a: nn.layer_norm(x, weight=w, bias=a, axis=axis)[0], b, dy), 1e-6)


@given(shape_and_axes(max_dims=3, max_side=4), seeds)
def test_rms_norm_gradients_equal_finite_differences(sa, seed):
    shape, axis = sa
    rng = np.random.default_rng(seed)
    x, dy = normal(rng, shape, loc=0.5), normal(rng, shape)
    w = normal(rng, _pshape(shape, axis))
    _, saved = nn.rms_norm(x, weight=w, axis=axis)
    dx, dw = nn.rms_norm_backward(dy, x, saved, weight=w, axis=axis)
    assert_close(dx, finite_difference(lambda a: nn.rms_norm(a, weight=w, axis=axis)[0], x, dy), 1e-6)
    assert_close(dw, finite_difference(lambda a: nn.rms_norm(x, weight=a, axis=axis)[0], w, dy), 1e-6)


@given(st.integers(1, 5), st.integers(2, 40), seeds)
def test_layer_norm_without_affine_gradient_identities(rows, length, seed):
    """dx sums to 0 over the normalized axis and (for eps = 0, where
    mean(xhat**2) = 1) is orthogonal to xhat."""
    rng = np.random.default_rng(seed)
    x, dy = normal(rng, (rows, length), scale=2.0), normal(rng, (rows, length))
    _, saved = nn.layer_norm(x, eps=0.0)
    dx, dw, db = nn.layer_norm_backward(dy, x, saved)
    assert dw is None and db is None
    xhat = (x - saved.mean[:, None]) * saved.rstd[:, None]
    # the terms that cancel are of size rstd * |dy| per element
    scale = saved.rstd * np.abs(dy).max(axis=1) * length
    assert np.all(np.abs(dx.sum(axis=1)) <= 1e-13 * scale)
    assert np.all(np.abs((dx * xhat).sum(axis=1)) <= 1e-12 * scale)


def test_saved_statistics_have_the_kept_shape(rng):
    x = normal(rng, (3, 4, 5, 6))
    _, saved = nn.layer_norm(x, axis=(1, 3))
    assert saved.mean.shape == saved.rstd.shape == (3, 5)
    np.testing.assert_allclose(saved.mean, x.mean(axis=(1, 3)), rtol=1e-12)
    np.testing.assert_allclose(saved.rstd, 1 / np.sqrt(x.var(axis=(1, 3)) + 1e-5), rtol=1e-12)
    _, saved = nn.rms_norm(x, axis=-1)
    assert saved.mean is None and saved.rstd.shape == (3, 4, 5)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_])
def test_integer_and_bool_input_is_promoted_to_float64(dtype, rng):
    x = (rng.integers(0, 3, size=(4, 7))).astype(dtype)
    y, _ = nn.layer_norm(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, ref.layer_norm(x), rtol=1e-12, atol=1e-12)


def test_float16_is_computed_in_float32_and_returned_as_float16(rng):
    x = normal(rng, (16, 33), np.float16, loc=3.0)
    w = normal(rng, (33,), np.float16)
    y, saved = nn.layer_norm(x, weight=w)
    assert y.dtype == np.float16
    expected = ref.layer_norm(x, w)
    # float16 output rounding (2**-11 relative) is the only error left.
    assert_close(y, expected, RTOL[np.float16], "y")
    dy = normal(rng, (16, 33), np.float16)
    dx, dw, db = nn.layer_norm_backward(dy, x, saved, weight=w)
    assert dx.dtype == np.float16 and dw.dtype == np.float16 and db is None
    rdx, rdw, _ = ref.layer_norm_backward(dy, x, w)
    assert_close(dx, rdx, RTOL[np.float16], "dx")
    assert_close(dw, rdw, RTOL[np.float16], "dweight")


@pytest.mark.parametrize("order", ["C", "F", "strided", "out_f16"])
def test_out_receives_the_result(order, rng):
    x = normal(rng, (6, 10), np.float32)
    expected, _ = nn.layer_norm(x)
    if order == "strided":
        out = np.zeros((6, 20), np.float32)[:, ::2]
    elif order == "out_f16":
        x = x.astype(np.float16)
        expected, _ = nn.layer_norm(x)
        out = np.zeros((6, 10), np.float16)
    else:
        out = np.zeros((6, 10), np.float32, order=order)
    y, _ = nn.layer_norm(x, out=out)
    assert y is out
    np.testing.assert_array_equal(out, expected)
