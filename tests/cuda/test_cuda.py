"""The CUDA back end computes what the CPU back end computes, on the device.

Every comparison is against the CPU back end on the same data (itself checked
against float64 formulas in tests/). Tolerances: float64 results agree to
1e-12 relative; float32 to 2e-6 of the result's scale (the two back ends add
float64 partial sums in different orders, then round to float32); float16
results to one float16 rounding (2**-10 relative). Shapes are tiny and not
multiples of the block size, so the simulator stays fast and every loop has a
ragged end.
"""

import numpy as np
import pytest
from numba import cuda

import numbanorm as nn

TOL = {np.float64: 1e-12, np.float32: 2e-6, np.float16: 2.0**-10}


def dev(a):
    return cuda.to_device(np.array(a, order="C"))  # keeps 0-d arrays 0-d


def host(a):
    return None if a is None else a.copy_to_host()


def assert_on_device(*arrays):
    for a in arrays:
        if a is not None:
            assert getattr(type(a), "__cuda_ndarray__", False), type(a)  # a Numba device array
            assert not isinstance(a, np.ndarray)


def assert_close(got, want, dtype):
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = max(1.0, float(np.max(np.abs(want.astype(np.float64)))))
    np.testing.assert_allclose(
        got.astype(np.float64), want.astype(np.float64), rtol=TOL[dtype], atol=TOL[dtype] * scale
    )


def data(rng, shape, dtype, offset=0.0):
    return (rng.standard_normal(shape) * 2.0 + offset).astype(dtype)


# Each case: name, forward(x, w, b, on_device) -> (y, saved), backward(dy, x, saved, w),
# the shape of x, the parameter shape.
def _ln(axis):
    return (
        lambda x, w, b: nn.layer_norm(x, weight=w, bias=b, axis=axis),
        lambda dy, x, s, w: nn.layer_norm_backward(dy, x, s, weight=w, axis=axis),
    )


def _rms(axis):
    return (
        lambda x, w, b: nn.rms_norm(x, weight=w, axis=axis),
        lambda dy, x, s, w: (*nn.rms_norm_backward(dy, x, s, weight=w, axis=axis), None),
    )


def _bn(axis):
    return (
        lambda x, w, b: nn.batch_norm(x, weight=w, bias=b, axis=axis),
        lambda dy, x, s, w: nn.batch_norm_backward(dy, x, s, weight=w, axis=axis),
    )


def _gn(groups, axis):
    return (
        lambda x, w, b: nn.group_norm(x, groups, weight=w, bias=b, axis=axis),
        lambda dy, x, s, w: nn.group_norm_backward(dy, x, s, weight=w, axis=axis),
    )


def _in(axis):
    return (
        lambda x, w, b: nn.instance_norm(x, weight=w, bias=b, axis=axis),
        lambda dy, x, s, w: nn.instance_norm_backward(dy, x, s, weight=w, axis=axis),
    )


CASES = {
    # name: (forward, backward, x shape, parameter shape)
    "layer 3x37": (*_ln(-1), (3, 37), (37,)),
    "layer single row": (*_ln(-1), (1, 19), (19,)),
    "layer many rows": (*_ln(-1), (26, 5), (5,)),
    "layer axis=(1,2)": (*_ln((1, 2)), (2, 3, 7), (3, 7)),
    "layer axis=0": (*_ln(0), (9, 4), (9,)),
    "rms 4x33": (*_rms(-1), (4, 33), (33,)),
    "batch NCHW": (*_bn(1), (3, 5, 4, 3), (5,)),
    "batch NHWC": (*_bn(-1), (3, 4, 3, 5), (5,)),
    "batch (N, C)": (*_bn(1), (40, 3), (3,)),
    "group NCHW": (*_gn(2, 1), (2, 6, 3, 3), (6,)),
    "group NHWC": (*_gn(3, -1), (2, 3, 3, 6), (6,)),
    "instance NCHW": (*_in(1), (2, 3, 5, 3), (3,)),
    "instance NHWC": (*_in(-1), (2, 5, 3, 3), (3,)),
}


