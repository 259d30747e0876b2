"""The worker side of the model lifecycle, without Kafka: the catalog model factory, model
commands applied to the model cache, residency rows written from the cache's events."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consumers.inference.builtin import BuiltinModels
from consumers.inference.cache import ModelCache
from consumers.inference.catalog import CatalogModels, ModelFactory, safe_name
from consumers.inference.commands import ModelCommandHandler
from consumers.inference.errors import ModelLoadError, ModelNotFoundError
from consumers.inference.residency import ResidencyReporter
from consumers.inference.runtime import OnnxRuntimeModel
from core.artifacts import MemoryArtifactStore
from core.fleet.memory_store import InMemoryFleetStore
from core.fleet.models import CatalogModel, ModelVersion
from core.serving.builtin_specs import MINILM_ID
from core.serving.residency import InMemoryResidencyStore, ResidencyState
from core.task_types import GENERIC_TASK_TYPE
from messaging.dead_letter import DeadLetterRouter, RawMessage
from schemas.codec import Codec, DecodeError, new_envelope
from settings import Settings
from tests.onnx_models import expected, linear_onnx
from tests.samples import sample

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


class CountingArtifacts(MemoryArtifactStore):
    def __init__(self) -> None:
        super().__init__()
        self.streams = 0

    def stream(self, key: str, chunk_size: int = 1024 * 1024) -> Any:
        self.streams += 1
        return super().stream(key, chunk_size)


def add_model(store: InMemoryFleetStore, artifacts: MemoryArtifactStore, model_id: str, data: bytes | None,
              fmt: str = "onnx", sha256: str | None = None, task_type: str | None = None) -> None:
    store.create_model(CatalogModel(id=model_id, is_baseline=False, created_at=T0, updated_at=T0,
                                    task_type=task_type))
    if data is None:
        return
    key = f"models/{model_id}/v1/model.{fmt}"
    stored = artifacts.put(key, data)
    store.add_version(ModelVersion(model_id=model_id, version=store.next_version(model_id), format=fmt,
                                   artifact_key=key, model_path=f"s3://b/{key}", model_size_bytes=stored.size,
                                   sha256=sha256 or stored.sha256, uploaded_at=T0))


@pytest.fixture
def catalog(tmp_path: Path) -> tuple[CatalogModels, InMemoryFleetStore, CountingArtifacts]:
    store, artifacts = InMemoryFleetStore(), CountingArtifacts()
    return CatalogModels(lambda: store, lambda: artifacts, tmp_path / "catalog"), store, artifacts


def test_catalog_onnx_model_is_downloaded_once_verified_and_served(
        catalog: tuple[CatalogModels, InMemoryFleetStore, CountingArtifacts]) -> None:
    models, store, artifacts = catalog
    add_model(store, artifacts, "org/linear", linear_onnx())
    runtime = models.create("org/linear")
    assert isinstance(runtime, OnnxRuntimeModel) and runtime.task_type == GENERIC_TASK_TYPE
    sha256 = store.list_versions("org/linear")[0].sha256
    assert runtime.path == models.cache_dir / "org__linear" / "v1" / f"model-{sha256[:16]}.onnx"
    assert hashlib.sha256(runtime.path.read_bytes()).hexdigest() == store.list_versions("org/linear")[0].sha256
    runtime.load()
    rows = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
    (out,) = runtime.infer_batch([{"inputs": rows}])
    np.testing.assert_allclose(out["outputs"], expected(rows), rtol=1e-6)
    runtime.close()
    models.create("org/linear")  # the verified file is reused
    assert artifacts.streams == 1
    assert [p.name for p in runtime.path.parent.iterdir()] == [runtime.path.name]  # no temporary left


def test_catalog_failures(catalog: tuple[CatalogModels, InMemoryFleetStore, CountingArtifacts]) -> None:
    models, store, artifacts = catalog
    with pytest.raises(ModelNotFoundError):
        models.create("org/unknown")
    add_model(store, artifacts, "org/empty", None)
    with pytest.raises(ModelLoadError, match="no uploaded version"):
        models.create("org/empty")
    add_model(store, artifacts, "org/tampered", linear_onnx(), sha256="0" * 64)
    with pytest.raises(ModelLoadError, match="sha256"):
        models.create("org/tampered")
    assert list((models.cache_dir / "org__tampered" / "v1").iterdir()) == []
    add_model(store, artifacts, "org/keras", b"\x89HDF\r\n\x1a\nweights", fmt="tensorflow")
    with pytest.raises(ModelLoadError, match="cannot run"):
        models.create("org/keras")


def test_safe_names_never_escape_the_cache() -> None:
    assert safe_name("org/name") == "org__name"
    assert "/" not in safe_name("../../etc/passwd") and ".." not in safe_name("../../etc/passwd")


def test_factory_resolves_builtins_first_then_the_catalog(
        tmp_path: Path, catalog: tuple[CatalogModels, InMemoryFleetStore, CountingArtifacts]) -> None:
    models, store, artifacts = catalog
    add_model(store, artifacts, MINILM_ID, linear_onnx())  # a catalog entry with a built-in's id
    add_model(store, artifacts, "org/linear", linear_onnx())
    factory = ModelFactory(BuiltinModels(tmp_path / "builtin"), models)
    assert not isinstance(factory(MINILM_ID), OnnxRuntimeModel)  # the built-in, not the upload
    assert isinstance(factory("org/linear"), OnnxRuntimeModel)
    with pytest.raises(ModelNotFoundError):
        ModelFactory(BuiltinModels(tmp_path / "builtin"))("org/linear")


class Worker:
    """A model cache + residency reporter + command handler, as one worker process wires them."""

    def __init__(self, models: CatalogModels, budget: int = 64 * 2**20, name: str = "worker-high-1") -> None:
        self.now = T0
        self.store = InMemoryResidencyStore(clock=lambda: self.now)
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.cache: ModelCache = ModelCache(budget, models, on_event=self.on_event)
        self.residency = ResidencyReporter(self.store, worker=name, ttl_s=30, loaded=self.cache.loaded,
                                           clock=lambda: self.now)
        self.commands = ModelCommandHandler(self.cache, self.residency, worker=name)

    def on_event(self, event_type: str, model_id: str, details: dict[str, Any]) -> None:
        self.events.append((event_type, model_id, details))
        self.residency.on_event(event_type, model_id, details)

    def command(self, command: str, model_id: str) -> bytes:
        record = {**new_envelope(service="api", instance="api-1"), "command": command, "model_id": model_id,
                  "version": None, "reason": "test"}
        payload, _ = Codec().encode("model_command", record)
        return payload

    def apply(self, command: str, model_id: str) -> str:
        return asyncio.run(self.commands.handle(self.commands.decode(self.command(command, model_id))))


def test_load_and_unload_commands_drive_the_cache_and_the_residency_rows(
        catalog: tuple[CatalogModels, InMemoryFleetStore, CountingArtifacts]) -> None:
    models, store, artifacts = catalog
    add_model(store, artifacts, "org/linear", linear_onnx())
    worker = Worker(models)
    assert worker.apply("load", "org/linear") == "loaded"
    assert worker.cache.is_loaded("org/linear")
    (row,) = worker.store.for_model("org/linear")
    assert row.state is ResidencyState.LOADED and row.worker == "worker-high-1" and row.memory_bytes > 0
    assert row.task_type == GENERIC_TASK_TYPE
    assert [e[0] for e in worker.events] == ["model_load_requested", "model_loaded"]
    assert worker.apply("load", "org/linear") == "loaded"  # idempotent: no second load
    assert [e[0] for e in worker.events].count("model_loaded") == 1

    assert worker.apply("unload", "org/linear") == "unloaded"
    assert worker.store.for_model("org/linear") == [] and not worker.cache.is_loaded("org/linear")
    assert worker.events[-1][0] == "model_unloaded"
    assert worker.apply("unload", "org/linear") == "not_loaded"


def test_a_model_the_worker_cannot_create_is_answered_with_model_load_failed(
        catalog: tuple[CatalogModels, InMemoryFleetStore, CountingArtifacts]) -> None:
    models, store, artifacts = catalog
    worker = Worker(models)
    assert worker.apply("load", "org/unknown") == "load_failed"
    assert worker.events[-1][0] == "model_load_failed"
    assert worker.events[-1][2]["error_code"] == "MODEL_NOT_FOUND"
    (row,) = worker.store.for_model("org/unknown")
    assert row.state is ResidencyState.UNHEALTHY and row.error_code == "MODEL_NOT_FOUND"
    # Too big for the budget: INSUFFICIENT_MEMORY, which the load endpoint turns into 507.
    add_model(store, artifacts, "org/linear", linear_onnx())
    tiny = Worker(models, budget=1024)
    assert tiny.apply("load", "org/linear") == "load_failed"
    assert tiny.store.for_model("org/linear")[0].error_code == "INSUFFICIENT_MEMORY"
    # An unload clears the unhealthy row too.
    assert worker.apply("unload", "org/unknown") == "not_loaded"
    assert worker.store.for_model("org/unknown") == []


def test_residency_rows_are_refreshed_expire_without_refresh_and_cleared_at_shutdown(
        catalog: tuple[CatalogModels, InMemoryFleetStore, CountingArtifacts]) -> None:
    models, store, artifacts = catalog
    add_model(store, artifacts, "org/linear", linear_onnx())
    worker = Worker(models)
    worker.apply("load", "org/linear")
    worker.apply("load", "org/unknown")
    for _ in range(4):  # the timer: every third of the TTL
        worker.now += timedelta(seconds=10)
        assert worker.residency.refresh() == 2
    assert {r.model_id for r in worker.store.all()} == {"org/linear", "org/unknown"}
    worker.now += timedelta(seconds=31)  # a SIGKILLed worker stops refreshing: its rows expire
    assert worker.store.all() == []
    worker.residency.refresh()
    worker.residency.clear()  # graceful shutdown
    assert worker.store.all() == []


def test_store_outages_do_not_break_the_cache(
        catalog: tuple[CatalogModels, InMemoryFleetStore, CountingArtifacts]) -> None:
    models, store, artifacts = catalog
    add_model(store, artifacts, "org/linear", linear_onnx())

    def unreachable() -> InMemoryResidencyStore:
        raise ConnectionError("Cassandra is down")

    cache = ModelCache(64 * 2**20, models)
    reporter = ResidencyReporter(unreachable, worker="w", ttl_s=30, loaded=cache.loaded)
    cache._on_event = reporter.on_event
    cache.get_or_load("org/linear")
    reporter.refresh()
    assert cache.is_loaded("org/linear") and reporter.errors >= 2


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []

    async def publish(self, topic: str, value: bytes, *, key: bytes | None = None,
                      headers: list[tuple[str, bytes]] | None = None) -> None:
        self.sent.append((topic, value, headers or []))


def test_undecodable_and_foreign_commands_are_dead_lettered(
        catalog: tuple[CatalogModels, InMemoryFleetStore, CountingArtifacts]) -> None:
    models, _, _ = catalog
    worker = Worker(models)
    with pytest.raises(DecodeError):
        worker.commands.decode(b"not avro")
    heartbeat, _ = Codec().encode("lifecycle_event", sample("lifecycle_event"))
    with pytest.raises(TypeError):
        worker.commands.decode(heartbeat)

    publisher = FakePublisher()
    router = DeadLetterRouter(Settings(topic_prefix="t."), publisher, "inference-workers-high")  # type: ignore[arg-type]

    async def handle(message: RawMessage) -> None:
        await worker.commands.handle(worker.commands.decode(message.value))

    for payload in (b"garbage", heartbeat):
        raw = RawMessage("t.tributary.models.commands", 0, 7, b"k", payload, [])
        assert asyncio.run(router.process(raw, handle)) is False
    assert [topic for topic, _, _ in publisher.sent] == ["t.tributary.dlq.inference-workers-high"] * 2
    assert publisher.sent[0][1] == b"garbage"
    assert dict(publisher.sent[1][2])["dlq-error-class"] == b"TypeError"
