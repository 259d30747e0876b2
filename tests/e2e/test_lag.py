"""After a load, `tributary lag --json` totals reach 0 within a bound: every declared consumer group
has a running member that commits what it processed, so no group keeps lag that only grows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import RunningSystem, client_address, settings_env
from tests.e2e.serving import infer
from topology.groups import GROUPS, Group
from topology.topics import DEVICE_HEARTBEATS

pytestmark = pytest.mark.e2e

DEVICES = 10
HEARTBEATS_EACH = 10  # below the per-key rate limit of the e2e system (100 a minute)
DRAIN_BOUND_S = 60.0


def lag_report(system: RunningSystem) -> dict[str, Any]:
    """What an operator sees: the CLI, run as a process against the session's topics."""
    env = {**os.environ, **settings_env(system.settings)}
    out = subprocess.run([sys.executable, "-m", "cli", "lag", "--json"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def register(system: RunningSystem) -> tuple[str, dict[str, str]]:
    device_id = f"{system.settings.topic_prefix}lag-{uuid.uuid4().hex[:8]}"
    response = httpx.post(f"{system.base_url}/api/v1/devices/register", json={"device_id": device_id},
                          headers=client_address(), timeout=30)
    assert response.status_code == 201, response.text
    return device_id, {"Authorization": f"Bearer {response.json()['api_key']}"}


def heartbeats(system: RunningSystem, device_id: str, auth: dict[str, str]) -> int:
    with httpx.Client(timeout=30) as client:
        for i in range(HEARTBEATS_EACH):
            response = client.put(f"{system.base_url}/api/v1/devices/{device_id}/heartbeat", headers=auth,
                                  json={"status": "active", "metrics": {"battery_level": 100 - i}})
            assert response.status_code == 200, response.text
    return HEARTBEATS_EACH


def test_lag_totals_reach_zero_after_a_burst_of_heartbeats(system: RunningSystem) -> None:
    devices = [register(system) for _ in range(DEVICES)]
    heartbeats_topic = DEVICE_HEARTBEATS.full_name(system.settings)
    before = sum(r["end"] for r in lag_report(system)["partitions"]
                 if r["group"] == Group.DEVICE_PROCESSOR and r["topic"] == heartbeats_topic)
    with ThreadPoolExecutor(DEVICES) as pool:
        sent = sum(pool.map(lambda d: heartbeats(system, *d), devices))
    # a synchronous inference too: a request for a worker group, a reply for the ingress's group
    response = infer(system.base_url, devices[0][1], "lag drains after a load")
    assert response.status_code == 200, response.text

    started = time.monotonic()
    report = lag_report(system)
    while report["total"] != 0 and time.monotonic() - started < DRAIN_BOUND_S:
        time.sleep(1.0)
        report = lag_report(system)
    drained_s = time.monotonic() - started
    print(f"\nlag: {sent} heartbeats + 1 inference; totals 0 after {drained_s:.1f}s")
    assert report["total"] == 0, {g: n for g, n in report["totals"].items() if n}
    assert report["totals"] == {g.group_id: 0 for g in GROUPS}  # every declared group, each drained
    rows = [r for r in report["partitions"] if r["group"] == Group.DEVICE_PROCESSOR and r["topic"] == heartbeats_topic]
    assert sum(r["end"] for r in rows) - before == sent  # the burst went through the group that drained it
    assert all(r["committed"] == r["end"] for r in rows if r["end"])
