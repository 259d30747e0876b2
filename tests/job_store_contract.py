"""One test suite for every ``JobStore`` implementation (memory in unit, Cassandra in integration).

Each implementation's module defines a ``job_store`` fixture and does
``from tests.job_store_contract import *``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from core.serving.jobs import Job, JobStatus, JobStore

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def make_job(**overrides: object) -> Job:
    fields: dict[str, object] = {
        "job_id": str(uuid.uuid4()), "model_id": "sentence-transformers/all-MiniLM-L6-v2", "task_type": "txt2embed",
        "priority": "high", "owner_key_id": "key_abc", "created_at": T0, "deadline": T0 + timedelta(seconds=60),
        "timeout_seconds": 60,
    }
    fields.update(overrides)
    return Job(**fields)  # type: ignore[arg-type]


def test_create_is_unique_and_get_reads_it_back(job_store: JobStore) -> None:
    job = make_job()
    assert job_store.create(job)
    assert not job_store.create(make_job(job_id=job.job_id, model_id="other"))
    stored = job_store.get(job.job_id)
    assert stored is not None
    assert (stored.model_id, stored.status, stored.attempt, stored.created_at) == (
        job.model_id, JobStatus.QUEUED, 0, T0)
    assert job_store.get(str(uuid.uuid4())) is None


def test_claim_then_complete_once(job_store: JobStore) -> None:
    job = make_job()
    job_store.create(job)
    claimed = job_store.claim(job.job_id, "worker-1", T0 + timedelta(seconds=1))
    assert claimed is not None and claimed.status is JobStatus.PROCESSING and claimed.attempt == 1
    assert claimed.started_at == T0 + timedelta(seconds=1)
    result = {"output_data": {"embedding": [0.5, 0.25]}, "metadata": {"batch_size": 1}}
    assert job_store.finish(job.job_id, 1, JobStatus.COMPLETED, T0 + timedelta(seconds=2), result=result)
    # A second completion (duplicate delivery) is refused and changes nothing.
    assert not job_store.finish(job.job_id, 1, JobStatus.COMPLETED, T0 + timedelta(seconds=3), result={"x": 1})
    done = job_store.get(job.job_id)
    assert done is not None
    assert (done.status, done.result, done.progress, done.completed_at) == (
        JobStatus.COMPLETED, result, 100.0, T0 + timedelta(seconds=2))
    assert job_store.claim(job.job_id, "worker-2", T0) is None  # terminal: never run again


def test_failure_records_the_error(job_store: JobStore) -> None:
    job = make_job()
    job_store.create(job)
    claimed = job_store.claim(job.job_id, "w", T0)
    assert claimed is not None
    assert job_store.finish(job.job_id, claimed.attempt, JobStatus.FAILED, T0, error_code="INFERENCE_TIMEOUT",
                            error_message="too late")
    failed = job_store.get(job.job_id)
    assert failed is not None
    assert (failed.status, failed.error_code, failed.error_message, failed.result) == (
        JobStatus.FAILED, "INFERENCE_TIMEOUT", "too late", None)


def test_cancelled_queued_job_is_never_claimed(job_store: JobStore) -> None:
    job = make_job()
    job_store.create(job)
    outcome = job_store.cancel(job.job_id, T0 + timedelta(seconds=1))
    assert outcome is not None
    cancelled, changed = outcome
    assert changed and cancelled.status is JobStatus.CANCELLED and cancelled.cancelled_at == T0 + timedelta(seconds=1)
    assert job_store.claim(job.job_id, "worker-1", T0) is None
    again = job_store.cancel(job.job_id, T0 + timedelta(seconds=5))
    assert again is not None and again[1] is False and again[0].cancelled_at == T0 + timedelta(seconds=1)


def test_cancel_while_processing_refuses_the_late_result(job_store: JobStore) -> None:
    job = make_job()
    job_store.create(job)
    claimed = job_store.claim(job.job_id, "w", T0)
    assert claimed is not None
    outcome = job_store.cancel(job.job_id, T0)
    assert outcome is not None and outcome[1]
    assert not job_store.finish(job.job_id, claimed.attempt, JobStatus.COMPLETED, T0, result={"a": 1})
    final = job_store.get(job.job_id)
    assert final is not None and final.status is JobStatus.CANCELLED and final.result is None


def test_cancel_of_a_terminal_or_unknown_job_changes_nothing(job_store: JobStore) -> None:
    assert job_store.cancel(str(uuid.uuid4()), T0) is None
    job = make_job()
    job_store.create(job)
    claimed = job_store.claim(job.job_id, "w", T0)
    assert claimed is not None
    job_store.finish(job.job_id, claimed.attempt, JobStatus.COMPLETED, T0, result={})
    outcome = job_store.cancel(job.job_id, T0)
    assert outcome is not None and outcome[0].status is JobStatus.COMPLETED and outcome[1] is False


def test_reclaim_after_a_crash_supersedes_the_first_run(job_store: JobStore) -> None:
    job = make_job()
    job_store.create(job)
    first = job_store.claim(job.job_id, "crashed", T0)
    second = job_store.claim(job.job_id, "survivor", T0 + timedelta(seconds=9))
    assert first is not None and second is not None
    assert (second.attempt, second.worker, second.started_at) == (2, "survivor", T0)
    assert not job_store.finish(job.job_id, first.attempt, JobStatus.COMPLETED, T0, result={"from": "crashed"})
    assert job_store.finish(job.job_id, second.attempt, JobStatus.COMPLETED, T0, result={"from": "survivor"})
    final = job_store.get(job.job_id)
    assert final is not None and final.result == {"from": "survivor"}


def test_discard_only_removes_a_queued_job(job_store: JobStore) -> None:
    queued, running = make_job(), make_job()
    job_store.create(queued)
    job_store.create(running)
    job_store.claim(running.job_id, "w", T0)
    assert job_store.discard_queued(queued.job_id) and job_store.get(queued.job_id) is None
    assert not job_store.discard_queued(running.job_id) and job_store.get(running.job_id) is not None


def test_cancel_racing_claim_has_one_winner(job_store: JobStore) -> None:
    """Whatever the interleaving, a job is either run (claimed first) or cancelled, never both lost."""
    for _ in range(5):
        job = make_job()
        job_store.create(job)
        outcomes: dict[str, object] = {}
        barrier = threading.Barrier(2)
        actions: dict[str, Callable[[], object]] = {
            "claim": lambda j=job.job_id: job_store.claim(j, "w", T0),  # type: ignore[misc]
            "cancel": lambda j=job.job_id: job_store.cancel(j, T0),  # type: ignore[misc]
        }
        threads = [threading.Thread(target=_race, args=(barrier, outcomes, name, action))
                   for name, action in actions.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        cancel_outcome = outcomes["cancel"]
        assert isinstance(cancel_outcome, tuple) and cancel_outcome[1] is True  # processing or queued: cancellable
        final = job_store.get(job.job_id)
        assert final is not None and final.status is JobStatus.CANCELLED
        claimed = outcomes["claim"]
        if claimed is not None:  # claimed before the cancel: its result must now be refused
            assert isinstance(claimed, Job)
            assert not job_store.finish(job.job_id, claimed.attempt, JobStatus.COMPLETED, T0, result={})


def _race(barrier: threading.Barrier, outcomes: dict[str, object], name: str, action: Callable[[], object]) -> None:
    barrier.wait()
    outcomes[name] = action()
