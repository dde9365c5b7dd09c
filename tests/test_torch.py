"""Agreement with PyTorch 2.13 CPU: forward, backward, running statistics, eval mode.

PyTorch computes in float64 on the same values (float32 inputs are widened
exactly), so for float32 the comparison measures numbanorm's rounding, not
PyTorch's: PyTorch's own float32 gradient of a two-value group with a tiny
variance is off by 2e-3 of scale (found by Hypothesis), where numbanorm's is
off by 1e-5.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numbanorm as nn
from helpers import assert_close, normal, seeds, shapes

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = {np.float64: 1e-10, np.float32: 1e-4}
dtypes = st.sampled_from([np.float64, np.float32])


def _t(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def _grads(out, dy, *tensors):
    out.backward(_t(dy))
    return [None if t is None else t.grad.numpy() for t in tensors]


@given(shapes(1, 4, 1, 6), st.integers(1, 3), seeds, dtypes)
def test_layer_norm(shape, k, seed, dtype):
    rng = np.random.default_rng(seed)
    k = min(k, len(shape))
    ns = shape[len(shape) - k:]
    x, dy = normal(rng, shape, dtype, loc=2.0), normal(rng, shape, dtype)
    w, b = normal(rng, ns, dtype), normal(rng, ns, dtype)
    axis = tuple(range(len(shape) - k, len(shape)))
    y, saved = nn.layer_norm(x, weight=w, bias=b, axis=axis, eps=1e-5)
    xt, wt, bt = _t(x, True), _t(w, True), _t(b, True)
    yt = F.layer_norm(xt, ns, wt, bt, eps=1e-5)
    assert_close(y, yt.detach().numpy(), TOL[dtype])
    for ours, theirs in zip(nn.layer_norm_backward(dy, x, saved, weight=w, axis=axis), _grads(yt, dy, xt, wt, bt)):
        assert_close(ours, theirs, TOL[dtype] * 10)


@given(shapes(1, 4, 1, 6), seeds, dtypes)
def test_rms_norm(shape, seed, dtype):
    rng = np.random.default_rng(seed)
    x, dy, w = normal(rng, shape, dtype), normal(rng, shape, dtype), normal(rng, shape[-1:], dtype)
    y, saved = nn.rms_norm(x, weight=w, eps=1e-6)
    xt, wt = _t(x, True), _t(w, True)
    yt = F.rms_norm(xt, shape[-1:], wt, eps=1e-6)
    assert_close(y, yt.detach().numpy(), TOL[dtype])
    for ours, theirs in zip(nn.rms_norm_backward(dy, x, saved, weight=w), _grads(yt, dy, xt, wt)):
        assert_close(ours, theirs, TOL[dtype] * 10)


@given(shapes(2, 4, 2, 5), seeds, dtypes, st.floats(0.0, 1.0), st.booleans())
def test_batch_norm_training_and_eval(shape, seed, dtype, momentum, training):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x, dy = normal(rng, shape, dtype, loc=-1.0), normal(rng, shape, dtype)
    w, b = normal(rng, (c,), dtype), normal(rng, (c,), dtype)
    rm, rv = normal(rng, (c,), dtype), rng.uniform(0.5, 2, c).astype(dtype)
    rmt, rvt = _t(rm), _t(rv)
    y, saved = nn.batch_norm(x, weight=w, bias=b, training=training, running_mean=rm, running_var=rv,
                             momentum=momentum)
    xt, wt, bt = _t(x, True), _t(w, True), _t(b, True)
    yt = F.batch_norm(xt, rmt, rvt, wt, bt, training=training, momentum=momentum)
    assert_close(y, yt.detach().numpy(), TOL[dtype])
    assert_close(rm, rmt.numpy(), TOL[dtype], "running_mean")
    assert_close(rv, rvt.numpy(), TOL[dtype], "running_var")
    for ours, theirs in zip(nn.batch_norm_backward(dy, x, saved, weight=w), _grads(yt, dy, xt, wt, bt)):
        assert_close(ours, theirs, TOL[dtype] * 10)


@given(shapes(2, 4, 1, 5), st.integers(1, 4), seeds, dtypes)
def test_group_norm(shape, k, seed, dtype):
    rng = np.random.default_rng(seed)
    # PyTorch refuses groups of a single element; give every group two.
    shape = (shape[0], shape[1] * k) + shape[2:] + (2,)
    c = shape[1]
    x, dy = normal(rng, shape, dtype, loc=3.0), normal(rng, shape, dtype)
    w, b = normal(rng, (c,), dtype), normal(rng, (c,), dtype)
    y, saved = nn.group_norm(x, k, weight=w, bias=b)
    xt, wt, bt = _t(x, True), _t(w, True), _t(b, True)
    yt = F.group_norm(xt, k, wt, bt)
    assert_close(y, yt.detach().numpy(), TOL[dtype])
    for ours, theirs in zip(nn.group_norm_backward(dy, x, saved, weight=w), _grads(yt, dy, xt, wt, bt)):
        assert_close(ours, theirs, TOL[dtype] * 10)


@given(shapes(3, 4, 2, 5), seeds, dtypes)
def test_instance_norm(shape, seed, dtype):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x, dy = normal(rng, shape, dtype), normal(rng, shape, dtype)
    w, b = normal(rng, (c,), dtype), normal(rng, (c,), dtype)
    y, saved = nn.instance_norm(x, weight=w, bias=b)
    xt, wt, bt = _t(x, True), _t(w, True), _t(b, True)
    yt = F.instance_norm(xt, weight=wt, bias=bt)
    assert_close(y, yt.detach().numpy(), TOL[dtype])
    for ours, theirs in zip(nn.instance_norm_backward(dy, x, saved, weight=w), _grads(yt, dy, xt, wt, bt)):
        assert_close(ours, theirs, TOL[dtype] * 10)


@given(shapes(1, 4, 1, 5), seeds, dtypes)
def test_weight_norm(shape, seed, dtype):
    rng = np.random.default_rng(seed)
    v, dw = normal(rng, shape, dtype, loc=0.2), normal(rng, shape, dtype)
    gshape = (shape[0],) + (1,) * (len(shape) - 1)
    g = normal(rng, gshape, dtype)
    w, saved = nn.weight_norm(v, g, axis=0)
    vt, gt = _t(v, True), _t(g, True)
    wt = torch._weight_norm(vt, gt, 0)
    assert_close(w, wt.detach().numpy(), TOL[dtype])
    for ours, theirs in zip(nn.weight_norm_backward(dw, v, g, saved), _grads(wt, dw, vt, gt)):
        assert_close(ours, theirs, TOL[dtype] * 10)
