"""Where a worker's runtimes come from: the built-in models first, else the catalog.

A catalog model (uploaded by a user, seed 000 versions) is served from its latest version:

- ONNX (uploaded as ONNX, or a TorchScript upload the ingress converted to ONNX) ->
  ``OnnxRuntimeModel``; otherwise a TorchScript upload -> ``TorchScriptModel``.
- The artifact is downloaded from S3 once into
  ``<data_dir>/models/catalog/<safe id>/v<version>/model-<sha256 prefix>.<ext>``: streamed to a temporary file,
  its sha256 checked against the catalog's, then renamed into place (atomic), so a crash or a
  concurrent download never leaves a half file where a runtime would read it.
- Its contract is ``served_task_type`` (``core/fleet/models.py``, the one the ingress validates
  with): txt2embed (ONNX + the ``tokenizer.json`` stored beside it) and img2embed get the
  task-typed runtimes of ``user_models.py``; everything else the generic tensor contract.
- ``resource_requirements.memory_mb``, when given, is the runtime's memory estimate, so it counts
  in the worker's LRU budget (``cache.py``) instead of the file-size estimate.
- A registry model onboarded from a ``source_url`` that is not ``ready`` raises
  ``ModelNotReadyError`` (``MODEL_NOT_READY``): no worker loads what was never checked.

Anything else (no version, plain state_dict, TensorFlow, ...) raises ``ModelLoadError``; an id
neither built in nor in the catalog raises ``ModelNotFoundError``. The model cache turns either
into a ``model_load_failed`` lifecycle event.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from consumers.inference.builtin import BuiltinModels
from consumers.inference.errors import ModelLoadError, ModelNotFoundError, ModelNotReadyError
from consumers.inference.runtime import ModelRuntime, OnnxRuntimeModel, TorchScriptModel
from consumers.inference.user_models import OnnxImageEmbedder, OnnxTextEmbedder
from core.artifacts import ArtifactNotFound, ArtifactStore
from core.fleet.models import ModelVersion, not_ready_reason, served_task_type
from core.fleet.store import FleetStore
from core.task_types import TaskType

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(model_id: str) -> str:
    """A directory name for ``model_id``: '/' and anything unusual become '_', no '..' survives."""
    name = _UNSAFE.sub("_", model_id.replace("/", "__")).replace("..", "_")
    return name.lstrip(".") or "_"


class CatalogModels:
    """Runtimes for catalog models; ``store`` and ``artifacts`` may be factories (connected on first use)."""

    def __init__(self, store: FleetStore | Callable[[], FleetStore], artifacts: ArtifactStore |
                 Callable[[], ArtifactStore], cache_dir: Path, *, intra_op_threads: int = 1) -> None:
        self._store = store
        self._artifacts = artifacts
        self.cache_dir = Path(cache_dir)
        self.intra_op_threads = intra_op_threads
        self._lock = threading.Lock()

    def store(self) -> FleetStore:
        with self._lock:
            if not isinstance(self._store, FleetStore):
                self._store = self._store()
            return self._store

    def artifacts(self) -> ArtifactStore:
        with self._lock:
            if not isinstance(self._artifacts, ArtifactStore):
                self._artifacts = self._artifacts()
            return self._artifacts

    def create(self, model_id: str) -> ModelRuntime:
        store = self.store()
        model = store.get_model(model_id)
        if model is None:
            raise ModelNotFoundError(f"model {model_id!r} is neither built in nor in the catalog",
                                     details={"model_id": model_id})
        reason = not_ready_reason(model)
        if reason is not None:
            raise ModelNotReadyError(f"model {model_id!r} is {model.extra.get('status')}: {reason}",
                                     details={"model_id": model_id, "status": model.extra.get("status")},
                                     hint="Load it once GET /api/v1/models/{id} shows status 'ready'.")
        versions = store.list_versions(model_id)
        if not versions:
            raise ModelLoadError(f"catalog model {model_id!r} has no uploaded version to serve",
                                 details={"model_id": model_id},
                                 hint="Upload a version (ONNX or TorchScript) first.")
        version = max(versions, key=lambda v: v.version)
        task_type = served_task_type(model)
        config = dict(model.extra.get("config") or {})
        memory_mb = (model.extra.get("resource_requirements") or {}).get("memory_mb")
        declared = int(memory_mb) * 1024 * 1024 if memory_mb else None  # counts in the cache's LRU budget
        threads = self.intra_op_threads
        if version.format == "onnx" or version.onnx_key:
            path = self.fetch(version, onnx=version.format != "onnx")
            if task_type == TaskType.TXT2EMBED:
                tokenizer = (model.extra.get("files") or {}).get("tokenizer") or {}
                if not tokenizer.get("key") or not tokenizer.get("sha256"):
                    raise ModelLoadError(f"txt2embed model {model_id!r} has no stored tokenizer.json",
                                         details={"model_id": model_id},
                                         hint="Register it with a source_url that has tokenizer.json beside it.")
                tok_path = self.fetch_file(str(tokenizer["key"]), str(tokenizer["sha256"]),
                                           path.parent / f"tokenizer-{str(tokenizer['sha256'])[:16]}.json", model_id)
                return OnnxTextEmbedder(model_id, path, tok_path, config=config, intra_op_threads=threads,
                                        declared_memory_bytes=declared)
            if task_type == TaskType.IMG2EMBED:
                return OnnxImageEmbedder(model_id, path, config=config, intra_op_threads=threads,
                                         declared_memory_bytes=declared)
            return OnnxRuntimeModel(model_id, path, task_type=task_type, intra_op_threads=threads,
                                    declared_memory_bytes=declared)
        if version.format == "pytorch":
            path = self.fetch(version, onnx=False)
            return TorchScriptModel(model_id, path, task_type=task_type, declared_memory_bytes=declared)
        raise ModelLoadError(f"version {version.version} of {model_id!r} is {version.format}, which the workers "
                             "cannot run", details={"model_id": model_id, "format": version.format},
                             hint="Upload an ONNX model or a TorchScript archive.")

    __call__ = create

    def path_of(self, version: ModelVersion, *, onnx: bool) -> Path:
        """Where the artifact is cached. Named by its sha256 too: an id deleted and registered again
        starts at v1 again, and the old v1 file must not be taken for the new one."""
        suffix = "onnx" if onnx or version.format == "onnx" else "pt"
        sha256 = (version.onnx_sha256 if onnx else version.sha256) or "unknown"
        return self.cache_dir / safe_name(version.model_id) / f"v{version.version}" / f"model-{sha256[:16]}.{suffix}"

    def fetch(self, version: ModelVersion, *, onnx: bool) -> Path:
        """The local file of a version's artifact (or its ONNX form), downloaded and verified once."""
        key, sha256 = (version.onnx_key, version.onnx_sha256) if onnx else (version.artifact_key, version.sha256)
        if not key or not sha256:
            raise ModelLoadError(f"version {version.version} of {version.model_id!r} has no such artifact",
                                 details={"model_id": version.model_id})
        return self.fetch_file(key, sha256, self.path_of(version, onnx=onnx), version.model_id)

    def fetch_file(self, key: str, sha256: str, target: Path, model_id: str) -> Path:
        """``key`` from the artifact store at ``target``: streamed to a temporary file, its sha256
        checked, then renamed into place, so only a verified file is ever found there."""
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self.artifacts().stream(key):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != sha256:
                raise ModelLoadError(f"artifact {key} does not match its sha256 (CHECKSUM_MISMATCH)",
                                     details={"model_id": model_id, "expected": sha256,
                                              "actual": digest.hexdigest()})
            os.replace(tmp, target)
        except ArtifactNotFound as exc:
            raise ModelLoadError(f"artifact {key} is missing from the artifact store",
                                 details={"model_id": model_id}) from exc
        finally:
            tmp.unlink(missing_ok=True)
        log.info("downloaded %s (%s) to %s", model_id, key, target)
        return target


class ModelFactory:
    """The ``ModelCache`` loader of a worker: built-in models first, else the catalog (if wired)."""

    def __init__(self, builtins: BuiltinModels, catalog: CatalogModels | None = None) -> None:
        self.builtins = builtins
        self.catalog = catalog

    def create(self, model_id: str) -> ModelRuntime:
        if model_id in self.builtins or self.catalog is None:
            return self.builtins.create(model_id)
        return self.catalog.create(model_id)

    __call__ = create
