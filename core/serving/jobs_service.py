"""Async inference (seed 001 §2.4.2, §2.5; seed 004 job cancellation): the domain core.

``submit`` validates like sync inference, records a queued job, then publishes the request to
its priority's topic with the ``job_id`` and no reply partition; a worker claims the job,
runs it and records the result (``consumers.inference.jobs.JobRunner``). Reads and cancels
go to the job store. Only the key that submitted a job, or an operator, may see or cancel it.

Cancel semantics: a queued job that is cancelled is never run (the worker's claim fails); a
processing job that is cancelled may finish computing, but its result is refused and the job
stays cancelled. ``POST .../cancel`` is idempotent (200 whatever the state, seed 004);
``DELETE`` is seed 001's cancel, 409 ``JOB_ALREADY_COMPLETED`` on a terminal job.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from core.auth import Principal
from core.errors import DomainError, ErrorKind, conflict, unavailable
from core.events import EventSink, EventsUnavailable
from core.logs import trace_id_var
from core.serving.jobs import Job, JobStatus, JobStore
from core.serving.service import InferenceService, offload_input, request_record
from schemas.clock import utcnow
from settings import Settings
from topology.messages import MessageType

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
JOB_NOT_READY_HINT = "Poll GET /api/v1/jobs/{job_id} until its status is completed."


def job_event(job: Job, correlation_id: str | None = None) -> dict[str, Any]:
    """A ``job_event`` record for the job's current state."""
    return {"job_id": job.job_id, "model_id": job.model_id, "status": job.status.wire_status,
            "progress": job.progress, "error_code": job.error_code, "error_message": job.error_message,
            "correlation_id": correlation_id or job.job_id}


