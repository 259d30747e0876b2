"""One isolated run on the local stack for a benchmark: what every bench here sets up first."""

from __future__ import annotations

import os
import uuid
from typing import Any

from pydantic import SecretStr

from core.api_keys import new_api_key
from core.cassandra.migrate import migrate
from core.cassandra.session import connect
from settings import Settings
from tests.e2e.conftest import free_port
from topology.admin import apply


def isolated_settings(name: str, **overrides: Any) -> Settings:
    """Settings with a topic prefix and keyspace of their own (migrated, topics applied), free REST
    and gRPC ports, a fresh operator key and a rate limit no bench reaches; ``overrides`` on top."""
    suffix = uuid.uuid4().hex[:6]
    fields: dict[str, Any] = {
        "topic_prefix": f"{name}{suffix}.", "cassandra_keyspace": f"{name}_{suffix}", "api_port": free_port(),
        "grpc_port": free_port(), "admin_api_key": SecretStr(new_api_key()), "rate_limit_per_minute": 10_000_000,
        **overrides,
    }
    settings = Settings(**fields)
    session = connect(settings)
    try:
        migrate(session, settings)
    finally:
        session.cluster.shutdown()
    apply(settings)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")  # the services' logs arrive as they are written
    return settings
