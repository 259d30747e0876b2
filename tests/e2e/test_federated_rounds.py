"""Federated learning end to end: REST → Kafka → processors → Cassandra → S3, with real devices' training."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from cli.supervisor import ServiceSpec
from core.cassandra.session import connect
from core.fleet.cassandra_store import CassandraFleetStore
from core.fleet.models import Round
from sdk.agent import DeviceAgent
from sdk.client import ApiError, TributaryClient
from tests.e2e.conftest import RunningSystem, free_port
from tests.e2e.s3_proxy import HangingS3Proxy

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
    # Each of this fleet's own heartbeats applied (not just "enough active devices": the session's
    # other tests leave devices too), so the start's selection, newest heartbeat first, seats them.
    wait_for(lambda: all(operator.get_device(d)["last_heartbeat"] for d in fleet), 30,
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

        agent = DeviceAgent(client, device_id, train, models_dir=system.log_dir / "device-models" / device_id)
        assert agent.step() == round2["id"]
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


# --- rounds that never get stuck (issue 15) ----------------------------------------------------


def new_devices(system: RunningSystem, n: int) -> dict[str, TributaryClient]:
    """Devices registered for one test only: they have never sent a heartbeat."""
    tag = uuid.uuid4().hex[:6]
    clients = {}
    for i in range(n):
        device_id = f"{system.settings.topic_prefix.strip('.')}-{tag}-{i}"
        client = TributaryClient(system.base_url)
        client.register_device(device_id)
        clients[device_id] = client
    return clients


@contextmanager
def retired_after(devices: dict[str, TributaryClient]) -> Iterator[None]:
    """When the block ends the devices report ``inactive`` (and the device processor has applied it), so
    the next test's round does not seat them from its start's selection in place of its own devices."""
    try:
        yield
    finally:
        for device_id, client in devices.items():
            client.heartbeat(device_id, status="inactive")
        for device_id, client in devices.items():
            wait_for(lambda d=device_id, c=client: c.get_device(d)["status"] == "inactive", 60,
                     f"{device_id}'s inactive heartbeat to be applied")


def join_and_submit(round_id: str, devices: dict[str, TributaryClient], seed: int = 300) -> None:
    """Each device heartbeats (its answer says it is selected), trains and submits."""
    for i, (device_id, client) in enumerate(devices.items()):
        assert client.heartbeat(device_id)["pending_round_id"] == round_id, device_id
        state, n, metrics = train_locally(seed + i, None)
        client.submit_update(round_id, to_bytes(state), n, **metrics)


def stored_round(system: RunningSystem, round_id: str) -> Round:
    """What the processors recorded about the aggregation (attempts, last error): not in the API."""
    session = connect(system.settings, system.settings.cassandra_keyspace)
    try:
        found = CassandraFleetStore(session).get_round(round_id)
    finally:
        session.cluster.shutdown()
    assert found is not None
    return found


@contextmanager
def round_processor_with(system: RunningSystem, **env: str) -> Iterator[None]:
    """Run the round processor with ``env`` on top of its own until the block ends, then as before."""
    supervisor, name = system.supervisor, "round-processor"
    run = supervisor.running[name]
    original = run.spec
    if run.proc.poll() is None:
        supervisor.stop_service(name)
    run.spec = ServiceSpec(original.name, original.argv, {**original.env, **env})
    supervisor.start_service(name)
    try:
        yield
    finally:
        if run.proc.poll() is None:
            supervisor.stop_service(name)
        run.spec = original
        supervisor.start_service(name)


def round_models(operator: TributaryClient, round_id: str) -> list[dict[str, Any]]:
    return [m for m in operator.list_models(limit=100)["models"] if m["round_id"] == round_id]


def test_devices_that_beat_only_after_the_start_fill_the_round(system: RunningSystem) -> None:
    """The device processor is down: the start finds no eligible device it applied, yet the devices'
    own heartbeats seat them, and the round completes."""
    operator = TributaryClient(system.base_url, system.admin_key)
    devices = new_devices(system, 3)
    system.supervisor.stop_service("device-processor")
    with retired_after(devices):
        try:
            for device_id, client in devices.items():  # beats a moment before the start, never applied
                assert client.heartbeat(device_id)["pending_round_id"] is None
            round_ = operator.start_round(target_devices=3, min_devices=3, timeout_seconds=120)
            join_and_submit(round_["id"], devices)
            done = wait_for(lambda: (r := operator.round_status(round_["id"]))["status"] == "completed" and r, 60,
                            "the round filled after its start to complete")
            assert done["completed_devices"] == 3 and done["aggregated_model_path"]
        finally:
            system.supervisor.start_service("device-processor")


def test_a_round_processor_killed_mid_aggregation_is_resumed(system: RunningSystem) -> None:
    """The round processor's S3 goes through a proxy that hangs the upload of the aggregate: the processor
    is caught mid-aggregation (round aggregating, its lease held), SIGKILLed, and restarted on the real S3.
    Once the lease runs out the restarted one redoes the aggregation from the stored updates, and the
    round has exactly one model."""
    operator = TributaryClient(system.base_url, system.admin_key)
    devices = new_devices(system, 2)

    def aggregate_upload(method: str, path: str) -> bool:
        return method == "PUT" and "/models/" in path

    proxy = HangingS3Proxy(system.settings.s3_endpoint_url, aggregate_upload)
    with retired_after(devices), proxy, round_processor_with(system, TRIBUTARY_S3_ENDPOINT=proxy.url):
        round_ = operator.start_round(target_devices=2, min_devices=2, timeout_seconds=300)
        join_and_submit(round_["id"], devices, seed=400)
        assert proxy.held.wait(60), "the round processor never uploaded an aggregate"
        assert operator.round_status(round_["id"])["status"] == "aggregating"
        processor = system.supervisor.running["round-processor"].proc
        processor.kill()  # SIGKILL: no shutdown hook runs
        processor.wait()
    done = wait_for(lambda: (r := operator.round_status(round_["id"]))["status"] == "completed" and r, 90,
                    "the restarted processor to finish the aggregation")
    assert done["completed_devices"] == 2
    assert stored_round(system, round_["id"]).aggregation_attempts == 2
    (model,) = round_models(operator, round_["id"])
    assert model["model_path"] == done["aggregated_model_path"]


def test_s3_down_during_aggregation_is_retried_until_it_is_back(system: RunningSystem) -> None:
    """The shared S3 cannot be stopped, so the round processor runs with TRIBUTARY_S3_ENDPOINT on a closed
    port (connection refused, as a down S3), then again with the real one. The ingress stores the updates
    in the real S3; the processor closes the round from the stored updates, its aggregation attempts fail
    and are recorded, and once S3 answers again the round completes."""
    operator = TributaryClient(system.base_url, system.admin_key)
    devices = new_devices(system, 2)
    with retired_after(devices), round_processor_with(system, TRIBUTARY_S3_ENDPOINT=f"http://127.0.0.1:{free_port()}"):
        round_ = operator.start_round(target_devices=2, min_devices=2, timeout_seconds=300)
        join_and_submit(round_["id"], devices, seed=500)
        stuck = wait_for(lambda: (r := stored_round(system, round_["id"])).aggregation_attempts >= 2 and r, 90,
                         "aggregation attempts against the unavailable S3")
        assert stuck.status.value == "aggregating" and stuck.aggregation_error, stuck
        assert operator.round_status(round_["id"])["status"] == "aggregating"
    done = wait_for(lambda: (r := operator.round_status(round_["id"]))["status"] == "completed" and r, 90,
                    "the round to complete once S3 is back")
    assert done["completed_devices"] == 2
    assert len(round_models(operator, round_["id"])) == 1
