"""Seed 003 LoRA training jobs end to end on the real stack: a dataset uploaded through the API, a job
fine-tunes MiniLM for a few steps on CPU in the trainer process, the trainer is SIGKILLed mid-run and
the redelivered job resumes from its newest checkpoint (the step continues, it does not restart at 1),
retention deletes old checkpoints from S3, the finished model is served by the inference workers with
embeddings that differ from the base model's (closer anchor/positive pairs: what the objective trains),
another job is cancelled and its trainer stops within seconds, and every state change is an event."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import numpy as np
import pytest

from core.artifacts import ArtifactNotFound, S3ArtifactStore
from core.serving.builtin_specs import MINILM_ID
from tests.e2e.conftest import RunningSystem
from tests.e2e.serving import ENCODED_MINILM, HTTP_TIMEOUT, infer, records_until
from topology.topics import FLEET_EVENTS

pytestmark = pytest.mark.e2e

PAIRS = [
    ("How do I reset my password?", "Use the reset link on the sign-in page."),
    ("Where can I download my invoices?", "Invoices are under Billing, then History."),
    ("Can I change my username?", "Usernames are fixed; create a new account instead."),
    ("How do I delete my account?", "Write to support from the address on the account."),
    ("Which payment methods are accepted?", "Cards and bank transfers, no cheques."),
    ("Is there a student discount?", "Students get 40 percent off with a valid card."),
    ("How do I enable two-factor login?", "Turn it on in Security with an authenticator app."),
    ("Why was my card declined?", "The bank refused it; call them or use another card."),
    ("Can I export my data?", "Settings has an export button that mails you a zip."),
    ("How long does shipping take?", "Three to five working days inside the country."),
    ("Do you ship abroad?", "We ship to the whole European Union."),
    ("How do I return an item?", "Print the return label from your order page."),
    ("When is the refund paid?", "Ten days after the returned item arrives."),
    ("Can I pause my subscription?", "Yes, for up to three months from the plan page."),
    ("Where is the nearest store?", "The store finder on the home page lists them."),
    ("How do I contact a human?", "Chat opens weekdays from nine to six."),
]
HP = {"learning_rate": 5e-3, "batch_size": 4, "gradient_accumulation_steps": 1, "max_seq_length": 128,
      "warmup_steps": 0, "optimizer": "adamw", "lr_scheduler_type": "linear", "logging_steps": 1}


def admin(system: RunningSystem) -> dict[str, str]:
    return {"Authorization": f"Bearer {system.admin_key}"}


@pytest.fixture(scope="module")
def dataset_id(system: RunningSystem) -> str:
    rows = [{"instruction": q, "input": "customer support", "output": a} for q, a in PAIRS]
    body = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    created = httpx.post(f"{system.base_url}/api/v1/datasets", headers=admin(system),
                         files={"file": ("faq.jsonl", body)}, data={"name": "faq"}, timeout=HTTP_TIMEOUT)
    assert created.status_code == 201, created.text
    return str(created.json()["dataset_id"])


def create_job(system: RunningSystem, dataset_id: str, **hyperparameters: Any) -> dict[str, Any]:
    body = {"name": f"faq-{uuid.uuid4().hex[:6]}", "base_model": MINILM_ID, "dataset_id": dataset_id,
            "output_dir": f"faq-minilm-{uuid.uuid4().hex[:8]}", "hyperparameters": {**HP, **hyperparameters},
            "lora_config": {"r": 8, "lora_alpha": 16, "target_modules": ["query", "value"]},
            "quantization": {"load_in_4bit": False}}
    created = httpx.post(f"{system.base_url}/api/v1/training/jobs", json=body, headers=admin(system),
                         timeout=HTTP_TIMEOUT)
    assert created.status_code == 201, created.text
    job: dict[str, Any] = created.json()
    assert job["status"] == "queued"
    return job


def get_job(system: RunningSystem, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{system.base_url}/api/v1/training/jobs/{job_id}", headers=admin(system), timeout=30)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_job(system: RunningSystem, job_id: str, done: Callable[[dict[str, Any]], bool], timeout_s: float,
             poll_s: float = 0.1) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = get_job(system, job_id)
        if done(job):
            return job
        time.sleep(poll_s)
    raise AssertionError(f"training job {job_id} did not get there in {timeout_s}s: {get_job(system, job_id)}")


def job_events(system: RunningSystem, job_id: str, last: str, timeout_s: float = 30) -> list[dict[str, Any]]:
    return records_until(system.settings, FLEET_EVENTS,
                         lambda r: r.get("subject_kind") == "training_job" and r.get("subject_id") == job_id,
                         lambda found: any(r["event_type"] == last for r in found), timeout_s)


def embeddings(system: RunningSystem, model: str, texts: list[str]) -> np.ndarray:
    response = infer(system.base_url, admin(system), texts, model=model)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["output_data"]["embeddings"], dtype=np.float64)


def test_killed_trainer_resumes_from_its_checkpoint_and_the_model_is_served(system: RunningSystem,
                                                                           dataset_id: str) -> None:
    # 16 pairs, batches of 4: 4 steps an epoch, 24 in all; a checkpoint every 3, the newest 2 kept
    job = create_job(system, dataset_id, num_epochs=6, save_steps=3, save_total_limit=2)
    job_id = job["job_id"]
    assert job["total_steps"] == 24
    running = wait_job(system, job_id, lambda j: j["status"] == "running" and bool(j["checkpoints"]), 240)
    trainer = system.supervisor.running["trainer"].proc
    trainer.send_signal(signal.SIGKILL)
    trainer.wait(10)
    at_kill = get_job(system, job_id)
    resume_step = max(c["step"] for c in at_kill["checkpoints"])
    assert at_kill["status"] == "running" and resume_step < 24, at_kill
    assert running["current_step"] >= 3
    system.supervisor.check()  # restarts it, as `tributary run` would
    assert system.supervisor.running["trainer"].proc.pid != trainer.pid

    done = wait_job(system, job_id, lambda j: j["status"] in ("completed", "failed"), 300, poll_s=0.5)
    assert done["status"] == "completed", done
    assert done["progress"] == 1.0 and done["current_step"] == 24 and done["model_id"] == job["output_dir"]
    assert done["metrics"]["step"] == 24 and done["metrics"]["tokens_per_second"] > 0

    events = job_events(system, job_id, "training_job_completed")
    kinds = [e["event_type"] for e in events]
    assert kinds[:3] == ["training_job_pending", "training_job_queued", "training_job_running"]
    assert kinds.count("training_job_running") == 2 and kinds[-1] == "training_job_completed"
    runs = [i for i, e in enumerate(events) if e["event_type"] == "training_job_running"]
    assert events[runs[0]]["details"].get("resumed_from") is None
    assert events[runs[1]]["details"]["resumed_from"].endswith(f"step-{resume_step:08d}.pt")
    after = [e["details"]["step"] for e in events[runs[1]:] if e["event_type"] == "training_job_progress"]
    assert after[0] == resume_step + 1 and after[-1] == 24  # continued, not restarted at 1
    progress = [e["details"]["progress"] for e in events if e["event_type"] == "training_job_progress"]
    assert all(0 < p <= 1 for p in progress) and len(set(progress)) > 2  # step / total_steps, not 0-or-100

    history = httpx.get(f"{system.base_url}/api/v1/training/jobs/{job_id}/metrics", headers=admin(system),
                        timeout=30).json()["items"]
    assert [m["step"] for m in history] == list(range(1, 25))
    assert history[-1]["train_loss"] < history[0]["train_loss"]

    # retention: the newest 2 checkpoints are listed; the older ones are gone from S3 too
    kept = [c["step"] for c in done["checkpoints"]]
    assert kept == [18, 21]
    artifacts = S3ArtifactStore(system.settings)
    for step in (3, 6, 9, 12, 15):
        with pytest.raises(ArtifactNotFound):
            artifacts.head(f"training/{job_id}/checkpoints/step-{step:08d}.pt")
    for checkpoint in done["checkpoints"]:
        assert artifacts.head(checkpoint["path"].split("/", 3)[3]).size == checkpoint["size_bytes"]

    assert done["carbon"] is not None and done["carbon"]["energy_kwh"] > 0 and done["carbon"]["emissions_kg"] > 0

    # the registry model the inference workers serve, against the base model on the training texts
    anchors = [f"{q} customer support" for q, _ in PAIRS]
    positives = [a for _, a in PAIRS]
    tuned_a, tuned_p = embeddings(system, done["model_id"], anchors), embeddings(system, done["model_id"], positives)
    base_a, base_p = embeddings(system, ENCODED_MINILM, anchors), embeddings(system, ENCODED_MINILM, positives)
    assert np.max(np.sum(tuned_a * base_a, axis=1)) < 0.999  # every text embeds differently
    tuned_pairs, base_pairs = np.sum(tuned_a * tuned_p, axis=1), np.sum(base_a * base_p, axis=1)
    assert tuned_pairs.mean() > base_pairs.mean() + 0.05, (tuned_pairs.mean(), base_pairs.mean())
    model = httpx.get(f"{system.base_url}/api/v1/models/{done['model_id']}", headers=admin(system), timeout=30)
    assert model.status_code == 200 and model.json()["task_type"] == "txt2embed"


def test_cancel_stops_the_running_job_within_seconds(system: RunningSystem, dataset_id: str) -> None:
    long = create_job(system, dataset_id, num_epochs=100)  # 400 steps: minutes, unless cancelled
    wait_job(system, long["job_id"], lambda j: j["status"] == "running" and j["current_step"] >= 2, 240)
    cancelled_at = time.time()
    cancel = httpx.post(f"{system.base_url}/api/v1/training/jobs/{long['job_id']}/cancel", headers=admin(system),
                        timeout=30)
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    # one trainer runs one job at a time: the next job starts only once the cancelled one has stopped
    short = create_job(system, dataset_id, num_epochs=1)
    started = wait_job(system, short["job_id"], lambda j: j["status"] != "queued", 60, poll_s=0.2)
    assert started["status"] in ("running", "completed")
    assert time.time() - cancelled_at < 30  # includes loading the base model for the next job
    history = httpx.get(f"{system.base_url}/api/v1/training/jobs/{long['job_id']}/metrics", headers=admin(system),
                        timeout=30).json()["items"]
    last_logged = max(datetime.fromisoformat(m["timestamp"]).timestamp() for m in history)
    assert last_logged < cancelled_at + 3, "the cancelled job kept training"
    final = get_job(system, long["job_id"])
    assert final["status"] == "cancelled" and final["current_step"] < 400
    again = httpx.post(f"{system.base_url}/api/v1/training/jobs/{long['job_id']}/cancel", headers=admin(system),
                       timeout=30)
    assert again.status_code == 200 and again.json()["message"] == "Training job was already cancelled."
    kinds = [e["event_type"] for e in job_events(system, long["job_id"], "training_job_cancelled")]
    assert kinds[:3] == ["training_job_pending", "training_job_queued", "training_job_running"]
    assert kinds[-1] == "training_job_cancelled" and kinds.count("training_job_cancelled") == 1
    wait_job(system, short["job_id"], lambda j: j["status"] == "completed", 240, poll_s=0.5)
