"""Rollouts without servers: sticky bucketing, cohorts, gate decisions, the processor's rules on the
in-memory store, and the REST routes (rollouts, assignments in heartbeats, telemetry) on the real app."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.context import AppContext
from core.api_keys import new_api_key
from core.fleet.models import CatalogModel, ModelVersion
from core.rollouts.memory_store import InMemoryRolloutStore
from core.rollouts.models import (
    Cohort,
    Rollout,
    RolloutStatus,
    Stage,
    TelemetryAggregate,
    TelemetryRow,
    Verdict,
    aggregate,
    bucket,
    judge,
)
from core.rollouts.processing import GATE_ACTOR, RolloutProcessor
from settings import Settings
from tests.memory_app import app_client, memory_context
from tests.recording_sink import RecordingSink
from topology.messages import MessageType

pytestmark = pytest.mark.unit
ADMIN = new_api_key()
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


# --- bucketing ---------------------------------------------------------------------------------
def test_buckets_spread_evenly_over_devices() -> None:
    rollout_id = str(uuid.uuid4())
    buckets = [bucket(f"device-{i}", rollout_id) for i in range(20_000)]
    assert all(0 <= b < 100 for b in buckets)
    for percent in (1, 5, 10, 25, 50):
        share = sum(b < percent for b in buckets) / len(buckets) * 100
        # binomial spread: 3 standard deviations of a 20,000-device sample
        assert abs(share - percent) < 3 * (percent * (100 - percent) / len(buckets)) ** 0.5, (percent, share)


def test_a_device_keeps_its_bucket_and_widening_only_adds_devices() -> None:
    rollout = Rollout(str(uuid.uuid4()), "m", 2, 1, Cohort(), [Stage(10, 0), Stage(25, 0), Stage(100, 0)],
                      RolloutStatus.ACTIVE, 0, T0, T0, T0, "key_op")
    devices = [f"device-{i}" for i in range(2000)]
    chosen = []
    for stage in range(3):
        rollout.current_stage = stage
        chosen.append({d for d in devices if rollout.assigns(d)})
    assert chosen[0] <= chosen[1] <= chosen[2] == set(devices)
    assert {d for d in devices if rollout.assigns(d)} == chosen[2]  # asked again: the same answer
    assert bucket("device-1", rollout.id) == bucket("device-1", rollout.id)


def test_buckets_differ_between_rollouts() -> None:
    devices = [f"device-{i}" for i in range(1000)]
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    in_first = {d for d in devices if bucket(d, first) < 10}
    in_second = {d for d in devices if bucket(d, second) < 10}
    assert in_first != in_second  # the same devices are not always the first to get a new version


def test_cohort_filters_by_platform_capabilities_and_list() -> None:
    cohort = Cohort(platforms=("android",), capabilities={"gpu": True, "memory_gb": {"min": 4}})
    assert cohort.matches("d1", "android", {"gpu": True, "memory_gb": 8})
    assert not cohort.matches("d1", "ios", {"gpu": True, "memory_gb": 8})
    assert not cohort.matches("d1", "android", {"gpu": True, "memory_gb": 2})
    assert not cohort.matches("d1", "android", {"gpu": True, "memory_gb": "lots"})
    assert not cohort.matches("d1", "android", {"memory_gb": 8})
    assert Cohort(device_ids=("d1",)).matches("d1") and not Cohort(device_ids=("d1",)).matches("d2")
    assert Cohort().matches("anyone", "python", {})


# --- gates -------------------------------------------------------------------------------------
def telemetry(inferences: int, errors: int = 0, crashes: int = 0, p95: float | None = 20.0) -> TelemetryAggregate:
    return TelemetryAggregate(3, 3, inferences, errors, crashes, 0, p95, p95)


STAGE = Stage(10, 60, min_inference_count=100, max_error_rate=0.05, max_crash_rate=0.01, max_p95_latency_ms=200)


@pytest.mark.parametrize(("observed", "held_s", "verdict"), [
    (telemetry(500), 30, Verdict.WAIT),  # inside thresholds, hold not over
    (telemetry(500), 61, Verdict.ADVANCE),
    (telemetry(50), 600, Verdict.WAIT),  # held long, but too few inferences to judge
    (telemetry(500, errors=40), 5, Verdict.ROLLBACK),  # 8 % errors: no need to wait for the hold
    (telemetry(500, crashes=10), 5, Verdict.ROLLBACK),  # 2 % crashes
    (telemetry(500, p95=450.0), 5, Verdict.PAUSE),  # slow, not broken: an operator decides
    (telemetry(50, errors=40), 600, Verdict.WAIT),  # a breach on too little telemetry is not judged
    (telemetry(500, errors=25), 61, Verdict.ADVANCE),  # exactly at the maximum (5 %) is inside
], ids=["holding", "advance", "too-few", "errors", "crashes", "latency", "thin-breach", "at-limit"])
def test_gate_decisions(observed: TelemetryAggregate, held_s: float, verdict: Verdict) -> None:
    gate = judge(STAGE, observed, held_s)
    assert gate.verdict is verdict, gate.reason
    assert gate.reason


def test_the_aggregate_weights_p95_by_inferences_and_keeps_the_worst() -> None:
    def row(device: str, count: int, p95: float | None) -> TelemetryRow:
        return TelemetryRow("r", 0, 2, device, T0, T0, count, 1, 0, 3, None, p95, None)

    agg = aggregate([row("a", 900, 10.0), row("b", 100, 110.0), row("c", 0, None)])
    assert (agg.devices, agg.reports, agg.inference_count, agg.error_count, agg.cloud_fallback_count) == (
        3, 3, 1000, 3, 9)
    assert agg.p95_ms == pytest.approx(20.0) and agg.p95_max_ms == 110.0
    assert agg.error_rate == pytest.approx(0.003)
    assert aggregate([]).p95_ms is None and aggregate([]).error_rate is None


# --- the processor -----------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def processor_with(rollout: Rollout) -> tuple[RolloutProcessor, InMemoryRolloutStore, RecordingSink, Clock]:
    store, sink, clock = InMemoryRolloutStore(), RecordingSink(), Clock()
    assert store.create(rollout) is None
    return RolloutProcessor(Settings(), store, sink, clock), store, sink, clock


def new_rollout(**overrides: Any) -> Rollout:
    fields: dict[str, Any] = {
        "id": str(uuid.uuid4()), "model_id": "org/m", "version": 2, "baseline_version": 1, "cohort": Cohort(),
        "stages": [Stage(10, 60, 10, 0.05, None, 300.0), Stage(100, 60, 10, 0.05)], "status": RolloutStatus.ACTIVE,
        "current_stage": 0, "stage_started_at": T0, "created_at": T0, "updated_at": T0, "created_by": "key_op"}
    fields.update(overrides)
    return Rollout(**fields)


def report(device: str, version: int, count: int, errors: int = 0, p95: float = 50.0,
           end: datetime = T0 + timedelta(seconds=30), model_id: str = "org/m") -> dict[str, Any]:
    return {"device_id": device, "window_start": end - timedelta(seconds=30), "window_end": end,
            "models": [{"model_id": model_id, "version": version, "inference_count": count, "error_count": errors,
                        "crash_count": 0, "cloud_fallback_count": 1,
                        "latency_ms": {"p50": p95 / 2, "p95": p95, "p99": p95 * 2}}]}


def fleet_events(sink: RecordingSink) -> list[str]:
    return [record["event_type"] for _, kind, record, _ in sink.events if kind is MessageType.FLEET_EVENT]


async def test_a_stage_held_within_thresholds_advances_and_the_last_completes() -> None:
    rollout = new_rollout()
    processor, store, sink, clock = processor_with(rollout)
    await processor.on_telemetry(report("d1", 2, 20))
    await processor.on_telemetry(report("d2", 1, 500, errors=400))  # the baseline's errors gate nothing
    await processor.on_telemetry(report("d3", 9, 5, model_id="org/other"))  # no rollout: not kept
    clock.now = T0 + timedelta(seconds=30)
    assert await processor.judge(store.get(rollout.id)) is Verdict.WAIT  # type: ignore[arg-type]
    clock.now = T0 + timedelta(seconds=61)
    await processor.tick()
    advanced = store.get(rollout.id)
    assert advanced is not None and (advanced.current_stage, advanced.status) == (1, RolloutStatus.ACTIVE)
    gate = store.gates(rollout.id)[0]
    assert gate["verdict"] == "advance" and gate["telemetry"]["inference_count"] == 20
    assert gate["baseline_telemetry"]["error_count"] == 400
    # Stage 1 starts afresh: stage 0's reports do not count, new ones are filed under stage 1.
    clock.now = T0 + timedelta(seconds=130)
    await processor.tick()
    assert store.get(rollout.id).current_stage == 1  # type: ignore[union-attr]
    await processor.on_telemetry(report("d1", 2, 15, end=T0 + timedelta(seconds=125)))
    await processor.tick()
    done = store.get(rollout.id)
    assert done is not None and done.status is RolloutStatus.COMPLETED
    assert fleet_events(sink) == ["rollout_stage_advanced", "rollout_completed"]
    assert [a["actor"] for a in sink.audits] == [GATE_ACTOR, GATE_ACTOR]
    assert store.create(new_rollout()) is None  # the slot is free again


async def test_errors_above_the_threshold_roll_back_by_themselves_with_the_reason() -> None:
    rollout = new_rollout()
    processor, store, sink, clock = processor_with(rollout)
    await processor.on_telemetry(report("d1", 2, 100, errors=12))
    clock.now = T0 + timedelta(seconds=5)
    await processor.tick()
    stored = store.get(rollout.id)
    assert stored is not None and stored.status is RolloutStatus.ROLLED_BACK
    assert "error rate 0.1200" in (stored.reason or "")
    (event,) = [r for _, k, r, _ in sink.events if k is MessageType.FLEET_EVENT]
    assert event["event_type"] == "rollout_rolled_back" and "error rate" in event["details"]["reason"]
    assert not stored.assigns("any-device")


async def test_latency_above_the_threshold_pauses_and_a_resume_judges_afresh() -> None:
    rollout = new_rollout()
    processor, store, sink, clock = processor_with(rollout)
    await processor.on_telemetry(report("d1", 2, 50, p95=900.0))
    clock.now = T0 + timedelta(seconds=40)
    await processor.tick()
    assert store.get(rollout.id).status is RolloutStatus.PAUSED  # type: ignore[union-attr]
    await processor.tick()  # paused: nothing judged, nothing changes
    assert fleet_events(sink) == ["rollout_paused"]
    await processor.on_command({"rollout_id": rollout.id, "command": "resume", "actor": "key_op", "reason": None})
    resumed = store.get(rollout.id)
    assert resumed is not None and resumed.status is RolloutStatus.ACTIVE and resumed.stage_started_at == clock.now
    await processor.tick()  # the slow reports are from before the resume
    assert store.get(rollout.id).status is RolloutStatus.ACTIVE  # type: ignore[union-attr]


async def test_a_command_that_no_longer_applies_is_recorded_as_rejected() -> None:
    rollout = new_rollout()
    processor, store, sink, _ = processor_with(rollout)
    await processor.on_command({"rollout_id": rollout.id, "command": "rollback", "actor": "key_op", "reason": "bad"})
    await processor.on_command({"rollout_id": rollout.id, "command": "rollback", "actor": "key_op", "reason": "bad"})
    assert [a["outcome"] for a in sink.audits] == ["applied", "rejected"]
    assert fleet_events(sink) == ["rollout_rolled_back"]
    assert store.get(rollout.id).revision == 1  # type: ignore[union-attr]


# --- REST --------------------------------------------------------------------------------------
@pytest.fixture
def ctx() -> AppContext:
    return memory_context(Settings(admin_api_key=SecretStr(ADMIN), rate_limit_per_minute=1000))


@pytest.fixture
def api(ctx: AppContext) -> Iterator[TestClient]:
    with app_client(ctx) as client:
        yield client


OP = {"Authorization": f"Bearer {ADMIN}"}


def catalog_model(ctx: AppContext, model_id: str = "org/rolled", versions: int = 2) -> None:
    ctx.store.create_model(CatalogModel(id=model_id, is_baseline=False, created_at=T0, updated_at=T0,
                                        latest_version=versions))
    for v in range(1, versions + 1):
        ctx.store.add_version(ModelVersion(model_id, v, "onnx", f"models/{v}", f"s3://b/models/{v}", 1000 * v,
                                           f"{v:x}" * 64, T0))


def register(api: TestClient, platform: str = "android") -> tuple[str, dict[str, str]]:
    device_id = f"dev-{uuid.uuid4().hex[:8]}"
    response = api.post("/api/v1/devices/register", json={"device_id": device_id, "platform": platform,
                                                          "capabilities": {"memory_mb": 4096}})
    assert response.status_code == 201, response.text
    return device_id, {"Authorization": f"Bearer {response.json()['api_key']}"}


def create(api: TestClient, **body: Any) -> Any:
    payload = {"model_id": "org/rolled", "version": 2, "stages": [{"percent": 100, "hold_s": 60}], **body}
    return api.post("/api/v1/rollouts", json=payload, headers=OP)


def test_create_answers_201_then_409_while_the_model_has_an_active_rollout(api: TestClient, ctx: AppContext) -> None:
    catalog_model(ctx)
    first = create(api)
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["status"], body["baseline_version"], body["current_stage"], body["current_percent"]) == (
        "active", 1, 0, 100.0)
    second = create(api)
    assert second.status_code == 409 and second.json()["error_code"] == "ROLLOUT_ACTIVE"
    assert second.json()["details"]["rollout_id"] == body["rollout_id"]
    sink: RecordingSink = ctx.events  # type: ignore[assignment]
    assert fleet_events(sink) == ["rollout_created"] and sink.audits[-1]["action"] == "rollout.create"
    assert api.get(f"/api/v1/rollouts/{body['rollout_id']}", headers=OP).json()["devices"]["cohort"] == 0


@pytest.mark.parametrize(("body", "status"), [
    ({"version": 9}, 404),
    ({"model_id": "org/unknown"}, 404),
    ({"stages": []}, 400),
    ({"stages": [{"percent": 50, "hold_s": 1}, {"percent": 20, "hold_s": 1}]}, 400),
    ({"stages": [{"percent": 150, "hold_s": 1}]}, 400),
    ({"cohort": {"capabilities": {"memory_gb": {"max": 3}}}}, 400),
    ({"baseline_version": 2}, 400),
    ({"colour": "blue"}, 400),
])
def test_invalid_rollouts_are_4xx_in_the_envelope(api: TestClient, ctx: AppContext, body: dict[str, Any],
                                                  status: int) -> None:
    catalog_model(ctx)
    response = create(api, **body)
    assert response.status_code == status, response.text
    assert response.json()["status_code"] == status


def test_commands_are_published_for_the_processor_or_refused_by_state(api: TestClient, ctx: AppContext) -> None:
    catalog_model(ctx)
    rollout_id = create(api).json()["rollout_id"]
    accepted = api.post(f"/api/v1/rollouts/{rollout_id}/pause", json={"reason": "looks slow"}, headers=OP)
    assert accepted.status_code == 202 and accepted.json()["command"] == "pause"
    sink: RecordingSink = ctx.events  # type: ignore[assignment]
    (command,) = [r for _, k, r, _ in sink.events if k is MessageType.ROLLOUT_COMMAND]
    assert (command["rollout_id"], command["command"], command["reason"]) == (rollout_id, "pause", "looks slow")
    refused = api.post(f"/api/v1/rollouts/{rollout_id}/resume", headers=OP)  # still active: nothing to resume
    assert refused.status_code == 409 and refused.json()["error_code"] == "ROLLOUT_STATE"
    missing = api.post(f"/api/v1/rollouts/{uuid.uuid4()}/advance", headers=OP)
    assert missing.status_code == 404


def test_heartbeats_carry_assignments_from_caches_and_the_heartbeats_own_metrics(
        api: TestClient, ctx: AppContext) -> None:
    catalog_model(ctx)
    device_id, key = register(api)
    no_rollout = api.put(f"/api/v1/devices/{device_id}/heartbeat", json={"metrics": {"cpu": 5}}, headers=key)
    assert no_rollout.status_code == 200 and no_rollout.json()["assignments"] == []
    assert create(api, cohort={"platforms": ["android"]}).status_code == 201
    sha = "2" * 64
    metrics = {"installed_models": [{"model_id": "org/rolled", "version": 2, "sha256": sha}],
               "memory_available_mb": 2048, "battery_level": 80, "charging": False, "network": "wifi", "cpu": 5}
    answer = api.put(f"/api/v1/devices/{device_id}/heartbeat", json={"metrics": metrics}, headers=key)
    assert answer.status_code == 200, answer.text
    (entry,) = answer.json()["assignments"]
    assert entry["model_id"] == "org/rolled" and entry["version"] == 2 and entry["stage"] == 0
    assert entry["download_url"] == "/api/v1/models/org/rolled/versions/2/download"
    assert (entry["size_bytes"], entry["sha256"], entry["downloaded"]) == (2000, sha, True)
    assert entry["routing"] == {"decision": "on_device", "reason": "ok", "cloud_url": "/api/v1/infer/org/rolled"}
    sink: RecordingSink = ctx.events  # type: ignore[assignment]
    beat = [r for _, k, r, _ in sink.events if k is MessageType.DEVICE_HEARTBEAT][-1]
    assert beat["metrics"] == metrics  # unknown keys kept as sent
    ios_id, ios_key = register(api, "ios")  # outside the cohort, not running the model: nothing
    assert api.put(f"/api/v1/devices/{ios_id}/heartbeat", json={}, headers=ios_key).json()["assignments"] == []
    not_yet = api.put(f"/api/v1/devices/{device_id}/heartbeat", json={"metrics": {"network": "wifi"}}, headers=key)
    (pending,) = not_yet.json()["assignments"]
    assert pending["downloaded"] is False and pending["routing"]["decision"] == "cloud"
    assert pending["routing"]["reason"] == "not_downloaded"


@pytest.mark.parametrize("metrics", [
    {"battery_level": 140}, {"network": "carrier-pigeon"}, {"charging": "maybe"},
    {"installed_models": [{"model_id": "m", "version": "two"}]}, {"memory_available_mb": -1},
])
def test_heartbeat_metrics_that_assignments_read_are_validated(api: TestClient, metrics: dict[str, Any]) -> None:
    device_id, key = register(api)
    response = api.put(f"/api/v1/devices/{device_id}/heartbeat", json={"metrics": metrics}, headers=key)
    assert response.status_code == 400, response.text


def test_telemetry_is_validated_and_published(api: TestClient, ctx: AppContext) -> None:
    device_id, key = register(api)
    body: dict[str, Any] = {"window_start": "2026-11-01T12:00:00Z", "window_end": "2026-11-01T12:01:00Z",
            "models": [{"model_id": "org/rolled", "version": 2, "inference_count": 40, "error_count": 1,
                        "crash_count": 0, "cloud_fallback_count": 3,
                        "latency_ms": {"p50": 10, "p95": 30, "p99": 60}}]}
    accepted = api.post(f"/api/v1/devices/{device_id}/telemetry", json=body, headers=key)
    assert accepted.status_code == 202, accepted.text
    sink: RecordingSink = ctx.events  # type: ignore[assignment]
    (record,) = [r for _, k, r, _ in sink.events if k is MessageType.DEVICE_TELEMETRY]
    assert record["device_id"] == device_id and record["models"][0]["latency_ms"]["p95"] == 30
    other_id, _ = register(api)
    assert api.post(f"/api/v1/devices/{other_id}/telemetry", json=body, headers=key).status_code == 403
    for bad in ({**body, "window_end": "2026-11-01T11:00:00Z"},
                {**body, "models": [{**body["models"][0], "error_count": 41}]},
                {**body, "models": []}, {**body, "extra": 1}):
        assert api.post(f"/api/v1/devices/{device_id}/telemetry", json=bad, headers=key).status_code == 400
