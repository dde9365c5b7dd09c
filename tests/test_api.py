"""The API a PyTorch or Flax user meets: keyword-only parameters, defaults,
instance norm's running statistics, callable layers, state-dict keys, empty
batches in eval mode. Each is checked against PyTorch 2.13."""

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

X = np.linspace(-1.0, 2.0, 2 * 4 * 3 * 3).reshape(2, 4, 3, 3)
C4 = np.linspace(0.5, 1.5, 4)


def _t(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


# ---------------------------------------------------- keyword-only parameters ---

POSITIONAL_CALLS = {
    # PyTorch's order: F.batch_norm(x, running_mean, running_var, ...)
    "batch_norm": lambda: nn.batch_norm(X, np.zeros(4), np.ones(4)),
    "instance_norm": lambda: nn.instance_norm(X, np.zeros(4), np.ones(4)),
    "layer_norm": lambda: nn.layer_norm(X, np.ones(3)),
    "rms_norm": lambda: nn.rms_norm(X, np.ones(3)),
    "group_norm": lambda: nn.group_norm(X, 2, C4, C4),
    "layer_norm_backward": lambda: nn.layer_norm_backward(X, X, nn.layer_norm(X)[1], np.ones(3)),
    "rms_norm_backward": lambda: nn.rms_norm_backward(X, X, nn.rms_norm(X)[1], np.ones(3)),
    "batch_norm_backward": lambda: nn.batch_norm_backward(X, X, nn.batch_norm(X)[1], C4),
    "group_norm_backward": lambda: nn.group_norm_backward(X, X, nn.group_norm(X, 2)[1], C4),
    "instance_norm_backward": lambda: nn.instance_norm_backward(
        X, X, nn.instance_norm(X)[1], C4
    ),
}


@pytest.mark.parametrize("name", sorted(POSITIONAL_CALLS))
def test_parameters_passed_by_position_are_a_type_error(name):
    with pytest.raises(TypeError, match="positional argument"):
        POSITIONAL_CALLS[name]()


def test_weight_norm_keeps_v_and_g_positional():
    w, _ = nn.weight_norm(np.ones((2, 3)), np.ones(2))
    assert_close(w, np.full((2, 3), 1 / np.sqrt(3)), 1e-15)


# ------------------------------------------------------ rms_norm's default eps ---


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rms_norm_default_eps_is_the_dtype_epsilon_as_pytorch(dtype):
    x = np.array([[1e-3, -2e-3, 5e-4]], dtype)
    y, saved = nn.rms_norm(x)
    expected = F.rms_norm(torch.from_numpy(x), (3,)).numpy()
    assert_close(y, expected, 1e-6 if dtype == np.float32 else 1e-14)
    ms = np.mean(x.astype(np.float64) ** 2)
    assert_close(saved.rstd, [1 / np.sqrt(ms + np.finfo(dtype).eps)], 1e-12)
    assert_close(nn.RMSNorm(3, elementwise_affine=False, dtype=dtype)(x), y, 0)


def test_layer_norm_still_needs_a_number_for_eps():
    with pytest.raises(TypeError, match="eps"):
        nn.layer_norm(X, eps=None)


# --------------------------------------------- instance norm running statistics ---


@given(shapes(3, 4, 2, 5), seeds, dtypes, st.floats(0.0, 1.0), st.booleans())
def test_instance_norm_running_statistics_as_pytorch(shape, seed, dtype, momentum, training):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x, dy = normal(rng, shape, dtype, loc=1.5), normal(rng, shape, dtype)
    w, b = normal(rng, (c,), dtype), normal(rng, (c,), dtype)
    rm, rv = normal(rng, (c,), dtype), rng.uniform(0.5, 2, c).astype(dtype)
    rmt, rvt = _t(rm), _t(rv)
    y, saved = nn.instance_norm(x, weight=w, bias=b, training=training, running_mean=rm,
                                running_var=rv, momentum=momentum)
    xt, wt, bt = _t(x, True), _t(w, True), _t(b, True)
    yt = F.instance_norm(xt, rmt, rvt, wt, bt, use_input_stats=training, momentum=momentum)
    assert_close(y, yt.detach().numpy(), TOL[dtype])
    assert_close(rm, rmt.numpy(), TOL[dtype], "running_mean")
    assert_close(rv, rvt.numpy(), TOL[dtype], "running_var")
    yt.backward(_t(dy))
    ours = nn.instance_norm_backward(dy, x, saved, weight=w)
    for a, t in zip(ours, (xt, wt, bt)):
        assert_close(a, t.grad.numpy(), TOL[dtype] * 10)


def test_instance_norm_layer_tracks_running_statistics_as_pytorch():
    rng = np.random.default_rng(3)
    ours = nn.InstanceNorm(4, affine=True, track_running_stats=True, dtype=np.float64)
    theirs = torch.nn.InstanceNorm2d(4, affine=True, track_running_stats=True).double()
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    with torch.no_grad():
        theirs.weight.copy_(torch.linspace(0.5, 2, 4))
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    for _ in range(3):
        x = rng.standard_normal((5, 4, 3, 6)) * 2 + 1
        assert_close(ours(x), theirs(_t(x)).detach().numpy(), 1e-10)
    for key, value in theirs.state_dict().items():
        assert_close(ours.state_dict()[key], value.numpy(), 1e-12, key)
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((2, 4, 3, 6))
    xt = _t(x, True)
    yt = theirs(xt)
    assert_close(ours(x), yt.detach().numpy(), 1e-10)
    dy = rng.standard_normal(x.shape)
    yt.backward(_t(dy))
    assert_close(ours.backward(dy), xt.grad.numpy(), 1e-10)
    assert_close(ours.grads["weight"], theirs.weight.grad.numpy(), 1e-10)


def test_instance_norm_layer_without_momentum_leaves_running_statistics_as_pytorch():
    ours = nn.InstanceNorm(4, momentum=None, track_running_stats=True)
    ours(X.astype(np.float32))
    assert_close(ours.running_mean, np.zeros(4), 0)
    assert_close(ours.running_var, np.ones(4), 0)
    assert int(ours.num_batches_tracked) == 0


def test_instance_norm_eval_needs_running_statistics():
    with pytest.raises(ValueError, match="running_mean and running_var"):
        nn.instance_norm(X, training=False)
    with pytest.raises(ValueError, match="momentum"):
        nn.instance_norm(X, running_mean=np.zeros(4), running_var=np.ones(4), momentum=1.5)


# ------------------------------------------------------------- callable layers ---

LAYERS = {
    "BatchNorm": lambda: nn.BatchNorm(4, dtype=np.float64),
    "InstanceNorm": lambda: nn.InstanceNorm(4, affine=True, dtype=np.float64),
    "GroupNorm": lambda: nn.GroupNorm(2, 4, dtype=np.float64),
    "LayerNorm": lambda: nn.LayerNorm((3, 3), dtype=np.float64),
    "RMSNorm": lambda: nn.RMSNorm(3, dtype=np.float64),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layers_are_callable_as_modules(name):
    a, b = LAYERS[name](), LAYERS[name]()
    y = a(X)
    assert_close(y, b.forward(X), 0)
    assert_close(a.backward(np.ones_like(y)), b.backward(np.ones_like(y)), 0)


def test_weight_norm_layer_is_callable():
    layer = nn.WeightNorm(np.arange(6.0).reshape(2, 3))
    assert_close(layer(), np.arange(6.0).reshape(2, 3), 1e-15)


# -------------------------------------------------- WeightNorm state-dict keys ---


@pytest.mark.parametrize("prefix", ["parametrizations.weight.", ""])
def test_weight_norm_loads_pytorch_parametrization_keys(prefix):
    torch.manual_seed(0)
    module = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(5, 4).double())
    state = {
        prefix + key.rsplit(".", 1)[1]: value.detach().numpy()
        for key, value in module.state_dict().items()
        if key.startswith("parametrizations.weight.")
    }
    layer = nn.WeightNorm(np.zeros((4, 5)))
    layer.load_state_dict(state)
    assert_close(layer(), module.weight.detach().numpy(), 1e-12)


def test_weight_norm_refuses_a_parameter_given_twice():
    layer = nn.WeightNorm(np.ones((2, 3)))
    state = {"weight_g": np.ones((2, 1)), "original0": np.ones((2, 1)), "weight_v": np.ones((2, 3))}
    with pytest.raises(ValueError, match="weight_g twice"):
        layer.load_state_dict(state)


# ------------------------------------------------- empty batches in eval mode ---


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_an_empty_batch_in_eval_mode_gives_an_empty_result(norm):
    f = nn.batch_norm if norm == "batch" else nn.instance_norm
    x = np.zeros((0, 4, 3, 3), np.float32)
    y, saved = f(x, weight=C4.astype(np.float32), running_mean=np.zeros(4, np.float32),
                 running_var=np.ones(4, np.float32), training=False)
    assert y.shape == x.shape and y.dtype == np.float32
    back = nn.batch_norm_backward if norm == "batch" else nn.instance_norm_backward
    dx, dw, db = back(x, x, saved, weight=C4.astype(np.float32))
    assert dx.shape == x.shape
    assert_close(dw, np.zeros(4), 0)
    assert db is None
    layer = nn.BatchNorm(4) if norm == "batch" else nn.InstanceNorm(4, track_running_stats=True)
    assert layer.eval()(x).shape == x.shape


def test_an_empty_batch_in_training_mode_is_still_refused():
    with pytest.raises(ValueError, match="empty"):
        nn.batch_norm(np.zeros((0, 4, 3, 3)))
