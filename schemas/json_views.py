"""JSON Schemas of the JSON view of every message type and version.

They are generated from the Avro schemas (``python -m schemas.json_views`` rewrites
``schemas/json/``) and committed; a unit test fails when a committed file is stale.
Event types are Avro strings (an Avro enum could never gain a symbol old readers lack), so the
JSON Schemas carry their enums (``schemas.event_types``): lifecycle events from v3 on exactly seed
001 §4.2.3's five, fleet events ours. ``FORMAT_CHECKER`` checks ``uuid`` and ``date-time``.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from schemas.base import AVRO_DIR, JSON_DIR, SchemaValidationError
from schemas.event_types import FLEET_EVENT_TYPES, FLEET_SUBJECT_KINDS, MODEL_LIFECYCLE_EVENT_TYPES

# What lifecycle_event v1 and v2 carried before fleet events got their own topic: their JSON
# Schemas keep it, since they describe messages already written.
_LIFECYCLE_V1_V2_EVENT_TYPES = [
    # seed 001 §4.2.3
    "model_load_requested", "model_loaded", "model_load_failed", "model_unloaded", "model_evicted",
    # models in the catalog
    "model_registered", "model_version_created", "model_deleted",
    # devices
    "device_registered", "device_online", "device_stale", "device_offline",
    # rounds
    "round_started", "device_selected", "update_accepted", "update_rejected", "round_aggregating",
    "round_completed", "round_failed", "round_cancelled", "round_aggregation_retried",
    # jobs
    "job_queued", "job_started", "job_completed", "job_failed", "job_cancelled",
    # learning graphs
    "retraining_requested", "retraining_started", "retraining_not_started",
]
_PRIMITIVE = {"string": {"type": "string"}, "int": {"type": "integer"}, "long": {"type": "integer"},
              "double": {"type": "number"}, "float": {"type": "number"}, "boolean": {"type": "boolean"},
              "bytes": {"type": "string", "contentEncoding": "base64"}, "null": {"type": "null"}}
_FORMATS = {"message_id": "uuid", "correlation_id": "uuid", "causation_id": "uuid", "event_id": "uuid"}


def _type_schema(avro_type: Any, field: dict[str, Any]) -> dict[str, Any]:
    if field.get("tributary.json"):
        return {"type": "object"}
    if isinstance(avro_type, list):
        branches = [t for t in avro_type if t != "null"]
        # The JSON view omits nulls, so an optional field is simply not required.
        return _type_schema(branches[0], field) if len(branches) == 1 else {"anyOf": [
            _type_schema(b, field) for b in branches]}
    if isinstance(avro_type, str):
        return dict(_PRIMITIVE[avro_type])
    kind = avro_type.get("type")
    if avro_type.get("logicalType") == "timestamp-millis":
        return {"type": "string", "format": "date-time"}
    if kind == "enum":
        return {"type": "string", "enum": list(avro_type["symbols"])}
    if kind == "array":
        return {"type": "array", "items": _type_schema(avro_type["items"], {})}
    if kind == "record":
        return _record_schema(avro_type)
    raise ValueError(f"unsupported Avro type {avro_type!r}")


def _record_schema(record: dict[str, Any]) -> dict[str, Any]:
    properties = {}
    for field in record["fields"]:
        prop = _type_schema(field["type"], field)
        if field["name"] in _FORMATS:
            prop["format"] = _FORMATS[field["name"]]
        if field.get("doc"):
            prop["description"] = field["doc"]
        properties[field["name"]] = prop
    required = [f["name"] for f in record["fields"] if "default" not in f]
    return {"type": "object", "required": required, "properties": properties}


def json_schema_for(message_type: str, raw: dict[str, Any], version: int) -> dict[str, Any]:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://tributary.dev/schemas/{message_type}/v{version}.schema.json",
        "title": f"{raw['name']} v{version}",
        "description": raw.get("doc", ""),
        **_record_schema(raw),
    }
    properties = schema["properties"]
    if message_type == "lifecycle_event":
        properties["event_type"]["enum"] = (list(MODEL_LIFECYCLE_EVENT_TYPES) if version >= 3
                                            else _LIFECYCLE_V1_V2_EVENT_TYPES)
    elif message_type == "fleet_event":
        properties["event_type"]["enum"] = list(FLEET_EVENT_TYPES)
        properties["subject_kind"]["enum"] = list(FLEET_SUBJECT_KINDS)
    return schema


def generate(avro_dir: Path = AVRO_DIR) -> dict[Path, str]:
    """Every JSON Schema file as it should be on disk."""
    files = {}
    for path in sorted(avro_dir.glob("*/v*.avsc")):
        message_type, version = path.parent.name, int(path.stem[1:])
        schema = json_schema_for(message_type, json.loads(path.read_text()), version)
        files[JSON_DIR / message_type / f"v{version}.schema.json"] = json.dumps(schema, indent=2) + "\n"
    return files


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")

# Every format jsonschema knows (uuid among them), plus date-time, which jsonschema checks only
# with an optional package installed and otherwise passes silently.
FORMAT_CHECKER = jsonschema.FormatChecker()


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # formats constrain strings only; "type" catches the rest
    if not _RFC3339.fullmatch(value):
        return False
    datetime.fromisoformat(value.upper().replace("Z", "+00:00"))  # the date and time exist
    return True


FORMAT_CHECKER.checks("date-time", raises=ValueError)(_is_date_time)


@cache
def _validator(message_type: str, version: int) -> jsonschema.Draft202012Validator:
    path = JSON_DIR / message_type / f"v{version}.schema.json"
    return jsonschema.Draft202012Validator(json.loads(path.read_text()), format_checker=FORMAT_CHECKER)


def validate_json_view(message_type: str, version: int, doc: dict[str, Any]) -> None:
    errors = sorted(_validator(message_type, version).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "(root)"
        raise SchemaValidationError(f"{message_type} v{version} JSON at '{where}': {first.message}")


if __name__ == "__main__":
    for target, content in generate().items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        print(target.relative_to(Path.cwd()) if target.is_relative_to(Path.cwd()) else target, file=sys.stderr)
