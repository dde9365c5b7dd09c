"""Dask arrays on a real dask.distributed cluster: every norm equals its
in-memory result, whatever the chunking; statistics are computed when the
docs say; bad input gets the NumPy errors before any graph is built."""

import threading

import numpy as np
import pytest

import numbanorm as nn

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

SHAPE = (8, 6, 5, 4)
#: Chunkings of SHAPE: none split, then each axis split (the batch axis, the
#: channel axis across groups of 2 and 3, the spatial axes), then all of them.
CHUNKINGS = [SHAPE, (3, 6, 5, 4), (8, 4, 5, 4), (8, 6, 3, 2), (4, 4, 3, 2)]


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 worker processes, one thread each."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
    ) as cluster, distributed.Client(cluster) as client:
        yield client


def _data(dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, SHAPE).astype(dtype)
    dy = rng.normal(size=SHAPE).astype(dtype)
    return rng, x, dy


def _close(got, want, dtype, what):
    """float64: 1e-10 relative to the largest value; float32: a few ulps of it."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.dtype, want.dtype)
    scale = max(float(np.max(np.abs(want))), 1e-30)
    tol = 1e-10 if np.dtype(dtype) == np.float64 else 8 * np.finfo(np.float32).eps
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) / scale
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.1e}"


def _norm_cases(rng, dtype):
    """(name, forward(x) -> (y, saved), backward(dy, x, saved) -> grads)."""
    C = SHAPE[1]
    w, b = rng.normal(size=C).astype(dtype), rng.normal(size=C).astype(dtype)
    wl = rng.normal(size=SHAPE[2:]).astype(dtype)
    bl = rng.normal(size=SHAPE[2:]).astype(dtype)
    g = rng.random(SHAPE[0]).astype(dtype) + 0.5
    return [
        ("layer", lambda x: nn.layer_norm(x, weight=wl, bias=bl, axis=(2, 3)),
         lambda dy, x, s: nn.layer_norm_backward(dy, x, s, weight=wl, axis=(2, 3))),
        ("layer axis 1", lambda x: nn.layer_norm(x, axis=1),
         lambda dy, x, s: nn.layer_norm_backward(dy, x, s, axis=1)),
        ("rms", lambda x: nn.rms_norm(x, weight=wl[0], axis=-1),
         lambda dy, x, s: nn.rms_norm_backward(dy, x, s, weight=wl[0], axis=-1)),
        ("batch", lambda x: nn.batch_norm(x, weight=w, bias=b),
         lambda dy, x, s: nn.batch_norm_backward(dy, x, s, weight=w)),
        ("batch NHWC", lambda x: nn.batch_norm(x, weight=wl[0], bias=bl[0], axis=-1),
         lambda dy, x, s: nn.batch_norm_backward(dy, x, s, weight=wl[0], axis=-1)),
        ("group 3", lambda x: nn.group_norm(x, 3, weight=w, bias=b),
         lambda dy, x, s: nn.group_norm_backward(dy, x, s, weight=w)),
        ("group 2", lambda x: nn.group_norm(x, 2, weight=w),
         lambda dy, x, s: nn.group_norm_backward(dy, x, s, weight=w)),
        ("instance", lambda x: nn.instance_norm(x, weight=w, bias=b),
         lambda dy, x, s: nn.instance_norm_backward(dy, x, s, weight=w)),
        ("weight", lambda x: nn.weight_norm(x, g, axis=0),
         lambda dy, x, s: nn.weight_norm_backward(dy, x, g, s, axis=0)),
    ]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("chunks", CHUNKINGS, ids=lambda c: "x".join(map(str, c)))
def test_every_norm_on_a_cluster_equals_the_in_memory_function(client, dtype, chunks):
    rng, x, dy = _data(dtype)
    xd, dyd = da.from_array(x, chunks=chunks), da.from_array(dy, chunks=chunks)
    for name, forward, backward in _norm_cases(rng, dtype):
        y0, saved0 = forward(x)
        grads0 = backward(dy, x, saved0)
        y1, saved1 = forward(xd)
        grads1 = backward(dyd, xd, saved1)
        assert isinstance(y1, da.Array) and isinstance(grads1[0], da.Array), name
        stats = [s for s in (saved1.mean, saved1.rstd) if s is not None]
        y1, *rest = client.compute([y1, *stats, *grads1], sync=True)
        _close(y1, y0, dtype, f"{name} y")
        want = [s for s in (saved0.mean, saved0.rstd) if s is not None] + list(grads0)
        for got, expected, what in zip(rest, want, ["stat"] * len(stats) + ["dx", "dw", "db"]):
            if expected is None:
                assert got is None, f"{name} {what}"
            else:
                # float32 statistics: a few float32 ulps (the in-memory kernels
                # may round products in float32; the Dask graph merges float64 moments).
                tol_dtype = np.float64 if what == "stat" and dtype == np.float64 else dtype
                _close(got.astype(expected.dtype) if what == "stat" else got, expected,
                       tol_dtype, f"{name} {what}")


def test_results_are_deterministic_for_a_chunking(client):
    _, x, dy = _data(np.float32)
    xd = da.from_array(x, chunks=(4, 4, 3, 2))
    runs = []
    for _ in range(2):
        y, saved = nn.group_norm(xd, 3)
        dx, _, _ = nn.group_norm_backward(dy, xd, saved)
        runs.append(client.compute([y, dx], sync=True))
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_running_statistics_and_eval_mode_as_for_numpy(client, norm):
    rng, x, dy = _data(np.float64)
    function = nn.batch_norm if norm == "batch" else nn.instance_norm
    backward = nn.batch_norm_backward if norm == "batch" else nn.instance_norm_backward
    C = SHAPE[1]
    start = (rng.normal(size=C), rng.random(C) + 0.5)
    numpy_stats = [a.copy() for a in start]
    dask_stats = [a.copy() for a in start]
    xd = da.from_array(x, chunks=(3, 4, 2, 4))
    for training in (True, False):
        y0, s0 = function(x, training=training, running_mean=numpy_stats[0],
                          running_var=numpy_stats[1], momentum=0.3)
        y1, s1 = function(xd, training=training, running_mean=dask_stats[0],
                          running_var=dask_stats[1], momentum=0.3)
        # The running statistics are updated by the call itself, as for NumPy input.
        np.testing.assert_allclose(dask_stats[0], numpy_stats[0], rtol=1e-12)
        np.testing.assert_allclose(dask_stats[1], numpy_stats[1], rtol=1e-12)
        assert s1.training == s0.training
        dx0, _, _ = backward(dy, x, s0)
        y1, dx1 = client.compute([y1, backward(dy, xd, s1)[0]], sync=True)
        _close(y1, y0, np.float64, f"{norm} training={training} y")
        _close(dx1, dx0, np.float64, f"{norm} training={training} dx")


def test_moments_and_precise_batch_norm_stats_on_a_cluster(client):
    rng = np.random.default_rng(1)
    x = rng.normal(1e6, 1.0, (64, 3, 10)).astype(np.float32)
    xd = da.from_array(x, chunks=(7, 2, 10))
    m0, m1 = nn.moments(x, axis=(0, 2)), nn.moments(xd, axis=(0, 2))
    assert m1.count == m0.count and isinstance(m1.mean, da.Array)
    mean, m2 = client.compute([m1.mean, m1.m2], sync=True)
    np.testing.assert_allclose(mean, m0.mean, rtol=1e-14)
    np.testing.assert_allclose(m2, m0.m2, rtol=1e-10)
    layer, in_memory = nn.BatchNorm(3), nn.BatchNorm(3)
    total = nn.precise_batch_norm_stats(layer, xd)
    expected = nn.precise_batch_norm_stats(in_memory, [x])
    assert total.count == expected.count == 640
    np.testing.assert_allclose(total.mean, expected.mean, rtol=1e-14)
    np.testing.assert_allclose(total.m2, expected.m2, rtol=1e-10)
    np.testing.assert_array_equal(layer.running_mean, in_memory.running_mean)
    np.testing.assert_allclose(layer.running_var, in_memory.running_var, rtol=1e-6)
    in_batches = nn.BatchNorm(3)
    nn.precise_batch_norm_stats(in_batches, [xd[:20], xd[20:]])
    np.testing.assert_allclose(in_batches.running_var, layer.running_var, rtol=1e-6)


def test_layers_and_the_fused_residual_take_dask_arrays(client):
    rng, x, dy = _data(np.float32)
    r = rng.normal(size=SHAPE).astype(np.float32)
    xd, rd = da.from_array(x, chunks=(4, 6, 5, 2)), da.from_array(r, chunks=(4, 6, 5, 2))
    y0, s0, h0 = nn.layer_norm(x, residual=r)
    y1, s1, h1 = nn.layer_norm(xd, residual=rd)
    dx0 = nn.layer_norm_backward(dy, h0, s0, dh=dy)[0]
    dx1 = nn.layer_norm_backward(dy, h1, s1, dh=dy)[0]
    got = client.compute([y1, h1, dx1], sync=True)
    for g, w, what in zip(got, (y0, h0, dx0), ("y", "h", "dx")):
        _close(g, w, np.float32, what)
    layer0, layer1 = nn.BatchNorm(6), nn.BatchNorm(6)
    ya, yb = layer0(x), layer1(xd)
    np.testing.assert_allclose(layer1.running_var, layer0.running_var, rtol=1e-6)
    _close(yb.compute(), ya, np.float32, "BatchNorm y")
    _close(layer1.backward(dy).compute(), layer0.backward(dy), np.float32, "BatchNorm dx")
    _close(layer1.grads["weight"].compute(), layer0.grads["weight"], np.float32, "dweight")


# ---------------------------------- when data is read (local scheduler) ---


class _Reads:
    """Counts the blocks of ``x`` read: a Dask array whose every block
    increments ``count`` when it is computed."""

    def __init__(self, x, chunks):
        self.count = 0
        self._lock = threading.Lock()
        self.array = da.from_array(x, chunks=chunks).map_blocks(
            self._read, dtype=x.dtype, meta=np.empty((0,) * x.ndim, x.dtype)
        )
        self.blocks = self.array.npartitions

    def _read(self, block):
        with self._lock:
            self.count += 1
        return block


@pytest.fixture
def synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


def test_forward_and_backward_build_graphs_without_reading_data(synchronous):
    _, x, dy = _data(np.float64)
    reads = _Reads(x, (3, 2, 5, 4))
    # Dask arrays passed by keyword are dispatched too.
    assert isinstance(nn.rms_norm(x=reads.array)[0], da.Array)
    saved = nn.layer_norm(x, axis=1)[1]
    assert isinstance(nn.layer_norm_backward(dy, x=reads.array, saved=saved, axis=1)[0], da.Array)
    y, saved = nn.layer_norm(reads.array, axis=1)
    dx, _, _ = nn.layer_norm_backward(dy, reads.array, saved, axis=1)
    y2, saved2 = nn.group_norm(reads.array, 3)
    nn.group_norm_backward(dy, reads.array, saved2)
    y3, _ = nn.batch_norm(reads.array, training=False, running_mean=np.zeros(6),
                          running_var=np.ones(6))
    assert reads.count == 0
    dask.compute(y, dx)
    assert reads.count > 0


def test_batch_norm_training_reads_the_data_once_for_its_statistics(synchronous):
    _, x, _ = _data(np.float64)
    reads = _Reads(x, (3, 2, 5, 4))
    running_mean, running_var = np.zeros(6), np.ones(6)
    y, saved = nn.batch_norm(reads.array, running_mean=running_mean, running_var=running_var)
    # One pass for the mean and the variance together, never a second for the variance.
    assert reads.count == reads.blocks
    assert isinstance(saved.mean, np.ndarray) and isinstance(y, da.Array)
    y.compute()
    assert reads.count == 2 * reads.blocks


def test_moments_read_each_block_once(synchronous):
    _, x, _ = _data(np.float64)
    reads = _Reads(x, (3, 2, 5, 4))
    m = nn.moments(reads.array, axis=(0, 2, 3))
    dask.compute(m.mean, m.m2)
    assert reads.count == reads.blocks


def _bad_calls(x, dy, x_numpy):
    """Calls that must fail, each with the same error for NumPy and Dask ``x``
    (the saved statistics from the NumPy ``x``)."""
    w6 = np.ones(6)
    return [
        lambda: nn.layer_norm(x, weight=np.ones(3)),
        lambda: nn.layer_norm(x, axis=7),
        lambda: nn.layer_norm(x, eps=-1.0),
        lambda: nn.layer_norm(x.astype(np.complex64)),
        lambda: nn.rms_norm(x, axis=(1, 1)),
        lambda: nn.batch_norm(x, weight=np.ones(5)),
        lambda: nn.batch_norm(x, running_mean=w6),
        lambda: nn.batch_norm(x, training=False),
        lambda: nn.batch_norm(x, momentum=2.0, running_mean=w6, running_var=w6.copy()),
        lambda: nn.batch_norm(x[:1, :, :1, :1]),
        lambda: nn.group_norm(x, 4),
        lambda: nn.group_norm(x, 3, axis=0),
        lambda: nn.instance_norm(x[:, :, :1, :1]),
        lambda: nn.weight_norm(x, np.ones(3)),
        lambda: nn.layer_norm_backward(dy[:2], x, nn.layer_norm(x_numpy)[1]),
        lambda: nn.layer_norm_backward(dy, x, (1, 2)),
        lambda: nn.batch_norm_backward(dy.astype(np.float32), x, nn.batch_norm(x_numpy)[1]),
        lambda: nn.group_norm_backward(dy, x, nn.layer_norm(x_numpy)[1]),
    ]


def test_bad_input_gets_the_numpy_errors_before_any_graph_is_built(synchronous):
    _, x, dy = _data(np.float64)
    reads = _Reads(x, (3, 2, 5, 4))
    dask_dy = da.from_array(dy, chunks=(3, 2, 5, 4))
    for index, (numpy_call, dask_call) in enumerate(
        zip(_bad_calls(x, dy, x), _bad_calls(reads.array, dask_dy, x))
    ):
        with pytest.raises((TypeError, ValueError)) as expected:
            numpy_call()
        with pytest.raises(expected.type) as got:
            dask_call()
        assert str(got.value) == str(expected.value), index
    assert reads.count == 0
    with pytest.raises(TypeError, match="out= is not supported"):
        nn.layer_norm(reads.array, out=np.empty(SHAPE))
    with pytest.raises(TypeError, match="masked"):
        nn.layer_norm(da.ma.masked_greater(reads.array, 5.0))
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        nn.batch_norm(reads.array[reads.array[:, 0, 0, 0] > 3.0])
    assert reads.count == 0


def test_each_dask_twin_takes_the_public_functions_parameters():
    import inspect

    from numbanorm._dask import norms

    twins = [name for name in nn.__all__ if hasattr(getattr(nn, name), "__wrapped__")]
    assert len(twins) == 13
    for name in twins:
        public = inspect.signature(getattr(nn, name).__wrapped__).parameters
        twin = inspect.signature(getattr(norms, name)).parameters
        assert [(p.name, p.kind, p.default) for p in public.values()] == [
            (p.name, p.kind, p.default) for p in twin.values()
        ], name


def test_the_scaling_example_normalizes_a_file_and_recomputes_exact_statistics(tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "dask_scaling.py"
    run = subprocess.run(
        [sys.executable, str(example), "--rows", "40000", "--features", "8",
         "--chunk-rows", "6000", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "(7 chunks)" in run.stdout and "cluster: 2 workers" in run.stdout
    y = np.load(tmp_path / "normalized.npy")
    x = np.load(tmp_path / "features.npy")
    assert y.shape == x.shape == (40000, 8)
    reference = (x - x.mean(axis=1, keepdims=True, dtype=np.float64)) / np.sqrt(
        x.var(axis=1, keepdims=True, dtype=np.float64) + 1e-5
    )
    assert np.max(np.abs(y - reference)) < 1e-5
    errors = re.search(r"mean ([0-9.e+-]+), variance ([0-9.e+-]+)", run.stdout)
    assert errors and float(errors[1]) < 1e-12 and float(errors[2]) < 1e-10, run.stdout


@pytest.mark.parametrize("dtype", ["float16", "int32", ">f8", "bfloat16"])
def test_other_dtypes_come_back_as_for_numpy(synchronous, dtype):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    rng = np.random.default_rng(2)
    x = (rng.normal(3, 2, SHAPE) * 3).astype(dtype)
    xd = da.from_array(x, chunks=(3, 4, 5, 2))
    for forward, backward in [
        (lambda a: nn.layer_norm(a), lambda d, a, s: nn.layer_norm_backward(d, a, s)),
        (lambda a: nn.batch_norm(a), lambda d, a, s: nn.batch_norm_backward(d, a, s)),
        (lambda a: nn.group_norm(a, 2), lambda d, a, s: nn.group_norm_backward(d, a, s)),
    ]:
        y0, saved0 = forward(x)
        dy = rng.normal(size=SHAPE).astype(y0.dtype)
        dx0 = backward(dy, x, saved0)[0]
        y1, saved1 = forward(xd)
        y1, dx1 = dask.compute(y1, backward(dy, xd, saved1)[0])
        assert y1.dtype == y0.dtype and dx1.dtype == dx0.dtype
        # Blocks run the same kernels: at most one rounding of the result's dtype apart.
        ulp = float(np.finfo(np.float32 if y0.dtype.itemsize < 8 else np.float64).eps)
        if y0.dtype.itemsize == 2:
            ulp = 2.0**-7 if y0.dtype.kind == "V" else 2.0**-10
        for got, want in ((y1, y0), (dx1, dx0)):
            got, want = got.astype(np.float64), want.astype(np.float64)
            assert np.max(np.abs(got - want)) <= 4 * ulp * np.max(np.abs(want))


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=lambda c: "x".join(map(str, c)))
def test_one_compute_of_forward_and_backward_runs_each_block_once(synchronous, chunks):
    """Statistics, y, dx and the parameter gradients share the blocks' work:
    one ``dask.compute`` runs each block of ``x`` once (batch norm in training
    mode read it once more, when called, for its statistics)."""
    rng, x, dy = _data(np.float64)
    for name, forward, backward in _norm_cases(rng, np.float64):
        reads = _Reads(x, chunks)
        y, saved = forward(reads.array)
        at_call = reads.count
        assert at_call in (0, reads.blocks), name
        grads = backward(dy, reads.array, saved)
        stats = [s for s in saved[:2] if s is not None]
        dask.compute(y, *stats, *[g for g in grads if g is not None])
        assert reads.count - at_call == reads.blocks, name


def test_the_dask_benchmark_runs(capsys):
    from numbanorm import bench_dask

    bench_dask.main(["--scale", "0.001", "--repeat", "1"])
    out = capsys.readouterr().out
    for case in ("layer fwd", "layer bwd", "batch fwd", "batch bwd"):
        assert case in out
    assert "scheduler cost, 1 worker" in out and "per chunk" in out


def _two_dimensional_cases(rng):
    w = rng.normal(size=8)
    return [
        ("batch (N, C)", lambda x: nn.batch_norm(x, weight=w, bias=w),
         lambda dy, x, s: nn.batch_norm_backward(dy, x, s, weight=w)),
        ("layer (N, C)", lambda x: nn.layer_norm(x, weight=w, bias=w),
         lambda dy, x, s: nn.layer_norm_backward(dy, x, s, weight=w)),
        ("rms (N, C)", lambda x: nn.rms_norm(x, weight=w),
         lambda dy, x, s: nn.rms_norm_backward(dy, x, s, weight=w)),
    ]


@pytest.mark.parametrize("ndim", [4, 2])
def test_results_compose_with_further_dask_operations(synchronous, ndim):
    """Results are ordinary Dask arrays: reductions, slices and blocks of them,
    computed together with the parameter gradients, give the NumPy values."""
    rng = np.random.default_rng(3)
    if ndim == 4:
        _, x, dy = _data(np.float64)
        cases, chunkings = _norm_cases(rng, np.float64), [(3, 6, 5, 4), (4, 4, 3, 2)]
    else:
        x, dy = rng.normal(2.0, 3.0, (64, 8)), rng.normal(size=(64, 8))
        cases, chunkings = _two_dimensional_cases(rng), [(16, 8), (16, 3)]
    for chunks in chunkings:
        xd = da.from_array(x, chunks=chunks)
        for name, forward, backward in cases:
            y0, saved0 = forward(x)
            grads0 = [g for g in backward(dy, x, saved0) if g is not None]
            y1, saved1 = forward(xd)
            grads1 = [g for g in backward(dy, xd, saved1) if g is not None]
            exprs = [y1.sum(axis=0), y1[1:3], grads1[0].sum(), grads1[0].blocks[1],
                     *[g.sum(axis=0) for g in grads1[1:]]]
            want = [y0.sum(axis=0), y0[1:3], grads0[0].sum(),
                    grads0[0][chunks[0]: 2 * chunks[0]],
                    *[g.sum(axis=0) for g in grads0[1:]]]
            # Each alone (Dask fuses a layer into its only dependent), then
            # dx's sum with the parameter gradients, as a training step asks.
            got = [e.compute() for e in exprs]
            got_together = dask.compute(exprs[2], *exprs[4:])
            for a, b in zip(got + list(got_together), want + [want[2]] + want[4:]):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=f"{name} {chunks}")


def test_host_calls_do_not_import_dask():
    """The Dask check of a host call costs a dictionary lookup: until
    ``dask.array`` is imported no argument can be a Dask array, and a NumPy
    call never imports it."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, numbanorm as nn\n"
        "x = np.ones((4, 8), np.float32)\n"
        "y, s = nn.layer_norm(x); nn.layer_norm_backward(x, x, s)\n"
        "y, s = nn.group_norm(x.reshape(2, 4, 4), 2); nn.batch_norm(x)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dask'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
