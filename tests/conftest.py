"""Test configuration: hypothesis profiles and shared fixtures.

Profiles, selected with the environment variable ``SRR_HYPOTHESIS_PROFILE``:

- ``ci`` (the default): derandomized, so every run draws the same examples; 25 per test, and at
  least 100 for the core properties (``token_strategies.core``, ``tests/test_properties.py``).
- ``dev``: randomized, 200 examples per test.
- ``random``: randomized, 1000 examples per test, for exploring locally; a failure prints the
  ``@reproduce_failure`` blob that replays it.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "random",
    derandomize=False,
    deadline=None,
    max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("SRR_HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def _no_test_writes_the_users_cache(tmp_path_factory):
    """Decoded datasets go to a folder of this test session, never ``~/.cache/srr``; ``SRR_TEST_CACHE_DIR``
    names a folder to reuse across sessions instead (CI: decode the real CIFAR once)."""
    previous = os.environ.get("SRR_CACHE_DIR")
    os.environ["SRR_CACHE_DIR"] = os.environ.get("SRR_TEST_CACHE_DIR") or str(tmp_path_factory.mktemp("srr-cache"))
    yield
    if previous is None:
        os.environ.pop("SRR_CACHE_DIR", None)
    else:
        os.environ["SRR_CACHE_DIR"] = previous
