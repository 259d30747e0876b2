"""Seed 001's topics carry seed 001's messages (issue 15), checked on what the running system emits.

Real traffic first, through the ingress and the processors: devices registered and heartbeating, a
training round started and trained, a retraining request answered, a learning graph submitted,
models registered, uploaded, loaded, served (sync on two priorities, async on a third, one refused
input) and unloaded. Then every message of every topic seed 001 §4.1 names (this session's prefix,
from the beginning) is decoded as written and its JSON view validated against the seed's JSON
Schema for that topic (§4.2, ``schemas/json/seed/``); §4.1 names the audit topic without a schema,
so it, the fleet-event topic and every other topic of ours are validated against our own. Zero
failures, and a non-trivial count on each topic that has a seed schema and on the fleet topic.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema
import pytest
from confluent_kafka import Message, Producer

from core.cassandra.session import connect
from core.fleet.cassandra_store import CassandraFleetStore
from core.fleet.learning_graphs import encrypt_graph
from core.fleet.models import RoundStatus
from schemas.base import JSON_DIR, SchemaValidationError
from schemas.codec import Codec, new_envelope
from schemas.json_views import FORMAT_CHECKER, validate_json_view
from sdk.agent import DeviceAgent
from sdk.client import TributaryClient
from settings import Settings
from tests.e2e.conftest import RunningSystem, client_address
from tests.e2e.serving import ENCODED_MINILM, HTTP_TIMEOUT, messages_in
from tests.e2e.test_federated_rounds import to_bytes, train_locally
from tests.onnx_models import linear_onnx
from topology.messages import MESSAGES
from topology.topics import (
    AUDIT_EVENTS,
    DATA_TOPICS,
    FLEET_EVENTS,
    INFERENCE_REQUESTS,
    INFERENCE_RESPONSES,
    LEARNING_GRAPHS,
    LIFECYCLE_EVENTS,
    TopicSpec,
)

pytestmark = pytest.mark.e2e

# Seed 001 §4.2's schema for each topic of §4.1 that has one (requests: one topic per priority).
SEED_SCHEMA: dict[TopicSpec, str] = {
    **{topic: "InferenceRequestMessage" for topic in INFERENCE_REQUESTS.values()},
    INFERENCE_RESPONSES: "InferenceResponseMessage",
    LIFECYCLE_EVENTS: "LifecycleEventMessage",
}
SEED_TOPICS = (*SEED_SCHEMA, AUDIT_EVENTS)  # every topic §4.1 names
# What the traffic below makes certain to appear (the rest depends on timing, e.g. device_stale).
LIFECYCLE_EXPECTED = {"model_load_requested", "model_loaded", "model_unloaded"}
FLEET_EXPECTED = {"device_registered", "device_online", "model_registered", "model_version_created",
                  "model_deleted", "retraining_not_started"}


def seed_validator(name: str) -> jsonschema.Draft7Validator:
    schema = json.loads((JSON_DIR / "seed" / f"{name}.json").read_text())
    return jsonschema.Draft7Validator(schema, format_checker=FORMAT_CHECKER)


@dataclass
class TopicReport:
    topic: str
    count: int = 0
    types: Counter[str] = field(default_factory=Counter)  # message type, event type, or response:status
    failures: list[str] = field(default_factory=list)


def read_all(settings: Settings, spec: TopicSpec) -> list[Message]:
    """Every message of the session's ``spec`` topic, from the beginning to the current end."""
    return list(messages_in(settings, spec.full_name(settings), range(spec.partitions)))


def validate_topic(settings: Settings, spec: TopicSpec, codec: Codec) -> TopicReport:
    """Each message as written (its writer's schema version): the type the message table routes
    here, its JSON view valid against our JSON Schema and, on a seed topic, against the seed's."""
    report = TopicReport(spec.full_name(settings))
    allowed = {t for t, route in MESSAGES.items() if spec in route.topics}
    seed = seed_validator(SEED_SCHEMA[spec]) if spec in SEED_SCHEMA else None
    for message in read_all(settings, spec):
        report.count += 1
        where = f"{report.topic}[{message.partition()}]@{message.offset()}"
        value = message.value() or b""
        try:
            writer = codec.schemas.entry_by_fingerprint(value[2:10])
            record = codec.decode(value, reader_version=writer.version).record
        except Exception as exc:  # undecodable is a failure like any other
            report.failures.append(f"{where}: {exc}")
            continue
        kind = record.get("event_type") or writer.message_type
        report.types[f"{kind}:{record['status']}" if kind == "inference_response" else kind] += 1
        if writer.message_type not in allowed:
            report.failures.append(f"{where}: a {writer.message_type} on a topic for {sorted(allowed)}")
        view = codec.to_json(writer.message_type, record)
        try:
            validate_json_view(writer.message_type, writer.version, view)
        except SchemaValidationError as exc:
            report.failures.append(f"{where}: ours: {exc}")
        if seed is not None:
            report.failures += [f"{where}: seed {SEED_SCHEMA[spec]} at '{'/'.join(map(str, e.path))}': {e.message}"
                                for e in seed.iter_errors(view)]
    return report


