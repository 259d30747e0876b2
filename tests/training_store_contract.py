"""One test suite for every ``TrainingJobStore`` (memory in unit, Cassandra in integration).

Each implementation's module defines a ``training_store`` fixture and does
``from tests.training_store_contract import *``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from core.training.schemas import (
    LoRAConfig,
    QuantizationConfig,
    TrainingCheckpoint,
    TrainingHyperparameters,
    TrainingJob,
    TrainingJobStatus,
    TrainingMetrics,
)
from core.training.store import TrainingJobStore

S = TrainingJobStatus
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def make_training_job(**overrides: object) -> TrainingJob:
    fields: dict[str, object] = {
        "job_id": str(uuid.uuid4()), "name": "faq-tune", "status": S.PENDING,
        "base_model": "sentence-transformers/all-MiniLM-L6-v2", "dataset_id": "ds-1", "created_at": T0,
        "hyperparameters": TrainingHyperparameters(optimizer="adamw", max_seq_length=128),
        "lora_config": LoRAConfig(target_modules=["query", "value"]),
        "quantization": QuantizationConfig(load_in_4bit=False), "output_dir": "faq-minilm", "total_epochs": 3,
    }
    fields.update(overrides)
    return TrainingJob.model_validate(fields)


def queued(store: TrainingJobStore, **overrides: object) -> TrainingJob:
    job = make_training_job(**overrides)
    assert store.create(job)
    assert store.transition(job.job_id, S.PENDING, S.QUEUED)
    return job


def test_create_is_unique_and_reads_back_every_field(training_store: TrainingJobStore) -> None:
    job = make_training_job()
    assert training_store.create(job)
    assert not training_store.create(make_training_job(job_id=job.job_id, name="other"))
    row = training_store.get(job.job_id)
    assert row is not None and row.attempt == 0 and row.job == job
    assert training_store.get(str(uuid.uuid4())) is None


def test_pending_to_queued_only_from_pending(training_store: TrainingJobStore) -> None:
    job = queued(training_store)
    assert not training_store.transition(job.job_id, S.PENDING, S.QUEUED)  # already queued
    row = training_store.get(job.job_id)
    assert row is not None and row.job.status is S.QUEUED


def test_claim_counts_attempts_and_keeps_the_first_start(training_store: TrainingJobStore) -> None:
    job = queued(training_store)
    first = training_store.claim(job.job_id, "trainer-1", T0 + timedelta(seconds=1))
    assert first is not None and (first.job.status, first.attempt, first.worker) == (S.RUNNING, 1, "trainer-1")
    # a redelivery after the trainer died: running is claimable again, by a new attempt
    second = training_store.claim(job.job_id, "trainer-2", T0 + timedelta(seconds=9))
    assert second is not None and second.attempt == 2
    assert second.job.started_at == T0 + timedelta(seconds=1)
    # the old attempt's writes no longer land
    progressed = second.job.model_copy(update={"current_step": 5})
    assert not training_store.save_progress(job.job_id, 1, progressed)
    assert training_store.save_progress(job.job_id, 2, progressed)


def test_progress_keeps_checkpoints_metrics_and_steps(training_store: TrainingJobStore) -> None:
    job = queued(training_store)
    row = training_store.claim(job.job_id, "t", T0)
    assert row is not None
    metrics = TrainingMetrics(train_loss=0.7, learning_rate=1e-4, epoch=0.5, step=4, tokens_per_second=812.5,
                              timestamp=T0)
    checkpoint = TrainingCheckpoint(step=4, path="s3://b/training/x/checkpoints/step-00000004.pt", loss=0.7,
                                    created_at=T0, size_bytes=1234)
    updated = row.job.model_copy(update={"current_step": 4, "total_steps": 8, "progress": 0.5, "metrics": metrics,
                                         "checkpoints": [checkpoint], "name": "not a progress field"})
    assert training_store.save_progress(job.job_id, 1, updated)
    stored = training_store.get(job.job_id)
    assert stored is not None
    assert (stored.job.current_step, stored.job.total_steps, stored.job.progress) == (4, 8, 0.5)
    assert stored.job.metrics == metrics and stored.job.checkpoints == [checkpoint]
    assert stored.job.name == "faq-tune"  # only progress fields are written


def test_finish_once_and_only_while_running(training_store: TrainingJobStore) -> None:
    job = queued(training_store)
    row = training_store.claim(job.job_id, "t", T0)
    assert row is not None
    done = row.job.model_copy(update={"status": S.COMPLETED, "completed_at": T0, "model_id": "faq-minilm",
                                      "progress": 1.0})
    assert training_store.finish(job.job_id, 1, done)
    assert not training_store.finish(job.job_id, 1, done)
    stored = training_store.get(job.job_id)
    assert stored is not None and stored.job.status is S.COMPLETED and stored.job.model_id == "faq-minilm"
    assert training_store.claim(job.job_id, "t2", T0) is None  # over: never run again


def test_cancel_is_idempotent_and_beats_the_trainer(training_store: TrainingJobStore) -> None:
    job = queued(training_store)
    row = training_store.claim(job.job_id, "t", T0)
    assert row is not None
    outcome = training_store.cancel(job.job_id, T0 + timedelta(seconds=3))
    assert outcome is not None and outcome[1] and outcome[0].status is S.CANCELLED
    again = training_store.cancel(job.job_id, T0 + timedelta(seconds=4))
    assert again is not None and not again[1] and again[0].completed_at == T0 + timedelta(seconds=3)
    assert not training_store.save_progress(job.job_id, 1, row.job)
    assert not training_store.finish(job.job_id, 1, row.job.model_copy(update={"status": S.COMPLETED}))
    assert training_store.claim(job.job_id, "t", T0) is None
    assert training_store.cancel(str(uuid.uuid4()), T0) is None


def test_list_is_newest_first_and_paged(training_store: TrainingJobStore) -> None:
    ids = [queued(training_store, created_at=T0 + timedelta(minutes=i)).job_id for i in range(3)]
    first = training_store.list_jobs(1, 2)
    mine = [j.job_id for j in first.items if j.job_id in ids]
    assert first.total >= 3 and mine[:2] == [ids[2], ids[1]][:len(mine)]
    everything = [j.job_id for j in training_store.list_jobs(1, 1000).items if j.job_id in ids]
    assert everything == list(reversed(ids))


def test_metrics_history_by_step_and_replaced_on_resume(training_store: TrainingJobStore) -> None:
    job = queued(training_store)
    for step, loss in ((2, 0.9), (1, 1.2), (2, 0.8)):  # step 2 logged again by a resumed run
        training_store.add_metrics(job.job_id, TrainingMetrics(train_loss=loss, learning_rate=1e-4, epoch=step / 4,
                                                               step=step, timestamp=T0))
    history = training_store.metrics_history(job.job_id)
    assert [(m.step, m.train_loss) for m in history] == [(1, 1.2), (2, 0.8)]
    assert training_store.metrics_history(str(uuid.uuid4())) == []
