"""Throughput of numbanorm on Dask arrays against in-memory numbanorm.

``python -m numbanorm.bench_dask`` (``make bench-dask``): layer norm and
batch norm, forward and backward, on a float32 array chunked along its rows,
computed on a ``dask.distributed.LocalCluster`` of 1 worker (the kernels'
threads on every core) and of 2 workers (one thread each), and in memory on
the same data. The data live on the workers before the clock starts
(persisted), and each block's result stays there (reduced to one value per
block), so the figures are the norm and the scheduling, not transfers.

Also measured: what the scheduler costs, from graphs that do nothing: per
``compute`` call (one chunk), and per further chunk (256 chunks).
"""

import argparse
import os
import platform
import statistics
import time

import numpy as np

import numbanorm as nn

#: (name, shape, chunk rows, what the statistics reduce).
CASES = [
    ("layer fwd", (262144, 1024), 32768),
    ("layer bwd", (262144, 1024), 32768),
    ("batch fwd", (1048576, 256), 131072),
    ("batch bwd", (1048576, 256), 131072),
]


def _discard(block):
    return np.zeros((1,) * block.ndim, np.int8)


def _kept(da, y):
    """A graph computing ``y`` that keeps each block on its worker."""
    return y.map_blocks(
        _discard, chunks=tuple((1,) * len(c) for c in y.chunks), dtype=np.int8,
        meta=np.empty((0,) * y.ndim, np.int8),
    )


def _arrays(da, n, features, chunk):
    """``x`` (mean 10, deviation 3) and ``dy``, float32, made where they are
    computed: the same values on a cluster's workers and in this process."""
    rng = da.random.default_rng(0)
    shape, chunks = (n, features), (chunk, features)
    x = rng.standard_normal(shape, chunks=chunks, dtype=np.float32) * 3 + 10
    return x.astype(np.float32), rng.standard_normal(shape, chunks=chunks, dtype=np.float32)


def _scheduler_costs(client, da, wait, repeat, chunks=256):
    """Seconds a graph that does nothing costs: per ``compute`` call (one
    chunk) and per further chunk (``chunks`` chunks)."""
    one = da.zeros((1, 1), chunks=1).persist()
    many = da.zeros((chunks, 1), chunks=1).persist()
    wait([one, many])
    t_one = _median_time(lambda: client.compute(_kept(da, one), sync=True), repeat)
    t_many = _median_time(lambda: client.compute(_kept(da, many), sync=True), repeat)
    return t_one, (t_many - t_one) / (chunks - 1)


def _median_time(run, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _in_memory(name, x, dy, weight):
    if name == "layer fwd":
        return lambda: nn.layer_norm(x, weight=weight, bias=weight)
    if name == "batch fwd":
        return lambda: nn.batch_norm(x, weight=weight, bias=weight)
    if name == "layer bwd":
        saved = nn.layer_norm(x, weight=weight, bias=weight)[1]
        return lambda: nn.layer_norm_backward(dy, x, saved, weight=weight)
    saved = nn.batch_norm(x, weight=weight, bias=weight)[1]
    return lambda: nn.batch_norm_backward(dy, x, saved, weight=weight)


def _on_cluster(client, da, name, x, dy, weight):
    """A function that computes the case on the cluster (graph built inside,
    as a user's call builds it)."""
    if name.endswith("fwd"):
        function = nn.layer_norm if name.startswith("layer") else nn.batch_norm

        def run():
            y, saved = function(x, weight=weight, bias=weight)
            client.compute(_kept(da, y), sync=True)

        return run
    if name.startswith("layer"):
        forward, backward = nn.layer_norm, nn.layer_norm_backward
    else:
        forward, backward = nn.batch_norm, nn.batch_norm_backward
    _, saved = forward(x, weight=weight, bias=weight)
    if name.startswith("layer"):  # the statistics computed once, as a training step keeps them
        saved = nn.NormStats(*client.compute([saved.mean, saved.rstd], sync=True), True, True)

    def run():
        dx, dweight, dbias = backward(dy, x, saved, weight=weight)
        client.compute([_kept(da, dx), dweight, dbias], sync=True)

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--scale", type=float, default=1.0,
        help="multiply the row counts and the chunks' (the number of chunks stays)",
    )
    args = parser.parse_args(argv)

    import dask.array as da
    from dask.distributed import Client, LocalCluster, wait

    cores = os.cpu_count()
    print(f"numbanorm on Dask vs in memory, float32, {platform.processor() or platform.machine()},"
          f" {cores} cores; median of {args.repeat}")
    rows = []
    configs = [("1 worker", 1, {}), (f"{cores} workers", cores, {"NUMBA_NUM_THREADS": "1"})]
    results = {}
    overheads = {}
    cases = [
        (name, (max(1, int(n * args.scale)), features), max(1, int(chunk * args.scale)))
        for name, (n, features), chunk in CASES
    ]
    data = {}
    for name, (n, features), chunk in cases:
        key = (n, features, chunk)
        if key not in data:
            data[key] = [a.compute(scheduler="synchronous") for a in _arrays(da, *key)]
        x, dy = data[key]
        weight = np.ones(features, np.float32)
        run = _in_memory(name, x, dy, weight)
        run()  # compiled or loaded before the clock starts
        results[name, "in memory"] = _median_time(run, args.repeat)
    for label, workers, env in configs:
        with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0",
                          env=env) as cluster, Client(cluster) as client:
            for name, (n, features), chunk in cases:
                x, dy = (a.persist() for a in _arrays(da, n, features, chunk))
                wait([x, dy])
                weight = np.ones(features, np.float32)
                run = _on_cluster(client, da, name, x, dy, weight)
                run()  # the workers compile or load the kernels
                results[name, label] = _median_time(run, args.repeat)
            overheads[label] = _scheduler_costs(client, da, wait, args.repeat)
            client.shutdown()
    header = f"{'case':<11} {'shape':>14} {'chunks':>6} {'in memory':>10}"
    for label, _, _ in configs:
        header += f" {label:>12} {'ratio':>6}"
    print(header)
    for name, (n, features), chunk in cases:
        moved = 3 if name.endswith("bwd") else 2
        gib = moved * n * features * 4 / 2**30
        base = results[name, "in memory"]
        line = f"{name:<11} {f'{n}x{features}':>14} {-(-n // chunk):>6} {gib / base:>7.2f} GB/s"
        for label, _, _ in configs:
            t = results[name, label]
            line += f" {gib / t:>7.2f} GB/s {base / t:>5.2f}x"
        rows.append(line)
        print(line)
    print("GB/s: GiB of x, y (forward) or x, dy, dx (backward) moved per second; ratio: "
          "in-memory time / cluster time.")
    for label, (fixed, per_chunk) in overheads.items():
        print(f"scheduler cost, {label}: {1e3 * fixed:.1f} ms per compute call, "
              f"{1e3 * per_chunk:.2f} ms per chunk")


if __name__ == "__main__":
    main()
