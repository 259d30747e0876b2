"""`tributary dlq list` and `tributary dlq redrive` on the real broker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from confluent_kafka import Consumer, Producer

from settings import Settings
from topology.admin import apply
from topology.topics import DEVICE_HEARTBEATS, dead_letter_topic

pytestmark = pytest.mark.integration


def cli(settings: Settings, *args: str) -> str:
    env = {**os.environ, "TRIBUTARY_TOPIC_PREFIX": settings.topic_prefix, "COLUMNS": "240"}  # rows on one line
    done = subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_list_and_redrive_a_dead_letter(settings: Settings) -> None:
    # A prefix of its own: the e2e system's device processor would consume the redriven poison.
    settings = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}cli."})
    apply(settings)
    dlq = dead_letter_topic("device-processor").full_name(settings)
    origin = DEVICE_HEARTBEATS.full_name(settings)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    producer.produce(dlq, key=b"dev-1", value=b"poison", headers=[
        ("dlq-origin-topic", origin.encode()), ("dlq-error-class", b"MalformedMessageError")])
    assert producer.flush(10) == 0

    listing = cli(settings, "dlq", "list")
    row = next(line for line in listing.splitlines() if "dlq.device-processor" in line)
    assert re.search(r"│\s*1\s*│\s*$", row), row
    rows = json.loads(cli(settings, "dlq", "list", "--json"))
    assert {r["group"]: r["messages"] for r in rows}["device-processor"] == 1
    dry = json.loads(cli(settings, "dlq", "redrive", "device-processor", "--dry-run", "--json"))
    assert dry["by_origin"] == {origin: 1} and dry["dry_run"] is True

    out = cli(settings, "dlq", "redrive", "device-processor")
    assert "redriven: 1" in out

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "cli-dlq-check",
                         "auto.offset.reset": "earliest",
                         "session.timeout.ms": settings.session_timeout_ms})
    consumer.subscribe([origin])
    found = None
    for _ in range(60):
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error() and msg.value() == b"poison":
            found = msg
            break
    consumer.close()
    assert found is not None and found.key() == b"dev-1"
