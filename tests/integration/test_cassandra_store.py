"""The shared FleetStore suite against the real Cassandra."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cassandra.cluster import Session

from core.cassandra.migrate import migrate
from core.cassandra.session import connect
from core.fleet.cassandra_store import CassandraFleetStore
from core.fleet.store import FleetStore
from core.settings import Settings
from tests.store_contract import *  # noqa: F403

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def session(settings: Settings) -> Iterator[Session]:
    session = connect(settings)
    migrate(session, settings)
    yield session
    session.cluster.shutdown()


@pytest.fixture
def store(session: Session) -> FleetStore:
    return CassandraFleetStore(session)
