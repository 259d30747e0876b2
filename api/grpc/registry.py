"""Seed 001 §3.4 ``RegistryService`` over the one catalog REST serves (``core.registry``)."""

from __future__ import annotations

import grpc

from api.grpc import convert
from api.grpc.calls import ServiceHandlers, caller
from api.routers.fleet import validate_catalog_id
from api.schemas_fleet import RegisterModelRequest, UpdateModelRequest
from core.errors import invalid
from core.fleet.models import RegistryStatus
from modelmora.v1 import common_pb2, registry_pb2

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 20, 100


class RegistryHandlers(ServiceHandlers):
    async def RegisterModel(self, request: registry_pb2.RegisterModelRequest,
                            context: grpc.aio.ServicerContext) -> registry_pb2.Model:
        principal = caller()
        body = convert.validated(RegisterModelRequest, {
            "model_id": request.model_id, "version": request.version or "main",
            "task_type": convert.task_type(request.task_type), "display_name": request.display_name or None,
            "description": request.description or None, "source_url": request.source_url or None,
            "resource_requirements": convert.resource_requirements(request.resource_requirements)
            if request.HasField("resource_requirements") else None,
            "config": convert.struct_to_dict(request.config) if request.HasField("config") else None,
        })
        model = await self.ctx.registry.register(principal, **body.registration())
        return convert.model(model)

    async def ListModels(self, request: registry_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> registry_pb2.ListModelsResponse:
        page = request.pagination.page or 1
        size = request.pagination.page_size or DEFAULT_PAGE_SIZE
        if page < 1 or not 1 <= size <= MAX_PAGE_SIZE:
            raise invalid("VALIDATION_ERROR", f"pagination needs page >= 1 and 1 <= page_size <= "
                                                      f"{MAX_PAGE_SIZE}.",
                                  errors=[{"field": "pagination", "message": "out of range"}])
        status = request.status or None
        if status is not None and status not in {s.value for s in RegistryStatus}:
            raise invalid("VALIDATION_ERROR", f"status '{status[:50]}' is not a registry status.",
                                  errors=[{"field": "status",
                                           "message": "registered, downloading, ready or failed"}])
        task_type = convert.task_type(request.task_type) if request.task_type else None
        models, total = await self.ctx.fleet.list_models(limit=size, offset=(page - 1) * size, framework=None,
                                                         is_baseline=None, task_type=task_type, status=status)
        return registry_pb2.ListModelsResponse(
            models=[convert.model(m) for m in models],
            pagination=common_pb2.PaginationResponse(total=total, page=page, page_size=size,
                                                             total_pages=(total + size - 1) // size))

    async def GetModel(self, request: registry_pb2.GetModelRequest,
                       context: grpc.aio.ServicerContext) -> registry_pb2.Model:
        validate_catalog_id(request.model_id)
        return convert.model(await self.ctx.registry.get(request.model_id))

    async def UpdateModel(self, request: registry_pb2.UpdateModelRequest,
                          context: grpc.aio.ServicerContext) -> registry_pb2.Model:
        """Empty strings and absent messages leave a field as it is (proto3 cannot tell unset from empty)."""
        principal = caller()
        validate_catalog_id(request.model_id)
        body = convert.validated(UpdateModelRequest, {
            "display_name": request.display_name or None, "description": request.description or None,
            "config": convert.struct_to_dict(request.config) if request.HasField("config") else None,
            "resource_requirements": convert.resource_requirements(request.resource_requirements)
            if request.HasField("resource_requirements") else None,
        })
        model = await self.ctx.registry.update(principal, request.model_id, **body.changes())
        return convert.model(model)

    async def DeleteModel(self, request: registry_pb2.DeleteModelRequest,
                          context: grpc.aio.ServicerContext) -> registry_pb2.DeleteModelResponse:
        """FAILED_PRECONDITION ``MODEL_LOADED`` while a worker holds the model, unless ``force``."""
        principal = caller()
        validate_catalog_id(request.model_id)
        await self.ctx.registry.delete(principal, request.model_id, request.force)
        return registry_pb2.DeleteModelResponse(model_id=request.model_id, deleted=True)

    async def DownloadModel(self, request: registry_pb2.DownloadModelRequest,
                            context: grpc.aio.ServicerContext) -> registry_pb2.DownloadModelResponse:
        principal = caller()
        validate_catalog_id(request.model_id)
        await self.ctx.registry.download(principal, request.model_id)
        return registry_pb2.DownloadModelResponse(model_id=request.model_id, status="downloading",
                                                  message="The workers fetch and load the model; watch its status.")

    async def GenerateLock(self, request: registry_pb2.GenerateLockRequest,
                           context: grpc.aio.ServicerContext) -> registry_pb2.LockFile:
        return convert.lock_file(await self.ctx.registry.lock_file())
