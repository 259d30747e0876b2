"""The gRPC server of the ingress: seed 001's three services, ``grpc.health.v1`` and reflection.

It runs in the ingress process, on its event loop, beside REST, and shares its ``AppContext``:
one reply consumer, one producer, one authenticator and rate limiter, one set of domain services.
``grpc.health.v1`` reports SERVING for the server and each service while the readiness checks
(Cassandra, broker) pass, NOT_SERVING otherwise, refreshed every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from api.context import AppContext
from api.grpc.calls import CallInterceptor
from api.grpc.inference import InferenceHandlers
from api.grpc.management import ManagementHandlers
from api.grpc.registry import RegistryHandlers
from core.health import readiness
from modelmora.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    management_pb2,
    management_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICE_NAMES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in ((inference_pb2, "InferenceService"), (registry_pb2, "RegistryService"),
                         (management_pb2, "ManagementService"))
)
HEALTH_REFRESH_S = 5.0
# Requests carry inputs up to TRIBUTARY_INFERENCE_MAX_INPUT_BYTES; leave room for the envelope.
MESSAGE_OVERHEAD_BYTES = 64 * 1024


class GrpcServer:
    def __init__(self, ctx: AppContext, *, host: str, port: int) -> None:
        self.ctx = ctx
        self.address = f"{host}:{port}"
        limit = max(ctx.settings.max_request_bytes, ctx.settings.inference_max_input_bytes) + MESSAGE_OVERHEAD_BYTES
        # No port sharing, so a second ingress on a taken port fails, except between the worker
        # processes of one ingress (TRIBUTARY_API_WORKERS), which share it on purpose.
        reuse = 1 if ctx.settings.api_workers > 1 else 0
        self.server = grpc.aio.server(interceptors=[CallInterceptor(ctx)],
                                      options=[("grpc.max_receive_message_length", limit),
                                               ("grpc.so_reuseport", reuse)])
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceHandlers(ctx), self.server)
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryHandlers(ctx), self.server)
        management_pb2_grpc.add_ManagementServiceServicer_to_server(ManagementHandlers(ctx), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server)
        self.port = self.server.add_insecure_port(self.address)
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh_health()
        await self.server.start()
        self._watch = asyncio.create_task(self._watch_health())
        log.info("gRPC serving modelmora.v1 on %s", self.address)

    async def refresh_health(self) -> bool:
        ready = all((await readiness(self.ctx.probes)).values())
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)
        return ready

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_REFRESH_S)
            try:
                await self.refresh_health()
            except Exception:  # a probe failure is NOT_SERVING, not a dead watcher
                log.exception("gRPC health refresh failed")

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING first, so balancers stop sending; then let calls in flight finish."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
