"""Staged rollouts end to end with dozens of simulated devices (threads, each with its own device key):
REST → the rollouts topic → the rollouts processor → Cassandra → the ingress's assignment caches →
heartbeat answers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest

from core.rollouts.models import bucket
from tests.e2e.conftest import RunningSystem, client_address
from tests.onnx_models import linear_onnx

pytestmark = pytest.mark.e2e
T = TypeVar("T")
DEVICES = 60
TIMEOUT = 30


@dataclass(frozen=True)
class Device:
    device_id: str
    headers: dict[str, str]


def wait_for(read: Callable[[], T], ok: Callable[[T], bool], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value!r}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def admin(system: RunningSystem) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=system.base_url, headers={"Authorization": f"Bearer {system.admin_key}"},
                      timeout=TIMEOUT) as client:
        yield client


@pytest.fixture(scope="module")
def devices(system: RunningSystem) -> list[Device]:
    prefix = f"{system.settings.topic_prefix}ro-{uuid.uuid4().hex[:6]}"

    def register(i: int) -> Device:
        device_id = f"{prefix}-{i}"
        response = httpx.post(f"{system.base_url}/api/v1/devices/register", headers=client_address(), timeout=TIMEOUT,
                              json={"device_id": device_id, "platform": "android", "capabilities": {"memory_mb": 4096}})
        assert response.status_code == 201, response.text
        return Device(device_id, {"Authorization": f"Bearer {response.json()['api_key']}"})

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(register, range(DEVICES)))


def two_version_model(admin: httpx.Client) -> str:
    model_id = admin.post("/api/v1/models", json={"description": "rollout e2e"}).json()["id"]
    for bias in (0.0, 1.0):
        uploaded = admin.post(f"/api/v1/models/{model_id}/versions/upload", data={"format": "onnx"},
                              files={"file": ("m.onnx", linear_onnx(bias=np.full(2, bias, dtype=np.float32)))})
        assert uploaded.status_code == 201, uploaded.text
    return str(model_id)


def create_rollout(admin: httpx.Client, model_id: str, stages: list[dict[str, Any]]) -> dict[str, Any]:
    created = admin.post("/api/v1/rollouts", json={"model_id": model_id, "version": 2, "stages": stages,
                                                   "cohort": {"platforms": ["android"]}})
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def heartbeats(system: RunningSystem, devices: list[Device], model_id: str) -> dict[str, dict[str, Any]]:
    """Every device heartbeats at once; its assignment of ``model_id`` by device id."""

    def beat(device: Device) -> tuple[str, dict[str, Any]]:
        response = httpx.put(f"{system.base_url}/api/v1/devices/{device.device_id}/heartbeat", timeout=TIMEOUT,
                             headers=device.headers, json={"status": "active", "metrics": {"network": "wifi"}})
        assert response.status_code == 200, response.text
        (entry,) = [a for a in response.json()["assignments"] if a["model_id"] == model_id]
        return device.device_id, entry

    with ThreadPoolExecutor(12) as pool:
        return dict(pool.map(beat, devices))


def on_new_version(assignments: dict[str, dict[str, Any]]) -> set[str]:
    return {d for d, a in assignments.items() if a["version"] == 2}


def rollout(admin: httpx.Client, rollout_id: str) -> dict[str, Any]:
    response = admin.get(f"/api/v1/rollouts/{rollout_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def telemetry(system: RunningSystem, device: Device, model_id: str, version: int, count: int, errors: int = 0,
              p95: float = 20.0) -> None:
    now = datetime.now(UTC)
    response = httpx.post(
        f"{system.base_url}/api/v1/devices/{device.device_id}/telemetry", headers=device.headers, timeout=TIMEOUT,
        json={"window_start": (now - timedelta(seconds=10)).isoformat(), "window_end": now.isoformat(),
              "models": [{"model_id": model_id, "version": version, "inference_count": count, "error_count": errors,
                          "crash_count": 0, "cloud_fallback_count": 0,
                          "latency_ms": {"p50": p95 / 2, "p95": p95, "p99": p95 * 1.5}}]})
    assert response.status_code == 202, response.text


def test_a_10_percent_stage_assigns_about_10_percent_and_keeps_them_when_it_widens(
        system: RunningSystem, admin: httpx.Client, devices: list[Device]) -> None:
    model_id = two_version_model(admin)
    created = create_rollout(admin, model_id, [{"percent": 10, "hold_s": 3600}, {"percent": 50, "hold_s": 3600},
                                               {"percent": 100, "hold_s": 3600}])
    rollout_id = created["rollout_id"]
    again = admin.post("/api/v1/rollouts", json={"model_id": model_id, "version": 2,
                                                  "stages": [{"percent": 100, "hold_s": 1}]})
    assert again.status_code == 409 and again.json()["error_code"] == "ROLLOUT_ACTIVE"

    first = heartbeats(system, devices, model_id)
    stage_0 = on_new_version(first)
    # Exactly the devices whose hash bucket is below 10, and about 10 % of them (3 sigma of 60 draws).
    assert stage_0 == {d.device_id for d in devices if bucket(d.device_id, rollout_id) < 10}
    assert abs(len(stage_0) - 0.1 * DEVICES) <= 3 * (DEVICES * 0.1 * 0.9) ** 0.5
    for device_id, entry in first.items():
        in_stage = device_id in stage_0
        assert entry["rollout_id"] == (rollout_id if in_stage else None)
        assert entry["stage"] == (0 if in_stage else None) and entry["version"] == (2 if in_stage else 1)
        assert entry["download_url"] == f"/api/v1/models/{model_id}/versions/{entry['version']}/download"
        assert entry["downloaded"] is False and entry["routing"]["decision"] == "cloud"
        assert entry["routing"]["reason"] == "not_downloaded"
        assert len(entry["sha256"]) == 64 and entry["size_bytes"] > 0

    accepted = admin.post(f"/api/v1/rollouts/{rollout_id}/advance", json={"reason": "looks fine"})
    assert accepted.status_code == 202, accepted.text
    wait_for(lambda: rollout(admin, rollout_id), lambda r: r["current_stage"] == 1, 60, "the processor's advance")
    # The ingress's rollout cache catches up within TRIBUTARY_ROLLOUT_CACHE_S.
    widened = wait_for(lambda: heartbeats(system, devices, model_id),
                       lambda a: all(e["stage"] in (1, None) for e in a.values()), 30, "assignments of stage 1")
    stage_1 = on_new_version(widened)
    assert stage_0 <= stage_1, "widening took devices back"
    assert stage_1 == {d.device_id for d in devices if bucket(d.device_id, rollout_id) < 50}
    assert abs(len(stage_1) - 0.5 * DEVICES) <= 3 * (DEVICES * 0.5 * 0.5) ** 0.5

    detail = rollout(admin, rollout_id)
    assert detail["devices"]["assigned"]["2"] >= len(stage_1)  # ours and any other android device in the cohort
    own = httpx.get(f"{system.base_url}/api/v1/devices/{devices[0].device_id}/assignment",
                    headers=devices[0].headers, timeout=TIMEOUT)
    assert own.status_code == 200 and own.json()["assignments"][0]["version"] == widened[devices[0].device_id][
        "version"]
    assert admin.post(f"/api/v1/rollouts/{rollout_id}/rollback").status_code == 202


def test_bad_telemetry_from_the_new_version_pauses_and_rolls_back_on_its_own(
        system: RunningSystem, admin: httpx.Client, devices: list[Device]) -> None:
    # Judged once all four devices' reports are in (80 inferences), so the gate's numbers are exact.
    gates = {"min_inference_count": 80, "max_error_rate": 0.05, "max_p95_latency_ms": 200}
    slow_model, broken_model = two_version_model(admin), two_version_model(admin)
    slow = create_rollout(admin, slow_model, [{"percent": 50, "hold_s": 3600, **gates}, {"percent": 100, "hold_s": 1}])
    broken = create_rollout(admin, broken_model, [{"percent": 50, "hold_s": 3600, **gates},
                                                  {"percent": 100, "hold_s": 1}])
    slow_devices = [d for d in devices if bucket(d.device_id, slow["rollout_id"]) < 50][:4]
    broken_devices = [d for d in devices if bucket(d.device_id, broken["rollout_id"]) < 50][:4]
    for device in slow_devices:
        telemetry(system, device, slow_model, 2, 20, p95=900.0)  # slow on the new version
    assert len(slow_devices) == len(broken_devices) == 4
    for device in broken_devices:
        # The baseline's numbers gate nothing (sent first: a device's reports are read in order).
        telemetry(system, device, broken_model, 1, 20, p95=900.0)
        telemetry(system, device, broken_model, 2, 20, errors=5)  # 25 % errors on the new version

    paused = wait_for(lambda: rollout(admin, slow["rollout_id"]), lambda r: r["status"] != "active", 60,
                      "the latency gate")
    assert paused["status"] == "paused" and "p95 latency" in paused["reason"]
    assert paused["gates"]["0"]["verdict"] == "pause"
    assert paused["gates"]["0"]["telemetry"]["inference_count"] == 80
    rolled_back = wait_for(lambda: rollout(admin, broken["rollout_id"]), lambda r: r["status"] != "active", 60,
                           "the error gate")
    assert rolled_back["status"] == "rolled_back" and "error rate 0.2500" in rolled_back["reason"]
    gate = rolled_back["gates"]["0"]
    assert gate["telemetry"]["error_count"] == 20 and gate["baseline_telemetry"]["inference_count"] == 80
    assert rolled_back["telemetry"]["1"]["latency_p95_ms"] == pytest.approx(900.0)

    # Every device is sent back to the baseline, also those the stage had given the new version.
    back = wait_for(lambda: heartbeats(system, devices, broken_model),
                    lambda a: not on_new_version(a), 30, "the rollback to reach the assignments")
    assert {e["version"] for e in back.values()} == {1} and {e["rollout_id"] for e in back.values()} == {None}
    # The model's slot is free again: a new rollout may start.
    retry = admin.post("/api/v1/rollouts", json={"model_id": broken_model, "version": 2,
                                                  "stages": [{"percent": 5, "hold_s": 3600}]})
    assert retry.status_code == 201, retry.text


def test_the_rollout_state_survives_a_processor_kill_mid_stage(
        system: RunningSystem, admin: httpx.Client, devices: list[Device]) -> None:
    model_id = two_version_model(admin)
    # Advances only once it has counted all 40 inferences below: none lost, none counted twice.
    created = create_rollout(admin, model_id, [
        {"percent": 30, "hold_s": 2, "min_inference_count": 40, "max_error_rate": 0.5},
        {"percent": 100, "hold_s": 3600}])
    rollout_id = created["rollout_id"]
    reporters = [d for d in devices if bucket(d.device_id, rollout_id) < 30][:2]
    assert len(reporters) == 2
    for device in reporters:
        telemetry(system, device, model_id, 2, 10)
    judged = wait_for(lambda: rollout(admin, rollout_id),
                      lambda r: r["gates"].get("0", {}).get("telemetry", {}).get("inference_count") == 20, 60,
                      "the gate to see the first reports")
    assert judged["status"] == "active" and judged["current_stage"] == 0 and judged["gates"]["0"]["verdict"] == "wait"

    processor = system.supervisor.running["rollout-processor"]
    restarts = processor.restarts
    processor.proc.kill()  # SIGKILL mid-stage: no shutdown hook runs
    processor.proc.wait()
    for device in reporters:  # reports while it is down wait in Kafka
        telemetry(system, device, model_id, 2, 10)
    system.supervisor.check()  # restarts the killed processor
    assert system.supervisor.running["rollout-processor"].restarts == restarts + 1

    advanced = wait_for(lambda: rollout(admin, rollout_id), lambda r: r["current_stage"] == 1, 120,
                        "the restarted processor to advance the stage")
    assert advanced["status"] == "active"
    gate = advanced["gates"]["0"]
    assert gate["verdict"] == "advance" and gate["telemetry"]["inference_count"] == 40
    assert gate["telemetry"]["devices"] == 2 and gate["telemetry"]["reports"] == 4
    assert admin.post(f"/api/v1/rollouts/{rollout_id}/rollback").status_code == 202
