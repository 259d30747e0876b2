"""``RolloutStore`` on Cassandra (tables of migration 0013)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cassandra.query import BatchStatement, BatchType

from core.cassandra.statements import CassandraRepository, as_utc
from core.rollouts.models import Cohort, Rollout, RolloutStatus, Stage, TelemetryRow
from core.rollouts.store import RolloutStore

FIELDS = ("rollout_id", "model_id", "version", "baseline_version", "cohort", "stages", "status", "current_stage",
          "stage_started_at", "created_at", "updated_at", "created_by", "revision", "reason")
TELEMETRY_FIELDS = ("rollout_id", "stage", "version", "device_id", "window_start", "window_end", "inference_count",
                    "error_count", "crash_count", "cloud_fallback_count", "p50_ms", "p95_ms", "p99_ms")
TELEMETRY_BATCH = 50  # rows of one partition per unlogged batch


def _utc(value: datetime | None) -> datetime:
    return as_utc(value) or datetime.now(UTC)


class CassandraRolloutStore(CassandraRepository, RolloutStore):
    @staticmethod
    def _rollout(row: Any) -> Rollout:
        return Rollout(
            id=row.rollout_id, model_id=row.model_id, version=row.version, baseline_version=row.baseline_version,
            cohort=Cohort.of(json.loads(row.cohort or "{}")),
            stages=[Stage.of(s) for s in json.loads(row.stages or "[]")], status=RolloutStatus(row.status),
            current_stage=row.current_stage or 0, stage_started_at=_utc(row.stage_started_at),
            created_at=_utc(row.created_at), updated_at=_utc(row.updated_at), created_by=row.created_by or "",
            revision=row.revision or 0, reason=row.reason)

    def create(self, rollout: Rollout) -> str | None:
        for _ in range(3):
            claim = self._run("INSERT INTO rollout_slots (model_id, rollout_id) VALUES (?, ?) IF NOT EXISTS",
                              rollout.model_id, rollout.id).one()
            if claim.applied:
                break
            holder = self.get(claim.rollout_id)
            if holder is not None and not holder.status.terminal:
                return str(claim.rollout_id)
            # A slot left by a create that died before its row, or by a terminal rollout whose release
            # was lost: free it (only if it still names that rollout) and claim again.
            self._run("DELETE FROM rollout_slots WHERE model_id = ? IF rollout_id = ?",
                      rollout.model_id, claim.rollout_id)
        else:
            return str(self._run("SELECT rollout_id FROM rollout_slots WHERE model_id = ?",
                                 rollout.model_id).one().rollout_id)
        values = [rollout.id, rollout.model_id, rollout.version, rollout.baseline_version,
                  json.dumps(rollout.cohort.as_dict()), json.dumps([s.as_dict() for s in rollout.stages]),
                  rollout.status.value, rollout.current_stage, rollout.stage_started_at, rollout.created_at,
                  rollout.updated_at, rollout.created_by, rollout.revision, rollout.reason]
        # Through Paxos like every later change of the row (LWT and plain writes on one row do not mix).
        self._run(f"INSERT INTO rollouts ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))}) "
                  "IF NOT EXISTS", *values)
        self._run("INSERT INTO rollout_latest (model_id, rollout_id) VALUES (?, ?)", rollout.model_id, rollout.id)
        return None

    def get(self, rollout_id: str) -> Rollout | None:
        row = self._run("SELECT * FROM rollouts WHERE rollout_id = ?", rollout_id).one()
        return self._rollout(row) if row else None

    def list_rollouts(self, model_id: str | None = None) -> list[Rollout]:
        # A scan of a small table (one row per rollout ever made), for operators' listings only.
        found = [self._rollout(r) for r in self._run("SELECT * FROM rollouts")]
        return sorted((r for r in found if model_id in (None, r.model_id)), key=lambda r: r.created_at,
                      reverse=True)

    def current(self) -> list[Rollout]:
        ids = [r.rollout_id for r in self._run("SELECT rollout_id FROM rollout_latest")]
        found = (self.get(i) for i in ids)
        return [r for r in found if r is not None]

    def latest(self, model_id: str) -> Rollout | None:
        row = self._run("SELECT rollout_id FROM rollout_latest WHERE model_id = ?", model_id).one()
        return self.get(row.rollout_id) if row else None

    def update(self, rollout: Rollout, expected_revision: int) -> bool:
        applied = self._run(
            "UPDATE rollouts SET status = ?, current_stage = ?, stage_started_at = ?, updated_at = ?, reason = ?, "
            "revision = ? WHERE rollout_id = ? IF revision = ?",
            rollout.status.value, rollout.current_stage, rollout.stage_started_at, rollout.updated_at,
            rollout.reason, expected_revision + 1, rollout.id, expected_revision).one().applied
        if applied and rollout.status.terminal:
            self._run("DELETE FROM rollout_slots WHERE model_id = ? IF rollout_id = ?", rollout.model_id, rollout.id)
        return bool(applied)

    def add_telemetry(self, rows: Sequence[TelemetryRow]) -> None:
        statement = self._q(f"INSERT INTO rollout_telemetry ({', '.join(TELEMETRY_FIELDS)}) "
                            f"VALUES ({', '.join('?' * len(TELEMETRY_FIELDS))})")
        by_partition: dict[tuple[str, int], list[TelemetryRow]] = {}
        for row in rows:
            by_partition.setdefault((row.rollout_id, row.stage), []).append(row)
        for partition in by_partition.values():
            for start in range(0, len(partition), TELEMETRY_BATCH):
                batch = BatchStatement(batch_type=BatchType.UNLOGGED)  # one partition: applied as one
                for r in partition[start:start + TELEMETRY_BATCH]:
                    batch.add(statement, (r.rollout_id, r.stage, r.version, r.device_id, r.window_start,
                                          r.window_end, r.inference_count, r.error_count, r.crash_count,
                                          r.cloud_fallback_count, r.p50_ms, r.p95_ms, r.p99_ms))
                self.session.execute(batch)

    def telemetry(self, rollout_id: str, stage: int) -> list[TelemetryRow]:
        rows = self._run("SELECT * FROM rollout_telemetry WHERE rollout_id = ? AND stage = ?", rollout_id, stage)
        return [TelemetryRow(r.rollout_id, r.stage, r.version, r.device_id, _utc(r.window_start), _utc(r.window_end),
                             r.inference_count or 0, r.error_count or 0, r.crash_count or 0,
                             r.cloud_fallback_count or 0, r.p50_ms, r.p95_ms, r.p99_ms) for r in rows]

    def record_gate(self, rollout_id: str, stage: int, gate: dict[str, Any]) -> None:
        self._run("INSERT INTO rollout_gates (rollout_id, stage, gate) VALUES (?, ?, ?)",
                  rollout_id, stage, json.dumps(gate, default=str))

    def gates(self, rollout_id: str) -> dict[int, dict[str, Any]]:
        rows = self._run("SELECT stage, gate FROM rollout_gates WHERE rollout_id = ?", rollout_id)
        return {r.stage: json.loads(r.gate) for r in rows}
