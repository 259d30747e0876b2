"""The SDK device agent against a fake API (httpx MockTransport): heartbeat metrics, following
assignments (download, sha256 check, atomic switch, old version dropped), routing each inference
(on device through ONNX Runtime, cloud with the device key, cloud fallback on local failure) and
the telemetry windows it reports."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sdk.agent import (
    Assignment,
    DeviceAgent,
    LocalModel,
    Runner,
    RunnerCrashed,
    Telemetry,
    default_runners,
    percentile,
)
from sdk.client import ApiError, RetryPolicy, TributaryClient
from tests.onnx_models import expected, linear_onnx

pytestmark = pytest.mark.unit
DEVICE = "phone-7"
KEY = "sk_live_" + "d" * 32
MODEL = "acme/linear"
V1 = linear_onnx()
V2 = linear_onnx(np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=np.float32), np.zeros(2, dtype=np.float32))
ROWS = [[1.0, 2.0, 3.0]]
CLOUD_ANSWER = {"outputs": [[-1.0, -1.0]]}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(version: int, data: bytes, *, decision: str = "cloud", reason: str = "not_downloaded",
          downloaded: bool = False, digest: str | None = None) -> dict[str, Any]:
    return {"model_id": MODEL, "version": version, "rollout_id": "r-1", "stage": 0,
            "download_url": f"/api/v1/models/{MODEL}/versions/{version}/download", "size_bytes": len(data),
            "sha256": digest or sha(data), "downloaded": downloaded,
            "routing": {"decision": decision, "reason": reason, "cloud_url": f"/api/v1/infer/{MODEL}"}}


@dataclass
class FakeApi:
    """The few routes the agent calls; records what it was sent."""

    files: dict[int, bytes] = field(default_factory=lambda: {1: V1, 2: V2})
    assignments: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    inferences: list[httpx.Request] = field(default_factory=list)
    telemetry_status: int = 202
    download_failures: int = 0
    pending_round_id: str | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        path = request.url.path
        if path == f"/api/v1/devices/{DEVICE}/heartbeat":
            self.heartbeats.append(json.loads(request.content))
            return httpx.Response(200, json={"status": "active", "last_heartbeat": "2026-01-01T00:00:00Z",
                                             "pending_round_id": self.pending_round_id,
                                             "assignments": self.assignments})
        if path == f"/api/v1/devices/{DEVICE}/assignment":
            return httpx.Response(200, json={"device_id": DEVICE, "assignments": self.assignments,
                                             "generated_at": "2026-01-01T00:00:00Z"})
        if path.startswith(f"/api/v1/models/{MODEL}/versions/"):
            if self.download_failures:
                self.download_failures -= 1
                return httpx.Response(503, headers={"Retry-After": "0"}, json={"error_code": "SERVICE_UNAVAILABLE"})
            version = int(path.split("/")[-2])
            return httpx.Response(200, content=self.files[version],
                                  headers={"Content-Disposition": f'attachment; filename="model_v{version}.onnx"'})
        if path == f"/api/v1/devices/{DEVICE}/telemetry":
            if self.telemetry_status >= 400:
                return httpx.Response(self.telemetry_status, json={"error_code": "VALIDATION_ERROR"})
            self.telemetry.append(json.loads(request.content))
            return httpx.Response(202, json={"accepted": True})
        if path.startswith("/api/v1/infer/"):
            self.inferences.append(request)
            return httpx.Response(200, json={"model_id": MODEL, "output_data": CLOUD_ANSWER, "metadata": {}})
        if path.startswith("/api/v1/training/rounds/") and path.endswith("/status"):
            return httpx.Response(200, json={"id": self.pending_round_id, "global_model_path": None})
        if path.endswith("/updates"):
            return httpx.Response(201, json={"id": "u-1"})
        return httpx.Response(404, json={"error_code": "NOT_FOUND", "path": path})


CONDITIONS = {"memory_available_mb": 2048, "battery_level": 80, "charging": False, "network": "wifi"}


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def make_agent(api: FakeApi, models_dir: Path, **kwargs: Any) -> DeviceAgent:
    client = TributaryClient("http://api.test", KEY, retry=RetryPolicy(attempts=3, backoff_s=0.0),
                             sleep=lambda _: None, transport=httpx.MockTransport(api))
    return DeviceAgent(client, DEVICE, models_dir=models_dir, conditions=lambda: CONDITIONS,
                       telemetry_interval_s=3600, **kwargs)


@pytest.fixture
def agent(api: FakeApi, tmp_path: Path) -> Iterator[DeviceAgent]:
    yield make_agent(api, tmp_path / "models")


# --- heartbeats and assignments --------------------------------------------------------------

def test_heartbeat_reports_conditions_and_installed_models(api: FakeApi, agent: DeviceAgent) -> None:
    agent.step()
    assert api.heartbeats[0] == {"status": "active", "metrics": {**CONDITIONS, "installed_models": []}}
    api.assignments = [entry(1, V1)]
    agent.step()  # downloads v1
    agent.step()
    assert api.heartbeats[-1]["metrics"]["installed_models"] == [{"model_id": MODEL, "version": 1, "sha256": sha(V1)}]


def test_an_assigned_version_is_downloaded_verified_and_runs_on_device(api: FakeApi, agent: DeviceAgent,
                                                                       tmp_path: Path) -> None:
    api.assignments = [entry(1, V1)]
    agent.step()
    local = agent.store.get(MODEL)
    assert local is not None and local.version == "1" and local.format == "onnx"
    assert local.path.read_bytes() == V1 and sha(local.path.read_bytes()) == local.sha256
    assert not list((tmp_path / "models").glob("*.part"))  # nothing staged is left behind

    api.assignments = [entry(1, V1, decision="on_device", reason="ok", downloaded=True)]
    agent.step()
    result = agent.infer(MODEL, {"inputs": ROWS})
    np.testing.assert_allclose(result.output_data["outputs"], expected(ROWS), rtol=1e-6)
    assert result.metadata["served_by"] == "on_device" and api.inferences == []


def test_a_file_whose_sha256_differs_is_thrown_away_and_the_old_version_kept(api: FakeApi,
                                                                            agent: DeviceAgent) -> None:
    api.assignments = [entry(1, V1)]
    agent.step()
    api.assignments = [entry(2, V2, digest="0" * 64)]
    agent.step()
    local = agent.store.get(MODEL)
    assert local is not None and local.version == "1" and local.path.is_file()
    assert "sha256" in agent.download_errors[MODEL]
    assert {p.name for p in agent.store.root.iterdir()} == {"installed.json", local.path.name}


def test_a_new_version_replaces_the_old_one_and_its_file_is_dropped(api: FakeApi, agent: DeviceAgent) -> None:
    api.assignments = [entry(1, V1, decision="on_device", reason="ok")]  # not downloaded yet: server said so
    agent.step()
    api.assignments = [entry(1, V1, decision="on_device", reason="ok", downloaded=True)]
    agent.step()
    old = agent.store.get(MODEL)
    assert old is not None
    before = agent.infer(MODEL, {"inputs": ROWS}).output_data["outputs"]

    api.assignments = [entry(2, V2)]  # the rollout moved this device to v2
    agent.step()
    api.assignments = [entry(2, V2, decision="on_device", reason="ok", downloaded=True)]
    agent.step()
    new = agent.store.get(MODEL)
    assert new is not None and new.version == "2" and not old.path.exists()
    after = agent.infer(MODEL, {"inputs": ROWS}).output_data["outputs"]
    assert before != after
    np.testing.assert_allclose(after, expected(ROWS, *_v2()), rtol=1e-6)

    api.assignments = [entry(1, V1)]  # rolled back: v1 again, v2 dropped
    agent.step()
    back = agent.store.get(MODEL)
    assert back is not None and back.version == "1" and not new.path.exists()


def _v2() -> tuple[np.ndarray, np.ndarray]:
    return np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=np.float32), np.zeros(2, dtype=np.float32)


@pytest.mark.parametrize("reason", ["insufficient_memory", "memory_unknown", "unsupported_runtime",
                                    "unsupported_platform", "download_deferred", "cloud_only_policy"])
def test_no_download_when_the_server_says_the_device_should_not(api: FakeApi, agent: DeviceAgent, reason: str) -> None:
    api.assignments = [entry(1, V1, reason=reason)]
    agent.step()
    assert agent.store.get(MODEL) is None


def test_installed_models_survive_a_restart(api: FakeApi, tmp_path: Path) -> None:
    api.assignments = [entry(1, V1)]
    make_agent(api, tmp_path / "models").step()
    again = make_agent(api, tmp_path / "models")
    local = again.store.get(MODEL)
    assert local is not None and local.version == "1"
    assert again.metrics()["installed_models"] == [{"model_id": MODEL, "version": 1, "sha256": sha(V1)}]


def test_a_download_answered_503_is_retried(api: FakeApi, agent: DeviceAgent) -> None:
    api.download_failures = 2
    api.assignments = [entry(1, V1)]
    agent.step()
    assert agent.store.get(MODEL) is not None and MODEL not in agent.download_errors


def test_refresh_reads_the_assignment_endpoint(api: FakeApi, agent: DeviceAgent) -> None:
    api.assignments = [entry(1, V1)]
    [assignment] = agent.refresh()
    assert assignment.version == "1" and assignment.routing.reason == "not_downloaded"
    assert agent.store.get(MODEL) is not None


# --- routing each inference ------------------------------------------------------------------

def test_cloud_decision_calls_the_serving_plane_with_the_device_key(api: FakeApi, agent: DeviceAgent) -> None:
    api.assignments = [entry(1, V1, reason="insufficient_memory")]
    agent.step()
    result = agent.infer(MODEL, {"inputs": ROWS})
    assert result.output_data == CLOUD_ANSWER and result.metadata["served_by"] == "cloud"
    [request] = api.inferences
    assert request.url.raw_path == b"/api/v1/infer/acme%2Flinear"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(request.content)["input_data"] == {"inputs": ROWS}


def test_not_downloaded_yet_falls_back_to_the_cloud_rather_than_fail(api: FakeApi, agent: DeviceAgent) -> None:
    api.download_failures = 10  # the download keeps failing
    api.assignments = [entry(1, V1)]
    agent.step()
    assert agent.store.get(MODEL) is None and MODEL in agent.download_errors
    assert agent.infer(MODEL, {"inputs": ROWS}).metadata["served_by"] == "cloud"


def failing_runner(model: LocalModel) -> Runner:
    def run(_: Mapping[str, Any]) -> dict[str, Any]:
        raise ValueError("bad input shape")

    return run


def crashing_runner(model: LocalModel) -> Runner:
    raise RunnerCrashed("the model process died")


@pytest.mark.parametrize(("runners", "errors", "crashes"), [(failing_runner, 1, 0), (crashing_runner, 1, 1)])
def test_a_local_failure_falls_back_to_the_cloud_and_is_counted(api: FakeApi, tmp_path: Path, runners: Any,
                                                                 errors: int, crashes: int) -> None:
    agent = make_agent(api, tmp_path / "models", runners=runners)
    api.assignments = [entry(1, V1, decision="on_device", reason="ok")]
    agent.step()
    result = agent.infer(MODEL, {"inputs": ROWS})
    assert result.output_data == CLOUD_ANSWER and len(api.inferences) == 1
    window = agent.telemetry.window()
    assert window is not None
    [model] = window["models"]
    assert (model["inference_count"], model["error_count"], model["crash_count"],
            model["cloud_fallback_count"]) == (1, errors, crashes, 1)


def test_a_file_onnx_runtime_cannot_open_is_a_crash(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(RunnerCrashed):
        default_runners(LocalModel(MODEL, "1", sha(b"x"), broken, "onnx"))
    with pytest.raises(RunnerCrashed):
        default_runners(LocalModel(MODEL, "1", sha(b"x"), broken, "tflite"))


def test_on_device_runs_a_single_row_without_the_batch_dimension(api: FakeApi, agent: DeviceAgent) -> None:
    api.assignments = [entry(1, V1, decision="on_device", reason="ok")]
    agent.step()
    single = agent.infer(MODEL, {"inputs": ROWS[0]}).output_data["outputs"]
    np.testing.assert_allclose(single, expected(ROWS)[0], rtol=1e-6)


# --- telemetry -------------------------------------------------------------------------------

def test_telemetry_window_counts_every_route_and_reports_measured_latencies(api: FakeApi, tmp_path: Path) -> None:
    agent = make_agent(api, tmp_path / "models")
    api.assignments = [entry(1, V1, decision="on_device", reason="ok")]
    agent.step()
    for _ in range(3):
        agent.infer(MODEL, {"inputs": ROWS})
    agent.assignments[MODEL] = Assignment.of(entry(1, V1, reason="low_battery", downloaded=True))
    agent.infer(MODEL, {"inputs": ROWS})
    assert agent.report_telemetry()
    [window] = api.telemetry
    assert datetime.fromisoformat(window["window_start"]) <= datetime.fromisoformat(window["window_end"])
    [model] = window["models"]
    assert {k: model[k] for k in ("model_id", "version", "inference_count", "error_count", "crash_count",
                                  "cloud_fallback_count")} == {
        "model_id": MODEL, "version": 1, "inference_count": 4, "error_count": 0, "crash_count": 0,
        "cloud_fallback_count": 1}
    latency = model["latency_ms"]
    assert set(latency) == {"p50", "p95", "p99"} and 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert agent.report_telemetry() is False  # nothing new: no empty window is sent
    assert len(api.telemetry) == 1


def test_a_refused_window_is_counted_again_in_the_next(api: FakeApi, agent: DeviceAgent) -> None:
    api.assignments = [entry(1, V1, reason="insufficient_memory")]
    agent.step()
    agent.infer(MODEL, {"inputs": ROWS})
    api.telemetry_status = 400
    assert agent.report_telemetry() is False
    agent.infer(MODEL, {"inputs": ROWS})
    api.telemetry_status = 202
    assert agent.report_telemetry()
    [window] = api.telemetry
    assert window["models"][0]["inference_count"] == 2 and window["models"][0]["cloud_fallback_count"] == 2


def test_a_request_nobody_answered_is_an_error_without_latency(api: FakeApi, tmp_path: Path) -> None:
    def refusing(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/api/v1/infer/"):
            return httpx.Response(400, json={"error_code": "INVALID_INPUT"})
        return api(request)

    client = TributaryClient("http://api.test", KEY, transport=httpx.MockTransport(refusing))
    agent = DeviceAgent(client, DEVICE, models_dir=tmp_path, conditions=lambda: {})
    agent.follow([entry(1, V1, reason="insufficient_memory")])
    with pytest.raises(ApiError):
        agent.infer(MODEL, {"inputs": ROWS})
    window = agent.telemetry.window()
    assert window is not None
    [model] = window["models"]
    assert (model["inference_count"], model["error_count"]) == (1, 1) and "latency_ms" not in model


def test_telemetry_windows_follow_each_other() -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    telemetry = Telemetry(lambda: now[0])
    telemetry.record("m", "1", latency_ms=5.0)
    now[0] += timedelta(seconds=60)
    taken = telemetry.take()
    assert taken is not None
    first, _ = taken
    assert (first["window_start"], first["window_end"]) == ("2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z")
    telemetry.record("m", "1", latency_ms=7.0)
    now[0] += timedelta(seconds=60)
    second = telemetry.window()
    assert second is not None and second["window_start"] == first["window_end"]
    assert second["models"][0]["latency_ms"] == {"p50": 7.0, "p95": 7.0, "p99": 7.0}


@pytest.mark.parametrize(("samples", "q", "value"), [
    ([1.0], 50, 1.0), ([1.0], 99, 1.0),
    ([3.0, 1.0, 2.0], 50, 2.0), ([3.0, 1.0, 2.0], 95, 3.0),
    (list(map(float, range(1, 101))), 50, 50.0), (list(map(float, range(1, 101))), 95, 95.0),
    (list(map(float, range(1, 101))), 99, 99.0), ([10.0, 20.0], 50, 10.0),
])
def test_percentile_is_nearest_rank(samples: list[float], q: float, value: float) -> None:
    assert percentile(samples, q) == value


# --- training rounds (seed 000), as before ---------------------------------------------------

def test_a_pending_round_is_trained_and_submitted_once(api: FakeApi, tmp_path: Path) -> None:
    trained: list[bytes | None] = []

    def train(global_model: bytes | None) -> tuple[bytes, int, dict[str, Any]]:
        trained.append(global_model)
        return b"weights", 10, {"local_loss": 0.5}

    agent = make_agent(api, tmp_path / "models", train=train)
    api.pending_round_id = "round-1"
    assert agent.step() == "round-1"
    assert agent.step() is None and trained == [None]
