"""The Kafka ``EventSink``: envelope, Avro encoding, topic and key from the message table, acknowledged
delivery, audit chain."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from core.audit import AuditChain
from core.events import EventsUnavailable
from producers.publisher import DeliveryFailed, DeliveryReport, Publisher, PublisherUnavailable
from schemas.codec import Codec, new_envelope
from settings import Settings
from topology.messages import MESSAGES, MessageType


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

    async def publish(self, message_type: MessageType, record: dict[str, Any]) -> DeliveryReport:
        full = {**self.envelope(), **record}
        if message_type == MessageType.LIFECYCLE_EVENT:
            full.setdefault("event_id", full["message_id"])
        payload, headers = self.codec.encode(message_type, full)
        route = MESSAGES[message_type]
        try:
            return await self.publisher.publish(
                route.topic_for(full).full_name(self.settings), payload, key=route.key_for(full), headers=headers,
                partition=route.partition_for(full),
            )
        except (PublisherUnavailable, DeliveryFailed) as exc:
            retry = exc.retry_after_s if isinstance(exc, PublisherUnavailable) else 2.0
            raise EventsUnavailable(str(exc), retry) from exc

    async def audit(self, *, actor: str, action: str, subject: str, outcome: str,
                    before: dict[str, Any] | None = None, after: dict[str, Any] | None = None) -> None:
        # Sealing and producing happen under one lock so the chain's order is the log's order.
        async with self._audit_lock:
            record = {**self.envelope(), "actor": actor, "action": action, "subject": subject, "outcome": outcome,
                      "before": before, "after": after}
            sealed = self._chain.seal(record)
            payload, headers = self.codec.encode(MessageType.AUDIT_EVENT, sealed)
            route = MESSAGES[MessageType.AUDIT_EVENT]
            try:
                delivery = self.publisher.enqueue(route.topic_for(sealed).full_name(self.settings), payload,
                                                  key=route.key_for(sealed), headers=headers)
            except PublisherUnavailable as exc:
                self._chain.seq -= 1  # nothing was sent: the next record reuses the slot
                self._chain.prev_hash = sealed["prev_hash"]
                raise EventsUnavailable(str(exc), exc.retry_after_s) from exc
        try:
            await self.publisher.acknowledged(delivery)
        except (PublisherUnavailable, DeliveryFailed) as exc:
            retry = exc.retry_after_s if isinstance(exc, PublisherUnavailable) else 2.0
            raise EventsUnavailable(str(exc), retry) from exc
