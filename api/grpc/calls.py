"""What every modelmora.v1 call gets around its handler, as one server interceptor: a trace id,
metrics, authentication (and the key's rate limit) and the mapping of failures to gRPC statuses.
Handlers hold only the call's own work and read the caller with ``caller()``."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any, NoReturn

import grpc

from api.access import GRPC_ACTIONS
from api.context import AppContext, admit, bearer_key
from api.grpc.errors import abort, failure
from api.metrics import grpc_call_metrics
from core.auth import Principal
from core.logs import trace_id_var

SERVICE_PREFIX = "/modelmora.v1."
# Probes answer without a key (seed 001 §2.7), as their REST twins do.
OPEN_METHODS = frozenset({"GetModelHealth", "LivenessCheck", "ReadinessCheck"})
# How long a refused stream may go on sending before it is ended anyway.
REFUSED_STREAM_DRAIN_S = 1.0

_caller: ContextVar[Principal | None] = ContextVar("grpc_caller", default=None)


def caller() -> Principal:
    """The authenticated caller of the current call (set by ``CallInterceptor`` before the handler)."""
    principal = _caller.get()
    if principal is None:
        raise RuntimeError("caller() in a method the interceptor does not authenticate (OPEN_METHODS)")
    return principal


def metadata_value(context: grpc.aio.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def metadata_key(context: grpc.aio.ServicerContext) -> str | None:
    """The key of ``authorization: Bearer <key>`` metadata, read as REST reads the header."""
    return bearer_key(metadata_value(context, "authorization"))


def begin_call(context: grpc.aio.ServicerContext) -> str:
    """The call's trace id (the client's ``x-trace-id`` or a new one): logged with every line and
    returned in the ``x-trace-id`` trailer."""
    trace_id = (metadata_value(context, "x-trace-id") or uuid.uuid4().hex)[:64]
    trace_id_var.set(trace_id)
    context.set_trailing_metadata((("x-trace-id", trace_id),))
    return trace_id


async def end_call(context: grpc.aio.ServicerContext, exc: BaseException, trace_id: str,
                   outcome: list[str]) -> NoReturn:
    """End the call with ``exc``'s mapped status, recorded as the call's outcome in the metrics."""
    failed = failure(exc, trace_id)
    outcome[0] = failed.status.name
    await abort(context, failed)


async def drain(requests: AsyncIterator[Any]) -> None:
    """Let the client finish sending before its stream is refused. grpc's asyncio client reports
    INTERNAL, not the server's status, when one of its own writes fails because the call ended
    (grpc/grpc#36066): without this, ~30 % of refused 20-message streams saw INTERNAL instead of
    UNAUTHENTICATED. Bounded, so a client that never half-closes is refused within a second."""
    async def read_to_end() -> None:
        async for _ in requests:
            pass

    with contextlib.suppress(Exception):  # the bound passed, or the client went away
        await asyncio.wait_for(read_to_end(), REFUSED_STREAM_DRAIN_S)


UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], AsyncIterator[Any]]


class CallInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        method = str(details.method or "")
        if handler is None or not method.startswith(SERVICE_PREFIX):
            return handler  # grpc.health.v1, reflection: theirs
        name = method.rsplit("/", 1)[-1]
        authenticate = name not in OPEN_METHODS
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(name, handler.unary_unary, authenticate),
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(name, handler.stream_stream, authenticate),
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        return handler  # modelmora.v1 has no other kind

    def _unary(self, name: str, behavior: UnaryBehavior, authenticate: bool) -> UnaryBehavior:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            trace_id = begin_call(context)
            with grpc_call_metrics(name) as outcome:
                try:
                    if authenticate:
                        _caller.set(await admit(self.ctx, metadata_key(context), GRPC_ACTIONS.get(name)))
                    return await behavior(request, context)
                except Exception as exc:
                    await end_call(context, exc, trace_id, outcome)

        return call

    def _stream(self, name: str, behavior: StreamBehavior, authenticate: bool) -> StreamBehavior:
        async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            trace_id = begin_call(context)
            with grpc_call_metrics(name) as outcome:
                if authenticate:
                    try:
                        _caller.set(await admit(self.ctx, metadata_key(context), GRPC_ACTIONS.get(name)))
                    except Exception as exc:
                        await drain(requests)
                        await end_call(context, exc, trace_id, outcome)
                try:
                    async for response in behavior(requests, context):
                        yield response
                except Exception as exc:
                    await end_call(context, exc, trace_id, outcome)

        return call


class ServiceHandlers:
    """Base of the three servicers: the ingress's wiring, shared with REST."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
