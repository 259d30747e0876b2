"""The worker's side of async jobs: claim, run, record the outcome once.

A request with a ``job_id`` runs only if its job can be claimed (``queued -> processing``, or
a re-claim after a crash); a cancelled job is skipped without touching the model. The
outcome is written with the claim's ``attempt`` so that only the latest run of a job that is
still ``processing`` completes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

from core.serving.jobs import Job, JobStatus, JobStore
from core.serving.jobs_service import job_event

log = logging.getLogger(__name__)


class Answerer(Protocol):
    async def answer(self, request: dict[str, Any]) -> dict[str, Any]: ...


class JobOutcome:
    """What one job request led to: the reply to publish and the job event, or nothing (skipped)."""

    def __init__(self, response: dict[str, Any] | None, job: Job | None, event: dict[str, Any] | None) -> None:
        self.response = response
        self.job = job
        self.event = event


class JobRunner:
    def __init__(self, store: JobStore | Callable[[], JobStore], handler: Answerer, *, worker: str,
                 clock: Callable[[], datetime]) -> None:
        # A factory defers connecting to Cassandra until the first job: sync-only traffic never needs it.
        self._store = store
        self.handler = handler
        self.worker = worker
        self.clock = clock
        self.skipped = 0  # cancelled (or unknown) jobs not run
        self.superseded = 0  # results refused: cancelled while running, or re-claimed elsewhere

    def store(self) -> JobStore:
        if not isinstance(self._store, JobStore):
            self._store = self._store()
        return self._store

    async def run(self, request: dict[str, Any], on_claimed: Callable[[dict[str, Any]], Any] | None = None
                  ) -> JobOutcome:
        job_id = str(request["job_id"])
        store = await asyncio.to_thread(self.store)
        job = await asyncio.to_thread(store.claim, job_id, self.worker, self.clock())
        if job is None:
            self.skipped += 1
            log.info("job %s is cancelled or unknown: not run", job_id)
            return JobOutcome(None, None, None)
        if on_claimed is not None:
            await on_claimed(job_event(job, request.get("correlation_id")))
        response = await self.handler.answer(request)
        ok = response.get("status") == "success"
        error = response.get("error") or {}
        status, at = (JobStatus.COMPLETED if ok else JobStatus.FAILED), self.clock()
        result = ({"output_data": response.get("output_data") or {}, "metadata": response.get("metadata") or {}}
                  if ok else None)
        error_code = None if ok else str(error.get("code") or "INFERENCE_FAILED")
        error_message = None if ok else str(error.get("message") or "")
        finished = await asyncio.to_thread(store.finish, job_id, job.attempt, status, at, result=result,
                                           error_code=error_code, error_message=error_message)
        if not finished:
            self.superseded += 1
            log.info("job %s: result of attempt %d refused (cancelled or re-claimed)", job_id, job.attempt)
            return JobOutcome(None, job, None)
        # The CAS succeeded, so the row is exactly what was written: no need to read it back.
        final = replace(job, status=status, completed_at=at, result=result, error_code=error_code,
                        error_message=error_message, progress=100.0 if ok else job.progress)
        return JobOutcome(response, final, job_event(final, request.get("correlation_id")))
