"""The shared JobStore suite against the in-memory store."""

from __future__ import annotations

import pytest

from core.serving.jobs import InMemoryJobStore, JobStore
from tests.job_store_contract import *  # noqa: F403

pytestmark = pytest.mark.unit


@pytest.fixture
def job_store() -> JobStore:
    return InMemoryJobStore()
