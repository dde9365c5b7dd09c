"""bfloat16 (``ml_dtypes.bfloat16``) in, bfloat16 out, computed in float32
with float64 statistics: against the float64 formulas on the same values,
every result is that value rounded to bfloat16 (2**-8 of itself), up to
float32 rounding."""

import numpy as np
import pytest

import numbanorm as nn
import reference as ref
from numbanorm._cases import calls

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)

#: One bfloat16 rounding (half a unit in the last place: 2**-8 relative, 8
#: significant bits) and float32 arithmetic before it, relative to the scale.
ROUNDING = 2.0**-8
FLOAT32 = 1e-5

SHAPE = {"rows": (8, 40), "nchw": (4, 6, 5, 5), "nhwc": (4, 5, 5, 6)}


def _reference(norm, layout, x, dy, w, b):
    """float64 ``(y, dx, dweight[, dbias])`` of ``norm`` on the same values."""
    axis = -1 if layout != "nchw" else 1
    if norm == "layer":
        return (ref.layer_norm(x, w, b), *ref.layer_norm_backward(dy, x, w))
    if norm == "rms":
        eps = float(np.finfo(BF16).eps)  # rms_norm's default: the input dtype's epsilon
        return (ref.rms_norm(x, w, eps=eps), *ref.rms_norm_backward(dy, x, w, eps=eps))
    if norm == "batch":
        return (ref.batch_norm(x, w, b, axis)[0], *ref.batch_norm_backward(dy, x, w, axis))
    if norm == "group":
        return (ref.group_norm(x, 2, w, b, axis), *ref.group_norm_backward(dy, x, 2, w, axis))
    if norm == "instance":
        return (ref.instance_norm(x, w, b, axis), *ref.instance_norm_backward(dy, x, w, axis))
    g = w.reshape((-1,) + (1,) * (x.ndim - 1))
    return (ref.weight_norm(x, g), *ref.weight_norm_backward(dy, x, g))


def _assert_rounded(got, want, name):
    """``got`` (bfloat16) is ``want`` (float64) rounded once, elementwise,
    with float32 error relative to the largest value."""
    assert got.dtype == BF16, name
    got = np.asarray(got, np.float64).reshape(np.shape(want))
    scale = max(1.0, float(np.max(np.abs(want))))
    err = np.abs(got - want)
    bound = ROUNDING * np.abs(want) + FLOAT32 * scale
    assert (err <= bound).all(), f"{name}: worst excess {float(np.max(err - bound)):.3g}"


CASE_LAYOUTS = [
    ("layer", "rows"), ("rms", "rows"), ("batch", "nchw"), ("batch", "nhwc"),
    ("group", "nchw"), ("group", "nhwc"), ("instance", "nchw"), ("instance", "nhwc"),
    ("weight", "rows"),
]


@pytest.mark.parametrize("norm, layout", CASE_LAYOUTS)
def test_bfloat16_forward_and_backward_are_float64_results_rounded_once(norm, layout, rng):
    shape = SHAPE[layout]
    n = shape[0] if norm == "weight" else shape[1 if layout == "nchw" else -1]
    as_bf16 = lambda a: a.astype(BF16)  # noqa: E731
    x = as_bf16(rng.standard_normal(shape) * 3 + 20)
    dy = as_bf16(rng.standard_normal(shape))
    w = as_bf16(1 + 0.5 * rng.standard_normal(n))
    b = as_bf16(rng.standard_normal(n))
    forward, backward = calls(norm, layout, shape, w, b)
    y, saved = forward(x)
    grads = backward(dy, x, saved)
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731 (exact: bfloat16 values)
    want = _reference(norm, layout, f64(x), f64(dy), f64(w), f64(b))
    names = ["y", "dx", "dweight", "dbias"]
    for got, expected, name in zip((y, *grads), want, names):
        if norm == "rms" and name == "dbias":
            continue
        _assert_rounded(got, expected, name)


def test_bfloat16_statistics_are_float64():
    x = np.array([[1.0, 2.0, 4.0]], BF16)
    _, saved = nn.layer_norm(x)
    assert saved.mean.dtype == np.float64
    assert saved.mean[0] == pytest.approx(7 / 3, rel=1e-15)


def test_bfloat16_layers_and_state_dicts():
    layer = nn.LayerNorm(3, dtype=BF16)
    y = layer(np.array([[1.0, 2.0, 4.0]], BF16))
    assert y.dtype == BF16 and layer.weight.dtype == BF16
    layer.load_state_dict({"weight": np.full(3, 2.0, BF16), "bias": np.zeros(3, BF16)})
    wn = nn.WeightNorm(np.ones((2, 3), BF16))
    assert wn().dtype == BF16
