"""Input validation of inference requests: one JSON Schema (draft 7) per task type.

The ingress checks ``input_data`` and ``parameters`` here before anything rides Kafka, so a
malformed request is a 400 with every field error named instead of a round trip to a worker.
The schemas accept what the built-in runtimes accept (``consumers/inference/builtin.py``)
and, like seed 001's ``InputData``, allow extra fields. Workers still validate what only
the model can judge (an image that does not decode, a direction it does not serve).

The same schemas drive ``POST /api/v1/pipelines/validate`` (``core/serving/pipelines.py``):
``issues`` returns each field error with a ``hint`` derived from the violated schema keyword
("Value must be a number between 0.0 and 1.0"), so hints never drift from the rules.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft7Validator, ValidationError

from core.errors import DomainError, ErrorKind
from core.task_types import GENERIC_TASK_TYPE, SERVED_TASK_TYPES, TaskType

# Per-request limits mirror the built-in runtimes' limits, so the ingress refuses what a
# worker would refuse anyway.
MAX_TEXTS = 256
MAX_IMAGES = 32
MAX_PROMPTS = 100
MAX_PROMPT_CHARS = 8192

_TEXT = {"type": "string"}
_TEXTS = {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_TEXTS}
_IMAGE = {"type": "string", "minLength": 1, "description": "base64 or a data:image/...;base64, URL"}


def _one_of_fields(*fields: str) -> dict[str, Any]:
    # "x-error" is ours (jsonschema ignores unknown keywords): a readable message for anyOf.
    return {"anyOf": [{"required": [f]} for f in fields],
            "x-error": f"needs one of: {', '.join(repr(f) for f in fields)}"}


INPUT_SCHEMAS: dict[TaskType, dict[str, Any]] = {
    TaskType.TXT2EMBED: {
        "type": "object",
        "properties": {"text": {"oneOf": [_TEXT, _TEXTS]}, "texts": _TEXTS},
        **_one_of_fields("text", "texts"),
    },
    TaskType.IMG2EMBED: {
        "type": "object",
        "properties": {"image": _IMAGE,
                       "images": {"type": "array", "items": _IMAGE, "minItems": 1, "maxItems": MAX_IMAGES}},
        **_one_of_fields("image", "images"),
    },
    TaskType.IMG2TXT: {
        "type": "object",
        "properties": {"image": _IMAGE},
        "required": ["image"],
    },
    TaskType.TXT2TXT: {
        "type": "object",
        "properties": {
            "text": {"oneOf": [_TEXT, {**_TEXTS, "maxItems": MAX_PROMPTS}]},
            "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS},
            "prompts": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_PROMPTS},
            "messages": {
                "type": "array", "minItems": 1,
                "items": {"type": "object", "required": ["role", "content"],
                          "properties": {"role": {"enum": ["system", "user", "assistant"]},
                                         "content": {"type": "string", "minLength": 1}}},
            },
        },
        **_one_of_fields("messages", "prompts", "prompt", "text"),
    },
    TaskType.TXT2IMG: {
        "type": "object",
        "properties": {"text": {"type": "string", "minLength": 1}, "prompt": {"type": "string", "minLength": 1},
                       "negative_prompt": {"type": "string"}},
        **_one_of_fields("text", "prompt"),
    },
}

# {"inputs": [[0.1, 0.2], ...]} (rows, batch dimension first) or a single row [0.1, 0.2]: numbers,
# possibly nested; the worker checks the shape against the model's declared input.
_NUMBERS: dict[str, Any] = {"type": "array", "minItems": 1,
                            "items": {"anyOf": [{"type": "number"}, {"type": "array"}]}}
# Kept apart from INPUT_SCHEMAS/PARAMETER_SCHEMAS, which list the seed's task types only (TaskType).
GENERIC_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"inputs": _NUMBERS},
    "required": ["inputs"],
}
GENERIC_PARAMETER_SCHEMA: dict[str, Any] = {"type": "object"}

_SAMPLING = {
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 4096},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": 0, "maximum": 200},
    "stop": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
}

PARAMETER_SCHEMAS: dict[TaskType, dict[str, Any]] = {
    TaskType.TXT2EMBED: {"type": "object", "properties": {"normalize": {"type": "boolean"}}},
    TaskType.IMG2EMBED: {"type": "object", "properties": {"normalize": {"type": "boolean"}}},
    TaskType.IMG2TXT: {"type": "object", "properties": {"min_score": {"type": "number", "minimum": 0, "maximum": 1}}},
    TaskType.TXT2TXT: {"type": "object",
                "properties": {**_SAMPLING, "direction": {"enum": ["en-pt", "pt-en"]}}},
    TaskType.TXT2IMG: {"type": "object",
                "properties": {"width": {"type": "integer", "minimum": 64, "maximum": 2048},
                               "height": {"type": "integer", "minimum": 64, "maximum": 2048},
                               "steps": {"type": "integer", "minimum": 1, "maximum": 500},
                               "guidance_scale": {"type": "number", "minimum": 0, "maximum": 50},
                               "seed": {"type": "integer"}}},
}


def compile_schema(schema: Mapping[str, Any]) -> Draft7Validator:
    """A checked draft-7 validator for ``schema`` (a broken schema fails at import, not per request)."""
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


_VALIDATORS: dict[tuple[str, str], Draft7Validator] = {}
for _task in TaskType:
    for _part, _schemas in (("input_data", INPUT_SCHEMAS), ("parameters", PARAMETER_SCHEMAS)):
        _VALIDATORS[(_task, _part)] = compile_schema(_schemas[_task])
_VALIDATORS[(GENERIC_TASK_TYPE, "input_data")] = compile_schema(GENERIC_INPUT_SCHEMA)
_VALIDATORS[(GENERIC_TASK_TYPE, "parameters")] = compile_schema(GENERIC_PARAMETER_SCHEMA)


@dataclass(frozen=True)
class FieldIssue:
    """One field error: where (dotted path), what, and how to fix it."""

    field: str
    message: str
    hint: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message, "hint": self.hint}


_MAX_QUOTED = 60


def _field(root: str, error: ValidationError) -> str:
    return ".".join([root, *(str(p) for p in error.absolute_path)])


def _message(error: ValidationError) -> str:
    custom = error.schema.get("x-error") if isinstance(error.schema, dict) else None
    if isinstance(custom, str):
        return custom
    if error.validator == "oneOf":
        return f"{error.instance!r:.60} must be a string or a non-empty list of strings"
    # jsonschema quotes the whole offending value; a long one (an 8 KB prompt, a base64 image) is shortened.
    quoted = repr(error.instance)
    if len(quoted) > _MAX_QUOTED:
        return str(error.message).replace(quoted, f"{quoted[:_MAX_QUOTED]}...")
    return str(error.message)


# Hints: derived from the schema keyword that failed, so they state the rule the schema enforces.
_A = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "a boolean (true or false)",
      "array": "a list", "object": "an object", "null": "null"}
_PLURAL = {"integer": "integers", "number": "numbers", "string": "strings", "boolean": "booleans",
           "array": "lists", "object": "objects"}


def _bound(value: Any, schema: Mapping[str, Any]) -> str:
    # A "number" bound reads as a float (0.0, 1.0), an "integer" bound as an integer.
    return repr(float(value)) if schema.get("type") == "number" else str(value)


def _span(schema: Mapping[str, Any], low_key: str, high_key: str, unit: str = "") -> str:
    low, high = schema.get(low_key), schema.get(high_key)
    suffix = f" {unit}" if unit else ""
    if low is not None and high is not None:
        return f"between {_bound(low, schema)} and {_bound(high, schema)}{suffix}"
    if low is not None:
        return f"at least {_bound(low, schema)}{suffix}"
    if high is not None:
        return f"at most {_bound(high, schema)}{suffix}"
    return ""


def _describe(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        item_kind = items.get("type") if isinstance(items, dict) else None
        low, high = schema.get("minItems"), schema.get("maxItems")
        count = (f"{low} to {high} " if low is not None and high is not None
                 else f"{_span(schema, 'minItems', 'maxItems')} " if low is not None or high is not None else "")
        return f"a list of {count}{_PLURAL.get(str(item_kind), 'items')}"
    if kind == "string" and schema.get("minLength") == 1 and "maxLength" not in schema:
        return "a non-empty string"
    if isinstance(kind, str):
        text = _A.get(kind, kind)
        span = _span(schema, "minimum", "maximum") if kind in ("integer", "number") else ""
        return f"{text} {span}" if span else text
    if isinstance(kind, list):
        return " or ".join(_A.get(str(k), str(k)) for k in kind)
    if "enum" in schema:
        return "one of: " + ", ".join(json.dumps(v) for v in schema["enum"])
    return "a valid value"


def _range_hint(schema: Mapping[str, Any], error: ValidationError) -> str:
    return f"Value must be {_span(schema, 'minimum', 'maximum') or 'within the allowed range'}"


def _kind_hint(schema: Mapping[str, Any], error: ValidationError) -> str:
    return f"Value must be {_describe(schema)}"


def _count_hint(schema: Mapping[str, Any], error: ValidationError) -> str:
    return f"List must have {_span(schema, 'minItems', 'maxItems', 'items')}"


def _length_hint(schema: Mapping[str, Any], error: ValidationError) -> str:
    if schema.get("minLength") == 1 and "maxLength" not in schema:
        return "Value must be a non-empty string"
    return f"Text must be {_span(schema, 'minLength', 'maxLength', 'characters')} long"


def _required_hint(schema: Mapping[str, Any], error: ValidationError) -> str:
    present = error.instance if isinstance(error.instance, dict) else {}
    missing = [f for f in schema.get("required", ()) if f not in present]
    return f"Add the required field{'s' if len(missing) > 1 else ''} {', '.join(repr(f) for f in missing)}"


def _options_hint(schema: Mapping[str, Any], error: ValidationError) -> str:
    options = [_describe(s) for s in schema.get(str(error.validator), ()) if isinstance(s, dict)]
    return f"Value must be {' or '.join(options)}"


def _any_of_hint(schema: Mapping[str, Any], error: ValidationError) -> str:
    # ``_one_of_fields`` builds anyOf from one-field "required" alternatives: name the fields.
    alternatives = [s.get("required") for s in schema.get("anyOf", ()) if isinstance(s, dict)]
    if alternatives and all(isinstance(a, list) and len(a) == 1 for a in alternatives):
        return "Add one of the fields " + ", ".join(repr(a[0]) for a in alternatives if isinstance(a, list))
    return _options_hint(schema, error)


# The violated keyword picks the hint, so a hint states the rule the schema enforces.
_HINTS: dict[str, Callable[[Mapping[str, Any], ValidationError], str]] = {
    **dict.fromkeys(("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"), _range_hint),
    **dict.fromkeys(("type", "enum", "const"), _kind_hint),
    **dict.fromkeys(("minItems", "maxItems"), _count_hint),
    **dict.fromkeys(("minLength", "maxLength"), _length_hint),
    "required": _required_hint,
    "anyOf": _any_of_hint,
    "oneOf": _options_hint,
}


def _hint(error: ValidationError) -> str:
    schema: Mapping[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    custom = schema.get("x-hint")
    if isinstance(custom, str):
        return custom
    rule = _HINTS.get(str(error.validator))
    return rule(schema, error) if rule is not None else "Fix the value to match the documented schema"


def _unknown_fields(root: str, error: ValidationError) -> list[FieldIssue]:
    known = sorted(error.schema.get("properties", {})) if isinstance(error.schema, dict) else []
    extra = sorted(str(k) for k in error.instance if k not in known) if isinstance(error.instance, dict) else []
    issues = []
    for key in extra:
        close = difflib.get_close_matches(key, known, n=1)
        guess = f"Did you mean {close[0]!r}? " if close else ""
        issues.append(FieldIssue(f"{_field(root, error)}.{key}", "is not a known field",
                                 f"{guess}Allowed fields: {', '.join(known)}"))
    return issues


def schema_issues(validator: Draft7Validator, root: str, value: Any) -> list[FieldIssue]:
    """Every violation of ``validator``'s schema by ``value``, paths prefixed with ``root``, in path order."""
    issues: list[FieldIssue] = []
    found: Iterable[ValidationError] = validator.iter_errors(value)
    for error in sorted(found, key=lambda e: [str(p) for p in e.absolute_path]):
        if error.validator == "additionalProperties":
            issues.extend(_unknown_fields(root, error))
        else:
            issues.append(FieldIssue(_field(root, error), _message(error), _hint(error)))
    return sorted(issues, key=lambda i: i.field.split("."))  # unknown fields take their place by name


