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
def settings(stack: LocalStack, base_settings: Settings) -> Settings:
    """Settings isolated for this session: own topic prefix and keyspace on the shared servers."""
    run = uuid.uuid4().hex[:8]
    return base_settings.model_copy(
        update={"topic_prefix": f"t{run}.", "cassandra_keyspace": f"test_{run}"}
    )
