"""The processors' logic on in-memory fakes: freshness transitions, exact FedAvg, idempotent redelivery,
the straggler grace window and the timeout."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import torch

from core.artifacts import MemoryArtifactStore
from core.fleet.memory_store import InMemoryFleetStore
from core.fleet.models import Freshness, RoundStatus
from core.fleet.processing import DeviceProcessor, RoundProcessor
from core.fleet.service import FleetService
from settings import Settings
from tests.recording_sink import RecordingSink
from tests.store_contract import make_device, make_round, make_update

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def fleet_event_types(sink: RecordingSink) -> list[str]:
    assert sink.of_type("lifecycle_event") == []  # seed 001's lifecycle topic is for model load/unload only
    return [r["event_type"] for r in sink.of_type("fleet_event")]


def test_freshness_changes_emit_one_event_each() -> None:
    settings = Settings(heartbeat_interval_s=10)
    store, sink, clock = InMemoryFleetStore(), RecordingSink(), Clock()
    device, key = make_device()
    store.create_device(device, key)
    processor = DeviceProcessor(settings, store, sink, clock)

    async def scenario() -> None:
        await processor.on_heartbeat({"device_id": device.device_id, "sent_at": T0, "metrics": {"cpu": 1.0}})
        assert await processor.sweep() == 0  # still online: nothing new
        clock.now = T0 + timedelta(seconds=25)  # > 2x interval
        assert await processor.sweep() == 1
        clock.now = T0 + timedelta(seconds=55)  # > 5x interval
        assert await processor.sweep() == 1
        await processor.on_heartbeat({"device_id": device.device_id, "sent_at": clock.now})
        with pytest.raises(LookupError):
            await processor.on_heartbeat({"device_id": "ghost", "sent_at": clock.now})

    asyncio.run(scenario())
    assert fleet_event_types(sink) == ["device_online", "device_stale", "device_offline", "device_online"]
    stored = store.get_device(device.device_id)
    assert stored is not None and stored.freshness is Freshness.ONLINE and stored.metrics == {}
    assert [a["action"] for a in sink.audits] == ["device.freshness"] * 4


def test_a_batch_applies_each_devices_newest_heartbeat_whatever_the_order_and_names_unknown_devices() -> None:
    settings = Settings(heartbeat_interval_s=10)
    store, sink, clock = InMemoryFleetStore(), RecordingSink(), Clock()
    a, b = make_device(), make_device()
    for device, key in (a, b):
        store.create_device(device, key)
    processor = DeviceProcessor(settings, store, sink, clock)
    at = [T0 + timedelta(seconds=i) for i in range(3)]
    records = [{"device_id": a[0].device_id, "sent_at": at[2], "metrics": {"n": 2}},
               {"device_id": "ghost", "sent_at": at[0]},
               {"device_id": a[0].device_id, "sent_at": at[1], "metrics": {"n": 1}, "status": "inactive"},
               {"device_id": b[0].device_id, "sent_at": at[0], "status": "inactive"}]

    failures = asyncio.run(processor.on_heartbeats(records))
    assert [type(f).__name__ if f else None for f in failures] == [None, "UnknownSubject", None, None]
    stored_a, stored_b = store.get_device(a[0].device_id), store.get_device(b[0].device_id)
    assert stored_a is not None and (stored_a.last_heartbeat, stored_a.metrics) == (at[2], {"n": 2})
    assert stored_a.status.value == "active"  # the older beat's "inactive" lost to the newer beat
    assert stored_b is not None and stored_b.status.value == "inactive"
    # One online transition per device, however many of its heartbeats the batch held.
    assert fleet_event_types(sink) == ["device_online", "device_online"]


class CountingStore(InMemoryFleetStore):
    """Records how the sweep reads the fleet."""

    def __init__(self) -> None:
        super().__init__()
        self.full_scans = 0
        self.windows: list[tuple[datetime | None, datetime | None]] = []
        self.fail_finds = False

    def list_devices(self) -> list[Any]:
        self.full_scans += 1
        return super().list_devices()

    def find_devices(self, query: Any) -> Any:
        if self.fail_finds:
            raise RuntimeError("index unavailable")
        self.windows.append((query.heartbeat_since, query.heartbeat_before))
        return super().find_devices(query)


def test_after_the_first_sweep_only_devices_that_crossed_an_age_boundary_are_read() -> None:
    settings = Settings(heartbeat_interval_s=10)
    store, sink, clock = CountingStore(), RecordingSink(), Clock()
    devices = [make_device() for _ in range(3)]
    for device, key in devices:
        store.create_device(device, key)
    processor = DeviceProcessor(settings, store, sink, clock)
    ids = [device.device_id for device, _ in devices]

    async def scenario() -> None:
        # Beats at T0, T0+10 s and T0+30 s; one full scan at start, then windows only.
        for i, offset in enumerate((0, 10, 30)):
            await processor.on_heartbeat({"device_id": ids[i], "sent_at": T0 + timedelta(seconds=offset)})
        clock.now = T0 + timedelta(seconds=30)
        assert await processor.sweep() == 2  # the first two are 30 s and 20 s old: stale
        assert store.full_scans == 1
        clock.now = T0 + timedelta(seconds=51)
        # Crossed since the last sweep: device 2 (21 s: stale) and device 0 (51 s: offline).
        assert await processor.sweep() == 2
        assert store.full_scans == 1
        assert store.windows == [(T0 + timedelta(seconds=10), T0 + timedelta(seconds=31)),
                                 (T0 - timedelta(seconds=20), T0 + timedelta(seconds=1))]

    asyncio.run(scenario())
    freshness = {i: (store.get_device(i) or devices[0][0]).freshness for i in ids}
    assert freshness == {ids[0]: Freshness.OFFLINE, ids[1]: Freshness.STALE, ids[2]: Freshness.STALE}


def test_a_sweep_that_fails_is_redone_over_the_same_windows_by_the_next() -> None:
    settings = Settings(heartbeat_interval_s=10)
    store, sink, clock = CountingStore(), RecordingSink(), Clock()
    device, key = make_device()
    store.create_device(device, key)
    processor = DeviceProcessor(settings, store, sink, clock)

    async def scenario() -> None:
        await processor.on_heartbeat({"device_id": device.device_id, "sent_at": T0})
        assert await processor.sweep() == 0
        clock.now = T0 + timedelta(seconds=25)
        store.fail_finds = True
        with pytest.raises(RuntimeError):
            await processor.sweep()
        store.fail_finds = False
        clock.now = T0 + timedelta(seconds=26)
        assert await processor.sweep() == 1  # the window of the failed sweep is read again

    asyncio.run(scenario())
    assert (store.get_device(device.device_id) or device).freshness is Freshness.STALE


def state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {"w": torch.randn(3, 2), "b": torch.randn(2)}


def blob(s: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(s, buffer)
    return buffer.getvalue()


class RoundFixture:
    def __init__(self, *, target: int, minimum: int, grace_s: float = 10, timeout_s: int = 300) -> None:
        self.settings = Settings(straggler_grace_s=grace_s)
        self.store, self.sink, self.artifacts, self.clock = (InMemoryFleetStore(), RecordingSink(),
                                                             MemoryArtifactStore(), Clock())
        fleet = FleetService(self.settings, self.store, self.artifacts, self.sink, self.clock)
        self.processor = RoundProcessor(self.settings, self.store, self.artifacts, self.sink, fleet, self.clock)
        self.round = make_round(target_devices=target, min_devices=minimum, timeout_seconds=timeout_s)
        self.store.create_active_round(self.round)
        self.store.transition_round(self.round.id, RoundStatus.PENDING, RoundStatus.ACTIVE,
                                    selected_devices=[f"d{i}" for i in range(target)],
                                    timeout_at=T0 + timedelta(seconds=timeout_s))

    def submit(self, i: int, seed: int, samples: int) -> dict[str, Any]:
        data = blob(state(seed))
        key = f"updates/{self.round.id}/d{i}.pt"
        self.artifacts.put(key, data)
        update = make_update(self.round.id, f"d{i}")
        update = type(update)(**{**update.__dict__, "created_at": self.clock.now, "num_samples": samples,
                                  "artifact_key": key, "sha256": hashlib.sha256(data).hexdigest()})
        self.store.add_update(update)
        return {"update_id": update.id, "round_id": self.round.id, "artifact_key": key,
                "sha256": hashlib.sha256(data).hexdigest(), "num_samples": samples}

    def status(self) -> RoundStatus:
        found = self.store.get_round(self.round.id)
        assert found is not None
        return found.status


def test_fedavg_is_the_sample_weighted_mean_and_redelivery_does_not_double_count() -> None:
    f = RoundFixture(target=3, minimum=3)
    samples = [10, 30, 60]

    async def scenario() -> None:
        records = [f.submit(i, seed=i, samples=n) for i, n in enumerate(samples)]
        await f.processor.on_update(records[0])
        await f.processor.on_update(records[0])  # redelivered
        # A restarted processor (fresh memory) rebuilds its sum from the stored updates.
        f.processor._accumulators.clear()
        await f.processor.on_update(records[1])
        await f.processor.on_update(records[1])
        await f.processor.on_update(records[2])

    asyncio.run(scenario())
    assert f.status() is RoundStatus.COMPLETED
    finished = f.store.get_round(f.round.id)
    assert finished is not None and finished.completed_devices == 3 and finished.aggregated_model_id
    versions = f.store.list_versions(finished.aggregated_model_id)
    got = torch.load(io.BytesIO(f.artifacts.get(versions[0].artifact_key)), weights_only=True)
    for name in ("w", "b"):
        expected = torch.stack([state(i)[name] * n for i, n in enumerate(samples)]).sum(0) / sum(samples)
        assert torch.allclose(got[name], expected, atol=1e-6)
    assert fleet_event_types(f.sink)[-3:] == ["round_aggregating", "model_version_created", "round_completed"]


def test_stragglers_wait_for_the_grace_window_then_aggregate() -> None:
    f = RoundFixture(target=4, minimum=2, grace_s=10)

    async def scenario() -> None:
        await f.processor.on_update(f.submit(0, 0, 5))
        await f.processor.on_update(f.submit(1, 1, 5))
        assert f.status() is RoundStatus.ACTIVE  # min reached, grace not yet over
        f.clock.now = T0 + timedelta(seconds=9)
        await f.processor.tick()
        assert f.status() is RoundStatus.ACTIVE
        f.clock.now = T0 + timedelta(seconds=11)
        await f.processor.tick()

    asyncio.run(scenario())
    assert f.status() is RoundStatus.COMPLETED


def test_too_few_updates_fail_at_timeout_and_corrupt_updates_count_as_failed() -> None:
    f = RoundFixture(target=4, minimum=3, timeout_s=60)

    async def scenario() -> None:
        await f.processor.on_update(f.submit(0, 0, 5))
        bad = f.submit(1, 1, 5) | {"sha256": "0" * 64}
        await f.processor.on_update(bad)
        f.clock.now = T0 + timedelta(seconds=61)
        await f.processor.tick()

    asyncio.run(scenario())
    assert f.status() is RoundStatus.FAILED
    failed = f.store.get_round(f.round.id)
    assert failed is not None and (failed.completed_devices, failed.failed_devices) == (1, 1)
    assert "timeout" in (failed.failure_reason or "")
    assert "update_rejected" in fleet_event_types(f.sink)
    assert f.store.active_round_id() is None


def test_unknown_round_is_a_dead_letter() -> None:
    f = RoundFixture(target=1, minimum=1)
    with pytest.raises(LookupError):
        asyncio.run(f.processor.on_update({"round_id": str(uuid.uuid4()), "update_id": "u"}))
