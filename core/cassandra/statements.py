"""What every Cassandra repository shares: prepared statements cached per CQL text, and UTC
conversion of the driver's naive datetimes (``as_utc``)."""

from __future__ import annotations

from typing import Any

from cassandra.cluster import Session
from cassandra.query import PreparedStatement

from schemas.clock import as_utc

__all__ = ["CassandraRepository", "as_utc"]


class CassandraRepository:
    """Base of the Cassandra stores: ``_run(cql, *params)`` prepares each statement once."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._prepared: dict[str, PreparedStatement] = {}

    def _q(self, cql: str) -> PreparedStatement:
        statement = self._prepared.get(cql)
        if statement is None:
            statement = self._prepared[cql] = self.session.prepare(cql)
        return statement

    def _run(self, cql: str, *params: Any) -> Any:
        return self.session.execute(self._q(cql), params)
