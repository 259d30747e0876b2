"""Every type's current reader reads every older writer, and the previous reader reads the current writer."""

from __future__ import annotations

import copy

import pytest

from schemas.codec import Codec, SchemaSet, default_schemas
from tests.avro_compat import check_compatibility
from tests.samples import sample

pytestmark = pytest.mark.unit
schema_set = default_schemas()
codec = Codec(schema_set)
PAIRS = [(t, v) for t in schema_set.message_types() for v in schema_set.versions(t)]


def test_some_types_really_evolved() -> None:
    evolved = [t for t in schema_set.message_types() if len(schema_set.versions(t)) > 1]
    assert len(evolved) >= 3, evolved


@pytest.mark.parametrize(("message_type", "old"), PAIRS)
def test_current_reader_reads_every_older_writer(message_type: str, old: int) -> None:
    writer = schema_set.get(message_type, old)
    reader = schema_set.get(message_type)
    problems = check_compatibility(writer.raw, reader.raw, f"{message_type} v{old} -> v{reader.version}")
    assert problems == [], "\n".join(problems)
    # And really decode: a record written with the old schema comes back with the new defaults.
    record = {k: v for k, v in sample(message_type).items() if k in {f["name"] for f in writer.raw["fields"]}}
    payload, _ = codec.encode(message_type, record, version=old)
    decoded = codec.decode(payload)
    assert decoded.writer_version == old
    for field in reader.raw["fields"]:
        if field["name"] not in record:
            assert decoded.record[field["name"]] == field["default"], field["name"]


@pytest.mark.parametrize("message_type", [t for t in schema_set.message_types() if len(schema_set.versions(t)) > 1])
def test_previous_reader_reads_current_writer(message_type: str) -> None:
    current, previous = schema_set.versions(message_type)[-1], schema_set.versions(message_type)[-2]
    writer, reader = schema_set.get(message_type, current), schema_set.get(message_type, previous)
    problems = check_compatibility(writer.raw, reader.raw, f"{message_type} v{current} -> v{previous}")
    assert problems == [], "\n".join(problems)
    payload, _ = codec.encode(message_type, sample(message_type))
    decoded = codec.decode(payload, reader_version=previous)
    assert set(decoded.record) == {f["name"] for f in schema_set.get(message_type, previous).raw["fields"]}


def test_a_breaking_change_names_the_field() -> None:
    v1 = schema_set.get("device_heartbeat", 1).raw
    broken = copy.deepcopy(v1)
    broken["fields"].append({"name": "firmware", "type": "string"})  # no default: old data unreadable
    problems = check_compatibility(v1, broken, "device_heartbeat v1 -> broken")
    assert problems == ["device_heartbeat v1 -> broken: field 'firmware' is missing in the writer and has no "
                        "default in the reader"]

    retyped = copy.deepcopy(v1)
    next(f for f in retyped["fields"] if f["name"] == "status")["type"] = "int"
    assert any("'status'" in p and "string cannot be read as int" in p
               for p in check_compatibility(v1, retyped))


def test_schema_set_loads_every_committed_version(tmp_path: object) -> None:
    fresh = SchemaSet()
    assert fresh.message_types() == schema_set.message_types()
    for message_type in fresh.message_types():
        assert fresh.versions(message_type) == list(range(1, len(fresh.versions(message_type)) + 1))
