"""The array contract: determinism, immutability, strides, NaN confinement, accuracy."""

import numba
import numpy as np
import pytest

import numbanorm as nn
import reference as ref
from helpers import assert_close, normal
from numbanorm import _layout
from numbanorm._cases import calls
from numbanorm._cpu import compile as _jit

# Shapes large enough to split into many tasks and partial-sum blocks.
# Each case is a norm and layout of the shared table (numbanorm._cases).
CASES = {
    "layer": ("layer", "rows"),
    "rms": ("rms", "rows"),
    "batch_nchw": ("batch", "nchw"),
    "batch_nhwc": ("batch", "nhwc"),
    "group_nchw": ("group", "nchw"),
    "group_nhwc": ("group", "nhwc"),
    "instance": ("instance", "nchw"),
}
SHAPE = (9, 16, 37, 40)


def _run(name, x, dy, w, b):
    forward, backward = calls(*CASES[name], x.shape, w, b)
    y, saved = forward(x)
    return (y, *[s for s in saved[:2] if s is not None], *backward(dy, x, saved))



@pytest.fixture
def build(monkeypatch):
    """``build("serial")`` or ``build("parallel")``: every kernel call runs that
    build, whatever the input's size and the thread pool's wait policy (the
    runners go too: weight norm's small forward picks its build once, when
    its runner is made)."""

    def force(which):
        monkeypatch.setattr(_jit.Kernel, "for_size", lambda self, elements: getattr(self, which))
        _layout.runners.clear()

    return force


@pytest.mark.parametrize("shape", [(300, 7, 9), (37, 4099)])  # one row per task; several
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_norm_serial_and_parallel_builds_give_bitwise_identical_results(
    shape, dtype, rng, build
):
    v, dw = normal(rng, shape, dtype, loc=0.3), normal(rng, shape, dtype)
    g = normal(rng, shape[:1], dtype)
    results = []
    for which in ("serial", "parallel"):
        build(which)
        w, s = nn.weight_norm(v, g)
        results.append((w, s.rstd, *nn.weight_norm_backward(dw, v, g, s)))
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_serial_and_parallel_builds_give_bitwise_identical_results(name, dtype, rng, build):
    # Kernel.for_size may pick either build for one shape (it weighs the pool's
    # wake-up cost), so both must compute exactly the same thing.
    x = normal(rng, SHAPE, dtype, loc=5.0)
    dy = normal(rng, SHAPE, dtype)
    w, b = normal(rng, (64,)), normal(rng, (64,))
    build("serial")
    serial = _run(name, x, dy, w, b)
    build("parallel")
    parallel = _run(name, x, dy, w, b)
    for a, b_ in zip(serial, parallel):
        assert a.tobytes() == b_.tobytes()


def test_small_inputs_run_the_serial_build_and_large_ones_the_parallel_one():
    from numbanorm._cpu import rows

    kernel = rows.row_forward
    assert kernel.for_size(_jit.SERIAL_MAX_ELEMENTS - 1) is kernel.serial
    if _jit.threading_layer() != "workqueue":
        assert kernel.for_size(_jit.SERIAL_MAX_ELEMENTS) is kernel.parallel


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_are_bitwise_identical_for_any_thread_count(name, dtype, rng, build):
    build("parallel")
    x = normal(rng, SHAPE, dtype, loc=5.0)
    dy = normal(rng, SHAPE, dtype)
    w, b = normal(rng, (64,)), normal(rng, (64,))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _run(name, x, dy, w, b)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = _run(name, x, dy, w, b)
        again = _run(name, x, dy, w, b)
    finally:
        numba.set_num_threads(before)
    for a, b_, c in zip(one, many, again):
        assert a.tobytes() == b_.tobytes() == c.tobytes()


def test_weight_norm_is_thread_count_invariant(rng):
    v, dw, g = normal(rng, (300, 7, 9)), normal(rng, (300, 7, 9)), normal(rng, (300,))
    numba.set_num_threads(1)
    w1, s1 = nn.weight_norm(v, g)
    d1 = nn.weight_norm_backward(dw, v, g, s1)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    w2, s2 = nn.weight_norm(v, g)
    d2 = nn.weight_norm_backward(dw, v, g, s2)
    assert w1.tobytes() == w2.tobytes()
    assert d1[0].tobytes() == d2[0].tobytes() and d1[1].tobytes() == d2[1].tobytes()


