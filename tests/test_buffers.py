"""Large outputs reuse memory the caller has dropped, and only that memory."""

import os
import subprocess
import sys

import numpy as np
import pytest

import numbanorm as nn
from numbanorm import _buffers, _jit

import reference

# One output of 16 MiB: the smallest that comes from a reusable block.
SHAPE = (1024, 4096)


@pytest.fixture
def x(rng):
    nn.release_memory()
    yield rng.standard_normal(SHAPE).astype(np.float32)
    nn.release_memory()


def _address(a):
    return a.__array_interface__["data"][0]


def test_a_dropped_output_block_is_reused_and_the_result_is_right(x):
    y, _ = nn.layer_norm(x)
    first = _address(y)
    del y
    y, saved = nn.layer_norm(x)
    assert _address(y) == first
    np.testing.assert_allclose(y, reference.layer_norm(x.astype(np.float64)), atol=2e-6)
    dx, _, _ = nn.layer_norm_backward(x, x, saved)  # same size: takes no block in use
    assert _address(dx) != first


def test_memory_still_in_use_is_never_handed_out(x):
    y, _ = nn.layer_norm(x)
    view = y[::2, 1:]  # keeps the block alive after y is gone
    kept = view.copy()
    del y
    y2, _ = nn.layer_norm(2.0 * x + 1.0)
    assert not np.shares_memory(y2, view)
    np.testing.assert_array_equal(view, kept)


def test_small_outputs_are_plain_numpy_arrays(rng):
    y, _ = nn.layer_norm(rng.standard_normal((64, 64)).astype(np.float32))
    assert y.base is None or type(y.base) is np.ndarray


def test_outputs_that_fit_in_l2_start_on_a_cache_line(rng):
    # Sizes from ALIGN_MIN_BYTES to ALIGN_MAX_BYTES, several times over:
    # glibc's 16-byte alignment would put about half of them off a line.
    for shape in [(64, 256), (64, 4096), (256, 1152), (511, 1023)]:
        x = rng.standard_normal(shape).astype(np.float32)
        assert _buffers.ALIGN_MIN_BYTES <= x.nbytes <= _buffers.ALIGN_MAX_BYTES
        for _ in range(4):
            y, _ = nn.layer_norm(x)
            assert _address(y) % _jit.ALIGN_BYTES == 0
            assert y.shape == shape and y.dtype == np.float32 and y.flags.c_contiguous
            np.testing.assert_allclose(y, reference.layer_norm(x.astype(np.float64)), atol=2e-6)


def test_release_memory_gives_back_what_is_kept(x):
    y, _ = nn.layer_norm(x)
    nbytes = y.nbytes
    del y
    # A block is the output and the slack that lets it start on a page.
    assert nn.release_memory() == nbytes + _buffers.START_BYTES
    assert nn.release_memory() == 0


def test_large_outputs_start_on_a_page_reused_or_not(x, monkeypatch):
    for cap in (_buffers.REUSE_MAX_BYTES, 0):
        monkeypatch.setattr(_buffers, "REUSE_MAX_BYTES", cap)
        for _ in range(2):  # a new block, then (with reuse) the same one again
            y, _ = nn.layer_norm(x)
            assert _address(y) % _buffers.START_BYTES == 0
            np.testing.assert_allclose(y, reference.layer_norm(x.astype(np.float64)), atol=2e-6)
            del y


def test_at_most_the_configured_bytes_are_kept(x, monkeypatch):
    block = x.nbytes + _buffers.START_BYTES
    monkeypatch.setattr(_buffers, "REUSE_MAX_BYTES", block)  # room for one block
    a, _ = nn.layer_norm(x)
    b, _ = nn.layer_norm(x)
    del a, b
    assert nn.release_memory() == block


def test_a_full_list_makes_room_for_the_block_just_freed(x, monkeypatch):
    # Blocks of one workload must not shut out the next one's outputs.
    other = np.concatenate([x, x[:1]])  # a slightly larger output
    a_block = x.nbytes + _buffers.START_BYTES
    b_block = other.nbytes + _buffers.START_BYTES
    monkeypatch.setattr(_buffers, "REUSE_MAX_BYTES", a_block + b_block - 1)  # not both
    a, _ = nn.layer_norm(x)
    del a  # kept: the list is full
    b, _ = nn.layer_norm(other)
    first = _address(b)
    del b  # kept, the older block dropped
    b, _ = nn.layer_norm(other)
    assert _address(b) == first
    np.testing.assert_allclose(b, reference.layer_norm(other.astype(np.float64)), atol=2e-6)
    del b
    assert nn.release_memory() == b_block


