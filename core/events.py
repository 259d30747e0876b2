"""How the domain core publishes messages, independent of transport.

The domain calls ``publish(MessageType.X, record)`` and ``audit``; the topic, the key and the
partition come from the one table of message types (``topology.messages.MESSAGES``). The Kafka
implementation (``producers/events.py``) encodes with the codec and awaits the broker's
acknowledgement, so a command is only answered once its event is stored. Unit tests use
``tests.recording_sink.RecordingSink``.
"""

from __future__ import annotations

from typing import Any, Protocol

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


def lifecycle_record(event_type: str, subject_kind: str, subject_id: str, **details: Any) -> dict[str, Any]:
    """A lifecycle event body; ``model_id`` names the model for model events (seed 001 requires it)."""
    return {
        "event_type": event_type,
        "subject_kind": subject_kind,
        "subject_id": subject_id,
        "model_id": subject_id if subject_kind == "model" else "",
        "details": {k: v for k, v in details.items() if v is not None},
    }


class EventsUnavailable(ConnectionError):
    """The broker cannot take events now; transports answer 503 with Retry-After."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

