"""Which field keys a message, per message type: all events of one subject stay in order on one partition."""

from __future__ import annotations

from typing import Any

KEY_FIELD = {
    "device_registered": "device_id",
    "device_heartbeat": "device_id",
    "round_command": "round_id",
    "round_event": "round_id",
    "model_update_submitted": "round_id",
    "inference_request": "message_id",  # the request id
    "inference_response": "correlation_id",
    "job_event": "job_id",
    "model_command": "model_id",
    "lifecycle_event": "subject_id",
    "audit_event": "chain_id",
    "learning_graph_submitted": "device_id_hash",
}


def message_key(message_type: str, record: dict[str, Any]) -> str:
    field = KEY_FIELD.get(message_type)
    if field is None:
        raise KeyError(f"no key rule for message type {message_type!r}")
    value = record.get(field)
    if not value:
        raise ValueError(f"{message_type} has no {field} to key by")
    return str(value)
