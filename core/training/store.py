"""Where training jobs live: ``TrainingJobStore`` is the interface, ``InMemoryTrainingJobStore`` serves
unit tests and ``core.training.cassandra_store.CassandraTrainingJobStore`` every environment;
``tests/training_store_contract.py`` runs against both.

The ``status`` (and the trainer's ``attempt``) decide every transition by compare-and-set, so the
ingress cancelling and a trainer reporting progress agree on one outcome: once a job is cancelled,
no progress or finish from its trainer lands.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from core.training.schemas import TrainingJob, TrainingJobStatus, TrainingMetrics

S = TrainingJobStatus
CLAIMABLE = frozenset({S.QUEUED, S.RUNNING})  # RUNNING: a redelivery after the trainer died


@dataclass(frozen=True)
class JobRow:
    job: TrainingJob
    attempt: int = 0  # how many times a trainer claimed it
    worker: str | None = None  # the trainer that holds it


@dataclass(frozen=True)
class JobPage:
    items: list[TrainingJob]
    total: int


class TrainingJobStore(ABC):
    @abstractmethod
    def create(self, job: TrainingJob) -> bool:
        """Insert a new job; False (nothing written) when the id is taken."""

    @abstractmethod
    def get(self, job_id: str) -> JobRow | None: ...

    @abstractmethod
    def list_jobs(self, page: int, page_size: int) -> JobPage:
        """Newest first; ``page`` counts from 1."""

    @abstractmethod
    def transition(self, job_id: str, expected: TrainingJobStatus, new: TrainingJobStatus, *,
                   error_message: str | None = None, at: datetime | None = None) -> bool:
        """``expected`` -> ``new`` (e.g. pending -> queued) if the job is still ``expected``."""

    @abstractmethod
    def claim(self, job_id: str, worker: str, at: datetime) -> JobRow | None:
        """Queued or running -> running with ``attempt + 1`` (``started_at`` keeps the first claim);
        None when the job is gone or already over (cancelled, completed, failed)."""

    def save_progress(self, job_id: str, attempt: int, job: TrainingJob) -> bool:
        """Write the progress fields of ``job`` (steps, epoch, progress, metrics, checkpoints, carbon)
        if ``attempt`` still holds the job and it is running."""
        return self._update_held(job_id, attempt, {f: getattr(job, f) for f in PROGRESS_FIELDS})

    def finish(self, job_id: str, attempt: int, job: TrainingJob) -> bool:
        """``job.status`` (completed or failed) with its final fields, if ``attempt`` still holds it running."""
        if job.status not in (S.COMPLETED, S.FAILED):
            raise ValueError(f"finish() ends a job as completed or failed, not {job.status}")
        return self._update_held(job_id, attempt, {f: getattr(job, f) for f in FINAL_FIELDS})

    @abstractmethod
    def _update_held(self, job_id: str, attempt: int, update: dict[str, Any]) -> bool:
        """Apply ``update`` to the stored job if ``attempt`` still holds it and it is running."""

    @abstractmethod
    def cancel(self, job_id: str, at: datetime) -> tuple[TrainingJob, bool] | None:
        """Cancel unless already over: (job as it is now, whether this call cancelled it); None when unknown."""

    @abstractmethod
    def add_metrics(self, job_id: str, metrics: TrainingMetrics) -> None:
        """Keep one logged ``TrainingMetrics`` (by step: a resumed run's re-logged step replaces it)."""

    @abstractmethod
    def metrics_history(self, job_id: str) -> list[TrainingMetrics]:
        """Every kept ``TrainingMetrics``, by step."""


PROGRESS_FIELDS = ("current_epoch", "current_step", "total_steps", "total_epochs", "progress", "metrics",
                   "checkpoints", "carbon")
FINAL_FIELDS = (*PROGRESS_FIELDS, "status", "completed_at", "error_message", "model_id")


def transitioned(job: TrainingJob, new: TrainingJobStatus, error_message: str | None,
                 at: datetime | None) -> TrainingJob:
    """``job`` moved to ``new`` as ``transition`` writes it (every store)."""
    moved = job.model_copy(update={"status": new})
    if error_message is not None:
        moved.error_message = error_message
    if new.terminal:
        moved.completed_at = at
    return moved


def newest_first(jobs: list[TrainingJob], page: int, page_size: int) -> JobPage:
    ordered = sorted(jobs, key=lambda j: (j.created_at, j.job_id), reverse=True)
    start = (page - 1) * page_size
    return JobPage(ordered[start:start + page_size], len(ordered))


class InMemoryTrainingJobStore(TrainingJobStore):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, JobRow] = {}
        self._metrics: dict[str, dict[int, TrainingMetrics]] = {}

    def create(self, job: TrainingJob) -> bool:
        with self._lock:
            if job.job_id in self._rows:
                return False
            self._rows[job.job_id] = JobRow(job.model_copy(deep=True))
            return True

    def get(self, job_id: str) -> JobRow | None:
        with self._lock:
            row = self._rows.get(job_id)
            return None if row is None else replace(row, job=row.job.model_copy(deep=True))

    def list_jobs(self, page: int, page_size: int) -> JobPage:
        with self._lock:
            jobs = [r.job.model_copy(deep=True) for r in self._rows.values()]
        return newest_first(jobs, page, page_size)

    def transition(self, job_id: str, expected: TrainingJobStatus, new: TrainingJobStatus, *,
                   error_message: str | None = None, at: datetime | None = None) -> bool:
        with self._lock:
            row = self._rows.get(job_id)
            if row is None or row.job.status is not expected:
                return False
            self._rows[job_id] = replace(row, job=transitioned(row.job, new, error_message, at))
            return True

    def claim(self, job_id: str, worker: str, at: datetime) -> JobRow | None:
        with self._lock:
            row = self._rows.get(job_id)
            if row is None or row.job.status not in CLAIMABLE:
                return None
            job = row.job.model_copy(update={"status": S.RUNNING, "started_at": row.job.started_at or at})
            claimed = self._rows[job_id] = JobRow(job, row.attempt + 1, worker)
            return replace(claimed, job=job.model_copy(deep=True))

    def _held(self, job_id: str, attempt: int) -> JobRow | None:
        row = self._rows.get(job_id)
        if row is None or row.attempt != attempt or row.job.status is not S.RUNNING:
            return None
        return row

    def _update_held(self, job_id: str, attempt: int, update: dict[str, Any]) -> bool:
        with self._lock:
            row = self._held(job_id, attempt)
            if row is None:
                return False
            self._rows[job_id] = replace(row, job=row.job.model_copy(update=update, deep=True))
            return True

    def cancel(self, job_id: str, at: datetime) -> tuple[TrainingJob, bool] | None:
        with self._lock:
            row = self._rows.get(job_id)
            if row is None:
                return None
            if row.job.status.terminal:
                return row.job.model_copy(deep=True), False
            job = row.job.model_copy(update={"status": S.CANCELLED, "completed_at": at})
            self._rows[job_id] = replace(row, job=job)
            return job.model_copy(deep=True), True

    def add_metrics(self, job_id: str, metrics: TrainingMetrics) -> None:
        with self._lock:
            self._metrics.setdefault(job_id, {})[metrics.step] = metrics.model_copy()

    def metrics_history(self, job_id: str) -> list[TrainingMetrics]:
        with self._lock:
            return [m.model_copy() for _, m in sorted(self._metrics.get(job_id, {}).items())]