def until(call: Callable[[], httpx.Response], done: Callable[[httpx.Response], bool],
          timeout_s: float) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        response = call()
        if done(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.5)


def register(system: RunningSystem, name: str) -> tuple[str, TributaryClient]:
    device_id = f"{system.settings.topic_prefix.strip('.')}-seed-{name}-{uuid.uuid4().hex[:6]}"
    response = httpx.post(f"{system.base_url}/api/v1/devices/register", json={"device_id": device_id},
                          headers=client_address(), timeout=30)
    assert response.status_code == 201, response.text
    return device_id, TributaryClient(system.base_url, response.json()["api_key"])


def wait_heartbeat_applied(client: TributaryClient, device_id: str) -> None:
    deadline = time.monotonic() + 30  # the device processor applies it within a second or two
    while not client.get_device(device_id).get("last_heartbeat"):
        assert time.monotonic() < deadline, f"{device_id}: heartbeat never applied"
        time.sleep(0.5)


def train(global_model: bytes | None) -> tuple[bytes, int, dict[str, Any]]:
    state, samples, metrics = train_locally(7, global_model)
    return to_bytes(state), samples, metrics


def drive_fleet(system: RunningSystem, admin: httpx.Client) -> str | None:
    """Devices, a round they train in, a retraining request, a learning graph. Returns the round
    this test started (None: another test's round held the slot)."""
    devices = [register(system, name) for name in ("a", "b")]
    for device_id, client in devices:
        client.heartbeat(device_id, {"battery_level": 80})
        wait_heartbeat_applied(client, device_id)

    started = admin.post("/api/v1/training/rounds/start",
                         json={"target_devices": 2, "min_devices": 1, "timeout_seconds": 60})
    assert started.status_code in (201, 409), started.text  # 409: another test's round is active
    round_id = started.json()["id"] if started.status_code == 201 else None

    # A retraining request while a round is active: answered retraining_not_started.
    trigger = {**new_envelope(service="e2e-seed-topics", instance="e2e"), "graph_id": str(uuid.uuid4()),
               "device_id_hash": "cd" * 16, "app_version": "1.4.0", "model_version": "granite-3b-v1",
               "pending_count": 1000, "retraining_requested": True}
    payload, headers = Codec().encode("learning_graph_submitted", trigger)
    producer = Producer({"bootstrap.servers": system.settings.kafka_bootstrap_servers})
    producer.produce(LEARNING_GRAPHS.full_name(system.settings), payload, key=trigger["device_id_hash"],
                     headers=list(headers))
    assert producer.flush(30) == 0

    for device_id, client in devices:  # a selected device trains and submits (update_accepted)
        DeviceAgent(client, device_id, train, models_dir=system.log_dir / "device-models" / device_id).step()

    # Seed 002's learning-graph submission through the ingress (below the retraining threshold).
    settings = system.settings
    graph = {"emotions": {"joy": "high"}, "intents": ["time_query"],
             "privacy": {"noise": {"mechanism": "laplace", "epsilon": 1.0}}}
    data, signature = encrypt_graph(graph, bytes.fromhex(settings.learning_graph_aes_key.get_secret_value()),
                                    settings.learning_graph_hmac_key.get_secret_value().encode())
    device_id, client = devices[0]
    submitted = client.request("POST", "/api/v1/learning-graphs/submit", json={
        "deviceIdHash": "ef" * 16, "appVersion": "1.4.0", "modelVersion": "granite-3b-v1",
        "encryptedData": data, "signature": signature, "timestamp": "2025-01-01T00:00:00Z"})
    assert submitted.status_code == 200, submitted.text
    return round_id


