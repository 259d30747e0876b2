"""The shared JobStore suite against the real Cassandra."""

from __future__ import annotations

import pytest
from cassandra.cluster import Session

from core.serving.cassandra_jobs import CassandraJobStore
from core.serving.jobs import JobStore
from tests.job_store_contract import *  # noqa: F403

pytestmark = pytest.mark.integration


@pytest.fixture
def job_store(session: Session) -> JobStore:
    return CassandraJobStore(session)
