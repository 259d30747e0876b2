"""The shared FleetStore suite against the real Cassandra."""

from __future__ import annotations

import pytest
from cassandra.cluster import Session

from core.fleet.cassandra_store import CassandraFleetStore
from core.fleet.store import FleetStore
from tests.store_contract import *  # noqa: F403

pytestmark = pytest.mark.integration


@pytest.fixture
def store(session: Session) -> FleetStore:
    return CassandraFleetStore(session)
