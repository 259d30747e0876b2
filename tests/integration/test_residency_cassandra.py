"""The shared ResidencyStore suite against the real Cassandra (TTLs measured in real time)."""

from __future__ import annotations

import time

import pytest
from cassandra.cluster import Session

from core.serving.cassandra_residency import CassandraResidencyStore
from tests.residency_contract import *  # noqa: F403
from tests.residency_contract import Fixture

pytestmark = pytest.mark.integration


@pytest.fixture
def residency(session: Session) -> Fixture:
    return CassandraResidencyStore(session), time.sleep
