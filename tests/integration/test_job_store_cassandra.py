"""The shared JobStore suite against the real Cassandra."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cassandra.cluster import Session

from core.cassandra.migrate import migrate
from core.cassandra.session import connect
from core.serving.cassandra_jobs import CassandraJobStore
from core.serving.jobs import JobStore
from core.settings import Settings
from tests.job_store_contract import *  # noqa: F403

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def session(settings: Settings) -> Iterator[Session]:
    session = connect(settings)
    migrate(session, settings)
    yield session
    session.cluster.shutdown()


@pytest.fixture
def job_store(session: Session) -> JobStore:
    return CassandraJobStore(session)
