"""The publisher against a real broker: acknowledged delivery, and back-pressure when the broker stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from infra.local_stack import KafkaBroker
from producers.publisher import DeliveryFailed, Publisher, PublisherUnavailable
from settings import Settings

pytestmark = pytest.mark.integration


def test_publish_returns_after_the_broker_stored_it(settings: Settings) -> None:
    topic = settings.prefixed("publisher.ack")
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result()
    publisher = Publisher(settings)

    async def send() -> list[tuple[int, int]]:
        reports = await asyncio.gather(*(publisher.publish(topic, f"m{i}".encode(), key=f"k{i % 5}")
                                         for i in range(50)))
        return [(r.partition, r.offset) for r in reports]

    acknowledged = asyncio.run(send())
    assert publisher.in_flight == 0
    publisher.close()
    assert len(set(acknowledged)) == 50  # every message has its own (partition, offset)

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "ack-check",
                         "auto.offset.reset": "earliest",
                         "session.timeout.ms": settings.session_timeout_ms})
    consumer.subscribe([topic])
    seen: set[tuple[int | None, int | None]] = set()
    deadline = time.monotonic() + 30
    while len(seen) < 50 and time.monotonic() < deadline:
        msg = consumer.poll(0.3)
        if msg is not None and not msg.error():
            seen.add((msg.partition(), msg.offset()))
    consumer.close()
    assert seen == set(acknowledged)


def test_in_flight_cap_signals_back_pressure(settings: Settings) -> None:
    publisher = Publisher(settings.model_copy(update={"producer_max_in_flight": 5}))
    topic = settings.prefixed("publisher.cap")
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()

    async def burst() -> int:
        futures = [publisher.enqueue(topic, b"x") for _ in range(5)]
        with pytest.raises(PublisherUnavailable) as refused:
            publisher.enqueue(topic, b"one too many")
        assert refused.value.retry_after_s > 0
        await asyncio.gather(*futures)
        return publisher.in_flight

    assert asyncio.run(burst()) == 0
    # After the acknowledgements the publisher takes messages again.
    asyncio.run(publisher.publish(topic, b"accepted again"))
    publisher.close()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[Settings, KafkaBroker]]:
    """A broker of this test's own: stopping it must not disturb the session's."""
    settings = Settings(data_dir=tmp_path, kafka_port=19492, delivery_timeout_ms=3000)
    broker = KafkaBroker(settings)
    broker.start(progress=lambda _: None)
    yield settings, broker
    broker.stop()


def test_broker_down_is_reported_quickly_and_nothing_false_is_acknowledged(
    own_broker: tuple[Settings, KafkaBroker],
) -> None:
    settings, broker = own_broker
    topic = "publisher.down"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    publisher = Publisher(settings)

    async def scenario() -> None:
        assert (await publisher.publish(topic, b"before")).offset == 0
        broker.stop()
        acknowledged_while_down = 0
        for _ in range(10):
            started = time.monotonic()
            try:
                await publisher.publish(topic, b"while down")
                acknowledged_while_down += 1
            except (PublisherUnavailable, DeliveryFailed):
                pass
            # Bounded: never longer than the delivery timeout plus a margin.
            assert time.monotonic() - started < settings.delivery_timeout_ms / 1000 + 2
        assert acknowledged_while_down == 0
        assert publisher.broker_down

        broker.start(progress=lambda _: None)
        deadline = time.monotonic() + 20
        while publisher.broker_down and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a thread's flag
            await asyncio.sleep(0.2)
        assert not publisher.broker_down
        # The broker kept its log: the topic is still there and the next record follows the first.
        report = await publisher.publish(topic, b"after")
        assert (report.topic, report.offset) == (topic, 1)

    asyncio.run(scenario())
    publisher.close()
