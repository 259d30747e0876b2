"""How the domain core publishes messages, independent of transport.

The domain calls ``publish(MessageType.X, record)`` and ``audit``; the topic, the key and the
partition come from the one table of message types (``topology.messages.MESSAGES``). The Kafka
implementation (``producers/events.py``) encodes with the codec and awaits the broker's
acknowledgement, so a command is only answered once its event is stored. Unit tests use
``tests.recording_sink.RecordingSink``.
"""

from __future__ import annotations

from typing import Any, Protocol

from schemas.event_types import FLEET_EVENT_TYPES, FLEET_SUBJECT_KINDS, MODEL_LIFECYCLE_EVENT_TYPES
from topology.messages import MessageType


class MessageSink(Protocol):
    """Publishes messages (``producers.events.KafkaEventSink`` in production)."""

    async def publish(self, message_type: MessageType, record: dict[str, Any]) -> object:
        """Publish one message, enveloped, to its type's topic, keyed (and partitioned) by its row."""


class EventSink(MessageSink, Protocol):
    """A ``MessageSink`` that also keeps the audit trail: what the domain services publish to."""

    async def audit(
        self,
        *,
        actor: str,
        action: str,
        subject: str,
        outcome: str,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        """Record an accepted command or a state change on the audit topic (actor = key id)."""


def lifecycle_record(event_type: str, model_id: str, **details: Any) -> dict[str, Any]:
    """A ``LIFECYCLE_EVENT`` body: one of seed 001 §4.2.3's five model events, the seed's fields."""
    if event_type not in MODEL_LIFECYCLE_EVENT_TYPES:
        # The seed's schema refuses it on the lifecycle topic: other events are fleet events.
        raise ValueError(f"{event_type!r} is not a seed 001 lifecycle event; publish a fleet_record")
    return {"event_type": event_type, "model_id": model_id,
            "details": {k: v for k, v in details.items() if v is not None}}


def fleet_record(event_type: str, subject_kind: str, subject_id: str, **details: Any) -> dict[str, Any]:
    """A ``FLEET_EVENT`` body: a catalog, device, round, update or retraining event about one subject."""
    if event_type not in FLEET_EVENT_TYPES or subject_kind not in FLEET_SUBJECT_KINDS:
        raise ValueError(f"{event_type!r} about a {subject_kind!r} is not a fleet event (schemas/event_types.py)")
    return {"event_type": event_type, "subject_kind": subject_kind, "subject_id": subject_id,
            "details": {k: v for k, v in details.items() if v is not None}}


class EventsUnavailable(ConnectionError):
    """The broker cannot take events now; transports answer 503 with Retry-After."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

