"""Seed 001 §2.6 lifecycle: ``POST /api/v1/models/{model_id}/load`` and ``/unload``. Thin: parse, call, render.

Registered before the fleet router, whose ``/models/{model_id:path}`` routes would otherwise be
asked first; ids may contain '/' (literal or URL-encoded as %2F).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from api.context import AppContext, authenticated, context
from api.errors import ErrorEnvelope
from api.routers.fleet import CatalogId, validate_catalog_id
from core.auth import Principal

router = APIRouter(prefix="/api/v1", tags=["Lifecycle"])
Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(authenticated)]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorEnvelope} for code in (400, 401, 403, 429, 503, *codes)}


class HealthStatus(BaseModel):
    healthy: bool
    last_check_at: datetime | None = None
    error_message: str | None = None


class ModelStatusResponse(BaseModel):
    """Seed 001 ``ModelStatusResponse`` (plus the worker that reported it and every worker holding it)."""

    model_config = ConfigDict(extra="allow")

    model_id: str
    state: Literal["unloaded", "loading", "loaded", "unhealthy"]
    memory_usage_mb: float | None = None
    device: Literal["cpu", "cuda"] | None = None
    loaded_at: datetime | None = None
    last_used_at: datetime | None = None
    health_status: HealthStatus | None = None
    worker: str | None = Field(None, description="the inference worker process this status comes from")
    workers: list[str] = Field(default_factory=list, description="every worker that reports the model")


class UnloadResponse(BaseModel):
    model_id: str
    state: Literal["unloaded"]
    workers: list[str] = Field(description="workers the model was unloaded from")
    unloaded_at: datetime


@router.post("/models/{model_id:path}/load", response_model=ModelStatusResponse, responses=_errors(404, 507),
             summary="Force load model")
async def load_model(model_id: CatalogId, ctx: Ctx, caller: Caller) -> ModelStatusResponse:
    """Sends a ``load`` command to every inference worker and answers when one reports the model loaded."""
    validate_catalog_id(model_id)
    return ModelStatusResponse.model_validate(await ctx.lifecycle.load(caller, model_id))


@router.post("/models/{model_id:path}/unload", response_model=UnloadResponse, responses=_errors(404),
             summary="Unload model from memory")
async def unload_model(model_id: CatalogId, ctx: Ctx, caller: Caller) -> UnloadResponse:
    """Sends an ``unload`` command to every inference worker and answers when none reports the model any more."""
    validate_catalog_id(model_id)
    return UnloadResponse.model_validate(await ctx.lifecycle.unload(caller, model_id))
