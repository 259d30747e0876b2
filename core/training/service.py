"""Seed 003 training jobs at the ingress: validate, store, queue on Kafka; list, read, cancel.

``create`` checks everything a trainer would otherwise fail on later (the base model is one the
trainers have offline, LoRA's ``target_modules`` exist in it, the datasets exist, a CPU-only trainer
is not asked for 4/8-bit loading or the 8-bit optimizer, a ``resume_from_checkpoint`` object exists),
writes the job ``pending``, moves it to ``queued`` and publishes a ``training_job_requested`` for
the trainers' consumer group. Every status change is a ``fleet_event`` ``training_job_<status>``
about subject ``training_job`` (the lifecycle topic's schema carries seed 001's model events only).
Cancel is the job row's compare-and-set (the trainer reads the row between steps) plus its event.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from core.artifacts import ArtifactNotFound, ArtifactStore
from core.auth import Principal
from core.datasets.models import Dataset
from core.datasets.store import DatasetStore
from core.errors import DomainError, ErrorKind, conflict, invalid, not_found, unavailable
from core.events import EventSink, EventsUnavailable, fleet_record
from core.fleet.store import FleetStore
from core.registry import validate_model_id
from core.serving.builtin_specs import BUILTIN_SPECS
from core.training.base_models import check_base_model, check_cpu_only, check_target_modules, module_paths
from core.training.data import DatasetUnusable, pair_columns
from core.training.schemas import (
    TrainingJob,
    TrainingJobCreate,
    TrainingJobStatus,
    TrainingMetrics,
)
from core.training.store import TrainingJobStore
from schemas.clock import utcnow
from topology.messages import MessageType

S = TrainingJobStatus
CHECKPOINT_PREFIX = "training/"


def checkpoint_key(path: str, bucket: str) -> str:
    """The S3 key of a ``TrainingCheckpoint.path`` (``s3://<bucket>/training/...``), or 400."""
    prefix = f"s3://{bucket}/"
    key = path[len(prefix):] if path.startswith(prefix) else path
    if not key.startswith(CHECKPOINT_PREFIX) or ".." in key or not key.endswith(".pt"):
        raise invalid("INVALID_CHECKPOINT", "resume_from_checkpoint must be a TrainingCheckpoint.path of a "
                                            f"training job ({prefix}{CHECKPOINT_PREFIX}<job_id>/checkpoints/...pt).",
                      field="resume_from_checkpoint")
    return key


def planned_steps(num_samples: int, batch_size: int, accumulation: int, epochs: int) -> int:
    """Optimizer steps of a run: batches per epoch, grouped by gradient accumulation, times epochs."""
    batches = math.ceil(num_samples / batch_size) if num_samples > 0 else 0
    return math.ceil(batches / accumulation) * epochs


class TrainingJobService:
    def __init__(self, store: TrainingJobStore, datasets: DatasetStore, artifacts: ArtifactStore,
                 events: EventSink, *, bucket: str, catalog: FleetStore | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.catalog = catalog
        self.store = store
        self.datasets = datasets
        self.artifacts = artifacts
        self.events = events
        self.bucket = bucket
        self.clock = clock

    # --- validation ---------------------------------------------------------------------
    async def _dataset(self, dataset_id: str, field: str) -> Dataset:
        dataset = await asyncio.to_thread(self.datasets.get, dataset_id)
        if dataset is None:
            raise DomainError(ErrorKind.NOT_FOUND, "DATASET_NOT_FOUND", f"Dataset '{dataset_id[:200]}' not found.",
                              details={"field": field}, hint="Upload it with POST /api/v1/datasets first.")
        return dataset

    async def validate(self, body: TrainingJobCreate) -> Dataset:
        """Everything checkable before queueing; returns the training dataset."""
        spec = check_base_model(body.base_model)
        check_cpu_only(body.quantization, body.hyperparameters)
        paths = await asyncio.to_thread(module_paths, spec.model_dir() / "model.safetensors")
        check_target_modules(body.lora_config.target_modules, paths)
        validate_model_id(body.output_dir)
        if body.output_dir in BUILTIN_SPECS:
            raise invalid("INVALID_OUTPUT_DIR", f"'{body.output_dir}' is a built-in model; name a new model.",
                          field="output_dir")
        if body.hyperparameters.eval_steps is not None and body.eval_dataset_id is None:
            raise invalid("VALIDATION_ERROR", "hyperparameters.eval_steps needs an eval_dataset_id.",
                          field="hyperparameters.eval_steps")
        if body.hyperparameters.batch_size < 2:
            raise invalid("VALIDATION_ERROR", "The objective (multiple-negatives ranking) contrasts each pair with the "
                                              "others of its batch: batch_size must be at least 2.",
                          field="hyperparameters.batch_size")
        if self.catalog is not None:
            existing = await asyncio.to_thread(self.catalog.get_model, body.output_dir)
            if existing is not None and "trained_from" not in existing.extra:
                raise conflict("MODEL_ALREADY_EXISTS", f"output_dir '{body.output_dir}' is a registry model no "
                                                       "training job made; name a new one.", field="output_dir")
        dataset = await self._dataset(body.dataset_id, "dataset_id")
        self._check_pairs(dataset, "dataset_id")
        if body.eval_dataset_id is not None:
            self._check_pairs(await self._dataset(body.eval_dataset_id, "eval_dataset_id"), "eval_dataset_id")
        if body.resume_from_checkpoint is not None:
            key = checkpoint_key(body.resume_from_checkpoint, self.bucket)
            try:
                await asyncio.to_thread(self.artifacts.head, key)
            except ArtifactNotFound:
                raise invalid("CHECKPOINT_NOT_FOUND", f"No checkpoint at '{body.resume_from_checkpoint[:300]}'.",
                              field="resume_from_checkpoint") from None
        return dataset

    @staticmethod
    def _check_pairs(dataset: Dataset, field: str) -> None:
        if dataset.schema is None:
            return
        try:
            pair_columns(dataset.schema.columns)
        except DatasetUnusable as exc:
            raise invalid("DATASET_UNUSABLE", f"Dataset '{dataset.dataset_id}': {exc}.", field=field) from None

    # --- commands -----------------------------------------------------------------------
    async def create(self, principal: Principal, body: TrainingJobCreate) -> TrainingJob:
        dataset = await self.validate(body)
        hp = body.hyperparameters
        job = TrainingJob(
            job_id=str(uuid.uuid4()), name=body.name, status=S.PENDING, progress=0.0, base_model=body.base_model,
            dataset_id=body.dataset_id, eval_dataset_id=body.eval_dataset_id, created_at=self.clock(),
            hyperparameters=hp, lora_config=body.lora_config, quantization=body.quantization,
            output_dir=body.output_dir, total_epochs=hp.num_epochs,
            total_steps=planned_steps(int(dataset.num_samples), hp.batch_size, hp.gradient_accumulation_steps,
                                      hp.num_epochs),
            resume_from_checkpoint=body.resume_from_checkpoint, created_by=principal.key_id)
        if not await asyncio.to_thread(self.store.create, job):
            raise RuntimeError(f"training job id {job.job_id} collided")  # a uuid4: never in practice
        await self._event(job, S.PENDING)
        # queued before the request is out: a trainer may claim it the moment it is published
        await asyncio.to_thread(self.store.transition, job.job_id, S.PENDING, S.QUEUED)
        job.status = S.QUEUED
        await self._event(job, S.QUEUED)
        try:
            await self.events.publish(MessageType.TRAINING_JOB_REQUESTED,
                                      {"job_id": job.job_id, "base_model": job.base_model})
        except EventsUnavailable as exc:
            at = self.clock()
            await asyncio.to_thread(self.store.transition, job.job_id, S.QUEUED, S.FAILED,
                                    error_message="could not be queued: the broker was unavailable", at=at)
            job.status, job.completed_at = S.FAILED, at
            with contextlib.suppress(EventsUnavailable):
                await self._event(job, S.FAILED, error_message="could not be queued")
            raise unavailable("SERVICE_UNAVAILABLE", "The training job could not be queued; it was marked failed.",
                              exc.retry_after_s) from exc
        with contextlib.suppress(EventsUnavailable):
            await self.events.audit(actor=principal.key_id, action="training_job.create",
                                    subject=f"training_job/{job.job_id}", outcome="accepted",
                                    after={"name": job.name, "base_model": job.base_model,
                                           "dataset_id": job.dataset_id, "output_dir": job.output_dir})
        return job

    async def cancel(self, principal: Principal, job_id: str) -> dict[str, Any]:
        """Seed 004 ``CancellationResponse``: idempotent, 200 also for a job already over."""
        before = await self.get(job_id)
        outcome = await asyncio.to_thread(self.store.cancel, job_id, self.clock())
        if outcome is None:
            raise not_found("TRAINING_JOB_NOT_FOUND", f"Training job '{job_id}' not found.")
        job, changed = outcome
        if changed:
            await self._event(job, S.CANCELLED, step=job.current_step)
            with contextlib.suppress(EventsUnavailable):
                await self.events.audit(actor=principal.key_id, action="training_job.cancel",
                                        subject=f"training_job/{job_id}", outcome="accepted",
                                        before={"status": before.status.value}, after={"status": job.status.value})
            message = ("Training job cancelled before it ran." if before.status in (S.PENDING, S.QUEUED) else
                       "Training job cancelled; its trainer stops at the next step.")
        elif job.status is S.CANCELLED:
            message = "Training job was already cancelled."
        else:
            message = f"Training job already {job.status.value}; nothing to cancel."
        cancelled_at = job.completed_at if job.status is S.CANCELLED else None
        return {"job_id": job.job_id, "status": job.status.value, "cancelled_at": cancelled_at, "message": message}

    # --- queries ------------------------------------------------------------------------
    async def get(self, job_id: str) -> TrainingJob:
        row = await asyncio.to_thread(self.store.get, job_id)
        if row is None:
            raise not_found("TRAINING_JOB_NOT_FOUND", f"Training job '{job_id}' not found.")
        return row.job

    async def list_jobs(self, page: int, page_size: int) -> dict[str, Any]:
        result = await asyncio.to_thread(self.store.list_jobs, page, page_size)
        return {"items": result.items, "total": result.total, "page": page, "page_size": page_size,
                "pages": math.ceil(result.total / page_size) if result.total else 0}

    async def metrics(self, job_id: str) -> list[TrainingMetrics]:
        await self.get(job_id)
        return await asyncio.to_thread(self.store.metrics_history, job_id)

    async def _event(self, job: TrainingJob, status: TrainingJobStatus, **details: Any) -> None:
        await self.events.publish(MessageType.FLEET_EVENT, training_event(f"training_job_{status.value}", job,
                                                                          **details))


def training_event(event_type: str, job: TrainingJob, **details: Any) -> dict[str, Any]:
    """A ``fleet_event`` about one training job (status, progress and checkpoints)."""
    return fleet_record(event_type, "training_job", job.job_id, status=job.status.value, name=job.name,
                        base_model=job.base_model, **details)