@pytest.mark.parametrize("name", CASES)
def test_inputs_are_never_modified_and_read_only_inputs_work(name, rng):
    x = normal(rng, (4, 8, 5, 6), np.float32)
    dy = normal(rng, x.shape, np.float32)
    w, b = normal(rng, (8,)), normal(rng, (8,))
    copies = [a.copy() for a in (x, dy, w, b)]
    expected = _run(name, x, dy, w, b)
    for a in (x, dy, w, b):
        a.flags.writeable = False
    got = _run(name, x, dy, w, b)
    for a, c in zip((x, dy, w, b), copies):
        np.testing.assert_array_equal(a, c)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(
    "make_view",
    [
        lambda a: a[:, :, ::2, :],
        lambda a: a[::-1, :, :, ::-1],
        lambda a: np.asfortranarray(a),
        lambda a: a.transpose(0, 1, 3, 2),
    ],
    ids=["step", "reversed", "fortran", "transposed"],
)
def test_strided_input_equals_contiguous_input(name, make_view, rng):
    base = normal(rng, (4, 8, 10, 6), np.float64, loc=1.0)
    dbase = normal(rng, base.shape)
    w, b = normal(rng, (10,)), normal(rng, (10,))
    x, dy = make_view(base), make_view(dbase)
    assert not (x.flags.c_contiguous and x.base is None)
    got = _run(name, x, dy, w, b)
    expected = _run(name, np.ascontiguousarray(x), np.ascontiguousarray(dy), w, b)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_layer_norm_over_leading_axes_of_a_strided_array(rng):
    x = normal(rng, (6, 5, 8))[:, ::2, ::-1]
    y, _ = nn.layer_norm(x, axis=(0, 2))
    assert_close(y, ref.layer_norm(x, axis=(0, 2)), 1e-12)


def _nan_where(a, index):
    a = a.copy()
    a[index] = np.nan
    return a


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_stay_in_their_row_channel_or_group(bad, rng):
    x = normal(rng, (4, 8, 5, 6))
    dy = normal(rng, x.shape)
    w, b = normal(rng, (8,)), normal(rng, (8,))
    xb = x.copy()
    xb[2, 3, 1, 4] = bad
    # layer norm over the last axis: only row (2, 3, 1) is affected
    y, s = nn.layer_norm(xb, weight=w[:6], bias=b[:6])
    y0, _ = nn.layer_norm(x, weight=w[:6], bias=b[:6])
    dx = nn.layer_norm_backward(dy, xb, s, weight=w[:6])[0]
    dx0 = nn.layer_norm_backward(dy, x, nn.layer_norm(x, weight=w[:6], bias=b[:6])[1], weight=w[:6])[0]
    mask = np.zeros(x.shape, bool)
    mask[2, 3, 1] = True
    assert np.isnan(y[mask]).any()
    np.testing.assert_array_equal(y[~mask], y0[~mask])
    np.testing.assert_array_equal(dx[~mask], dx0[~mask])
    # batch norm: only channel 3
    for axis, index in [(1, (slice(None), 3)), (-1, (..., 4))]:
        y, s = nn.batch_norm(xb, axis=axis)
        y0, s0 = nn.batch_norm(x, axis=axis)
        dx = nn.batch_norm_backward(dy, xb, s, axis=axis)[0]
        dx0 = nn.batch_norm_backward(dy, x, s0, axis=axis)[0]
        mask = np.zeros(x.shape, bool)
        mask[index] = True
        assert np.isnan(y[mask]).any()
        np.testing.assert_array_equal(y[~mask], y0[~mask])
        np.testing.assert_array_equal(dx[~mask], dx0[~mask])
    # group norm, 4 groups of 2 channels: only (sample 2, group 1)
    y, s = nn.group_norm(xb, 4)
    y0, s0 = nn.group_norm(x, 4)
    dx = nn.group_norm_backward(dy, xb, s)[0]
    dx0 = nn.group_norm_backward(dy, x, s0)[0]
    mask = np.zeros(x.shape, bool)
    mask[2, 2:4] = True
    assert np.isnan(y[mask]).any()
    np.testing.assert_array_equal(y[~mask], y0[~mask])
    np.testing.assert_array_equal(dx[~mask], dx0[~mask])


@pytest.mark.parametrize("offset", [1e2, 1e4, 1e6])
def test_float32_statistics_are_accurate_at_large_offsets(offset, rng):
    """DESIGN: float32 N(offset, 1) normalizes to within 2e-6 of float64."""
    x = (offset + rng.standard_normal((64, 1024))).astype(np.float32)
    x4 = (offset + rng.standard_normal((8, 16, 32, 32))).astype(np.float32)
    checks = [
        (nn.layer_norm(x)[0], ref.layer_norm(x)),
        (nn.batch_norm(x4)[0], ref.batch_norm(x4)[0]),
        (nn.batch_norm(np.moveaxis(x4, 1, -1).copy(), axis=-1)[0],
         ref.batch_norm(np.moveaxis(x4, 1, -1), axis=-1)[0]),
        (nn.group_norm(x4, 4)[0], ref.group_norm(x4, 4)),
        (nn.instance_norm(x4)[0], ref.instance_norm(x4)),
    ]
    for got, expected in checks:
        assert np.abs(got - expected).max() <= 2e-6