def _run(case, x, w, b, dy, put):
    forward, backward = case[:2]
    y, saved = forward(put(x), put(w), put(b))
    grads = backward(put(dy), put(x), saved, put(w))
    return y, saved, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_backward_equal_the_cpu_back_end(name, dtype, rng):
    case = CASES[name]
    shape, pshape = case[2], case[3]
    x = data(rng, shape, dtype, offset=3.0)
    w = data(rng, pshape, dtype, offset=1.0)
    b = data(rng, pshape, dtype)
    dy = data(rng, shape, dtype)
    y, saved, grads = _run(case, x, w, b, dy, dev)
    y_cpu, saved_cpu, grads_cpu = _run(case, x, w, b, dy, lambda a: a)

    assert_on_device(y, saved.mean, saved.rstd, *grads)
    assert_close(host(y), y_cpu, dtype)
    for got, want in [(saved.mean, saved_cpu.mean), (saved.rstd, saved_cpu.rstd)]:
        if want is not None:
            assert_close(host(got), want, np.float64 if dtype == np.float64 else np.float32)
    for got, want in zip(grads, grads_cpu):
        assert (got is None) == (want is None)
        if want is not None:
            assert_close(host(got), want, dtype)


@pytest.mark.parametrize("name", ["layer 3x37", "batch NHWC", "group NCHW"])
def test_without_affine_parameters(name, rng):
    case = CASES[name]
    x = data(rng, case[2], np.float64)
    dy = data(rng, case[2], np.float64)
    forward, backward = case[:2]
    y, saved = forward(dev(x), None, None)
    dx, dw, db = backward(dev(dy), dev(x), saved, None)
    y_cpu, saved_cpu = forward(x, None, None)
    dx_cpu, _, _ = backward(dy, x, saved_cpu, None)
    assert dw is None and db is None
    assert_close(host(y), y_cpu, np.float64)
    assert_close(host(dx), dx_cpu, np.float64)


def test_weight_norm_equals_the_cpu_back_end(rng):
    for axis, shape, gshape in [(0, (5, 3, 4), (5,)), (1, (3, 6), (1, 6)), (None, (4, 7), ())]:
        v = data(rng, shape, np.float64)
        g = data(rng, gshape, np.float64, offset=1.0)
        dw = data(rng, shape, np.float64)
        w, saved = nn.weight_norm(dev(v), dev(g), axis=axis)
        dv, dg = nn.weight_norm_backward(dev(dw), dev(v), dev(g), saved, axis=axis)
        w_cpu, saved_cpu = nn.weight_norm(v, g, axis=axis)
        dv_cpu, dg_cpu = nn.weight_norm_backward(dw, v, g, saved_cpu, axis=axis)
        assert_on_device(w, saved.rstd, dv, dg)
        for got, want in [(w, w_cpu), (saved.rstd, saved_cpu.rstd), (dv, dv_cpu), (dg, dg_cpu)]:
            assert_close(host(got), want, np.float64)


@pytest.mark.parametrize("axis", [1, -1])
def test_batch_norm_running_statistics_and_eval_mode_stay_on_the_device(axis, rng):
    x = data(rng, (4, 3, 2, 3), np.float32, offset=2.0)
    dy = data(rng, x.shape, np.float32)
    c = x.shape[axis]
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    d_rm, d_rv = dev(rm), dev(rv)
    nn.batch_norm(dev(x), axis=axis, running_mean=d_rm, running_var=d_rv, momentum=0.3)
    nn.batch_norm(x, axis=axis, running_mean=rm, running_var=rv, momentum=0.3)
    assert_close(d_rm.copy_to_host(), rm, np.float32)
    assert_close(d_rv.copy_to_host(), rv, np.float32)

    y, saved = nn.batch_norm(dev(x), axis=axis, training=False, running_mean=d_rm, running_var=d_rv)
    y_cpu, saved_cpu = nn.batch_norm(x, axis=axis, training=False, running_mean=rm, running_var=rv)
    assert not saved.training
    assert_on_device(y, saved.mean, saved.rstd)
    assert_close(host(y), y_cpu, np.float32)
    dx, _, _ = nn.batch_norm_backward(dev(dy), dev(x), saved, axis=axis)
    dx_cpu, _, _ = nn.batch_norm_backward(dy, x, saved_cpu, axis=axis)
    assert_close(host(dx), dx_cpu, np.float32)


