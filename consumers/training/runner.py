"""One training job, start to end, without Kafka: claim, read the data, train, checkpoint, publish the model.

``TrainingJobRunner.run(job_id)`` is what a trainer does with one ``training_job_requested``:

1. ``claim`` the row (queued, or running after a trainer died): ``attempt + 1``. A job cancelled,
   finished or unknown is skipped.
2. Read the dataset file from S3 and turn it into (anchor, positive) pairs (``core/training/data.py``).
3. Resume from the job's newest checkpoint (a redelivery), else from ``resume_from_checkpoint``.
4. Train (``consumers/training/lora.py``), measured by a ``core.carbon.CarbonMeter`` (codecarbon): each
   run (segment) is a carbon record of the job, and ``carbon`` is their sum. Each log is
   ``TrainingMetrics`` on the row, in the metrics history and a ``training_job_progress`` event; each
   checkpoint goes to S3 under ``training/<job_id>/checkpoints/step-<n>.pt``, the oldest beyond
   ``save_total_limit`` are deleted from S3 and from the job's list. Between batches the row is read (at most every
   ``cancel_poll_s``): cancelled, or claimed by another attempt, stops the run.
5. Merge the adapter, export ONNX, register it as a version of the ``output_dir`` model, finish
   ``completed`` with ``model_id``. Any error finishes it ``failed`` with the message.

Outcomes: ``completed``, ``failed``, ``cancelled``, ``skipped`` (the message is done with) and
``interrupted`` (shutting down or superseded: the offset must not be committed, the job resumes
on redelivery).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from core.artifacts import ArtifactStore
from core.carbon import CarbonMeter, CarbonRecord, CarbonStore, SubjectKind, job_metrics
from core.datasets import open_dataset_rows
from core.datasets.store import DatasetStore
from core.events import fleet_record
from core.fleet.store import FleetStore
from core.training.base_models import check_base_model
from core.training.data import pairs_from_rows, retain
from core.training.output import register_trained_model
from core.training.schemas import CarbonMetrics, TrainingCheckpoint, TrainingJob, TrainingJobStatus, TrainingMetrics
from core.training.service import checkpoint_key, training_event
from core.training.store import TrainingJobStore
from schemas.clock import utcnow
from topology.messages import MessageType

log = logging.getLogger(__name__)
S = TrainingJobStatus
Publish = Callable[[MessageType, dict[str, Any]], None]
OnnxBuilder = Callable[[str, Path, Path], None]  # (architecture, weights dir, ONNX path to write)


class _Hooks:
    """What the training loop calls back into: the cancel flag, logs and checkpoints."""

    def __init__(self, runner: TrainingJobRunner, job: TrainingJob, attempt: int, stopping: threading.Event) -> None:
        self.runner, self.job, self.attempt, self.stopping = runner, job, attempt, stopping
        self.lost = False  # the row says cancelled, or another attempt holds the job
        self._checked = 0.0

    def should_stop(self) -> bool:
        if self.stopping.is_set() or self.lost:
            return True
        now = time.monotonic()
        if now - self._checked >= self.runner.cancel_poll_s:
            self._checked = now
            row = self.runner.store.get(self.job.job_id)
            self.lost = row is None or row.attempt != self.attempt or row.job.status is not S.RUNNING
        return self.lost

    def _save(self) -> None:
        if not self.runner.store.save_progress(self.job.job_id, self.attempt, self.job):
            self.lost = True

    def on_log(self, metrics: TrainingMetrics, progress: float, epoch: int) -> None:
        job = self.job
        job.metrics, job.current_step, job.current_epoch = metrics, metrics.step, epoch
        job.progress = round(min(1.0, progress), 6)
        self._save()
        if self.lost:  # cancelled or superseded: this attempt's numbers are no longer the job's
            return
        self.runner.store.add_metrics(job.job_id, metrics)
        self.runner.emit(training_event("training_job_progress", job, step=metrics.step,
                                        total_steps=job.total_steps, progress=job.progress,
                                        metrics=metrics.model_dump(mode="json")))

    def on_checkpoint(self, step: int, state: bytes, loss: float | None) -> None:
        runner, job = self.runner, self.job
        key = f"training/{job.job_id}/checkpoints/step-{step:08d}.pt"
        stored = runner.artifacts.put(key, state)
        checkpoint = TrainingCheckpoint(step=step, path=f"s3://{runner.bucket}/{key}", loss=loss,
                                        created_at=runner.clock(), size_bytes=stored.size)
        kept, dropped = retain([*job.checkpoints, checkpoint], job.hyperparameters.save_total_limit)
        job.checkpoints = kept
        self._save()  # the list first: a crash between the two leaves an orphan object, never a dangling path
        for old in dropped:
            runner.artifacts.delete(checkpoint_key(old.path, runner.bucket))
        runner.emit(training_event("training_job_checkpoint", job, step=step, path=checkpoint.path,
                                   size_bytes=stored.size, deleted=[c.step for c in dropped] or None))


class TrainingJobRunner:
    def __init__(self, store: TrainingJobStore, datasets: DatasetStore, artifacts: ArtifactStore,
                 catalog: FleetStore, publish: Publish, *, bucket: str, work_dir: Path, worker: str,
                 onnx_builder: OnnxBuilder, cancel_poll_s: float = 0.5,
                 carbon: CarbonStore | None = None, meter_factory: Callable[[], CarbonMeter] | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.carbon, self.meter_factory = carbon, meter_factory
        self.store, self.datasets, self.artifacts, self.catalog = store, datasets, artifacts, catalog
        self.publish, self.bucket, self.work_dir, self.worker = publish, bucket, work_dir, worker
        self.onnx_builder, self.cancel_poll_s, self.clock = onnx_builder, cancel_poll_s, clock

    def emit(self, record: dict[str, Any]) -> None:
        try:
            self.publish(MessageType.FLEET_EVENT, record)
        except Exception as exc:  # the row has it too; an event lost to a broker hiccup is logged
            log.warning("training event %s lost: %s", record.get("event_type"), exc)

    def _pairs(self, dataset_id: str) -> list[tuple[str, str]]:
        dataset = self.datasets.get(dataset_id)
        if dataset is None:
            raise ValueError(f"dataset {dataset_id} no longer exists")
        return pairs_from_rows(list(open_dataset_rows(self.artifacts, dataset)))

    def _resume_state(self, job: TrainingJob) -> tuple[bytes | None, str | None]:
        path = job.checkpoints[-1].path if job.checkpoints else job.resume_from_checkpoint
        if path is None:
            return None, None
        return self.artifacts.get(checkpoint_key(path, self.bucket)), path

    def run(self, job_id: str, stopping: threading.Event) -> str:
        from consumers.training.lora import LoraRun, Stopped

        row = self.store.claim(job_id, self.worker, self.clock())
        if row is None:
            log.info("training job %s is over or unknown; nothing to run", job_id)
            return "skipped"
        job, attempt = row.job, row.attempt
        hooks = _Hooks(self, job, attempt, stopping)
        work = Path(tempfile.mkdtemp(prefix=f"job-{job_id[:8]}-", dir=self._work_root()))
        try:
            pairs = self._pairs(job.dataset_id)
            eval_pairs = self._pairs(job.eval_dataset_id) if job.eval_dataset_id else None
            state, resumed_from = self._resume_state(job)
            spec = check_base_model(job.base_model)
            run = LoraRun(job, spec.model_dir(), pairs, eval_pairs, hooks, work, clock=self.clock)
            job.total_steps, job.total_epochs = run.total_steps, job.hyperparameters.num_epochs
            hooks._save()
            self.emit(training_event("training_job_running", job, attempt=attempt, worker=self.worker,
                                     resumed_from=resumed_from, total_steps=run.total_steps))
            log.info("training job %s attempt %d: %d pairs, %d steps, resuming from %s", job_id, attempt,
                     len(pairs), run.total_steps, resumed_from)
            meter = self._start_meter()
            try:
                result = run.run(state)
            except Stopped:
                self._record_carbon(meter, job, job.base_model)
                return self._stopped(job, hooks, stopping)
            except Exception:
                self._record_carbon(meter, job, job.base_model)
                raise
            self._record_carbon(meter, job, job.output_dir)
            onnx_path = work / "model.onnx"
            self.onnx_builder("bert-mean-pooling", result.merged_dir, onnx_path)
            version = register_trained_model(self.catalog, self.artifacts, self.bucket, job, onnx_path,
                                             result.merged_dir / "tokenizer.json", spec.task_type, self.clock)
            job.status, job.completed_at, job.model_id = S.COMPLETED, self.clock(), version.model_id
            job.progress, job.current_step = 1.0, result.step
            if not self.store.finish(job_id, attempt, job):
                return self._stopped(job, hooks, stopping)
            self.emit(training_event("training_job_completed", job, model_id=version.model_id,
                                     version=version.version, step=result.step, final_loss=result.final_loss))
            self.emit(fleet_record("model_version_created", "model", version.model_id, version=version.version,
                                   format="onnx", onnx=True, training_job_id=job_id))
            return "completed"
        except Exception as exc:
            log.exception("training job %s failed", job_id)
            job.status, job.completed_at = S.FAILED, self.clock()
            job.error_message = f"{type(exc).__name__}: {str(exc)[:500]}"
            if self.store.finish(job_id, attempt, job):
                self.emit(training_event("training_job_failed", job, error_message=job.error_message))
                return "failed"
            return self._stopped(job, hooks, stopping)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _start_meter(self) -> CarbonMeter | None:
        if self.meter_factory is None:
            return None
        try:
            meter = self.meter_factory()
            meter.start()
            return meter
        except Exception:  # no measurement is better than no training: carbon stays null
            log.exception("the carbon meter did not start; this run's carbon is not measured")
            return None

    def _record_carbon(self, meter: CarbonMeter | None, job: TrainingJob, model_id: str) -> None:
        """This run's energy as a record of the job (one per segment: a resumed job has several), and the
        job's ``carbon`` as the sum of its records. Nothing measured: ``carbon`` stays as it was (null)."""
        if meter is None or self.carbon is None:
            return
        try:
            measurement = meter.stop()
            if measurement is None:
                return
            self.carbon.record([CarbonRecord.of(SubjectKind.TRAINING_JOB, job.job_id, model_id, measurement)])
            total = job_metrics(self.carbon.for_subject(SubjectKind.TRAINING_JOB, job.job_id))
            job.carbon = CarbonMetrics.model_validate(total) if total is not None else None
        except Exception:
            log.exception("recording the carbon of training job %s failed", job.job_id)

    def _stopped(self, job: TrainingJob, hooks: _Hooks, stopping: threading.Event) -> str:
        row = self.store.get(job.job_id)
        if row is not None and row.job.status is S.CANCELLED:
            log.info("training job %s cancelled; stopped at step %d", job.job_id, job.current_step)
            return "cancelled"  # the ingress published training_job_cancelled with the row's change
        log.info("training job %s interrupted at step %d (%s)", job.job_id, job.current_step,
                 "the trainer is stopping or lost the partition" if stopping.is_set()
                 else "another attempt holds it")
        return "interrupted"

    def _work_root(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir
