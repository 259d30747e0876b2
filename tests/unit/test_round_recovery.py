"""Rounds that never get stuck (issue 15), on the memory store with a fake clock: open selection, rounds
settled at their timeout wherever they are found, operator cancel, and aggregation resumed after a crash or
an S3 outage (or failed with a reason when it cannot finish)."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.context import AppContext
from core.api_keys import new_api_key
from core.artifacts import MemoryArtifactStore
from core.auth import Principal
from core.errors import DomainError
from core.fleet.memory_store import InMemoryFleetStore
from core.fleet.models import Round, RoundStatus, SubjectType
from core.fleet.processing import RoundProcessor, aggregate_model_id
from core.fleet.service import FleetService
from settings import Settings
from tests.memory_app import app_client, memory_context
from tests.recording_sink import RecordingSink
from tests.store_contract import make_round

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
OPERATOR = Principal("key_operator", SubjectType.OPERATOR, "operator")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def weights(seed: int) -> bytes:
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(3, 2).state_dict(), buffer)
    return buffer.getvalue()


class Fleet:
    """The ingress's service and a round processor on one memory store, one artifact store, one clock."""

    def __init__(self, **settings: Any) -> None:
        self.settings = Settings(**{"straggler_grace_s": 5, "aggregation_lease_s": 30, "aggregation_retry_s": 10,
                                    "aggregation_max_attempts": 3, **settings})
        self.store, self.artifacts, self.sink, self.clock = (InMemoryFleetStore(), MemoryArtifactStore(),
                                                             RecordingSink(), Clock())
        self.service = FleetService(self.settings, self.store, self.artifacts, self.sink, self.clock)
        self.processor = self.new_processor()

    def new_processor(self) -> RoundProcessor:
        """A (re)started round processor: nothing in memory, everything from the stores."""
        return RoundProcessor(self.settings, self.store, self.artifacts, self.sink, self.service, self.clock)

    def run(self, coro: Any) -> Any:
        return asyncio.run(coro)

    def device(self, device_id: str, *, applied: bool = False) -> Principal:
        device, _ = self.run(self.service.register_device(device_id, None, None))
        if applied:  # the device processor already applied a heartbeat of it
            self.store.record_heartbeat(device_id, self.clock(), "active", {})
        return Principal(device.api_key_id, SubjectType.DEVICE, device_id)

    def heartbeat(self, who: Principal, status: str = "active") -> str | None:
        answer = self.run(self.service.heartbeat(who, who.subject_id, status, {}))
        return answer["pending_round_id"]  # type: ignore[no-any-return]

    def start(self, target: int, minimum: int, timeout_s: int = 300) -> Round:
        return self.run(self.service.start_round(OPERATOR, target, minimum, timeout_s, None))  # type: ignore[no-any-return]

    def submit(self, who: Principal, round_id: str, seed: int, samples: int = 10) -> dict[str, Any]:
        """Submit through the ingress; returns the event the round processor would consume."""
        self.run(self.service.submit_update(who, round_id, weights(seed), samples, None, None, None))
        return self.sink.of_type("model_update_submitted")[-1]

    def round(self, round_id: str) -> Round:
        found = self.store.get_round(round_id)
        assert found is not None
        return found

    def fleet_events(self, event_type: str) -> list[dict[str, Any]]:
        return [r for r in self.sink.of_type("fleet_event") if r["event_type"] == event_type]

    def round_models(self, round_id: str) -> list[str]:
        return [m.id for m in self.store.models.values() if m.round_id == round_id]


# --- open selection ---------------------------------------------------------------------------


def test_devices_that_beat_after_the_start_take_the_open_seats_until_the_target() -> None:
    f = Fleet()
    early = f.device("early", applied=True)
    late, later, last, idle = (f.device(n) for n in ("late", "later", "last", "idle"))
    round_ = f.start(target=3, minimum=2)
    assert round_.selected_devices == ["early"]  # chosen at the start from what the processor had applied

    assert f.heartbeat(idle, status="inactive") is None  # reports inactive: not eligible
    assert f.heartbeat(late) == round_.id  # its very answer says it is selected
    assert f.heartbeat(late) == round_.id  # asked again: the same seat, no second event
    assert f.heartbeat(later) == round_.id
    assert f.heartbeat(last) is None  # the target is reached
    assert f.heartbeat(early) == round_.id
    assert f.round(round_.id).selected_devices == ["early", "late", "later"]
    selected = [r["subject_id"] for r in f.fleet_events("device_selected")]
    assert selected == ["early", "late", "later"]
    assert [a["subject"] for a in f.sink.audits if a["action"] == "round.device.select"] == [
        f"round/{round_.id}/device/late", f"round/{round_.id}/device/later"]


