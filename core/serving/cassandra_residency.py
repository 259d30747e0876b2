"""``ResidencyStore`` on Cassandra (table ``model_residency``, migration 0004): every write is an
upsert ``USING TTL``, so rows whose worker stopped refreshing them expire."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from core.cassandra.statements import CassandraRepository, as_utc
from core.serving.residency import Residency, ResidencyState, ResidencyStore

FIELDS = ("model_id", "worker", "state", "memory_bytes", "device", "task_type", "loaded_at", "last_used_at",
          "error_code", "error", "updated_at")
INSERT = (f"INSERT INTO model_residency ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))}) "
          "USING TTL ?")
SELECT = f"SELECT {', '.join(FIELDS)} FROM model_residency"


class CassandraResidencyStore(CassandraRepository, ResidencyStore):

    @staticmethod
    def _row(row: Any) -> Residency:
        return Residency(
            model_id=row.model_id, worker=row.worker, state=ResidencyState(row.state or "unhealthy"),
            updated_at=as_utc(row.updated_at) or datetime.now(UTC), memory_bytes=row.memory_bytes or 0,
            device=row.device or "cpu", task_type=row.task_type, loaded_at=as_utc(row.loaded_at),
            last_used_at=as_utc(row.last_used_at), error_code=row.error_code, error=row.error,
        )

    def put(self, row: Residency, ttl_s: int) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._run(INSERT, row.model_id, row.worker, row.state.value, row.memory_bytes, row.device, row.task_type,
                  row.loaded_at, row.last_used_at, row.error_code, row.error, row.updated_at, int(ttl_s))

    def delete(self, model_id: str, worker: str) -> None:
        self._run("DELETE FROM model_residency WHERE model_id = ? AND worker = ?", model_id, worker)

    def for_model(self, model_id: str) -> list[Residency]:
        rows = self._run(f"{SELECT} WHERE model_id = ?", model_id)
        return sorted((self._row(r) for r in rows), key=lambda r: r.worker)

    def all(self) -> list[Residency]:
        return sorted((self._row(r) for r in self._run(SELECT)), key=lambda r: (r.model_id, r.worker))