@pytest.mark.parametrize("axis", [1, -1])
def test_instance_norm_running_statistics_stay_on_the_device(axis, rng):
    x = data(rng, (4, 3, 2, 3), np.float32, offset=2.0)
    dy = data(rng, x.shape, np.float32)
    c = x.shape[axis]
    w = data(rng, (c,), np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    d_rm, d_rv = dev(rm), dev(rv)
    nn.instance_norm(dev(x), axis=axis, running_mean=d_rm, running_var=d_rv, momentum=0.3)
    nn.instance_norm(x, axis=axis, running_mean=rm, running_var=rv, momentum=0.3)
    assert_close(d_rm.copy_to_host(), rm, np.float32)
    assert_close(d_rv.copy_to_host(), rv, np.float32)

    y, saved = nn.instance_norm(dev(x), weight=dev(w), axis=axis, training=False,
                                running_mean=d_rm, running_var=d_rv)
    y_cpu, saved_cpu = nn.instance_norm(x, weight=w, axis=axis, training=False,
                                        running_mean=rm, running_var=rv)
    assert not saved.training
    assert_on_device(y, saved.mean, saved.rstd)
    assert_close(host(y), y_cpu, np.float32)
    dx, dw, _ = nn.instance_norm_backward(dev(dy), dev(x), saved, weight=dev(w), axis=axis)
    dx_cpu, dw_cpu, _ = nn.instance_norm_backward(dy, x, saved_cpu, weight=w, axis=axis)
    assert_close(host(dx), dx_cpu, np.float32)
    assert_close(host(dw), dw_cpu, np.float32)


def test_an_empty_batch_in_eval_mode_gives_an_empty_result_on_the_device():
    x = np.zeros((0, 3, 2, 2), np.float32)
    rm, rv = dev(np.zeros(3, np.float32)), dev(np.ones(3, np.float32))
    w = dev(np.ones(3, np.float32))
    for f, b in ((nn.batch_norm, nn.batch_norm_backward),
                 (nn.instance_norm, nn.instance_norm_backward)):
        y, saved = f(dev(x), weight=w, training=False, running_mean=rm, running_var=rv)
        assert_on_device(y)
        assert y.shape == x.shape
        dx, dw, _ = b(dev(x), dev(x), saved, weight=w)
        assert dx.shape == x.shape
        assert_close(host(dw), np.zeros(3, np.float32), np.float32)


@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_residual_add_equals_the_cpu_back_end(norm, dtype, rng):
    x, r, dy, dh = (data(rng, (5, 37), dtype) for _ in range(4))
    w = data(rng, (37,), dtype)
    f = nn.layer_norm if norm == "layer" else nn.rms_norm
    b = nn.layer_norm_backward if norm == "layer" else nn.rms_norm_backward
    y, saved, h = f(dev(x), weight=dev(w), residual=dev(r))
    y_cpu, saved_cpu, h_cpu = f(x, weight=w, residual=r)
    assert_on_device(y, h)
    assert_close(host(h), h_cpu, dtype)
    assert_close(host(y), y_cpu, dtype)
    dx, dw = b(dev(dy), h, saved, weight=dev(w), dh=dev(dh))[:2]
    dx_cpu, dw_cpu = b(dy, h_cpu, saved_cpu, weight=w, dh=dh)[:2]
    assert_close(host(dx), dx_cpu, dtype)
    assert_close(host(dw), dw_cpu, dtype)


def test_strided_and_transposed_device_input(rng):
    base = data(rng, (6, 40), np.float32, offset=5.0)
    d_base = dev(base)
    strided = d_base[::2, 1::3]  # a view: every other row, every third column
    y, saved = nn.layer_norm(strided)
    assert_close(host(y), nn.layer_norm(base[::2, 1::3])[0], np.float32)
    dx, _, _ = nn.layer_norm_backward(strided, strided, saved)
    assert_close(host(dx), nn.layer_norm_backward(base[::2, 1::3], base[::2, 1::3],
                                                  nn.layer_norm(base[::2, 1::3])[1])[0], np.float32)
    # Reduce over a leading axis: the kernel view is a transposed copy.
    y0, _ = nn.layer_norm(d_base, axis=0)
    assert_close(host(y0), nn.layer_norm(base, axis=0)[0], np.float32)
    x4 = data(rng, (3, 4, 5, 6), np.float32)
    d4 = dev(x4)[:, :, ::2, 1:]
    assert_close(host(nn.batch_norm(d4, axis=1)[0]), nn.batch_norm(x4[:, :, ::2, 1:], axis=1)[0],
                 np.float32)
    assert_close(host(nn.group_norm(d4, 5, axis=-1)[0]),
                 nn.group_norm(x4[:, :, ::2, 1:], 5, axis=-1)[0], np.float32)


@pytest.mark.parametrize("name", ["layer 3x37", "batch NHWC", "group NCHW"])
def test_float16_input_is_computed_in_float32(name, rng):
    case = CASES[name]
    x = data(rng, case[2], np.float16, offset=1.0)
    dy = data(rng, case[2], np.float16)
    w = data(rng, case[3], np.float16, offset=1.0)
    b = data(rng, case[3], np.float16)
    y, saved, grads = _run(case, x, w, b, dy, dev)
    y_cpu, saved_cpu, grads_cpu = _run(case, x, w, b, dy, lambda a: a)
    assert host(y).dtype == np.float16
    assert_close(host(y), y_cpu, np.float16)
    for got, want in zip(grads, grads_cpu):
        if want is not None:
            assert_close(host(got), want, np.float16)


def test_integer_input_is_promoted_to_float64(rng):
    x = rng.integers(-50, 50, (4, 9))
    y, _ = nn.layer_norm(dev(x))
    assert host(y).dtype == np.float64
    assert_close(host(y), nn.layer_norm(x)[0], np.float64)


def test_out_on_the_device_is_written_in_place(rng):
    x = data(rng, (3, 21), np.float32)
    out = dev(np.zeros_like(x))
    y, _ = nn.layer_norm(dev(x), out=out)
    assert y is out
    assert_close(out.copy_to_host(), nn.layer_norm(x)[0], np.float32)
    # A strided out: the kernel writes a buffer that is then copied into it.
    x4 = data(rng, (2, 4, 3, 3), np.float32)
    base = dev(np.zeros((2, 4, 3, 6), np.float32))
    strided_out = base[..., ::2]
    y4, _ = nn.group_norm(dev(x4), 2, out=strided_out)
    assert y4 is strided_out
    assert_close(base.copy_to_host()[..., ::2], nn.group_norm(x4, 2)[0], np.float32)
    assert not base.copy_to_host()[..., 1::2].any()  # the gaps are untouched


def test_inputs_are_not_modified(rng):
    x = data(rng, (2, 6, 3, 2), np.float32)
    dy = data(rng, x.shape, np.float32)
    w = data(rng, (6,), np.float32)
    d_x, d_dy, d_w = dev(x), dev(dy), dev(w)
    _, saved = nn.group_norm(d_x, 3, weight=d_w, bias=d_w)
    nn.group_norm_backward(d_dy, d_x, saved, weight=d_w)
    np.testing.assert_array_equal(d_x.copy_to_host(), x)
    np.testing.assert_array_equal(d_dy.copy_to_host(), dy)
    np.testing.assert_array_equal(d_w.copy_to_host(), w)


def test_statistics_are_accurate_with_a_large_offset(rng):
    # DESIGN.md: float32 N(1e6, 1) normalized within 2e-6 of float64 (the
    # float32 result's own rounding is ~6e-8 at |y| ~ 1).
    x = (1e6 + rng.standard_normal((3, 50))).astype(np.float32)
    y, _ = nn.layer_norm(dev(x))
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    assert np.max(np.abs(host(y) - ref)) < 2e-6


def test_results_are_identical_run_to_run(rng):
    x = data(rng, (3, 5, 4, 3), np.float32, offset=7.0)
    dy = data(rng, x.shape, np.float32)
    first = nn.batch_norm_backward(dev(dy), dev(x), nn.batch_norm(dev(x))[1])
    second = nn.batch_norm_backward(dev(dy), dev(x), nn.batch_norm(dev(x))[1])
    for a, b in zip(first, second):
        if a is not None:
            np.testing.assert_array_equal(host(a), host(b))


ERRORS = [
    ("weight shape", lambda X, DY: nn.layer_norm(X, weight=dev(np.ones(3, np.float32))), ValueError,
     r"weight must have shape \(5,\)"),
    ("groups", lambda X, DY: nn.group_norm(X, 4), ValueError, "num_groups=4 must be a positive divisor"),
    ("eps", lambda X, DY: nn.batch_norm(X, eps=-1.0), ValueError, "eps must be finite and >= 0"),
    ("out aliases x", lambda X, DY: nn.layer_norm(X, out=X), ValueError,
     "out must not share memory with x"),
    ("dy shape", lambda X, DY: nn.layer_norm_backward(DY[:1], X, nn.layer_norm(X)[1]), ValueError,
     "dy must have the shape of x"),
    ("dy dtype", lambda X, DY: nn.layer_norm_backward(dev(np.ones((2, 3, 5))), X, nn.layer_norm(X)[1]),
     TypeError, "dy must have dtype float32"),
    ("host weight", lambda X, DY: nn.layer_norm(X, weight=np.ones(5, np.float32)), TypeError,
     "weight is a host \\(NumPy\\) array but x is a device array"),
    ("host dy", lambda X, DY: nn.layer_norm_backward(np.ones((2, 3, 5), np.float32), X,
                                                     nn.layer_norm(X)[1]),
     TypeError, "dy is a host \\(NumPy\\) array but x is a device array"),
    ("host saved", lambda X, DY: nn.layer_norm_backward(DY, X, nn.layer_norm(X.copy_to_host())[1]),
     TypeError, "saved.rstd is a host \\(NumPy\\) array but x is a device array"),
    ("host running stats", lambda X, DY: nn.batch_norm(X, running_mean=np.zeros(3), running_var=np.ones(3)),
     TypeError, "running_mean is a host \\(NumPy\\) array but x is a device array"),
    ("one value per channel", lambda X, DY: nn.batch_norm(X[:1, :, :1]), ValueError,
     "needs more than 1 value per channel"),
    ("moments", lambda X, DY: nn.moments(X), TypeError, "moments\\(\\) runs on the host"),
]


@pytest.mark.parametrize("call, exc, match", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_input_gets_the_cpu_back_ends_error(call, exc, match, rng):
    x = data(rng, (2, 3, 5), np.float32)
    X, DY = dev(x), dev(data(rng, x.shape, np.float32))
    with pytest.raises(exc, match=match):
        call(X, DY)
    np.testing.assert_array_equal(X.copy_to_host(), x)
