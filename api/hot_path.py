"""Heartbeats without FastAPI's per-request machinery: the fleet's most frequent call.

A fleet of 100,000 devices beating once a minute is 1,700 heartbeats a second. Profiled under load
(docs/benchmarks.md), FastAPI's routing, dependency solving, body parsing and response validation
took about half of the ingress's CPU per heartbeat, more than the heartbeat's own work (key lookup,
rate limit, publish). ``HeartbeatFastPath`` serves ``PUT /api/v1/devices/{device_id}/heartbeat``
itself when the request is well formed, calling the route's own ``answer_heartbeat`` (the same core
call, the same response model), inside the ingress's own middlewares (trace id, metrics, body limit,
trusted proxies), which still apply.

Anything it does not take as well formed (another content type, JSON it cannot parse, a body or a
device id the route's models refuse) goes on to the FastAPI route untouched, body replayed, so every
client mistake gets exactly the route's error envelope; this path never invents an error of its own
for a request. Domain errors (401, 403, 429, 404) are rendered by the same function as the app's
handler; anything unexpected propagates to the app's server-error handler, as from a route.
"""

from __future__ import annotations

import re

import orjson
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.access import route_action
from api.context import AppContext, admit, bearer_key
from api.errors import domain_error_response
from api.routers import fleet
from api.routers.fleet import answer_heartbeat
from api.schemas_fleet import HeartbeatRequest
from core.errors import DomainError

HEARTBEAT_TEMPLATE = "/api/v1/devices/{device_id}/heartbeat"
_PATH = re.compile(r"^/api/v1/devices/([^/]+)/heartbeat$")
# The route's own constraint on the path parameter (``api.routers.fleet.DeviceId``).
_DEVICE_ID = re.compile(r"^[^\x00-\x1f/\\]{1,255}$")
_JSON_TYPES = (b"application/json", b"application/json; charset=utf-8")


class HeartbeatFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.action = route_action("PUT", HEARTBEAT_TEMPLATE)
        # The route itself goes into the scope, so metrics label the request as the route would.
        self.route = next(route for route in fleet.router.routes if getattr(route, "path_format", None)
                          == HEARTBEAT_TEMPLATE and "PUT" in getattr(route, "methods", ()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PATH.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "PUT" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        body, more = await _read_body(receive)
        parsed = None if more else _parse(match.group(1), scope["headers"], body)
        if parsed is None:
            await self.app(scope, _replay(body, more, receive), send)
            return
        device_id, request, key = parsed
        scope["route"] = self.route
        ctx: AppContext = scope["app"].state.context
        try:
            principal = await admit(ctx, key, self.action)
            answer = await answer_heartbeat(ctx, principal, device_id, request)
        except DomainError as exc:
            trace_id = scope.get("state", {}).get("trace_id")
            await domain_error_response(exc, trace_id)(scope, receive, send)
            return
        payload = answer.model_dump_json().encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def _parse(raw_id: str, headers: list[tuple[bytes, bytes]], body: bytes
           ) -> tuple[str, HeartbeatRequest | None, str | None] | None:
    """(device id, body, key) when the route would take the request as it is; None otherwise."""
    if not _DEVICE_ID.match(raw_id):
        return None
    content_type = authorization = b""
    for name, value in headers:
        if name == b"content-type":
            content_type = value.lower()
        elif name == b"authorization":
            authorization = value
    request: HeartbeatRequest | None = None
    if body:
        if content_type not in _JSON_TYPES:
            return None
        try:
            # orjson refuses what json.loads would take (NaN, Infinity), so such bodies go to the route.
            request = HeartbeatRequest.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError):
            return None
    return raw_id, request, bearer_key(authorization.decode("latin-1"))


async def _read_body(receive: Receive, limit: int = 64 * 1024) -> tuple[bytes, list[Message]]:
    """The body when it arrives within ``limit`` bytes; beyond that, the messages read so far go to
    the route with the rest (a heartbeat is a few hundred bytes; the body limit is enforced outside)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"", [message]
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), []
        if size > limit:
            return b"", [{"type": "http.request", "body": b"".join(chunks), "more_body": True}]


def _replay(body: bytes, pending: list[Message], receive: Receive) -> Receive:
    """A receive that gives back what was read, then reads on."""
    queued = list(pending) or [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return queued.pop(0) if queued else await receive()

    return replayed
