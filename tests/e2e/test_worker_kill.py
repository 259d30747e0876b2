"""A worker SIGKILLed mid-batch: every accepted request still gets exactly one answer, the right one.

Sync requests and async jobs go to the medium-priority worker group; its only member is killed
while requests are in flight and restarted by the supervisor. Requests it had consumed but not
answered are re-delivered from the last committed offset; replies it had already produced are
duplicates that the ingress drops as late, and a job re-run after the crash completes once.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from schemas.codec import Codec
from settings import Settings
from tests.e2e.conftest import RunningSystem, client_address
from tests.e2e.serving import ENCODED_MINILM, HTTP_TIMEOUT, cosine, messages_in
from topology.topics import INFERENCE_RESPONSES, Priority

pytestmark = pytest.mark.e2e

SYNC_REQUESTS = 60
ASYNC_JOBS = 20
KILL_AFTER = 5  # sync answers seen after the worker resumes, before the kill


def register(system: RunningSystem) -> dict[str, str]:
    device_id = f"{system.settings.topic_prefix}kill-{uuid.uuid4().hex[:8]}"
    response = httpx.post(f"{system.base_url}/api/v1/devices/register", json={"device_id": device_id},
                          headers=client_address(), timeout=30)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['api_key']}"}


def late_replies(system: RunningSystem) -> float:
    """The ingress's count of replies nobody waited for (duplicates after a re-delivery)."""
    metrics = httpx.get(f"{system.base_url}/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("tributary_inference_late_replies_total"))


def duplicate_sync_replies(settings: Settings, since_ms: int) -> int:
    """Sync replies (no job id) in the responses topic since ``since_ms`` beyond the first per
    correlation id: what a re-delivered request made the restarted worker answer twice."""
    codec = Codec()
    seen: Counter[str] = Counter()
    topic = INFERENCE_RESPONSES.full_name(settings)
    for message in messages_in(settings, topic, range(INFERENCE_RESPONSES.partitions)):
        record = codec.decode(message.value()).record
        if record["job_id"] is None and message.timestamp()[1] >= since_ms:
            seen[record["correlation_id"]] += 1
    return sum(count - 1 for count in seen.values())


def test_sigkill_mid_batch_loses_and_duplicates_no_answer(
        system: RunningSystem, reference: Callable[[list[str]], np.ndarray]) -> None:
    name = f"inference-worker-{Priority.MEDIUM.value}"
    sync_caller, job_caller = register(system), register(system)  # each key has its own rate limit
    texts = [f"request {i}: the worker may die while this one is in its batch ({uuid.uuid4().hex[:6]})"
             for i in range(SYNC_REQUESTS)]
    answered = threading.Semaphore(0)

    def call(text: str) -> httpx.Response:
        response = httpx.post(f"{system.base_url}/api/v1/infer/{ENCODED_MINILM}",
                              json={"input_data": {"text": text}, "priority": "medium", "timeout_seconds": 120},
                              headers=sync_caller, timeout=HTTP_TIMEOUT)
        answered.release()
        return response

    # Warm the worker, then pause it (SIGSTOP) while everything is queued, so that when it
    # resumes it holds a full window of requests and the kill lands mid-batch, not after the fact.
    warm = call("warm-up")
    assert warm.status_code == 200, warm.text
    late_before = late_replies(system)
    since_ms = int(time.time() * 1000)
    worker = system.supervisor.running[name].proc
    worker.send_signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(SYNC_REQUESTS) as pool:
            futures = [pool.submit(call, text) for text in texts]
            jobs = []
            for i in range(ASYNC_JOBS):
                job = httpx.post(f"{system.base_url}/api/v1/infer/{ENCODED_MINILM}/async",
                                 json={"input_data": {"text": f"job {i}"}, "priority": "medium",
                                       "timeout_seconds": 300},
                                 headers=job_caller, timeout=HTTP_TIMEOUT)
                assert job.status_code == 202, job.text
                jobs.append((f"job {i}", job.json()["job_id"]))
            time.sleep(1.0)  # the sync requests are published by now
            worker.send_signal(signal.SIGCONT)
            for _ in range(KILL_AFTER + 1):  # +1: the warm-up's release
                assert answered.acquire(timeout=120)
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            killed_at = time.monotonic()
            in_flight = sum(not f.done() for f in futures)
            system.supervisor.check()  # restarts it, as `tributary run` would within a second
            assert system.supervisor.running[name].proc.pid != worker.pid
            responses = [future.result() for future in futures]
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGCONT)
    print(f"\nkill: {in_flight} sync requests unanswered at the kill; "
          f"{len([r for r in responses if r.status_code == 200])}/{SYNC_REQUESTS} answered 200, the last "
          f"{time.monotonic() - killed_at:.1f}s after it; {late_replies(system) - late_before:.0f} duplicate "
          "replies dropped as late")
    assert in_flight > 0  # the kill really landed while requests were in flight
    # Every reply produced twice (answered before the kill, re-run after it) was dropped by the
    # ingress as late, none handed to a caller: the late count grows by exactly the duplicates.
    deadline = time.monotonic() + 30
    duplicates = duplicate_sync_replies(system.settings, since_ms)
    while late_replies(system) - late_before < duplicates and time.monotonic() < deadline:
        time.sleep(0.5)
        duplicates = duplicate_sync_replies(system.settings, since_ms)
    assert late_replies(system) - late_before == duplicates
    failures = [r.text for r in responses if r.status_code != 200]
    assert [r.status_code for r in responses] == [200] * SYNC_REQUESTS, failures
    # Each caller got its own request's answer, not someone else's (nor a duplicate's).
    expected = reference(texts)
    similarities = [cosine(r.json()["output_data"]["embedding"], e) for r, e in zip(responses, expected, strict=True)]
    assert min(similarities) >= 0.999
    # Every job completes exactly once with its own result (read with the operator key: the polls
    # would exhaust the submitting key's rate limit).
    operator = {"Authorization": f"Bearer {system.admin_key}"}
    deadline = time.monotonic() + 180
    for text, job_id in jobs:
        while True:
            status = httpx.get(f"{system.base_url}/api/v1/jobs/{job_id}", headers=operator, timeout=30).json()
            if status["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert status["status"] == "completed", status
        result = httpx.get(f"{system.base_url}/api/v1/jobs/{job_id}/result", headers=operator, timeout=30)
        assert cosine(result.json()["output_data"]["embedding"], reference([text])[0]) >= 0.999
