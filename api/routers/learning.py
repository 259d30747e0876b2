"""Seed 002: learning-graph submission and the latest model for devices."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from api.context import AppContext, authenticated, context
from api.routers.fleet import ERRORS
from core.auth import Principal
from core.errors import DomainError, ErrorKind
from core.fleet.learning_graphs import LearningGraphService

router = APIRouter(prefix="/api/v1", tags=["Learning graphs"])
Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(authenticated)]


class EncryptedGraphRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deviceIdHash: str = Field(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9+/=_-]+$")
    appVersion: str = Field(min_length=1, max_length=64)
    modelVersion: str = Field(min_length=1, max_length=128)
    encryptedData: str = Field(min_length=16, max_length=8 * 1024 * 1024, description="Base64")
    signature: str = Field(min_length=16, max_length=256, description="HMAC-SHA256 of encryptedData")
    timestamp: datetime


class SubmitResponse(BaseModel):
    status: str
    next_model_version: str
    message: str


class LatestModelResponse(BaseModel):
    version: str
    created_at: datetime
    delta_size_mb: float | None = Field(
        None, description="Size of a delta from the previous version: null, because none is produced; "
                          "download_url serves the whole model, of size_mb")
    size_mb: float = Field(description="Size of what download_url serves")
    improvements: list[str] = Field(
        description="What the round that made this model improved over the round before, from the devices' "
                    "reported local loss and accuracy (sample-weighted); empty when nothing improved or was reported")
    download_url: str


@router.post("/learning-graphs/submit", response_model=SubmitResponse, responses=ERRORS)
async def submit_learning_graph(body: EncryptedGraphRequest, ctx: Ctx, caller: Caller) -> SubmitResponse:
    # Asked first: a failure here (Cassandra down: 503) must leave nothing submitted, or the
    # device's retry would submit its graph twice.
    try:
        latest = await ctx.fleet.latest_aggregated_model()
        next_version = f"{latest.id}/v{latest.latest_version}"
    except DomainError as exc:
        if exc.kind is not ErrorKind.NOT_FOUND:
            raise
        next_version = body.modelVersion  # no model yet: the device keeps the one it has
    service = LearningGraphService(ctx.settings, ctx.store, ctx.events)
    result = await service.submit(
        caller.key_id, device_id_hash=body.deviceIdHash, app_version=body.appVersion,
        model_version=body.modelVersion, encrypted_data=body.encryptedData, signature=body.signature,
        timestamp=body.timestamp,
    )
    message = "Graph received and validated"
    if result["retraining_requested"]:
        message += f"; retraining requested with {result['pending']} graphs"
    return SubmitResponse(status="accepted", next_model_version=next_version, message=message)


@router.get("/models/latest", response_model=LatestModelResponse, responses=ERRORS, tags=["Models"])
async def latest_model(ctx: Ctx, _: Caller) -> LatestModelResponse:
    model = await ctx.fleet.latest_aggregated_model()
    return LatestModelResponse(
        version=f"{model.id}/v{model.latest_version}", created_at=model.created_at,
        size_mb=round((model.model_size_bytes or 0) / 1e6, 3), improvements=await ctx.fleet.improvements_of(model),
        download_url=f"/api/v1/models/{model.id}/versions/{model.latest_version}/download",
    )
