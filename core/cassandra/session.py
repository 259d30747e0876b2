"""One Cassandra session per process, configured from settings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy
from cassandra.query import named_tuple_factory

from settings import Settings


@lru_cache(maxsize=512)
def _row_class(colnames: tuple[str, ...]) -> Callable[..., Any]:
    """The driver's namedtuple row type for these columns (its name cleaning included), made once."""
    return type(named_tuple_factory(list(colnames), [(None,) * len(colnames)])[0])


def cached_named_tuple_factory(colnames: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Any]:
    """Rows as the driver's default factory makes them, without its cost: it builds a new namedtuple
    class for every result (py-spy: 5 % of the ingress under heartbeat load); the class is the same
    for the same columns, so it is built once per column list."""
    row = _row_class(tuple(colnames))
    return [row(*values) for values in rows]


def connect(settings: Settings, keyspace: str | None = None, connect_timeout: float = 10.0) -> Session:
    """Open a session; ``keyspace`` None means no keyspace (for migrations that create it)."""
    kwargs: dict[str, Any] = {
        "contact_points": settings.cassandra_contact_points,
        "port": settings.cassandra_port,
        "execution_profiles": {
            EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=DCAwareRoundRobinPolicy(), request_timeout=15,
                                                   row_factory=cached_named_tuple_factory)
        },
        "connect_timeout": connect_timeout,
    }
    if settings.cassandra_username:
        kwargs["auth_provider"] = PlainTextAuthProvider(
            settings.cassandra_username, settings.cassandra_password.get_secret_value()
        )
    cluster = Cluster(**kwargs)
    return cluster.connect(keyspace)
