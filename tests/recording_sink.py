"""An ``EventSink`` that keeps what it was given, for unit tests of the domain."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RecordingSink:
    """An EventSink that keeps what it was given, for unit tests of the domain."""

    events: list[tuple[str, str, dict[str, Any], str]] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)
    fail_with: Exception | None = None

    async def emit(self, topic: str, message_type: str, record: dict[str, Any], *, key: str) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.events.append((topic, message_type, record, key))

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
