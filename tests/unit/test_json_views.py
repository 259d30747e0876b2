"""JSON views validate against our JSON Schemas and against seed 001 §4.2's schemas."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from schemas.base import JSON_DIR
from schemas.codec import Codec, default_schemas
from schemas.json_views import generate, validate_json_view
from tests.samples import sample

pytestmark = pytest.mark.unit
codec = Codec()
SEED = JSON_DIR / "seed"


def _seed_validator(name: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SEED / f"{name}.json").read_text())
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


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


def test_lifecycle_types_extend_the_seed_enum() -> None:
    seed = json.loads((SEED / "LifecycleEventMessage.json").read_text())["properties"]["event_type"]["enum"]
    ours = json.loads(Path(JSON_DIR / "lifecycle_event" / "v2.schema.json").read_text())
    extended = ours["properties"]["event_type"]["enum"]
    assert set(seed) < set(extended)
    assert {"device_online", "round_completed", "job_cancelled"} <= set(extended)
