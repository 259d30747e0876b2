"""How the domain core emits events, independent of transport.

The domain calls ``EventSink.emit``/``audit``; the Kafka implementation (messaging/) encodes
with the codec and awaits the broker's acknowledgement, so a command is only answered
once its event is stored. Unit tests use ``tests.recording_sink.RecordingSink``.
"""

from __future__ import annotations

from typing import Any, Protocol


class EventSink(Protocol):
    async def emit(self, topic: str, message_type: str, record: dict[str, Any], *, key: str) -> None:
        """Publish one event to the logical ``topic`` (un-prefixed name), keyed by ``key``."""

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


class RequestSink(Protocol):
    """Publishes one message to a chosen topic (and partition): ``messaging.events.KafkaEventSink`` in production."""

    async def publish(self, topic: str, message_type: str, record: dict[str, Any], *,
                      key: str | None = None, partition: int | None = None) -> Any: ...


class JobEventSink(Protocol):
    """An ``EventSink`` that also publishes (``JobService``): ``messaging.events.KafkaEventSink`` in production."""

    async def publish(self, topic: str, message_type: str, record: dict[str, Any], *,
                      key: str | None = None, partition: int | None = None) -> Any: ...

    async def emit(self, topic: str, message_type: str, record: dict[str, Any], *, key: str) -> None: ...

    async def audit(self, *, actor: str, action: str, subject: str, outcome: str,
                    before: dict[str, Any] | None = None, after: dict[str, Any] | None = None) -> None: ...


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

