"""Seed 000 endpoints: devices, heartbeats, rounds, updates, model catalog. Thin: parse, call, render."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile as StarletteUploadFile

from api.context import AppContext, authenticated, context
from api.errors import ErrorEnvelope
from api.routers.health import API_VERSION
from api.schemas_fleet import (
    CarbonEmissions,
    DeviceList,
    DeviceOut,
    DeviceRegisterRequest,
    DeviceRegisterResponse,
    DownloadAccepted,
    HeartbeatRequest,
    HeartbeatResponse,
    LockFile,
    ModelCreateRequest,
    ModelDetail,
    ModelListResponse,
    ModelOut,
    ModelUpdateOut,
    ModelVersionOut,
    PaginationMeta,
    PlatformName,
    RegisterModelRequest,
    RoundOut,
    RoundStartRequest,
    StatusResponse,
    UpdateModelRequest,
)
from core.auth import Principal
from core.carbon import model_emissions
from core.errors import DomainError, ErrorKind, is_transient_infrastructure_error
from core.fleet.models import DeviceStatus, Platform
from core.health import ComponentHealth, run_probes
from core.registry import validate_model_id
from core.task_types import TaskType

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")
Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(authenticated)]
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
DeviceId = Annotated[str, Path(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f/\\]+$")]
RoundId = Annotated[str, Path(pattern=UUID_PATTERN, description="UUID of the training round.")]
# Largest values the Cassandra columns behind them hold (int, bigint): larger ones are a 400, not a 500.
INT32_MAX, INT64_MAX = 2**31 - 1, 2**63 - 1
CatalogId = Annotated[str, Path(description="Catalog id: a UUID (seed 000) or a registry id such as "
                                            "'org/name' (seed 001; URL-encoding is accepted)")]


def validate_catalog_id(model_id: str) -> None:
    if not re.match(UUID_PATTERN, model_id):
        validate_model_id(model_id)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope} for code in (400, 401, 403, 404, 409, 413, 415, 429, 503)
}


UNSAFE_FILENAME = re.compile(r"[/\\\x00-\x1f\x7f]|^\.\.?$")


async def read_upload(upload: StarletteUploadFile, limit: int) -> bytes:
    """Read at most limit+1 bytes so an oversized upload is refused without buffering it all.

    The file name is never used to store anything, but a name with a path in it (``../../etc/passwd``)
    or control characters is refused so no later use of it can go wrong.
    """
    if upload.filename and UNSAFE_FILENAME.search(upload.filename):
        raise DomainError(ErrorKind.INVALID, "INVALID_FILENAME",
                          "The upload's file name must be a plain name without a path or control characters.",
                          hint="Send the file's base name, e.g. 'model.pt'.")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise DomainError(ErrorKind.TOO_LARGE, "FILE_TOO_LARGE", f"Upload exceeds the limit of {limit} bytes.",
                          details={"max_bytes": limit})
    return data


@router.get("/status", response_model=StatusResponse, tags=["Health"], responses=ERRORS)
async def system_status(ctx: Ctx, _: Caller) -> StatusResponse:
    overall, _results = await run_probes(ctx.probes)
    fleet = await ctx.fleet.status()
    fleet["status"] = "operational" if overall is ComponentHealth.HEALTHY else "degraded"
    return StatusResponse(**fleet, **await ctx.lifecycle.status(ctx.queue_depth), version=API_VERSION,
                          uptime_seconds=ctx.uptime_seconds)


@router.get("/devices", response_model=DeviceList, tags=["Devices"], responses=ERRORS)
async def list_devices(
    ctx: Ctx, caller: Caller,
    status: Annotated[Literal["active", "inactive", "offline"] | None, Query(
        description="active/inactive: what the device last reported (and not offline); offline: no heartbeat "
                    "within 5 heartbeat intervals")] = None,
    platform: Annotated[PlatformName | None, Query()] = None,
    last_heartbeat_before: Annotated[datetime | None, Query(
        description="Only devices whose last heartbeat is older than this (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=4096, description="next_cursor of the previous page")] = None,
) -> DeviceList:
    """Operators: the fleet with filters, a page at a time (read through indexes, not a table scan)."""
    page = await ctx.fleet.list_devices(
        caller, DeviceStatus(status) if status else None, Platform(platform) if platform else None,
        last_heartbeat_before, limit, cursor)
    return DeviceList(devices=[DeviceOut.of(d) for d in page.devices], next_cursor=page.next_cursor)


@router.post("/devices/register", status_code=201, response_model=DeviceRegisterResponse, tags=["Devices"],
             responses=ERRORS, openapi_extra={"security": []})
async def register_device(body: DeviceRegisterRequest, ctx: Ctx, request: Request) -> DeviceRegisterResponse:
    # Registration is open, so it is rate-limited by client address instead of key.
    import asyncio

    await asyncio.to_thread(ctx.limiter.check, f"ip:{request.client.host if request.client else 'unknown'}")
    device, api_key = await ctx.fleet.register_device(
        body.device_id, Platform(body.platform) if body.platform else None, body.capabilities
    )
    return DeviceRegisterResponse(id=device.id, device_id=device.device_id, api_key=api_key,
                                  platform=device.platform.value, status=device.status.value,
                                  created_at=device.created_at)


@router.get("/devices/{device_id}", response_model=DeviceOut, tags=["Devices"], responses=ERRORS)
async def get_device(device_id: DeviceId, ctx: Ctx, caller: Caller) -> DeviceOut:
    return DeviceOut.of(await ctx.fleet.get_device(caller, device_id))


@router.put("/devices/{device_id}/heartbeat", response_model=HeartbeatResponse, tags=["Devices"], responses=ERRORS)
async def heartbeat(device_id: DeviceId, ctx: Ctx, caller: Caller,
                    body: HeartbeatRequest | None = None) -> HeartbeatResponse:
    return await answer_heartbeat(ctx, caller, device_id, body)


async def answer_heartbeat(ctx: AppContext, caller: Principal, device_id: str,
                           body: HeartbeatRequest | None) -> HeartbeatResponse:
    """The heartbeat's answer; also called by ``api.hot_path.HeartbeatFastPath``, which serves this
    route's well-formed requests without FastAPI's per-request machinery."""
    body = body or HeartbeatRequest()
    metrics = body.metrics_sent()
    answer = await ctx.fleet.heartbeat(caller, device_id, body.status, metrics)
    # What the device should run, from caches and this heartbeat's own metrics (no store read per beat).
    # The heartbeat is accepted by now: a store outage on a cache miss leaves the assignments out
    # (null: ask again) rather than failing a heartbeat the device would resend.
    try:
        answer["assignments"] = await ctx.assignments.for_device(device_id, metrics)
    except Exception as exc:
        if not is_transient_infrastructure_error(exc):
            raise
        log.warning("assignments of %s left out of its heartbeat answer: %s", device_id, exc)
    return HeartbeatResponse(**answer)


@router.post("/training/rounds/start", status_code=201, response_model=RoundOut, tags=["Rounds"], responses=ERRORS)
async def start_round(body: RoundStartRequest, ctx: Ctx, caller: Caller) -> RoundOut:
    round_ = await ctx.fleet.start_round(caller, body.target_devices, body.min_devices, body.timeout_seconds,
                                         body.global_model_id)
    return RoundOut.of(round_)


@router.get("/training/rounds/current", response_model=RoundOut, tags=["Rounds"], responses=ERRORS)
async def current_round(ctx: Ctx, _: Caller) -> RoundOut:
    return RoundOut.of(await ctx.fleet.current_round())


@router.get("/training/rounds/{round_id}/status", response_model=RoundOut, tags=["Rounds"], responses=ERRORS)
async def round_status(round_id: RoundId, ctx: Ctx, _: Caller) -> RoundOut:
    return RoundOut.of(await ctx.fleet.round_status(round_id))


@router.post("/training/rounds/{round_id}/cancel", response_model=RoundOut, tags=["Rounds"], responses=ERRORS)
async def cancel_round(round_id: RoundId, ctx: Ctx, caller: Caller) -> RoundOut:
    """Operators: end a pending, active or aggregating round. It becomes `cancelled`, frees the active
    slot, and refuses updates from then on; 409 `ROUND_ALREADY_FINISHED` once it has finished."""
    return RoundOut.of(await ctx.fleet.cancel_round(caller, round_id))


@router.post("/training/rounds/{round_id}/updates", status_code=201, response_model=ModelUpdateOut,
             tags=["Model Updates"], responses=ERRORS)
async def submit_update(
    round_id: RoundId,
    ctx: Ctx,
    caller: Caller,
    file: Annotated[UploadFile, File(description="Serialized model weights file.")],
    num_samples: Annotated[int, Form(ge=1, le=INT64_MAX)],
    local_loss: Annotated[float | None, Form()] = None,
    local_accuracy: Annotated[float | None, Form(ge=0, le=1)] = None,
    training_time_seconds: Annotated[int | None, Form(ge=0, le=INT32_MAX)] = None,
) -> ModelUpdateOut:
    data = await read_upload(file, ctx.settings.max_upload_bytes)
    update = await ctx.fleet.submit_update(caller, round_id, data, num_samples, local_loss, local_accuracy,
                                           training_time_seconds)
    return ModelUpdateOut.of(update)


@router.post("/models", status_code=201, response_model=ModelOut, tags=["Models"], responses=ERRORS)
async def create_model(body: RegisterModelRequest | ModelCreateRequest, ctx: Ctx, caller: Caller) -> ModelOut:
    """Seed 000 createModel (framework, is_baseline, ...) or seed 001 registerModel (model_id + task_type)."""
    if isinstance(body, RegisterModelRequest):
        model = await ctx.registry.register(caller, **body.registration())
    else:
        model = await ctx.fleet.create_model(caller, framework=body.framework,
                                             framework_version=body.framework_version,
                                             description=body.description, is_baseline=body.is_baseline)
    return ModelOut.of(model)


@router.get("/models", response_model=ModelListResponse, tags=["Models"], responses=ERRORS)
async def list_models(
    ctx: Ctx,
    _: Caller,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    page: Annotated[int | None, Query(ge=1, description="seed 001 pagination; overrides offset")] = None,
    page_size: Annotated[int | None, Query(ge=1, le=100, description="seed 001 pagination")] = None,
    framework: Literal["pytorch", "tensorflow", "xgboost", "sklearn"] | None = None,
    is_baseline: bool | None = None,
    task_type: TaskType | None = None,
    status: Literal["registered", "downloading", "ready", "failed"] | None = None,
) -> ModelListResponse:
    if page is not None or page_size is not None:
        limit = page_size or limit
        offset = ((page or 1) - 1) * limit
    models, total = await ctx.fleet.list_models(limit=limit, offset=offset, framework=framework,
                                                is_baseline=is_baseline, task_type=task_type, status=status)
    items = [ModelOut.of(m) for m in models]
    meta = PaginationMeta(total=total, page=offset // limit + 1, page_size=limit,
                          total_pages=(total + limit - 1) // limit)
    return ModelListResponse(models=items, total=total, limit=limit, offset=offset, data=items, meta=meta)


@router.post("/models/lock", response_model=LockFile, tags=["Registry"], responses=ERRORS)
async def lock_file(ctx: Ctx, _: Caller) -> LockFile:
    return LockFile(**await ctx.registry.lock_file())


@router.post("/models/{model_id:path}/versions/upload", status_code=201, response_model=ModelVersionOut,
             tags=["Models"], responses=ERRORS)
async def upload_version(
    model_id: CatalogId,
    ctx: Ctx,
    caller: Caller,
    file: Annotated[UploadFile, File(description="Model weights file (.pt, .h5, .pkl, .onnx).")],
    format: Annotated[Literal["pytorch", "tensorflow", "onnx", "sklearn", "xgboost"] | None, Form()] = None,
    description: Annotated[str | None, Form(max_length=1000)] = None,
) -> ModelVersionOut:
    validate_catalog_id(model_id)
    data = await read_upload(file, ctx.settings.max_upload_bytes)
    version = await ctx.fleet.upload_version(caller, model_id, data, file.filename or "", format, description)
    return ModelVersionOut.of(version)


@router.get("/models/{model_id:path}/versions/{version}/download", tags=["Models"],
            responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS},
            response_class=StreamingResponse)
async def download_version(
    model_id: CatalogId,
    version: Annotated[int, Path(ge=1, le=INT32_MAX)],
    ctx: Ctx,
    _: Caller,
    format: Literal["pytorch", "onnx", "tflite", "coreml"] | None = None,
) -> StreamingResponse:
    validate_catalog_id(model_id)
    _entry, key, filename, size, sha256 = await ctx.fleet.download(model_id, version, format)
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', "Content-Length": str(size),
               "X-Model-Hash": f"sha256:{sha256}"}
    return StreamingResponse(ctx.artifacts.stream(key), media_type="application/octet-stream", headers=headers)


@router.post("/models/{model_id:path}/download", status_code=202, response_model=DownloadAccepted,
             tags=["Registry"], responses=ERRORS)
async def download_model(model_id: CatalogId, ctx: Ctx, caller: Caller) -> DownloadAccepted:
    validate_catalog_id(model_id)
    await ctx.registry.download(caller, model_id)
    return DownloadAccepted(model_id=model_id, status="downloading",
                            message="The workers fetch and load the model; watch its status.")


# The catch-all id routes come last so /versions/... and /download above match first.
@router.get("/models/{model_id:path}", response_model=ModelDetail, tags=["Models"], responses=ERRORS)
async def get_model(model_id: CatalogId, ctx: Ctx, _: Caller) -> ModelDetail:
    validate_catalog_id(model_id)
    model, versions = await ctx.fleet.get_model(model_id)
    detail = ModelDetail.with_versions(model, versions)
    records = await asyncio.to_thread(ctx.carbon.for_model, model.id)
    detail.carbon_emissions = CarbonEmissions(**model_emissions(records))
    return detail


@router.put("/models/{model_id:path}", response_model=ModelOut, tags=["Registry"], responses=ERRORS)
async def update_model(model_id: CatalogId, body: UpdateModelRequest, ctx: Ctx, caller: Caller) -> ModelOut:
    validate_catalog_id(model_id)
    model = await ctx.registry.update(caller, model_id, **body.changes())
    return ModelOut.of(model)


@router.delete("/models/{model_id:path}", status_code=204, tags=["Registry"], responses=ERRORS)
async def delete_model(model_id: CatalogId, ctx: Ctx, caller: Caller,
                       force: Annotated[bool, Query()] = False) -> Response:
    validate_catalog_id(model_id)
    await ctx.registry.delete(caller, model_id, force)
    return Response(status_code=204)
