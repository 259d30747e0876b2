"""The one error envelope every endpoint answers with (seeds 000, 003, 004 and DESIGN.md):

``{"error": "not_found", "error_code": "MODEL_NOT_FOUND", "message": ..., "status_code": 404,
"details": {...}, "trace_id": ..., "hint": ..., "timestamp": ...}``
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import HTTP_STATUS, DomainError, ErrorKind, is_transient_infrastructure_error

# Seed 000's machine-readable `error` values are the snake_case HTTP reason.
_ERROR_BY_STATUS = {s.value: s.phrase.lower().replace(" ", "_").replace("-", "_") for s in HTTPStatus}


log = logging.getLogger(__name__)

class ErrorEnvelope(BaseModel):
    error: str = Field(description="Machine-readable error class, e.g. bad_request, not_found")
    error_code: str = Field(description="Specific code, e.g. DEVICE_NOT_FOUND, INVALID_CONFIG")
    message: str
    status_code: int
    details: dict[str, Any] | None = None
    validation_errors: list[dict[str, str]] | None = Field(
        None, description="Field-level errors of a 400 (seed 001 ValidationError)")
    hint: str | None = None
    status: str | None = Field(None, description="The job's status on job errors (seed 001 JOB_NOT_READY body)")
    trace_id: str | None = None
    timestamp: str


def envelope(
    status_code: int,
    error_code: str,
    message: str,
    *,
    details: dict[str, Any] | None = None,
    hint: str | None = None,
    trace_id: str | None = None,
    validation_errors: list[dict[str, str]] | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    return ErrorEnvelope(
        validation_errors=validation_errors,
        status=status,
        error=_ERROR_BY_STATUS.get(status_code, "error"),
        error_code=error_code,
        message=message,
        status_code=status_code,
        details=details,
        hint=hint,
        trace_id=trace_id,
        timestamp=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    ).model_dump()


def validation_failed(errors: Iterable[Any]) -> DomainError:
    """A pydantic error list as the 400 ``VALIDATION_ERROR`` every transport sends, each field named."""
    fields = [
        {"field": ".".join(str(p) for p in err.get("loc", ()) if p != "body"), "message": err.get("msg", "")}
        for err in errors
    ]
    first = fields[0] if fields else {"field": "", "message": "invalid request"}
    return DomainError(ErrorKind.INVALID, "VALIDATION_ERROR",
                       f"Validation failed: '{first['field']}' {first['message']}",
                       details={"errors": fields}, hint="Fix the listed fields and retry.")


def _field_errors(errors: object) -> list[dict[str, str]] | None:
    if not isinstance(errors, list) or not errors:
        return None
    return [{"field": str(e.get("field", "")), "message": str(e.get("message", ""))} for e in errors
            if isinstance(e, dict)] or None


def _trace_id(request: Request) -> str | None:
    value = getattr(request.state, "trace_id", None)
    return value if isinstance(value, str) else None


def domain_error_response(exc: DomainError, trace_id: str | None) -> JSONResponse:
    """A domain error in the envelope, with Retry-After when the error gives one."""
    status = HTTP_STATUS[exc.kind]
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    job_status = (exc.details or {}).get("status") if exc.code.startswith("JOB_") else None
    # Field errors of a domain 400 also go where seed 001's ValidationError list is expected.
    field_errors = (exc.details or {}).get("errors") if exc.kind is ErrorKind.INVALID else None
    body = envelope(
        status, exc.code, exc.message, details=exc.details, hint=exc.hint, trace_id=trace_id,
        status=job_status if isinstance(job_status, str) else None,
        validation_errors=_field_errors(field_errors),
    )
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain_error(request: Request, exc: DomainError) -> JSONResponse:
        return domain_error_response(exc, _trace_id(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Client mistakes are 400 with every field error, never a 500.
        return await _domain_error(request, validation_failed(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _ERROR_BY_STATUS.get(exc.status_code, "error").upper()
        body = envelope(exc.status_code, code, str(exc.detail), trace_id=_trace_id(request))
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_transient_infrastructure_error(exc):
            # Cassandra, S3 or Kafka is unreachable: the request was not applied and may be retried.
            log.warning("%s %s: infrastructure unavailable: %s: %s", request.method, request.url.path,
                        type(exc).__name__, exc)
            body = envelope(503, "SERVICE_UNAVAILABLE", "A backing service is unavailable; nothing was applied.",
                            hint="Retry after 2s.", trace_id=_trace_id(request))
            return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
        body = envelope(
            500, "INTERNAL_SERVER_ERROR", "Unexpected server error", trace_id=_trace_id(request),
            hint="Retry later; report the trace_id if it persists.",
        )
        return JSONResponse(body, status_code=500)