def job_summary(job: Job) -> dict[str, Any]:
    """Seed 001 ``JobStatusResponse`` (plus priority, which a caller chose)."""
    error = {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
    return {"job_id": job.job_id, "model_id": job.model_id, "status": job.status.value, "progress": job.progress,
            "priority": job.priority, "created_at": job.created_at, "started_at": job.started_at,
            "completed_at": job.completed_at, "error": error}


class JobService:
    def __init__(self, settings: Settings, inference: InferenceService, store: JobStore, events: EventSink, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.inference = inference
        self.store = store
        self.events = events
        self.clock = clock

    async def _io(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Store calls block (Cassandra); an outage is a 503, never a 500."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except DomainError:
            raise
        except Exception as exc:
            log.warning("job store unavailable: %s: %s", type(exc).__name__, exc)
            raise unavailable("STORAGE_UNAVAILABLE", "The job store is unavailable.", 2.0) from exc

    async def submit(self, principal: Principal, model_id: str, input_data: dict[str, Any],
                     parameters: dict[str, Any] | None = None, priority: str = "medium",
                     timeout_seconds: int = 60) -> dict[str, Any]:
        """Seed 001 ``JobReference`` of a new queued job."""
        parameters = parameters or {}
        task_type, level = await self.inference.check_async(model_id, input_data, parameters, priority,
                                                            timeout_seconds)
        now = self.clock()
        job = Job(job_id=str(uuid.uuid4()), model_id=model_id, task_type=task_type, priority=level.value,
                  owner_key_id=principal.key_id, created_at=now, deadline=now + timedelta(seconds=timeout_seconds),
                  timeout_seconds=timeout_seconds)
        sent_input, input_ref = await offload_input(self.inference.claims, input_data)
        await self._io(self.store.create, job)
        record = request_record(
            message_id=str(uuid.uuid4()), correlation_id=job.job_id, causation_id=None,
            trace_id=trace_id_var.get() or uuid.uuid4().hex, principal=principal, model_id=model_id,
            task_type=task_type, input_data=sent_input, parameters=parameters, priority=level,
            deadline=job.deadline, timeout_seconds=timeout_seconds, job_id=job.job_id, input_ref=input_ref)
        try:
            await self.events.publish(MessageType.INFERENCE_REQUEST, record)
        except EventsUnavailable as exc:
            # Not queued: remove the row so no job waits forever for a request that does not exist.
            await self._io(self.store.discard_queued, job.job_id)
            raise unavailable("SERVICE_UNAVAILABLE", "The request queue is unavailable; no job was created.",
                              exc.retry_after_s) from exc
        # The job is queued and will run whatever happens next: a lost event must not turn into a
        # 503 that makes the caller submit it twice.
        await self._record(principal, "inference.job.submit", job, after=job_summary(job))
        return {"job_id": job.job_id, "status": job.status.value, "created_at": job.created_at,
                "status_url": f"/api/v1/jobs/{job.job_id}"}

    async def _record(self, principal: Principal, action: str, job: Job, *,
                      before: dict[str, Any] | None = None, after: dict[str, Any] | None = None) -> None:
        try:
            await self.events.publish(MessageType.JOB_EVENT, job_event(job))
            await self.events.audit(actor=principal.key_id, action=action, subject=f"job/{job.job_id}",
                                    outcome="accepted", before=_jsonable(before), after=_jsonable(after))
        except EventsUnavailable as exc:
            log.error("job %s: %s recorded in the job store but its event was not published: %s",
                      job.job_id, action, exc)

    async def _visible(self, principal: Principal, job_id: str) -> Job:
        job = await self._io(self.store.get, job_id)
        if job is None:
            raise DomainError(ErrorKind.NOT_FOUND, "JOB_NOT_FOUND", f"Job '{job_id}' does not exist.",
                              details={"job_id": job_id})
        if not principal.is_operator and job.owner_key_id != principal.key_id:
            raise DomainError(ErrorKind.FORBIDDEN, "FORBIDDEN", "This job was submitted with another API key.")
        return job

    async def status(self, principal: Principal, job_id: str) -> dict[str, Any]:
        return job_summary(await self._visible(principal, job_id))

    async def result(self, principal: Principal, job_id: str) -> dict[str, Any]:
        """Seed 001 ``InferenceResponse`` of a completed job; 409 otherwise, with the job's status."""
        job = await self._visible(principal, job_id)
        if job.status is JobStatus.COMPLETED and job.result is not None:
            return {"model_id": job.model_id, "output_data": job.result.get("output_data") or {},
                    "metadata": job.result.get("metadata") or {}}
        if job.status in (JobStatus.QUEUED, JobStatus.PROCESSING):
            raise DomainError(ErrorKind.CONFLICT, "JOB_NOT_READY", f"Job '{job_id}' is {job.status.value}.",
                              details={"status": job.status.value}, hint=JOB_NOT_READY_HINT)
        details: dict[str, Any] = {"status": job.status.value}
        if job.error_code:
            details["error"] = {"code": job.error_code, "message": job.error_message or ""}
        raise DomainError(ErrorKind.CONFLICT, f"JOB_{job.status.value.upper()}",
                          f"Job '{job_id}' is {job.status.value} and has no result.", details=details)

    async def cancel(self, principal: Principal, job_id: str) -> dict[str, Any]:
        """Seed 004 ``CancellationResponse``: idempotent, 200 also for a job already terminal."""
        before = await self._visible(principal, job_id)
        outcome = await self._io(self.store.cancel, job_id, self.clock())
        if outcome is None:  # expired between the two reads
            raise DomainError(ErrorKind.NOT_FOUND, "JOB_NOT_FOUND", f"Job '{job_id}' does not exist.")
        job, changed = outcome
        if changed:
            await self._record(principal, "inference.job.cancel", job, before=job_summary(before),
                               after=job_summary(job))
            message = ("Job cancelled before it ran." if before.status is JobStatus.QUEUED else
                       "Job cancelled while running; its result will be discarded.")
        elif job.status is JobStatus.CANCELLED:
            message = "Job was already cancelled."
        else:
            message = f"Job already {job.status.value}; nothing to cancel."
        return {"job_id": job.job_id, "status": job.status.value, "cancelled_at": job.cancelled_at,
                "message": message}

    async def delete(self, principal: Principal, job_id: str) -> dict[str, Any]:
        """Seed 001 ``DELETE /jobs/{id}``: cancel, or 409 when the job is already terminal."""
        before = await self._visible(principal, job_id)
        if before.status.terminal:
            raise conflict("JOB_ALREADY_COMPLETED", f"Job '{job_id}' is already {before.status.value}.",
                           status=before.status.value)
        outcome = await self.cancel(principal, job_id)
        if outcome["status"] != JobStatus.CANCELLED.value:  # finished between the read and the cancel
            raise conflict("JOB_ALREADY_COMPLETED", f"Job '{job_id}' is already {outcome['status']}.",
                           status=outcome["status"])
        return {"job_id": job_id, "status": outcome["status"]}


def _jsonable(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in summary.items()}
