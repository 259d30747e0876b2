"""A low-priority flood does not delay high-priority requests beyond their deadline.

Each priority is its own topic and consumer group, so a backlog on the low topic never sits in
front of a high request; what they share is the machine's CPU. The flood is produced straight to
the low topic (a load generator, not a REST client: the per-key rate limit would throttle it
first), and the high requests go through REST with a short deadline while the low workers are
busy. The latency ratio against an unloaded run is measured by bench/bench_inference.py, not here.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.e2e.conftest import RunningSystem
from tests.e2e.serving import ENCODED_MINILM, RequestProducer
from topology.groups import inference_group
from topology.lag import topic_lag
from topology.topics import Priority

pytestmark = pytest.mark.e2e

FLOOD = 600
HIGH_REQUESTS = 30
HIGH_TIMEOUT_S = 5
LONG_TEXT = " ".join(["a low-priority request with enough words to keep a core busy for a while"] * 8)


def flood_low(system: RunningSystem, count: int) -> None:
    flood = RequestProducer(system.settings, Priority.LOW, service="e2e-flood")
    for i in range(count):
        flood.send(f"{i} {LONG_TEXT}", timeout_s=600)
    flood.flush()


def low_lag(system: RunningSystem) -> int:
    return sum(row.lag for row in topic_lag(system.settings, inference_group(Priority.LOW).group_id))


def test_low_priority_flood_does_not_push_high_priority_past_its_deadline(
        system: RunningSystem, caller: dict[str, str]) -> None:
    url = f"{system.base_url}/api/v1/infer/{ENCODED_MINILM}"
    with httpx.Client(timeout=httpx.Timeout(30.0)) as http:
        warm = http.post(url, json={"input_data": {"text": "warm"}, "priority": "high"}, headers=caller)
        assert warm.status_code == 200, warm.text
        flood_low(system, FLOOD)
        deadline = time.monotonic() + 30
        while low_lag(system) < FLOOD // 10 and time.monotonic() < deadline:
            time.sleep(0.2)  # wait until the backlog is visible, i.e. the flood is on
        backlog_at_start = low_lag(system)
        timings, statuses = [], []
        for i in range(HIGH_REQUESTS):
            started = time.perf_counter()
            response = http.post(url, json={"input_data": {"text": f"urgent {i} {uuid.uuid4().hex[:6]}"},
                                            "priority": "high", "timeout_seconds": HIGH_TIMEOUT_S}, headers=caller)
            timings.append((time.perf_counter() - started) * 1000)
            statuses.append(response.status_code)
        backlog_at_end = low_lag(system)
    timings.sort()
    print(f"\nhigh priority under a {FLOOD}-request low flood (backlog {backlog_at_start} -> {backlog_at_end}): "
          f"p50 {timings[len(timings) // 2]:.1f} ms, max {timings[-1]:.1f} ms")
    assert backlog_at_start > 0 and backlog_at_end > 0, "the flood must still be queued while high requests run"
    assert statuses == [200] * HIGH_REQUESTS  # none hit its 5 s deadline (408) or failed
    # Leave no backlog for the next test: the low workers drain it.
    drain_deadline = time.monotonic() + 240
    while low_lag(system) > 0 and time.monotonic() < drain_deadline:
        time.sleep(1.0)
    assert low_lag(system) == 0
