"""Integration fixtures: a migrated Cassandra session for each store suite's module."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from cassandra.cluster import Session

from core.cassandra.migrate import migrate
from core.cassandra.session import connect
from settings import Settings
from tests.conftest import drop_session_data


@pytest.fixture(scope="session")
def settings(settings: Settings) -> Iterator[Settings]:
    """A topic prefix and keyspace of their own, beside the session's: the e2e system's services run
    for the whole session on the session's, and its round processor acted on a round the store
    suite had just created (a full run saw a pending round moved on under the contract test)."""
    own = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}it.",
                                      "cassandra_keyspace": f"{settings.cassandra_keyspace}_it"})
    yield own
    if os.environ.get("TRIBUTARY_TEST_KEEP_DATA") != "1":
        drop_session_data(own)


@pytest.fixture(scope="module")
def session(settings: Settings) -> Iterator[Session]:
    """The test session's keyspace, migrated to the latest schema (per module: some integration
    tests drop and re-create the keyspace to prove migrations)."""
    session = connect(settings)
    migrate(session, settings)
    yield session
    session.cluster.shutdown()
