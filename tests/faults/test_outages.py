"""Servers stop and come back under load.

Broker or Cassandra down during heartbeats: 503 + Retry-After while it is down (never a 500,
never a hang), every service recovers by itself, and no heartbeat accepted with 2xx is lost.
S3 down during a model upload: 503, and neither a catalog version nor an event for the file
that was not stored."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc
import httpx
import pytest

from core.serving.builtin_specs import MINILM_ID
from infra.local_stack import LocalStack
from modelmora.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tests.e2e.conftest import RunningSystem
from topology.lag import topic_lag

pytestmark = pytest.mark.faults

REQUEST_TIMEOUT_S = 15.0


@dataclass
class Outcome:
    device_id: str
    status: int  # 0: no answer within the timeout
    elapsed_s: float
    sent_at: float
    retry_after: str | None = None
    accepted_at: str | None = None


@dataclass
class HeartbeatLoad:
    system: RunningSystem
    devices: list[tuple[str, dict[str, str]]]
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.system.base_url, timeout=REQUEST_TIMEOUT_S) as http:
            i = 0
            while not self.stop.is_set():
                device_id, headers = self.devices[i % len(self.devices)]
                started = time.monotonic()
                try:
                    response = http.put(f"/api/v1/devices/{device_id}/heartbeat", json={"status": "active"},
                                        headers=headers)
                    outcome = Outcome(device_id, response.status_code, time.monotonic() - started, started,
                                      response.headers.get("Retry-After"))
                    if response.status_code == 200:
                        outcome.accepted_at = response.json()["last_heartbeat"]
                except httpx.TimeoutException:
                    outcome = Outcome(device_id, 0, time.monotonic() - started, started)
                self.outcomes.append(outcome)
                i += 1
                time.sleep(0.05)


def register_devices(system: RunningSystem, count: int) -> list[tuple[str, dict[str, str]]]:
    devices = []
    for _ in range(count):
        device_id = f"{system.settings.topic_prefix}outage-{uuid.uuid4().hex[:6]}"
        registered = httpx.post(f"{system.base_url}/api/v1/devices/register", json={"device_id": device_id},
                                timeout=30)
        assert registered.status_code == 201, registered.text
        devices.append((device_id, {"Authorization": f"Bearer {registered.json()['api_key']}"}))
    return devices


def grpc_infer_during_outage(system: RunningSystem, headers: dict[str, str]) -> tuple[grpc.StatusCode, float, str]:
    """One gRPC Infer while a server is down: (status code, seconds to the answer, retry-after trailer)."""
    request = inference_pb2.InferenceRequest(model_id=MINILM_ID, input_data=inference_pb2.InputData(text="outage"),
                                             priority=common_pb2.PRIORITY_HIGH, timeout_seconds=10)
    started = time.monotonic()
    with grpc.insecure_channel(system.grpc_target) as channel:
        try:
            inference_pb2_grpc.InferenceServiceStub(channel).Infer(
                request, metadata=(("authorization", headers["Authorization"]),), timeout=REQUEST_TIMEOUT_S)
            return grpc.StatusCode.OK, time.monotonic() - started, ""
        except grpc.RpcError as exc:
            trailers = dict(exc.trailing_metadata() or ())
            return exc.code(), time.monotonic() - started, str(trailers.get("retry-after", ""))


def outage_under_heartbeat_load(system: RunningSystem, stack: LocalStack, name: str, down_s: float) -> None:
    """Stop server ``name`` for ``down_s`` under heartbeat load and check every promise; a gRPC
    call made during the outage is UNAVAILABLE with a retry hint, as REST's 503."""
    server = next(server for server in stack if server.name == name)
    devices = register_devices(system, 10)
    load = HeartbeatLoad(system, devices)
    thread = threading.Thread(target=load.run)
    thread.start()
    try:
        time.sleep(3)
        down_at = time.monotonic()
        server.stop()
        time.sleep(1)
        grpc_code, grpc_s, grpc_retry = grpc_infer_during_outage(system, devices[0][1])
        time.sleep(max(0.0, down_s - (time.monotonic() - down_at)))
        server.start(progress=lambda _: None)
        up_at = time.monotonic()
        deadline = up_at + 120
        while time.monotonic() < deadline:  # until heartbeats are accepted again, by the same processes
            recent = [o for o in load.outcomes if o.sent_at > up_at]
            if len(recent) >= 20 and all(o.status == 200 for o in recent[-20:]):
                break
            time.sleep(0.5)
        recovered_s = time.monotonic() - up_at
    finally:
        load.stop.set()
        thread.join(60)

    outcomes = load.outcomes
    during = [o for o in outcomes if down_at + 1 < o.sent_at < up_at]
    statuses = sorted({o.status for o in outcomes})
    print(f"\n{name} outage ({down_s:.0f}s down + restart): {len(outcomes)} heartbeats, statuses {statuses}; "
          f"{sum(o.status == 503 for o in outcomes)} x 503; recovered {recovered_s:.1f}s after restart; "
          f"slowest answer {max(o.elapsed_s for o in outcomes):.1f}s; gRPC Infer during it: {grpc_code.name} "
          f"in {grpc_s:.1f}s, retry-after {grpc_retry or '-'}")
    assert grpc_code is grpc.StatusCode.UNAVAILABLE and grpc_retry, (grpc_code, grpc_retry)
    assert set(statuses) <= {200, 503}, statuses  # never a 500, never no answer (0)
    assert all(o.retry_after for o in outcomes if o.status == 503)
    assert any(o.status == 503 for o in during)  # the outage was seen, and answered as such
    recent = [o for o in outcomes if o.sent_at > up_at]
    assert len(recent) >= 20 and all(o.status == 200 for o in recent[-20:]), "no recovery without a restart"

    # No accepted heartbeat is lost: each device row reaches its last 2xx heartbeat.
    last: dict[str, str] = {}
    for o in outcomes:
        if o.accepted_at is not None and o.accepted_at > last.get(o.device_id, ""):
            last[o.device_id] = o.accepted_at
    deadline = time.monotonic() + 120
    while sum(row.lag for row in topic_lag(system.settings, "device-processor")) > 0 and time.monotonic() < deadline:
        time.sleep(1)
    for device_id, headers in devices:
        row = httpx.get(f"{system.base_url}/api/v1/devices/{device_id}", headers=headers, timeout=30).json()
        stored = datetime.fromisoformat(row["last_heartbeat"].replace("Z", "+00:00"))
        assert stored >= datetime.fromisoformat(last[device_id].replace("Z", "+00:00")), (device_id, row)