def test_a_round_started_before_any_device_beat_still_completes() -> None:
    f = Fleet()
    round_ = f.start(target=2, minimum=2)
    assert round_.status is RoundStatus.ACTIVE and round_.selected_devices == []
    devices = [f.device(f"d{i}") for i in range(2)]
    for who in devices:
        assert f.heartbeat(who) == round_.id
    for seed, who in enumerate(devices):
        f.run(f.processor.on_update(f.submit(who, round_.id, seed)))
    done = f.round(round_.id)
    assert done.status is RoundStatus.COMPLETED and done.completed_devices == 2
    assert done.aggregated_model_id == aggregate_model_id(round_.id)


# --- expiry -----------------------------------------------------------------------------------


def test_rounds_start_fails_an_expired_round_below_min_and_takes_the_slot() -> None:
    f = Fleet()
    who = f.device("d0")
    old = f.start(target=3, minimum=2, timeout_s=60)
    f.heartbeat(who)
    f.submit(who, old.id, 0)
    with pytest.raises(DomainError) as busy:
        f.start(target=1, minimum=1)
    assert busy.value.code == "ROUND_ALREADY_ACTIVE"
    f.clock.advance(61)  # no round processor ran meanwhile
    new = f.start(target=1, minimum=1)
    failed = f.round(old.id)
    assert failed.status is RoundStatus.FAILED and failed.failure_reason == "timeout with 1 of 2 required updates"
    assert f.store.active_round_id() == new.id
    assert [e["round_id"] for e in f.sink.of_type("round_event") if e["event_type"] == "round_failed"] == [old.id]


def test_an_expired_round_with_min_updates_goes_aggregating_and_a_processor_finishes_it() -> None:
    f = Fleet()
    devices = [f.device(f"d{i}") for i in range(2)]
    old = f.start(target=4, minimum=2, timeout_s=60)
    for seed, who in enumerate(devices):
        f.heartbeat(who)
        f.submit(who, old.id, seed)  # stored; no processor folds them
    f.clock.advance(61)
    with pytest.raises(DomainError) as busy:
        f.start(target=1, minimum=1)
    assert busy.value.code == "ROUND_ALREADY_ACTIVE" and "aggregating" in busy.value.message
    assert f.round(old.id).status is RoundStatus.AGGREGATING
    f.run(f.new_processor().tick())  # it folds the stored updates it never saw
    done = f.round(old.id)
    assert done.status is RoundStatus.COMPLETED and done.completed_devices == 2
    assert f.start(target=1, minimum=1).status is RoundStatus.ACTIVE


def test_a_heartbeat_or_an_update_after_the_timeout_finds_the_round_closed() -> None:
    f = Fleet()
    a, b = f.device("a"), f.device("b")
    round_ = f.start(target=2, minimum=1, timeout_s=60)
    assert f.heartbeat(a) == round_.id
    f.clock.advance(60)
    assert f.heartbeat(b) is None  # no seat in a round whose time is up
    assert f.round(round_.id).status is RoundStatus.FAILED
    with pytest.raises(DomainError) as late:
        f.submit(a, round_.id, 0)
    assert late.value.code == "ROUND_NOT_ACTIVE"


def test_an_update_at_the_timeout_is_refused_and_the_round_settled() -> None:
    f = Fleet()
    a, b = f.device("a"), f.device("b")
    round_ = f.start(target=2, minimum=1, timeout_s=60)
    f.heartbeat(a)
    f.heartbeat(b)
    f.submit(a, round_.id, 0)
    f.clock.advance(60)
    with pytest.raises(DomainError) as late:
        f.submit(b, round_.id, 1)
    assert late.value.code == "ROUND_NOT_ACTIVE"
    assert f.round(round_.id).status is RoundStatus.AGGREGATING  # min was reached: it is aggregated


def test_a_round_left_pending_by_a_crashed_start_is_failed_after_its_timeout() -> None:
    f = Fleet()
    stuck = make_round(created_at=T0, timeout_seconds=60)
    assert f.store.create_active_round(stuck) is None  # the starter died before activating it
    with pytest.raises(DomainError):
        f.start(target=1, minimum=1)
    f.clock.advance(61)
    assert f.start(target=1, minimum=1).status is RoundStatus.ACTIVE
    assert f.round(stuck.id).status is RoundStatus.FAILED


def test_the_processor_tick_fails_an_expired_round_without_updates() -> None:
    f = Fleet()
    round_ = f.start(target=2, minimum=1, timeout_s=60)
    f.clock.advance(61)
    f.run(f.processor.tick())
    assert f.round(round_.id).failure_reason == "timeout with 0 of 1 required updates"
    assert f.store.active_round_id() is None


# --- resume -----------------------------------------------------------------------------------


def ready_to_aggregate(f: Fleet, devices: int = 2) -> Round:
    """A round with ``devices`` stored updates the processor has not aggregated yet."""
    round_ = f.start(target=devices, minimum=devices)
    for seed in range(devices):
        who = f.device(f"d{seed}")
        f.heartbeat(who)
        f.submit(who, round_.id, seed)
    return round_


