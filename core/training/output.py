"""A finished training job's model: a registry model version the inference workers serve.

The merged weights are exported to ONNX by the caller (the trainer, with the same exporter the
model-download processor uses for bare MiniLM weights); this stores the ONNX file and the base
model's ``tokenizer.json`` under ``models/<output_dir>/v<n>/`` and makes that version the model's
latest. The model id is the job's ``output_dir``: the first job creates it (txt2embed, ``ready``),
later jobs with the same ``output_dir`` add versions.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from core.artifacts import ArtifactStore
from core.fleet.models import CatalogModel, ModelVersion, RegistryStatus
from core.fleet.store import FleetStore
from core.training.schemas import TrainingJob
from schemas.clock import utcnow


class OutputConflict(ValueError):
    """``output_dir`` names a registry model that is not a fine-tuned model (a user's or a built-in)."""


def register_trained_model(store: FleetStore, artifacts: ArtifactStore, bucket: str, job: TrainingJob,
                           onnx_path: Path, tokenizer_path: Path, task_type: str,
                           clock: Callable[[], datetime] = utcnow) -> ModelVersion:
    model_id = job.output_dir
    now = clock()
    entry = CatalogModel(id=model_id, is_baseline=False, created_at=now, updated_at=now, name=job.name,
                         task_type=task_type, description=f"LoRA fine-tune of {job.base_model}",
                         extra={"version": "1", "source_url": None, "resource_requirements": {}, "config": {},
                                "status": RegistryStatus.READY.value, "trained_from": job.base_model})
    store.create_model(entry)  # False: it exists (an earlier job, or a redelivery of this one)
    current = store.get_model(model_id)
    if current is None or "trained_from" not in current.extra:
        raise OutputConflict(f"output_dir '{model_id}' is a registry model that no training job made")
    for version in store.list_versions(model_id):  # a redelivery after registering: do it once
        if version.description == f"training job {job.job_id}":
            return version
    number = store.next_version(model_id)
    key = f"models/{model_id}/v{number}/model.onnx"
    stored = artifacts.put_path(key, onnx_path)
    tokenizer = artifacts.put_path(f"models/{model_id}/v{number}/tokenizer.json", tokenizer_path)
    version = ModelVersion(
        model_id=model_id, version=number, format="onnx", artifact_key=key,
        model_path=f"s3://{bucket}/{key}", model_size_bytes=stored.size, sha256=stored.sha256,
        uploaded_at=now, description=f"training job {job.job_id}", onnx_key=key, onnx_size_bytes=stored.size,
        onnx_sha256=stored.sha256)
    store.add_version(version)
    current.latest_version, current.model_path = number, version.model_path
    current.model_size_bytes, current.model_hash = stored.size, f"sha256:{stored.sha256}"
    current.extra.update(status=RegistryStatus.READY.value, status_reason=None, format="onnx", version=str(number),
                         training_job_id=job.job_id, trained_from=job.base_model,
                         files={"tokenizer": {"key": tokenizer.key, "sha256": tokenizer.sha256,
                                              "size_bytes": tokenizer.size}})
    current.updated_at = now
    store.update_model(current)
    return version
