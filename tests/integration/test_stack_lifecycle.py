"""`tributary up; status; down` on a stack of its own leaves no port and no process of ours behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.local_stack import LocalStack, pid_alive, port_open
from settings import Settings

pytestmark = pytest.mark.integration


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True, timeout=240
    )


def _listening_ports_of(pids: set[int]) -> set[int]:
    """Ports any of these processes (or their children) still listen on, from /proc."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    ports = set()
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            ports.add(int(line.split()[3].rsplit(":", 1)[1]))
    return ports


def test_up_status_down_leaves_nothing_behind(tmp_path: Path, base_settings: Settings, stack: LocalStack) -> None:
    # Ports and data dir of their own, so the session's stack keeps running beside this one.
    # The jars are shared (settings.tools_dir): nothing is fetched again.
    data_dir = tmp_path / "stack"
    env = {
        **os.environ,
        "TRIBUTARY_DATA_DIR": str(data_dir),
        "TRIBUTARY_KAFKA_PORT": "19192",
        "TRIBUTARY_CASSANDRA_PORT": "19142",
        "TRIBUTARY_S3_PORT": "18433",
        "TRIBUTARY_KAFKA_BOOTSTRAP": "",
        "TRIBUTARY_CASSANDRA_HOSTS": "",
        "TRIBUTARY_S3_ENDPOINT": "",
    }
    ports = [19192, 19142, 18433]
    assert not any(port_open(p) for p in ports)

    first = _cli(env, "up")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "started: s3, kafka, cassandra" in first.stdout

    second = _cli(env, "up")  # idempotent: starts nothing twice
    assert second.returncode == 0 and "started: nothing" in second.stdout, second.stdout

    status = _cli(env, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {row["name"]: row for row in json.loads(status.stdout)}
    assert set(rows) == {"s3", "kafka", "cassandra"}
    assert all(r["healthy"] and r["managed"] for r in rows.values())
    pids = {int(r["pid"]) for r in rows.values()}
    assert _listening_ports_of(pids) >= set(ports)

    down = _cli(env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(pid_alive(pid) for pid in pids)
    assert _listening_ports_of(pids) == set()
    assert not any(port_open(p) for p in ports)
    # The session stack was not touched.
    assert all(s.healthy for s in stack.status())
    assert _cli(env, "status").returncode == 1


def test_external_endpoints_start_nothing(base_settings: Settings, stack: LocalStack) -> None:
    external = base_settings.model_copy(
        update={
            "kafka_bootstrap": base_settings.kafka_bootstrap_servers,
            "cassandra_hosts": "127.0.0.1",
            "s3_endpoint": base_settings.s3_endpoint_url,
        }
    )
    local = LocalStack(external)
    assert local.up(progress=lambda _: None) == []
    assert all(not s.managed and s.healthy for s in local.status())
    assert local.down(progress=lambda _: None) == []