def crash_after_claim(f: Fleet, round_: Round) -> None:
    """What a processor killed mid-aggregation leaves: the round aggregating under attempt 1's lease."""
    assert f.store.transition_round(round_.id, RoundStatus.ACTIVE, RoundStatus.AGGREGATING, aggregation_attempts=1,
                                    aggregation_lease_until=f.clock() + timedelta(seconds=30))


def test_a_processor_killed_mid_aggregation_is_resumed_after_its_lease_and_makes_one_model() -> None:
    f = Fleet()
    round_ = ready_to_aggregate(f)
    crash_after_claim(f, round_)
    restarted = f.new_processor()
    f.run(restarted.tick())
    assert f.round(round_.id).status is RoundStatus.AGGREGATING  # the lease may still be held: wait
    f.clock.advance(31)
    f.run(restarted.tick())
    done = f.round(round_.id)
    assert done.status is RoundStatus.COMPLETED and done.aggregation_attempts == 2
    assert f.round_models(round_.id) == [aggregate_model_id(round_.id)]
    assert f.store.active_round_id() is None
    assert [r["details"]["attempt"] for r in f.fleet_events("round_aggregation_retried")] == [2]


def test_a_redo_after_the_model_was_stored_reuses_it() -> None:
    """Killed after the aggregate's version was stored but before the round was completed: the redo finds
    the model by its derived id and its version by the round, and makes neither again."""
    f = Fleet()
    round_ = ready_to_aggregate(f)
    f.run(f.processor.tick())
    done = f.round(round_.id)
    assert done.status is RoundStatus.COMPLETED
    # Put the round back to "aggregating" as the crash would have left it; drop the catalog's pointer.
    f.store.rounds[round_.id].status = RoundStatus.AGGREGATING
    f.store.rounds[round_.id].aggregation_lease_until = None
    f.store.active = round_.id
    model = f.store.models[aggregate_model_id(round_.id)]
    model.latest_version = model.model_path = None
    f.run(f.new_processor().tick())
    again = f.round(round_.id)
    assert again.status is RoundStatus.COMPLETED and again.aggregated_model_path == done.aggregated_model_path
    assert [v.version for v in f.store.list_versions(model.id)] == [1]
    assert f.store.models[model.id].latest_version == 1


def test_s3_down_during_aggregation_is_retried_until_it_answers() -> None:
    f = Fleet()
    round_ = ready_to_aggregate(f)
    f.artifacts.available = False
    f.run(f.processor.tick())
    stuck = f.round(round_.id)
    assert stuck.status is RoundStatus.AGGREGATING and stuck.aggregation_attempts == 1
    assert "ArtifactStoreUnavailable" in (stuck.aggregation_error or "")
    f.clock.advance(5)
    f.run(f.processor.tick())
    assert f.round(round_.id).aggregation_attempts == 1  # pausing before the next attempt
    f.clock.advance(6)
    f.run(f.processor.tick())
    assert f.round(round_.id).aggregation_attempts == 2
    f.artifacts.available = True
    f.clock.advance(11)
    f.run(f.processor.tick())
    done = f.round(round_.id)
    assert done.status is RoundStatus.COMPLETED and done.aggregation_attempts == 3
    assert f.round_models(round_.id) == [aggregate_model_id(round_.id)]


def test_aggregation_that_keeps_failing_fails_the_round_with_the_last_error() -> None:
    f = Fleet()
    round_ = ready_to_aggregate(f)
    f.artifacts.available = False
    for _ in range(4):
        f.run(f.processor.tick())
        f.clock.advance(11)
    failed = f.round(round_.id)
    assert failed.status is RoundStatus.FAILED
    assert failed.failure_reason is not None and failed.failure_reason.startswith("aggregation failed 3 times")
    assert "ArtifactStoreUnavailable" in failed.failure_reason
    assert f.store.active_round_id() is None


def test_unreadable_updates_fail_the_round_at_once_with_a_reason() -> None:
    f = Fleet()
    round_ = ready_to_aggregate(f)
    for update in f.store.list_updates(round_.id):
        f.artifacts.objects.pop(update.artifact_key)
    f.run(f.processor.tick())
    failed = f.round(round_.id)
    assert failed.status is RoundStatus.FAILED and failed.aggregation_attempts == 1
    assert failed.failure_reason == "only 0 of 2 stored updates are readable; 2 required"
    assert len(f.fleet_events("update_rejected")) == 2


