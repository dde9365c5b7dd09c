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


# --------------------------------------------------------- fused residual add ---

RESIDUAL_SHAPES = [((37, 130), -1), ((7, 2064), -1), ((3, 4, 50), (-2, -1)), ((300, 256), -1)]


@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis", RESIDUAL_SHAPES)
def test_fused_residual_add_equals_pytorch_composite(norm, dtype, shape, axis, rng):
    # (7, 2064): rows long enough for the four-row backward loop, and a block
    # of three; (300, 256): the parallel builds.
    x, r, dy, dh = (normal(rng, shape, dtype) for _ in range(4))
    pshape = shape[-1:] if axis == -1 else shape[-2:]
    w, b = normal(rng, pshape, dtype), normal(rng, pshape, dtype)
    eps = float(np.finfo(dtype).eps)
    if norm == "layer":
        y, saved, h = nn.layer_norm(x, weight=w, bias=b, axis=axis, residual=r)
        dx, dw, db = nn.layer_norm_backward(dy, h, saved, weight=w, axis=axis, dh=dh)
    else:
        y, saved, h = nn.rms_norm(x, weight=w, axis=axis, residual=r)
        dx, dw = nn.rms_norm_backward(dy, h, saved, weight=w, axis=axis, dh=dh)
    assert h.dtype == y.dtype == dx.dtype == dtype
    np.testing.assert_array_equal(h, x + r)  # the sum in x's dtype, as NumPy's
    xt, rt, wt, bt = _t(x, True), _t(r, True), _t(w, True), _t(b, True)
    ht = xt + rt
    if norm == "layer":
        yt = F.layer_norm(ht, pshape, wt, bt)
    else:
        yt = F.rms_norm(ht, pshape, wt, eps=eps)
    ((yt * _t(dy)).sum() + (ht * _t(dh)).sum()).backward()
    assert_close(y, yt.detach().numpy(), TOL[dtype])
    assert_close(dx, xt.grad.numpy(), TOL[dtype] * 10, "dx = dh")
    assert_close(dx, rt.grad.numpy(), TOL[dtype] * 10, "d residual")
    assert_close(dw, wt.grad.numpy(), TOL[dtype] * 10, "dweight")
    if norm == "layer":
        assert_close(db, bt.grad.numpy(), TOL[dtype] * 10, "dbias")


def test_residual_without_dh_is_the_plain_backward_of_h(rng):
    x, r, dy = (normal(rng, (9, 40), np.float32) for _ in range(3))
    y, saved, h = nn.layer_norm(x, residual=r)
    y2, saved2 = nn.layer_norm(x + r)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(
        nn.layer_norm_backward(dy, h, saved)[0], nn.layer_norm_backward(dy, h, saved2)[0]
    )


def test_residual_of_float16_adds_in_float16_then_normalizes(rng):
    x, r = normal(rng, (5, 33), np.float16), normal(rng, (5, 33), np.float16)
    y, saved, h = nn.rms_norm(x, residual=r)
    assert h.dtype == y.dtype == np.float16
    np.testing.assert_array_equal(h, x + r)
    np.testing.assert_array_equal(y, nn.rms_norm(x + r)[0])


def test_residual_and_dh_are_checked(rng):
    x = normal(rng, (4, 8), np.float32)
    with pytest.raises(ValueError, match="residual must have the shape"):
        nn.layer_norm(x, residual=np.zeros((4, 7), np.float32))
    with pytest.raises(TypeError, match="residual must have dtype float32"):
        nn.layer_norm(x, residual=np.zeros((4, 8)))
    y, saved, h = nn.layer_norm(x, residual=x)
    with pytest.raises(ValueError, match="dh must have the shape"):
        nn.layer_norm_backward(x, h, saved, dh=np.zeros((4, 7), np.float32))


@pytest.mark.parametrize("layer", ["LayerNorm", "RMSNorm"])
def test_row_norm_layers_fuse_the_residual(layer, rng):
    x, r, dy, dh = (normal(rng, (6, 5, 8), np.float64) for _ in range(4))
    a = getattr(nn, layer)(8, dtype=np.float64)
    b = getattr(nn, layer)(8, dtype=np.float64)
    y, h = a(x, residual=r)
    np.testing.assert_array_equal(h, x + r)
    assert_close(y, b(x + r), 1e-15)
    assert_close(a.backward(dy, dh=dh), b.backward(dy) + dh, 1e-14)
    assert_close(a.grads["weight"], b.grads["weight"], 1e-14)
