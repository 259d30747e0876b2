"""Poison messages go to the dead-letter topic with their reason; the consumer keeps going; redrive works."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from messaging.dead_letter import DeadLetterRouter, RawMessage, from_confluent, normalize_headers
from messaging.redrive import redrive
from producers.publisher import Publisher
from schemas.codec import Codec
from settings import Settings
from tests.samples import sample
from topology.topics import dead_letter_topic

pytestmark = pytest.mark.integration
GROUP = "dlq-test-group"


@pytest.fixture
def topics(settings: Settings) -> Iterator[tuple[str, str]]:
    source, dlq = settings.prefixed("dlq-test.source"), dead_letter_topic(GROUP).full_name(settings)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for future in admin.create_topics([NewTopic(source, 1, 1), NewTopic(dlq, 1, 1)]).values():
        future.result()
    yield source, dlq
    admin.delete_topics([source, dlq])


def consume(settings: Settings, topic: str, group: str, want: int, timeout_s: float = 30) -> list[Message]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": settings.session_timeout_ms})
    consumer.subscribe([topic])
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        msg = consumer.poll(0.3)
        if msg is not None and not msg.error():
            got.append(msg)
    consumer.close()
    return got


def test_poison_messages_are_dead_lettered_and_the_rest_processed(
    settings: Settings, topics: tuple[str, str]
) -> None:
    source, dlq = topics
    codec = Codec()
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    good = [sample("job_event") for _ in range(3)]
    explode = sample("job_event") | {"job_id": "explode"}
    payloads = [codec.encode("job_event", good[0])[0], b"\x00garbage that is not avro",
                codec.encode("job_event", good[1])[0], codec.encode("job_event", explode)[0],
                codec.encode("job_event", good[2])[0]]
    for i, payload in enumerate(payloads):
        producer.produce(source, key=f"k{i}", value=payload, headers=[("trace", f"t{i}".encode())])
    producer.flush(10)

    processed: list[str] = []
    attempts: dict[str, int] = {}

    async def handler(message: RawMessage) -> None:
        record = codec.decode(message.value).record
        attempts[record["job_id"]] = attempts.get(record["job_id"], 0) + 1
        if record["job_id"] == "explode":
            raise RuntimeError("model exploded")
        processed.append(record["job_id"])

    async def run() -> None:
        publisher = Publisher(settings)
        router = DeadLetterRouter(settings.model_copy(update={"max_processing_attempts": 3}), publisher, GROUP)
        consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": GROUP,
                             "auto.offset.reset": "earliest", "enable.auto.commit": False,
                             "session.timeout.ms": settings.session_timeout_ms})
        consumer.subscribe([source])
        seen = 0
        deadline = time.monotonic() + 30
        while seen < len(payloads) and time.monotonic() < deadline:
            msg = consumer.poll(0.3)
            if msg is None or msg.error():
                continue
            await router.process(from_confluent(msg), handler, backoff_s=0.01)
            consumer.commit(message=msg, asynchronous=False)  # past it either way
            seen += 1
        consumer.close()
        publisher.close()
        assert router.dead_lettered == 2

    asyncio.run(run())
    assert processed == [good[0]["job_id"], good[1]["job_id"], good[2]["job_id"]]
    assert attempts["explode"] == 3

    dead = consume(settings, dlq, "dlq-inspect", 2)
    assert len(dead) == 2
    first, second = (dict(normalize_headers(m.headers())) for m in dead)
    assert first["dlq-error-class"] == b"MalformedMessageError" and first["dlq-attempts"] == b"1"
    assert first["dlq-origin-topic"] == source.encode() and first["dlq-origin-offset"] == b"1"
    assert first["trace"] == b"t1"  # original headers kept
    assert second["dlq-error-class"] == b"RuntimeError" and second["dlq-attempts"] == b"3"
    assert second["dlq-error-message"] == b"model exploded"
    assert dead[0].value() == payloads[1] and dead[0].key() == b"k1"  # original bytes untouched

    # Redrive: both go back to the origin topic, once, even when run twice.
    report = redrive(settings, dlq, idle_timeout_s=3)
    assert report.redriven == 2 and report.by_origin == {source: 2}
    assert redrive(settings, dlq, idle_timeout_s=2).redriven == 0
    back = consume(settings, source, "dlq-after-redrive", 7)
    redriven = [m for m in back if dict(normalize_headers(m.headers())).get("redriven-from") == dlq.encode()]
    assert len(back) == 7 and len(redriven) == 2
    assert all(not k.startswith("dlq-") for m in redriven for k, _ in normalize_headers(m.headers()))
