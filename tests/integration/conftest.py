"""Integration fixtures: a migrated Cassandra session for each store suite's module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cassandra.cluster import Session

from core.cassandra.migrate import migrate
from core.cassandra.session import connect
from settings import Settings


@pytest.fixture(scope="module")
def session(settings: Settings) -> Iterator[Session]:
    """The test session's keyspace, migrated to the latest schema (per module: some integration
    tests drop and re-create the keyspace to prove migrations)."""
    session = connect(settings)
    migrate(session, settings)
    yield session
    session.cluster.shutdown()
