"""Integration fixtures: one migrated Cassandra session for every store suite of the test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cassandra.cluster import Session

from core.cassandra.migrate import migrate
from core.cassandra.session import connect
from core.settings import Settings


@pytest.fixture(scope="session")
def session(settings: Settings) -> Iterator[Session]:
    """The session's keyspace, migrated to the latest schema."""
    session = connect(settings)
    migrate(session, settings)
    yield session
    session.cluster.shutdown()
