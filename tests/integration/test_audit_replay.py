"""`tributary audit replay` over a time window of the real audit topic, with chain verification."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from producers.events import KafkaEventSink
from producers.publisher import Publisher
from schemas.codec import Codec
from settings import Settings
from topology.admin import apply
from topology.topics import AUDIT_EVENTS

pytestmark = pytest.mark.integration
KEY = "replay-key"


def replay(settings: Settings, start: datetime, end: datetime, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRIBUTARY_TOPIC_PREFIX": settings.topic_prefix, "TRIBUTARY_AUDIT_HMAC_KEY": KEY}
    return subprocess.run([sys.executable, "-m", "cli", "audit", "replay", "--from",
                           start.strftime("%Y-%m-%dT%H:%M:%S"), "--to", end.strftime("%Y-%m-%dT%H:%M:%S"), *args],
                          env=env, capture_output=True, text=True, timeout=120)


def test_replay_window_filters_and_verifies(settings: Settings) -> None:
    own = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}replay.",
                                      "audit_hmac_key": SecretStr(KEY)})
    apply(own)
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=2)
    publisher = Publisher(own)
    sink = KafkaEventSink(own, publisher, service="replay-test")

    async def write() -> None:
        for i in range(30):
            await sink.audit(actor="key_operator" if i % 3 == 0 else "key_device", action=f"round.step{i}",
                             subject=f"round/{i}", outcome="accepted")

    asyncio.run(write())
    end = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=2)

    everything = replay(own, start, end, "--verify")
    assert everything.returncode == 0, everything.stderr
    lines = [json.loads(line) for line in everything.stdout.splitlines()]
    assert len(lines) == 30 and "verified 30 record(s) in 1 chain(s)" in everything.stderr
    assert [r["seq"] for r in lines] == list(range(30))

    only_operator = replay(own, start, end, "--filter", "actor=key_operator")
    assert len(only_operator.stdout.splitlines()) == 10

    before = replay(own, start - timedelta(hours=2), start - timedelta(hours=1))
    assert before.returncode == 0 and before.stdout == ""

    # Someone appends a forged record to the chain: the replay proves it.
    forged = dict(Codec().decode(Codec().encode("audit_event", {**lines_to_record(lines[-1]), "seq": 30,
                                                                "outcome": "forged"})[0]).record)
    payload, headers = Codec().encode("audit_event", forged)
    publisher.publish_sync(AUDIT_EVENTS.full_name(own), payload, key=forged["chain_id"], headers=headers)
    publisher.close()
    tampered = replay(own, start, datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=60), "--verify")
    assert tampered.returncode == 1
    assert "chain broken" in tampered.stderr and "seq 30" in tampered.stderr


def lines_to_record(view: dict[str, object]) -> dict[str, object]:
    return Codec().from_json("audit_event", view)
