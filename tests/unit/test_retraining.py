"""Seed 002's retraining trigger, consumer side (core/fleet/retraining.py): a retraining request
starts a training round through FleetService.start_round or says why it could not, and a
redelivered request changes nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from core.artifacts import MemoryArtifactStore
from core.events import EventsUnavailable
from core.fleet.learning_graphs import LearningGraphService, encrypt_graph
from core.fleet.memory_store import InMemoryFleetStore
from core.fleet.models import RoundStatus
from core.fleet.retraining import ACTOR, RetrainingTrigger, retraining_round_id
from core.fleet.service import FleetService
from schemas.codec import Codec
from schemas.json_views import validate_json_view
from settings import Settings
from tests.recording_sink import RecordingSink
from tests.samples import sample
from tests.store_contract import make_device, make_round

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(heartbeat_interval_s=10, retraining_target_devices=3, retraining_min_devices=2,
                    retraining_round_timeout_s=120)


class Harness:
    def __init__(self, settings: Settings = SETTINGS, online: int = 3) -> None:
        self.store, self.sink = InMemoryFleetStore(), RecordingSink()
        self.fleet = FleetService(settings, self.store, MemoryArtifactStore(), self.sink, clock=lambda: T0)
        self.trigger = RetrainingTrigger(settings, self.store, self.fleet, self.sink, clock=lambda: T0)
        for _ in range(online):
            device, key = make_device()
            self.store.create_device(device, key)
            self.store.record_heartbeat(device.device_id, T0 - timedelta(seconds=1), "active", {})

    def outcomes(self) -> list[dict[str, Any]]:
        return [r for r in self.sink.of_type("fleet_event") if r["event_type"].startswith("retraining_")]

    def rounds(self) -> int:
        return len(self.store.rounds)


def request(graph_id: str | None = None, *, retraining: bool = True) -> dict[str, Any]:
    return {"graph_id": graph_id or str(uuid.uuid4()), "device_id_hash": "ab" * 16, "app_version": "1.4.0",
            "model_version": "granite-3b-v1", "pending_count": 1000 if retraining else 17,
            "retraining_requested": retraining}


async def test_an_ordinary_submission_asks_for_nothing() -> None:
    h = Harness()
    assert await h.trigger.on_graph_submitted(request(retraining=False)) is None
    assert h.sink.events == [] and h.rounds() == 0


async def test_a_request_starts_a_round_through_the_rest_path_and_says_so() -> None:
    h = Harness()
    trigger = request()
    decision = await h.trigger.on_graph_submitted(trigger)
    assert decision is not None and decision.started
    round_id = retraining_round_id(trigger["graph_id"])
    assert decision.round_id == round_id and h.store.active_round_id() == round_id
    round_ = h.store.rounds[round_id]
    assert round_.status is RoundStatus.ACTIVE and len(round_.selected_devices) == 3
    assert (round_.target_devices, round_.min_devices, round_.timeout_seconds) == (3, 2, 120)
    # what POST /training/rounds/start emits, with the processor as the acting operator
    assert [r["event_type"] for r in h.sink.of_type("round_event")] == ["round_started"]
    assert any(a["action"] == "round.start" and a["actor"] == ACTOR.key_id for a in h.sink.audits)
    (started,) = h.outcomes()
    assert started["event_type"] == "retraining_started" and started["subject_id"] == "granite-3b-v1"
    assert started["details"] == {"trigger_id": trigger["graph_id"], "graphs": 1000, "round_id": round_id}


async def test_a_redelivered_request_starts_no_second_round() -> None:
    h = Harness()
    trigger = request()
    first = await h.trigger.on_graph_submitted(trigger)
    again = await h.trigger.on_graph_submitted(trigger)
    assert again == first and h.rounds() == 1
    assert len(h.sink.of_type("round_event")) == 1
    # the outcome is published at least once (again on redelivery), always the same
    assert [o["details"] for o in h.outcomes()] == [h.outcomes()[0]["details"]] * 2


async def test_an_active_round_means_not_started_and_the_answer_holds_on_redelivery() -> None:
    h = Harness()
    busy = make_round(status=RoundStatus.ACTIVE)
    assert h.store.create_active_round(busy) is None
    trigger = request()
    decision = await h.trigger.on_graph_submitted(trigger)
    assert decision is not None and not decision.started and decision.reason == "ROUND_ALREADY_ACTIVE"
    assert h.rounds() == 1
    (refused,) = h.outcomes()
    assert refused["event_type"] == "retraining_not_started"
    assert refused["details"]["reason"] == "ROUND_ALREADY_ACTIVE" and "currently" in refused["details"]["detail"]
    # the slot frees up; a redelivery of the same request still gets the first answer, and no round
    h.store.transition_round(busy.id, RoundStatus.ACTIVE, RoundStatus.COMPLETED)
    assert h.store.active_round_id() is None
    assert await h.trigger.on_graph_submitted(trigger) == decision and h.rounds() == 1
    # a new request does start one
    assert (await h.trigger.on_graph_submitted(request())).started  # type: ignore[union-attr]


async def test_too_few_eligible_devices_means_not_started() -> None:
    h = Harness(online=1)
    offline, key = make_device()
    h.store.create_device(offline, key)
    h.store.record_heartbeat(offline.device_id, T0 - timedelta(minutes=5), "active", {})  # > 5x interval
    decision = await h.trigger.on_graph_submitted(request())
    assert decision is not None and decision.reason == "NOT_ENOUGH_DEVICES" and decision.round_id is None
    assert "1 eligible device(s)" in str(decision.detail) and h.rounds() == 0
    assert h.outcomes()[0]["details"]["reason"] == "NOT_ENOUGH_DEVICES"


async def test_a_round_started_before_a_crash_is_found_not_started_again() -> None:
    """The first delivery started the round and died before storing its decision."""
    h = Harness()
    trigger = request()
    await h.fleet.start_round(ACTOR, 3, 2, 120, None, round_id=retraining_round_id(trigger["graph_id"]))
    decision = await h.trigger.on_graph_submitted(trigger)
    assert decision is not None and decision.started and h.rounds() == 1
    assert decision.round_id == retraining_round_id(trigger["graph_id"])


async def test_a_round_failed_at_start_is_reported_and_not_retried() -> None:
    h = Harness()
    h.sink.fail_with = EventsUnavailable("broker down")
    trigger = request()
    with pytest.raises(EventsUnavailable):  # transient: the consumer retries the message, then announces
        await h.trigger.on_graph_submitted(trigger)
    h.sink.fail_with = None
    decision = await h.trigger.on_graph_submitted(trigger)
    assert decision is not None and not decision.started and decision.reason == "EVENTS_UNAVAILABLE"
    assert h.rounds() == 1 and h.store.active_round_id() is None  # the failed round freed the slot
    assert h.outcomes()[0]["event_type"] == "retraining_not_started"


async def test_the_outcome_events_fit_the_fleet_event_schema() -> None:
    h = Harness()
    await h.trigger.on_graph_submitted(request())
    await h.trigger.on_graph_submitted(request())  # a round is active now: not started
    codec = Codec()
    assert [o["event_type"] for o in h.outcomes()] == ["retraining_started", "retraining_not_started"]
    for outcome in h.outcomes():
        record = {**sample("fleet_event"), **outcome}
        decoded = codec.decode(codec.encode("fleet_event", record)[0])
        validate_json_view("fleet_event", decoded.writer_version, codec.to_json("fleet_event", decoded.record))


async def test_the_seed_002_threshold_reaches_the_trigger() -> None:
    """Submissions through LearningGraphService: the one that crosses the threshold asks, and its event
    (what the learning-graph processor reads) starts the round."""
    aes, hmac_key = bytes(range(32)), b"graph-signing-key"
    settings = SETTINGS.model_copy(update={"learning_graph_threshold": 3,
                                           "learning_graph_hmac_key": SecretStr(hmac_key.decode()),
                                           "learning_graph_aes_key": SecretStr(aes.hex())})
    h = Harness(settings)
    graphs = LearningGraphService(settings, h.store, h.sink)
    graph = {"emotions": {"joy": "high"}, "privacy": {"noise": {"mechanism": "laplace", "epsilon": 1.0}}}
    for _ in range(3):
        data, signature = encrypt_graph(graph, aes, hmac_key)
        await graphs.submit("key_device", device_id_hash="ab" * 16, app_version="1.4.0",
                            model_version="granite-3b-v1", encrypted_data=data, signature=signature, timestamp=T0)
    decisions = [await h.trigger.on_graph_submitted(e) for e in h.sink.of_type("learning_graph_submitted")]
    assert [d is not None and d.started for d in decisions] == [False, False, True]
    assert h.rounds() == 1 and h.outcomes()[-1]["details"]["graphs"] == 3
