"""Weight norm against the reference and finite differences."""

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numbanorm as nn
import reference as ref
from numbanorm._cpu import engine as _engine
from helpers import RTOL, assert_close, finite_difference, normal, seeds, shapes


@st.composite
def wn_case(draw):
    shape = draw(shapes(1, 4, 1, 5))
    axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    keepdims = draw(st.booleans())
    if axis is None:
        gshape = (1,) * len(shape) if keepdims else ()
    elif keepdims:
        gshape = tuple(s if i == axis % len(shape) else 1 for i, s in enumerate(shape))
    else:
        gshape = (shape[axis],)
    return shape, axis, gshape


@given(wn_case(), seeds, st.sampled_from([np.float64, np.float32]))
def test_weight_norm_matches_reference(case, seed, dtype):
    shape, axis, gshape = case
    rng = np.random.default_rng(seed)
    v = normal(rng, shape, dtype, loc=0.3)
    g = normal(rng, gshape)
    w, saved = nn.weight_norm(v, g, axis=axis)
    assert w.dtype == dtype and w.shape == shape
    assert_close(w, ref.weight_norm(v, g, axis), RTOL[dtype], "w")
    dw = normal(rng, shape, dtype)
    dv, dg = nn.weight_norm_backward(dw, v, g, saved, axis=axis)
    rdv, rdg = ref.weight_norm_backward(dw, v, g, axis)
    assert dg.shape == np.shape(g)
    assert_close(dv, rdv, RTOL[dtype] * 10, "dv")
    assert_close(dg, rdg, RTOL[dtype] * 10, "dg")


@given(wn_case(), seeds)
def test_weight_norm_gradients_equal_finite_differences(case, seed):
    shape, axis, gshape = case
    rng = np.random.default_rng(seed)
    v, dw = normal(rng, shape, loc=0.3), normal(rng, shape)
    g = normal(rng, gshape)
    _, saved = nn.weight_norm(v, g, axis=axis)
    dv, dg = nn.weight_norm_backward(dw, v, g, saved, axis=axis)
    assert_close(dv, finite_difference(lambda a: nn.weight_norm(a, g, axis=axis)[0], v, dw), 1e-6)
    assert_close(dg, finite_difference(lambda a: nn.weight_norm(v, a, axis=axis)[0], g, dw), 1e-6)


@given(wn_case(), seeds)
def test_each_slice_has_norm_abs_g(case, seed):
    shape, axis, gshape = case
    rng = np.random.default_rng(seed)
    v = normal(rng, shape, loc=0.3)
    g = normal(rng, gshape)
    w, _ = nn.weight_norm(v, g, axis=axis)
    if axis is None:
        norms = np.sqrt((w * w).sum())
    else:
        other = tuple(i for i in range(len(shape)) if i != axis % len(shape))
        norms = np.sqrt((w * w).sum(axis=other))
    np.testing.assert_allclose(norms, np.abs(g).ravel().reshape(np.shape(norms)), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_long_rows_several_per_task_match_reference_for_any_thread_count(dtype, rng):
    # 37 rows of 4099 values: tasks of SCALE_ROWS_PER_TASK rows (the last one
    # shorter), rows whose length is not a multiple of 4.
    v = normal(rng, (37, 4099), dtype, loc=0.3)
    g = normal(rng, (37,), dtype)
    assert v.shape[1] >= _engine.SCALE_PIPELINE_MIN_LENGTH
    w, saved = nn.weight_norm(v, g)
    assert_close(w, ref.weight_norm(v, g, 0), RTOL[dtype], "w")
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        w1, saved1 = nn.weight_norm(v, g)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(w, w1)
    np.testing.assert_array_equal(saved.rstd, saved1.rstd)

