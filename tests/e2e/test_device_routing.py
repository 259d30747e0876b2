"""Routing decisions and cloud fallback end to end (issue 20 items 5 and 6), on the real stack: a
model rolled out to two devices, one below its memory requirement and one above it.

- The small device is told ``cloud`` / ``insufficient_memory``, never downloads the model, and gets
  its answers from the serving plane (Kafka, an inference worker running the same ONNX file) with
  its own device key, each call counted against that key's per-minute limit.
- The big device is told ``not_downloaded`` first (so the cloud answers it meanwhile), downloads
  the version through its ``download_url``, checks the sha256, switches to it, and from its next
  heartbeat on is told ``on_device`` and answers from its own ONNX Runtime session, the same numbers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from sdk.agent import DeviceAgent
from sdk.client import ApiError, RetryPolicy, TributaryClient
from tests.e2e.conftest import RunningSystem, client_address
from tests.onnx_models import expected, linear_onnx

pytestmark = pytest.mark.e2e
RETRY = RetryPolicy(attempts=8, max_wait_s=10.0, backoff_s=0.5)
ROWS = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
MEMORY_MB = 512  # the model's requirement; with the default 1.2 headroom a device needs 615 MB
T = TypeVar("T")


def wait_for(read: Callable[[], T], ok: Callable[[T], bool], timeout_s: float = 60.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.3)


@pytest.fixture(scope="module")
def operator(system: RunningSystem) -> Iterator[TributaryClient]:
    with TributaryClient(system.base_url, system.admin_key, timeout_s=120, retry=RETRY) as client:
        yield client


@pytest.fixture
def served_model(operator: TributaryClient) -> str:
    """A catalog model with one ONNX version, a memory requirement, loaded on the inference workers
    (one per test: a model has one active rollout at a time)."""
    model_id = str(operator.create_model(description="routing e2e linear")["id"])
    operator.upload_version(model_id, linear_onnx(), "linear.onnx", fmt="onnx")
    operator.update_model(model_id, resource_requirements={"memory_mb": MEMORY_MB})
    operator.download(model_id)
    operator.wait_ready(model_id, timeout_s=120)
    assert operator.load(model_id).workers
    return model_id


def register(system: RunningSystem, name: str, memory_mb: int) -> tuple[TributaryClient, str]:
    device_id = f"{system.settings.topic_prefix}{name}-{uuid.uuid4().hex[:8]}"
    client = TributaryClient(system.base_url, timeout_s=120, retry=RETRY, headers=client_address())
    client.register_device(device_id, "android", {"memory_mb": memory_mb, "runtimes": ["onnx"]})
    return client, device_id


def roll_out(operator: TributaryClient, model_id: str, device_ids: list[str]) -> dict[str, Any]:
    response = operator.request("POST", "/api/v1/rollouts", json={
        "model_id": model_id, "version": 1, "cohort": {"device_ids": device_ids},
        "stages": [{"percent": 100, "hold_s": 3600}]})
    rollout: dict[str, Any] = response.json()
    return rollout


def conditions(memory_available_mb: int) -> Callable[[], dict[str, Any]]:
    return lambda: {"memory_available_mb": memory_available_mb, "battery_level": 90, "charging": False,
                    "network": "wifi"}


def test_a_device_below_the_memory_requirement_is_answered_by_the_serving_plane_with_its_own_key(
        system: RunningSystem, operator: TributaryClient, served_model: str, tmp_path: Path) -> None:
    small, small_id = register(system, "small", memory_mb=256)
    rollout_id = roll_out(operator, served_model, [small_id])["rollout_id"]
    # The small device's calls go with a key of its own whose limit this test can reach: every call
    # it makes (heartbeats, cloud inference, telemetry) spends from the same per-minute budget.
    limit = 12
    small.api_key = operator.create_key("device", subject=small_id, rate_limit_per_minute=limit)["api_key"]
    small.retry = RetryPolicy(attempts=1)  # a 429 is seen, not waited out
    agent = DeviceAgent(small, small_id, models_dir=tmp_path / "small", conditions=conditions(200),
                        telemetry_interval_s=3600)

    agent.step()  # request 1
    assignment = agent.assignments[served_model]
    assert (assignment.routing.decision, assignment.routing.reason) == ("cloud", "insufficient_memory")
    assert assignment.routing.cloud_url == f"/api/v1/infer/{served_model}" and not assignment.downloaded
    assert agent.store.get(served_model) is None and not (tmp_path / "small").exists()  # nothing downloaded

    answer = agent.infer(served_model, {"inputs": ROWS}, priority="high")  # request 2
    assert answer.metadata["served_by"] == "cloud"
    np.testing.assert_allclose(answer.output_data["outputs"], expected(ROWS), rtol=1e-5)

    assert agent.report_telemetry()  # request 3: the fallback is in the device's telemetry...
    spent = 3
    # ...and in the rollout's, once the rollouts processor has aggregated it.
    telemetry = wait_for(lambda: operator.request("GET", f"/api/v1/rollouts/{rollout_id}").json()["telemetry"],
                         lambda seen: "1" in seen)
    assert telemetry["1"]["cloud_fallback_count"] == 1 and telemetry["1"]["inference_count"] == 1
    with pytest.raises(ApiError) as limited:
        for _ in range(limit):
            agent.infer(served_model, {"inputs": ROWS}, priority="high")
            spent += 1
    assert limited.value.status_code == 429 and spent == limit  # the cloud calls used the device's own budget
    window = agent.telemetry.window()
    assert window is not None
    [model] = window["models"]
    assert model["inference_count"] == limit - 3 + 1 and model["cloud_fallback_count"] == limit - 3 + 1
    assert model["error_count"] == 1  # the refused one: no answer reached the app


def test_a_device_with_enough_memory_downloads_verifies_and_runs_on_device(
        system: RunningSystem, operator: TributaryClient, served_model: str, tmp_path: Path) -> None:
    big, big_id = register(system, "roomy", memory_mb=8192)
    roll_out(operator, served_model, [big_id])
    agent = DeviceAgent(big, big_id, models_dir=tmp_path / "big", conditions=conditions(4096),
                        telemetry_interval_s=3600)

    agent.step()  # told not_downloaded: downloads, verifies, switches
    first = agent.assignments[served_model]
    assert (first.routing.decision, first.routing.reason, first.downloaded) == ("cloud", "not_downloaded", False)
    local = agent.store.get(served_model)
    assert local is not None and local.version == "1" and local.sha256 == first.sha256
    assert local.path.read_bytes() == linear_onnx() and not agent.download_errors

    agent.step()  # its heartbeat now lists the version: on device
    second = agent.assignments[served_model]
    assert (second.routing.decision, second.routing.reason, second.downloaded) == ("on_device", "ok", True)
    answer = agent.infer(served_model, {"inputs": ROWS})
    assert answer.metadata["served_by"] == "on_device"
    np.testing.assert_allclose(answer.output_data["outputs"], expected(ROWS), rtol=1e-5)

    # What the device processor stored of that heartbeat gives the same answer to GET .../assignment.
    stored = wait_for(lambda: big.assignment(big_id)["assignments"],
                      lambda entries: any(e["routing"]["decision"] == "on_device" for e in entries))
    [entry] = [e for e in stored if e["model_id"] == served_model]
    assert entry["downloaded"] and entry["routing"]["reason"] == "ok"
    assert agent.report_telemetry()

