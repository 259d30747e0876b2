"""One Cassandra session per process, configured from settings."""

from __future__ import annotations

from typing import Any

from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy

from settings import Settings


def connect(settings: Settings, keyspace: str | None = None, connect_timeout: float = 10.0) -> Session:
    """Open a session; ``keyspace`` None means no keyspace (for migrations that create it)."""
    kwargs: dict[str, Any] = {
        "contact_points": settings.cassandra_contact_points,
        "port": settings.cassandra_port,
        "execution_profiles": {
            EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=DCAwareRoundRobinPolicy(), request_timeout=15)
        },
        "connect_timeout": connect_timeout,
    }
    if settings.cassandra_username:
        kwargs["auth_provider"] = PlainTextAuthProvider(
            settings.cassandra_username, settings.cassandra_password.get_secret_value()
        )
    cluster = Cluster(**kwargs)
    return cluster.connect(keyspace)
