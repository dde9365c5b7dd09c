"""The CUDA back end's tests run where Numba can run CUDA kernels: on a GPU,
or under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set before Numba is
imported; ``make test`` runs this directory a second time that way).
Elsewhere they are skipped, with the reason."""

import pytest
from numba import cuda


def pytest_collection_modifyitems(config, items):
    if cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="no CUDA GPU: run with NUMBA_ENABLE_CUDASIM=1 (make test does)"
    )
    for item in items:
        if "/tests/cuda/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)
