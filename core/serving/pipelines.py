"""Seed 004 config validation: ``POST /api/v1/pipelines/validate`` without submitting a job.

A *pipeline* here is an inference configuration for one model. Its name is a model id the
platform knows: a built-in model (``consumers/inference/builtin.py``) or a model registered in
the catalog with a ``task_type`` (``core/registry.py``). Its config is what an inference
request would carry::

    {"pipeline_name": "sentence-transformers/all-MiniLM-L6-v2",
     "config": {"input_data": {...}, "parameters": {...}, "priority": "high", "timeout_seconds": 30}}

- The answer is 200 for a valid *and* an invalid config (``valid`` says which), listing every
  field error with a field path, a message and a hint (seed 004).
- Task-specific rules are the task type's JSON Schemas in ``core/serving/validation.py``, the
  very ones the sync inference endpoint enforces; priority, timeout and size limits are the
  inference service's own constants. Nothing here restates a rule.
- ``input_data`` is optional: a config without it validates only what it carries.
- An unknown pipeline is 404 ``PIPELINE_NOT_FOUND``; a body that is not
  ``{"pipeline_name": str, "config": object}`` is 400 ``INVALID_CONFIG`` (seed 004's codes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from core.errors import DomainError, ErrorKind
from core.fleet.models import CatalogModel
from core.registry import MODEL_ID
from core.serving.service import MAX_TIMEOUT_S, MIN_TIMEOUT_S
from core.serving.validation import FieldIssue, compile_schema, schema_issues, task_issues
from core.task_types import TaskType
from topology.topics import Priority

MAX_PIPELINE_NAME = 200
REQUEST_FIELDS = ("pipeline_name", "config")
CONFIG_FIELDS = ("input_data", "parameters", "priority", "timeout_seconds")

# The request-wide part of a config; input_data and parameters are checked per task type.
CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "input_data": {},
        "parameters": {},
        "priority": {"enum": [p.value for p in Priority]},
        "timeout_seconds": {"type": "integer", "minimum": MIN_TIMEOUT_S, "maximum": MAX_TIMEOUT_S},
    },
    "additionalProperties": False,
}
_CONFIG = compile_schema(CONFIG_SCHEMA)


class ModelLookup(Protocol):
    """The registry (``core.registry.RegistryService``): raises ``MODEL_NOT_FOUND`` for an unknown id."""

    async def get(self, model_id: str) -> CatalogModel: ...


@dataclass(frozen=True)
class Pipeline:
    name: str
    task_type: str
    source: str  # "builtin" or "registry"


def malformed(issues: list[FieldIssue]) -> DomainError:
    first = issues[0]
    where = f"'{first.field}' " if first.field else ""
    return DomainError(
        ErrorKind.INVALID, "INVALID_CONFIG", f"Malformed validation request: {where}{first.message}",
        details={"errors": [i.as_dict() for i in issues]},
        hint='Send {"pipeline_name": "<model id>", "config": {...}}; an invalid config itself is answered '
             '200 with "valid": false.',
    )


def parse_request(raw: bytes) -> tuple[str, dict[str, Any]]:
    """``(pipeline_name, config)`` of a request body, or 400 ``INVALID_CONFIG`` naming every shape error."""
    try:
        payload = json.loads(raw)
    except ValueError:  # invalid JSON or not UTF-8
        raise malformed([FieldIssue("", "the body is not valid JSON",
                                    "Send a JSON object with Content-Type: application/json")]) from None
    except RecursionError:  # nested deeper than the parser goes (~1,000 levels): a client's body, not our bug
        raise malformed([FieldIssue("", "the body is nested too deeply",
                                    "Send a JSON object nested at most a few hundred levels")]) from None
    if not isinstance(payload, dict):
        raise malformed([FieldIssue("", "the body must be a JSON object", "Value must be an object")])
    issues: list[FieldIssue] = []
    name = payload.get("pipeline_name")
    if "pipeline_name" not in payload:
        issues.append(FieldIssue("pipeline_name", "is required", "Name a built-in or registered model id"))
    elif not isinstance(name, str) or not 1 <= len(name) <= MAX_PIPELINE_NAME:
        issues.append(FieldIssue("pipeline_name", f"must be a string of 1 to {MAX_PIPELINE_NAME} characters",
                                 "Name a built-in or registered model id"))
    config = payload.get("config")
    if "config" not in payload:
        issues.append(FieldIssue("config", "is required", f"Send an object with any of: {', '.join(CONFIG_FIELDS)}"))
    elif not isinstance(config, dict):
        issues.append(FieldIssue("config", "must be an object", "Value must be an object"))
    for key in sorted(str(k) for k in payload if k not in REQUEST_FIELDS):
        issues.append(FieldIssue(key, "is not a known field", f"Allowed fields: {', '.join(REQUEST_FIELDS)}"))
    if issues:
        raise malformed(issues)
    assert isinstance(name, str) and isinstance(config, dict)
    return name, config


def config_issues(task_type: str, config: Mapping[str, Any], max_input_bytes: int) -> list[FieldIssue]:
    """Every field error of ``config`` for a ``task_type`` pipeline (empty: valid), paths rooted at ``config``."""
    found = schema_issues(_CONFIG, "config", dict(config))
    parameters = config.get("parameters", {})
    if "input_data" in config:
        found += task_issues(task_type, "input_data", config["input_data"], root="config.input_data")
    found += task_issues(task_type, "parameters", parameters, root="config.parameters")
    if "input_data" in config:
        # The same measure as InferenceService: requests ride Kafka, whose messages are bounded.
        size = (len(json.dumps(config["input_data"], separators=(",", ":")))
                + len(json.dumps(parameters, separators=(",", ":"))))
        if size > max_input_bytes:
            found.append(FieldIssue("config.input_data",
                                    f"input_data and parameters take {size} bytes; the limit is {max_input_bytes}",
                                    "Send smaller inputs (e.g. resize images) or split the request"))
    return found


class PipelineValidator:
    def __init__(self, registry: ModelLookup, *, builtins: Mapping[str, str], max_input_bytes: int) -> None:
        self.registry = registry
        self.builtins = builtins  # model id -> task type, e.g. InferenceService.models
        self.max_input_bytes = max_input_bytes

    def _not_found(self, name: str, why: str = "not found in registry") -> DomainError:
        shown = name[:MAX_PIPELINE_NAME]
        return DomainError(
            ErrorKind.NOT_FOUND, "PIPELINE_NOT_FOUND", f"Pipeline '{shown}' {why}",
            details={"pipeline_name": shown},
            hint=f"Use a built-in model ({', '.join(sorted(self.builtins))}) or a registered model that has a "
                 "task_type (GET /api/v1/models?task_type=...).",
        )

    async def resolve(self, name: str) -> Pipeline:
        """The pipeline ``name`` names: a built-in model first (what the workers serve), else the registry."""
        builtin = self.builtins.get(name)
        if builtin is not None:
            return Pipeline(name, builtin, "builtin")
        if not MODEL_ID.match(name):
            raise self._not_found(name)  # no registered id looks like this
        try:
            model = await self.registry.get(name)
        except DomainError as exc:
            if exc.code == "MODEL_NOT_FOUND":
                raise self._not_found(name) from None
            raise
        if not TaskType.has(model.task_type):
            raise self._not_found(name, "is a catalog model without a serving task_type")
        return Pipeline(name, str(model.task_type), "registry")

    async def validate(self, raw: bytes) -> dict[str, Any]:
        """Seed 004's answer for one request body: ``{valid, pipeline_name, task_type, source, errors, ...}``."""
        started = time.perf_counter()
        name, config = parse_request(raw)
        pipeline = await self.resolve(name)
        found = config_issues(pipeline.task_type, config, self.max_input_bytes)
        return {
            "valid": not found,
            "pipeline_name": pipeline.name,
            "task_type": pipeline.task_type,
            "source": pipeline.source,
            "errors": [issue.as_dict() for issue in found],
            "validation_time_ms": round((time.perf_counter() - started) * 1000.0, 3),
        }
