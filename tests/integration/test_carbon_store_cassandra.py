"""The shared CarbonStore suite against the real Cassandra (migration 0012)."""

from __future__ import annotations

import pytest
from cassandra.cluster import Session

from core.carbon import CarbonStore
from core.cassandra_carbon import CassandraCarbonStore
from tests.carbon_store_contract import *  # noqa: F403

pytestmark = pytest.mark.integration


@pytest.fixture
def carbon_store(session: Session) -> CarbonStore:
    return CassandraCarbonStore(session)
