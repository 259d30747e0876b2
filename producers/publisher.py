"""One idempotent Kafka producer per process, awaitable from asyncio.

``publish`` returns only once the broker has acknowledged the message (acks=all), so the
ingress answers a command only after its event is stored. Back-pressure is explicit:
too many unacknowledged messages, a full local queue or a broker known to be down raise
``PublisherUnavailable`` at once (the API turns it into 503 + Retry-After) instead of
letting requests pile up until their deadlines.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from settings import Settings

log = logging.getLogger(__name__)
Headers = Sequence[tuple[str, bytes]]


class PublisherUnavailable(ConnectionError):
    """Nothing was sent; retry after ``retry_after_s``."""

    def __init__(self, reason: str, retry_after_s: float = 1.0) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class DeliveryFailed(ConnectionError):
    """The broker did not acknowledge the message within the delivery timeout."""


@dataclass(frozen=True)
class DeliveryReport:
    topic: str
    partition: int
    offset: int


_DOWN_CODES = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT}


class Publisher:
    def __init__(self, settings: Settings, *, client_id: str | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.max_in_flight = settings.producer_max_in_flight
        self._in_flight = 0
        self._lock = threading.Lock()
        self._broker_down_since: float | None = None
        self._closed = threading.Event()
        config: dict[str, Any] = {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "client.id": client_id or f"tributary-{socket.gethostname()}-{uuid.uuid4().hex[:6]}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": settings.producer_linger_ms,
            "message.timeout.ms": settings.delivery_timeout_ms,
            "queue.buffering.max.messages": max(1000, settings.producer_max_in_flight * 2),
            "error_cb": self._on_error,
        }
        config.update(overrides or {})
        self._config = config
        self._producer = Producer(config)
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    # --- state ----------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def broker_down(self) -> bool:
        return self._broker_down_since is not None

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in _DOWN_CODES:
            if self._broker_down_since is None:
                log.warning("broker unreachable: %s", error.str())
                self._broker_down_since = time.monotonic()
        else:
            log.warning("producer error: %s", error.str())

    def _poll_loop(self) -> None:
        last_probe = 0.0
        while not self._closed.is_set():
            self._producer.poll(0.05)
            # librdkafka reports "all brokers down" but never "back up": probe while down.
            if self._broker_down_since is not None and time.monotonic() - last_probe > 0.5:
                last_probe = time.monotonic()
                try:
                    self._producer.list_topics(timeout=0.5)
                except Exception:
                    continue
                self._renew_producer()
                self._broker_down_since = None
                log.info("broker reachable again")

    def _renew_producer(self) -> None:
        """Start a fresh idempotent producer session after an outage.

        A broker that lost its state (a wiped or replaced cluster) no longer knows our producer
        id, and the old session's sequence numbers would time out forever; a new session gets a
        new id. Messages still queued in the old one fail (they were never acknowledged).
        """
        old, self._producer = self._producer, Producer(self._config)
        old.purge()
        old.flush(0)

    def check_ready(self) -> None:
        if self._closed.is_set():
            raise PublisherUnavailable("publisher closed", 1.0)
        if self._broker_down_since is not None:
            raise PublisherUnavailable("Kafka broker unreachable", 2.0)
        if self._in_flight >= self.max_in_flight:
            raise PublisherUnavailable(f"{self._in_flight} messages awaiting acknowledgement", 1.0)

    # --- publishing -------------------------------------------------------------------------
    async def publish(self, topic: str, value: bytes, *, key: bytes | str | None = None,
                      headers: Headers | None = None, partition: int | None = None) -> DeliveryReport:
        return await self.acknowledged(self.enqueue(topic, value, key=key, headers=headers, partition=partition))

    async def acknowledged(self, delivery: asyncio.Future[DeliveryReport]) -> DeliveryReport:
        """Wait for the broker's acknowledgement at most ``publish_ack_wait_s``.

        librdkafka keeps retrying for ``delivery_timeout_ms``, and notices a dead broker only when
        its connections fail; a caller holding an HTTP request must not wait that long. Past the
        bound the message may still be delivered (at-least-once: a client retrying after the 503
        sends a duplicate, which every consumer treats idempotently).
        """
        try:
            return await asyncio.wait_for(asyncio.shield(delivery), self.settings.publish_ack_wait_s)
        except TimeoutError:
            raise PublisherUnavailable(
                f"no acknowledgement within {self.settings.publish_ack_wait_s:g}s (broker slow or down)", 2.0
            ) from None

    def enqueue(self, topic: str, value: bytes, *, key: bytes | str | None = None,
                headers: Headers | None = None, partition: int | None = None) -> asyncio.Future[DeliveryReport]:
        """Hand the message to the producer now (so call order is log order); the future
        resolves on the broker's acknowledgement. Raises PublisherUnavailable at once."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[DeliveryReport] = loop.create_future()

        def resolve(report: DeliveryReport | None, error: Exception | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                assert report is not None
                future.set_result(report)

        self._produce(topic, value, key, headers, partition,
                      lambda report, error: loop.call_soon_threadsafe(resolve, report, error))
        return future

    def publish_sync(self, topic: str, value: bytes, *, key: bytes | str | None = None,
                     headers: Headers | None = None, partition: int | None = None,
                     timeout_s: float | None = None) -> DeliveryReport:
        done = threading.Event()
        outcome: list[Any] = []

        def resolve(report: DeliveryReport | None, error: Exception | None) -> None:
            outcome.append(error or report)
            done.set()

        self._produce(topic, value, key, headers, partition, resolve)
        if not done.wait(timeout_s or self.settings.delivery_timeout_ms / 1000 + 5):
            raise DeliveryFailed(f"no acknowledgement from {topic}")
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        result: DeliveryReport = outcome[0]
        return result

    def _produce(self, topic: str, value: bytes, key: bytes | str | None, headers: Headers | None,
                 partition: int | None, resolve: Any) -> None:
        self.check_ready()

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            with self._lock:
                self._in_flight -= 1
            if error is not None:
                if error.code() in (KafkaError._MSG_TIMED_OUT, *_DOWN_CODES) and self._broker_down_since is None:
                    self._broker_down_since = time.monotonic()
                resolve(None, DeliveryFailed(f"{topic}: {error.str()}"))
            else:
                self._broker_down_since = None
                resolve(DeliveryReport(message.topic() or topic, message.partition() or 0,
                                       message.offset() or 0), None)

        kwargs: dict[str, Any] = {"key": key, "value": value, "headers": list(headers or []),
                                  "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        with self._lock:
            self._in_flight += 1
        try:
            self._producer.produce(topic, **kwargs)
        except BufferError as exc:
            with self._lock:
                self._in_flight -= 1
            raise PublisherUnavailable("local producer queue full", 1.0) from exc
        except Exception:
            with self._lock:
                self._in_flight -= 1
            raise

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for outstanding deliveries; returns how many are still unacknowledged."""
        remaining: int = self._producer.flush(timeout_s)
        return remaining

    def close(self, timeout_s: float = 10.0) -> int:
        remaining = self.flush(timeout_s)
        self._closed.set()
        self._poller.join(2)
        return remaining
