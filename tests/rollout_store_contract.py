"""One test suite for every ``RolloutStore`` implementation (memory in unit, Cassandra in integration).

Each implementation's module defines a ``rollout_store`` fixture and does
``from tests.rollout_store_contract import *``.
"""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta

from core.rollouts.models import Cohort, Rollout, RolloutStatus, Stage, TelemetryRow
from core.rollouts.store import RolloutStore

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def make_rollout(model_id: str | None = None, **overrides: object) -> Rollout:
    fields: dict[str, object] = {
        "id": str(uuid.uuid4()), "model_id": model_id or f"org/m-{uuid.uuid4().hex[:8]}", "version": 2,
        "baseline_version": 1, "cohort": Cohort(platforms=("android",), capabilities={"memory_gb": {"min": 4}}),
        "stages": [Stage(10, 60, 5, 0.05, 0.01, 250.0), Stage(100, 0)], "status": RolloutStatus.ACTIVE,
        "current_stage": 0, "stage_started_at": T0, "created_at": T0, "updated_at": T0, "created_by": "key_op",
    }
    fields.update(overrides)
    return Rollout(**fields)  # type: ignore[arg-type]


def test_create_stores_the_rollout_and_reads_it_back(rollout_store: RolloutStore) -> None:
    rollout = make_rollout()
    assert rollout_store.create(rollout) is None
    stored = rollout_store.get(rollout.id)
    assert stored is not None
    assert (stored.model_id, stored.version, stored.baseline_version, stored.cohort, stored.stages, stored.status,
            stored.current_stage, stored.stage_started_at, stored.revision) == (
        rollout.model_id, 2, 1, rollout.cohort, rollout.stages, RolloutStatus.ACTIVE, 0, T0, 0)
    assert rollout_store.get(str(uuid.uuid4())) is None


def test_one_active_rollout_per_model_until_it_ends(rollout_store: RolloutStore) -> None:
    first = make_rollout()
    assert rollout_store.create(first) is None
    second = make_rollout(first.model_id)
    assert rollout_store.create(second) == first.id  # the slot's holder, nothing written
    assert rollout_store.get(second.id) is None
    assert rollout_store.create(make_rollout()) is None  # another model has its own slot
    done = copy.deepcopy(first)
    done.status = RolloutStatus.ROLLED_BACK
    assert rollout_store.update(done, 0)
    assert rollout_store.create(second) is None  # the slot is free once the first ended
    assert [r.id for r in rollout_store.current() if r.model_id == first.model_id] == [second.id]
    latest = rollout_store.latest(first.model_id)
    assert latest is not None and latest.id == second.id
    assert rollout_store.latest("org/never-rolled-out") is None


def test_update_is_a_compare_and_set_on_the_revision(rollout_store: RolloutStore) -> None:
    rollout = make_rollout()
    rollout_store.create(rollout)
    advanced = copy.deepcopy(rollout)
    advanced.current_stage, advanced.stage_started_at, advanced.reason = 1, T0 + timedelta(minutes=5), "gate"
    assert rollout_store.update(advanced, 0)
    assert not rollout_store.update(advanced, 0)  # a second writer with the same token loses
    stored = rollout_store.get(rollout.id)
    assert stored is not None
    assert (stored.current_stage, stored.stage_started_at, stored.reason, stored.revision) == (
        1, T0 + timedelta(minutes=5), "gate", 1)


def test_list_is_newest_first_and_filters_by_model(rollout_store: RolloutStore) -> None:
    older = make_rollout(created_at=T0)
    newer = make_rollout(created_at=T0 + timedelta(hours=1))
    for r in (older, newer):
        rollout_store.create(r)
    ids = [r.id for r in rollout_store.list_rollouts()]
    assert ids.index(newer.id) < ids.index(older.id)
    assert [r.id for r in rollout_store.list_rollouts(older.model_id)] == [older.id]


def test_telemetry_upserts_per_device_window_so_redelivery_never_doubles(rollout_store: RolloutStore) -> None:
    rollout_id = str(uuid.uuid4())

    def row(device: str, version: int, start: datetime, count: int) -> TelemetryRow:
        return TelemetryRow(rollout_id, 0, version, device, start, start + timedelta(minutes=1), count, 1, 0, 2,
                            10.0, 40.0, 90.0)

    rows = [row("d1", 2, T0, 100), row("d2", 2, T0, 50), row("d1", 1, T0, 70)]
    rollout_store.add_telemetry(rows)
    rollout_store.add_telemetry(rows[:1])  # redelivered
    rollout_store.add_telemetry([row("d1", 2, T0 + timedelta(minutes=1), 30)])  # the next window
    stored = rollout_store.telemetry(rollout_id, 0)
    assert sorted((r.device_id, r.version, r.inference_count) for r in stored) == [
        ("d1", 1, 70), ("d1", 2, 30), ("d1", 2, 100), ("d2", 2, 50)]
    assert {(r.p95_ms, r.cloud_fallback_count, r.window_start.tzinfo is not None) for r in stored} == {(40.0, 2, True)}
    assert rollout_store.telemetry(rollout_id, 1) == []


def test_gates_keep_the_last_judgement_of_each_stage(rollout_store: RolloutStore) -> None:
    rollout_id = str(uuid.uuid4())
    rollout_store.record_gate(rollout_id, 0, {"verdict": "wait", "telemetry": {"inference_count": 3}})
    rollout_store.record_gate(rollout_id, 0, {"verdict": "advance", "telemetry": {"inference_count": 30}})
    rollout_store.record_gate(rollout_id, 1, {"verdict": "wait"})
    assert rollout_store.gates(rollout_id) == {0: {"verdict": "advance", "telemetry": {"inference_count": 30}},
                                              1: {"verdict": "wait"}}
