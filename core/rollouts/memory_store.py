"""The in-memory ``RolloutStore`` (unit tests and single-process tools)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any

from core.rollouts.models import Rollout, TelemetryRow
from core.rollouts.store import RolloutStore


class InMemoryRolloutStore(RolloutStore):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rollouts: dict[str, Rollout] = {}
        self._slots: dict[str, str] = {}  # model_id -> active rollout id
        self._latest: dict[str, str] = {}  # model_id -> latest rollout id
        self._telemetry: dict[tuple[str, int], dict[tuple[int, str, Any], TelemetryRow]] = {}
        self._gates: dict[str, dict[int, dict[str, Any]]] = {}

    def create(self, rollout: Rollout) -> str | None:
        with self._lock:
            holder = self._slots.get(rollout.model_id)
            if holder is not None:
                return holder
            self._slots[rollout.model_id] = rollout.id
            self._rollouts[rollout.id] = copy.deepcopy(rollout)
            self._latest[rollout.model_id] = rollout.id
            return None

    def get(self, rollout_id: str) -> Rollout | None:
        with self._lock:
            found = self._rollouts.get(rollout_id)
            return copy.deepcopy(found) if found else None

    def list_rollouts(self, model_id: str | None = None) -> list[Rollout]:
        with self._lock:
            found = [copy.deepcopy(r) for r in self._rollouts.values() if model_id in (None, r.model_id)]
        return sorted(found, key=lambda r: r.created_at, reverse=True)

    def current(self) -> list[Rollout]:
        with self._lock:
            return [copy.deepcopy(self._rollouts[i]) for i in self._latest.values()]

    def latest(self, model_id: str) -> Rollout | None:
        with self._lock:
            rollout_id = self._latest.get(model_id)
            return copy.deepcopy(self._rollouts[rollout_id]) if rollout_id else None

    def update(self, rollout: Rollout, expected_revision: int) -> bool:
        with self._lock:
            stored = self._rollouts.get(rollout.id)
            if stored is None or stored.revision != expected_revision:
                return False
            stored.status, stored.current_stage = rollout.status, rollout.current_stage
            stored.stage_started_at, stored.updated_at = rollout.stage_started_at, rollout.updated_at
            stored.reason, stored.revision = rollout.reason, expected_revision + 1
            if stored.status.terminal and self._slots.get(stored.model_id) == stored.id:
                del self._slots[stored.model_id]
            return True

    def add_telemetry(self, rows: Sequence[TelemetryRow]) -> None:
        with self._lock:
            for row in rows:
                stage = self._telemetry.setdefault((row.rollout_id, row.stage), {})
                stage[(row.version, row.device_id, row.window_start)] = row

    def telemetry(self, rollout_id: str, stage: int) -> list[TelemetryRow]:
        with self._lock:
            return list(self._telemetry.get((rollout_id, stage), {}).values())

    def record_gate(self, rollout_id: str, stage: int, gate: dict[str, Any]) -> None:
        with self._lock:
            self._gates.setdefault(rollout_id, {})[stage] = copy.deepcopy(gate)

    def gates(self, rollout_id: str) -> dict[int, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._gates.get(rollout_id, {}))
