"""``FleetStore`` on Cassandra 5: LWT where a decision must be unique across replicas.

Device lists, counts and round selection go through storage-attached indexes (migration 0005) and
page by token from the previous page's last device. ``list_devices`` (the freshness sweep's first pass
after a processor starts; later passes read index windows) and ``list_models`` read whole tables.
Heartbeats are not LWTs: last-write-wins by their own time (``record_heartbeats``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cassandra.concurrent import execute_concurrent_with_args

from core.cassandra.statements import CassandraRepository, as_utc
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
    Platform,
    RetrainingDecision,
    Round,
    RoundStatus,
    Seat,
    SubjectType,
)
from core.fleet.store import FleetStore, decode_cursor, encode_cursor

CAS_RETRIES = 50
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HEARTBEAT_CONCURRENCY = 64  # reads or writes of one heartbeat batch in flight at once
# A heartbeat's cells carry its own time as their write timestamp: the newest heartbeat wins.
HEARTBEAT_WITH_STATUS = ("UPDATE devices USING TIMESTAMP ? SET last_heartbeat = ?, updated_at = ?, metrics = ?, "
                         "status = ? WHERE device_id = ?")
HEARTBEAT_WITHOUT_STATUS = ("UPDATE devices USING TIMESTAMP ? SET last_heartbeat = ?, updated_at = ?, metrics = ? "
                            "WHERE device_id = ?")
ORPHAN_WAIT_POLLS = 60  # x 50 ms
ROUND_FIELDS = (
    "round_id", "round_number", "status", "target_devices", "min_devices", "timeout_seconds", "created_at",
    "global_model_id", "global_model_path", "selected_devices", "participated_devices", "completed_devices",
    "failed_devices", "started_at", "timeout_at", "completed_at", "aggregated_model_id", "aggregated_model_path",
    "failure_reason", "aggregation_attempts", "aggregation_lease_until", "aggregation_error",
)
MODEL_FIELDS = (
    "model_id", "is_baseline", "created_at", "updated_at", "round_id", "framework", "framework_version",
    "description", "accuracy", "loss", "latest_version", "model_path", "model_size_bytes", "model_hash", "name",
    "task_type", "extra",
)
VERSION_FIELDS = (
    "model_id", "version", "format", "artifact_key", "model_path", "model_size_bytes", "sha256", "uploaded_at",
    "description", "onnx_key", "onnx_size_bytes", "onnx_sha256", "round_id",
)
API_KEY_FIELDS = ("key_hash", "key_id", "subject_type", "subject_id", "created_at", "revoked_at", "label",
                  "created_by", "rate_limit_per_minute")
RETRAINING_FIELDS = ("trigger_id", "model_version", "graphs", "decided_at", "round_id", "reason", "detail")
UPDATE_FIELDS = (
    "round_id", "device_id", "update_id", "model_path", "artifact_key", "model_size_bytes", "sha256", "num_samples",
    "local_loss", "local_accuracy", "training_time_seconds", "created_at",
)



def _micros(at: datetime) -> int:
    """A write timestamp (microseconds since the epoch) from a time: heartbeats are ordered by their own."""
    return ((as_utc(at) or at) - EPOCH) // timedelta(microseconds=1)


def _insert(table: str, fields: tuple[str, ...], suffix: str = "") -> str:
    return f"INSERT INTO {table} ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))}) {suffix}".strip()


class CassandraFleetStore(CassandraRepository, FleetStore):
    # --- devices and keys ---------------------------------------------------------------
    def create_device(self, device: Device, key: ApiKeyRecord) -> bool:
        # The claim (LWT) writes what identifies the device; what heartbeats later overwrite (status,
        # metrics, updated_at) is written next at the registration's own time, so heartbeats, which
        # are last-write-wins by their time, win over it (an LWT's cells carry the coordinator's clock).
        applied = self._run(
            "INSERT INTO devices (device_id, id, platform, capabilities, api_key_id, created_at, freshness) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
            device.device_id, device.id, device.platform.value, json.dumps(device.capabilities),
            device.api_key_id, device.created_at, device.freshness.value,
        ).one().applied
        if applied:
            self._run("UPDATE devices USING TIMESTAMP ? SET status = ?, updated_at = ?, metrics = ? "
                      "WHERE device_id = ?",
                      _micros(device.created_at), device.status.value, device.updated_at, json.dumps(device.metrics),
                      device.device_id)
            self.put_api_key(key)
        return bool(applied)

    def _device(self, row: Any) -> Device:
        return Device(
            id=row.id, device_id=row.device_id, platform=Platform(row.platform or "python"),
            capabilities=json.loads(row.capabilities or "{}"), status=DeviceStatus(row.status or "active"),
            api_key_id=row.api_key_id or "", created_at=as_utc(row.created_at) or datetime.now(UTC),
            updated_at=as_utc(row.updated_at) or datetime.now(UTC), last_heartbeat=as_utc(row.last_heartbeat),
            freshness=Freshness(row.freshness or "offline"), metrics=json.loads(row.metrics or "{}"),
        )

    def get_device(self, device_id: str) -> Device | None:
        row = self._run("SELECT * FROM devices WHERE device_id = ?", device_id).one()
        return self._device(row) if row else None

    def delete_device(self, device_id: str) -> None:
        self._run("DELETE FROM devices WHERE device_id = ?", device_id)

    def record_heartbeats(self, beats: Sequence[Heartbeat]) -> list[Device | None]:
        """One read per device and one write per device with a newer heartbeat, all in flight together
        (no compare-and-set). Each write carries the heartbeat's own time as its cell timestamp
        (``USING TIMESTAMP``), so Cassandra keeps the newest heartbeat whatever order writes arrive in:
        two processors racing over a rebalance, or a redelivered older one, cannot move a row back."""
        ids = list(dict.fromkeys(b.device_id for b in beats))
        reads = execute_concurrent_with_args(self.session, self._q("SELECT * FROM devices WHERE device_id = ?"),
                                             [(device_id,) for device_id in ids], concurrency=HEARTBEAT_CONCURRENCY,
                                             raise_on_first_error=True)
        found = {device_id: rows.one() for device_id, (_, rows) in zip(ids, reads, strict=True)}
        devices = {device_id: self._device(row) for device_id, row in found.items() if row is not None}
        newest: dict[str, Heartbeat] = {}
        for beat in beats:
            at = as_utc(beat.at) or beat.at
            device = devices.get(beat.device_id)
            if device is None or (device.last_heartbeat is not None and at <= device.last_heartbeat):
                continue  # unknown, or older than what is stored (a redelivery): nothing to write
            held = newest.get(beat.device_id)
            if held is None or at > (as_utc(held.at) or held.at):
                newest[beat.device_id] = beat
        writes: dict[str, list[tuple[Any, ...]]] = {HEARTBEAT_WITH_STATUS: [], HEARTBEAT_WITHOUT_STATUS: []}
        for beat in newest.values():
            at = as_utc(beat.at) or beat.at
            device = devices[beat.device_id]
            device.last_heartbeat, device.updated_at, device.metrics = at, at, dict(beat.metrics)
            stamp = _micros(at)
            if beat.status:
                device.status = DeviceStatus(beat.status)
                writes[HEARTBEAT_WITH_STATUS].append((stamp, at, at, json.dumps(beat.metrics), device.status.value,
                                                      beat.device_id))
            else:
                writes[HEARTBEAT_WITHOUT_STATUS].append((stamp, at, at, json.dumps(beat.metrics), beat.device_id))
        for cql, params in writes.items():
            if params:
                execute_concurrent_with_args(self.session, self._q(cql), params, concurrency=HEARTBEAT_CONCURRENCY,
                                             raise_on_first_error=True)
        return [replace(devices[b.device_id]) if b.device_id in devices else None for b in beats]

    def set_freshness(self, device_id: str, expected: Freshness, new: Freshness) -> bool:
        return bool(self._run("UPDATE devices SET freshness = ? WHERE device_id = ? IF freshness = ?",
                              new.value, device_id, expected.value).one().applied)

    def list_devices(self) -> list[Device]:
        return [self._device(row) for row in self._run("SELECT * FROM devices")]

    def find_devices(self, query: DeviceQuery) -> DevicePage:
        # Pages in token order from the last device of the previous page. Not the driver's paging
        # state: Cassandra answers a forged one with a protocol error that closes the connection.
        where, params = _device_filters(query)
        if query.cursor is not None:
            where.append("token(device_id) > token(?)")
            params.append(decode_cursor(query.cursor))
        cql = "SELECT * FROM devices" + (f" WHERE {' AND '.join(where)}" if where else "") + " LIMIT ?"
        rows = list(self._run(cql, *params, query.limit + 1))  # one more tells whether a next page exists
        devices = [self._device(row) for row in rows[:query.limit]]
        more = len(rows) > query.limit
        return DevicePage(devices, encode_cursor(devices[-1].device_id) if more else None)

    def count_devices(self, heartbeat_since: datetime | None = None) -> int:
        if heartbeat_since is None:
            return int(self._run("SELECT COUNT(*) FROM devices").one()[0])
        # Through the last_heartbeat index: only the devices that beat since then are read.
        return int(self._run("SELECT COUNT(*) FROM devices WHERE last_heartbeat >= ?", heartbeat_since).one()[0])

    @staticmethod
    def _api_key(row: Any) -> ApiKeyRecord:
        return ApiKeyRecord(row.key_hash, row.key_id, SubjectType(row.subject_type), row.subject_id,
                            as_utc(row.created_at) or datetime.now(UTC), as_utc(row.revoked_at),
                            label=row.label, created_by=row.created_by,
                            rate_limit_per_minute=row.rate_limit_per_minute)

    def get_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        row = self._run("SELECT * FROM api_keys WHERE key_hash = ?", key_hash).one()
        return self._api_key(row) if row is not None else None

    def put_api_key(self, key: ApiKeyRecord) -> None:
        self._run(_insert("api_keys", API_KEY_FIELDS), key.key_hash, key.key_id, key.subject_type.value,
                  key.subject_id, key.created_at, key.revoked_at, key.label, key.created_by,
                  key.rate_limit_per_minute)

    def find_api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = self._run("SELECT * FROM api_keys WHERE key_id = ?", key_id).one()  # the key_id index (0009)
        return self._api_key(row) if row is not None else None

    def list_api_keys(self, subject_id: str | None = None) -> list[ApiKeyRecord]:
        if subject_id is None:
            rows = self._run("SELECT * FROM api_keys")  # operators list keys: thousands at most
        else:
            rows = self._run("SELECT * FROM api_keys WHERE subject_id = ?", subject_id)  # the subject index
        return sorted((self._api_key(row) for row in rows), key=lambda k: (k.created_at, k.key_id))

    def revoke_api_key(self, key_hash: str, at: datetime) -> bool:
        return bool(self._run("UPDATE api_keys SET revoked_at = ? WHERE key_hash = ? IF revoked_at = null",
                              at, key_hash).one().applied)

    # --- sequences (LWT counters: round numbers, version numbers, pending graphs) --------
    def _increment(self, name: str) -> int:
        """Add one to a named sequence with compare-and-set; returns the new value."""
        self._run("INSERT INTO sequences (name, value) VALUES (?, 0) IF NOT EXISTS", name)
        for _ in range(CAS_RETRIES):
            current = self._run("SELECT value FROM sequences WHERE name = ?", name).one().value
            if self._run("UPDATE sequences SET value = ? WHERE name = ? IF value = ?",
                         current + 1, name, current).one().applied:
                return int(current) + 1
        raise RuntimeError(f"sequence {name!r} CAS kept losing")

    # --- rounds -----------------------------------------------------------------------

    def create_active_round(self, round_: Round) -> Round | None:
        while True:
            claim = self._run(
                "INSERT INTO active_round (slot, round_id) VALUES ('active', ?) IF NOT EXISTS", round_.id
            ).one()
            if claim.applied:
                break
            holder = self._claimed_round(claim.round_id)
            if holder is not None and not holder.status.terminal:
                return holder
            # The slot still names a finished round (its release is a second write, so a start can
            # land between the two, or the releaser crashed) or no round at all: take it over. If
            # someone else changed the slot meanwhile, look again.
            if self._run("UPDATE active_round SET round_id = ? WHERE slot = 'active' IF round_id = ?",
                         round_.id, claim.round_id).one().applied:
                break
        round_.round_number = self._increment("rounds")
        self._write_round(round_)
        self._run("INSERT INTO rounds_by_number (bucket, round_number, round_id) VALUES ('all', ?, ?)",
                  round_.round_number, round_.id)
        return None

    def _claimed_round(self, round_id: str) -> Round | None:
        """The round a slot names; its winner writes it right after claiming, so wait a moment."""
        for _ in range(ORPHAN_WAIT_POLLS):
            holder = self.get_round(round_id)
            if holder is not None:
                return holder
            time.sleep(0.05)
        return None

    def _write_round(self, r: Round) -> None:
        self._run(_insert("rounds", (*ROUND_FIELDS, "selected_count")),
                  r.id, r.round_number, r.status.value, r.target_devices, r.min_devices, r.timeout_seconds,
                  r.created_at, r.global_model_id, r.global_model_path, list(r.selected_devices),
                  r.participated_devices, r.completed_devices, r.failed_devices, r.started_at, r.timeout_at,
                  r.completed_at, r.aggregated_model_id, r.aggregated_model_path, r.failure_reason,
                  r.aggregation_attempts, r.aggregation_lease_until, r.aggregation_error, len(r.selected_devices))

    def _round(self, row: Any) -> Round:
        return Round(
            id=row.round_id, round_number=row.round_number, status=RoundStatus(row.status),
            target_devices=row.target_devices, min_devices=row.min_devices, timeout_seconds=row.timeout_seconds,
            created_at=as_utc(row.created_at) or datetime.now(UTC), global_model_id=row.global_model_id,
            global_model_path=row.global_model_path, selected_devices=list(row.selected_devices or []),
            participated_devices=row.participated_devices or 0, completed_devices=row.completed_devices or 0,
            failed_devices=row.failed_devices or 0, started_at=as_utc(row.started_at),
            timeout_at=as_utc(row.timeout_at), completed_at=as_utc(row.completed_at),
            aggregated_model_id=row.aggregated_model_id, aggregated_model_path=row.aggregated_model_path,
            failure_reason=row.failure_reason, aggregation_attempts=row.aggregation_attempts or 0,
            aggregation_lease_until=as_utc(row.aggregation_lease_until), aggregation_error=row.aggregation_error,
        )

    def get_round(self, round_id: str) -> Round | None:
        row = self._run("SELECT * FROM rounds WHERE round_id = ?", round_id).one()
        return self._round(row) if row else None

    def latest_round(self) -> Round | None:
        row = self._run("SELECT round_id FROM rounds_by_number WHERE bucket = 'all' LIMIT 1").one()
        return self.get_round(row.round_id) if row else None

    def active_round_id(self) -> str | None:
        row = self._run("SELECT round_id FROM active_round WHERE slot = 'active'").one()
        return row.round_id if row else None

    def transition_round(self, round_id: str, expected: RoundStatus, new: RoundStatus, **fields: Any) -> bool:
        unknown = set(fields) - set(ROUND_FIELDS)
        if unknown:
            raise ValueError(f"unknown round fields {sorted(unknown)}")
        if "selected_devices" in fields:  # the count that select_device compares and sets
            fields = {**fields, "selected_count": len(fields["selected_devices"])}
        assignments = ", ".join(["status = ?", *(f"{name} = ?" for name in fields)])
        values = [new.value, *(list(v) if isinstance(v, list) else v for v in fields.values())]
        applied = self.session.execute(
            self._q(f"UPDATE rounds SET {assignments} WHERE round_id = ? IF status = ?"),
            [*values, round_id, expected.value],
        ).one().applied
        if applied and new.terminal:
            self._run("DELETE FROM active_round WHERE slot = 'active' IF round_id = ?", round_id)
        return bool(applied)

    def select_device(self, round_id: str, device_id: str) -> Seat:
        # The LWT compares the count it read: of replicas racing for the last seat one wins, the
        # others read again and find the round full.
        for _ in range(CAS_RETRIES):
            row = self._run("SELECT status, target_devices, selected_devices, selected_count FROM rounds "
                            "WHERE round_id = ?", round_id).one()
            if row is None or row.status != RoundStatus.ACTIVE.value:
                return Seat.CLOSED
            selected = list(row.selected_devices or [])
            if device_id in selected:
                return Seat.HELD
            if len(selected) >= row.target_devices:
                return Seat.FULL
            if self._run("UPDATE rounds SET selected_devices = selected_devices + ?, selected_count = ? "
                         "WHERE round_id = ? IF status = 'active' AND selected_count = ?",
                         [device_id], len(selected) + 1, round_id, row.selected_count).one().applied:
                return Seat.TAKEN
        raise RuntimeError(f"selection CAS of round {round_id} kept losing")

    def claim_aggregation(self, round_id: str, attempts_seen: int, lease_until: datetime) -> bool:
        # A round that went aggregating before migration 0007 has no count yet: null stands for 0.
        for seen in ([attempts_seen] if attempts_seen else [0, None]):
            if self._run("UPDATE rounds SET aggregation_attempts = ?, aggregation_lease_until = ? WHERE round_id = ? "
                         "IF status = 'aggregating' AND aggregation_attempts = ?",
                         attempts_seen + 1, lease_until, round_id, seen).one().applied:
                return True
        return False

    def extend_aggregation(self, round_id: str, attempt: int, lease_until: datetime,
                           error: str | None = None) -> bool:
        if error is None:
            return bool(self._run("UPDATE rounds SET aggregation_lease_until = ? WHERE round_id = ? "
                                  "IF status = 'aggregating' AND aggregation_attempts = ?",
                                  lease_until, round_id, attempt).one().applied)
        return bool(self._run("UPDATE rounds SET aggregation_lease_until = ?, aggregation_error = ? WHERE round_id = ? "
                              "IF status = 'aggregating' AND aggregation_attempts = ?",
                              lease_until, error, round_id, attempt).one().applied)

    def update_round_counters(self, round_id: str, *, participated: int, completed: int, failed: int) -> None:
        self._run("UPDATE rounds SET participated_devices = ?, completed_devices = ?, failed_devices = ? "
                  "WHERE round_id = ?", participated, completed, failed, round_id)

    def add_update(self, update: ModelUpdate) -> bool:
        return bool(self._run(
            _insert("round_updates", UPDATE_FIELDS, "IF NOT EXISTS"),
            update.round_id, update.device_id, update.id, update.model_path, update.artifact_key,
            update.model_size_bytes, update.sha256, update.num_samples, update.local_loss, update.local_accuracy,
            update.training_time_seconds, update.created_at,
        ).one().applied)

    def list_updates(self, round_id: str) -> list[ModelUpdate]:
        return [
            ModelUpdate(id=r.update_id, round_id=r.round_id, device_id=r.device_id, model_path=r.model_path,
                        artifact_key=r.artifact_key, model_size_bytes=r.model_size_bytes, sha256=r.sha256,
                        num_samples=r.num_samples, created_at=as_utc(r.created_at) or datetime.now(UTC),
                        local_loss=r.local_loss, local_accuracy=r.local_accuracy,
                        training_time_seconds=r.training_time_seconds)
            for r in self._run("SELECT * FROM round_updates WHERE round_id = ?", round_id)
        ]

    def withdraw_update(self, round_id: str, device_id: str) -> str | None:
        # A compare-and-set like add_update's: a plain delete could lose to that Paxos write's timestamp.
        found = self._run("SELECT update_id FROM round_updates WHERE round_id = ? AND device_id = ?",
                          round_id, device_id).one()
        if found is None:
            return None
        applied = self._run("DELETE FROM round_updates WHERE round_id = ? AND device_id = ? IF EXISTS",
                            round_id, device_id).one().applied
        return str(found.update_id) if applied else None

    # --- catalog ----------------------------------------------------------------------
    def _model_values(self, m: CatalogModel) -> list[Any]:
        return [m.id, m.is_baseline, m.created_at, m.updated_at, m.round_id, m.framework, m.framework_version,
                m.description, m.accuracy, m.loss, m.latest_version, m.model_path, m.model_size_bytes, m.model_hash,
                m.name, m.task_type, json.dumps(m.extra)]

    def _model(self, r: Any) -> CatalogModel:
        return CatalogModel(
            id=r.model_id, is_baseline=bool(r.is_baseline), created_at=as_utc(r.created_at) or datetime.now(UTC),
            updated_at=as_utc(r.updated_at) or datetime.now(UTC), round_id=r.round_id, framework=r.framework,
            framework_version=r.framework_version, description=r.description, accuracy=r.accuracy, loss=r.loss,
            latest_version=r.latest_version, model_path=r.model_path, model_size_bytes=r.model_size_bytes,
            model_hash=r.model_hash, name=r.name, task_type=r.task_type, extra=json.loads(r.extra or "{}"),
        )

    def create_model(self, model: CatalogModel) -> bool:
        return bool(self.session.execute(self._q(_insert("models", MODEL_FIELDS, "IF NOT EXISTS")),
                                         self._model_values(model)).one().applied)

    def get_model(self, model_id: str) -> CatalogModel | None:
        row = self._run("SELECT * FROM models WHERE model_id = ?", model_id).one()
        return self._model(row) if row else None

    def update_model(self, model: CatalogModel) -> None:
        self.session.execute(self._q(_insert("models", MODEL_FIELDS)), self._model_values(model))

    def delete_model(self, model_id: str) -> bool:
        return bool(self._run("DELETE FROM models WHERE model_id = ? IF EXISTS", model_id).one().applied)

    def list_models(self, *, limit: int, offset: int, framework: str | None = None,
                    is_baseline: bool | None = None, task_type: str | None = None) -> tuple[list[CatalogModel], int]:
        models = [self._model(r) for r in self._run("SELECT * FROM models")]
        matching = [m for m in models
                    if (framework is None or m.framework == framework)
                    and (is_baseline is None or m.is_baseline == is_baseline)
                    and (task_type is None or m.task_type == task_type)]
        matching.sort(key=lambda m: (m.created_at, m.id), reverse=True)
        return matching[offset:offset + limit], len(matching)

    def next_version(self, model_id: str) -> int:
        return self._increment(f"model:{model_id}")

    def add_version(self, v: ModelVersion) -> None:
        self._run(_insert("model_versions", VERSION_FIELDS), v.model_id, v.version, v.format, v.artifact_key,
                  v.model_path, v.model_size_bytes, v.sha256, v.uploaded_at, v.description, v.onnx_key,
                  v.onnx_size_bytes, v.onnx_sha256, v.round_id)

    def _version(self, r: Any) -> ModelVersion:
        return ModelVersion(
            model_id=r.model_id, version=r.version, format=r.format, artifact_key=r.artifact_key,
            model_path=r.model_path, model_size_bytes=r.model_size_bytes, sha256=r.sha256,
            uploaded_at=as_utc(r.uploaded_at) or datetime.now(UTC), description=r.description, onnx_key=r.onnx_key,
            onnx_size_bytes=r.onnx_size_bytes, onnx_sha256=r.onnx_sha256, round_id=r.round_id,
        )

    def get_version(self, model_id: str, version: int) -> ModelVersion | None:
        row = self._run("SELECT * FROM model_versions WHERE model_id = ? AND version = ?", model_id, version).one()
        return self._version(row) if row else None

    def list_versions(self, model_id: str) -> list[ModelVersion]:
        return [self._version(r) for r in self._run("SELECT * FROM model_versions WHERE model_id = ?", model_id)]

    # --- learning graphs -------------------------------------------------------------
    def add_learning_graph(self, graph: LearningGraph) -> int:
        self._run(_insert("learning_graphs", ("graph_id", "device_id_hash", "app_version", "model_version",
                                              "received_at", "graph")),
                  graph.id, graph.device_id_hash, graph.app_version, graph.model_version, graph.received_at,
                  json.dumps(graph.graph))
        return self._increment("pending_graphs")

    def take_pending_graphs(self) -> int:
        for _ in range(CAS_RETRIES):
            row = self._run("SELECT value FROM sequences WHERE name = 'pending_graphs'").one()
            if row is None or row.value == 0:
                return 0
            if self._run("UPDATE sequences SET value = 0 WHERE name = 'pending_graphs' IF value = ?",
                         row.value).one().applied:
                return int(row.value)
        raise RuntimeError("pending graph counter CAS kept losing")

    def _decision(self, row: Any) -> RetrainingDecision:
        return RetrainingDecision(trigger_id=row.trigger_id, model_version=row.model_version or "",
                                  graphs=row.graphs or 0, decided_at=as_utc(row.decided_at) or datetime.now(UTC),
                                  round_id=row.round_id, reason=row.reason, detail=row.detail)

    def get_retraining_decision(self, trigger_id: str) -> RetrainingDecision | None:
        row = self._run("SELECT * FROM retraining_decisions WHERE trigger_id = ?", trigger_id).one()
        return self._decision(row) if row else None

    def record_retraining_decision(self, decision: RetrainingDecision) -> RetrainingDecision:
        d = decision
        result = self._run(_insert("retraining_decisions", RETRAINING_FIELDS, "IF NOT EXISTS"), d.trigger_id,
                           d.model_version, d.graphs, d.decided_at, d.round_id, d.reason, d.detail).one()
        # A refused LWT answers with the row that holds: the first decision stays the decision.
        return decision if result.applied else self._decision(result)

    # --- rate limiting ----------------------------------------------------------------
    def hit(self, subject: str, window_start: int, count: int = 1) -> int:
        # A lease row that expires by itself (migration 0008), then the window's sum.
        self._run("INSERT INTO rate_limit_leases (subject, window_start, lease_id, tokens) VALUES (?, ?, now(), ?)",
                  subject, window_start, count)
        row = self._run("SELECT SUM(tokens) AS hits FROM rate_limit_leases WHERE subject = ? AND window_start = ?",
                        subject, window_start).one()
        return int(row.hits) if row and row.hits else count


def _device_filters(query: DeviceQuery) -> tuple[list[str], list[Any]]:
    """CQL predicates on the indexed columns (migration 0005) and their values."""
    where: list[str] = []
    params: list[Any] = []
    for clause, value in (("status = ?", query.status.value if query.status else None),
                          ("platform = ?", query.platform.value if query.platform else None),
                          ("last_heartbeat < ?", query.heartbeat_before),
                          ("last_heartbeat >= ?", query.heartbeat_since)):
        if value is not None:
            where.append(clause)
            params.append(value)
    return where, params

