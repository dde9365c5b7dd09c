"""Runners: a repeated call with the same signature skips the checks its
signature decides (numbanorm._layout), and must give what a first call gives,
read its arrays anew every time, and still check what a signature cannot
cover."""

import numpy as np
import pytest

import numbanorm as nn
import reference as ref
from helpers import RTOL, assert_close, normal
from numbanorm import _layout
from numbanorm._cases import calls

SHAPE = (6, 8, 5, 4)
C = SHAPE[1]

# Norm, layout and options of the shared table (numbanorm._cases).
CASES = {
    "layer": ("layer", "rows", {}),
    "rms": ("rms", "rows", {}),
    "group": ("group", "nchw", {"groups": 4}),
    "group_nhwc": ("group", "nhwc", {"groups": 2}),
    "instance": ("instance", "nchw", {}),
    "weight": ("weight", "rows", {}),
}


def _calls(name, x, w, b):
    norm, layout, options = CASES[name]
    return calls(norm, layout, x.shape, w, b, **options)


def _run(name, x, dy, w, b):
    forward, backward = _calls(name, x, w, b)
    y, saved = forward(x)
    stats = [s for s in saved[:2] if s is not None]
    return [y, *stats, *[g for g in backward(dy, x, saved) if g is not None]]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_repeated_call_reads_new_contents_and_matches_the_full_path(name, dtype, rng):
    x, dy = normal(rng, SHAPE, dtype, loc=2.0), normal(rng, SHAPE, dtype)
    w, b = normal(rng, (C,), dtype), normal(rng, (C,), dtype)
    _layout.runners.clear()
    _run(name, x, dy, w, b)  # keeps the signature's runners
    assert _layout.runners
    # New contents in the same arrays, and new arrays of the same signature:
    # the runners must read them, not anything from the first call.
    x[...] = normal(rng, SHAPE, dtype, loc=-1.0)
    w2, b2 = normal(rng, (C,), dtype), normal(rng, (C,), dtype)
    got = _run(name, x, dy, w2, b2)
    # The full path: the same values in F-order arrays, which get no runner.
    full = _run(name, np.asfortranarray(x), np.asfortranarray(dy), w2, b2)
    assert len(got) == len(full)
    for g, f in zip(got, full):
        assert g.dtype == f.dtype and g.shape == f.shape
        assert g.tobytes() == f.tobytes()


def test_a_repeated_call_matches_the_float64_reference(rng):
    x = normal(rng, SHAPE, np.float32, loc=3.0)
    w, b = normal(rng, (C,), np.float32), normal(rng, (C,), np.float32)
    for _ in range(2):
        y, _ = nn.group_norm(x, 4, weight=w, bias=b)
        assert_close(y, ref.group_norm(x, 4, w, b), RTOL[np.float32], "y")
        w = w * 2.0  # a new weight of the same signature
        b = b - 1.0


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda x, w: nn.layer_norm(x, weight=w[: x.shape[-1]], eps=-1.0), ValueError, "eps must be"),
        (lambda x, w: nn.rms_norm(x, eps=float("nan")), ValueError, "eps must be"),
        (lambda x, w: nn.group_norm(x, 4, weight=w, eps=-1.0), ValueError, "eps must be"),
        (lambda x, w: nn.instance_norm(x, weight=w, eps="1"), TypeError, "eps must be"),
        (lambda x, w: nn.group_norm(x, 4.0, weight=w), TypeError, "num_groups must be an int"),
        (lambda x, w: nn.group_norm(np.ones(SHAPE), True, weight=np.ones(C)), TypeError, "num_groups"),
        (lambda x, w: nn.group_norm(x, 4, weight=w, axis=1.0), TypeError, "axis must be an int"),
        (lambda x, w: nn.weight_norm(x, w[: x.shape[0]], axis=0.0), TypeError, "axis must be an int"),
        (lambda x, w: nn.layer_norm(x, weight=list(w[: x.shape[-1]])), None, None),
    ],
    ids=["ln eps", "rms eps", "gn eps", "in eps", "float groups", "bool groups", "float axis",
         "wn float axis", "list weight"],
)
def test_a_signature_seen_before_still_checks_what_it_cannot_cover(call, exc, match, rng):
    x = normal(rng, SHAPE, np.float32)
    w = normal(rng, (C,), np.float32)
    for warm in (
        lambda: nn.layer_norm(x, weight=w[: x.shape[-1]]),
        lambda: nn.rms_norm(x),
        lambda: nn.group_norm(x, 4, weight=w),
        lambda: nn.group_norm(np.ones(SHAPE), 1, weight=np.ones(C)),
        lambda: nn.instance_norm(x, weight=w),
        lambda: nn.weight_norm(x, w[: x.shape[0]]),
    ):
        warm()
    if exc is None:  # a list is converted on the full path, and gets no runner
        y, _ = call(x, w)
        expected, _ = nn.layer_norm(x, weight=w[: x.shape[-1]])
        assert y.tobytes() == expected.tobytes()
        return
    with pytest.raises(exc, match=match):
        call(x, w)


@pytest.mark.parametrize("name", CASES)
def test_saved_statistics_are_checked_on_every_call(name, rng):
    x, dy = normal(rng, SHAPE, np.float32), normal(rng, SHAPE, np.float32)
    w, b = normal(rng, (C,), np.float32), normal(rng, (C,), np.float32)
    forward, backward = _calls(name, x, w, b)
    _, saved = forward(x)
    backward(dy, x, saved)  # the runner exists now
    rstd = saved.rstd
    wrong = saved._replace(rstd=rstd.reshape(-1)[:-1])
    with pytest.raises(ValueError, match="saved"):
        backward(dy, x, wrong)
    if saved.mean is not None:
        wrong_mean = saved._replace(mean=saved.mean.reshape(-1)[:-1])
        with pytest.raises(ValueError, match="saved.mean"):
            backward(dy, x, wrong_mean)


def test_the_runners_kept_are_bounded(rng):
    _layout.runners.clear()
    for length in range(1, _layout.RUNNERS_MAX + 20):
        nn.layer_norm(np.ones((2, length), np.float32))
    assert len(_layout.runners) == _layout.RUNNERS_MAX
    # The oldest went first: the last shape's runner is kept.
    y, _ = nn.layer_norm(np.arange(2.0 * 3).reshape(2, 3))
    assert_close(y, ref.layer_norm(np.arange(2.0 * 3).reshape(2, 3)), RTOL[np.float64], "y")
