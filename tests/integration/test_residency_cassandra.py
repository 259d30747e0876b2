"""The shared ResidencyStore suite against the real Cassandra (TTLs measured in real time)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from cassandra.cluster import Session

from core.cassandra.migrate import migrate
from core.cassandra.session import connect
from core.serving.cassandra_residency import CassandraResidencyStore
from core.settings import Settings
from tests.residency_contract import *  # noqa: F403
from tests.residency_contract import Fixture

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def session(settings: Settings) -> Iterator[Session]:
    session = connect(settings)
    migrate(session, settings)
    yield session
    session.cluster.shutdown()


@pytest.fixture
def residency(session: Session) -> Fixture:
    return CassandraResidencyStore(session), time.sleep
