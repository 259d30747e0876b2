"""``TrainingJobStore`` on Cassandra: transitions are lightweight transactions on ``status`` (and
``attempt`` for the trainer's writes); the seed's ``TrainingJob`` is one JSON document beside them.

Listing reads every job row and sorts (training jobs are few: operators start them by hand).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from core.cassandra.statements import CassandraRepository
from core.training.schemas import TrainingJob, TrainingJobStatus, TrainingMetrics
from core.training.store import (
    CLAIMABLE,
    JobPage,
    JobRow,
    TrainingJobStore,
    newest_first,
    transitioned,
)

S = TrainingJobStatus
CAS_RETRIES = 20


def _doc(job: TrainingJob) -> str:
    return job.model_dump_json(exclude={"status"})


class CassandraTrainingJobStore(CassandraRepository, TrainingJobStore):
    @staticmethod
    def _row(row: Any) -> JobRow:
        doc = json.loads(row.doc)
        doc["status"] = row.status  # the column is authoritative: transitions compare-and-set on it
        return JobRow(TrainingJob.model_validate(doc), row.attempt or 0, row.worker)

    def create(self, job: TrainingJob) -> bool:
        return bool(self._run(
            "INSERT INTO training_jobs (job_id, status, attempt, worker, created_at, doc) "
            "VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS",
            job.job_id, job.status.value, 0, None, job.created_at, _doc(job)).one().applied)

    def get(self, job_id: str) -> JobRow | None:
        row = self._run("SELECT * FROM training_jobs WHERE job_id = ?", job_id).one()
        return self._row(row) if row else None

    def list_jobs(self, page: int, page_size: int) -> JobPage:
        jobs = [self._row(r).job for r in self._run("SELECT * FROM training_jobs")]
        return newest_first(jobs, page, page_size)

    def _write(self, row: JobRow, job: TrainingJob, *, status: S, attempt: int, worker: str | None) -> bool:
        """Compare-and-set on the row's status and attempt as read."""
        return bool(self._run(
            "UPDATE training_jobs SET status = ?, attempt = ?, worker = ?, doc = ? "
            "WHERE job_id = ? IF status = ? AND attempt = ?",
            status.value, attempt, worker, _doc(job), job.job_id, row.job.status.value, row.attempt).one().applied)

    def transition(self, job_id: str, expected: TrainingJobStatus, new: TrainingJobStatus, *,
                   error_message: str | None = None, at: datetime | None = None) -> bool:
        row = self.get(job_id)
        if row is None or row.job.status is not expected:
            return False
        return self._write(row, transitioned(row.job, new, error_message, at), status=new, attempt=row.attempt,
                           worker=row.worker)

    def claim(self, job_id: str, worker: str, at: datetime) -> JobRow | None:
        for _ in range(CAS_RETRIES):
            row = self.get(job_id)
            if row is None or row.job.status not in CLAIMABLE:
                return None
            job = row.job.model_copy(update={"status": S.RUNNING, "started_at": row.job.started_at or at})
            if self._write(row, job, status=S.RUNNING, attempt=row.attempt + 1, worker=worker):
                return JobRow(job, row.attempt + 1, worker)
        raise RuntimeError(f"training job {job_id}: claim kept losing its compare-and-set")

    def _update_held(self, job_id: str, attempt: int, update: dict[str, Any]) -> bool:
        for _ in range(CAS_RETRIES):
            row = self.get(job_id)
            if row is None or row.attempt != attempt or row.job.status is not S.RUNNING:
                return False
            updated = row.job.model_copy(update=update, deep=True)
            if self._write(row, updated, status=updated.status, attempt=attempt, worker=row.worker):
                return True
        raise RuntimeError(f"training job {job_id}: update kept losing its compare-and-set")

    def cancel(self, job_id: str, at: datetime) -> tuple[TrainingJob, bool] | None:
        for _ in range(CAS_RETRIES):
            row = self.get(job_id)
            if row is None:
                return None
            if row.job.status.terminal:
                return row.job, False
            job = row.job.model_copy(update={"status": S.CANCELLED, "completed_at": at})
            if self._write(row, job, status=S.CANCELLED, attempt=row.attempt, worker=row.worker):
                return job, True
        raise RuntimeError(f"training job {job_id}: cancel kept losing its compare-and-set")

    def add_metrics(self, job_id: str, metrics: TrainingMetrics) -> None:
        self._run("INSERT INTO training_job_metrics (job_id, step, metrics) VALUES (?, ?, ?)",
                  job_id, metrics.step, metrics.model_dump_json())

    def metrics_history(self, job_id: str) -> list[TrainingMetrics]:
        return [TrainingMetrics.model_validate_json(r.metrics)
                for r in self._run("SELECT metrics FROM training_job_metrics WHERE job_id = ?", job_id)]
