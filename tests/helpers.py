"""Shared helpers for the tests: data, tolerances and finite differences."""

import numpy as np
from hypothesis import strategies as st


def normal(rng, shape, dtype=np.float64, loc=0.0, scale=1.0):
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


def assert_close(actual, expected, rtol, name="value"):
    """``|actual - expected| <= rtol * max(1, max|expected|)`` elementwise."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    err = float(np.max(np.abs(actual - expected), initial=0.0))
    assert err <= rtol * scale, f"{name}: max error {err:.3g} > {rtol:.1g} * {scale:.3g}"


#: Tolerance against the float64 reference, per input dtype.
RTOL = {np.float64: 1e-10, np.float32: 2e-5, np.float16: 4e-3}


def assert_gradients_close(grads, reference_grads, rtol, affine):
    """``(dx, dweight, dbias)`` against the reference's: all three when the
    norm had affine parameters, else ``dx`` and two Nones."""
    (dx, dw, db), (rdx, rdw, rdb) = grads, reference_grads
    assert_close(dx, rdx, rtol, "dx")
    if affine:
        assert_close(dw, rdw, rtol, "dweight")
        assert_close(db, rdb, rtol, "dbias")
    else:
        assert dw is None and db is None


def finite_difference(f, a, dy, h=1e-6):
    """Central-difference gradient of ``sum(f(a) * dy)`` with respect to ``a``."""
    a = np.array(a, dtype=np.float64)
    grad = np.empty_like(a)
    flat = a.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = np.sum(f(a) * dy)
        flat[i] = old - h
        minus = np.sum(f(a) * dy)
        flat[i] = old
        grad.reshape(-1)[i] = (plus - minus) / (2 * h)
    return grad


seeds = st.integers(0, 2**32 - 1)


@st.composite
def shapes(draw, min_dims=1, max_dims=4, min_side=1, max_side=6):
    ndim = draw(st.integers(min_dims, max_dims))
    return tuple(draw(st.integers(min_side, max_side)) for _ in range(ndim))


@st.composite
def shape_and_axes(draw, max_dims=4, max_side=6):
    """A shape and a non-empty set of axes (an int or a tuple)."""
    shape = draw(shapes(1, max_dims, 1, max_side))
    axes = draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))
    axes = tuple(sorted(axes))
    if len(axes) == 1 and draw(st.booleans()):
        axis = axes[0] - len(shape) if draw(st.booleans()) else axes[0]
    else:
        axis = axes
    return shape, axis


@st.composite
def channel_shapes(draw, max_side=5):
    """(shape, axis): at least 2-D, channel axis not the batch axis."""
    shape = draw(shapes(2, 4, 1, max_side))
    axis = draw(st.integers(1, len(shape) - 1))
    if draw(st.booleans()):
        axis -= len(shape)
    return shape, axis
