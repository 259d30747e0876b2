"""Errors of the inference worker, as domain errors with the seed's error codes.

Every class carries a stable ``code`` (seed 001 §5.3) so the worker can put it in the
response message's ``error.code`` and the ingress can map it to the one error envelope.
"""

from __future__ import annotations

from typing import Any

from core.errors import DomainError, ErrorKind


class InferenceError(DomainError):
    """Base of every error raised by runtimes, the model cache and the batcher."""

    default_kind: ErrorKind = ErrorKind.UNAVAILABLE
    default_code: str = "INFERENCE_FAILED"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        kind: ErrorKind | None = None,
        details: dict[str, Any] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(kind or self.default_kind, code or self.default_code, message, details=details, hint=hint)


class InvalidInputError(InferenceError):
    """The request's input does not fit the model's contract (never retried)."""

    default_kind = ErrorKind.INVALID
    default_code = "INVALID_INPUT"


class InferenceFailedError(InferenceError):
    """The model ran and failed on an input that passed validation."""

    default_code = "INFERENCE_FAILED"


class InferenceTimeoutError(InferenceError):
    """The request's deadline passed before it could run; it was not run."""

    default_kind = ErrorKind.TIMEOUT
    default_code = "INFERENCE_TIMEOUT"


class ModelNotFoundError(InferenceError):
    """No runtime can be made for this model id (not built in, not in the catalog)."""

    default_kind = ErrorKind.NOT_FOUND
    default_code = "MODEL_NOT_FOUND"


class ModelLoadError(InferenceError):
    """A model file or package could not be loaded into a runtime."""

    default_code = "MODEL_LOAD_FAILED"


class ModelNotReadyError(ModelLoadError):
    """A registry model onboarded from a source_url is not ``ready`` (never downloaded, downloading, failed)."""

    default_kind = ErrorKind.CONFLICT
    default_code = "MODEL_NOT_READY"


class ModelNotLoadedError(InferenceError):
    """``infer_batch`` was called on a runtime that is not loaded (or was closed)."""

    default_kind = ErrorKind.CONFLICT
    default_code = "MODEL_NOT_LOADED"


class ModelUnavailableError(ModelLoadError):
    """The model cannot exist on this deployment (e.g. no offline weights); retrying will not help."""

    default_kind = ErrorKind.UNAVAILABLE
    default_code = "MODEL_UNAVAILABLE"


class InsufficientMemoryError(InferenceError):
    """The model does not fit the worker's memory budget (HTTP 507 in seed 001)."""

    # ErrorKind has no 507 yet; UNAVAILABLE keeps transports answering with a server-side status.
    default_kind = ErrorKind.UNAVAILABLE
    default_code = "INSUFFICIENT_MEMORY"


class BatcherClosedError(InferenceError):
    """The batcher was closed before the request ran."""

    default_code = "SERVICE_UNAVAILABLE"


class QueueFullError(InferenceError):
    """The per-model queue is at capacity: back-pressure, retry later."""

    default_kind = ErrorKind.RATE_LIMITED
    default_code = "SERVICE_UNAVAILABLE"