def test_reuse_can_be_turned_off_and_blocks_outlive_the_interpreter_quietly():
    code = (
        "import numpy as np, numbanorm as nn\n"
        "x = np.ones((1024, 4096), np.float32)\n"
        "y, _ = nn.layer_norm(x); a = y.__array_interface__['data'][0]; del y\n"
        "y, _ = nn.layer_norm(x); print(y.__array_interface__['data'][0] == a)\n"
        "z = nn.layer_norm(x)[0]\n"  # alive at exit: its block is dropped then
    )
    for setting, reused in (("0", "False"), (str(512 << 20), "True")):
        env = dict(os.environ, NUMBANORM_REUSE_BYTES=setting)
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == reused
        assert run.stderr == ""


def test_scratch_arrays_are_reused_per_name_shape_and_thread():
    import threading

    a = _buffers.scratch("test_a", (3, 5))
    assert a.shape == (3, 5) and a.dtype == np.float64
    assert _buffers.scratch("test_a", (3, 5)) is a  # the next call gets it again
    assert _buffers.scratch("test_b", (3, 5)) is not a  # two arrays live at once
    assert _buffers.scratch("test_a", (5, 3)) is not a
    other = []
    t = threading.Thread(target=lambda: other.append(_buffers.scratch("test_a", (3, 5))))
    t.start()
    t.join()
    assert other[0] is not a  # kernels release the GIL: threads never share one


def test_scratch_keeps_few_and_small_arrays():
    big = (_buffers.SCRATCH_MAX_BYTES // 8 + 1,)
    assert _buffers.scratch("test_big", big) is not _buffers.scratch("test_big", big)
    first = _buffers.scratch("test_first", (2,))
    for i in range(_buffers.SCRATCH_ENTRIES):
        _buffers.scratch(f"test_fill_{i}", (2,))
    assert _buffers.scratch("test_first", (2,)) is not first  # the least recent went


def test_large_saved_statistics_reuse_dropped_blocks_and_only_those(rng):
    nn.release_memory()
    x = rng.standard_normal((256, 512, 2)).astype(np.float32)  # 1 MiB of means
    y, saved = nn.instance_norm(x)
    assert saved.mean.nbytes >= _buffers.STATS_REUSE_MIN_BYTES
    first = _address(saved.mean)
    kept = saved.rstd.copy()
    rstd = saved.rstd
    del y, saved
    _, again = nn.instance_norm(x)
    assert _address(again.mean) == first  # dropped: reused
    assert not np.shares_memory(again.rstd, rstd)  # still held: not reused
    np.testing.assert_array_equal(rstd, kept)
    mean64 = x.astype(np.float64).mean(axis=2)
    np.testing.assert_allclose(again.mean, mean64, rtol=1e-12, atol=1e-12)
    nn.release_memory()


def test_gradients_are_right_when_work_arrays_are_reused(rng):
    # The per-sample and chunk sums live in reused work arrays: a second call
    # on other data must not see the first call's sums.
    for shape, axis in (((256, 64, 3), 1), ((2, 40, 64), -1)):
        x1 = rng.standard_normal(shape).astype(np.float32)
        x2 = (3.0 * rng.standard_normal(shape) + 1.0).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        w = (1.0 + 0.1 * rng.standard_normal(shape[axis])).astype(np.float32)
        b = (0.1 * rng.standard_normal(shape[axis])).astype(np.float32)
        for forward, backward in (
            (nn.instance_norm, nn.instance_norm_backward),
            (nn.batch_norm, nn.batch_norm_backward),
        ):
            first = backward(dy, x1, forward(x1, w, b, axis=axis)[1], w, axis=axis)
            second = backward(dy, x2, forward(x2, w, b, axis=axis)[1], w, axis=axis)
            fresh = backward(dy, x1, forward(x1, w, b, axis=axis)[1], w, axis=axis)
            assert all(g is not None for g in first)  # dx, dweight and dbias
            for a, c in zip(first, fresh):
                np.testing.assert_array_equal(a, c)
            assert not np.array_equal(first[1], second[1])


def test_an_output_maker_gives_the_arrays_empty_gives():
    nn.release_memory()
    f32 = np.dtype(np.float32)
    small = _buffers.empty_maker((4, 8), f32)()
    assert small.shape == (4, 8) and small.dtype == f32 and small.base is None
    mid_shape = (64, 1024)  # 256 KiB: starts on a cache line
    make_mid = _buffers.empty_maker(mid_shape, f32)
    a, b = make_mid(), make_mid()
    assert a.shape == mid_shape and a.dtype == f32 and a.flags.c_contiguous
    assert _address(a) % _jit.ALIGN_BYTES == 0 and not np.shares_memory(a, b)
    make_large = _buffers.empty_maker(SHAPE, f32)
    y = make_large()
    assert y.shape == SHAPE and y.flags.c_contiguous and y.flags.writeable
    assert _address(y) % _buffers.START_BYTES == 0 and type(y.base) is np.ndarray
    y2 = make_large()  # y is still held: another block
    assert not np.shares_memory(y, y2)
    last = _address(y2)
    del y, y2
    assert _address(make_large()) == last  # of two free blocks, the one handed out last
    nn.release_memory()