def test_racing_processors_resume_a_round_once() -> None:
    f = Fleet()
    round_ = ready_to_aggregate(f)
    crash_after_claim(f, round_)
    f.clock.advance(31)

    async def both() -> None:
        await asyncio.gather(f.new_processor().tick(), f.new_processor().tick())

    f.run(both())
    assert f.round(round_.id).status is RoundStatus.COMPLETED
    assert [v.version for v in f.store.list_versions(aggregate_model_id(round_.id))] == [1]
    assert len([e for e in f.sink.of_type("round_event") if e["event_type"] == "round_completed"]) == 1


# --- cancel -----------------------------------------------------------------------------------

ADMIN = new_api_key()


@pytest.fixture
def ctx() -> AppContext:
    settings = Settings(admin_api_key=SecretStr(ADMIN), rate_limit_per_minute=1000)
    return memory_context(settings)


@pytest.fixture
def api(ctx: AppContext) -> Iterator[TestClient]:
    with app_client(ctx) as client:
        yield client


def test_operators_cancel_unfinished_rounds_and_only_those(api: TestClient, ctx: AppContext) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    store = ctx.store
    events = ctx.events
    assert isinstance(store, InMemoryFleetStore) and isinstance(events, RecordingSink)
    device = api.post("/api/v1/devices/register", json={"device_id": "cancel-dev"}).json()
    device_auth = {"Authorization": f"Bearer {device['api_key']}"}

    def start() -> str:
        response = api.post("/api/v1/training/rounds/start", json={"target_devices": 1, "min_devices": 1},
                            headers=admin)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def cancel(round_id: str, headers: dict[str, str] = admin) -> Any:
        return api.post(f"/api/v1/training/rounds/{round_id}/cancel", headers=headers)

    active = start()
    assert api.put("/api/v1/devices/cancel-dev/heartbeat", json={}, headers=device_auth).json()[
        "pending_round_id"] == active
    assert cancel(active, device_auth).status_code == 403
    assert cancel(str(uuid.uuid4())).status_code == 404
    response = cancel(active)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == active and body["status"] == "cancelled" and body["completed_at"]
    assert body["failure_reason"].startswith("cancelled by operator")
    again = cancel(active)
    assert again.status_code == 409 and again.json()["error_code"] == "ROUND_ALREADY_FINISHED"
    update = api.post(f"/api/v1/training/rounds/{active}/updates", data={"num_samples": "1"},
                      files={"file": ("u.pt", weights(0))}, headers=device_auth)
    assert update.status_code == 409 and update.json()["error_code"] == "ROUND_NOT_ACTIVE"
    assert api.put("/api/v1/devices/cancel-dev/heartbeat", json={}, headers=device_auth).json()[
        "pending_round_id"] != active
    assert [e["status"] for e in events.of_type("round_event") if e["round_id"] == active][-1] == "cancelled"
    audit = [a for a in events.audits if a["action"] == "round.cancelled"]
    assert audit[-1]["subject"] == f"round/{active}" and audit[-1]["before"] == {"status": "active"}

    aggregating = start()  # the slot was freed
    store.transition_round(aggregating, RoundStatus.ACTIVE, RoundStatus.AGGREGATING)
    assert cancel(aggregating).json()["status"] == "cancelled"
    for finished in (RoundStatus.COMPLETED, RoundStatus.FAILED):
        round_id = start()
        store.transition_round(round_id, RoundStatus.ACTIVE, finished)
        assert cancel(round_id).status_code == 409
    pending = make_round()
    store.create_active_round(pending)
    assert cancel(pending.id).json()["status"] == "cancelled"
    assert store.active_round_id() is None


def test_a_round_cancelled_during_aggregation_is_not_completed() -> None:
    f = Fleet()
    round_ = ready_to_aggregate(f)
    crash_after_claim(f, round_)
    f.run(f.service.cancel_round(OPERATOR, round_.id))
    f.clock.advance(31)
    f.run(f.processor.tick())
    assert f.round(round_.id).status is RoundStatus.CANCELLED


def test_the_cli_cancels_through_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import main
    from sdk.client import ApiError, TributaryClient

    calls: list[tuple[str, str | None]] = []

    def cancel_round(self: TributaryClient, round_id: str) -> dict[str, Any]:
        calls.append((round_id, self.api_key))
        if round_id == "done":
            raise ApiError(409, {"error_code": "ROUND_ALREADY_FINISHED", "message": "Round 3 is already completed."})
        return {"id": round_id, "round_number": 3, "status": "cancelled"}

    monkeypatch.setattr(TributaryClient, "cancel_round", cancel_round)
    result = CliRunner().invoke(main, ["rounds", "cancel", "r-1", "--api-key", "sk_op", "--json"])
    assert result.exit_code == 0, result.output
    assert '"status": "cancelled"' in result.output and calls == [("r-1", "sk_op")]
    refused = CliRunner().invoke(main, ["rounds", "cancel", "done", "--url", "http://127.0.0.1:1"])
    assert refused.exit_code == 1 and "ROUND_ALREADY_FINISHED" in refused.output
