"""The FastAPI ingress: thin transport over the domain core (authenticate, validate, publish)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel

from api.errors import install_error_handlers
from core.settings import Settings, get_settings

API_VERSION = "1.0.0"


class HealthResponse(BaseModel):
    status: str
    version: str
    timestamp: str


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="Tributary", version=API_VERSION, docs_url="/docs")
    app.state.settings = settings
    install_error_handlers(app)

    @app.middleware("http")
    async def trace(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.trace_id = request.headers.get("x-trace-id") or uuid.uuid4().hex
        response = await call_next(request)
        response.headers["X-Trace-Id"] = request.state.trace_id
        return response

    @app.get("/api/v1/health", response_model=HealthResponse, tags=["Health"])
    async def health() -> HealthResponse:
        return HealthResponse(
            status="healthy", version=API_VERSION, timestamp=datetime.now(UTC).isoformat().replace("+00:00", "Z")
        )

    @app.get("/health/live", tags=["Health"])
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    return app
