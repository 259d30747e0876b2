"""One test suite for every ``ResidencyStore`` (memory in unit, Cassandra in integration).

Each implementation's module defines a ``residency`` fixture returning ``(store, wait)``, where
``wait(seconds)`` lets that much time pass for TTLs (a fake clock, or a real sleep), and does
``from tests.residency_contract import *``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from core.serving.residency import Residency, ResidencyState, ResidencyStore

Fixture = tuple[ResidencyStore, Callable[[float], None]]
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def model_id() -> str:
    return f"org/model-{uuid.uuid4().hex[:8]}"


def loaded(model: str, worker: str, **kw: object) -> Residency:
    fields: dict[str, object] = {"state": ResidencyState.LOADED, "updated_at": T0, "memory_bytes": 3 * 2**20,
                                 "loaded_at": T0, "last_used_at": T0 + timedelta(seconds=5),
                                 "task_type": "tensor", **kw}
    return Residency(model, worker, **fields)  # type: ignore[arg-type]


def test_put_read_back_every_field(residency: Fixture) -> None:
    store, _ = residency
    model = model_id()
    row = loaded(model, "worker-high-1")
    store.put(row, ttl_s=60)
    assert store.for_model(model) == [row]
    assert row in store.all()
    assert store.loaded_on(model) == ["worker-high-1"]
    status = row.status()
    assert status["state"] == "loaded" and status["memory_usage_mb"] == 3.0 and status["device"] == "cpu"
    assert status["health_status"]["healthy"] is True


def test_one_row_per_worker_and_upsert(residency: Fixture) -> None:
    store, _ = residency
    model = model_id()
    store.put(Residency(model, "w-b", ResidencyState.LOADING, T0), ttl_s=60)
    store.put(loaded(model, "w-a"), ttl_s=60)
    store.put(loaded(model, "w-b", memory_bytes=7), ttl_s=60)  # replaces the loading row
    rows = store.for_model(model)
    assert [(r.worker, r.state, r.memory_bytes) for r in rows] == [
        ("w-a", ResidencyState.LOADED, 3 * 2**20), ("w-b", ResidencyState.LOADED, 7)]
    other = model_id()
    store.put(Residency(other, "w-a", ResidencyState.UNHEALTHY, T0, error_code="INSUFFICIENT_MEMORY",
                        error="too big"), ttl_s=60)
    assert store.loaded_on(other) == []  # unhealthy is not loaded
    failed = store.for_model(other)[0]
    assert failed.error_code == "INSUFFICIENT_MEMORY" and failed.error == "too big" and not failed.healthy
    everything = [(r.model_id, r.worker) for r in store.all() if r.model_id in (model, other)]
    assert everything == sorted(everything)


def test_delete_removes_only_that_worker(residency: Fixture) -> None:
    store, _ = residency
    model = model_id()
    store.put(loaded(model, "w-a"), ttl_s=60)
    store.put(loaded(model, "w-b"), ttl_s=60)
    store.delete(model, "w-a")
    store.delete(model, "w-never")  # absent: no error
    assert store.loaded_on(model) == ["w-b"]
    store.delete(model, "w-b")
    assert store.for_model(model) == []
    assert all(r.model_id != model for r in store.all())


def test_rows_expire_unless_refreshed(residency: Fixture) -> None:
    store, wait = residency
    model = model_id()
    # Cassandra counts TTLs in whole seconds: these margins hold whatever the sub-second phase.
    store.put(loaded(model, "w-dead"), ttl_s=3)
    store.put(loaded(model, "w-alive"), ttl_s=3)
    wait(1.5)
    # The refresh timer of a live worker; a longer TTL this time, so the window in which only the dead
    # row has expired is 3.5 s wide, not 1.5 s (a loaded run read after both had expired).
    store.put(loaded(model, "w-alive"), ttl_s=5)
    wait(2.0)
    assert store.loaded_on(model) == ["w-alive"]
    assert [r.worker for r in store.all() if r.model_id == model] == ["w-alive"]
