"""Synchronous inference: the domain core that REST (and later gRPC) call.

``infer`` validates the request, publishes an ``inference_request`` to its priority's topic
with an absolute deadline and the responses partition this replica owns, waits for the
reply with the same ``correlation_id`` and returns seed 001's ``InferenceResponse``.

Failure replies keep the worker's error code; its HTTP meaning comes from ``ERROR_KINDS``:

| worker code                                              | status                      |
|----------------------------------------------------------|-----------------------------|
| INVALID_INPUT, BATCH_SIZE_EXCEEDED                       | 400                         |
| MODEL_NOT_FOUND                                          | 404                         |
| MODEL_NOT_READY (a source_url model not yet ready)       | 409                         |
| INFERENCE_TIMEOUT                                        | 408                         |
| MODEL_LOAD_FAILED, MODEL_NOT_LOADED, INSUFFICIENT_MEMORY,| 503 + Retry-After           |
| SERVICE_UNAVAILABLE (worker queue full)                  |                             |
| TXT2IMG_MODEL_UNAVAILABLE, MODEL_UNAVAILABLE             | 503, no Retry-After (a hint |
|                                                          | says retrying will not help)|
| INFERENCE_FAILED and unknown codes                       | 503, no Retry-After         |

Models: the built-ins (``models``) first; any other id is looked up in the catalog (when
``catalog`` is given, off the event loop) and served with its ``task_type``, or with the generic
tensor contract (``{"inputs": [...]}``) when it has none, as the workers do.

txt2img is 503 rather than 501: the endpoint *is* implemented and serves any txt2img model a
deployment provides; this deployment just has none (seed 001 lists 503 "model loading or
service unavailable" for /infer, and no 501).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from core.auth import Principal
from core.claimcheck import INPUT_REFERENCE_INVALID, ClaimCheck, ClaimCheckError
from core.errors import DomainError, ErrorKind, invalid, unavailable
from core.events import EventsUnavailable, MessageSink
from core.fleet.models import CatalogModel, not_ready_reason, served_task_type
from core.logs import trace_id_var
from core.serving.builtin_specs import BUILTIN_SPECS
from core.serving.metrics import observe_reply
from core.serving.replies import (
    NoReplyPartition,
    PartialReplies,
    Reply,
    ReplyConsumerClosed,
    ReplyPartitionRevoked,
    ReplySource,
)
from core.serving.validation import validate_request
from schemas.clock import utcnow
from settings import Settings
from topology.messages import MessageType
from topology.topics import Priority

MIN_TIMEOUT_S, MAX_TIMEOUT_S = 1, 600
# A request whose reply partition moved away is re-sent at most this often (each re-send may
# run the model again: at-least-once).
MAX_RESENDS = 2
# How long a request waits for this replica to own a responses partition (rebalance in progress).
PARTITION_WAIT_S = 10.0

ERROR_KINDS: dict[str, ErrorKind] = {
    "INVALID_INPUT": ErrorKind.INVALID,
    "BATCH_SIZE_EXCEEDED": ErrorKind.INVALID,
    "VALIDATION_ERROR": ErrorKind.INVALID,
    "MODEL_NOT_FOUND": ErrorKind.NOT_FOUND,
    "INFERENCE_TIMEOUT": ErrorKind.TIMEOUT,
    "MODEL_NOT_READY": ErrorKind.CONFLICT,
}
# Codes that a retry may cure, with the Retry-After to suggest.
RETRYABLE_S: dict[str, float] = {
    "MODEL_LOAD_FAILED": 5.0,
    "MODEL_NOT_LOADED": 1.0,
    "INSUFFICIENT_MEMORY": 5.0,
    "SERVICE_UNAVAILABLE": 1.0,
    # The input's S3 claim failed its check at the worker (object corrupted or gone): sending the
    # request again stores the input again.
    INPUT_REFERENCE_INVALID: 1.0,
}
NOT_SERVED_HINT = "This deployment has no model for this task; retrying will not help."


class ModelCatalog(Protocol):
    """Where non-built-in models are looked up (``core.fleet.store.FleetStore``); blocking."""

    def get_model(self, model_id: str) -> CatalogModel | None: ...


def builtin_models() -> dict[str, str]:
    """Model id -> task type of the models every worker can serve."""
    return {model_id: str(spec.task_type) for model_id, spec in BUILTIN_SPECS.items()}


def reply_error(code: str, message: str) -> DomainError:
    """The domain error of a worker's failure reply (see the table in the module docstring)."""
    kind = ERROR_KINDS.get(code)
    if kind is ErrorKind.TIMEOUT:
        return DomainError(kind, code, message,
                           hint="The deadline passed before the model answered; raise timeout_seconds, use a "
                                "higher priority or the async endpoint.")
    if kind is not None:
        return DomainError(kind, code, message)
    if code in RETRYABLE_S:
        return unavailable(code, message, RETRYABLE_S[code])
    if code in ("TXT2IMG_MODEL_UNAVAILABLE", "MODEL_UNAVAILABLE"):
        return DomainError(ErrorKind.UNAVAILABLE, code, message, hint=NOT_SERVED_HINT)
    return DomainError(ErrorKind.UNAVAILABLE, code, message)


