"""The shared DatasetStore suite against the real Cassandra (migration 0010)."""

from __future__ import annotations

import pytest
from cassandra.cluster import Session

from core.datasets.cassandra_store import CassandraDatasetStore
from core.datasets.store import DatasetStore
from tests.dataset_store_contract import *  # noqa: F403

pytestmark = pytest.mark.integration


@pytest.fixture
def datasets(session: Session) -> DatasetStore:
    return CassandraDatasetStore(session)
