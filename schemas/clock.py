"""Time as the platform keeps it: aware UTC datetimes at millisecond precision.

Avro's ``timestamp-millis`` and Cassandra's ``timestamp`` both keep milliseconds, so a clock
that reads milliseconds makes what a service answers equal what it stored or sent. It lives
here, under the codec (envelopes are stamped with it), so every layer can use the same one.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """UTC now, truncated to the millisecond."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def as_utc(ts: datetime | None) -> datetime | None:
    """Aware UTC; a naive datetime (the Cassandra driver's) is read as UTC."""
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
