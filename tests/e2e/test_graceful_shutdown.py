"""SIGTERM on consumers: finish in flight, commit, leave the group, exit within the bound.

- Inference worker: SIGTERM with requests in flight -> exit 0 within TRIBUTARY_SHUTDOWN_TIMEOUT_S;
  the group's committed offsets cover exactly the requests that were answered (nothing processed
  is left uncommitted, nothing unanswered is committed); after a restart the rest are answered and
  none twice.
- Device processor (faust): SIGTERM while heartbeats stream -> exit within the bound with every
  processed heartbeat committed; after a restart the lag drains and each device row holds its
  latest heartbeat.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid

import httpx
import pytest
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from schemas.codec import Codec
from tests.e2e.conftest import RunningSystem, client_address
from tests.e2e.serving import RequestProducer
from topology.groups import inference_group
from topology.lag import log_end, topic_lag
from topology.topics import INFERENCE_REQUESTS, INFERENCE_RESPONSES, Priority

pytestmark = pytest.mark.e2e

REQUESTS = 150
REPLY_PARTITION = 4
TEXT = " ".join(["a request that takes the worker a little while to embed"] * 6)


def produce_requests(system: RunningSystem) -> dict[str, tuple[int, int]]:
    """correlation id -> (partition, offset) of each low-priority request, once acknowledged."""
    load = RequestProducer(system.settings, Priority.LOW, service="e2e-graceful")
    placed: dict[str, tuple[int, int]] = {}

    def delivered(correlation_id: str, error: KafkaError | None, message: Message) -> None:
        assert error is None, error
        placed[correlation_id] = (message.partition() or 0, message.offset() or 0)

    for i in range(REQUESTS):
        load.send(f"{i} {TEXT}", reply_partition=REPLY_PARTITION, on_delivery=delivered)
    load.flush()
    return placed


class Replies:
    """Counts replies per correlation id on the reply partition, from a given offset on."""

    def __init__(self, system: RunningSystem) -> None:
        settings = system.settings
        self.consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                                  "group.id": f"e2e-graceful-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
                                  "fetch.wait.max.ms": settings.fetch_max_wait_ms})
        topic = INFERENCE_RESPONSES.full_name(settings)
        _, end = log_end(self.consumer, TopicPartition(topic, REPLY_PARTITION))
        self.consumer.assign([TopicPartition(topic, REPLY_PARTITION, end)])
        self.codec = Codec()
        self.counts: dict[str, int] = {}

    def poll_for(self, seconds: float, until: int | None = None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and (until is None or len(self.counts) < until):
            message = self.consumer.poll(0.2)
            if message is not None and message.error() is None:
                correlation_id = self.codec.decode(message.value()).record["correlation_id"]
                self.counts[correlation_id] = self.counts.get(correlation_id, 0) + 1


def committed(system: RunningSystem, group_id: str, topic: str, partitions: int) -> dict[int, int]:
    reader = Consumer({"bootstrap.servers": system.settings.kafka_bootstrap_servers,
                       "group.id": system.settings.prefixed(group_id), "enable.auto.commit": False})
    try:
        offsets = reader.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: max(0, tp.offset) for tp in offsets}
    finally:
        reader.close()


def test_sigterm_worker_commits_exactly_what_it_answered(system: RunningSystem) -> None:
    settings = system.settings
    name = f"inference-worker-{Priority.LOW.value}"
    group_id = inference_group(Priority.LOW).group_id
    topic = INFERENCE_REQUESTS[Priority.LOW].full_name(settings)
    replies = Replies(system)
    placed = produce_requests(system)
    replies.poll_for(120, until=10)  # the worker is busy with the backlog now
    worker = system.supervisor.running[name].proc
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(settings.shutdown_timeout_s + 10)
    stop_s = time.monotonic() - started
    replies.poll_for(3)  # replies produced during the drain
    offsets = committed(system, group_id, topic, INFERENCE_REQUESTS[Priority.LOW].partitions)
    answered = {cid for cid in placed if cid in replies.counts}
    committed_requests = {cid for cid, (p, o) in placed.items() if o < offsets.get(p, 0)}
    print(f"\ngraceful worker stop: exit {code} after {stop_s:.1f}s; {len(answered)}/{REQUESTS} answered and "
          f"{len(committed_requests)} committed at the stop")
    assert code == 0 and stop_s <= settings.shutdown_timeout_s
    assert 0 < len(answered) < REQUESTS  # the stop really came mid-stream
    assert committed_requests == answered  # nothing processed left uncommitted, nothing unanswered committed

    system.supervisor.check()  # restart: the rest is answered, nothing twice
    replies.poll_for(240, until=REQUESTS)
    replies.poll_for(2)
    assert set(placed) <= replies.counts.keys()
    assert max(replies.counts[cid] for cid in placed) == 1


def test_sigterm_processor_commits_what_it_processed(system: RunningSystem) -> None:
    settings = system.settings
    devices = []
    for _ in range(5):
        device_id = f"{settings.topic_prefix}grace-{uuid.uuid4().hex[:6]}"
        response = httpx.post(f"{system.base_url}/api/v1/devices/register", json={"device_id": device_id},
                              headers=client_address(),
                              timeout=30)
        assert response.status_code == 201, response.text
        devices.append((device_id, {"Authorization": f"Bearer {response.json()['api_key']}"}))
    stop = threading.Event()
    sent: dict[str, str] = {}  # device -> last_heartbeat of its last accepted heartbeat

    def beat() -> None:
        i = 0
        while not stop.is_set() and i < 60:
            for device_id, headers in devices:
                response = httpx.put(f"{system.base_url}/api/v1/devices/{device_id}/heartbeat",
                                     json={"status": "active", "metrics": {"battery_level": i}},
                                     headers=headers, timeout=30)
                assert response.status_code == 200, response.text
                sent[device_id] = response.json()["last_heartbeat"]
            i += 1
            time.sleep(0.1)

    beater = threading.Thread(target=beat)
    beater.start()
    time.sleep(2)
    processor = system.supervisor.running["device-processor"].proc
    started = time.monotonic()
    processor.send_signal(signal.SIGTERM)
    code = processor.wait(settings.shutdown_timeout_s + 10)
    stop_s = time.monotonic() - started
    beater.join(120)
    print(f"\ngraceful processor stop: exit {code} after {stop_s:.1f}s")
    assert stop_s <= settings.shutdown_timeout_s and code == 0  # killed by the signal is not graceful
    system.supervisor.check()  # restart: it resumes from the committed offsets
    deadline = time.monotonic() + 90
    while sum(row.lag for row in topic_lag(settings, "device-processor")) > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sum(row.lag for row in topic_lag(settings, "device-processor")) == 0
    for device_id, headers in devices:
        # The device row is written by the processor: the last accepted heartbeat must be in it.
        row = httpx.get(f"{system.base_url}/api/v1/devices/{device_id}", headers=headers, timeout=30).json()
        assert row["last_heartbeat"] == sent[device_id], row
