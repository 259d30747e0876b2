"""Seed 003 training jobs at the ingress (in-memory stores, recording sink) and the pure parts of a run:
validation of base model, LoRA target modules, GPU-only options and datasets; pending -> queued with
its events and the trainers' message; idempotent cancel; listing; checkpoint retention; batches of a
resumed run."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.context import AppContext
from core.api_keys import new_api_key
from core.datasets.models import Dataset, DatasetFormat, DatasetSchema
from core.errors import DomainError
from core.serving.builtin_specs import MINILM_ID
from core.training.base_models import (
    TRAINABLE,
    check_cpu_only,
    check_target_modules,
    module_names,
    module_paths,
)
from core.training.data import DatasetUnusable, pairs_from_rows, retain
from core.training.schemas import (
    QuantizationConfig,
    TrainingCheckpoint,
    TrainingHyperparameters,
    TrainingJobStatus,
)
from core.training.service import planned_steps
from settings import Settings
from tests.memory_app import app_client, memory_context
from tests.recording_sink import RecordingSink
from topology.messages import MessageType

pytestmark = pytest.mark.unit
ADMIN = {"Authorization": f"Bearer {(ADMIN_KEY := new_api_key())}"}
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
CPU_JOB: dict[str, Any] = {
    "name": "faq-tune", "base_model": MINILM_ID, "dataset_id": "ds-faq", "output_dir": "faq-minilm",
    "hyperparameters": {"learning_rate": 1e-3, "num_epochs": 1, "batch_size": 4, "gradient_accumulation_steps": 1,
                        "max_seq_length": 128, "optimizer": "adamw", "logging_steps": 1, "save_steps": 2},
    "lora_config": {"r": 8, "lora_alpha": 16, "target_modules": ["query", "value"]},
    "quantization": {"load_in_4bit": False},
}


def minilm_paths() -> tuple[str, ...]:
    return module_paths(TRAINABLE[MINILM_ID].model_dir() / "model.safetensors")


def dataset(dataset_id: str = "ds-faq", columns: tuple[str, ...] = ("instruction", "input", "output"),
            rows: int = 10) -> Dataset:
    return Dataset(dataset_id=dataset_id, name=dataset_id, format=DatasetFormat.JSONL, size_bytes=100,
                   num_samples=rows, s3_key=f"datasets/{dataset_id}.jsonl", sha256=hashlib.sha256(b"x").hexdigest(),
                   created_at=T0, created_by="key_x", schema=DatasetSchema(columns=list(columns), sample={}))


@pytest.fixture
def ctx() -> AppContext:
    context = memory_context(Settings(admin_api_key=SecretStr(ADMIN_KEY)))
    context.dataset_store.create(dataset())
    return context


@pytest.fixture
def api(ctx: AppContext) -> Iterator[TestClient]:
    with app_client(ctx) as client:
        yield client


def events_of(ctx: AppContext, message_type: MessageType) -> list[dict[str, Any]]:
    assert isinstance(ctx.events, RecordingSink)
    return [record for _, kind, record, _ in ctx.events.events if kind is message_type]


# --- validation, without the app ------------------------------------------------------------

def test_minilm_module_names_come_from_its_weights_file() -> None:
    names = module_names(minilm_paths())
    assert {"query", "key", "value", "dense"} <= set(names)
    assert not any(path.startswith("pooler.") for path in minilm_paths())  # the trainer builds no pooler


def test_unknown_target_modules_are_refused_with_the_valid_ones() -> None:
    check_target_modules(["query", "value"], minilm_paths())
    check_target_modules(["attention.self.query"], minilm_paths())  # PEFT also matches a dotted suffix
    with pytest.raises(DomainError) as refused:
        check_target_modules(["q_proj", "value"], minilm_paths())  # the seed's default names (Llama)
    assert refused.value.code == "INVALID_TARGET_MODULES"
    assert refused.value.details is not None and refused.value.details["unknown"] == ["q_proj"]
    assert {"query", "key", "value", "dense"} <= set(refused.value.details["valid"])


@pytest.mark.parametrize(("quantization", "optimizer", "refused"), [
    ({}, "adamw_8bit", ["quantization.load_in_4bit", "hyperparameters.optimizer=adamw_8bit"]),  # seed defaults
    ({"load_in_4bit": False, "load_in_8bit": True}, "adamw", ["quantization.load_in_8bit"]),
    ({"load_in_4bit": False}, "adamw_8bit", ["hyperparameters.optimizer=adamw_8bit"]),
])
def test_gpu_only_options_are_refused_on_cpu_trainers(quantization: dict[str, Any], optimizer: str,
                                                      refused: list[str]) -> None:
    with pytest.raises(DomainError) as error:
        check_cpu_only(QuantizationConfig(**quantization), TrainingHyperparameters(optimizer=optimizer))
    assert error.value.code == "GPU_REQUIRED" and error.value.details is not None
    assert error.value.details["options"] == refused


def test_cpu_options_pass() -> None:
    for optimizer in ("adamw", "sgd"):
        check_cpu_only(QuantizationConfig(load_in_4bit=False), TrainingHyperparameters(optimizer=optimizer))


def test_planned_steps_group_batches_by_accumulation_per_epoch() -> None:
    assert planned_steps(10, batch_size=4, accumulation=1, epochs=1) == 3
    assert planned_steps(10, batch_size=4, accumulation=2, epochs=3) == 6  # 3 batches -> 2 steps, x3
    assert planned_steps(0, batch_size=4, accumulation=1, epochs=2) == 0


def test_pairs_from_anchor_positive_or_instruction_columns() -> None:
    assert pairs_from_rows([{"anchor": "a", "positive": "p"}, {"anchor": "b", "positive": "q"}]) == [
        ("a", "p"), ("b", "q")]
    rows = [{"instruction": "Reset password", "input": "web", "output": "Use the link"},
            {"instruction": "Close account", "input": "", "output": "Write to support"}]
    assert pairs_from_rows(rows) == [("Reset password web", "Use the link"), ("Close account", "Write to support")]
    with pytest.raises(DatasetUnusable, match="needs columns"):
        pairs_from_rows([{"text": "a"}, {"text": "b"}])


def test_retention_keeps_the_newest_by_step() -> None:
    points = [TrainingCheckpoint(step=s, path=f"s3://b/training/j/checkpoints/step-{s}.pt", created_at=T0,
                                 size_bytes=1) for s in (6, 2, 4, 8)]
    kept, dropped = retain(points, 2)
    assert [c.step for c in kept] == [6, 8] and [c.step for c in dropped] == [2, 4]
    assert retain(points, None) == (sorted(points, key=lambda c: c.step), [])
    assert retain(points[:1], 3) == (points[:1], [])


def test_a_resumed_run_trains_exactly_the_batches_after_its_checkpoint() -> None:
    from consumers.training.lora import LoraRun

    class NoHooks:
        def should_stop(self) -> bool:
            return False

        def on_log(self, *_: Any) -> None:
            pass

        def on_checkpoint(self, *_: Any) -> None:
            pass

    from core.training.schemas import TrainingJob
    hp = TrainingHyperparameters(optimizer="adamw", batch_size=2, gradient_accumulation_steps=2, num_epochs=2,
                                 max_seq_length=128)
    job = TrainingJob.model_validate({**CPU_JOB, "job_id": "j-1", "status": "running", "created_at": T0,
                                      "hyperparameters": hp, "total_epochs": 2})
    pairs = [(f"a{i}", f"p{i}") for i in range(9)]  # 5 batches an epoch -> 3 steps (2, 2, 1 batches)
    run = LoraRun(job, TRAINABLE[MINILM_ID].model_dir(), pairs, None, NoHooks(), work_dir=None)  # type: ignore[arg-type]
    assert run.per_epoch == 3 and run.total_steps == 6
    full = list(run._batches(0))
    assert sum(1 for _, closes, _ in full if closes) == 6
    for step in range(6):
        # the batches after `step` optimizer steps are the tail of the full run, step boundaries included
        done = [i for i, (_, closes, _) in enumerate(full) if closes][step - 1] + 1 if step else 0
        assert list(run._batches(step)) == full[done:]
    assert [b for _, _, b in full[:5]] != [b for _, _, b in full[5:]]  # each epoch has its own order


# --- the REST surface -----------------------------------------------------------------------

def test_create_stores_queues_and_publishes(api: TestClient, ctx: AppContext) -> None:
    created = api.post("/api/v1/training/jobs", json=CPU_JOB, headers=ADMIN)
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["status"] == "queued" and job["progress"] == 0.0 and job["total_epochs"] == 1
    assert job["total_steps"] == 3 and job["current_step"] == 0 and job["carbon"] is None
    assert job["hyperparameters"]["optimizer"] == "adamw" and job["lora_config"]["target_modules"] == ["query", "value"]
    requests = events_of(ctx, MessageType.TRAINING_JOB_REQUESTED)
    assert [r["job_id"] for r in requests] == [job["job_id"]]
    statuses = [e["event_type"] for e in events_of(ctx, MessageType.FLEET_EVENT) if e["subject_id"] == job["job_id"]]
    assert statuses == ["training_job_pending", "training_job_queued"]
    assert api.get(f"/api/v1/training/jobs/{job['job_id']}", headers=ADMIN).json()["status"] == "queued"
    assert isinstance(ctx.events, RecordingSink)
    assert [a["action"] for a in ctx.events.audits] == ["training_job.create"]


def test_seed_defaults_are_refused_on_a_cpu_deployment(api: TestClient) -> None:
    body = {k: v for k, v in CPU_JOB.items() if k not in ("quantization", "hyperparameters")}
    refused = api.post("/api/v1/training/jobs", json=body, headers=ADMIN)
    assert refused.status_code == 400 and refused.json()["error_code"] == "GPU_REQUIRED"
    assert "load_in_4bit" in refused.json()["message"] and "adamw_8bit" in refused.json()["message"]


@pytest.mark.parametrize(("change", "status", "code"), [
    ({"base_model": "meta-llama/Llama-3.1-8B-Instruct"}, 400, "UNKNOWN_BASE_MODEL"),
    ({"lora_config": {"target_modules": ["q_proj", "v_proj"]}}, 400, "INVALID_TARGET_MODULES"),
    ({"dataset_id": "nope"}, 404, "DATASET_NOT_FOUND"),
    ({"eval_dataset_id": "nope"}, 404, "DATASET_NOT_FOUND"),
    ({"hyperparameters": {**CPU_JOB["hyperparameters"], "eval_steps": 2}}, 400, "VALIDATION_ERROR"),
    ({"hyperparameters": {**CPU_JOB["hyperparameters"], "batch_size": 1}}, 400, "VALIDATION_ERROR"),
    ({"hyperparameters": {**CPU_JOB["hyperparameters"], "learning_rate": 0.5}}, 400, "VALIDATION_ERROR"),
    ({"hyperparameters": {**CPU_JOB["hyperparameters"], "learning_rat": 0.001}}, 400, "VALIDATION_ERROR"),
    ({"output_dir": MINILM_ID}, 400, "INVALID_OUTPUT_DIR"),
    ({"output_dir": "../etc"}, 400, "INVALID_MODEL_ID"),
    ({"resume_from_checkpoint": "s3://tributary-artifacts/models/x/v1/model.onnx"}, 400, "INVALID_CHECKPOINT"),
    ({"resume_from_checkpoint": "s3://tributary-artifacts/training/x/checkpoints/step-00000002.pt"}, 400,
     "CHECKPOINT_NOT_FOUND"),
])
def test_invalid_requests_are_refused_and_nothing_is_queued(api: TestClient, ctx: AppContext,
                                                            change: dict[str, Any], status: int,
                                                            code: str) -> None:
    refused = api.post("/api/v1/training/jobs", json={**CPU_JOB, **change}, headers=ADMIN)
    assert refused.status_code == status, refused.text
    assert refused.json()["error_code"] == code
    assert events_of(ctx, MessageType.TRAINING_JOB_REQUESTED) == []
    assert api.get("/api/v1/training/jobs", headers=ADMIN).json()["total"] == 0


def test_a_dataset_without_pair_columns_is_refused(api: TestClient, ctx: AppContext) -> None:
    ctx.dataset_store.create(dataset("ds-text", columns=("text",)))
    refused = api.post("/api/v1/training/jobs", json={**CPU_JOB, "dataset_id": "ds-text"}, headers=ADMIN)
    assert refused.status_code == 400 and refused.json()["error_code"] == "DATASET_UNUSABLE"


def test_cancel_is_idempotent_and_announced_once(api: TestClient, ctx: AppContext) -> None:
    job_id = api.post("/api/v1/training/jobs", json=CPU_JOB, headers=ADMIN).json()["job_id"]
    first = api.post(f"/api/v1/training/jobs/{job_id}/cancel", headers=ADMIN)
    again = api.post(f"/api/v1/training/jobs/{job_id}/cancel", headers=ADMIN)
    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == again.json()["status"] == "cancelled"
    assert first.json()["cancelled_at"] == again.json()["cancelled_at"] is not None
    assert again.json()["message"] == "Training job was already cancelled."
    cancelled = [e for e in events_of(ctx, MessageType.FLEET_EVENT) if e["event_type"] == "training_job_cancelled"]
    assert len(cancelled) == 1
    unknown = api.post("/api/v1/training/jobs/00000000-0000-4000-8000-000000000000/cancel", headers=ADMIN)
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "TRAINING_JOB_NOT_FOUND"


def test_list_pages_and_metrics_history(api: TestClient, ctx: AppContext) -> None:
    ids = [api.post("/api/v1/training/jobs", json={**CPU_JOB, "name": f"job-{i}"}, headers=ADMIN).json()["job_id"]
           for i in range(3)]
    page = api.get("/api/v1/training/jobs", params={"page": 2, "page_size": 2}, headers=ADMIN).json()
    assert (page["total"], page["page"], page["page_size"], page["pages"], len(page["items"])) == (3, 2, 2, 2, 1)
    history = api.get(f"/api/v1/training/jobs/{ids[0]}/metrics", headers=ADMIN)
    assert history.status_code == 200 and history.json() == {"job_id": ids[0], "items": []}
    assert api.get("/api/v1/training/jobs/not-a-uuid", headers=ADMIN).status_code == 400
    assert ctx.training_jobs.get(ids[0]) is not None


def test_a_broker_outage_fails_the_job_instead_of_leaving_it_queued(api: TestClient, ctx: AppContext) -> None:
    from core.events import EventsUnavailable

    assert isinstance(ctx.events, RecordingSink)
    sink = ctx.events
    original = sink.publish

    async def refuse_requests(message_type: MessageType, record: dict[str, Any]) -> None:
        if message_type is MessageType.TRAINING_JOB_REQUESTED:
            raise EventsUnavailable("broker down", 2.0)
        await original(message_type, record)

    sink.publish = refuse_requests  # type: ignore[method-assign]
    refused = api.post("/api/v1/training/jobs", json=CPU_JOB, headers=ADMIN)
    assert refused.status_code == 503
    (job,) = api.get("/api/v1/training/jobs", headers=ADMIN).json()["items"]
    assert job["status"] == TrainingJobStatus.FAILED.value and "could not be queued" in job["error_message"]
    assert datetime.fromisoformat(job["completed_at"]) - datetime.now(UTC) < timedelta(minutes=1)
