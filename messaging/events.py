"""The Kafka ``EventSink``: envelope, Avro encoding, per-type keys, acknowledged delivery, audit chain."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from core.audit import AuditChain
from core.events import EventsUnavailable
from messaging.keys import message_key
from messaging.publisher import DeliveryFailed, DeliveryReport, Publisher, PublisherUnavailable
from schemas.codec import Codec, new_envelope
from settings import Settings
from topology.topics import AUDIT_EVENTS


def instance_name(service: str) -> str:
    """Unique per process: each process writes its own audit chain."""
    return f"{service}-{socket.gethostname()}-{os.getpid()}"


class KafkaEventSink:
    def __init__(self, settings: Settings, publisher: Publisher, *, service: str, codec: Codec | None = None) -> None:
        self.settings = settings
        self.publisher = publisher
        self.codec = codec or Codec()
        self.service = service
        self.instance = instance_name(service)
        key = settings.audit_hmac_key.get_secret_value().encode() or None
        self._chain = AuditChain(f"{service}:{self.instance}", key)
        self._audit_lock = asyncio.Lock()

    def envelope(self, **kwargs: Any) -> dict[str, Any]:
        return new_envelope(service=self.service, instance=self.instance, **kwargs)

    async def publish(self, topic: str, message_type: str, record: dict[str, Any], *,
                      key: str | None = None, partition: int | None = None) -> DeliveryReport:
        full = {**self.envelope(), **record}
        if message_type == "lifecycle_event":
            full.setdefault("event_id", full["message_id"])
        payload, headers = self.codec.encode(message_type, full)
        try:
            return await self.publisher.publish(
                self.settings.topic(topic), payload, key=key or message_key(message_type, full), headers=headers,
                partition=partition,
            )
        except (PublisherUnavailable, DeliveryFailed) as exc:
            retry = exc.retry_after_s if isinstance(exc, PublisherUnavailable) else 2.0
            raise EventsUnavailable(str(exc), retry) from exc

    async def emit(self, topic: str, message_type: str, record: dict[str, Any], *, key: str) -> None:
        await self.publish(topic, message_type, record, key=key)

    async def audit(self, *, actor: str, action: str, subject: str, outcome: str,
                    before: dict[str, Any] | None = None, after: dict[str, Any] | None = None) -> None:
        # Sealing and producing happen under one lock so the chain's order is the log's order.
        async with self._audit_lock:
            record = {**self.envelope(), "actor": actor, "action": action, "subject": subject, "outcome": outcome,
                      "before": before, "after": after}
            sealed = self._chain.seal(record)
            payload, headers = self.codec.encode("audit_event", sealed)
            try:
                delivery = self.publisher.enqueue(self.settings.topic(AUDIT_EVENTS.name), payload,
                                                  key=sealed["chain_id"], headers=headers)
            except PublisherUnavailable as exc:
                self._chain.seq -= 1  # nothing was sent: the next record reuses the slot
                self._chain.prev_hash = sealed["prev_hash"]
                raise EventsUnavailable(str(exc), exc.retry_after_s) from exc
        try:
            await self.publisher.acknowledged(delivery)
        except (PublisherUnavailable, DeliveryFailed) as exc:
            retry = exc.retry_after_s if isinstance(exc, PublisherUnavailable) else 2.0
            raise EventsUnavailable(str(exc), retry) from exc
