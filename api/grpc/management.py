"""Seed 001 §3.5 ``ManagementService`` over the lifecycle, status and health REST serves.

Liveness, readiness and model health need no key, as their REST routes (probes and load
balancers call them); loading, unloading and the system status do.
"""

from __future__ import annotations

import grpc

from api.grpc import convert
from api.grpc.calls import ServiceHandlers, caller
from api.routers.fleet import validate_catalog_id
from api.routers.health import API_VERSION
from core.health import readiness
from modelmora.v1 import management_pb2


class ManagementHandlers(ServiceHandlers):
    async def LoadModel(self, request: management_pb2.LoadModelRequest,
                        context: grpc.aio.ServicerContext) -> management_pb2.ModelStatus:
        """Answers once a worker reports the model loaded; RESOURCE_EXHAUSTED when none has room."""
        principal = caller()
        validate_catalog_id(request.model_id)
        return convert.model_status(await self.ctx.lifecycle.load(principal, request.model_id))

    async def UnloadModel(self, request: management_pb2.UnloadModelRequest,
                          context: grpc.aio.ServicerContext) -> management_pb2.UnloadModelResponse:
        principal = caller()
        validate_catalog_id(request.model_id)
        outcome = await self.ctx.lifecycle.unload(principal, request.model_id)
        return management_pb2.UnloadModelResponse(model_id=outcome["model_id"], unloaded=True)

    async def GetSystemStatus(self, request: management_pb2.GetSystemStatusRequest,
                              context: grpc.aio.ServicerContext) -> management_pb2.SystemStatus:
        """This ingress's uptime; the cluster's loaded models and queue depths. ``memory`` is left unset:
        models live in the workers, each with its own budget, and each loaded model's memory is in
        ``loaded_models``; the ingress host's memory would describe the wrong machine.
        ``gpu.available`` is false: the workers run on the CPU."""
        serving = await self.ctx.lifecycle.status(self.ctx.queue_depth)
        return management_pb2.SystemStatus(
            version=API_VERSION, uptime_seconds=self.ctx.uptime_seconds,
            gpu=management_pb2.GPUStatus(available=False),
            loaded_models=[convert.model_status(s) for s in serving["loaded_models"]],
            queue=convert.queue_status(serving["queue_depth"]),
        )

    async def GetModelHealth(self, request: management_pb2.GetModelHealthRequest,
                             context: grpc.aio.ServicerContext) -> management_pb2.ModelHealthResponse:
        health = await self.ctx.lifecycle.models_health()
        return management_pb2.ModelHealthResponse(
            healthy_count=health["healthy_count"], unhealthy_count=health["unhealthy_count"],
            models=[convert.model_status(entry) for entry in health["models"]])

    async def LivenessCheck(self, request: management_pb2.LivenessRequest,
                            context: grpc.aio.ServicerContext) -> management_pb2.LivenessResponse:
        return management_pb2.LivenessResponse(status="ok")

    async def ReadinessCheck(self, request: management_pb2.ReadinessRequest,
                             context: grpc.aio.ServicerContext) -> management_pb2.ReadinessResponse:
        """``not_ready`` in the body, not an error status: the call itself worked (REST says 503)."""
        checks = await readiness(self.ctx.probes)
        return management_pb2.ReadinessResponse(status="ready" if all(checks.values()) else "not_ready",
                                                checks=management_pb2.HealthChecks(**checks))
