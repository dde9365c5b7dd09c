"""Stateful layers against PyTorch 2.13 modules: state dicts, several training
steps, eval mode; plus precise batch statistics."""

import warnings

import numpy as np
import pytest

import numbanorm as nn
from helpers import normal

torch = pytest.importorskip("torch")
tnn = torch.nn


def _state_numpy(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _perturb(module, rng):
    """Non-trivial parameters and running statistics, so the test can fail."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name == "num_batches_tracked":
                t.fill_(3)
            elif t.is_floating_point():
                t.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, t.shape)))


CASES = {
    "batch2d": (lambda: tnn.BatchNorm2d(5, dtype=torch.float64),
                lambda: nn.BatchNorm(5, dtype=np.float64), (6, 5, 4, 3)),
    "batch1d_cumulative": (lambda: tnn.BatchNorm1d(5, momentum=None, dtype=torch.float64),
                           lambda: nn.BatchNorm(5, momentum=None, dtype=np.float64), (7, 5)),
    "batch_untracked": (lambda: tnn.BatchNorm2d(5, track_running_stats=False, dtype=torch.float64),
                        lambda: nn.BatchNorm(5, track_running_stats=False, dtype=np.float64), (6, 5, 4, 3)),
    "batch_no_affine": (lambda: tnn.BatchNorm2d(5, affine=False, dtype=torch.float64),
                        lambda: nn.BatchNorm(5, affine=False, dtype=np.float64), (6, 5, 4, 3)),
    "layer": (lambda: tnn.LayerNorm((4, 3), dtype=torch.float64),
              lambda: nn.LayerNorm((4, 3), dtype=np.float64), (6, 5, 4, 3)),
    "group": (lambda: tnn.GroupNorm(2, 6, dtype=torch.float64),
              lambda: nn.GroupNorm(2, 6, dtype=np.float64), (4, 6, 3, 3)),
    "instance": (lambda: tnn.InstanceNorm2d(5, affine=True, dtype=torch.float64),
                 lambda: nn.InstanceNorm(5, affine=True, dtype=np.float64), (4, 5, 3, 3)),
    "rms": (lambda: tnn.RMSNorm(7, dtype=torch.float64),
            lambda: nn.RMSNorm(7, dtype=np.float64), (5, 3, 7)),
}


@pytest.mark.parametrize("name", CASES)
def test_layer_matches_pytorch_over_training_steps_and_eval(name):
    rng = np.random.default_rng(0)
    make_torch, make_ours, shape = CASES[name]
    theirs, ours = make_torch(), make_ours()
    _perturb(theirs, rng)
    state = _state_numpy(theirs)
    assert set(state) == set(ours.state_dict())
    ours.load_state_dict(state)
    lr = 0.1
    for step in range(4):
        x = normal(rng, shape, loc=step, scale=1 + step)
        dy = normal(rng, shape)
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt)
        yt.backward(torch.tensor(dy))
        y = ours.forward(x)
        dx = ours.backward(dy)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
        for pname, p in theirs.named_parameters():
            np.testing.assert_allclose(ours.grads[pname], p.grad.numpy(), rtol=1e-9, atol=1e-12)
            with torch.no_grad():  # the same plain SGD step on both
                p -= lr * p.grad
            p.grad = None
            ours.params[pname][...] -= lr * ours.grads[pname]
        for key, value in _state_numpy(theirs).items():
            np.testing.assert_allclose(ours.state_dict()[key], value, rtol=1e-12, err_msg=key)
    theirs.eval()
    ours.eval()
    x = normal(rng, shape, loc=0.5)
    with torch.no_grad():
        expected = theirs(torch.tensor(x)).numpy()
    np.testing.assert_allclose(ours.forward(x), expected, rtol=1e-10, atol=1e-12)


def test_weight_norm_matches_pytorch_weight_norm():
    rng = np.random.default_rng(1)
    lin = tnn.Linear(6, 4, dtype=torch.float64)
    with warnings.catch_warnings():  # the weight_g/weight_v API is deprecated in torch
        warnings.simplefilter("ignore", FutureWarning)
        lin = torch.nn.utils.weight_norm(lin, dim=0)
    with torch.no_grad():
        lin.weight_g.copy_(torch.from_numpy(rng.uniform(0.5, 2, (4, 1))))
    ours = nn.WeightNorm(np.ones((4, 6)), axis=0)
    state = {k: v for k, v in _state_numpy(lin).items() if k.startswith("weight_")}
    ours.load_state_dict(state)
    for _ in range(3):
        x = normal(rng, (5, 6))
        dy = normal(rng, (5, 4))
        out = lin(torch.tensor(x))
        out.backward(torch.tensor(dy))
        w = ours.forward()
        np.testing.assert_allclose(x @ w.T + lin.bias.detach().numpy(), out.detach().numpy(), rtol=1e-12)
        ours.backward(dy.T @ x)  # dL/dw of y = x @ w.T
        np.testing.assert_allclose(ours.grads["weight_g"], lin.weight_g.grad.numpy(), rtol=1e-10)
        np.testing.assert_allclose(ours.grads["weight_v"], lin.weight_v.grad.numpy(), rtol=1e-10)
        with torch.no_grad():
            for p in (lin.weight_g, lin.weight_v):
                p -= 0.1 * p.grad
                p.grad = None
            lin.bias.grad = None
        ours.weight_g -= 0.1 * ours.grads["weight_g"]
        ours.weight_v -= 0.1 * ours.grads["weight_v"]


def test_weight_norm_starts_at_the_given_weight(rng):
    w0 = normal(rng, (3, 4, 2))
    np.testing.assert_allclose(nn.WeightNorm(w0, axis=0).forward(), w0, rtol=1e-12)
    np.testing.assert_allclose(nn.WeightNorm(w0, axis=None).forward(), w0, rtol=1e-12)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"weight": np.ones(5)}, "missing keys"),
        ({"weight": np.ones(5), "bias": np.ones(5), "running_mean": np.ones(5),
          "running_var": np.ones(5), "num_batches_tracked": np.array(1), "extra": np.ones(1)},
         "unexpected keys \\['extra'\\]"),
        ({"weight": np.ones(4), "bias": np.ones(5), "running_mean": np.ones(5),
          "running_var": np.ones(5), "num_batches_tracked": np.array(1)},
         "'weight' has shape \\(4,\\), expected \\(5,\\)"),
    ],
)
def test_bad_state_dict_is_refused_and_changes_nothing(bad, match):
    layer = nn.BatchNorm(5)
    before = layer.state_dict()
    with pytest.raises(ValueError, match=match):
        layer.load_state_dict(bad)
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_bad_batch_changes_no_state():
    layer = nn.BatchNorm(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer.forward(np.ones((1, 3)))
    with pytest.raises(ValueError, match="weight must have shape"):
        layer.forward(np.ones((4, 5)))
    assert int(layer.num_batches_tracked) == 0
    np.testing.assert_array_equal(layer.running_mean, 0)


def test_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.LayerNorm(3).backward(np.ones((2, 3)))


def test_precise_batch_stats_equal_the_statistics_of_all_batches(rng):
    layer = nn.BatchNorm(4, dtype=np.float64, axis=-1)
    batches = [normal(rng, (n, 3, 4), loc=1e3, scale=2.0) for n in (1, 5, 2, 7)]
    for b in batches[1:]:
        layer.forward(b)  # noisy running averages
    nn.precise_batch_norm_stats(layer, batches)
    everything = np.concatenate(batches).reshape(-1, 4)
    np.testing.assert_allclose(layer.running_mean, everything.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(layer.running_var, everything.var(axis=0, ddof=1), rtol=1e-10)
