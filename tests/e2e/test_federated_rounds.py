"""Federated learning end to end: REST → Kafka → processors → Cassandra → S3, with real devices' training."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
import torch

from sdk.client import ApiError, DeviceAgent, TributaryClient
from tests.e2e.conftest import RunningSystem

pytestmark = pytest.mark.e2e
DEVICES = 20


def tiny_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def train_locally(seed: int, global_model: bytes | None) -> tuple[dict[str, torch.Tensor], int, dict[str, Any]]:
    """A real (small) local training run on a synthetic task."""
    torch.manual_seed(seed)
    model = tiny_model()
    if global_model:
        model.load_state_dict(torch.load(io.BytesIO(global_model), weights_only=True))
    x = torch.randn(32 + seed, 4)
    y = (x[:, 0] > 0).long()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.tensor(0.0)
    for _ in range(5):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    return model.state_dict(), len(x), {"local_loss": float(loss.detach()), "training_time_seconds": 1}


def to_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1.0)  # polls count against the operator's rate limit too
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(scope="module")
def fleet(system: RunningSystem) -> dict[str, TributaryClient]:
    clients = {}
    prefix = system.settings.topic_prefix.strip(".")
    for i in range(DEVICES):
        client = TributaryClient(system.base_url)
        client.register_device(f"{prefix}-device-{i:02d}", capabilities={"cpu": "2-core"})
        clients[f"{prefix}-device-{i:02d}"] = client
    return clients


def heartbeat_all(fleet: dict[str, TributaryClient]) -> dict[str, dict[str, Any]]:
    return {device_id: client.heartbeat(device_id, {"battery_level": 90}) for device_id, client in fleet.items()}


def test_three_rounds(system: RunningSystem, fleet: dict[str, TributaryClient]) -> None:
    operator = TributaryClient(system.base_url, system.admin_key)
    heartbeat_all(fleet)
    wait_for(lambda: operator._json("GET", "/api/v1/status")["active_devices"] >= DEVICES, 30,
             "heartbeats to reach Cassandra")

    # --- round 1: everyone submits; the aggregate is the sample-weighted mean ---------------
    round1 = operator.start_round(target_devices=DEVICES, min_devices=DEVICES, timeout_seconds=120)
    assert round1["status"] == "active"
    with pytest.raises(ApiError) as busy:
        operator.start_round(target_devices=1, min_devices=1)
    assert busy.value.status_code == 409

    answers = heartbeat_all(fleet)
    assert all(a["pending_round_id"] == round1["id"] for a in answers.values())
    states, samples = [], []
    for seed, client in enumerate(fleet.values()):
        if seed == DEVICES // 2:
            # Kill the round processor mid-round: the rest of the updates queue up in Kafka,
            # and the restarted processor must neither lose nor double count any of them.
            processor = system.supervisor.running["round-processor"].proc
            processor.kill()
            processor.wait()
        state, n, metrics = train_locally(seed, None)
        update = client.submit_update(round1["id"], to_bytes(state), n, **metrics)
        assert update["round_id"] == round1["id"] and update["num_samples"] == n
        states.append(state)
        samples.append(n)
    system.supervisor.check()  # restarts the killed processor
    assert system.supervisor.running["round-processor"].restarts == 1
    with pytest.raises(ApiError) as twice:
        next(iter(fleet.values())).submit_update(round1["id"], to_bytes(states[0]), 5)
    assert twice.value.status_code == 409

    done = wait_for(lambda: (r := operator.round_status(round1["id"]))["status"] == "completed" and r, 60,
                    "round 1 to complete")
    assert done["completed_devices"] == DEVICES and done["aggregated_model_path"]
    current = operator.current_round()
    assert current["id"] == round1["id"]

    models = operator.list_models(limit=100)["models"]
    aggregated = next(m for m in models if m["round_id"] == round1["id"])
    download = operator.download_version(aggregated["id"], 1)
    assert download.headers["X-Model-Hash"].startswith("sha256:")
    assert int(download.headers["Content-Length"]) == len(download.content)
    got = torch.load(io.BytesIO(download.content), weights_only=True)
    total = sum(samples)
    for name in states[0]:
        expected = torch.stack([s[name].double() * n for s, n in zip(states, samples, strict=True)]).sum(0) / total
        assert torch.allclose(got[name].double(), expected, atol=1e-6), name

    # --- round 2: stragglers; aggregation at the grace window after min_devices ----------------
    round2 = operator.start_round(target_devices=DEVICES, min_devices=15, timeout_seconds=300)
    assert round2["global_model_path"] == aggregated["model_path"]  # the latest aggregate is distributed
    global_model = download.content
    # 16 devices run the SDK's agent loop (heartbeat → download global model → train → submit).
    received: list[bytes | None] = []
    for seed, (device_id, client) in enumerate(list(fleet.items())[:16]):
        def train(model: bytes | None, seed: int = seed) -> tuple[bytes, int, dict[str, Any]]:
            received.append(model)
            state, n, metrics = train_locally(100 + seed, model)
            return to_bytes(state), n, metrics

        assert DeviceAgent(client, device_id, train).step() == round2["id"]
    assert received == [global_model] * 16
    started = time.monotonic()
    done2 = wait_for(lambda: (r := operator.round_status(round2["id"]))["status"] == "completed" and r, 60,
                     "round 2 to complete at the grace window")
    assert done2["completed_devices"] == 16
    assert time.monotonic() - started < 60  # well before its 300 s timeout

    # --- round 3: too few updates; fails at timeout (the spec's minimum is 60 s) --------------
    round3 = operator.start_round(target_devices=DEVICES, min_devices=10, timeout_seconds=60)
    heartbeat_all(fleet)
    for seed, client in enumerate(list(fleet.values())[:3]):
        state, n, _ = train_locally(200 + seed, global_model)
        client.submit_update(round3["id"], to_bytes(state), n)
    done3 = wait_for(lambda: (r := operator.round_status(round3["id"]))["status"] == "failed" and r, 100,
                     "round 3 to fail at its timeout")
    assert done3["completed_devices"] == 3
    with pytest.raises(ApiError) as late:
        list(fleet.values())[5].submit_update(round3["id"], to_bytes(states[0]), 5)
    assert late.value.status_code == 409