def task_issues(task_type: str, part: str, value: Any, *, root: str | None = None) -> list[FieldIssue]:
    """Every field error of ``part`` (``input_data`` or ``parameters``) of a ``task_type`` request, with hints."""
    if task_type not in SERVED_TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}")
    if part not in ("input_data", "parameters"):
        raise ValueError(f"unknown request part {part!r}")
    return schema_issues(_VALIDATORS[(task_type, part)], root or part, value)


def field_errors(task_type: str, input_data: Any, parameters: Any) -> list[dict[str, str]]:
    """Every field error of a request for ``task_type``, as ``{"field", "message"}`` (seed 001 ValidationError)."""
    if task_type not in SERVED_TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}")
    return [{"field": issue.field, "message": issue.message}
            for part, value in (("input_data", input_data), ("parameters", parameters))
            for issue in task_issues(task_type, part, value)]


def validate_request(task_type: str, input_data: Any, parameters: Any) -> None:
    """Raise 400 ``INVALID_INPUT`` naming every offending field, or return."""
    errors = field_errors(task_type, input_data, parameters)
    if errors:
        first = errors[0]
        raise DomainError(
            ErrorKind.INVALID, "INVALID_INPUT", f"Invalid input for {task_type}: '{first['field']}' {first['message']}",
            details={"task_type": task_type, "errors": errors},
            hint=f"See the {task_type} input schema in the API documentation and fix the listed fields.",
        )
