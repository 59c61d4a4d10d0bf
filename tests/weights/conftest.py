"""Fixtures of the weights tests: the PyTorch reference runs, one per session and suite."""

from __future__ import annotations

import pytest

from tests.weights.test_parity import CASES
from tests.weights.torch_env import run_reference


@pytest.fixture(scope="session")
def fast_references(tmp_path_factory) -> str:
    jobs = [c.job() for c in CASES if not c.slow]
    return run_reference(jobs, str(tmp_path_factory.mktemp("torch_fast")))


@pytest.fixture(scope="session")
def slow_references(tmp_path_factory) -> str:
    jobs = [c.job() for c in CASES if c.slow]
    return run_reference(jobs, str(tmp_path_factory.mktemp("torch_slow")))