def test_broker_outage_under_load(system: RunningSystem, stack: LocalStack) -> None:
    outage_under_heartbeat_load(system, stack, "kafka", 8)


def test_cassandra_outage_under_load(system: RunningSystem, stack: LocalStack) -> None:
    outage_under_heartbeat_load(system, stack, "cassandra", 5)


def test_s3_down_during_upload_is_503_and_publishes_nothing(system: RunningSystem, stack: LocalStack) -> None:
    s3 = next(server for server in stack if server.name == "s3")
    operator = {"Authorization": f"Bearer {system.admin_key}"}
    model = httpx.post(f"{system.base_url}/api/v1/models", json={"framework": "pytorch", "description": "s3 fault"},
                       headers=operator, timeout=30)
    assert model.status_code == 201, model.text
    model_id = model.json()["id"]
    onnx_file = tiny_onnx()
    s3.stop()
    try:
        started = time.monotonic()
        refused = httpx.post(f"{system.base_url}/api/v1/models/{model_id}/versions/upload",
                             files={"file": ("model.onnx", onnx_file)}, data={"format": "onnx"}, headers=operator,
                             timeout=60)
        elapsed = time.monotonic() - started
    finally:
        s3.start(progress=lambda _: None)
    print(f"\nS3 down: upload answered {refused.status_code} in {elapsed:.1f}s")
    assert refused.status_code == 503 and refused.headers.get("Retry-After"), refused.text
    detail = httpx.get(f"{system.base_url}/api/v1/models/{model_id}", headers=operator, timeout=30).json()
    assert not detail.get("versions"), detail  # no version recorded for a file that was not stored
    assert not fleet_events_for(system, model_id)  # and no event published for it
    accepted = httpx.post(f"{system.base_url}/api/v1/models/{model_id}/versions/upload",
                          files={"file": ("model.onnx", onnx_file)}, data={"format": "onnx"}, headers=operator,
                          timeout=60)
    # The refused upload used up its version number (allocated before the file is stored): a gap,
    # never a version without a file.
    assert accepted.status_code == 201, accepted.text
    detail = httpx.get(f"{system.base_url}/api/v1/models/{model_id}", headers=operator, timeout=30).json()
    assert [v["version"] for v in detail["versions"]] == [accepted.json()["version"]]
    assert [e["event_type"] for e in fleet_events_for(system, model_id, wait_s=20)] == ["model_version_created"]


def tiny_onnx() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "relu",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 3])])
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def fleet_events_for(system: RunningSystem, model_id: str, wait_s: float = 5.0) -> list[dict[str, Any]]:
    """Fleet events about ``model_id`` (other than its registration) on this session's fleet topic."""
    from tests.e2e.serving import records_until
    from topology.topics import FLEET_EVENTS

    def about_model(record: dict[str, Any]) -> bool:
        return record.get("subject_id") == model_id and record.get("event_type") != "model_registered"

    return records_until(system.settings, FLEET_EVENTS, about_model, bool, wait_s)
