"""Seed 004 ``POST /api/v1/pipelines/validate``: validate an inference config without submitting it. Thin.

The body is parsed by the domain (``core/serving/pipelines.py``) so that a malformed body is
seed 004's 400 ``INVALID_CONFIG``; the models below document the contract in OpenAPI.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from api.context import AppContext, authenticated, context
from api.errors import ErrorEnvelope
from core.auth import Principal
from core.serving.pipelines import MAX_PIPELINE_NAME, PipelineValidator
from core.serving.service import builtin_models
from core.task_types import TaskType

router = APIRouter(prefix="/api/v1", tags=["Pipelines"])
Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(authenticated)]

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorEnvelope} for code in (400, 401, 404, 413, 429)}


class PipelineValidateRequest(BaseModel):
    """A pipeline (model id) and the inference config to check against it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"pipeline_name": "rapidocr/ppocr-v4",
         "config": {"input_data": {"image": "data:image/png;base64,iVBORw0KGgo="}, "parameters": {"min_score": 0.3},
                    "priority": "high", "timeout_seconds": 30}}]})

    pipeline_name: str = Field(min_length=1, max_length=MAX_PIPELINE_NAME,
                               description="A built-in model id or a registered model id with a task_type")
    config: dict[str, Any] = Field(description="What an inference request would carry: input_data (optional), "
                                               "parameters, priority, timeout_seconds")


class FieldError(BaseModel):
    field: str = Field(description="Dotted path, e.g. config.parameters.min_score")
    message: str
    hint: str = Field(description="How to fix it, e.g. 'Value must be between 0.0 and 1.0'")


class PipelineValidation(BaseModel):
    valid: bool
    pipeline_name: str
    task_type: TaskType
    source: Literal["builtin", "registry"]
    errors: list[FieldError]
    validation_time_ms: float


def validator(ctx: AppContext) -> PipelineValidator:
    # The models the sync inference endpoint serves, when it is wired on this ingress.
    builtins = ctx.inference.models if ctx.inference is not None else builtin_models()
    return PipelineValidator(ctx.registry, builtins=builtins,
                             max_input_bytes=ctx.settings.inference_max_input_bytes)


@router.post("/pipelines/validate", response_model=PipelineValidation, responses=ERRORS,
             summary="Validate a pipeline configuration without submitting a job",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": PipelineValidateRequest.model_json_schema()}}}})
async def validate_pipeline(request: Request, ctx: Ctx, _: Caller) -> PipelineValidation:
    """200 for valid and invalid configs alike (see ``valid`` and ``errors``); 404 for an unknown pipeline."""
    return PipelineValidation.model_validate(await validator(ctx).validate(await request.body()))
