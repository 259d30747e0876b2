"""The model-download processor's work: one ``model_download_requested`` -> a stored, checked version.

The ingress never fetches: ``POST /models/{id}/download`` (or registration with
``auto_download``) writes ``status=downloading`` with a new ``request_id`` on the model's row and
publishes the request on ``tributary.models.downloads``; the ``model-downloads`` processor
(a consumer group, so a request outlives an ingress restart, and a processor killed mid-fetch
gets it again on redelivery) runs ``ModelDownloads.on_requested``:

1. The row must still name this ``request_id`` and be ``downloading`` (else the request is stale
   or already finished: at-least-once redelivery does nothing twice).
2. Fetch (``core.onboarding.fetch``: guarded, size- and time-capped) into a temporary file,
   writing ``download.bytes`` / ``total_bytes`` / ``progress`` to the row at most once a second.
3. Check the sha256 when the registration gave one, then the artifact
   (``core.onboarding.artifact``: ONNX loads in ONNX Runtime and its signature is recorded,
   TorchScript loads with ``torch.jit.load``, pickles are refused unread). A ``txt2embed`` model
   also needs ``tokenizer.json`` beside it (same directory of the source, or ``config.tokenizer_url``).
4. Store the file(s) in S3 under ``models/<id>/v<n>/`` as a new catalog version and set
   ``status=ready`` -- or ``status=failed`` with ``status_reason`` ``CODE: message``.

Each step is a seed 001 lifecycle event on ``modelmora.lifecycle.events`` with
``details.phase = "download"``: ``model_load_requested`` (downloading; published by the
ingress), ``model_loaded`` (ready: the file loaded in the checker's runtime) or
``model_load_failed`` (failed, with ``error_code`` and ``reason``).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from core.artifacts import ArtifactStore
from core.events import EventSink, fleet_record, lifecycle_record
from core.fleet.models import CatalogModel, ModelVersion, RegistryStatus
from core.fleet.store import FleetStore
from core.onboarding.artifact import KNOWN_ARCHITECTURES, CheckedArtifact, check_artifact, check_tokenizer, sniff
from core.onboarding.fetch import FetchError, SourceFetcher, redact
from core.task_types import TaskType
from schemas.clock import utcnow
from settings import Settings
from topology.messages import MessageType

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0
DOWNLOAD_PHASE = "download"


def tokenizer_url(source_url: str, config: dict[str, Any]) -> str:
    """Where a txt2embed model's ``tokenizer.json`` is: ``config.tokenizer_url``, else beside the model."""
    explicit = config.get("tokenizer_url")
    if isinstance(explicit, str) and explicit:
        return explicit
    return beside(source_url, "tokenizer.json")


def beside(source_url: str, name: str) -> str:
    """The URL of ``name`` in the same directory as ``source_url``."""
    parts = urlsplit(source_url)
    directory = parts.path.rsplit("/", 1)[0]
    return urlunsplit((parts.scheme, parts.netloc, f"{directory}/{name}", parts.query, ""))


# (architecture, directory holding model.safetensors and config.json, ONNX file to write): builds the module
# from our code, loads the weights strictly and exports ONNX; raises FetchError when the weights do not fit.
WeightsBuilder = Callable[[str, Path, Path], None]


def needs_tokenizer(model: CatalogModel) -> bool:
    config = model.extra.get("config") or {}
    return model.task_type == TaskType.TXT2EMBED.value and config.get("contract") != "tensor"


