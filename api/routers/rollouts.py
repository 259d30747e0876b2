"""Staged rollouts (operators), device assignments and device telemetry (issue 20). Thin: parse,
call ``core.rollouts``, render."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from api.context import AppContext, authenticated, context
from api.routers.fleet import ERRORS, UUID_PATTERN, DeviceId
from api.schemas_fleet import AssignmentOut, AssignmentResponse
from api.schemas_rollouts import (
    RolloutCommandAccepted,
    RolloutCommandRequest,
    RolloutCreateRequest,
    RolloutDetail,
    RolloutList,
    RolloutOut,
    TelemetryAccepted,
    TelemetryRequest,
)
from core.auth import Principal
from core.rollouts.models import Command
from schemas.clock import utcnow

router = APIRouter(prefix="/api/v1")
Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(authenticated)]
RolloutId = Annotated[str, Path(pattern=UUID_PATTERN, description="UUID of the rollout.")]


@router.post("/rollouts", status_code=201, response_model=RolloutOut, tags=["Rollouts"], responses=ERRORS)
async def create_rollout(body: RolloutCreateRequest, ctx: Ctx, caller: Caller) -> RolloutOut:
    """Roll a catalog model version out to a cohort in stages; 409 while the model has an active rollout."""
    rollout = await ctx.rollouts.create(caller, body.model_id, body.version, [s.stage() for s in body.stages],
                                        body.cohort.cohort(), body.baseline_version)
    ctx.assignments.forget()
    return RolloutOut.of(rollout)


@router.get("/rollouts", response_model=RolloutList, tags=["Rollouts"], responses=ERRORS)
async def list_rollouts(ctx: Ctx, caller: Caller,
                        model_id: Annotated[str | None, Query(max_length=255)] = None) -> RolloutList:
    return RolloutList(rollouts=[RolloutOut.of(r) for r in await ctx.rollouts.list_rollouts(caller, model_id)])


@router.get("/rollouts/{rollout_id}", response_model=RolloutDetail, tags=["Rollouts"], responses=ERRORS)
async def get_rollout(rollout_id: RolloutId, ctx: Ctx, caller: Caller) -> RolloutDetail:
    """The rollout, its stages, the gate judgement of each stage, the current stage's telemetry per
    version and device counts per version."""
    rollout = await ctx.rollouts.get(caller, rollout_id)
    return RolloutDetail(**RolloutOut.of(rollout).model_dump(), **await ctx.rollouts.details(rollout))


async def _command(ctx: AppContext, caller: Principal, rollout_id: str, command: Command,
                   body: RolloutCommandRequest | None) -> RolloutCommandAccepted:
    await ctx.rollouts.command(caller, rollout_id, command, body.reason if body else None)
    return RolloutCommandAccepted(rollout_id=rollout_id, command=command.value,
                                  message=f"The rollouts processor applies the {command.value}; "
                                          "GET the rollout to see it.")


@router.post("/rollouts/{rollout_id}/pause", status_code=202, response_model=RolloutCommandAccepted,
             tags=["Rollouts"], responses=ERRORS)
async def pause_rollout(rollout_id: RolloutId, ctx: Ctx, caller: Caller,
                        body: RolloutCommandRequest | None = None) -> RolloutCommandAccepted:
    return await _command(ctx, caller, rollout_id, Command.PAUSE, body)


@router.post("/rollouts/{rollout_id}/resume", status_code=202, response_model=RolloutCommandAccepted,
             tags=["Rollouts"], responses=ERRORS)
async def resume_rollout(rollout_id: RolloutId, ctx: Ctx, caller: Caller,
                         body: RolloutCommandRequest | None = None) -> RolloutCommandAccepted:
    return await _command(ctx, caller, rollout_id, Command.RESUME, body)


@router.post("/rollouts/{rollout_id}/advance", status_code=202, response_model=RolloutCommandAccepted,
             tags=["Rollouts"], responses=ERRORS)
async def advance_rollout(rollout_id: RolloutId, ctx: Ctx, caller: Caller,
                          body: RolloutCommandRequest | None = None) -> RolloutCommandAccepted:
    return await _command(ctx, caller, rollout_id, Command.ADVANCE, body)


@router.post("/rollouts/{rollout_id}/rollback", status_code=202, response_model=RolloutCommandAccepted,
             tags=["Rollouts"], responses=ERRORS)
async def rollback_rollout(rollout_id: RolloutId, ctx: Ctx, caller: Caller,
                           body: RolloutCommandRequest | None = None) -> RolloutCommandAccepted:
    return await _command(ctx, caller, rollout_id, Command.ROLLBACK, body)


@router.get("/devices/{device_id}/assignment", response_model=AssignmentResponse, tags=["Devices"],
            responses=ERRORS)
async def device_assignment(device_id: DeviceId, ctx: Ctx, caller: Caller) -> AssignmentResponse:
    """The model versions assigned to the device, judged on its last applied heartbeat's metrics."""
    device = await ctx.fleet.get_device(caller, device_id)
    entries = await ctx.assignments.for_device(device_id, device.metrics, device)
    return AssignmentResponse(device_id=device_id, assignments=[AssignmentOut(**e) for e in entries],
                              generated_at=utcnow())


@router.post("/devices/{device_id}/telemetry", status_code=202, response_model=TelemetryAccepted,
             tags=["Devices"], responses=ERRORS)
async def device_telemetry(device_id: DeviceId, body: TelemetryRequest, ctx: Ctx, caller: Caller) -> TelemetryAccepted:
    """Per-model inference counts, errors, crashes, cloud fallbacks and latency over a window."""
    await ctx.rollouts.report_telemetry(caller, device_id, body.window_start, body.window_end,
                                        [m.model_dump() for m in body.models])
    return TelemetryAccepted(device_id=device_id, models=len(body.models))
