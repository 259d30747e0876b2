"""Seed 001 §3 messages <-> the dicts the domain core speaks (the same ones REST renders as JSON).

Only shapes change here; every rule lives in the core. Where proto3 cannot say what JSON says:

- ``InputData``'s ``oneof data`` becomes ``{"text": ...}``, ``{"texts": [...]}``, ``{"image": base64}``
  or ``{"images": [...]}``; other task inputs (``prompt``, ``messages``, a tensor model's
  ``inputs``) come in ``custom_data`` and are merged beside it.
- ``google.protobuf.Struct`` numbers are doubles: integral ones become ints again, so
  ``max_tokens: 64`` reaches the worker as 64, not 64.0.
- ``InferenceResponse`` has no request id field: the request's ``request_id`` (one is made when
  the client sends none) is echoed in ``output_data.custom_data.request_id``, and in
  ``error.details.request_id`` of a failed stream message, so stream clients can match answers.
- Unset proto3 scalars are zero values: ``priority`` UNSPECIFIED means medium and
  ``timeout_seconds`` 0 means 60, as REST's defaults.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from pydantic import BaseModel, ValidationError

from api.errors import validation_failed
from api.schemas_fleet import ModelOut
from core.errors import invalid
from core.fleet.models import CatalogModel
from core.task_types import TaskType
from modelmora.v1 import common_pb2, inference_pb2, management_pb2, registry_pb2

DEFAULT_TIMEOUT_S = 60
BodyT = TypeVar("BodyT", bound=BaseModel)

PRIORITIES: dict[int, str] = {
    common_pb2.PRIORITY_UNSPECIFIED: "medium",
    common_pb2.PRIORITY_LOW: "low",
    common_pb2.PRIORITY_MEDIUM: "medium",
    common_pb2.PRIORITY_HIGH: "high",
}
JOB_STATUSES: dict[str, common_pb2.JobStatus] = {
    "queued": common_pb2.JOB_STATUS_QUEUED,
    "processing": common_pb2.JOB_STATUS_PROCESSING,
    "completed": common_pb2.JOB_STATUS_COMPLETED,
    "failed": common_pb2.JOB_STATUS_FAILED,
    "cancelled": common_pb2.JOB_STATUS_CANCELLED,
}
# Derived from the one TaskType: a new task type without its proto value fails at import.
TASK_TYPES: dict[str, common_pb2.TaskType] = {
    task: getattr(common_pb2, f"TASK_TYPE_{task.name}") for task in TaskType
}
TASK_TYPE_NAMES: dict[int, str] = {number: name for name, number in TASK_TYPES.items()}
MODEL_STATES: dict[str, common_pb2.ModelState] = {
    "unloaded": common_pb2.MODEL_STATE_UNLOADED,
    "loading": common_pb2.MODEL_STATE_LOADING,
    "loaded": common_pb2.MODEL_STATE_LOADED,
    "unhealthy": common_pb2.MODEL_STATE_UNHEALTHY,
}
# output_data keys that have a field of their own in OutputData; the rest go to custom_data
_TYPED_OUTPUTS = ("embedding", "embeddings", "text", "image_url", "image_data")


# --- generic values ---------------------------------------------------------------------------

def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and math.isfinite(value) and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    result: dict[str, Any] = _integral(json_format.MessageToDict(struct))
    return result


def dict_to_struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    # JSON first: datetimes and other non-JSON leaves become strings instead of failing
    struct.update(json.loads(json.dumps(dict(values), default=str)))
    return struct


def timestamp(value: datetime | str | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return stamp


def error_details(details: Mapping[str, Any] | None) -> dict[str, str]:
    """``Error.details`` is map<string, string>: strings stay, the rest is JSON."""
    return {str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in (details or {}).items()}


# --- inference --------------------------------------------------------------------------------

def input_data(message: inference_pb2.InputData) -> dict[str, Any]:
    data = struct_to_dict(message.custom_data) if message.HasField("custom_data") else {}
    kind = message.WhichOneof("data")
    typed: dict[str, Any] = {}
    if kind == "text":
        typed = {"text": message.text}
    elif kind == "text_batch":
        typed = {"texts": list(message.text_batch.texts)}
    elif kind == "image":
        typed = {"image": base64.b64encode(message.image).decode()}
    elif kind == "image_batch":
        typed = {"images": [base64.b64encode(image).decode() for image in message.image_batch.images]}
    clash = sorted(set(typed) & set(data))
    if clash:
        raise invalid("VALIDATION_ERROR", f"input_data.custom_data.{clash[0]} repeats input_data.{kind}.",
                      errors=[{"field": f"input_data.custom_data.{clash[0]}", "message": f"set by input_data.{kind}"}])
    return {**data, **typed}


def priority(value: int) -> str:
    name = PRIORITIES.get(value)
    if name is None:
        raise invalid("VALIDATION_ERROR", f"priority {value} is not a modelmora.v1.Priority.",
                      errors=[{"field": "priority", "message": "must be PRIORITY_LOW, _MEDIUM or _HIGH"}])
    return name


def inference_call(request: inference_pb2.InferenceRequest) -> dict[str, Any]:
    """Keyword arguments of ``InferenceService.infer`` / ``JobService.submit`` (after the principal)."""
    return {
        "model_id": request.model_id,
        "input_data": input_data(request.input_data),
        "parameters": struct_to_dict(request.parameters) if request.HasField("parameters") else {},
        "priority": priority(request.priority),
        "timeout_seconds": request.timeout_seconds or DEFAULT_TIMEOUT_S,
    }


def output_data(values: Mapping[str, Any], request_id: str | None = None) -> inference_pb2.OutputData:
    output = inference_pb2.OutputData()
    embedding, embeddings = values.get("embedding"), values.get("embeddings")
    if isinstance(embedding, list):
        output.embedding.values.extend(float(v) for v in embedding)
    elif isinstance(embeddings, list):
        for row in embeddings:
            output.embedding_batch.embeddings.add().values.extend(float(v) for v in row)
    elif isinstance(values.get("text"), str):
        output.text = values["text"]
    elif isinstance(values.get("image_url"), str):
        output.image_url = values["image_url"]
    elif isinstance(values.get("image_data"), str):
        output.image_data = base64.b64decode(values["image_data"])
    custom = {k: v for k, v in values.items() if k not in _TYPED_OUTPUTS}
    if request_id:
        custom["request_id"] = request_id
    if custom:
        output.custom_data.CopyFrom(dict_to_struct(custom))
    return output


def inference_response(result: Mapping[str, Any], request_id: str | None = None) -> inference_pb2.InferenceResponse:
    """``InferenceService.infer`` / ``JobService.result`` -> ``InferenceResponse``."""
    meta = result.get("metadata") or {}
    metadata = inference_pb2.InferenceMetadata(
        inference_time_ms=float(meta.get("inference_time_ms") or 0.0),
        total_time_ms=float(meta.get("total_time_ms") or 0.0),
        batch_size=int(meta.get("batch_size") or 0),
        device=str(meta.get("device") or "cpu"),
        timestamp=timestamp(meta.get("timestamp") or datetime.now(UTC)),
    )
    return inference_pb2.InferenceResponse(model_id=str(result.get("model_id") or ""),
                                           output_data=output_data(result.get("output_data") or {}, request_id),
                                           metadata=metadata)


def failed_response(model_id: str, error: common_pb2.Error, request_id: str) -> inference_pb2.InferenceResponse:
    """A stream message that failed: the stream goes on, this answer carries the error."""
    error.details["request_id"] = request_id
    return inference_pb2.InferenceResponse(model_id=model_id, error=error,
                                           output_data=output_data({}, request_id))


def job_reference(reference: Mapping[str, Any]) -> inference_pb2.JobReference:
    return inference_pb2.JobReference(job_id=reference["job_id"], status=JOB_STATUSES[reference["status"]],
                                      created_at=timestamp(reference["created_at"]))


def job_status(summary: Mapping[str, Any]) -> inference_pb2.JobStatusResponse:
    response = inference_pb2.JobStatusResponse(
        job_id=summary["job_id"], model_id=summary["model_id"], status=JOB_STATUSES[summary["status"]],
        progress=float(summary.get("progress") or 0.0), created_at=timestamp(summary.get("created_at")),
        started_at=timestamp(summary.get("started_at")), completed_at=timestamp(summary.get("completed_at")),
    )
    error = summary.get("error")
    if error:
        response.error.CopyFrom(common_pb2.Error(code=str(error.get("code") or ""),
                                                 message=str(error.get("message") or "")))
    return response


# --- registry ---------------------------------------------------------------------------------

def resource_requirements(message: common_pb2.ResourceRequirements) -> dict[str, int]:
    """Only the fields that were given: proto3 reads 0 for an unset int."""
    values = {"memory_mb": message.memory_mb, "gpu_vram_mb": message.gpu_vram_mb,
              "cpu_threads": message.cpu_threads}
    return {k: v for k, v in values.items() if v}


def task_type(value: int) -> str:
    name = TASK_TYPE_NAMES.get(value)
    if name is None:
        raise invalid("INVALID_TASK_TYPE", "task_type must be one of TASK_TYPE_TXT2EMBED, _IMG2EMBED, _TXT2IMG, "
                                           "_IMG2TXT or _TXT2TXT.",
                      errors=[{"field": "task_type", "message": "unspecified or unknown"}])
    return name


def model(catalog_model: CatalogModel) -> registry_pb2.Model:
    """The registry view REST renders too (``ModelOut``), as a ``modelmora.v1.Model``."""
    view = ModelOut.fields_of(catalog_model)
    requirements = view["resource_requirements"] or {}
    return registry_pb2.Model(
        model_id=view["model_id"], version=view["version"] or "",
        task_type=TASK_TYPES.get(view["task_type"] or "", common_pb2.TASK_TYPE_UNSPECIFIED),
        display_name=view["display_name"] or "", description=view["description"] or "", status=view["status"],
        resource_requirements=common_pb2.ResourceRequirements(
            memory_mb=int(requirements.get("memory_mb") or 0), gpu_vram_mb=int(requirements.get("gpu_vram_mb") or 0),
            cpu_threads=int(requirements.get("cpu_threads") or 0)),
        config=dict_to_struct(view["config"] or {}), created_at=timestamp(view["created_at"]),
        updated_at=timestamp(view["updated_at"]),
    )


def lock_file(lock: Mapping[str, Any]) -> registry_pb2.LockFile:
    return registry_pb2.LockFile(
        version=str(lock["version"]), generated_at=timestamp(lock["generated_at"]),
        models=[registry_pb2.LockedModel(
            model_id=entry["model_id"], version=entry["version"], source_url=entry["source_url"],
            checksum=entry["checksum"],
            task_type=TASK_TYPES.get(entry.get("task_type") or "", common_pb2.TASK_TYPE_UNSPECIFIED))
            for entry in lock["models"]],
    )


# --- management -------------------------------------------------------------------------------

def model_status(status: Mapping[str, Any]) -> management_pb2.ModelStatus:
    """A residency row as ``ModelStatusResponse`` (load) or a ``/health/models`` entry."""
    health = status.get("health_status") or {}
    healthy = health.get("healthy", status.get("healthy", status.get("state") == "loaded"))
    error = health.get("error_message") or status.get("error") or ""
    return management_pb2.ModelStatus(
        model_id=str(status["model_id"]), state=MODEL_STATES.get(str(status.get("state")),
                                                                 common_pb2.MODEL_STATE_UNSPECIFIED),
        memory_usage_mb=float(status.get("memory_usage_mb") or 0.0), device=str(status.get("device") or "cpu"),
        loaded_at=timestamp(status.get("loaded_at")), last_used_at=timestamp(status.get("last_used_at")),
        health_status=management_pb2.HealthStatus(
            healthy=bool(healthy), last_check_at=timestamp(health.get("last_check_at") or status.get("last_check_at")),
            error_message=str(error)),
    )


def queue_status(depth: Mapping[str, int]) -> management_pb2.QueueStatus:
    return management_pb2.QueueStatus(high_priority=int(depth.get("high_priority", 0)),
                                      medium_priority=int(depth.get("medium_priority", 0)),
                                      low_priority=int(depth.get("low_priority", 0)))


def validated(schema: type[BodyT], values: Mapping[str, Any]) -> BodyT:
    """Check a message with the REST body's own schema, so both transports accept the same values."""
    try:
        return schema.model_validate(dict(values))
    except ValidationError as exc:
        raise validation_failed(exc.errors()) from None
