"""Seed 003 §5 carbon tracking: ``GET /api/v1/carbon/summary`` (``CarbonSummary``),
``/api/v1/carbon/jobs/{job_id}`` (``JobCarbonDetails``) and ``/api/v1/carbon/models/{model_id}``
(the model's ``CarbonEmissions``, seed 003 §1). Computed at read time from the records that
training jobs and inference workers write (``core/carbon.py``); method in docs/operations.md.
Operators and services read them.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from api.context import AppContext, authenticated, context
from api.errors import ErrorEnvelope
from api.routers.fleet import CatalogId, validate_catalog_id
from api.schemas_fleet import CarbonEmissions
from core.auth import Principal
from core.carbon import SubjectKind, job_details, model_emissions, summarize
from core.errors import DomainError, ErrorKind
from schemas.clock import as_utc, utcnow

router = APIRouter(prefix="/api/v1/carbon", tags=["Carbon"])
Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(authenticated)]
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorEnvelope} for code in (400, 401, 403, 404, 429, 503)}
DEFAULT_PERIOD = timedelta(days=30)
MAX_PERIOD = timedelta(days=366)
JOB_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class CarbonByModel(BaseModel):
    model_id: str
    model_name: str
    emissions_kg: float = Field(ge=0)
    percentage: float = Field(ge=0, le=100)


class CarbonSummary(BaseModel):
    """Seed 003 ``CarbonSummary``; ``period`` is ``{"start", "end"}`` (end excluded)."""

    total_emissions_kg: float = Field(ge=0)
    training_emissions_kg: float = Field(ge=0)
    inference_emissions_kg: float = Field(ge=0)
    total_energy_kwh: float = Field(ge=0)
    num_training_jobs: int = Field(ge=0)
    num_inference_requests: int = Field(ge=0)
    period: dict[str, datetime]
    by_model: list[CarbonByModel]


class CarbonBreakdown(BaseModel):
    gpu_power_w: float = Field(ge=0)
    cpu_power_w: float = Field(ge=0)
    ram_power_w: float = Field(ge=0)
    gpu_energy_kwh: float = Field(ge=0)
    cpu_energy_kwh: float = Field(ge=0)
    ram_energy_kwh: float = Field(ge=0)


class CarbonTimepoint(BaseModel):
    timestamp: datetime
    emissions_kg: float = Field(ge=0)
    power_w: float = Field(ge=0)


class JobCarbonDetails(BaseModel):
    job_id: str
    total_emissions_kg: float = Field(ge=0)
    total_energy_kwh: float = Field(ge=0)
    duration_seconds: float = Field(ge=0)
    carbon_intensity: float = Field(ge=0, description="g CO2e/kWh")
    location: str
    breakdown: CarbonBreakdown
    timeline: list[CarbonTimepoint]


class ModelCarbonEmissions(CarbonEmissions):
    """Seed 003 ``CarbonEmissions`` of one model (plus its id)."""

    model_id: str


def _invalid(message: str, **details: Any) -> DomainError:
    return DomainError(ErrorKind.INVALID, "VALIDATION_ERROR", message, details=details or None)


@router.get("/summary", response_model=CarbonSummary, responses=ERRORS, summary="Carbon summary")
async def carbon_summary(
    ctx: Ctx, _: Caller,
    start: Annotated[datetime | None, Query(description="Period start (ISO 8601); default: end - 30 days")] = None,
    end: Annotated[datetime | None, Query(description="Period end, excluded (ISO 8601); default: now")] = None,
) -> CarbonSummary:
    """Training and inference emissions and energy over a period, by model."""
    until = as_utc(end) or utcnow()
    since = as_utc(start) or until - DEFAULT_PERIOD
    if since >= until:
        raise _invalid("start must be before end", field="start")
    if until - since > MAX_PERIOD:
        raise _invalid(f"a period spans at most {MAX_PERIOD.days} days", field="start")
    records = await asyncio.to_thread(ctx.carbon.between, since, until)
    body = summarize(records, since, until)
    names = await asyncio.gather(*(_model_name(ctx, m["model_id"]) for m in body["by_model"]))
    for entry, name in zip(body["by_model"], names, strict=True):
        entry["model_name"] = name
    return CarbonSummary.model_validate(body)


async def _model_name(ctx: AppContext, model_id: str) -> str:
    model = await asyncio.to_thread(ctx.store.get_model, model_id)
    return (model.name if model is not None else None) or model_id


@router.get("/jobs/{job_id}", response_model=JobCarbonDetails, responses=ERRORS, summary="Job carbon details")
async def job_carbon(job_id: Annotated[str, Path(pattern=JOB_ID)], ctx: Ctx, _: Caller) -> JobCarbonDetails:
    """Energy, emissions, power breakdown and timeline of one training job (every segment it ran)."""
    records = await asyncio.to_thread(ctx.carbon.for_subject, SubjectKind.TRAINING_JOB, job_id)
    details = job_details(job_id, records)
    if details is None:
        raise DomainError(ErrorKind.NOT_FOUND, "JOB_NOT_FOUND", f"No carbon measurement for training job {job_id!r}.",
                          details={"job_id": job_id},
                          hint="Measurements appear once the job's trainer has run it.")
    return JobCarbonDetails.model_validate(details)


@router.get("/models/{model_id:path}", response_model=ModelCarbonEmissions, responses=ERRORS,
            summary="Model carbon emissions")
async def model_carbon(model_id: CatalogId, ctx: Ctx, _: Caller) -> ModelCarbonEmissions:
    """The model's ``CarbonEmissions``: training jobs that produced it and every inference batch it ran."""
    validate_catalog_id(model_id)
    records = await asyncio.to_thread(ctx.carbon.for_model, model_id)
    if not records and await asyncio.to_thread(ctx.store.get_model, model_id) is None:
        raise DomainError(ErrorKind.NOT_FOUND, "MODEL_NOT_FOUND", f"Model {model_id!r} not found.",
                          details={"model_id": model_id})
    return ModelCarbonEmissions(model_id=model_id, **model_emissions(records))