def drive_models(system: RunningSystem, admin: httpx.Client, caller: dict[str, str]) -> Counter[int]:
    """The catalog and serving paths: every model event, sync and async inference. Returns the
    HTTP statuses of the inference calls."""
    registered = f"{system.settings.topic_prefix.strip('.')}/seed-topics-{uuid.uuid4().hex[:6]}"
    response = admin.post("/api/v1/models", json={"model_id": registered, "task_type": "txt2embed"})
    assert response.status_code == 201, response.text
    assert admin.delete(f"/api/v1/models/{registered}").status_code == 204

    model_id = admin.post("/api/v1/models", json={"description": "e2e seed topics"}).json()["id"]
    uploaded = admin.post(f"/api/v1/models/{model_id}/versions/upload",
                          files={"file": ("linear.onnx", linear_onnx())}, data={"format": "onnx"})
    assert uploaded.status_code == 201, uploaded.text
    loaded = until(lambda: admin.post(f"/api/v1/models/{model_id}/load"), lambda r: r.status_code != 503, 120)
    assert loaded.status_code == 200, loaded.text

    statuses: Counter[int] = Counter()
    base = system.base_url
    with httpx.Client(base_url=base, headers=caller, timeout=HTTP_TIMEOUT) as http:
        for priority in ("high", "medium"):
            answer = http.post(f"/api/v1/infer/{ENCODED_MINILM}", json={
                "input_data": {"text": f"seed topics at {priority} priority"}, "priority": priority})
            statuses[answer.status_code] += 1
        statuses[http.post(f"/api/v1/infer/{model_id}", json={
            "input_data": {"inputs": [[1.0, 2.0, 3.0]]}, "priority": "high"}).status_code] += 1
        statuses[http.post(f"/api/v1/infer/{model_id}", json={  # refused by the ingress: no message
            "input_data": {"text": "no inputs"}, "priority": "high"}).status_code] += 1
        statuses[http.post(f"/api/v1/infer/{model_id}", json={  # wrong width: the worker's failure response
            "input_data": {"inputs": [[1.0, 2.0]]}, "priority": "high"}).status_code] += 1
        job = http.post(f"/api/v1/infer/{ENCODED_MINILM}/async", json={
            "input_data": {"text": "seed topics, async"}, "priority": "low"})
        assert job.status_code == 202, job.text
        done = until(lambda: http.get(f"/api/v1/jobs/{job.json()['job_id']}"),
                     lambda r: r.json().get("status") in {"completed", "failed"}, 90)
        statuses[200 if done.json().get("status") == "completed" else 500] += 1
    unloaded = admin.post(f"/api/v1/models/{model_id}/unload")
    assert unloaded.status_code == 200, unloaded.text
    return statuses


def free_round_slot(settings: Settings, round_id: str) -> None:
    """A round still active at the end (another test's device was selected and never trained) is failed,
    so the session's later tests can start theirs."""
    session = connect(settings, settings.cassandra_keyspace)
    try:
        CassandraFleetStore(session).transition_round(round_id, RoundStatus.ACTIVE, RoundStatus.FAILED)
    finally:
        session.cluster.shutdown()


def test_every_message_on_seed_topics_fits_the_seed_schema(system: RunningSystem, caller: dict[str, str]) -> None:
    settings, codec = system.settings, Codec()
    admin = httpx.Client(base_url=system.base_url, headers={"Authorization": f"Bearer {system.admin_key}"},
                         timeout=HTTP_TIMEOUT)
    round_id = None
    try:
        round_id = drive_fleet(system, admin)
        statuses = drive_models(system, admin, caller)
        assert statuses[200] == 4 and statuses[400] == 2, statuses
        if round_id is not None:  # one update is in: the round aggregates after the straggler grace
            deadline = time.monotonic() + 60
            while admin.get(f"/api/v1/training/rounds/{round_id}/status").json()["status"] == "active":
                if time.monotonic() > deadline:
                    break
                time.sleep(1)

        # Events of processors and workers arrive a little after the calls: wait until the expected
        # kinds are all there, then judge everything on the topics.
        expected_fleet = FLEET_EXPECTED | ({"round_started", "device_selected"} if round_id else set())
        deadline = time.monotonic() + 60
        while True:
            reports = {spec: validate_topic(settings, spec, codec) for spec in DATA_TOPICS}
            missing = (LIFECYCLE_EXPECTED - set(reports[LIFECYCLE_EVENTS].types),
                       expected_fleet - set(reports[FLEET_EVENTS].types))
            if not any(missing) or time.monotonic() > deadline:
                break
            time.sleep(2)
    finally:
        admin.close()
        if round_id is not None:
            free_round_slot(settings, round_id)

    print()
    for spec, report in reports.items():
        mark = "seed " + SEED_SCHEMA[spec] if spec in SEED_SCHEMA else "ours"
        print(f"{report.topic}: {report.count} messages ({mark}), {len(report.failures)} failures, "
              f"{dict(sorted(report.types.items()))}")
    failures = [f for report in reports.values() for f in report.failures]
    assert failures == [], "\n".join(failures[:50])
    assert missing == (set(), set()), missing

    requests = sum(reports[t].count for t in INFERENCE_REQUESTS.values())
    assert requests >= 5 and all(reports[t].count >= 1 for t in INFERENCE_REQUESTS.values())
    assert reports[INFERENCE_RESPONSES].count >= 5
    responses = reports[INFERENCE_RESPONSES].types
    assert responses["inference_response:success"] >= 4 and responses["inference_response:failure"] >= 1
    assert reports[LIFECYCLE_EVENTS].count >= 5  # load requested; loaded and unloaded on each worker
    assert reports[AUDIT_EVENTS].count >= 10
    assert reports[FLEET_EVENTS].count >= 8
    assert all(spec in reports for spec in SEED_TOPICS)
