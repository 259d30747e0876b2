"""Audit replay rate: decode + hash-chain verification vs a raw read of the same records, same run.

    python -m bench.bench_audit_replay --events 200000 [--json]

Writes N sealed audit records (one chain, as one producer instance would) under a fresh
topic prefix on the configured broker, then times (1) a raw consume of them (baseline) and
(2) `read_audit` + `verify_chain`, the path `tributary audit replay --verify` takes.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

from confluent_kafka import Consumer, Producer, TopicPartition

from core.audit import AuditChain, verify_chain
from core.audit_replay import read_audit
from schemas.codec import Codec, new_envelope
from settings import Settings
from topology.admin import apply
from topology.topics import AUDIT_EVENTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    settings = Settings(topic_prefix=f"bench{uuid.uuid4().hex[:6]}.")
    apply(settings)
    topic = AUDIT_EVENTS.full_name(settings)
    codec, chain = Codec(), AuditChain("bench:writer-1", b"bench-key")
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "linger.ms": 20,
                         "queue.buffering.max.messages": 500_000, "enable.idempotence": True})
    start = datetime.now(UTC) - timedelta(seconds=1)
    t0 = time.perf_counter()
    for i in range(args.events):
        record = chain.seal({**new_envelope(service="bench", instance="writer-1"), "actor": "key_bench",
                             "action": "device.heartbeat", "subject": f"device/{i % 1000}", "outcome": "accepted",
                             "before": None, "after": {"n": i}})
        payload, headers = codec.encode("audit_event", record)
        while True:
            try:
                producer.produce(topic, payload, key=record["chain_id"], headers=list(headers))
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    write_s = time.perf_counter() - t0
    end = datetime.now(UTC) + timedelta(seconds=1)

    # Baseline: raw bytes off the same partitions, no decoding.
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "bench-raw",
                         "enable.auto.commit": False, "fetch.wait.max.ms": settings.fetch_max_wait_ms})
    t0 = time.perf_counter()
    raw = 0
    for partition in range(AUDIT_EVENTS.partitions):
        consumer.assign([TopicPartition(topic, partition, 0)])
        while True:
            batch = consumer.consume(num_messages=5000, timeout=1.0)
            if not batch:
                break
            raw += sum(1 for m in batch if not m.error())
    raw_s = time.perf_counter() - t0
    consumer.close()

    t0 = time.perf_counter()
    records = list(read_audit(settings, start, end))
    result = verify_chain(records, b"bench-key")
    replay_s = time.perf_counter() - t0
    assert result.ok and result.checked == args.events == raw, (result, raw)

    report = {
        "events": args.events,
        "write_events_per_s": round(args.events / write_s),
        "raw_read_events_per_s (baseline)": round(raw / raw_s),
        "replay_verify_events_per_s": round(args.events / replay_s),
        "replay_vs_raw_ratio": round((args.events / replay_s) / (raw / raw_s), 3),
    }
    print(json.dumps(report, indent=2) if args.json else "\n".join(f"{k:38}{v:>12}" for k, v in report.items()))


if __name__ == "__main__":
    main()
