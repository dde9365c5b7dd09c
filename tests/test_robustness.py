"""Valid calls work under threads, fork, odd dtypes and odd data; bad ones fail clearly.

One test (or table row) per finding of the adversarial battery run on the
0.1.0 release; each failed there.
"""

import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc

import numpy as np
import pytest

import numbanorm as nn

import reference


def _run_python(code, env=None, timeout=120):
    """Run ``code`` in a fresh interpreter; returns the completed process."""
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True,
        text=True, timeout=timeout,
    )


# ------------------------------------------------------------ memory ---


def test_outputs_of_different_sizes_one_after_another_are_valid_calls():
    # Finding 1: the output-block pool compared arrays with list.remove.
    def ones(n):
        return np.ones((n * 256, 1024), np.float32)

    y1, s1 = nn.layer_norm(ones(200))
    nn.layer_norm(ones(250))  # its output dropped at once
    y3, _ = nn.layer_norm(ones(100))
    assert not y1.any() and not y3.any()
    assert y1.shape == (200 * 256, 1024) and y3.shape == (100 * 256, 1024)
    assert s1.rstd.shape == (200 * 256,)


def test_concurrent_calls_never_write_into_results_another_thread_holds():
    # Finding 2: two threads could be handed the same reused block.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((32768, 4)).astype(np.float32) + i for i in range(8)]
    expected = [reference.layer_norm(x.astype(np.float64)) for x in inputs]
    failures = []

    def work(i):
        held = []
        for _ in range(30):
            y, saved = nn.layer_norm(inputs[i])
            held.append((y, saved))
        for y, saved in held:
            if not np.allclose(y, expected[i], atol=1e-5):
                failures.append(("y", i))
            if not np.allclose(saved.mean, inputs[i].astype(np.float64).mean(axis=1)):
                failures.append(("mean", i))

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not failures


def test_memory_kept_between_calls_is_bounded_and_released():
    # Finding 5: per-shape caches kept row-length arrays for every signature.
    code = """
        import numpy as np, numbanorm as nn

        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096

        x = np.ones((2, 1 << 20), np.float32)
        y, s = nn.layer_norm(x[:, :-1])
        nn.layer_norm_backward(y, x[:, :-1].copy(), s)
        before = rss()
        for i in range(60):
            xi = np.ascontiguousarray(x[:, : (1 << 20) - i])
            y, s = nn.layer_norm(xi)
            nn.layer_norm_backward(y, xi, s)
            del xi, y, s
        grown = rss() - before
        released = nn.release_memory()
        print(grown, released)
    """
    proc = _run_python(code, timeout=300)
    assert proc.returncode == 0, proc.stderr
    grown, released = map(int, proc.stdout.split())
    # 60 signatures of 4 MiB rows: the old caches kept 12 MiB each (720 MiB).
    assert grown < 100 << 20
    assert 0 < released <= 8 * (4 << 20)


def test_batch_norm_work_arrays_do_not_grow_with_the_batch():
    # Finding 9: wide inputs (C * Q > 65536) took partial sums of 4x the input.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((512, 70000), dtype=np.float32)
    dy = np.ones_like(x)
    nn.batch_norm(x[:64])  # compiled before measuring
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        y, saved = nn.batch_norm(x)
        forward_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        dx, _, _ = nn.batch_norm_backward(dy, x, saved)
        backward_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Beyond the output: O(channels), here at most 32 chunks of float64 sums.
    assert forward_peak - y.nbytes < x.nbytes // 2
    assert backward_peak - dx.nbytes - y.nbytes < x.nbytes // 2


# ------------------------------------------------- threads and fork ---


def test_fork_after_a_parallel_call_works():
    # Finding 3: GNU OpenMP hung forked workers.
    code = """
        import multiprocessing as mp
        import numpy as np, numbanorm as nn

        def work(seed):
            x = np.random.default_rng(seed).standard_normal((1024, 1024)).astype(np.float32)
            return float(np.abs(nn.layer_norm(x)[0].mean(axis=1)).max())

        if __name__ == "__main__":
            work(0)
            with mp.get_context("fork").Pool(2) as pool:
                print(max(pool.map(work, range(4))))
    """
    proc = _run_python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) < 1e-5


