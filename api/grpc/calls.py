"""What every gRPC handler does around the core call: trace id, authentication, error mapping."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc

from api.context import AppContext, admit
from api.grpc.errors import abort, failure
from api.metrics import grpc_call_metrics
from core.auth import Principal
from core.logs import trace_id_var

Request = TypeVar("Request")
Response = TypeVar("Response")
Handlers = TypeVar("Handlers", bound="ServiceHandlers")
UnaryHandler = Callable[[Handlers, Request, grpc.aio.ServicerContext], Awaitable[Response]]


def metadata_value(context: grpc.aio.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def bearer_key(context: grpc.aio.ServicerContext) -> str | None:
    """The key of ``authorization: Bearer <key>``; no key for any other scheme (as REST's HTTPBearer)."""
    scheme, _, key = (metadata_value(context, "authorization") or "").partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


def begin_call(context: grpc.aio.ServicerContext) -> str:
    """The call's trace id (the client's ``x-trace-id`` or a new one): logged with every line and
    returned in the ``x-trace-id`` trailer."""
    trace_id = (metadata_value(context, "x-trace-id") or uuid.uuid4().hex)[:64]
    trace_id_var.set(trace_id)
    context.set_trailing_metadata((("x-trace-id", trace_id),))
    return trace_id


class ServiceHandlers:
    """Base of the three servicers: the ingress's wiring, shared with REST."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    async def caller(self, context: grpc.aio.ServicerContext) -> Principal:
        """Authenticate ``authorization: Bearer sk_live_...`` and count the call against the key's
        rate limit — the same limiter, and so the same per-minute budget, as REST."""
        return await admit(self.ctx, bearer_key(context))


def unary(handler: UnaryHandler[Handlers, Request, Response]) -> UnaryHandler[Handlers, Request, Response]:
    """A unary RPC: any failure ends the call with its mapped status (``api.grpc.errors``)."""

    @functools.wraps(handler)
    async def call(self: Handlers, request: Request, context: grpc.aio.ServicerContext) -> Response:
        trace_id = begin_call(context)
        with grpc_call_metrics(handler.__name__) as outcome:
            try:
                return await handler(self, request, context)
            except Exception as exc:
                await end_call(context, exc, trace_id, outcome)

    return call


async def end_call(context: grpc.aio.ServicerContext, exc: BaseException, trace_id: str,
                   outcome: list[str]) -> NoReturn:
    """End the call with ``exc``'s mapped status, recorded as the call's outcome in the metrics."""
    failed = failure(exc, trace_id)
    outcome[0] = failed.status.name
    await abort(context, failed)

