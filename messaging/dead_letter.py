"""Dead letters: a message that cannot be decoded, is invalid, or keeps failing goes to the group's
dead-letter topic with the reason in headers; the consumer then commits past it and keeps going.

Shared by the faust processors and the confluent-kafka workers: both hand over the raw
message fields, so the original key, value and headers are kept byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import KafkaError, Message

from core.errors import is_transient_infrastructure_error
from producers.publisher import Publisher
from schemas.base import SchemaValidationError
from schemas.codec import DecodeError
from settings import Settings
from topology.topics import dead_letter_topic

log = logging.getLogger(__name__)
Headers = Sequence[tuple[str, bytes]]
DLQ_PREFIX = "dlq-"

MAX_OUTAGE_BACKOFF_S = 5.0
# Failures that no retry can fix: dead-letter on the first attempt.
PERMANENT: tuple[type[Exception], ...] = (DecodeError, SchemaValidationError, LookupError, KeyError, TypeError)


@dataclass(frozen=True)
class RawMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers


def normalize_headers(headers: object) -> list[tuple[str, bytes]]:
    """confluent-kafka hands headers as a list or dict of str | bytes | None; we keep bytes."""
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    out = []
    for key, value in items:  # type: ignore[attr-defined]
        out.append((str(key), value.encode() if isinstance(value, str) else (value or b"")))
    return out


def from_confluent(msg: Message) -> RawMessage:
    return RawMessage(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.key(), msg.value(),
                      normalize_headers(msg.headers()))


def is_record(msg: Message, logger: logging.Logger, consumer: str) -> bool:
    """Whether a polled message is a record; a client event in its place (end of partition: nothing;
    any other error: a warning on ``logger`` naming ``consumer``) is not."""
    error = msg.error()
    if error is None:
        return True
    if error.code() != KafkaError._PARTITION_EOF:
        logger.warning("%s: %s", consumer, error.str())
    return False


class DeadLetterRouter:
    def __init__(self, settings: Settings, publisher: Publisher, group_id: str) -> None:
        self.settings = settings
        self.publisher = publisher
        self.group_id = group_id
        self.topic = dead_letter_topic(group_id).full_name(settings)
        self.max_attempts = settings.max_processing_attempts
        self.dead_lettered = 0

    def headers_for(self, message: RawMessage, error: BaseException, attempts: int) -> list[tuple[str, bytes]]:
        kept = [(k, v) for k, v in message.headers if not k.startswith(DLQ_PREFIX)]
        return [
            *kept,
            ("dlq-error-class", type(error).__name__.encode()),
            ("dlq-error-message", str(error)[:1000].encode()),
            ("dlq-origin-topic", message.topic.encode()),
            ("dlq-origin-partition", str(message.partition).encode()),
            ("dlq-origin-offset", str(message.offset).encode()),
            ("dlq-attempts", str(attempts).encode()),
            ("dlq-group", self.group_id.encode()),
            ("dlq-failed-at", datetime.now(UTC).isoformat().encode()),
        ]

    async def send(self, message: RawMessage, error: BaseException, attempts: int) -> None:
        log.error("dead-lettering %s[%d]@%d after %d attempt(s): %s: %s", message.topic, message.partition,
                  message.offset, attempts, type(error).__name__, error)
        await self.publisher.publish(self.topic, message.value or b"", key=message.key,
                                     headers=self.headers_for(message, error, attempts))
        self.dead_lettered += 1

    async def process_batch(self, messages: Sequence[RawMessage],
                            handler: Callable[[Sequence[RawMessage]], Awaitable[Sequence[BaseException | None]]],
                            single: Callable[[RawMessage], Awaitable[None]], backoff_s: float = 0.2) -> None:
        """Handle ``messages`` together; returns once each is handled or in the dead-letter topic.

        ``handler`` answers, per message, the permanent failure that sends it to the dead-letter topic
        (or None). While a backing service is unavailable the batch is retried, as ``process`` does;
        when it fails otherwise, each message goes through ``process`` with ``single`` on its own, so
        one bad message costs only itself its retries and dead letter.
        """
        outage = 0
        while True:
            try:
                failures = await handler(messages)
                break
            except Exception as exc:
                if not is_transient_infrastructure_error(exc):
                    log.warning("a batch of %d failed (%s: %s); handling its messages one at a time",
                                len(messages), type(exc).__name__, exc)
                    for message in messages:
                        await self.process(message, single, backoff_s)
                    return
                outage += 1
                log.warning("a batch of %d waits for an unavailable service (%s: %s), retry %d",
                            len(messages), type(exc).__name__, exc, outage)
                await asyncio.sleep(min(MAX_OUTAGE_BACKOFF_S, backoff_s * 2 ** min(outage, 6)))
        for message, failure in zip(messages, failures, strict=True):
            if failure is not None:
                await self.send(message, failure, 1)

    async def process(self, message: RawMessage, handler: Callable[[RawMessage], Awaitable[None]],
                      backoff_s: float = 0.2) -> bool:
        """Run the handler with bounded retries; returns False when the message was dead-lettered.

        Returns only when the message is handled or safely in the dead-letter topic, so the
        caller may commit its offset either way. While a backing service is unavailable the
        message is retried without using up its attempts (the caller's partition waits).
        """
        attempt, outage = 1, 0
        while True:
            try:
                await handler(message)
                return True
            except PERMANENT as exc:
                await self.send(message, exc, attempt)
                return False
            except Exception as exc:
                if is_transient_infrastructure_error(exc):
                    # Cassandra, S3 or Kafka is down: not this message's fault, so it is retried (the
                    # partition waits, lag grows) rather than dead-lettered with healthy messages.
                    outage += 1
                    log.warning("%s[%d]@%d waits for an unavailable service (%s: %s), retry %d",
                                message.topic, message.partition, message.offset, type(exc).__name__, exc, outage)
                    await asyncio.sleep(min(MAX_OUTAGE_BACKOFF_S, backoff_s * 2 ** min(outage, 6)))
                    continue
                if attempt >= self.max_attempts:
                    log.debug("final failure: %s", traceback.format_exc())
                    await self.send(message, exc, attempt)
                    return False
                await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
                attempt += 1