def test_empty_batch_gives_empty_output(rng):
    x = np.zeros((0, 5), np.float32)
    y, s = nn.layer_norm(x)
    assert y.shape == (0, 5) and s.mean.shape == (0,)
    y, s = nn.group_norm(np.zeros((0, 4, 3)), 2)
    assert y.shape == (0, 4, 3) and s.mean.shape == (0, 2)


def test_serial_and_parallel_builds_never_load_each_others_cached_code():
    """Numba's cache key ignores ``parallel``: the two builds of a kernel must be
    cached under different names, or a small input loaded from the cache could
    run the parallel code (and start the thread pool) instead of the serial one."""
    import subprocess
    import sys

    both = (
        "import numpy as np; from numbanorm._cpu import rows\n"
        "x = np.ones((4, 8), np.float32); w = np.ones(8, np.float32)\n"
        "args = (x, w, w, 1e-5, True, np.empty_like(x), np.empty(4), np.empty(4))\n"
        "rows.row_forward.parallel(*args); rows.row_forward.serial(*args)\n"
    )
    only_serial = (
        "import numpy as np, numba; from numbanorm._cpu import rows\n"
        "x = np.ones((4, 8), np.float32); w = np.ones(8, np.float32)\n"
        "rows.row_forward.serial(x, w, w, 1e-5, True, np.empty_like(x), np.empty(4), np.empty(4))\n"
        "try:\n    numba.threading_layer(); print('parallel code ran')\n"
        "except ValueError:\n    print('serial only')\n"
    )
    subprocess.run([sys.executable, "-c", both], check=True)  # both builds now cached
    out = subprocess.run(
        [sys.executable, "-c", only_serial], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert out == "serial only"


_HASH_GROUP_NORM = """
import hashlib, numpy as np, numbanorm as nn
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 7, 7, 512)).astype(np.float32)
dy = rng.standard_normal(x.shape).astype(np.float32)
w = (1 + 0.1 * rng.standard_normal(512)).astype(np.float32)
b = (0.1 * rng.standard_normal(512)).astype(np.float32)
y, s = nn.group_norm(x, 32, weight=w, bias=b, axis=-1)
dx, dw, db = nn.group_norm_backward(dy, x, s, weight=w, axis=-1)
rows = rng.standard_normal((64, 4096)).astype(np.float32)
ly, ls = nn.layer_norm(rows, weight=w[:1].repeat(4096), bias=b[:1].repeat(4096))
gy, gs = nn.group_norm(x.transpose(0, 3, 1, 2).copy(), 32, weight=w, bias=b)
h = hashlib.sha1()
for a in (y, s.mean, s.rstd, dx, dw, db, ly, ls.mean, ls.rstd, gy, gs.mean, gs.rstd):
    h.update(a.tobytes())
print(h.hexdigest())
"""


def test_kernels_loaded_from_the_cache_give_the_bits_of_freshly_compiled_ones(tmp_path):
    """Run to run means also: the process that compiled a kernel and every
    later one that loads it from Numba's on-disk cache. With ``contract`` among
    the fastmath flags they differed: whether a multiply and an add become one
    fused multiply-add is the code generator's choice, and it chose
    differently for the cached object code than for the code it ran (group
    norm 256x7x7x512 channels-last: 16 of 8192 ``rstd`` values one unit in
    the last place apart). The kernels fuse a multiply and an add where they
    say so (``_jit.muladd``): layer norm and channels-first group norm here."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))

    def run():
        return subprocess.run(
            [sys.executable, "-c", _HASH_GROUP_NORM], env=env, check=True,
            capture_output=True, text=True,
        ).stdout.strip()

    compiled = run()
    assert list(tmp_path.rglob("*.nbi")), "the first run should have filled the cache"
    assert run() == compiled


def test_kernel_builds_are_cached_under_names_that_carry_the_compile_flags():
    """Numba's cache key holds a kernel's bytecode but not its compile flags:
    after a change of flags, a kernel whose source file did not change would
    load code compiled under the old ones. The flags are part of each build's
    name, after which Numba names the cache file."""
    from numbanorm._cpu import rows

    kernel = rows.row_forward
    assert kernel.parallel.py_func.__qualname__ == "row_forward" + _jit.CACHE_TAG
    assert kernel.serial.py_func.__qualname__ == "row_forward_serial" + _jit.CACHE_TAG
    assert all(flag in _jit.CACHE_TAG for flag in _jit.FASTMATH)
