"""A global request body size limit, enforced before any endpoint buffers a body.

JSON (and any other non-multipart) bodies may carry ``TRIBUTARY_MAX_REQUEST_BYTES``; multipart
uploads may carry ``TRIBUTARY_MAX_UPLOAD_BYTES`` plus 1 MiB of form fields and boundaries (the
upload endpoints then check the file itself), except inference uploads (``/api/v1/infer/...``:
images), which may carry ``TRIBUTARY_MAX_REQUEST_BYTES`` plus 1 MiB, as their JSON twin may.
A declared ``Content-Length`` over the limit is refused at once; a chunked body is counted as it
streams and refused when it passes the limit.
Either way the answer is 413 ``REQUEST_TOO_LARGE`` in the error envelope.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import envelope

MULTIPART_OVERHEAD_BYTES = 1024 * 1024
INFERENCE_PREFIX = "/api/v1/infer/"
DATASETS_PATH = "/api/v1/datasets"


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_request_bytes: int, max_upload_bytes: int,
                 max_dataset_bytes: int | None = None) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.max_multipart_bytes = max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        # Images sent as files instead of base64 JSON: the JSON request's bound (they are smaller).
        self.max_inference_multipart_bytes = max_request_bytes + MULTIPART_OVERHEAD_BYTES
        # Dataset uploads have their own bound (TRIBUTARY_DATASET_MAX_BYTES); the route answers the
        # exact 413 FILE_TOO_LARGE for a file between it and this cut-off.
        self.max_dataset_multipart_bytes = (max_dataset_bytes or max_upload_bytes) + MULTIPART_OVERHEAD_BYTES

    def limit_for(self, content_type: str, path: str = "") -> int:
        if content_type.lower().startswith("multipart/form-data"):
            if path.startswith(INFERENCE_PREFIX):
                return self.max_inference_multipart_bytes
            if path.rstrip("/") == DATASETS_PATH:
                return self.max_dataset_multipart_bytes
            return self.max_multipart_bytes
        return self.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.lower(): value for name, value in scope.get("headers", [])}
        limit = self.limit_for(headers.get(b"content-type", b"").decode("latin-1"), str(scope.get("path", "")))
        declared = headers.get(b"content-length", b"").decode("latin-1").strip()
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, send, limit)
            return

        received = 0
        exceeded = started = False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # whatever the app made of the cut-off body, the answer is our 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, counted_receive, guarded_send)
        if exceeded and not started:
            await self._refuse(scope, send, limit)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, limit: int) -> None:
        state: dict[str, Any] = scope.get("state") or {}
        trace_id = state.get("trace_id")
        body = envelope(413, "REQUEST_TOO_LARGE", f"Request body exceeds the limit of {limit} bytes.",
                        details={"max_bytes": limit}, hint="Send a smaller body.",
                        trace_id=trace_id if isinstance(trace_id, str) else None)
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
