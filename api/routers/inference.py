"""Seed 001 §2.4.1 synchronous inference: ``POST /api/v1/infer/{model_id}``. Thin: parse, call, render."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from api.context import AppContext, authenticated, context
from api.errors import ErrorEnvelope
from core.auth import Principal
from core.errors import unavailable

router = APIRouter(prefix="/api/v1", tags=["Inference"])
Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(authenticated)]
ModelIdPath = Annotated[str, Path(description="Model id such as 'sentence-transformers/all-MiniLM-L6-v2' "
                                              "(the '/' may be URL-encoded as %2F)")]

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


@router.post("/infer/{model_id:path}", response_model=InferenceResponse, responses=ERRORS,
             summary="Execute synchronous inference")
async def infer(model_id: ModelIdPath, body: InferenceRequest, ctx: Ctx, caller: Caller) -> InferenceResponse:
    """Runs the model on a worker of the request's priority and waits for the result (up to ``timeout_seconds``)."""
    if ctx.inference is None:
        raise unavailable("SERVICE_UNAVAILABLE", "Inference is not wired on this ingress.", 5.0)
    result = await ctx.inference.infer(caller, model_id, body.input_data, body.parameters, body.priority,
                                       body.timeout_seconds)
    return InferenceResponse.model_validate(result)
