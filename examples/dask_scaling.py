"""Normalize a dataset larger than a chunk on a Dask cluster, and recompute a
BatchNorm's running statistics exactly over all of it.

The example writes a float32 ``.npy`` file (``--rows`` x ``--features``),
opens it as a Dask array whose chunks each worker reads from the file
(memory-mapped: no chunk travels through this process), starts a
``dask.distributed.LocalCluster`` and then

1. layer-normalizes every row and writes the result to a second ``.npy``
   file, chunk by chunk, with Dask's progress bar;
2. sets a ``BatchNorm``'s running statistics to the exact per-feature mean
   and unbiased variance of the whole file (one pass over the data), and
   compares them with a float64 reference computed in memory.

Run it with ``python examples/dask_scaling.py`` (``make dask-demo``); point
``--scheduler`` at a running ``dask scheduler`` to use a real cluster whose
workers see the same file system.
"""

import argparse
import os
import tempfile
import time

import dask
import dask.array as da
import numpy as np
from dask.distributed import Client, LocalCluster, progress

import numbanorm as nn


def write_dataset(path, rows, features, seed=0):
    """A float32 ``.npy`` file of ``rows`` x ``features`` values far from 0
    (offsets up to 1e4): a feature store before standardization."""
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, features))
    rng = np.random.default_rng(seed)
    offsets = rng.uniform(-1e4, 1e4, features)
    scales = rng.uniform(0.1, 10.0, features)
    step = 65536
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        data[start:stop] = offsets + scales * rng.standard_normal((stop - start, features))
    data.flush()
    del data


def _read_rows(path, start, stop):
    return np.array(np.load(path, mmap_mode="r")[start:stop])


def npy_array(path, rows_per_chunk):
    """The ``.npy`` file at ``path`` as a Dask array: each chunk is read by
    the worker that computes it."""
    header = np.load(path, mmap_mode="r")
    rows, features = header.shape
    chunks = [
        da.from_delayed(
            dask.delayed(_read_rows)(path, start, min(rows, start + rows_per_chunk)),
            shape=(min(rows, start + rows_per_chunk) - start, features), dtype=header.dtype,
        )
        for start in range(0, rows, rows_per_chunk)
    ]
    return da.concatenate(chunks, axis=0)


def _write_rows(block, path, block_info=None):
    start, stop = block_info[0]["array-location"][0]
    out = np.load(path, mmap_mode="r+")
    out[start:stop] = block
    out.flush()
    return np.zeros((1,) * block.ndim, np.int8)


def store_npy(y, path):
    """Write the Dask array ``y`` into a new ``.npy`` file, each chunk by its
    worker; returns the (tiny) Dask array whose computation writes."""
    np.lib.format.open_memmap(path, mode="w+", dtype=y.dtype, shape=y.shape).flush()
    return y.map_blocks(
        _write_rows, path, chunks=tuple((1,) * len(c) for c in y.chunks), dtype=np.int8,
        meta=np.empty((0,) * y.ndim, np.int8),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--chunk-rows", type=int, default=125_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scheduler", help="address of a running Dask scheduler")
    parser.add_argument("--dir", help="where to write the files (default: a temporary folder)")
    args = parser.parse_args()

    folder = args.dir or tempfile.mkdtemp(prefix="numbanorm-dask-")
    source = os.path.join(folder, "features.npy")
    target = os.path.join(folder, "normalized.npy")
    write_dataset(source, args.rows, args.features)
    size = args.rows * args.features * 4
    chunk = args.chunk_rows * args.features * 4
    print(f"dataset: {source}, {args.rows} x {args.features} float32, {size / 2**20:.0f} MiB "
          f"in chunks of {chunk / 2**20:.0f} MiB ({-(-args.rows // args.chunk_rows)} chunks)")

    if args.scheduler:
        client = Client(args.scheduler)
        cluster = None
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1,
                               dashboard_address=":0")
        client = Client(cluster)
    print(f"cluster: {len(client.scheduler_info()['workers'])} workers")
    try:
        x = npy_array(source, args.chunk_rows)
        weight = np.ones(args.features, np.float32)
        bias = np.zeros(args.features, np.float32)

        print("\n1. layer norm of every row, written to", target)
        start = time.perf_counter()
        y, _ = nn.layer_norm(x, weight=weight, bias=bias)
        written = client.compute(store_npy(y, target))
        progress(written)
        written.result()
        seconds = time.perf_counter() - start
        print(f"\n   {seconds:.2f} s, {2 * size / seconds / 2**30:.2f} GiB/s read + written")
        y_file = np.load(target, mmap_mode="r")
        sample = np.asarray(y_file[:1000], np.float64)
        print(f"   rows 0-999: mean {np.abs(sample.mean(axis=1)).max():.1e} (max |.|), "
              f"std {sample.std(axis=1).min():.6f} to {sample.std(axis=1).max():.6f}")

        print("\n2. BatchNorm running statistics, exactly over all rows")
        layer = nn.BatchNorm(args.features)
        start = time.perf_counter()
        total = nn.precise_batch_norm_stats(layer, x)
        seconds = time.perf_counter() - start
        print(f"   {total.count} values per feature in {seconds:.2f} s (one pass)")
        reference = np.load(source, mmap_mode="r")
        mean = np.zeros(args.features)
        for lo in range(0, args.rows, 65536):
            mean += np.asarray(reference[lo:lo + 65536], np.float64).sum(axis=0)
        mean /= args.rows
        m2 = np.zeros(args.features)
        for lo in range(0, args.rows, 65536):
            m2 += ((np.asarray(reference[lo:lo + 65536], np.float64) - mean) ** 2).sum(axis=0)
        var = m2 / (args.rows - 1)
        print(f"   largest relative error against a float64 two-pass reference: "
              f"mean {np.max(np.abs(total.mean - mean) / np.abs(mean)):.1e}, "
              f"variance {np.max(np.abs(total.unbiased_var - var) / var):.1e}")
        print(f"   running_var (float32) {layer.running_var[:3]} ...")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    main()
