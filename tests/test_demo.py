"""The conv-net demo's own layers (examples/conv_norms.py): their gradients
against finite differences, so the comparison trains what it says."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_close, finite_difference

_PATH = Path(__file__).resolve().parent.parent / "examples" / "conv_norms.py"
_spec = importlib.util.spec_from_file_location("conv_norms", _PATH)
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


def _float64(layer):
    """The layer's parameters in float64, for finite differences."""
    for name in ("w", "b"):
        if getattr(layer, name, None) is not None:
            setattr(layer, name, getattr(layer, name).astype(np.float64))
    return layer


@pytest.mark.parametrize("weight_norm", [False, True])
def test_convolution_gradients_equal_finite_differences(weight_norm, rng):
    conv = demo.Conv2d(3, 4, rng, weight_norm=weight_norm)
    _float64(conv)
    if weight_norm:
        conv.wn.weight_v = conv.wn.weight_v.astype(np.float64)
        conv.wn.weight_g = conv.wn.weight_g.astype(np.float64)
    x = rng.standard_normal((2, 3, 5, 6))
    dy = rng.standard_normal((2, 4, 5, 6))
    y = conv.forward(x)
    assert y.shape == dy.shape
    dx = conv.backward(dy)
    assert_close(dx, finite_difference(conv.forward, x, dy), 1e-6, "dx")
    assert_close(conv.grads["b"], finite_difference(
        lambda b: (setattr(conv, "b", b), conv.forward(x))[1], conv.b.copy(), dy), 1e-6, "db")
    if weight_norm:
        for key, name in (("weight_v", "weight_v"), ("weight_g", "weight_g")):
            def f(p, name=name):
                setattr(conv.wn, name, p)
                return conv.forward(x)
            assert_close(conv.grads[key], finite_difference(f, getattr(conv.wn, name).copy(), dy),
                         1e-6, key)
    else:
        def f(w):
            conv.w = w
            return conv.forward(x)
        assert_close(conv.grads["w"], finite_difference(f, conv.w.copy(), dy), 1e-6, "dw")


def test_convolution_is_pytorchs_cross_correlation(rng):
    torch = pytest.importorskip("torch")
    conv = _float64(demo.Conv2d(3, 4, rng))
    conv.b = rng.standard_normal(4)
    x = rng.standard_normal((2, 3, 5, 6))
    theirs = torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(conv.w), torch.from_numpy(conv.b), padding=1
    )
    assert_close(conv.forward(x), theirs.numpy(), 1e-12)


def test_pooling_and_linear_gradients_equal_finite_differences(rng):
    pool = demo.AvgPool2()
    x = rng.standard_normal((2, 3, 4, 6))
    dy = rng.standard_normal((2, 3, 2, 3))
    assert_close(pool.backward(dy), finite_difference(pool.forward, x, dy), 1e-6, "pool")
    lin = _float64(demo.Linear(5, 3, rng))
    x = rng.standard_normal((4, 5))
    dy = rng.standard_normal((4, 3))
    lin.forward(x)
    assert_close(lin.backward(dy), finite_difference(lin.forward, x, dy), 1e-6, "linear dx")
