"""Run a set of service processes: start them, restart one that crashes, stop all gracefully.

Used by ``tributary run`` (the whole system locally) and by ``tributary workers``
(N replicas of one consumer group).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServiceSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class _Running:
    spec: ServiceSpec
    proc: subprocess.Popen[bytes]
    restarts: int = 0
    held: bool = False  # stopped on purpose (stop_service): not restarted until start_service


class Supervisor:
    def __init__(
        self,
        specs: list[ServiceSpec],
        log_dir: Path,
        *,
        stop_timeout_s: float = 20.0,
        max_restarts: int = 5,
        progress: Callable[[str], None] = print,
    ) -> None:
        self.specs = specs
        self.log_dir = log_dir
        self.stop_timeout_s = stop_timeout_s
        self.max_restarts = max_restarts
        self.progress = progress
        self.running: dict[str, _Running] = {}
        self._stopping = False

    def _spawn(self, spec: ServiceSpec) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{spec.name}.log", "ab")  # noqa: SIM115 - owned by the child
        return subprocess.Popen(
            spec.argv, env={**os.environ, **spec.env}, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def start(self) -> None:
        for spec in self.specs:
            self.running[spec.name] = _Running(spec, self._spawn(spec))
            self.progress(f"{spec.name}: started (pid {self.running[spec.name].proc.pid})")

    def check(self) -> None:
        """Restart services that exited unexpectedly (bounded, so a crash loop is visible)."""
        for name, run in self.running.items():
            code = run.proc.poll()
            if code is None or self._stopping or run.held:
                continue
            if run.restarts >= self.max_restarts:
                continue
            run.restarts += 1
            self.progress(f"{name}: exited with {code}; restarting ({run.restarts}/{self.max_restarts})")
            run.proc = self._spawn(run.spec)

    def stop_service(self, name: str) -> int:
        """Stop one service gracefully (SIGKILL after the bound) and keep it down; returns its exit code."""
        run = self.running[name]
        run.held = True
        if run.proc.poll() is None:
            _signal(run.proc.pid, signal.SIGTERM)
            try:
                run.proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                _signal(run.proc.pid, signal.SIGKILL)
                run.proc.wait()
        self.progress(f"{name}: stopped ({run.proc.returncode}), held down")
        return run.proc.returncode

    def start_service(self, name: str) -> None:
        """Start a service that ``stop_service`` held down (or that exited) again."""
        run = self.running[name]
        if run.proc.poll() is None:
            raise RuntimeError(f"{name} is running (pid {run.proc.pid})")
        run.proc, run.held = self._spawn(run.spec), False
        self.progress(f"{name}: started (pid {run.proc.pid})")

    def stop(self) -> None:
        """SIGTERM everyone (they finish in-flight work and commit), SIGKILL after the bound."""
        self._stopping = True
        for run in self.running.values():
            if run.proc.poll() is None:
                _signal(run.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for name, run in self.running.items():
            remaining = max(0.0, deadline - time.monotonic())
            try:
                run.proc.wait(remaining)
                self.progress(f"{name}: stopped ({run.proc.returncode})")
            except subprocess.TimeoutExpired:
                _signal(run.proc.pid, signal.SIGKILL)
                run.proc.wait()
                self.progress(f"{name}: killed after {self.stop_timeout_s:.0f}s")

    def run_forever(self, poll_s: float = 1.0) -> None:
        """Start, supervise until SIGINT/SIGTERM, then stop."""
        stop_requested = False

        def request_stop(signum: int, _frame: object) -> None:
            nonlocal stop_requested
            stop_requested = True

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not stop_requested:
                time.sleep(poll_s)
                self.check()
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
