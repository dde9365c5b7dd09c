"""The Dask engine: norms of ``dask.array.Array`` input, block by block
through the CPU kernels, statistics merged exactly as moments across blocks
(:mod:`.norms` builds the graphs, :mod:`.blocks` is what runs on a block).
Imported on first use, by :func:`numbanorm._layout.dask_dispatch`."""
