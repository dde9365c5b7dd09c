"""Large outputs reuse memory the caller has dropped, and only that memory."""

import os
import subprocess
import sys

import numpy as np
import pytest

import numbanorm as nn
from numbanorm import _buffers

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
