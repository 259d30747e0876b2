"""The shared TrainingJobStore suite against the real Cassandra (migration 0011)."""

from __future__ import annotations

import pytest
from cassandra.cluster import Session

from core.training.cassandra_store import CassandraTrainingJobStore
from core.training.store import TrainingJobStore
from tests.training_store_contract import *  # noqa: F403

pytestmark = pytest.mark.integration


@pytest.fixture
def training_store(session: Session) -> TrainingJobStore:
    return CassandraTrainingJobStore(session)
