"""``TrainingJobRunner`` on in-memory stores with a real (tiny) LoRA run of MiniLM on CPU: checkpoints
and their retention, the metrics history, the registered model version, a cancel noticed between
batches, a resume that continues at the checkpoint's next step. The ONNX export is stubbed (the e2e
test serves the real export)."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consumers.training.runner import TrainingJobRunner
from core.artifacts import ArtifactNotFound, MemoryArtifactStore
from core.datasets.models import Dataset, DatasetFormat
from core.datasets.store import InMemoryDatasetStore
from core.fleet.memory_store import InMemoryFleetStore
from core.serving.builtin_specs import MINILM_ID
from core.training.schemas import (
    LoRAConfig,
    QuantizationConfig,
    TrainingHyperparameters,
    TrainingJob,
    TrainingJobStatus,
)
from core.training.store import InMemoryTrainingJobStore
from topology.messages import MessageType

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
ROWS = [{"instruction": f"question {i} about topic {i % 3}", "input": "", "output": f"answer {i}"} for i in range(8)]


def fake_onnx(architecture: str, weights: Path, out: Path) -> None:
    assert architecture == "bert-mean-pooling" and (weights / "model.safetensors").is_file()
    out.write_bytes(b"onnx")


class World:
    def __init__(self, tmp: Path) -> None:
        self.jobs, self.datasets = InMemoryTrainingJobStore(), InMemoryDatasetStore()
        self.artifacts, self.catalog = MemoryArtifactStore(), InMemoryFleetStore()
        self.events: list[dict[str, Any]] = []
        self.on_event: Any = None
        data = b"".join(json.dumps(r).encode() + b"\n" for r in ROWS)
        self.artifacts.put("datasets/ds/data.jsonl", data)
        self.datasets.create(Dataset(dataset_id="ds", name="ds", format=DatasetFormat.JSONL, size_bytes=len(data),
                                     num_samples=len(ROWS), s3_key="datasets/ds/data.jsonl",
                                     sha256=hashlib.sha256(data).hexdigest(), created_at=T0, created_by="k"))
        self.runner = TrainingJobRunner(self.jobs, self.datasets, self.artifacts, self.catalog, self.publish,
                                        bucket="b", work_dir=tmp, worker="trainer-test",
                                        onnx_builder=fake_onnx,
                                        cancel_poll_s=0.0)

    def publish(self, message_type: MessageType, record: dict[str, Any]) -> None:
        assert message_type is MessageType.FLEET_EVENT
        self.events.append(record)
        if self.on_event is not None:
            self.on_event(record)

    def queue(self, eval_dataset_id: str | None = None, **hp: Any) -> str:
        job = TrainingJob(job_id="job-1", name="n", status=TrainingJobStatus.QUEUED, base_model=MINILM_ID,
                          dataset_id="ds", eval_dataset_id=eval_dataset_id, created_at=T0,
                          output_dir="tuned-minilm", total_epochs=hp["num_epochs"],
                          hyperparameters=TrainingHyperparameters(optimizer="adamw", batch_size=4, max_seq_length=128,
                                                                  gradient_accumulation_steps=1, logging_steps=1,
                                                                  warmup_steps=0, **hp),
                          lora_config=LoRAConfig(r=4, target_modules=["query", "value"]),
                          quantization=QuantizationConfig(load_in_4bit=False))
        assert self.jobs.create(job)
        return job.job_id


def test_a_run_checkpoints_keeps_the_newest_and_registers_the_model(tmp_path: Path) -> None:
    world = World(tmp_path)
    job_id = world.queue(num_epochs=2, save_steps=1, save_total_limit=2)  # 2 steps an epoch, 4 in all
    assert world.runner.run(job_id, threading.Event()) == "completed"
    row = world.jobs.get(job_id)
    assert row is not None
    job = row.job
    assert (job.status, job.current_step, job.total_steps, job.progress) == (TrainingJobStatus.COMPLETED, 4, 4, 1.0)
    assert [c.step for c in job.checkpoints] == [2, 3]  # one per step but the last, the newest 2 kept
    with pytest.raises(ArtifactNotFound):
        world.artifacts.head("training/job-1/checkpoints/step-00000001.pt")
    assert world.artifacts.head("training/job-1/checkpoints/step-00000003.pt").size == job.checkpoints[-1].size_bytes
    assert [m.step for m in world.jobs.metrics_history(job_id)] == [1, 2, 3, 4]
    assert job.model_id == "tuned-minilm"
    model = world.catalog.get_model("tuned-minilm")
    assert model is not None and model.task_type == "txt2embed" and model.latest_version == 1
    assert world.artifacts.get(model.extra["files"]["tokenizer"]["key"]).startswith(b"{")
    kinds = [e["event_type"] for e in world.events]
    assert kinds[0] == "training_job_running" and kinds[-2:] == ["training_job_completed", "model_version_created"]
    assert kinds.count("training_job_progress") == 4 and kinds.count("training_job_checkpoint") == 3


def test_a_cancel_stops_the_run_at_the_next_batch(tmp_path: Path) -> None:
    world = World(tmp_path)
    job_id = world.queue(num_epochs=50)

    def cancel_after_first_log(record: dict[str, Any]) -> None:
        if record["event_type"] == "training_job_progress":
            world.jobs.cancel(job_id, T0)

    world.on_event = cancel_after_first_log
    assert world.runner.run(job_id, threading.Event()) == "cancelled"
    assert [m.step for m in world.jobs.metrics_history(job_id)] == [1]
    row = world.jobs.get(job_id)
    assert row is not None and row.job.status is TrainingJobStatus.CANCELLED and row.job.model_id is None
    assert world.runner.run(job_id, threading.Event()) == "skipped"  # a redelivery runs nothing


def test_a_stopped_run_resumes_at_the_step_after_its_checkpoint(tmp_path: Path) -> None:
    world = World(tmp_path)
    job_id = world.queue(num_epochs=3, save_steps=2)  # 6 steps, checkpoints at 2 and 4
    stop = threading.Event()

    def stop_after_step_3(record: dict[str, Any]) -> None:
        if record["event_type"] == "training_job_progress" and record["details"]["step"] == 3:
            stop.set()

    world.on_event = stop_after_step_3
    assert world.runner.run(job_id, stop) == "interrupted"  # not committed: redelivered
    world.on_event = None
    assert world.runner.run(job_id, threading.Event()) == "completed"
    running = [e for e in world.events if e["event_type"] == "training_job_running"]
    assert running[1]["details"]["attempt"] == 2
    assert running[1]["details"]["resumed_from"] == "s3://b/training/job-1/checkpoints/step-00000002.pt"
    steps = [e["details"]["step"] for e in world.events if e["event_type"] == "training_job_progress"]
    assert steps == [1, 2, 3, 3, 4, 5, 6]  # step 3 trained again from the step-2 checkpoint, not from 1


def test_eval_loss_is_logged_every_eval_steps_on_the_eval_dataset(tmp_path: Path) -> None:
    world = World(tmp_path)
    rows = [{"instruction": f"held-out question {i}", "input": "", "output": f"held-out answer {i}"} for i in range(4)]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    world.artifacts.put("datasets/eval/data.jsonl", data)
    world.datasets.create(Dataset(dataset_id="eval", name="eval", format=DatasetFormat.JSONL, size_bytes=len(data),
                                  num_samples=len(rows), s3_key="datasets/eval/data.jsonl",
                                  sha256=hashlib.sha256(data).hexdigest(), created_at=T0, created_by="k"))
    job_id = world.queue(eval_dataset_id="eval", num_epochs=2, eval_steps=2)
    assert world.runner.run(job_id, threading.Event()) == "completed"
    logged = {m.step: m.eval_loss for m in world.jobs.metrics_history(job_id)}
    assert logged[1] is None and logged[3] is None
    assert logged[2] is not None and logged[4] is not None and logged[2] > 0
