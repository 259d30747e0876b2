"""What every consumer-group member of ours sets: it commits its own offsets, heartbeats a third of the
session timeout (at most every second) and takes partitions round-robin, eagerly (the revoke and
resume handling of the workers and the reply consumer is written for eager assignment)."""

from __future__ import annotations

from typing import Any, Literal

from settings import Settings


def group_member_config(settings: Settings, group_id: str, client_id: str, *,
                        offset_reset: Literal["earliest", "latest"], fetch_wait_ms: int) -> dict[str, Any]:
    session = settings.session_timeout_ms
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": group_id,
        "client.id": client_id,
        "enable.auto.commit": False,
        "auto.offset.reset": offset_reset,
        "session.timeout.ms": session,
        "heartbeat.interval.ms": max(100, min(1000, session // 3)),
        "fetch.wait.max.ms": fetch_wait_ms,
        "partition.assignment.strategy": "roundrobin",
    }
