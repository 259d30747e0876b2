"""Audit records on the real topic verify as a chain; a tampered copy fails at the first broken link."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import pytest
from confluent_kafka import Consumer
from pydantic import SecretStr

from core.audit import SecretInAuditRecord, verify_chain
from producers.events import KafkaEventSink
from producers.publisher import Publisher
from schemas.codec import Codec
from settings import Settings
from topology.admin import apply
from topology.topics import AUDIT_EVENTS

pytestmark = pytest.mark.integration


def read_chain(settings: Settings, topic: str, chain_prefix: str, want: int) -> list[dict[str, Any]]:
    """The records of one chain, in log order (other services write the same topic)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": f"audit-{time.time()}",
                         "auto.offset.reset": "earliest",
                         "session.timeout.ms": settings.session_timeout_ms})
    consumer.subscribe([topic])
    codec, records = Codec(), list[dict[str, Any]]()
    deadline = time.monotonic() + 30
    while len(records) < want and time.monotonic() < deadline:
        msg = consumer.poll(0.3)
        if msg is not None and not msg.error():
            record = codec.decode(msg.value()).record
            if record["chain_id"].startswith(chain_prefix):
                records.append(record)
    consumer.close()
    return records


def test_audit_chain_verifies_and_tampering_is_found(settings: Settings) -> None:
    audited = settings.model_copy(update={"audit_hmac_key": SecretStr("audit-secret")})
    apply(audited)
    publisher = Publisher(audited)
    sink = KafkaEventSink(audited, publisher, service="audit-test")

    async def write() -> None:
        await asyncio.gather(*(sink.audit(actor="key_0123456789abcdef", action="round.start", subject=f"round/{i}",
                                          outcome="accepted", after={"n": i}) for i in range(20)))
        with pytest.raises(SecretInAuditRecord):
            await sink.audit(actor="sk_live_" + "a" * 32, action="x", subject="y", outcome="z")

    asyncio.run(write())
    publisher.close()
    records = read_chain(audited, AUDIT_EVENTS.full_name(audited), "audit-test:", 20)
    assert [r["seq"] for r in records] == list(range(20))
    key = b"audit-secret"
    assert verify_chain(records, key).ok

    altered = copy.deepcopy(records)
    altered[7]["outcome"] = "rejected"
    result = verify_chain(altered, key)
    assert not result.ok and result.first_broken is not None
    assert (result.first_broken.seq, result.first_broken.reason) == (7, "hash mismatch: altered")

    dropped = records[:5] + records[6:]
    broken = verify_chain(dropped, key).first_broken
    assert broken is not None and broken.seq == 6 and "dropped" in broken.reason

    forged = copy.deepcopy(records[3])
    inserted = [*records[:4], forged, *records[4:]]
    broken = verify_chain(inserted, key).first_broken
    assert broken is not None and broken.seq == 3 and "inserted" in broken.reason

    assert not verify_chain(records, b"wrong key").ok  # HMAC: only the key holder can re-seal
