"""The supervisor behind `tributary run` and `tributary workers`: restart on crash, graceful stop."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from cli.services import group_replicas
from cli.supervisor import ServiceSpec, Supervisor

pytestmark = pytest.mark.unit


def test_a_crashed_process_is_restarted_a_bounded_number_of_times(tmp_path: Path) -> None:
    crash = ServiceSpec("crasher", [sys.executable, "-c", "import sys; sys.exit(3)"])
    supervisor = Supervisor([crash], tmp_path, max_restarts=2, progress=lambda _: None)
    supervisor.start()
    for _ in range(4):
        supervisor.running["crasher"].proc.wait(10)
        supervisor.check()
    assert supervisor.running["crasher"].restarts == 2
    supervisor.stop()


def test_stop_sends_sigterm_then_waits(tmp_path: Path) -> None:
    graceful = ServiceSpec("graceful", [sys.executable, "-c", (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('finishing in-flight work', flush=True), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n")])
    supervisor = Supervisor([graceful], tmp_path, stop_timeout_s=10, progress=lambda _: None)
    supervisor.start()
    deadline = time.monotonic() + 10
    while "ready" not in (tmp_path / "graceful.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    supervisor.stop()
    assert supervisor.running["graceful"].proc.returncode == 0  # exited by itself, not killed
    assert time.monotonic() - started < 5
    assert "finishing in-flight work" in (tmp_path / "graceful.log").read_text()


def test_a_service_stopped_on_purpose_stays_down_until_started(tmp_path: Path) -> None:
    sleeper = ServiceSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    supervisor = Supervisor([sleeper], tmp_path, stop_timeout_s=10, progress=lambda _: None)
    supervisor.start()
    first = supervisor.running["sleeper"].proc
    assert supervisor.stop_service("sleeper") == -15  # SIGTERM: the default handler ends it
    supervisor.check()
    assert supervisor.running["sleeper"].proc is first and supervisor.running["sleeper"].restarts == 0
    supervisor.start_service("sleeper")
    assert supervisor.running["sleeper"].proc.poll() is None and supervisor.running["sleeper"].proc is not first
    with pytest.raises(RuntimeError, match="is running"):
        supervisor.start_service("sleeper")
    supervisor.stop()


def test_group_replicas_names_each_member() -> None:
    specs = group_replicas("device-processor", 3)
    assert [s.name for s in specs] == ["device-processor-1", "device-processor-2", "device-processor-3"]
    with pytest.raises(KeyError):
        group_replicas("no-such-group", 1)
