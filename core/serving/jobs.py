"""Async inference jobs: the state machine, the store interface and its in-memory implementation.

A job moves ``queued -> processing -> completed | failed`` and may be ``cancelled`` from
``queued`` or ``processing``. Every transition is a compare-and-set, so across ingress
replicas and worker processes:

- a job cancelled while queued is never run: the worker's claim (``queued -> processing``)
  fails and the request is skipped;
- a job completes once: the result is written only by the holder of the latest claim
  (``attempt``), and only while the job is still ``processing``. A request re-delivered after a
  worker crash re-claims the job (``attempt + 1``); the earlier run's result, if it ever comes,
  is refused.

The Cassandra implementation is ``core.serving.cassandra_jobs.CassandraJobStore``; both run
the one suite in ``tests/job_store_contract.py``.
"""

from __future__ import annotations

import copy
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    """Seed 001 ``JobStatus``."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)

    @property
    def wire_status(self) -> str:
        """The symbol of ``job_event`` v1's Avro enum, which names ``processing`` ``running``."""
        return "running" if self is JobStatus.PROCESSING else self.value


@dataclass
class Job:
    job_id: str
    model_id: str
    task_type: str
    priority: str
    owner_key_id: str
    created_at: datetime
    deadline: datetime
    timeout_seconds: int
    status: JobStatus = JobStatus.QUEUED
    progress: float = 0.0
    attempt: int = 0  # claims so far; the claim token of the current run
    worker: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    cancelled_at: datetime | None = None
    error_code: str | None = None
    error_message: str | None = None
    result: dict[str, Any] | None = field(default=None, repr=False)


class JobStore(ABC):
    """Job rows with compare-and-set transitions. Methods block (Cassandra); call them off the loop."""

    @abstractmethod
    def create(self, job: Job) -> bool:
        """Insert a new queued job; False if the id exists."""

    @abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    def discard_queued(self, job_id: str) -> bool:
        """Remove a job that never reached the queue (its request could not be published)."""

    @abstractmethod
    def claim(self, job_id: str, worker: str, at: datetime) -> Job | None:
        """``queued -> processing``, or a re-claim of a ``processing`` job (re-delivery after a crash).

        Returns the job with its new ``attempt`` (the token ``finish`` needs), or None when the job
        is unknown or terminal (cancelled: do not run it).
        """

    @abstractmethod
    def finish(self, job_id: str, attempt: int, status: JobStatus, at: datetime, *,
               result: dict[str, Any] | None = None, error_code: str | None = None,
               error_message: str | None = None) -> bool:
        """``processing -> completed | failed`` by the holder of claim ``attempt``; False otherwise."""

    @abstractmethod
    def cancel(self, job_id: str, at: datetime) -> tuple[Job, bool] | None:
        """Cancel a queued or processing job: (job as it now is, whether this call cancelled it).

        None when the job does not exist. A terminal job is returned unchanged with False.
        """


class InMemoryJobStore(JobStore):
    """For unit tests and single-process tools; one lock stands in for Cassandra's Paxos."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def create(self, job: Job) -> bool:
        with self._lock:
            if job.job_id in self._jobs:
                return False
            self._jobs[job.job_id] = copy.deepcopy(job)
            return True

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return copy.deepcopy(job) if job is not None else None

    def discard_queued(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status is not JobStatus.QUEUED:
                return False
            del self._jobs[job_id]
            return True

    def claim(self, job_id: str, worker: str, at: datetime) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status.terminal:
                return None
            started = job.started_at or at
            self._jobs[job_id] = replace(job, status=JobStatus.PROCESSING, attempt=job.attempt + 1, worker=worker,
                                         started_at=started)
            return copy.deepcopy(self._jobs[job_id])

    def finish(self, job_id: str, attempt: int, status: JobStatus, at: datetime, *,
               result: dict[str, Any] | None = None, error_code: str | None = None,
               error_message: str | None = None) -> bool:
        if status not in (JobStatus.COMPLETED, JobStatus.FAILED):
            raise ValueError(f"finish() ends a job as completed or failed, not {status}")
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status is not JobStatus.PROCESSING or job.attempt != attempt:
                return False
            self._jobs[job_id] = replace(
                job, status=status, completed_at=at, result=copy.deepcopy(result), error_code=error_code,
                error_message=error_message, progress=100.0 if status is JobStatus.COMPLETED else job.progress)
            return True

    def cancel(self, job_id: str, at: datetime) -> tuple[Job, bool] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status.terminal:
                return copy.deepcopy(job), False
            self._jobs[job_id] = replace(job, status=JobStatus.CANCELLED, cancelled_at=at, completed_at=at)
            return copy.deepcopy(self._jobs[job_id]), True
