"""Async inference end to end on the real broker and Cassandra: REST -> job row -> priority topic ->
worker (claim, run, complete once) -> job row -> REST; cancel of a queued job that is never run."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from core.serving.builtin_specs import MINILM_ID
from tests.e2e.conftest import RunningSystem, client_address
from tests.e2e.serving import ENCODED_MINILM, HTTP_TIMEOUT, cosine, records_until
from topology.groups import inference_group
from topology.lag import topic_lag
from topology.topics import JOB_EVENTS, Priority

pytestmark = pytest.mark.e2e


def submit(system: RunningSystem, headers: dict[str, str], text: str, priority: str = "high",
           **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{system.base_url}/api/v1/infer/{ENCODED_MINILM}/async",
                          json={"input_data": {"text": text}, "priority": priority, **body}, headers=headers,
                          timeout=HTTP_TIMEOUT)
    assert response.status_code == 202, response.text
    reference: dict[str, Any] = response.json()
    return reference


def wait_status(system: RunningSystem, headers: dict[str, str], job_id: str, wanted: set[str],
                timeout_s: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body: dict[str, Any] = httpx.get(f"{system.base_url}/api/v1/jobs/{job_id}", headers=headers,
                                         timeout=30).json()
        if body["status"] in wanted or time.monotonic() > deadline:
            assert body["status"] in wanted, body
            return body
        time.sleep(0.1)


def job_events(system: RunningSystem, job_id: str, until: str, timeout_s: float = 30.0) -> list[str]:
    """The statuses of one job's events on the job events topic, in order, up to ``until``."""
    events = records_until(system.settings, JOB_EVENTS, lambda record: record["job_id"] == job_id,
                           lambda found: until in [e["status"] for e in found], timeout_s)
    return [e["status"] for e in events]


def test_async_job_lifecycle_and_result(system: RunningSystem, caller: dict[str, str],
                                        reference: Callable[[list[str]], np.ndarray]) -> None:
    text = "An async job runs on the high-priority workers and keeps its result in Cassandra."
    job = submit(system, caller, text)
    assert job["status"] == "queued" and job["status_url"] == f"/api/v1/jobs/{job['job_id']}"
    done = wait_status(system, caller, job["job_id"], {"completed", "failed"})
    assert done["status"] == "completed" and done["progress"] == 100 and done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["completed_at"]
    result = httpx.get(f"{system.base_url}/api/v1/jobs/{job['job_id']}/result", headers=caller, timeout=30)
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["model_id"] == MINILM_ID and cosine(body["output_data"]["embedding"], reference([text])[0]) >= 0.999
    assert job_events(system, job["job_id"], until="completed") == ["queued", "running", "completed"]
    # Seed 004 cancel is idempotent on a finished job; seed 001's DELETE says 409.
    cancel = httpx.post(f"{system.base_url}/api/v1/jobs/{job['job_id']}/cancel", headers=caller, timeout=30)
    assert cancel.status_code == 200 and cancel.json()["status"] == "completed"
    delete = httpx.delete(f"{system.base_url}/api/v1/jobs/{job['job_id']}", headers=caller, timeout=30)
    assert delete.status_code == 409 and delete.json()["error_code"] == "JOB_ALREADY_COMPLETED"


def test_a_cancelled_queued_job_is_never_run(system: RunningSystem, caller: dict[str, str]) -> None:
    """The low-priority worker is paused (SIGSTOP) so the job is certainly queued when cancelled."""
    settings = system.settings
    worker = system.supervisor.running[f"inference-worker-{Priority.LOW.value}"].proc
    group_id = inference_group(Priority.LOW).group_id
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        job = submit(system, caller, "cancel me before I run", priority="low")
        not_ready = httpx.get(f"{system.base_url}/api/v1/jobs/{job['job_id']}/result", headers=caller, timeout=30)
        assert not_ready.status_code == 409
        assert not_ready.json()["error_code"] == "JOB_NOT_READY" and not_ready.json()["status"] == "queued"
        cancelled = httpx.post(f"{system.base_url}/api/v1/jobs/{job['job_id']}/cancel", headers=caller, timeout=30)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled" and cancelled.json()["cancelled_at"]
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    # A second job on the same worker proves it is consuming again; then wait until the group has
    # committed past every low-priority request, the cancelled one included.
    follower = submit(system, caller, "served after the cancelled one", priority="low")
    wait_status(system, caller, follower["job_id"], {"completed"})
    deadline = time.monotonic() + 60
    while sum(row.lag for row in topic_lag(settings, group_id)) > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sum(row.lag for row in topic_lag(settings, group_id)) == 0
    final = wait_status(system, caller, job["job_id"], {"cancelled"})
    assert final["started_at"] is None  # never claimed, so never run
    assert job_events(system, job["job_id"], until="cancelled") == ["queued", "cancelled"]
    result = httpx.get(f"{system.base_url}/api/v1/jobs/{job['job_id']}/result", headers=caller, timeout=30)
    assert result.status_code == 409 and result.json()["error_code"] == "JOB_CANCELLED"


def test_job_errors(system: RunningSystem, caller: dict[str, str]) -> None:
    unknown = httpx.post(f"{system.base_url}/api/v1/infer/no%2Fsuch-model/async",
                         json={"input_data": {"text": "x"}}, headers=caller, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "MODEL_NOT_FOUND"
    invalid = httpx.post(f"{system.base_url}/api/v1/infer/{ENCODED_MINILM}/async",
                         json={"input_data": {"text": 42}}, headers=caller, timeout=30)
    assert invalid.status_code == 400 and invalid.json()["validation_errors"]
    missing = httpx.get(f"{system.base_url}/api/v1/jobs/{uuid.uuid4()}", headers=caller, timeout=30)
    assert missing.status_code == 404 and missing.json()["error_code"] == "JOB_NOT_FOUND"
    job = submit(system, caller, "mine")
    other = httpx.post(f"{system.base_url}/api/v1/devices/register", headers=client_address(),
                       json={"device_id": f"{system.settings.topic_prefix}other-{uuid.uuid4().hex[:6]}"}, timeout=30)
    stranger = {"Authorization": f"Bearer {other.json()['api_key']}"}
    foreign = httpx.get(f"{system.base_url}/api/v1/jobs/{job['job_id']}", headers=stranger, timeout=30)
    assert foreign.status_code == 403
    operator = {"Authorization": f"Bearer {system.admin_key}"}
    assert httpx.get(f"{system.base_url}/api/v1/jobs/{job['job_id']}", headers=operator, timeout=30).status_code == 200
