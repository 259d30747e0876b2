"""An ``EventSink`` that keeps what it was given, for unit tests of the domain."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from topology.messages import MESSAGES, MessageType


@dataclass
class RecordingSink:
    """An EventSink that keeps what it was given, for unit tests of the domain."""

    events: list[tuple[str, MessageType, dict[str, Any], str]] = field(default_factory=list)  # topic, type, record, key
    audits: list[dict[str, Any]] = field(default_factory=list)
    fail_with: Exception | None = None

    async def publish(self, message_type: MessageType, record: dict[str, Any]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        route = MESSAGES[message_type]  # as the Kafka sink does: a record without its key field fails here too
        self.events.append((route.topic_for(record).name, message_type, record, route.key_for(record)))

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
        if self.fail_with is not None:
            raise self.fail_with
        self.audits.append(
            {"actor": actor, "action": action, "subject": subject, "outcome": outcome, "before": before,
             "after": after}
        )

    def of_type(self, message_type: str) -> list[dict[str, Any]]:
        return [record for _, kind, record, _ in self.events if kind == message_type]
