"""``JobStore`` on Cassandra: every transition is a lightweight transaction on ``status`` (and
``attempt`` for results), so replicas and workers agree on one outcome."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from core.cassandra.statements import CassandraRepository, as_utc
from core.serving.jobs import Job, JobStatus, JobStore

CAS_RETRIES = 20
JOB_FIELDS = (
    "job_id", "model_id", "task_type", "priority", "owner_key_id", "created_at", "deadline", "timeout_seconds",
    "status", "progress", "attempt", "worker", "started_at", "completed_at", "cancelled_at", "error_code",
    "error_message", "result",
)


class CassandraJobStore(CassandraRepository, JobStore):
    @staticmethod
    def _job(row: Any) -> Job:
        return Job(
            job_id=row.job_id, model_id=row.model_id or "", task_type=row.task_type or "",
            priority=row.priority or "medium", owner_key_id=row.owner_key_id or "",
            created_at=as_utc(row.created_at) or datetime.now(UTC), deadline=as_utc(row.deadline) or datetime.now(UTC),
            timeout_seconds=row.timeout_seconds or 0, status=JobStatus(row.status or "queued"),
            progress=row.progress or 0.0, attempt=row.attempt or 0, worker=row.worker,
            started_at=as_utc(row.started_at), completed_at=as_utc(row.completed_at),
            cancelled_at=as_utc(row.cancelled_at), error_code=row.error_code, error_message=row.error_message,
            result=json.loads(row.result) if row.result else None,
        )

    def create(self, job: Job) -> bool:
        values = [job.job_id, job.model_id, job.task_type, job.priority, job.owner_key_id, job.created_at,
                  job.deadline, job.timeout_seconds, job.status.value, job.progress, job.attempt, job.worker,
                  job.started_at, job.completed_at, job.cancelled_at, job.error_code, job.error_message,
                  json.dumps(job.result) if job.result is not None else None]
        cql = (f"INSERT INTO inference_jobs ({', '.join(JOB_FIELDS)}) "
               f"VALUES ({', '.join('?' * len(JOB_FIELDS))}) IF NOT EXISTS")
        return bool(self._run(cql, *values).one().applied)

    def get(self, job_id: str) -> Job | None:
        row = self._run("SELECT * FROM inference_jobs WHERE job_id = ?", job_id).one()
        return self._job(row) if row else None

    def discard_queued(self, job_id: str) -> bool:
        return bool(self._run("DELETE FROM inference_jobs WHERE job_id = ? IF status = ?",
                              job_id, JobStatus.QUEUED.value).one().applied)

    def claim(self, job_id: str, worker: str, at: datetime) -> Job | None:
        for _ in range(CAS_RETRIES):
            job = self.get(job_id)
            if job is None or job.status.terminal:
                return None
            # started_at keeps the first claim's time; a re-claim only bumps the attempt.
            applied = self._run(
                "UPDATE inference_jobs SET status = ?, attempt = ?, worker = ?, started_at = ? "
                "WHERE job_id = ? IF status = ? AND attempt = ?",
                JobStatus.PROCESSING.value, job.attempt + 1, worker, job.started_at or at, job_id,
                job.status.value, job.attempt,
            ).one().applied
            if applied:
                job.status, job.attempt, job.worker, job.started_at = (
                    JobStatus.PROCESSING, job.attempt + 1, worker, job.started_at or at)
                return job
        raise RuntimeError(f"job {job_id}: claim kept losing its compare-and-set")

    def finish(self, job_id: str, attempt: int, status: JobStatus, at: datetime, *,
               result: dict[str, Any] | None = None, error_code: str | None = None,
               error_message: str | None = None) -> bool:
        if status not in (JobStatus.COMPLETED, JobStatus.FAILED):
            raise ValueError(f"finish() ends a job as completed or failed, not {status}")
        if status is JobStatus.COMPLETED:
            return bool(self._run(
                "UPDATE inference_jobs SET status = ?, completed_at = ?, result = ?, progress = ? "
                "WHERE job_id = ? IF status = ? AND attempt = ?",
                status.value, at, json.dumps(result), 100.0, job_id, JobStatus.PROCESSING.value, attempt,
            ).one().applied)
        return bool(self._run(
            "UPDATE inference_jobs SET status = ?, completed_at = ?, error_code = ?, error_message = ? "
            "WHERE job_id = ? IF status = ? AND attempt = ?",
            status.value, at, error_code, error_message, job_id, JobStatus.PROCESSING.value, attempt,
        ).one().applied)

    def cancel(self, job_id: str, at: datetime) -> tuple[Job, bool] | None:
        for _ in range(CAS_RETRIES):
            job = self.get(job_id)
            if job is None:
                return None
            if job.status.terminal:
                return job, False
            if self._run(
                "UPDATE inference_jobs SET status = ?, cancelled_at = ?, completed_at = ? "
                "WHERE job_id = ? IF status = ?",
                JobStatus.CANCELLED.value, at, at, job_id, job.status.value,
            ).one().applied:
                job.status, job.cancelled_at, job.completed_at = JobStatus.CANCELLED, at, at
                return job, True
        raise RuntimeError(f"job {job_id}: cancel kept losing its compare-and-set")
