"""Fixtures shared by every test package: a seeded rng and hypothesis settings."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Deadlines fail on a loaded 2-core CI machine for no fault of the code under test.
# The default profile is derandomized, so a run is reproducible and CI never fails on a
# new draw; `HYPOTHESIS_PROFILE=explore make unit` searches with fresh random examples.
settings.register_profile(
    "default",
    deadline=None,
    max_examples=60,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
