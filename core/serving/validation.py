"""Input validation of inference requests: one JSON Schema (draft 7) per task type.

The ingress checks ``input_data`` and ``parameters`` here before anything rides Kafka, so a
malformed request is a 400 with every field error named instead of a round trip to a worker.
The schemas accept what the built-in runtimes accept (``consumers/inference/builtin.py``)
and, like seed 001's ``InputData``, allow extra fields. Workers still validate what only
the model can judge (an image that does not decode, a direction it does not serve).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jsonschema import Draft7Validator, ValidationError

from core.errors import DomainError, ErrorKind

TASK_TYPES = ("txt2embed", "img2embed", "img2txt", "txt2txt", "txt2img")

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


INPUT_SCHEMAS: dict[str, dict[str, Any]] = {
    "txt2embed": {
        "type": "object",
        "properties": {"text": {"oneOf": [_TEXT, _TEXTS]}, "texts": _TEXTS},
        **_one_of_fields("text", "texts"),
    },
    "img2embed": {
        "type": "object",
        "properties": {"image": _IMAGE,
                       "images": {"type": "array", "items": _IMAGE, "minItems": 1, "maxItems": MAX_IMAGES}},
        **_one_of_fields("image", "images"),
    },
    "img2txt": {
        "type": "object",
        "properties": {"image": _IMAGE},
        "required": ["image"],
    },
    "txt2txt": {
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
    "txt2img": {
        "type": "object",
        "properties": {"text": {"type": "string", "minLength": 1}, "prompt": {"type": "string", "minLength": 1},
                       "negative_prompt": {"type": "string"}},
        **_one_of_fields("text", "prompt"),
    },
}

_SAMPLING = {
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 4096},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": 0, "maximum": 200},
    "stop": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
}

PARAMETER_SCHEMAS: dict[str, dict[str, Any]] = {
    "txt2embed": {"type": "object", "properties": {"normalize": {"type": "boolean"}}},
    "img2embed": {"type": "object", "properties": {"normalize": {"type": "boolean"}}},
    "img2txt": {"type": "object", "properties": {"min_score": {"type": "number", "minimum": 0, "maximum": 1}}},
    "txt2txt": {"type": "object",
                "properties": {**_SAMPLING, "direction": {"enum": ["en-pt", "pt-en"]}}},
    "txt2img": {"type": "object",
                "properties": {"width": {"type": "integer", "minimum": 64, "maximum": 2048},
                               "height": {"type": "integer", "minimum": 64, "maximum": 2048},
                               "steps": {"type": "integer", "minimum": 1, "maximum": 500},
                               "guidance_scale": {"type": "number", "minimum": 0, "maximum": 50},
                               "seed": {"type": "integer"}}},
}

_VALIDATORS: dict[tuple[str, str], Draft7Validator] = {}
for _task in TASK_TYPES:
    for _part, _schemas in (("input_data", INPUT_SCHEMAS), ("parameters", PARAMETER_SCHEMAS)):
        Draft7Validator.check_schema(_schemas[_task])
        _VALIDATORS[(_task, _part)] = Draft7Validator(_schemas[_task])


def _field(root: str, error: ValidationError) -> str:
    return ".".join([root, *(str(p) for p in error.absolute_path)])


def _message(error: ValidationError) -> str:
    custom = error.schema.get("x-error") if isinstance(error.schema, dict) else None
    if isinstance(custom, str):
        return custom
    if error.validator == "oneOf":
        return f"{error.instance!r:.60} must be a string or a non-empty list of strings"
    return str(error.message)


def field_errors(task_type: str, input_data: Any, parameters: Any) -> list[dict[str, str]]:
    """Every field error of a request for ``task_type``, as ``{"field", "message"}`` (seed 001 ValidationError)."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}")
    errors: list[dict[str, str]] = []
    for part, value in (("input_data", input_data), ("parameters", parameters)):
        found: Iterable[ValidationError] = _VALIDATORS[(task_type, part)].iter_errors(value)
        for error in sorted(found, key=lambda e: [str(p) for p in e.absolute_path]):
            errors.append({"field": _field(part, error), "message": _message(error)})
    return errors


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
