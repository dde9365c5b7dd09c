"""The benchmark compares like with like: numbanorm, PyTorch and the NumPy
baseline of every benchmark case compute the same function."""

import numpy as np
import pytest

from numbanorm import bench
from numbanorm.bench import Case, _rows

torch = pytest.importorskip("torch")

SMALL = {"rows": (16, 96), "nchw": (3, 64, 5, 4), "nhwc": (3, 64, 5, 4)}


def _small(norm, layout):
    return (8, 4, 3, 3) if norm == "weight" else SMALL[layout]


@pytest.mark.parametrize(
    "norm, layout", sorted({(n, lay) for n, lay, _ in _rows()}), ids=lambda v: str(v)
)
def test_every_benchmark_case_computes_the_same_thing(norm, layout):
    case = Case(norm, layout, _small(norm, layout), torch, np.random.default_rng(1), np.float64)
    ours, ref = case.ours_fwd()[0], case.numpy_fwd()
    theirs = case.torch_fwd().numpy()
    d_ours, d_ref = case.ours_bwd()[0], case.numpy_bwd()[0]
    d_theirs = case.torch_bwd()[0].numpy()
    if layout == "nhwc":  # PyTorch sees a channels_last NCHW view
        theirs, d_theirs = theirs.transpose(0, 2, 3, 1), d_theirs.transpose(0, 2, 3, 1)
    for a, b in [(ours, ref), (ours, theirs), (d_ours, d_ref), (d_ours, d_theirs)]:
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_bench_covers_the_standard_shape_set():
    rows = _rows()
    assert len(rows) == 30  # 60 timed rows: forward and backward
    assert ("layer", "rows", (8192, 4096)) in rows
    assert ("group", "nhwc", (256, 512, 7, 7)) in rows
    assert ("weight", "rows", (256, 128, 3, 3)) in rows


def test_gpu_bench_skips_cleanly_without_a_gpu(capsys):
    from numba import cuda

    from numbanorm.bench import main

    if cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["--device", "cuda"]) == 0
    assert "no CUDA GPU available" in capsys.readouterr().out


def test_each_library_is_timed_in_blocks_after_a_pause_each_first_in_half(monkeypatch):
    # Two thread runtimes in one process: a library timed right after the
    # other would share the cores with the other's spinning threads.
    calls, pauses = [], []
    monkeypatch.setattr(bench.time, "sleep", lambda s: (pauses.append(s), calls.append("pause")))
    fns = [lambda: calls.append("ours"), lambda: calls.append("theirs"), lambda: calls.append("floor")]
    bench._time(fns, budget=1.0, burst=2, blocks=4)
    timed = calls[6:]  # after the warm-up call and the sizing call of each
    blocks = "".join("|" if c == "pause" else c[0] for c in timed).split("|")[1:]
    assert len(blocks) == 4 * 3 and all(len(set(b)) == 1 for b in blocks)
    assert [b[0] for b in blocks] == list("otf" "tof" "otf" "tof")
    assert all(p == bench.SETTLE_S > 0 for p in pauses)
    assert timed.count("ours") == timed.count("theirs") == timed.count("floor")


def _run(*ratios):
    return [{"norm": "layer", "layout": "rows", "shape": [8, 64], "direction": d, "ratio": r}
            for d, r in zip(("fwd", "bwd"), ratios)]


def test_runs_combine_into_medians(capsys):
    runs = [_run(1.0, 4.0), _run(3.0, 2.0), _run(2.0, 8.0)]
    rows = bench.combine(runs)
    assert rows == [("layer rows 8x64 fwd", [1.0, 3.0, 2.0]),
                    ("layer rows 8x64 bwd", [4.0, 2.0, 8.0])]
    bench.print_combined(rows)
    out = capsys.readouterr().out
    assert "2.00x" in out and "4.00x" in out  # the medians
    assert "geometric mean of the medians: 2.83x" in out


def test_the_chart_of_several_runs_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "chart.png"
    bench.plot([_run(1.0, 4.0), _run(3.0, 2.0), _run(2.0, 8.0)], str(path))
    assert path.stat().st_size > 0
