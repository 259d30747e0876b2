"""Seed 001 §2.4.1 synchronous inference: ``POST /api/v1/infer/{model_id}``. Thin: parse, call, render."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Path, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from api.context import AppContext, authenticated, context
from api.errors import ErrorEnvelope
from api.routers.fleet import read_upload
from core.auth import Principal
from core.errors import invalid

router = APIRouter(prefix="/api/v1", tags=["Inference"])
Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(authenticated)]
ModelIdPath = Annotated[str, Path(description="Model id such as 'sentence-transformers/all-MiniLM-L6-v2' "
                                              "(the '/' may be URL-encoded as %2F)")]

JobStatusName = Literal["queued", "processing", "completed", "failed", "cancelled"]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope} for code in (400, 401, 404, 408, 413, 429, 503)
}


class InferenceRequest(BaseModel):
    """Seed 001 ``InferenceRequest``; ``input_data`` is checked against its task type's JSON Schema."""

    input_data: dict[str, Any] = Field(description="Task-specific input, e.g. {'text': '...'} for txt2embed")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Task-specific inference parameters")
    priority: Literal["high", "medium", "low"] = Field(
        "medium", description="high: fast tasks (embeddings); medium: text generation; low: image generation")
    timeout_seconds: int = Field(60, ge=1, le=600)

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"input_data": {"text": "This is a sample sentence to embed"}, "parameters": {"normalize": True},
         "priority": "high"}]})


class InferenceMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    inference_time_ms: float | None = Field(None, description="Model inference duration of the batch")
    total_time_ms: float | None = Field(None, description="Total request duration at the ingress")
    batch_size: int | None = None
    device: Literal["cpu", "cuda"] | None = None


class InferenceResponse(BaseModel):
    model_id: str
    output_data: dict[str, Any]
    metadata: InferenceMetadata


class JobReference(BaseModel):
    """Seed 001 ``JobReference``."""

    job_id: str = Field(description="uuid of the job")
    status: JobStatusName
    created_at: datetime
    status_url: str = Field(examples=["/api/v1/jobs/123e4567-e89b-12d3-a456-426614174000"])


# Registered before the sync route: '{model_id:path}' would otherwise swallow '<id>/async'.
@router.post("/infer/{model_id:path}/async", response_model=JobReference, status_code=202,
             responses={code: {"model": ErrorEnvelope} for code in (400, 401, 404, 413, 429, 503)},
             summary="Execute asynchronous inference")
async def infer_async(model_id: ModelIdPath, body: InferenceRequest, ctx: Ctx, caller: Caller) -> JobReference:
    """Queues the request as a job and answers at once; poll ``status_url``, then fetch ``/result``."""
    reference = await ctx.job_service().submit(caller, model_id, body.input_data, body.parameters, body.priority,
                                      body.timeout_seconds)
    return JobReference.model_validate(reference)


def upload_parameters(parameters: str) -> dict[str, Any]:
    try:
        value = json.loads(parameters or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise invalid("VALIDATION_ERROR", "parameters must be a JSON object.",
                      errors=[{"field": "parameters", "message": "must be a JSON object, e.g. {\"normalize\": true}"}])
    return value


# Registered before the sync route, as '/async' is. The same request as JSON with a base64 image,
# for clients that would rather not base64 a large photo: one 'file' is input_data.image, several
# 'files' are input_data.images; everything after this point is the JSON request's path.
@router.post("/infer/{model_id:path}/upload", response_model=InferenceResponse, responses=ERRORS,
             summary="Execute synchronous inference on uploaded images (multipart)")
async def infer_upload(
    model_id: ModelIdPath, ctx: Ctx, caller: Caller,
    file: Annotated[UploadFile | None, File(description="One image: becomes input_data.image")] = None,
    files: Annotated[list[UploadFile] | None, File(description="Several images: input_data.images")] = None,
    parameters: Annotated[str, Form(description="Task parameters as a JSON object")] = "{}",
    priority: Annotated[Literal["high", "medium", "low"], Form()] = "medium",
    timeout_seconds: Annotated[int, Form(ge=1, le=600)] = 60,
) -> InferenceResponse:
    """Runs like ``POST /infer/{model_id}`` with ``input_data.image`` (``images``) taken from the upload."""
    if (file is None) == (not files):
        raise invalid("VALIDATION_ERROR", "Send exactly one of: 'file' (one image) or 'files' (several).",
                      errors=[{"field": "file", "message": "send 'file' or 'files', not both or neither"}])
    # base64 takes 4/3 of the bytes; the encoded input is what the input limit counts.
    limit = ctx.settings.inference_max_input_bytes * 3 // 4
    uploads = files if file is None and files else [file] if file is not None else []
    images = [base64.b64encode(await read_upload(upload, limit)).decode() for upload in uploads]
    input_data: dict[str, Any] = {"image": images[0]} if file is not None else {"images": images}
    result = await ctx.inference_service().infer(caller, model_id, input_data, upload_parameters(parameters),
                                                 priority, timeout_seconds)
    return InferenceResponse.model_validate(result)


@router.post("/infer/{model_id:path}", response_model=InferenceResponse, responses=ERRORS,
             summary="Execute synchronous inference")
async def infer(model_id: ModelIdPath, body: InferenceRequest, ctx: Ctx, caller: Caller) -> InferenceResponse:
    """Runs the model on a worker of the request's priority and waits for the result (up to ``timeout_seconds``)."""
    result = await ctx.inference_service().infer(caller, model_id, body.input_data, body.parameters, body.priority,
                                       body.timeout_seconds)
    return InferenceResponse.model_validate(result)
