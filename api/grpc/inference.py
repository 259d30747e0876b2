"""Seed 001 §3.3 ``InferenceService`` over the core REST uses: the same Kafka request/response path
(``InferenceService``) and the same job store (``JobService``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc

from api.context import spend
from api.grpc import convert
from api.grpc.calls import ServiceHandlers, caller
from api.grpc.errors import failure
from api.metrics import GRPC_STREAM_MESSAGES
from core.auth import Principal
from core.errors import invalid
from core.logs import trace_id_var
from modelmora.v1 import inference_pb2


class InferenceHandlers(ServiceHandlers):
    async def _infer(self, principal: Principal, request: inference_pb2.InferenceRequest,
                     context: grpc.aio.ServicerContext, request_id: str) -> inference_pb2.InferenceResponse:
        # The call's deadline caps the request's own: the worker drops it once nobody waits.
        result = await self.ctx.inference_service().infer(principal, **convert.inference_call(request),
                                               within_s=context.time_remaining())
        return convert.inference_response(result, request_id)

    async def Infer(self, request: inference_pb2.InferenceRequest,
                    context: grpc.aio.ServicerContext) -> inference_pb2.InferenceResponse:
        principal = caller()
        return await self._infer(principal, request, context, request.request_id or str(uuid.uuid4()))

    async def InferAsync(self, request: inference_pb2.InferenceRequest,
                         context: grpc.aio.ServicerContext) -> inference_pb2.JobReference:
        principal = caller()
        reference = await self.ctx.job_service().submit(principal, **convert.inference_call(request))
        return convert.job_reference(reference)

    async def GetJobStatus(self, request: inference_pb2.GetJobStatusRequest,
                           context: grpc.aio.ServicerContext) -> inference_pb2.JobStatusResponse:
        principal = caller()
        return convert.job_status(await self.ctx.job_service().status(principal, job_id(request.job_id)))

    async def GetJobResult(self, request: inference_pb2.GetJobResultRequest,
                           context: grpc.aio.ServicerContext) -> inference_pb2.InferenceResponse:
        principal = caller()
        return convert.inference_response(await self.ctx.job_service().result(principal, job_id(request.job_id)))

    async def CancelJob(self, request: inference_pb2.CancelJobRequest,
                        context: grpc.aio.ServicerContext) -> inference_pb2.CancelJobResponse:
        """Seed 001's cancel: FAILED_PRECONDITION ``JOB_ALREADY_COMPLETED`` when the job is terminal."""
        principal = caller()
        outcome = await self.ctx.job_service().delete(principal, job_id(request.job_id))
        return inference_pb2.CancelJobResponse(job_id=outcome["job_id"],
                                               status=convert.JOB_STATUSES[outcome["status"]])

    async def InferStream(self, requests: AsyncIterator[inference_pb2.InferenceRequest],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[inference_pb2.InferenceResponse]:
        """Many requests in flight at once, answered as they complete (any order; match them by
        ``output_data.custom_data.request_id``). A request that fails gets a response with ``error``
        set and the stream goes on; only a refused key (or the server going away) ends it. Each
        message counts against the key's rate limit, as a REST request would."""
        async for response in self._stream(caller(), requests, context):
            yield response

    async def _stream(self, principal: Principal, requests: AsyncIterator[inference_pb2.InferenceRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[inference_pb2.InferenceResponse]:
        trace_id = trace_id_var.get() or ""
        answers: asyncio.Queue[inference_pb2.InferenceResponse | BaseException | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.ctx.settings.grpc_stream_max_in_flight)
        running: set[asyncio.Task[None]] = set()

        async def answer(request: inference_pb2.InferenceRequest, request_id: str) -> None:
            try:
                await spend(self.ctx, principal)
                response = await self._infer(principal, request, context, request_id)
            except Exception as exc:
                response = convert.failed_response(request.model_id, failure(exc, trace_id).error, request_id)
            GRPC_STREAM_MESSAGES.labels(response.error.code or "OK").inc()
            await answers.put(response)

        async def read() -> None:
            try:
                async for request in requests:
                    await slots.acquire()  # flow control: stop reading while the window is full
                    task = asyncio.create_task(answer(request, request.request_id or str(uuid.uuid4())))
                    running.add(task)
                    task.add_done_callback(running.discard)
                while running:
                    await asyncio.gather(*list(running))
                await answers.put(None)
            except BaseException as exc:  # the client went away or the read failed: end the stream
                await answers.put(exc)
                raise

        reader = asyncio.create_task(read())
        try:
            while (item := await answers.get()) is not None:
                if isinstance(item, BaseException):
                    raise item  # the interceptor ends the call with its status
                yield item
                # The slot is freed once the answer is sent, not when it is ready: a client that
                # keeps sending but stops reading holds at most the window in memory.
                slots.release()
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()


def job_id(value: str) -> str:
    """A job id is a uuid, as REST's path parameter; anything else is INVALID_ARGUMENT, not NOT_FOUND."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise invalid("VALIDATION_ERROR", f"job_id '{value[:100]}' is not a UUID.",
                      errors=[{"field": "job_id", "message": "must be a UUID"}]) from None
