"""The shared RolloutStore suite against the real Cassandra."""

from __future__ import annotations

import pytest
from cassandra.cluster import Session

from core.rollouts.cassandra_store import CassandraRolloutStore
from core.rollouts.store import RolloutStore
from tests.rollout_store_contract import *  # noqa: F403

pytestmark = pytest.mark.integration


@pytest.fixture
def rollout_store(session: Session) -> RolloutStore:
    return CassandraRolloutStore(session)
