"""JSON views validate against our JSON Schemas and against seed 001 §4.2's schemas (kept verbatim in
``schemas/json/seed/``); the event types of each side are where the seed says."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from core.events import fleet_record, lifecycle_record
from schemas.base import JSON_DIR, SchemaValidationError
from schemas.codec import Codec, default_schemas
from schemas.event_types import FLEET_EVENT_TYPES, MODEL_LIFECYCLE_EVENT_TYPES
from schemas.json_views import FORMAT_CHECKER, generate, validate_json_view
from tests.samples import sample

pytestmark = pytest.mark.unit
codec = Codec()
SEED = JSON_DIR / "seed"


def _seed_validator(name: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SEED / f"{name}.json").read_text())
    # Draft 7's own checker checks neither uuid nor date-time; ours checks both.
    return jsonschema.Draft7Validator(schema, format_checker=FORMAT_CHECKER)


def test_committed_json_schemas_are_up_to_date() -> None:
    stale = [str(p) for p, content in generate().items() if not p.exists() or p.read_text() != content]
    assert stale == [], f"run `python -m schemas.json_views`; stale: {stale}"


@pytest.mark.parametrize("message_type", default_schemas().message_types())
def test_every_json_view_matches_its_schema(message_type: str) -> None:
    for version in default_schemas().versions(message_type):
        fields = {f["name"] for f in default_schemas().get(message_type, version).raw["fields"]}
        record = {k: v for k, v in sample(message_type).items() if k in fields}
        validate_json_view(message_type, version, codec.to_json(message_type, record))


@pytest.mark.parametrize(
    ("message_type", "seed_schema"),
    [("inference_request", "InferenceRequestMessage"), ("inference_response", "InferenceResponseMessage"),
     ("lifecycle_event", "LifecycleEventMessage")],
)
def test_seed_schemas_accept_our_json(message_type: str, seed_schema: str) -> None:
    view = codec.to_json(message_type, sample(message_type))
    errors = list(_seed_validator(seed_schema).iter_errors(view))
    assert errors == [], [e.message for e in errors]


def test_failure_response_matches_the_seed_too() -> None:
    record = sample("inference_response") | {"status": "failure", "output_data": None,
                                             "error": {"code": "INFERENCE_TIMEOUT", "message": "deadline passed"}}
    view = codec.to_json("inference_response", record)
    assert list(_seed_validator("InferenceResponseMessage").iter_errors(view)) == []


def test_seed_schemas_are_the_seeds_text() -> None:
    # The seed document is not in the repository; its schemas are, verbatim, with the seed's titles.
    for name in ("InferenceRequestMessage", "InferenceResponseMessage", "LifecycleEventMessage"):
        schema = json.loads((SEED / f"{name}.json").read_text())
        assert schema["title"] == name and schema["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_the_lifecycle_topic_takes_exactly_the_seeds_five_event_types() -> None:
    seed = json.loads((SEED / "LifecycleEventMessage.json").read_text())["properties"]["event_type"]["enum"]
    assert list(MODEL_LIFECYCLE_EVENT_TYPES) == seed
    current = default_schemas().versions("lifecycle_event")[-1]
    ours = json.loads(Path(JSON_DIR / "lifecycle_event" / f"v{current}.schema.json").read_text())
    assert ours["properties"]["event_type"]["enum"] == seed and "model_id" in ours["required"]
    fleet = json.loads(Path(JSON_DIR / "fleet_event" / "v1.schema.json").read_text())
    assert fleet["properties"]["event_type"]["enum"] == list(FLEET_EVENT_TYPES)
    assert not set(seed) & set(FLEET_EVENT_TYPES)


@pytest.mark.parametrize("event_type", MODEL_LIFECYCLE_EVENT_TYPES)
def test_every_model_lifecycle_event_fits_the_seed(event_type: str) -> None:
    record = sample("lifecycle_event") | lifecycle_record(event_type, "m1", worker="w-1", load_ms=3.5)
    view = codec.to_json("lifecycle_event", codec.decode(codec.encode("lifecycle_event", record)[0]).record)
    assert list(_seed_validator("LifecycleEventMessage").iter_errors(view)) == []


def test_an_event_on_the_wrong_side_is_refused() -> None:
    with pytest.raises(ValueError, match="not a seed 001 lifecycle event"):
        lifecycle_record("device_online", "d1")
    with pytest.raises(ValueError, match="not a fleet event"):
        fleet_record("model_loaded", "model", "m1")
    with pytest.raises(ValueError, match="not a fleet event"):
        fleet_record("device_online", "job", "j1")


def test_fleet_events_are_ours_and_fail_the_seeds_lifecycle_schema() -> None:
    record = sample("fleet_event") | fleet_record("device_online", "device", "d1", last_heartbeat="now")
    view = codec.to_json("fleet_event", record)
    validate_json_view("fleet_event", 1, view)
    assert list(_seed_validator("LifecycleEventMessage").iter_errors(view))  # why they have a topic of their own


def test_formats_are_checked() -> None:
    view = codec.to_json("lifecycle_event", sample("lifecycle_event"))
    for field, bad in (("timestamp", "yesterday"), ("timestamp", "2024-02-30T10:00:00Z"), ("event_id", "e-1")):
        errors = list(_seed_validator("LifecycleEventMessage").iter_errors(view | {field: bad}))
        assert [e.path[0] for e in errors] == [field], (field, bad)
    with pytest.raises(SchemaValidationError, match="timestamp"):
        validate_json_view("lifecycle_event", 3, view | {"timestamp": "10:00"})
