"""``FleetStore`` in memory: same semantics as Cassandra, for unit tests of the domain."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from core.fleet.models import (
    ApiKeyRecord,
    CatalogModel,
    Device,
    DevicePage,
    DeviceQuery,
    DeviceStatus,
    Freshness,
    Heartbeat,
    LearningGraph,
    ModelUpdate,
    ModelVersion,
    RetrainingDecision,
    Round,
    RoundStatus,
    Seat,
)
from core.fleet.store import FleetStore, decode_cursor, encode_cursor


def _aware(ts: datetime | None) -> datetime | None:
    return ts.replace(tzinfo=UTC) if ts is not None and ts.tzinfo is None else ts


class InMemoryFleetStore(FleetStore):
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.devices: dict[str, Device] = {}
        self.keys: dict[str, ApiKeyRecord] = {}
        self.rounds: dict[str, Round] = {}
        self.active: str | None = None
        self.round_counter = 0
        self.updates: dict[tuple[str, str], ModelUpdate] = {}
        self.models: dict[str, CatalogModel] = {}
        self.versions: dict[tuple[str, int], ModelVersion] = {}
        self.version_counters: dict[str, int] = {}
        self.graphs: list[LearningGraph] = []
        self.pending_graphs = 0
        self.retraining: dict[str, RetrainingDecision] = {}
        self.hits: dict[tuple[str, int], int] = {}

    # Callers get copies, as they would from a database.
    def create_device(self, device: Device, key: ApiKeyRecord) -> bool:
        with self._lock:
            if device.device_id in self.devices:
                return False
            self.devices[device.device_id] = copy.deepcopy(device)
            self.keys[key.key_hash] = key
            return True

    def get_device(self, device_id: str) -> Device | None:
        with self._lock:
            device = self.devices.get(device_id)
            return copy.deepcopy(device) if device else None

    def record_heartbeats(self, beats: Sequence[Heartbeat]) -> list[Device | None]:
        with self._lock:
            for beat in beats:
                device = self.devices.get(beat.device_id)
                at = _aware(beat.at) or beat.at
                if device is not None and (device.last_heartbeat is None or at > device.last_heartbeat):
                    device.last_heartbeat = at
                    device.metrics = dict(beat.metrics)
                    device.updated_at = at
                    if beat.status:
                        device.status = DeviceStatus(beat.status)
            return [copy.deepcopy(self.devices[b.device_id]) if b.device_id in self.devices else None for b in beats]

    def set_freshness(self, device_id: str, expected: Freshness, new: Freshness) -> bool:
        with self._lock:
            device = self.devices.get(device_id)
            if device is None or device.freshness is not expected:
                return False
            device.freshness = new
            return True

    def list_devices(self) -> list[Device]:
        with self._lock:
            return [copy.deepcopy(d) for d in self.devices.values()]

    def find_devices(self, query: DeviceQuery) -> DevicePage:
        with self._lock:
            matching = sorted((d for d in self.devices.values() if _matches(d, query)), key=lambda d: d.device_id)
        if query.cursor is not None:
            after = decode_cursor(query.cursor)
            matching = [d for d in matching if d.device_id > after]
        page = [copy.deepcopy(d) for d in matching[:query.limit]]
        more = len(matching) > query.limit
        return DevicePage(page, encode_cursor(page[-1].device_id) if more and page else None)

    def count_devices(self, heartbeat_since: datetime | None = None) -> int:
        with self._lock:
            if heartbeat_since is None:
                return len(self.devices)
            return sum(1 for d in self.devices.values()
                       if d.last_heartbeat is not None and d.last_heartbeat >= heartbeat_since)

    def get_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        with self._lock:
            return self.keys.get(key_hash)

    def put_api_key(self, key: ApiKeyRecord) -> None:
        with self._lock:
            self.keys[key.key_hash] = key

    def revoke_api_key(self, key_hash: str, at: datetime) -> bool:
        with self._lock:
            key = self.keys.get(key_hash)
            if key is None or key.revoked_at is not None:
                return False
            self.keys[key_hash] = replace(key, revoked_at=at)
            return True

    def find_api_key(self, key_id: str) -> ApiKeyRecord | None:
        with self._lock:
            return next((k for k in self.keys.values() if k.key_id == key_id), None)

    def list_api_keys(self, subject_id: str | None = None) -> list[ApiKeyRecord]:
        with self._lock:
            keys = [k for k in self.keys.values() if subject_id is None or k.subject_id == subject_id]
        return sorted(keys, key=lambda k: (k.created_at, k.key_id))

    def delete_device(self, device_id: str) -> None:
        with self._lock:
            self.devices.pop(device_id, None)

    def create_active_round(self, round_: Round) -> Round | None:
        with self._lock:
            if self.active is not None:
                return copy.deepcopy(self.rounds[self.active])
            self.round_counter += 1
            round_.round_number = self.round_counter
            self.rounds[round_.id] = copy.deepcopy(round_)
            self.active = round_.id
            return None

    def get_round(self, round_id: str) -> Round | None:
        with self._lock:
            found = self.rounds.get(round_id)
            return copy.deepcopy(found) if found else None

    def latest_round(self) -> Round | None:
        with self._lock:
            if not self.rounds:
                return None
            return copy.deepcopy(max(self.rounds.values(), key=lambda r: r.round_number))

    def active_round_id(self) -> str | None:
        with self._lock:
            return self.active

    def transition_round(self, round_id: str, expected: RoundStatus, new: RoundStatus, **fields: Any) -> bool:
        with self._lock:
            round_ = self.rounds.get(round_id)
            if round_ is None or round_.status is not expected:
                return False
            round_.status = new
            for name, value in fields.items():
                setattr(round_, name, copy.deepcopy(value))  # never share a caller's list
            if new.terminal and self.active == round_id:
                self.active = None
            return True

    def select_device(self, round_id: str, device_id: str) -> Seat:
        with self._lock:
            round_ = self.rounds.get(round_id)
            if round_ is None or round_.status is not RoundStatus.ACTIVE:
                return Seat.CLOSED
            if device_id in round_.selected_devices:
                return Seat.HELD
            if len(round_.selected_devices) >= round_.target_devices:
                return Seat.FULL
            round_.selected_devices.append(device_id)
            return Seat.TAKEN

    def claim_aggregation(self, round_id: str, attempts_seen: int, lease_until: datetime) -> bool:
        with self._lock:
            round_ = self.rounds.get(round_id)
            if (round_ is None or round_.status is not RoundStatus.AGGREGATING
                    or round_.aggregation_attempts != attempts_seen):
                return False
            round_.aggregation_attempts, round_.aggregation_lease_until = attempts_seen + 1, lease_until
            return True

    def extend_aggregation(self, round_id: str, attempt: int, lease_until: datetime,
                           error: str | None = None) -> bool:
        with self._lock:
            round_ = self.rounds.get(round_id)
            if (round_ is None or round_.status is not RoundStatus.AGGREGATING
                    or round_.aggregation_attempts != attempt):
                return False
            round_.aggregation_lease_until = lease_until
            if error is not None:
                round_.aggregation_error = error
            return True

    def update_round_counters(self, round_id: str, *, participated: int, completed: int, failed: int) -> None:
        with self._lock:
            round_ = self.rounds[round_id]
            round_.participated_devices, round_.completed_devices, round_.failed_devices = (
                participated, completed, failed)

    def add_update(self, update: ModelUpdate) -> bool:
        with self._lock:
            key = (update.round_id, update.device_id)
            if key in self.updates:
                return False
            self.updates[key] = update
            return True

    def list_updates(self, round_id: str) -> list[ModelUpdate]:
        with self._lock:
            return [u for (r, _), u in self.updates.items() if r == round_id]

    def withdraw_update(self, round_id: str, device_id: str) -> str | None:
        with self._lock:
            update = self.updates.pop((round_id, device_id), None)
            return update.id if update is not None else None

    def create_model(self, model: CatalogModel) -> bool:
        with self._lock:
            if model.id in self.models:
                return False
            self.models[model.id] = copy.deepcopy(model)
            return True

    def get_model(self, model_id: str) -> CatalogModel | None:
        with self._lock:
            model = self.models.get(model_id)
            return copy.deepcopy(model) if model else None

    def update_model(self, model: CatalogModel) -> None:
        with self._lock:
            self.models[model.id] = copy.deepcopy(model)

    def delete_model(self, model_id: str) -> bool:
        with self._lock:
            return self.models.pop(model_id, None) is not None

    def list_models(self, *, limit: int, offset: int, framework: str | None = None,
                    is_baseline: bool | None = None, task_type: str | None = None) -> tuple[list[CatalogModel], int]:
        with self._lock:
            matching = [m for m in self.models.values()
                        if (framework is None or m.framework == framework)
                        and (is_baseline is None or m.is_baseline == is_baseline)
                        and (task_type is None or m.task_type == task_type)]
            matching.sort(key=lambda m: (m.created_at, m.id), reverse=True)
            return [copy.deepcopy(m) for m in matching[offset:offset + limit]], len(matching)

    def next_version(self, model_id: str) -> int:
        with self._lock:
            self.version_counters[model_id] = self.version_counters.get(model_id, 0) + 1
            return self.version_counters[model_id]

    def add_version(self, version: ModelVersion) -> None:
        with self._lock:
            self.versions[(version.model_id, version.version)] = version

    def get_version(self, model_id: str, version: int) -> ModelVersion | None:
        with self._lock:
            return self.versions.get((model_id, version))

    def list_versions(self, model_id: str) -> list[ModelVersion]:
        with self._lock:
            return sorted((v for (m, _), v in self.versions.items() if m == model_id), key=lambda v: v.version)

    def add_learning_graph(self, graph: LearningGraph) -> int:
        with self._lock:
            self.graphs.append(graph)
            self.pending_graphs += 1
            return self.pending_graphs

    def take_pending_graphs(self) -> int:
        with self._lock:
            taken, self.pending_graphs = self.pending_graphs, 0
            return taken

    def get_retraining_decision(self, trigger_id: str) -> RetrainingDecision | None:
        with self._lock:
            return self.retraining.get(trigger_id)

    def record_retraining_decision(self, decision: RetrainingDecision) -> RetrainingDecision:
        with self._lock:
            return self.retraining.setdefault(decision.trigger_id, decision)

    def hit(self, subject: str, window_start: int, count: int = 1) -> int:
        with self._lock:
            key = (subject, window_start)
            self.hits[key] = self.hits.get(key, 0) + count
            return self.hits[key]


def _matches(device: Device, query: DeviceQuery) -> bool:
    seen = device.last_heartbeat
    return ((query.status is None or device.status is query.status)
            and (query.platform is None or device.platform is query.platform)
            and (query.heartbeat_before is None or (seen is not None and seen < query.heartbeat_before))
            and (query.heartbeat_since is None or (seen is not None and seen >= query.heartbeat_since)))
