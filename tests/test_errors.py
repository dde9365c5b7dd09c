"""Bad input gets a clear error that names the argument, before anything is written."""

import numpy as np
import pytest

import numbanorm as nn

X = np.random.default_rng(0).standard_normal((4, 6, 5)).astype(np.float32)
DY = np.ones_like(X)
C = X.shape[1]
_, LN_SAVED = nn.layer_norm(X)
_, BN_SAVED = nn.batch_norm(X)
_, GN_SAVED = nn.group_norm(X, 3)

CASES = [
    # name, call, exception, message pattern
    ("complex x", lambda: nn.layer_norm(X.astype(np.complex64)), TypeError, "x must be a real"),
    ("object x", lambda: nn.batch_norm(np.array([[1, "a"]], dtype=object)), TypeError, "x must be a real"),
    ("string x", lambda: nn.rms_norm(np.array(["ab", "cd"])), TypeError, "x must be a real"),
    ("weight shape", lambda: nn.layer_norm(X, weight=np.ones(4)), ValueError, r"weight must have shape \(5,\)"),
    ("bias shape", lambda: nn.layer_norm(X, weight=None, bias=np.ones((1, 5))), ValueError, "bias must have shape"),
    ("complex weight", lambda: nn.batch_norm(X, weight=np.ones(C, complex)), TypeError, "weight must be a real"),
    ("bn weight shape", lambda: nn.batch_norm(X, weight=np.ones(5)), ValueError, r"weight must have shape \(6,\)"),
    ("axis out of range", lambda: nn.layer_norm(X, axis=3), ValueError, "axis=3 is out of range"),
    ("negative axis out of range", lambda: nn.batch_norm(X, axis=-4), ValueError, "out of range"),
    ("repeated axis", lambda: nn.layer_norm(X, axis=(1, -2)), ValueError, "repeats an axis"),
    ("empty axis tuple", lambda: nn.layer_norm(X, axis=()), ValueError, "at least one axis"),
    ("float axis", lambda: nn.layer_norm(X, axis=1.0), TypeError, "axis must be an int"),
    ("bool axis", lambda: nn.batch_norm(X, axis=True), TypeError, "axis must be an int"),
    ("negative eps", lambda: nn.layer_norm(X, eps=-1e-5), ValueError, "eps must be finite and >= 0"),
    ("nan eps", lambda: nn.group_norm(X, 2, eps=float("nan")), ValueError, "eps must be finite"),
    ("string eps", lambda: nn.rms_norm(X, eps="1e-5"), TypeError, "eps must be a real number"),
    ("groups not dividing C", lambda: nn.group_norm(X, 4), ValueError, "num_groups=4 must be a positive divisor of the number of channels C=6"),
    ("zero groups", lambda: nn.group_norm(X, 0), ValueError, "num_groups=0"),
    ("float groups", lambda: nn.group_norm(X, 2.0), TypeError, "num_groups must be an int"),
    ("group norm on batch axis", lambda: nn.group_norm(X, 2, axis=0), ValueError, "batch axis"),
    ("group norm 1-D", lambda: nn.group_norm(np.ones(4), 2), ValueError, "batch axis and a channel axis"),
    ("instance norm one spatial element", lambda: nn.instance_norm(np.ones((3, 4))), ValueError, "more than 1 spatial element"),
    ("bn one value per channel", lambda: nn.batch_norm(np.ones((1, 3))), ValueError, "more than 1 value per channel"),
    ("bn empty batch", lambda: nn.batch_norm(np.ones((0, 3))), ValueError, "empty set"),
    ("ln empty row", lambda: nn.layer_norm(np.ones((3, 0))), ValueError, "empty set"),
    ("gn empty spatial", lambda: nn.group_norm(np.ones((2, 4, 0)), 2), ValueError, "empty set"),
    ("moments empty", lambda: nn.moments(np.ones((0, 3)), axis=0), ValueError, "empty set"),
    ("momentum out of range", lambda: nn.batch_norm(X, momentum=1.5), ValueError, r"momentum must be in \[0, 1\]"),
    ("training not bool", lambda: nn.batch_norm(X, training="yes"), TypeError, "training must be a bool"),
    ("one running stat", lambda: nn.batch_norm(X, running_mean=np.zeros(C)), ValueError, "must be given together"),
    ("eval without running", lambda: nn.batch_norm(X, training=False), ValueError, "eval mode"),
    ("running shape", lambda: nn.batch_norm(X, running_mean=np.zeros(5), running_var=np.ones(5)), ValueError, r"running_mean must have shape \(6,\)"),
    ("running list", lambda: nn.batch_norm(X, running_mean=[0.0] * C, running_var=[1.0] * C), TypeError, "running_mean must be a numpy.ndarray"),
    ("running int", lambda: nn.batch_norm(X, running_mean=np.zeros(C, int), running_var=np.ones(C)), TypeError, "running_mean must be a float array"),
    ("out shape", lambda: nn.layer_norm(X, out=np.empty((4, 6))), ValueError, r"out must have shape \(4, 6, 5\)"),
    ("out dtype", lambda: nn.layer_norm(X, out=np.empty(X.shape)), TypeError, "out must have dtype float32"),
    ("out is x", lambda: nn.batch_norm(X.copy(), out=None) and nn.layer_norm(X, out=X), ValueError, "out must not share memory with x"),
    ("out list", lambda: nn.layer_norm(X, out=[0.0]), TypeError, "out must be a numpy.ndarray"),
    ("dy shape", lambda: nn.layer_norm_backward(DY[:2], X, LN_SAVED), ValueError, "dy must have the shape of x"),
    ("dy dtype", lambda: nn.layer_norm_backward(DY.astype(np.float64), X, LN_SAVED), TypeError, "dy must have dtype float32"),
    ("saved from another x", lambda: nn.layer_norm_backward(DY[:, :3], X[:, :3], LN_SAVED), ValueError, "saved.rstd has shape"),
    ("bn saved shape", lambda: nn.batch_norm_backward(DY, X, BN_SAVED, axis=2), ValueError, "saved.mean has shape"),
    ("gn saved shape", lambda: nn.group_norm_backward(DY[:2], X[:2], GN_SAVED), ValueError, "saved.mean has shape"),
    ("rms saved missing", lambda: nn.layer_norm_backward(DY, X, nn.rms_norm(X)[1]), ValueError, "saved.mean is missing"),
    ("wn g shape", lambda: nn.weight_norm(X, np.ones(6)), ValueError, r"g must have shape \(4,\)"),
    ("wn dw shape", lambda: nn.weight_norm_backward(DY[:2], X, np.ones(4), nn.weight_norm(X, np.ones(4))[1]), ValueError, "dw must have the shape of v"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("bad", [1.0, True, (1.0, 2), (True, 2)])
def test_a_valid_axis_seen_before_does_not_let_an_equal_non_int_through(bad):
    # 1.0 and True hash and compare equal to 1: the cache of valid axes must not
    # answer for them.
    nn.layer_norm(X, axis=1)
    nn.layer_norm(X, axis=(1, 2))
    with pytest.raises(TypeError, match="axis must be an int"):
        nn.layer_norm(X, axis=bad)


def test_nothing_is_written_when_validation_fails():
    out = np.full(X.shape, 7.0, np.float32)
    rm, rv = np.full(C, 3.0), np.full(C, 4.0)
    with pytest.raises(ValueError):
        nn.batch_norm(X, weight=np.ones(5), running_mean=rm, running_var=rv, out=out)
    with pytest.raises(ValueError):
        nn.batch_norm(X, running_mean=rm, running_var=rv, momentum=2.0, out=out)
    with pytest.raises(TypeError):
        nn.batch_norm(X, running_mean=rm, running_var=rv, out=out.astype(np.float16))
    with pytest.raises(ValueError):
        nn.group_norm(X, 4, out=out)
    with pytest.raises(ValueError):
        nn.layer_norm(X, eps=-1.0, out=out)
    assert np.all(out == 7.0) and np.all(rm == 3.0) and np.all(rv == 4.0)


def test_read_only_running_stats_or_out_are_refused():
    rm, rv = np.zeros(C), np.ones(C)
    rm.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean is read-only"):
        nn.batch_norm(X, running_mean=rm, running_var=rv)
    out = np.empty_like(X)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        nn.layer_norm(X, out=out)


class _ForeignDeviceArray:
    """Stands for a CuPy array or PyTorch CUDA tensor (only the interface)."""

    __cuda_array_interface__ = {
        "shape": (3, 4), "typestr": "<f4", "data": (0, False), "version": 3, "strides": None
    }


def test_mixing_host_and_device_arrays_is_a_type_error():
    with pytest.raises(TypeError, match="weight is a device array but x is a NumPy array"):
        nn.layer_norm(X, weight=_ForeignDeviceArray())
    with pytest.raises(TypeError, match="dy is a device array but x is a NumPy array"):
        nn.batch_norm_backward(_ForeignDeviceArray(), X, nn.batch_norm(X)[1])


def test_a_device_array_without_a_gpu_says_so():
    from numba import cuda

    if cuda.is_available():  # pragma: no cover - only on a GPU machine
        pytest.skip("a GPU is available: tests/cuda covers device arrays")
    with pytest.raises(RuntimeError, match="x is a device array, but Numba finds no usable CUDA GPU"):
        nn.layer_norm(_ForeignDeviceArray())
