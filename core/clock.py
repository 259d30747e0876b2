"""Time as the domain keeps it: aware UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(ts: datetime | None) -> datetime | None:
    """Aware UTC; a naive datetime (the Cassandra driver's) is read as UTC."""
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)
