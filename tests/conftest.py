"""Test configuration: hypothesis profiles and shared fixtures.

Profiles: ``ci`` (derandomized, bounded, no deadline; the default) and ``dev`` (more examples).
Select with the environment variable ``SRR_HYPOTHESIS_PROFILE``.
"""
import os

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
settings.load_profile(os.environ.get("SRR_HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, torch.get_num_threads()))
