"""The SDK without servers (httpx MockTransport): tenacity retries honour Retry-After with jitter and
stay bounded, uploads are re-sent whole, typed serving results, ``wait_ready``'s contract."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from sdk.client import (
    ApiError,
    InferenceResult,
    JobReference,
    ModelFailed,
    RetryPolicy,
    TributaryClient,
)

pytestmark = pytest.mark.unit
POLICY = RetryPolicy(attempts=4, max_wait_s=5.0, backoff_s=0.2)


def client(handler: Callable[[httpx.Request], httpx.Response], sleeps: list[float] | None = None,
           policy: RetryPolicy = POLICY) -> TributaryClient:
    record = sleeps if sleeps is not None else []
    return TributaryClient("http://api.test", "sk_test", retry=policy, sleep=record.append,
                           transport=httpx.MockTransport(handler))


def answers(*responses: httpx.Response) -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.Request]]:
    queue, seen = list(responses), []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return handle, seen


OK = httpx.Response(200, json={"model_id": "m", "output_data": {"embedding": [0.5, 0.25]},
                               "metadata": {"batch_size": 1}})


def test_503_and_429_are_retried_after_the_servers_retry_after_plus_jitter() -> None:
    handle, seen = answers(httpx.Response(503, headers={"Retry-After": "2"}, json={}),
                           httpx.Response(429, headers={"Retry-After": "1"}, json={}), OK)
    sleeps: list[float] = []
    result = client(handle, sleeps).infer("org/model", {"text": "hi"})
    assert isinstance(result, InferenceResult) and result.embedding == [0.5, 0.25]
    assert len(seen) == 3 and seen[0].url.raw_path == b"/api/v1/infer/org%2Fmodel"
    assert seen[0].headers["authorization"] == "Bearer sk_test"
    assert 2.0 <= sleeps[0] <= 2.2 and 1.0 <= sleeps[1] <= 1.2


def test_without_retry_after_the_backoff_grows_with_jitter_and_is_capped() -> None:
    handle, _ = answers(*(httpx.Response(502, json={}) for _ in range(3)), OK)
    sleeps: list[float] = []
    client(handle, sleeps).infer("m", {"text": "hi"})
    assert len(sleeps) == 3 and all(0 < s <= POLICY.max_wait_s for s in sleeps)
    assert sleeps[2] >= 0.8  # 0.2 * 2**2 before jitter


def test_a_long_retry_after_is_bounded_by_max_wait() -> None:
    handle, _ = answers(httpx.Response(503, headers={"Retry-After": "3600"}, json={}), OK)
    sleeps: list[float] = []
    client(handle, sleeps).infer("m", {"text": "hi"})
    assert sleeps == [POLICY.max_wait_s]


def test_when_attempts_run_out_the_last_answer_is_the_api_error() -> None:
    handle, seen = answers(*(httpx.Response(503, json={"error_code": "SERVICE_UNAVAILABLE", "message": "busy"})
                             for _ in range(POLICY.attempts)))
    with pytest.raises(ApiError) as caught:
        client(handle).infer("m", {"text": "hi"})
    assert caught.value.status_code == 503 and caught.value.code == "SERVICE_UNAVAILABLE"
    assert len(seen) == POLICY.attempts


def test_a_4xx_is_not_retried() -> None:
    handle, seen = answers(httpx.Response(400, json={"error_code": "INVALID_INPUT", "message": "no"}))
    with pytest.raises(ApiError) as caught:
        client(handle).infer("m", {"texts": "nope"})
    assert caught.value.code == "INVALID_INPUT" and len(seen) == 1


def test_transport_errors_are_retried_then_raised() -> None:
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(httpx.ConnectError):
        client(handle).job("0f36c1ab-5dc9-104d-b5b2-302efefe6ca2")
    assert len(calls) == POLICY.attempts


def test_an_upload_retried_sends_the_whole_file_again() -> None:
    bodies: list[bytes] = []

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        return httpx.Response(503, headers={"Retry-After": "0"}, json={}) if len(bodies) == 1 else OK

    image = b"\x89PNG" + b"x" * 5000
    result = client(handle).infer_images("efficientnet-lite0", image, priority="high")
    assert result.model_id == "m" and len(bodies) == 2 and all(image in body for body in bodies)


def test_async_job_calls_return_typed_results() -> None:
    job = {"job_id": "j-1", "status": "queued", "created_at": "2026-12-06T21:00:00Z", "status_url": "/api/v1/jobs/j-1"}
    handle, seen = answers(httpx.Response(202, json=job),
                           httpx.Response(200, json={**job, "model_id": "m", "status": "completed", "progress": 100,
                                                     "priority": "low"}),
                           OK,
                           httpx.Response(200, json={"job_id": "j-1", "status": "completed", "cancelled_at": None,
                                                     "message": "Job already completed; nothing to cancel."}))
    api = client(handle)
    reference = api.infer_async("m", {"text": "later"})
    assert reference == JobReference("j-1", "queued", "2026-12-06T21:00:00Z", "/api/v1/jobs/j-1")
    status = api.wait_job("j-1")
    assert status.done and status.progress == 100.0
    assert api.result("j-1").output_data == {"embedding": [0.5, 0.25]}
    assert api.cancel("j-1").message == "Job already completed; nothing to cancel."
    assert [r.url.path for r in seen] == ["/api/v1/infer/m/async", "/api/v1/jobs/j-1", "/api/v1/jobs/j-1/result",
                                          "/api/v1/jobs/j-1/cancel"]


def model(status: str, reason: str | None = None) -> httpx.Response:
    return httpx.Response(200, json={"id": "u-1", "model_id": "org/tiny", "status": status, "task_type": "img2embed",
                                     "version": "v1", "status_reason": reason})


def test_wait_ready_polls_through_downloading_until_ready() -> None:
    handle, seen = answers(httpx.Response(201, json=json.loads(model("registered").content)),
                           httpx.Response(202, json={"model_id": "org/tiny", "status": "downloading", "message": "."}),
                           model("registered"), model("downloading"), model("ready"))
    sleeps: list[float] = []
    api = client(handle, sleeps)
    registered = api.register_model("org/tiny", "img2embed", "v1", source_url="https://example.org/m.onnx")
    assert registered.status == "registered"
    assert json.loads(seen[0].content) == {"model_id": "org/tiny", "task_type": "img2embed", "version": "v1",
                                           "source_url": "https://example.org/m.onnx"}
    assert api.download("org/tiny")["status"] == "downloading"
    ready = api.wait_ready("org/tiny", poll_s=0.5)
    assert ready.status == "ready" and sleeps == [0.5, 0.5]
    assert seen[1].url.raw_path == b"/api/v1/models/org%2Ftiny/download"


def test_wait_ready_raises_the_failure_reason() -> None:
    handle, _ = answers(model("downloading"), model("failed", "sha256 mismatch"))
    with pytest.raises(ModelFailed, match="sha256 mismatch") as caught:
        client(handle).wait_ready("org/tiny")
    assert caught.value.reason == "sha256 mismatch"


def test_wait_ready_gives_up_after_its_timeout() -> None:
    api = TributaryClient("http://api.test", transport=httpx.MockTransport(lambda r: model("downloading")))
    with pytest.raises(TimeoutError, match="not ready"):
        api.wait_ready("org/tiny", timeout_s=0.2, poll_s=0.05)


def test_load_and_unload_are_typed() -> None:
    handle, seen = answers(httpx.Response(200, json={"model_id": "m", "state": "loaded", "workers": ["w-1"]}),
                           httpx.Response(200, json={"model_id": "m", "state": "unloaded", "workers": ["w-1"],
                                                     "unloaded_at": "2026-12-06T21:00:00Z"}))
    api = client(handle)
    assert api.load("m").state == "loaded" and api.unload("m").workers == ["w-1"]
    assert [r.url.path for r in seen] == ["/api/v1/models/m/load", "/api/v1/models/m/unload"]
