"""Domain errors as gRPC statuses: seed 001 §5.2's codes, with the spec's ``Error`` as the detail.

A failed call ends with the status code of the error's kind and, in the standard
``grpc-status-details-bin`` trailer, a ``google.rpc.Status`` whose details hold a
``modelmora.v1.Error`` (code such as ``MODEL_NOT_FOUND``, message, details, trace id) and, when
a retry may help, a ``google.rpc.RetryInfo``. Clients read them with
``grpc_status.rpc_status.from_call``; ``retry-after`` and ``x-trace-id`` trailers say the same
for clients that only look at metadata. Unexpected failures are INTERNAL with a trace id and
no internals, as REST's 500.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from api.grpc.convert import error_details
from core.errors import DomainError, ErrorKind, is_transient_infrastructure_error
from modelmora.v1 import common_pb2

log = logging.getLogger(__name__)

GRPC_STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,  # ALREADY_EXISTS for duplicates, below
    ErrorKind.TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNSUPPORTED: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.INSUFFICIENT_MEMORY: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@dataclass(frozen=True)
class Failure:
    """One error as a transport sends it: the status code and the spec's ``Error``."""

    status: grpc.StatusCode
    error: common_pb2.Error
    retry_after_s: float | None = None


def status_code(error: DomainError) -> grpc.StatusCode:
    if error.kind is ErrorKind.CONFLICT and error.code.endswith("ALREADY_EXISTS"):
        return grpc.StatusCode.ALREADY_EXISTS  # a duplicate resource; other conflicts are a wrong state
    return GRPC_STATUS[error.kind]


def failure(exc: BaseException, trace_id: str) -> Failure:
    """Any exception of a handler as what the client is told."""
    if isinstance(exc, DomainError):
        details = dict(exc.details or {})
        if exc.hint:
            details["hint"] = exc.hint
        return Failure(status_code(exc), common_pb2.Error(code=exc.code, message=exc.message,
                                                          details=error_details(details), trace_id=trace_id),
                       exc.retry_after_s)
    if is_transient_infrastructure_error(exc):
        log.warning("gRPC: infrastructure unavailable: %s: %s", type(exc).__name__, exc)
        return Failure(grpc.StatusCode.UNAVAILABLE,
                       common_pb2.Error(code="SERVICE_UNAVAILABLE", trace_id=trace_id,
                                        message="A backing service is unavailable; nothing was applied."), 2.0)
    log.error("gRPC: unexpected error (trace %s)", trace_id, exc_info=exc)
    return Failure(grpc.StatusCode.INTERNAL, common_pb2.Error(code="INTERNAL_ERROR", message="Unexpected server error",
                                                              trace_id=trace_id))


def trailers(failed: Failure) -> Sequence[tuple[str, str | bytes]]:
    packed = any_pb2.Any()
    packed.Pack(failed.error)
    details = [packed]
    metadata: list[tuple[str, str | bytes]] = [("x-trace-id", failed.error.trace_id)]
    if failed.retry_after_s is not None:
        retry = any_pb2.Any()
        seconds = max(1, math.ceil(failed.retry_after_s))
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds)))
        details.append(retry)
        metadata.append(("retry-after", str(seconds)))
    status = status_pb2.Status(code=failed.status.value[0], message=failed.error.message, details=details)
    return [("grpc-status-details-bin", status.SerializeToString()), *metadata]


async def abort(context: grpc.aio.ServicerContext, failed: Failure) -> NoReturn:
    """End the call with ``failed`` as its status (``context.abort`` raises)."""
    await context.abort(failed.status, failed.error.message, trailing_metadata=tuple(trailers(failed)))
    raise AssertionError("context.abort returned")  # pragma: no cover
