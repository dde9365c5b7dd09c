import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# JIT compilation makes first examples slow: no deadlines. CI is derandomized.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=20,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", deadline=None, max_examples=20, suppress_health_check=[HealthCheck.too_slow]
)
# For a deeper local search: pytest --hypothesis-profile=thorough
settings.register_profile(
    "thorough", deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