class ModelDownloads:
    def __init__(self, settings: Settings, store: FleetStore, artifacts: ArtifactStore, events: EventSink,
                 fetcher: SourceFetcher, *, clock: Callable[[], datetime] = utcnow,
                 weights_builder: WeightsBuilder | None = None) -> None:
        self.settings = settings
        self.store = store
        self.artifacts = artifacts
        self.events = events
        self.fetcher = fetcher
        self.clock = clock
        self.work_dir = settings.data_dir / "downloads"
        self.weights_builder = weights_builder

    async def on_requested(self, record: dict[str, Any]) -> str:
        """Handle one request; returns the outcome (``ready``, ``failed``, ``stale``)."""
        model_id, request_id = str(record["model_id"]), str(record["request_id"])
        model = await asyncio.to_thread(self.store.get_model, model_id)
        if model is None or (model.extra.get("download") or {}).get("request_id") != request_id \
                or model.extra.get("status") != RegistryStatus.DOWNLOADING.value:
            log.info("download request %s of %s is stale or done; nothing to do", request_id, model_id)
            return "stale"
        started = time.monotonic()
        try:
            try:
                version, checked = await asyncio.to_thread(self._download, model, request_id, record.get("sha256"))
            except FetchError:
                raise
            except Exception as exc:  # a checker or store crash: the model fails with it instead of staying downloading
                log.exception("download of %s failed unexpectedly", model_id)
                raise FetchError("DOWNLOAD_FAILED", f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        except FetchError as exc:
            await asyncio.to_thread(self._finish, model_id, request_id, RegistryStatus.FAILED,
                                    f"{exc.code}: {exc.message}")
            await self._lifecycle("model_load_failed", model_id, status="failed", error_code=exc.code,
                                  reason=exc.message, source=redact(str(record["source_url"])))
            log.warning("download of %s failed: %s: %s", model_id, exc.code, exc.message)
            return "failed"
        await self._lifecycle("model_loaded", model_id, status="ready", version=version.version,
                              format=checked.format, sha256=version.sha256, size_bytes=version.model_size_bytes,
                              download_s=round(time.monotonic() - started, 3))
        await self.events.publish(MessageType.FLEET_EVENT, fleet_record(
            "model_version_created", "model", model_id, version=version.version, format=version.format,
            onnx=version.onnx_key is not None))
        return "ready"

    # --- the blocking part, on a thread -------------------------------------------------
    def _download(self, model: CatalogModel, request_id: str,
                  expected_sha256: str | None) -> tuple[ModelVersion, CheckedArtifact]:
        source_url = str(model.extra.get("source_url") or "")
        config = dict(model.extra.get("config") or {})
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            path = Path(tmp) / "model.bin"
            last = [0.0]

            def progress(done: int, total: int | None) -> None:
                now = time.monotonic()
                if now - last[0] >= PROGRESS_EVERY_S or (total is not None and done >= total):
                    last[0] = now
                    self._progress(model.id, request_id, done, total)

            with path.open("wb") as out:
                fetched = self.fetcher.fetch(source_url, out, progress)
            self._progress(model.id, request_id, fetched.size, fetched.size)
            if expected_sha256 and expected_sha256.lower() != fetched.sha256:
                raise FetchError("CHECKSUM_MISMATCH", f"the file's sha256 is {fetched.sha256}, the registration "
                                                      f"expects {expected_sha256.lower()}; it was not loaded")
            if sniff(path) == "safetensors" and config.get("architecture") in KNOWN_ARCHITECTURES \
                    and self.weights_builder is not None:
                path = self._build_from_weights(model, path, config, Path(tmp))
            checked = check_artifact(path, config)
            tokenizer: Path | None = None
            if needs_tokenizer(model):
                if checked.format != "onnx":
                    raise FetchError("UNSUPPORTED_FORMAT", "a txt2embed model must be ONNX (input_ids and "
                                                           "attention_mask in, an embedding out)")
                tokenizer = Path(tmp) / "tokenizer.json"
                with tokenizer.open("wb") as out:
                    self.fetcher.fetch(tokenizer_url(source_url, config), out)
                check_tokenizer(tokenizer)
            return self._store_version(model, request_id, path, checked, tokenizer), checked

    def _build_from_weights(self, model: CatalogModel, weights: Path, config: dict[str, Any], tmp: Path) -> Path:
        """ONNX built from safetensors weights of a known architecture (config.json fetched beside them)."""
        architecture = str(config["architecture"])
        if KNOWN_ARCHITECTURES[architecture] != model.task_type:
            raise FetchError("UNSUPPORTED_FORMAT", f"architecture {architecture!r} serves "
                                                   f"{KNOWN_ARCHITECTURES[architecture]}, not {model.task_type}")
        assert self.weights_builder is not None
        source = tmp / "weights"
        source.mkdir()
        weights.rename(source / "model.safetensors")
        with (source / "config.json").open("wb") as out:
            self.fetcher.fetch(str(config.get("config_url") or beside(str(model.extra["source_url"]), "config.json")),
                               out)
        onnx_path = tmp / "built.onnx"
        self.weights_builder(architecture, source, onnx_path)
        return onnx_path

    def _store_version(self, model: CatalogModel, request_id: str, path: Path, checked: CheckedArtifact,
                       tokenizer: Path | None) -> ModelVersion:
        number = self.store.next_version(model.id)
        suffix = "onnx" if checked.format == "onnx" else "pt"
        key = f"models/{model.id}/v{number}/model.{suffix}"
        try:
            stored = self.artifacts.put_path(key, path)
            files: dict[str, Any] = {}
            if tokenizer is not None:
                tok = self.artifacts.put_path(f"models/{model.id}/v{number}/tokenizer.json", tokenizer)
                files["tokenizer"] = {"key": tok.key, "sha256": tok.sha256, "size_bytes": tok.size}
        except Exception as exc:  # S3 unavailable: the model fails with the reason; /download again retries
            raise FetchError("STORAGE_UNAVAILABLE", f"object storage refused the file: {exc}") from exc
        now = self.clock()
        version = ModelVersion(
            model_id=model.id, version=number, format=checked.format, artifact_key=key,
            model_path=f"s3://{self.settings.s3_bucket}/{key}", model_size_bytes=stored.size, sha256=stored.sha256,
            uploaded_at=now, description=f"fetched from {redact(str(model.extra.get('source_url')))}",
            onnx_key=key if checked.format == "onnx" else None,
            onnx_size_bytes=stored.size if checked.format == "onnx" else None,
            onnx_sha256=stored.sha256 if checked.format == "onnx" else None)
        self.store.add_version(version)
        current = self.store.get_model(model.id)
        if current is None or (current.extra.get("download") or {}).get("request_id") != request_id:
            raise FetchError("SUPERSEDED", "the model was deleted or another download was requested meanwhile")
        current.latest_version, current.model_path = number, version.model_path
        current.model_size_bytes, current.model_hash = stored.size, f"sha256:{stored.sha256}"
        current.extra.update(status=RegistryStatus.READY.value, status_reason=None, signature=checked.signature,
                             files=files, format=checked.format)
        current.extra["download"] = {**current.extra.get("download", {}), "finished_at": now.isoformat()}
        current.updated_at = now
        self.store.update_model(current)
        return version

    def _progress(self, model_id: str, request_id: str, done: int, total: int | None) -> None:
        model = self.store.get_model(model_id)
        if model is None or (model.extra.get("download") or {}).get("request_id") != request_id:
            return
        download = dict(model.extra.get("download") or {})
        download.update(bytes=done, total_bytes=total,
                        progress=round(done / total, 4) if total else None, updated_at=self.clock().isoformat())
        model.extra["download"] = download
        self.store.update_model(model)

    def _finish(self, model_id: str, request_id: str, status: RegistryStatus, reason: str | None) -> None:
        model = self.store.get_model(model_id)
        if model is None or (model.extra.get("download") or {}).get("request_id") != request_id:
            return
        model.extra.update(status=status.value, status_reason=reason)
        model.extra["download"] = {**model.extra.get("download", {}), "finished_at": self.clock().isoformat()}
        model.updated_at = self.clock()
        self.store.update_model(model)

    async def _lifecycle(self, event_type: str, model_id: str, **details: Any) -> None:
        await self.events.publish(MessageType.LIFECYCLE_EVENT,
                                  lifecycle_record(event_type, model_id, phase=DOWNLOAD_PHASE, **details))