def request_record(*, message_id: str, correlation_id: str, causation_id: str | None, trace_id: str,
                   principal: Principal, model_id: str, task_type: str, input_data: dict[str, Any],
                   parameters: dict[str, Any], priority: Priority, deadline: datetime, timeout_seconds: int,
                   reply_partition: int | None = None, job_id: str | None = None,
                   input_ref: dict[str, Any] | None = None) -> dict[str, Any]:
    """An ``inference_request`` record: ``reply_partition`` for sync requests, ``job_id`` for async ones;
    ``input_ref`` when ``input_data`` rides S3 (``offload_input``)."""
    return {
        "message_id": message_id, "correlation_id": correlation_id, "causation_id": causation_id,
        "trace_id": trace_id, "model_id": model_id, "task_type": task_type, "input_data": input_data,
        "parameters": parameters, "priority": priority.value, "deadline": deadline,
        "timeout_seconds": timeout_seconds, "reply_partition": reply_partition, "job_id": job_id,
        "client_id": principal.key_id, "input_ref": input_ref,
    }


async def offload_input(claims: ClaimCheck | None, input_data: dict[str, Any]
                        ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(input_data, input_ref) to send: a large input goes to S3 and its claim rides Kafka."""
    if claims is None:
        return input_data, None
    try:
        sent = await claims.offload_input({"input_data": input_data})
    except Exception as exc:  # S3 down or refusing: nothing was sent, the caller may retry
        raise unavailable("SERVICE_UNAVAILABLE", "The object store that carries large inputs is unavailable; "
                          "nothing was sent.", 2.0) from exc
    return sent["input_data"], sent.get("input_ref")


class InferenceService:
    def __init__(
        self,
        settings: Settings,
        sink: MessageSink,
        replies: ReplySource,
        *,
        models: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = utcnow,
        catalog: ModelCatalog | None = None,
        claims: ClaimCheck | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.replies = replies
        self.models = dict(models) if models is not None else builtin_models()
        self.clock = clock
        self.catalog = catalog
        self.claims = claims

    def _not_served(self, model_id: str) -> DomainError:
        return DomainError(ErrorKind.NOT_FOUND, "MODEL_NOT_FOUND", f"Model '{model_id[:200]}' is not served here.",
                           details={"model_id": model_id[:200]},
                           hint=f"Built-in models: {', '.join(sorted(self.models))}; or a catalog model with an "
                                "uploaded ONNX or TorchScript version.")

    def task_type(self, model_id: str) -> str:
        """The task type of a built-in model (no catalog lookup)."""
        task_type = self.models.get(model_id)
        if task_type is None:
            raise self._not_served(model_id)
        return task_type

    async def resolve_task_type(self, model_id: str) -> str:
        """Built-in first, else the catalog model's task type (generic tensor when it has none)."""
        task_type = self.models.get(model_id)
        if task_type is not None:
            return task_type
        if self.catalog is None or not 0 < len(model_id) <= 255:
            raise self._not_served(model_id)
        try:
            model = await asyncio.to_thread(self.catalog.get_model, model_id)
        except Exception as exc:  # the catalog is unreachable: the caller may retry
            raise unavailable("SERVICE_UNAVAILABLE", "The model catalog is unavailable.", 2.0) from exc
        if model is None:
            raise self._not_served(model_id)
        reason = not_ready_reason(model)
        if reason is not None:
            raise DomainError(ErrorKind.CONFLICT, "MODEL_NOT_READY", f"Model '{model_id[:200]}' is "
                              f"{model.extra.get('status')}: {reason}.", details={"model_id": model_id[:200],
                                                                                   "status": model.extra.get("status")},
                              hint="Wait until GET /api/v1/models/{id} shows status 'ready'.")
        return served_task_type(model)

    async def check_async(self, model_id: str, input_data: Any, parameters: Any, priority: str,
                          timeout_seconds: int) -> tuple[str, Priority]:
        """``check`` for any servable model: built-ins and catalog models."""
        task_type = await self.resolve_task_type(model_id)
        return self.check(model_id, input_data, parameters, priority, timeout_seconds, task_type=task_type)

    def check(self, model_id: str, input_data: Any, parameters: Any, priority: str,
              timeout_seconds: int, *, task_type: str | None = None) -> tuple[str, Priority]:
        """Validate a request (sync or async); its task type and priority, or a 400/404/413 DomainError.

        Without ``task_type`` only built-in models are known (``check_async`` also asks the catalog).
        """
        task_type = task_type or self.task_type(model_id)
        try:
            level = Priority(priority)
        except ValueError:
            raise invalid("VALIDATION_ERROR", f"priority must be one of {[p.value for p in Priority]}",
                          errors=[{"field": "priority", "message": "must be high, medium or low"}]) from None
        if not MIN_TIMEOUT_S <= timeout_seconds <= MAX_TIMEOUT_S:
            raise invalid("VALIDATION_ERROR", f"timeout_seconds must be {MIN_TIMEOUT_S}..{MAX_TIMEOUT_S}",
                          errors=[{"field": "timeout_seconds", "message": "out of range"}])
        validate_request(task_type, input_data, parameters)
        size = len(json.dumps(input_data, separators=(",", ":"))) + len(json.dumps(parameters, separators=(",", ":")))
        if size > self.settings.inference_max_input_bytes:
            raise DomainError(ErrorKind.TOO_LARGE, "INPUT_TOO_LARGE",
                              f"input_data and parameters take {size} bytes; the limit is "
                              f"{self.settings.inference_max_input_bytes}.",
                              details={"bytes": size, "max_bytes": self.settings.inference_max_input_bytes},
                              hint="Send smaller inputs (e.g. resize images) or split the request.")
        return task_type, level

    async def infer(
        self,
        principal: Principal,
        model_id: str,
        input_data: dict[str, Any],
        parameters: dict[str, Any] | None = None,
        priority: str = "medium",
        timeout_seconds: int = 60,
        *,
        within_s: float | None = None,
        partials: asyncio.Queue[Reply] | None = None,
    ) -> dict[str, Any]:
        """``within_s``: the caller's own deadline, in seconds from now (a gRPC call's); the request
        then expires at the earlier of it and ``timeout_seconds``, at the worker too. ``partials``:
        where the partial replies of a streamed request go (``infer_stream``)."""
        started = time.perf_counter()
        parameters = parameters or {}
        task_type, level = await self.check_async(model_id, input_data, parameters, priority, timeout_seconds)
        sent_input, input_ref = await offload_input(self.claims, input_data)
        budget = float(timeout_seconds) if within_s is None else max(0.0, min(float(timeout_seconds), within_s))
        expires = time.monotonic() + budget
        deadline = self.clock() + timedelta(seconds=budget)
        correlation_id = str(uuid.uuid4())
        trace_id = trace_id_var.get() or uuid.uuid4().hex
        previous: str | None = None
        for attempt in range(MAX_RESENDS + 1):
            partition = await self._reply_partition(expires)
            message_id = str(uuid.uuid4())
            record = request_record(
                message_id=message_id, correlation_id=correlation_id, causation_id=previous, trace_id=trace_id,
                principal=principal, model_id=model_id, task_type=task_type, input_data=sent_input,
                parameters=parameters, priority=level, deadline=deadline, timeout_seconds=timeout_seconds,
                reply_partition=partition, input_ref=input_ref)
            # Wait first: the reply may arrive before the broker's acknowledgement does.
            reply_future = self.replies.expect(correlation_id, partition)
            if partials is not None and isinstance(self.replies, PartialReplies):
                self.replies.watch_partials(correlation_id, partials)
            try:
                await self.sink.publish(MessageType.INFERENCE_REQUEST, record)
                reply = await asyncio.wait_for(reply_future, max(0.0, expires - time.monotonic()))
            except EventsUnavailable as exc:
                self.replies.discard(correlation_id)
                raise unavailable("SERVICE_UNAVAILABLE", "The request queue is unavailable; nothing was sent.",
                                  exc.retry_after_s) from exc
            except TimeoutError:
                self.replies.discard(correlation_id)
                observe_reply(model_id, level.value, "INFERENCE_TIMEOUT", time.perf_counter() - started, {})
                raise reply_error("INFERENCE_TIMEOUT",
                                  f"No result from {model_id} within {budget:g}s.") from None
            except ReplyPartitionRevoked as exc:
                self.replies.discard(correlation_id)
                if attempt < MAX_RESENDS and time.monotonic() < expires:
                    previous = message_id
                    continue  # re-send on a partition we own; the old reply is dropped wherever it lands
                raise unavailable("SERVICE_UNAVAILABLE", "The reply's route moved to another ingress replica "
                                  "(rebalance) too often.", 1.0) from exc
            except ReplyConsumerClosed as exc:
                raise unavailable("SERVICE_UNAVAILABLE", "This ingress is shutting down.", 1.0) from exc
            except BaseException:
                self.replies.discard(correlation_id)  # e.g. the client went away (cancelled)
                raise
            return self._render(model_id, level, await self._resolve_output(reply), started)
        raise AssertionError("unreachable")  # pragma: no cover

    async def infer_stream(self, principal: Principal, model_id: str, input_data: dict[str, Any],
                           parameters: dict[str, Any] | None = None, priority: str = "medium",
                           timeout_seconds: int = 60) -> AsyncIterator[tuple[str, Any]]:
        """``infer`` for a streamed request: ``("partial", output_data)`` for each partial reply the
        worker publishes (in ``sequence`` order; a re-sent request's repeats are skipped), then
        ``("result", infer's result)``. Errors raise as ``infer``'s do."""
        queue: asyncio.Queue[Reply] = asyncio.Queue()
        task = asyncio.ensure_future(self.infer(principal, model_id, input_data, parameters, priority,
                                                timeout_seconds, partials=queue))
        seen = [-1]

        def fresh(reply: Reply) -> bool:
            sequence = int((reply.get("metadata") or {}).get("sequence", seen[0] + 1))
            if sequence <= seen[0]:
                return False
            seen[0] = sequence
            return True

        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()  # the final reply is in; what is still queued is read below
                    break
                if fresh(reply := getter.result()):
                    yield "partial", reply.get("output_data") or {}
            while not queue.empty():
                if fresh(reply := queue.get_nowait()):
                    yield "partial", reply.get("output_data") or {}
            yield "result", task.result()
        finally:
            if not task.done():
                task.cancel()

    async def _reply_partition(self, expires: float) -> int:
        try:
            return self.replies.owned_partition()
        except NoReplyPartition:
            pass
        except ReplyConsumerClosed as exc:
            raise unavailable("SERVICE_UNAVAILABLE", "This ingress is shutting down.", 1.0) from exc
        try:
            wait = max(0.0, min(PARTITION_WAIT_S, expires - time.monotonic()))
            return await self.replies.wait_for_partition(wait)
        except (TimeoutError, NoReplyPartition, ReplyConsumerClosed) as exc:
            raise unavailable("NO_REPLY_PARTITION",
                              "This ingress replica owns no responses partition (rebalance in progress, or more "
                              "replicas than partitions).", 2.0) from exc

    async def _resolve_output(self, reply: Reply) -> Reply:
        """The reply with a large ``output_data`` fetched back from S3 (``output_ref``)."""
        if self.claims is None or not reply.get("output_ref"):
            return reply
        try:
            return await self.claims.resolve_output(reply)
        except ClaimCheckError as exc:
            raise DomainError(ErrorKind.UNAVAILABLE, "RESULT_REFERENCE_INVALID",
                              f"The model answered but its stored result failed its check: {exc}",
                              hint="Send the request again.") from exc
        except Exception as exc:
            raise unavailable("SERVICE_UNAVAILABLE", "The model answered but the object store holding its result "
                              "is unavailable.", 2.0) from exc

    @staticmethod
    def _render(model_id: str, priority: Priority, reply: Reply, started: float) -> dict[str, Any]:
        elapsed = time.perf_counter() - started
        if reply.get("status") != "success":
            error = reply.get("error") or {}
            code = str(error.get("code") or "INFERENCE_FAILED")
            observe_reply(model_id, priority.value, code, elapsed, reply.get("metadata") or {})
            raise reply_error(code, str(error.get("message") or "The worker failed without a message."))
        observe_reply(model_id, priority.value, "success", elapsed, reply.get("metadata") or {})
        metadata = dict(reply.get("metadata") or {})
        metadata.setdefault("device", "cpu")
        metadata["total_time_ms"] = round((time.perf_counter() - started) * 1000.0, 3)
        metadata["priority"] = priority.value
        return {"model_id": reply.get("model_id") or model_id, "output_data": reply.get("output_data") or {},
                "metadata": metadata}

