"""Session fixtures: the real local stack is started once per test session and reused.

Servers already running (a developer's ``tributary up``, or endpoints given by settings)
are reused and left running; what this session started, it stops at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from infra.local_stack import LocalStack
from settings import Settings


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def stack(base_settings: Settings) -> Iterator[LocalStack]:
    local = LocalStack(base_settings)
    started = local.up(progress=lambda line: print(f"[stack] {line}"))
    yield local
    if os.environ.get("TRIBUTARY_TEST_KEEP_STACK") != "1":
        for server in local:
            if server.name in started:
                server.stop()


@pytest.fixture(scope="session")
def settings(stack: LocalStack, base_settings: Settings) -> Iterator[Settings]:
    """Settings isolated for this session: own topic prefix and keyspace on the shared servers.

    At the end the session drops its keyspace and deletes its topics (``TRIBUTARY_TEST_KEEP_DATA=1``
    keeps them to look at): on servers kept between sessions, each session's tables and SAI indexes
    stay in Cassandra's heap, and a few hundred sessions' worth ran a 1 GB node out of memory."""
    run = uuid.uuid4().hex[:8]
    isolated = base_settings.model_copy(update={"topic_prefix": f"t{run}.", "cassandra_keyspace": f"test_{run}"})
    yield isolated
    if os.environ.get("TRIBUTARY_TEST_KEEP_DATA") != "1":
        drop_session_data(isolated)


def drop_session_data(settings: Settings) -> None:
    from core.cassandra.session import connect
    from topology.admin import admin_client

    try:
        admin = admin_client(settings)
        topics = [name for name in admin.list_topics(timeout=10).topics if name.startswith(settings.topic_prefix)]
        for future in admin.delete_topics(topics, operation_timeout=30).values() if topics else ():
            future.result(timeout=60)
        session = connect(settings)
        session.execute(f'DROP KEYSPACE IF EXISTS "{settings.cassandra_keyspace}"', timeout=120)
        session.cluster.shutdown()
    except Exception as exc:  # cleanup must not fail a finished session; say what was left
        print(f"[stack] could not drop this session's data ({settings.topic_prefix}*, "
              f"{settings.cassandra_keyspace}): {exc!r}")
