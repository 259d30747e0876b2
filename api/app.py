"""The FastAPI ingress: thin transport over the domain core (authenticate, validate, publish)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.context import AppContext
from api.errors import install_error_handlers
from api.forwarded import ForwardedHeader
from api.hot_path import HeartbeatFastPath
from api.limits import BodySizeLimit
from api.middleware import TraceAndMeasure
from api.routers import (
    carbon,
    datasets,
    fleet,
    health,
    inference,
    jobs,
    keys,
    learning,
    lifecycle,
    openai_compat,
    pipelines,
    rollouts,
    routing,
    training_jobs,
)
from api.routers.health import API_VERSION
from settings import Settings, get_settings


def create_app(settings: Settings | None = None, context: AppContext | None = None, *,
               serve_grpc: bool | None = None) -> FastAPI:
    """Build the app; without ``context`` it wires itself to Kafka, Cassandra and S3 on start-up.

    ``serve_grpc`` (default: when it wires itself and ``grpc_port`` is set) also starts the gRPC
    server on the same context and event loop, so both transports share one core.
    """
    settings = settings or get_settings()
    if serve_grpc is None:
        serve_grpc = context is None and settings.grpc_port > 0

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Blocking store calls (key lookups, rate-limit leases, round reads) run on the loop's default
        # executor, which asyncio sizes by cores (6 threads here): under heartbeat load requests
        # queued for a thread while each waited on Cassandra. The threads mostly wait, so more of them.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(settings.api_io_threads, thread_name_prefix="api-io"))
        if context is None:
            from api.wiring import build_context

            app.state.context = await build_context(settings)
        else:
            app.state.context = context
        grpc_server = None
        if serve_grpc:
            from api.grpc.server import GrpcServer

            grpc_server = GrpcServer(app.state.context, host=settings.api_host, port=settings.grpc_port)
            await grpc_server.start()
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace_s=settings.shutdown_timeout_s / 2)
            for close in reversed(app.state.context.closers):
                result = close()
                if hasattr(result, "__await__"):
                    await result

    app = FastAPI(
        title="Tributary", version=API_VERSION, docs_url="/docs", lifespan=lifespan,
        description="Event-driven ML platform for device fleets: fleet, federated learning and model serving.",
    )
    app.state.settings = settings
    install_error_handlers(app)
    if settings.api_heartbeat_fast_path:  # innermost: the body limit, trace id and metrics still apply
        app.add_middleware(HeartbeatFastPath)
    # Added early, so it runs inside the trace and metrics middlewares (its 413 carries the trace id).
    app.add_middleware(BodySizeLimit, max_request_bytes=settings.max_request_bytes,
                       max_upload_bytes=settings.max_upload_bytes, max_dataset_bytes=settings.dataset_max_bytes)
    app.add_middleware(TraceAndMeasure)
    if settings.trusted_proxies.strip():  # RFC 7239 Forwarded from trusted proxies (uvicorn reads X-Forwarded-For)
        app.add_middleware(ForwardedHeader, trusted=settings.trusted_proxies)
    app.include_router(health.router)
    # /models/latest must be matched before /models/{model_id}
    app.include_router(learning.router)
    # /models/{id}/load|unload before fleet's /models/{model_id:path} catch-all routes
    app.include_router(lifecycle.router)
    app.include_router(routing.router)  # /models/{id}/routing-policy, likewise
    app.include_router(fleet.router)
    app.include_router(keys.router)
    app.include_router(rollouts.router)
    app.include_router(inference.router)
    app.include_router(jobs.router)
    app.include_router(pipelines.router)
    app.include_router(training_jobs.router)
    app.include_router(datasets.router)
    app.include_router(openai_compat.router)
    app.include_router(carbon.router)
    return app
