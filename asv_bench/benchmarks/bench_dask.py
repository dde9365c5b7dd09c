"""numbanorm on Dask arrays, on Dask's threaded scheduler (no cluster):
layer norm with whole rows per chunk (one in-memory call per block) and
batch norm over a chunked batch (moments merged across blocks), forward and
backward. ``python -m numbanorm.bench_dask`` measures a LocalCluster."""

import numpy as np


class DaskNorms:
    params = [["layer", "batch"], ["fwd", "bwd"]]
    param_names = ["norm", "direction"]

    def setup(self, norm, direction):
        import dask
        import dask.array as da

        import numbanorm as nn

        self.dask = dask
        rng = np.random.default_rng(0)
        shape, chunks = ((65536, 512), (8192, 512))
        x = (rng.standard_normal(shape, np.float32) * 3 + 10).astype(np.float32)
        dy = rng.standard_normal(shape, np.float32)
        self.x = da.from_array(x, chunks=chunks)
        self.dy = da.from_array(dy, chunks=chunks)
        self.weight = np.ones(shape[1], np.float32)
        if norm == "layer":
            self.forward, self.backward = nn.layer_norm, nn.layer_norm_backward
        else:
            self.forward, self.backward = nn.batch_norm, nn.batch_norm_backward
        _, saved = self.forward(self.x, weight=self.weight, bias=self.weight)
        self.saved = nn.NormStats(
            *(np.asarray(a) if a is not None else None for a in dask.compute(*saved[:2])),
            True, True,
        )
        # First calls outside the clock: kernels compiled or loaded.
        self.time_norm(norm, direction)

    def time_norm(self, norm, direction):
        with self.dask.config.set(scheduler="threads"):
            if direction == "fwd":
                y, _ = self.forward(self.x, weight=self.weight, bias=self.weight)
                y.sum().compute()
            else:
                dx, dweight, _ = self.backward(self.dy, self.x, self.saved, weight=self.weight)
                self.dask.compute(dx.sum(), dweight)
