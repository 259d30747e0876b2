"""Seed 003 §2 LoRA training jobs. Thin: parse, call ``core.training.service``, render.

``/api/v1/training/rounds/...`` (seed 000 federated rounds) is another router; these are
``/api/v1/training/jobs``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel

from api.context import AppContext, authenticated, context
from api.errors import ErrorEnvelope
from core.auth import Principal
from core.training.schemas import (
    TrainingJob,
    TrainingJobCreate,
    TrainingJobList,
    TrainingJobStatus,
    TrainingMetricsHistory,
)

router = APIRouter(prefix="/api/v1/training/jobs", tags=["Training jobs"])
Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(authenticated)]
JobId = Annotated[uuid.UUID, Path(description="The job_id returned by POST /api/v1/training/jobs")]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorEnvelope} for code in (400, 401, 403, 429, 503, *codes)}


class TrainingCancellationResponse(BaseModel):
    """Seed 004 ``CancellationResponse`` for a training job."""

    job_id: str
    status: TrainingJobStatus
    cancelled_at: datetime | None
    message: str


@router.post("", response_model=TrainingJob, status_code=201, responses=_errors(404, 409),
             summary="Create a LoRA training job")
async def create_training_job(body: TrainingJobCreate, ctx: Ctx, caller: Caller) -> TrainingJob:
    """Validated (base model, LoRA ``target_modules`` against the model, datasets, CPU-only options), stored
    ``pending`` -> ``queued`` and published to the trainers. A CPU-only deployment refuses the seed's GPU
    defaults: send ``quantization.load_in_4bit: false`` and ``hyperparameters.optimizer: "adamw"`` (or ``sgd``)."""
    return await ctx.training.create(caller, body)


@router.get("", response_model=TrainingJobList, responses=_errors(), summary="List training jobs")
async def list_training_jobs(ctx: Ctx, caller: Caller, page: Annotated[int, Query(ge=1, le=100_000)] = 1,
                             page_size: Annotated[int, Query(ge=1, le=100)] = 20) -> TrainingJobList:
    return TrainingJobList.model_validate(await ctx.training.list_jobs(page, page_size))


@router.get("/{job_id}", response_model=TrainingJob, responses=_errors(404), summary="Get a training job")
async def get_training_job(job_id: JobId, ctx: Ctx, caller: Caller) -> TrainingJob:
    return await ctx.training.get(str(job_id))


@router.get("/{job_id}/metrics", response_model=TrainingMetricsHistory, responses=_errors(404),
            summary="A training job's metrics history")
async def get_training_metrics(job_id: JobId, ctx: Ctx, caller: Caller) -> TrainingMetricsHistory:
    """Every ``TrainingMetrics`` the trainer logged (each ``logging_steps``), by step."""
    return TrainingMetricsHistory(job_id=str(job_id), items=await ctx.training.metrics(str(job_id)))


@router.post("/{job_id}/cancel", response_model=TrainingCancellationResponse, responses=_errors(404),
             summary="Cancel a training job (idempotent)")
async def cancel_training_job(job_id: JobId, ctx: Ctx, caller: Caller) -> TrainingCancellationResponse:
    """Seed 004: safe to repeat; 200 also when the job already completed, failed or was cancelled. A running
    trainer reads the cancel between batches and stops within seconds."""
    return TrainingCancellationResponse.model_validate(await ctx.training.cancel(caller, str(job_id)))
