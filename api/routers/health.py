"""Health (seed 000 basic, seed 004 detailed, seed 001 probes) and Prometheus metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.context import AppContext, context
from api.errors import ErrorEnvelope
from core.health import ComponentHealth, readiness, run_probes

API_VERSION = "1.0.0"
router = APIRouter(tags=["Health"])
Ctx = Annotated[AppContext, Depends(context)]
OPEN: dict[str, Any] = {"security": []}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@router.get("/api/v1/health", openapi_extra=OPEN,
            responses={400: {"model": ErrorEnvelope, "description": "Invalid query parameter"},
                       503: {"description": "A component is unhealthy (detailed mode only)"}})
async def health(ctx: Ctx, detailed: Annotated[bool, Query()] = False) -> JSONResponse:
    """Basic: fast liveness (seed 000 HealthResponse). Detailed (seed 004): every component, 503 when unhealthy."""
    if not detailed:
        return JSONResponse({"status": "healthy", "version": API_VERSION, "timestamp": _now()})
    overall, results = await run_probes(ctx.probes)
    body = {
        "status": overall.value,
        "version": API_VERSION,
        "timestamp": _now(),
        "components": {name: {"status": r.status.value, "latency_ms": round(r.latency_ms, 2), "detail": r.detail}
                       for name, r in results.items()},
    }
    return JSONResponse(body, status_code=503 if overall is ComponentHealth.UNHEALTHY else 200)


# Seed 001's base path is /api/v1: its probes and metrics answer there, and at the root too, where
# Kubernetes conventions (and existing manifests) look for them.
@router.get("/api/v1/health/live", openapi_extra=OPEN)
@router.get("/health/live", openapi_extra=OPEN)
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/api/v1/health/ready", openapi_extra=OPEN, responses={503: {"description": "Service not ready"}})
@router.get("/health/ready", openapi_extra=OPEN, responses={503: {"description": "Service not ready"}})
async def ready(ctx: Ctx) -> JSONResponse:
    """Ready when Cassandra answers and the producer can reach the broker (seed 001 §2.7)."""
    checks = await readiness(ctx.probes)
    ok = all(checks.values())
    return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503)


@router.get("/api/v1/health/models", openapi_extra=OPEN)
@router.get("/health/models", openapi_extra=OPEN)
async def models_health(ctx: Ctx) -> JSONResponse:
    """Seed 001 §2.7: every resident model per inference worker (``healthy_count``, ``unhealthy_count``, ``models``)."""
    body = await ctx.lifecycle.models_health()
    return JSONResponse(jsonable_encoder(body))


@router.get("/api/v1/metrics", openapi_extra=OPEN, tags=["Metrics"], response_class=Response)
@router.get("/metrics", openapi_extra=OPEN, tags=["Metrics"], response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
