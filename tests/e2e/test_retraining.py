"""Seed 002's retraining trigger on the running system: a `learning_graph_submitted` event that asks
for retraining, delivered twice (the same bytes, as a redelivery would), is answered once by the
learning-graph processor: one training round through the REST path's code, or one reason why not,
and the same outcome event for both deliveries."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from core.fleet.retraining import retraining_round_id
from schemas.codec import Codec, new_envelope
from tests.e2e.conftest import RunningSystem, client_address
from tests.e2e.serving import records_until
from topology.topics import FLEET_EVENTS, LEARNING_GRAPHS

pytestmark = pytest.mark.e2e


def online_device(system: RunningSystem) -> str:
    device_id = f"{system.settings.topic_prefix}graphs-{uuid.uuid4().hex[:8]}"
    response = httpx.post(f"{system.base_url}/api/v1/devices/register", json={"device_id": device_id},
                          headers=client_address(), timeout=30)
    assert response.status_code == 201, response.text
    auth = {"Authorization": f"Bearer {response.json()['api_key']}"}
    assert httpx.put(f"{system.base_url}/api/v1/devices/{device_id}/heartbeat", headers=auth,
                     json={"status": "active"}, timeout=30).status_code == 200
    deadline = time.monotonic() + 30  # the device processor applies it within a second or two
    while time.monotonic() < deadline:
        row = httpx.get(f"{system.base_url}/api/v1/devices/{device_id}", headers=auth, timeout=30).json()
        if row.get("last_heartbeat"):
            return device_id
        time.sleep(0.5)
    raise AssertionError(f"{device_id}: heartbeat never applied")


def outcomes(system: RunningSystem, trigger_id: str, wanted: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    """The retraining_* fleet events about ``trigger_id`` (waits for ``wanted`` of them)."""
    def about_trigger(record: dict[str, Any]) -> bool:
        return bool(record["event_type"].startswith("retraining_")
                    and record["details"].get("trigger_id") == trigger_id)

    return records_until(system.settings, FLEET_EVENTS, about_trigger, lambda found: len(found) >= wanted, timeout_s)


def test_a_retraining_request_delivered_twice_is_answered_once(system: RunningSystem) -> None:
    for _ in range(2):  # the default TRIBUTARY_RETRAINING_MIN_DEVICES
        online_device(system)
    trigger_id = str(uuid.uuid4())
    codec = Codec()
    record = {**new_envelope(service="e2e-graphs", instance="e2e"), "graph_id": trigger_id,
              "device_id_hash": "ab" * 16, "app_version": "1.4.0", "model_version": "granite-3b-v1",
              "pending_count": 1000, "retraining_requested": True}
    payload, headers = codec.encode("learning_graph_submitted", record)
    producer = Producer({"bootstrap.servers": system.settings.kafka_bootstrap_servers})
    topic = LEARNING_GRAPHS.full_name(system.settings)
    producer.produce(topic, payload, key=record["device_id_hash"], headers=list(headers))
    assert producer.flush(30) == 0
    (first,) = outcomes(system, trigger_id, 1)
    print(f"\nretraining request answered: {first['event_type']} {first['details']}")

    producer.produce(topic, payload, key=record["device_id_hash"], headers=list(headers))  # redelivered
    assert producer.flush(30) == 0
    both = outcomes(system, trigger_id, 2)
    assert len(both) == 2 and both[0]["details"] == both[1]["details"] == first["details"]

    admin = {"Authorization": f"Bearer {system.admin_key}"}
    round_id = retraining_round_id(trigger_id)
    status = httpx.get(f"{system.base_url}/api/v1/training/rounds/{round_id}/status", headers=admin, timeout=30)
    if first["event_type"] == "retraining_started":
        try:
            assert first["details"]["round_id"] == round_id and status.status_code == 200, status.text
            assert status.json()["target_devices"] == system.settings.retraining_target_devices
            current = httpx.get(f"{system.base_url}/api/v1/training/rounds/current", headers=admin, timeout=30)
            assert current.json()["id"] == round_id  # the second delivery started no other round
        finally:  # free the single active-round slot for the session's other tests
            cancelled = httpx.post(f"{system.base_url}/api/v1/training/rounds/{round_id}/cancel", headers=admin,
                                   timeout=30)
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    else:  # another test's round holds the active slot: the reason says so, and no round was made
        assert first["event_type"] == "retraining_not_started", first
        assert first["details"]["reason"] == "ROUND_ALREADY_ACTIVE", first["details"]
        assert status.status_code == 404