def test_the_default_threading_layer_is_safe_with_threads_and_fork():
    proc = _run_python(
        "import numbanorm._cpu.compile as c; print(c.threading_layer())",
        env={"NUMBA_THREADING_LAYER": "default"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "tbb"


def test_concurrent_calls_under_the_workqueue_layer_are_safe():
    # Finding 4: Numba's fallback layer aborts on concurrent parallel calls.
    code = """
        import threading
        import numpy as np, numbanorm as nn
        from numbanorm._cpu.compile import threading_layer

        x = np.random.default_rng(0).standard_normal((2048, 1024)).astype(np.float32)
        want = nn.layer_norm(x)[0]
        bad = []

        def work():
            for _ in range(10):
                if not np.array_equal(nn.layer_norm(x)[0], want):
                    bad.append(1)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(threading_layer(), len(bad))
    """
    proc = _run_python(code, env={"NUMBA_THREADING_LAYER": "workqueue"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["workqueue", "0"]


def test_import_and_calls_leave_the_environment_alone():
    # Finding 14: importing numbanorm set OMP_WAIT_POLICY for every OpenMP runtime.
    code = """
        import os
        before = dict(os.environ)
        import numpy as np, numbanorm as nn
        nn.layer_norm(np.ones((1024, 1024), np.float32))
        print(dict(os.environ) == before, os.environ.get("OMP_WAIT_POLICY"))
    """
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "None"]


# ------------------------------------------------------------ dtypes ---

_BIG_ENDIAN_CALLS = {
    "layer": lambda x: nn.layer_norm(x)[0],
    "rms": lambda x: nn.rms_norm(x)[0],
    "batch": lambda x: nn.batch_norm(x)[0],
    "group": lambda x: nn.group_norm(x, 2)[0],
    "instance": lambda x: nn.instance_norm(x)[0],
    "weight": lambda x: nn.weight_norm(x, np.ones(x.shape[0]))[0],
    "layer backward": lambda x: nn.layer_norm_backward(x, x, nn.layer_norm(x)[1])[0],
}


@pytest.mark.parametrize("name", list(_BIG_ENDIAN_CALLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_big_endian_input_is_computed_in_its_own_precision(name, dtype, rng):
    # Finding 6: big-endian float64 was computed in float32.
    x = (rng.standard_normal((6, 4, 5)) + 3.0).astype(dtype)
    call = _BIG_ENDIAN_CALLS[name]
    swapped = call(x.astype(np.dtype(dtype).newbyteorder(">")))
    assert swapped.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(swapped, call(x))


_MASKED = np.ma.masked_array(np.ones((4, 6, 5)), mask=np.zeros((4, 6, 5), bool))


@pytest.mark.parametrize(
    "call",
    [
        lambda: nn.layer_norm(_MASKED),
        lambda: nn.batch_norm(_MASKED),
        lambda: nn.group_norm(_MASKED, 2),
        lambda: nn.layer_norm(np.ones((4, 5)), weight=np.ma.masked_array(np.ones(5))),
        lambda: nn.layer_norm(np.ones((4, 5)), out=np.ma.masked_array(np.ones((4, 5)))),
        lambda: nn.batch_norm(
            np.ones((4, 3)), training=False, running_mean=np.ma.masked_array(np.zeros(3)),
            running_var=np.ones(3),
        ),
        lambda: nn.moments(_MASKED),
        lambda: nn.weight_norm(_MASKED, np.ones(4)),
        lambda: nn.precise_batch_norm_stats(nn.BatchNorm(6), [_MASKED]),
    ],
    ids=["layer", "batch", "group", "weight", "out", "running", "moments", "weight norm",
         "precise stats"],
)
def test_masked_arrays_are_refused_not_silently_unmasked(call):
    # Finding 7.
    with pytest.raises(TypeError, match="masked array"):
        call()


# ------------------------------------------------------- arguments ---


def test_precise_batch_norm_stats_refuses_another_channel_count():
    # Finding 8: a batch of 5 channels was broadcast into a layer of 3.
    layer = nn.BatchNorm(3, dtype=np.float64)
    before = layer.state_dict()
    with pytest.raises(ValueError, match="5 channels.*num_features=3"):
        nn.precise_batch_norm_stats(layer, [np.ones((4, 3)), np.ones((4, 5))])
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_read_only_running_statistics_serve_eval_mode(rng):
    # Finding 10: nothing is written in eval mode.
    x = rng.standard_normal((8, 3, 5))
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    want, _ = nn.batch_norm(x, training=False, running_mean=mean.copy(), running_var=var.copy())
    mean.setflags(write=False)
    var.setflags(write=False)
    y, _ = nn.batch_norm(x, training=False, running_mean=mean, running_var=var)
    np.testing.assert_array_equal(y, want)
    with pytest.raises(ValueError, match="read-only"):
        nn.batch_norm(x, training=True, running_mean=mean, running_var=var)


_X = np.ones((4, 6, 5))

_BAD_CALLS = [
    ("saved as a tuple", lambda: nn.layer_norm_backward(_X, _X, tuple(nn.layer_norm(_X)[1][:2])),
     TypeError, "saved must be the NormStats"),
    ("saved None", lambda: nn.layer_norm_backward(_X, _X, None), TypeError, "saved must be"),
    ("rms saved None", lambda: nn.rms_norm_backward(_X, _X, None), TypeError, "saved must be"),
    ("bn saved None", lambda: nn.batch_norm_backward(_X, _X, None), TypeError, "saved must be"),
    ("gn saved None", lambda: nn.group_norm_backward(_X, _X, None), TypeError, "saved must be"),
    ("wn saved None", lambda: nn.weight_norm_backward(_X, _X, np.ones(4), None), TypeError,
     "saved must be"),
    ("zero groups", lambda: nn.GroupNorm(0, 8), ValueError, "num_groups must be >= 1"),
    ("negative groups", lambda: nn.GroupNorm(-2, 8), ValueError, "num_groups must be >= 1"),
    ("float groups", lambda: nn.GroupNorm(2.5, 8), TypeError, "num_groups must be an int"),
    ("momentum", lambda: nn.BatchNorm(8, momentum=1.5), ValueError, r"momentum must be in \[0, 1\]"),
    ("zero features", lambda: nn.BatchNorm(0), ValueError, "num_features must be >= 1"),
    ("negative eps", lambda: nn.LayerNorm(8, eps=-1), ValueError, "eps must be finite and >= 0"),
    ("rms eps", lambda: nn.RMSNorm(8, eps=float("inf")), ValueError, "eps must be finite"),
    ("instance eps", lambda: nn.InstanceNorm(8, eps="x"), TypeError, "eps must be a real"),
    ("weight norm axis", lambda: nn.WeightNorm(np.ones((3, 4)), axis=5), ValueError,
     "axis=5 is out of range"),
    ("layer shape", lambda: nn.LayerNorm((2, 0)), ValueError, "normalized_shape must be >= 1"),
    ("batch axis", lambda: nn.BatchNorm(3, axis=1.0), TypeError, "axis must be an int"),
]


@pytest.mark.parametrize(
    "call, exc, match", [c[1:] for c in _BAD_CALLS], ids=[c[0] for c in _BAD_CALLS]
)
def test_bad_arguments_fail_at_once_with_a_clear_error(call, exc, match):
    # Finding 11: AttributeError, ZeroDivisionError, or an error only at the first call.
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize(
    "layer, x",
    [
        (nn.LayerNorm((2, 2), elementwise_affine=False), np.zeros((2, 2, 3))),
        (nn.LayerNorm(4), np.zeros((3, 5))),
        (nn.RMSNorm((2, 3)), np.zeros((4, 3, 2))),
        (nn.RMSNorm(3), np.zeros(())),
    ],
)
def test_row_norm_layers_check_the_trailing_shape_as_pytorch(layer, x):
    # Finding 13: LayerNorm((2, 2)) normalized a (2, 2, 3) input over (2, 3).
    with pytest.raises(ValueError, match=r"Given normalized_shape=\[.*\], expected input with shape"):
        layer.forward(x)


# ------------------------------------------------------------ numerics ---


def _sparse_with_a_far_first_row(rng, rows, channels, stds):
    """Mostly zeros, a few values of spread 100, and a first row ``stds``
    standard deviations from the mean."""
    x = np.zeros((rows, channels))
    hit = rng.integers(0, rows, rows // 500)
    x[hit] = rng.standard_normal((hit.size, channels)) * 100.0
    x[0] = x.std(axis=0) * stds
    return x


def test_statistics_do_not_depend_on_where_the_first_value_lies(rng):
    # Finding 12: sums were shifted by each channel's first value.
    x = _sparse_with_a_far_first_row(rng, 1 << 20, 16, 90.0)
    exact = x.astype(np.longdouble)
    mean = exact.mean(axis=0)
    var = ((exact - mean) ** 2).mean(axis=0)
    _, saved = nn.batch_norm(x, eps=0.0)
    assert float(np.abs(saved.rstd * np.sqrt(var) - 1.0).max()) < 1e-11
    m = nn.moments(x, axis=0)
    assert float(np.abs(m.m2 / (var * x.shape[0]) - 1.0).max()) < 1e-11
    _, saved = nn.group_norm(x.T.reshape(1, 16, -1).copy(), 16, eps=0.0)
    assert float(np.abs(saved.rstd[0] * np.sqrt(var) - 1.0).max()) < 1e-11


def test_float32_statistics_of_many_values_stay_accurate(rng):
    x = (rng.standard_normal((1 << 25, 1)) + 1e4).astype(np.float32)
    x[0] = 3e4
    exact = x.astype(np.float64)
    mean = exact.mean()
    var = ((exact - mean) ** 2).mean()
    _, saved = nn.batch_norm(x, eps=0.0)
    assert abs(saved.mean[0] - mean) < 1e-9
    assert abs(saved.rstd[0] * np.sqrt(var) - 1.0) < 1e-9
