"""The Python SDK's serving client (seed 001 §6.1, issue 17 item 6) against the running system:
sync, image upload and async inference with typed results, job status, result and cancel, model
registration, download and ``wait_ready``, load/unload, and streaming over gRPC."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from consumers.inference.builtin import BuiltinModels
from core.serving.builtin_specs import EFFICIENTNET_ID, MINILM_ID
from sdk.client import ApiError, InferenceResult, JobStatus, RetryPolicy, TributaryClient
from tests.e2e.conftest import RunningSystem, client_address
from tests.e2e.serving import cosine
from tests.onnx_models import expected, linear_onnx

pytestmark = pytest.mark.e2e
RETRY = RetryPolicy(attempts=8, max_wait_s=10.0, backoff_s=0.5)


@pytest.fixture
def device(system: RunningSystem) -> TributaryClient:
    """A client holding a fresh device key (its own rate-limit window) and the gRPC target."""
    # Registrations are limited per client address: an address of its own (the tests are a trusted proxy).
    api = TributaryClient(system.base_url, timeout_s=120, retry=RETRY, grpc_target=system.grpc_target,
                          headers=client_address())
    api.register_device(f"{system.settings.topic_prefix}sdk-{uuid.uuid4().hex[:8]}")
    return api


@pytest.fixture
def operator(system: RunningSystem) -> TributaryClient:
    return TributaryClient(system.base_url, system.admin_key, timeout_s=120, retry=RETRY)


def png(seed: int, side: int = 96) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def test_infer_and_infer_images_return_typed_results_equal_to_in_process(
        system: RunningSystem, device: TributaryClient, reference: Callable[[list[str]], np.ndarray]) -> None:
    result = device.infer(MINILM_ID, {"text": "the SDK speaks seed 001"}, {"normalize": True}, priority="high")
    assert isinstance(result, InferenceResult) and result.model_id == MINILM_ID
    assert result.embedding is not None and cosine(result.embedding, reference(["the SDK speaks seed 001"])[0]) > 0.999
    assert result.metadata["batch_size"] >= 1

    images = [png(1), png(2)]
    runtime = BuiltinModels(system.settings.data_dir / "models" / "builtin").create(EFFICIENTNET_ID)
    runtime.load()
    (local,) = runtime.infer_batch([{"images": [base64.b64encode(i).decode() for i in images]}])
    uploaded = device.infer_images(EFFICIENTNET_ID, images, priority="high")
    assert uploaded.embeddings is not None
    np.testing.assert_allclose(np.asarray(uploaded.embeddings), np.asarray(local["embeddings"]), rtol=1e-4, atol=1e-5)
    single = device.infer_images(EFFICIENTNET_ID, images[0], priority="high")
    assert single.embedding is not None and cosine(single.embedding, local["embeddings"][0]) > 0.9999

    with pytest.raises(ApiError) as refused:
        device.infer(MINILM_ID, {"texts": "not a list"})
    assert refused.value.status_code == 400 and refused.value.code == "INVALID_INPUT"


def test_async_job_wait_result_and_cancel(device: TributaryClient) -> None:
    reference = device.infer_async(MINILM_ID, {"texts": ["queued", "for later"]}, priority="low", timeout_seconds=120)
    assert reference.status == "queued" and reference.status_url.endswith(reference.job_id)
    status = device.wait_job(reference.job_id, timeout_s=120)
    assert isinstance(status, JobStatus) and status.status == "completed" and status.done
    result = device.result(reference.job_id)
    assert result.embeddings is not None and len(result.embeddings) == 2

    cancelled = device.cancel(reference.job_id)  # idempotent: already completed, nothing to cancel
    assert cancelled.status == "completed" and cancelled.message
    assert device.job(reference.job_id).status == "completed"


def test_register_then_download_wait_ready_load_infer_unload(operator: TributaryClient,
                                                             device: TributaryClient) -> None:
    name = f"sdk-e2e/{uuid.uuid4().hex[:8]}"
    registered = operator.register_model(name, "img2embed", "v1", description="registered by the SDK e2e")
    assert registered.model_id == name and registered.status == "registered" and registered.task_type == "img2embed"
    assert operator.model(name).status == "registered"

    # A model with a stored ONNX file: download asks the workers to fetch it, wait_ready polls until
    # it is ready; load retries 503 (Retry-After) through tenacity until a worker holds it.
    catalog_id = operator.create_model(description="sdk e2e linear")["id"]
    operator.upload_version(catalog_id, linear_onnx(), "linear.onnx", fmt="onnx")
    accepted = operator.download(catalog_id)
    assert accepted["model_id"] == catalog_id and accepted["status"] == "downloading"
    assert operator.wait_ready(catalog_id, timeout_s=120).status == "ready"
    loaded = operator.load(catalog_id)
    assert loaded.state == "loaded" and loaded.workers
    rows = [[1.0, 2.0, 3.0]]
    answer = device.infer(catalog_id, {"inputs": rows}, priority="high")
    np.testing.assert_allclose(answer.output_data["outputs"], expected(rows), rtol=1e-5)
    unloaded = operator.unload(catalog_id)
    assert unloaded.state == "unloaded" and unloaded.workers


def test_infer_stream_over_grpc_answers_every_request_with_its_id(
        device: TributaryClient, reference: Callable[[list[str]], np.ndarray]) -> None:
    texts = [f"streamed sentence number {i}" for i in range(20)]
    inputs: list[dict[str, object]] = [{"text": t} for t in texts]
    inputs.append({"texts": "not a list"})  # one bad request: answered with its error, the stream goes on
    answers = {a.request_id: a for a in device.infer_stream(MINILM_ID, inputs, priority="high")}
    assert set(answers) == {str(i) for i in range(len(inputs))}
    expected_vectors = reference(texts)
    for i in range(len(texts)):
        answer = answers[str(i)]
        assert answer.error is None and answer.embedding is not None
        assert cosine(answer.embedding, expected_vectors[i]) > 0.999
    bad = answers[str(len(texts))]
    assert bad.error is not None and bad.error["code"] in ("INVALID_INPUT", "VALIDATION_ERROR")


def test_a_wrong_key_is_not_retried(system: RunningSystem) -> None:
    api = TributaryClient(system.base_url, "sk_live_" + "0" * 40, retry=RETRY)
    with pytest.raises(ApiError) as refused:
        api.infer(MINILM_ID, {"text": "x"})
    assert refused.value.status_code == 401
    with pytest.raises(httpx.ConnectError):  # nothing listens there: retried, then raised
        TributaryClient("http://127.0.0.1:9", retry=RetryPolicy(attempts=2, backoff_s=0.01)).job(str(uuid.uuid4()))
