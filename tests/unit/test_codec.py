"""The codec: Avro single-object encoding, headers, validation that names fields, malformed input."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.base import SchemaValidationError
from schemas.codec import (
    MAGIC,
    Codec,
    MalformedMessageError,
    UnknownSchemaError,
    default_schemas,
    new_envelope,
)
from tests.samples import sample

pytestmark = pytest.mark.unit
codec = Codec()
TYPES = default_schemas().message_types()


def test_every_required_type_is_declared() -> None:
    assert set(TYPES) >= {
        "inference_request", "inference_response", "job_event", "model_command", "lifecycle_event", "fleet_event",
        "audit_event", "device_registered", "device_heartbeat", "round_command", "round_event",
        "model_update_submitted", "learning_graph_submitted",
    }


@pytest.mark.parametrize("message_type", TYPES)
def test_round_trip_every_type(message_type: str) -> None:
    record = sample(message_type)
    payload, headers = codec.encode(message_type, record)
    assert payload[:2] == MAGIC
    decoded = codec.decode(payload)
    assert decoded.message_type == message_type
    assert decoded.writer_version == max(default_schemas().versions(message_type))
    for key, value in record.items():
        assert decoded.record[key] == value, key
    names = dict(headers)
    assert names["content-type"] == b"application/vnd.tributary.avro"
    assert names["message-type"] == message_type.encode()
    assert names["schema-id"] == payload[2:10].hex().encode()


def test_envelope_fields() -> None:
    env = new_envelope(service="api", instance="api-1", causation_id="c")
    assert env["correlation_id"] == env["message_id"]
    assert env["timestamp"].tzinfo is UTC
    assert env["producer"] == {"service": "api", "instance": "api-1"}
    assert len(env["trace_id"]) == 32


def test_missing_field_is_named() -> None:
    record = sample("inference_request")
    del record["model_id"]
    with pytest.raises(SchemaValidationError, match="'model_id'"):
        codec.encode("inference_request", record)


def test_wrong_type_is_named() -> None:
    record = sample("device_heartbeat") | {"device_id": 42}
    with pytest.raises(SchemaValidationError, match="'device_id'"):
        codec.encode("device_heartbeat", record)


def test_unknown_field_is_refused() -> None:
    with pytest.raises(SchemaValidationError, match="surprise"):
        codec.encode("job_event", sample("job_event") | {"surprise": 1})


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", MalformedMessageError),
        (b"\xc3\x01abc", MalformedMessageError),
        (b"{\"json\": true, \"not\": \"avro\"}", MalformedMessageError),
        (MAGIC + b"\x00" * 8 + b"\x02", UnknownSchemaError),
    ],
)
def test_malformed_payloads_raise_decode_errors(payload: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        codec.decode(payload)


def test_truncated_body_raises() -> None:
    payload, _ = codec.encode("inference_request", sample("inference_request"))
    with pytest.raises(MalformedMessageError):
        codec.decode(payload[: len(payload) // 2])


def test_json_view_is_json_friendly_and_round_trips() -> None:
    record = sample("inference_request")
    view = codec.to_json("inference_request", record)
    assert view["timestamp"].endswith("Z") and "job_id" not in view  # nulls omitted
    assert isinstance(view["input_data"], dict)
    back = codec.from_json("inference_request", view)
    assert back["deadline"] == record["deadline"]
    assert back["timestamp"] == record["timestamp"]
    assert back["job_id"] is None


def test_from_json_names_the_bad_path() -> None:
    view = codec.to_json("inference_request", sample("inference_request")) | {"priority": "urgent"}
    with pytest.raises(SchemaValidationError, match="'priority'"):
        codec.from_json("inference_request", view)


def test_timestamps_come_back_as_utc_datetimes() -> None:
    record = sample("device_heartbeat")
    decoded = codec.decode(codec.encode("device_heartbeat", record)[0]).record
    assert isinstance(decoded["sent_at"], datetime) and decoded["sent_at"].tzinfo is not None


def test_json_fields_read_back_as_json_would_write_them() -> None:
    """The fast JSON-field writer (orjson) round-trips to the same values as ``json`` for every kind
    of value a record carries, including the ones orjson cannot write itself."""
    import json
    from datetime import datetime

    from schemas.codec import dump_json_field, load_json_field

    values = [{"b": 1, "a": [1.5, 2.25, None, True, "x"], "c": {"z": 1, "y": {"k": 0.1}}},
              {"embedding": [0.1234567, -1e-07, 3.0], "dimensions": 3}, {"nan": float("nan")},
              {"big": 2**70}, {"big": [-(2**70), 0.00012345678901234567, 12345678901234567890123]},
              {"small": [0.00012345678901234567, 1.5e-300]}, {1: "int key"},
              {"at": datetime(2020, 1, 1, 12, 30)}, {"text": "é\u2028"}]
    for value in values:
        expected = json.loads(json.dumps(value, separators=(",", ":"), sort_keys=True, default=str))
        got = load_json_field(dump_json_field(value))
        assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)
