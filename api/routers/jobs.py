"""Seed 001 §2.5 job management and seed 004's idempotent cancel. Thin: parse, call, render."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field

from api.context import AppContext, authenticated, context
from api.errors import ErrorEnvelope
from api.routers.inference import InferenceResponse, JobStatusName
from core.auth import Principal

router = APIRouter(prefix="/api/v1/jobs", tags=["Jobs"])
Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(authenticated)]
JobId = Annotated[uuid.UUID, Path(description="The job_id returned by POST /api/v1/infer/{model_id}/async")]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorEnvelope} for code in (400, 401, 403, 429, 503, *codes)}


class JobError(BaseModel):
    code: str
    message: str


class JobStatusResponse(BaseModel):
    """Seed 001 ``JobStatusResponse`` (plus the priority the job was submitted with)."""

    job_id: str
    model_id: str
    status: JobStatusName
    progress: float = Field(ge=0, le=100, description="0 until the job completes, then 100")
    priority: str
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: JobError | None = None


class CancelJobResponse(BaseModel):
    """Seed 001 ``DELETE /jobs/{job_id}`` 200 body."""

    job_id: str
    status: JobStatusName


class CancellationResponse(BaseModel):
    """Seed 004 ``CancellationResponse``."""

    job_id: str
    status: JobStatusName
    cancelled_at: datetime | None
    message: str


@router.get("/{job_id}", response_model=JobStatusResponse, responses=_errors(404), summary="Get job status")
async def get_job_status(job_id: JobId, ctx: Ctx, caller: Caller) -> JobStatusResponse:
    return JobStatusResponse.model_validate(await ctx.job_service().status(caller, str(job_id)))


@router.get("/{job_id}/result", response_model=InferenceResponse, responses=_errors(404, 409),
            summary="Retrieve job result")
async def get_job_result(job_id: JobId, ctx: Ctx, caller: Caller) -> InferenceResponse:
    """409 ``JOB_NOT_READY`` while queued or processing; ``JOB_FAILED`` / ``JOB_CANCELLED`` when it never will be."""
    return InferenceResponse.model_validate(await ctx.job_service().result(caller, str(job_id)))


@router.delete("/{job_id}", response_model=CancelJobResponse, responses=_errors(404, 409), summary="Cancel job")
async def cancel_job(job_id: JobId, ctx: Ctx, caller: Caller) -> CancelJobResponse:
    """Seed 001: cancels a queued or processing job; 409 ``JOB_ALREADY_COMPLETED`` when it is terminal."""
    return CancelJobResponse.model_validate(await ctx.job_service().delete(caller, str(job_id)))


@router.post("/{job_id}/cancel", response_model=CancellationResponse, responses=_errors(404),
             summary="Cancel a job (idempotent)")
async def cancel_job_idempotent(job_id: JobId, ctx: Ctx, caller: Caller) -> CancellationResponse:
    """Seed 004: safe to repeat; 200 also when the job already completed, failed or was cancelled."""
    return CancellationResponse.model_validate(await ctx.job_service().cancel(caller, str(job_id)))
