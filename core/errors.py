"""Domain errors: what went wrong, in terms every transport can map (REST status, gRPC code)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorKind(StrEnum):
    INVALID = "invalid"  # 400 / INVALID_ARGUMENT
    UNAUTHENTICATED = "unauthenticated"  # 401 / UNAUTHENTICATED
    FORBIDDEN = "forbidden"  # 403 / PERMISSION_DENIED
    NOT_FOUND = "not_found"  # 404 / NOT_FOUND
    CONFLICT = "conflict"  # 409 / ALREADY_EXISTS or FAILED_PRECONDITION
    TOO_LARGE = "too_large"  # 413 / INVALID_ARGUMENT
    UNSUPPORTED = "unsupported"  # 415 / INVALID_ARGUMENT
    RATE_LIMITED = "rate_limited"  # 429 / RESOURCE_EXHAUSTED
    TIMEOUT = "timeout"  # 408 / DEADLINE_EXCEEDED
    UNAVAILABLE = "unavailable"  # 503 / UNAVAILABLE
    INSUFFICIENT_MEMORY = "insufficient_memory"  # 507 / RESOURCE_EXHAUSTED


HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.TIMEOUT: 408,
    ErrorKind.CONFLICT: 409,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.UNSUPPORTED: 415,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.INSUFFICIENT_MEMORY: 507,
}


class DomainError(Exception):
    def __init__(
        self,
        kind: ErrorKind,
        code: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        hint: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message
        self.details = details
        self.hint = hint
        self.retry_after_s = retry_after_s


def not_found(code: str, message: str) -> DomainError:
    return DomainError(ErrorKind.NOT_FOUND, code, message)


def conflict(code: str, message: str, **details: Any) -> DomainError:
    return DomainError(ErrorKind.CONFLICT, code, message, details=details or None)


def invalid(code: str, message: str, **details: Any) -> DomainError:
    return DomainError(ErrorKind.INVALID, code, message, details=details or None)


def unavailable(code: str, message: str, retry_after_s: float = 1.0) -> DomainError:
    return DomainError(ErrorKind.UNAVAILABLE, code, message, retry_after_s=retry_after_s,
                       hint=f"Retry after {retry_after_s:.0f}s.")


def is_transient_infrastructure_error(exc: BaseException) -> bool:
    """Cassandra, S3 or Kafka unreachable or overloaded: nothing is wrong with the request or the
    message, so a client gets 503 + Retry-After and a consumer retries instead of dead-lettering."""
    from cassandra import OperationTimedOut, RequestExecutionException
    from cassandra.cluster import NoHostAvailable

    from core.events import EventsUnavailable

    transient: tuple[type[BaseException], ...] = (
        NoHostAvailable, OperationTimedOut, RequestExecutionException, EventsUnavailable, ConnectionError,
        TimeoutError,
    )
    try:
        from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

        transient += (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError)
    except ImportError:  # pragma: no cover - botocore is a dependency
        pass
    return isinstance(exc, transient)
