"""One isolated run on the local stack for a benchmark: what every bench here sets up first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from core.api_keys import new_api_key
from core.cassandra.migrate import migrate
from core.cassandra.session import connect
from settings import Settings
from tests.e2e.conftest import free_port
from topology.admin import apply


def isolated_settings(name: str, **overrides: Any) -> Settings:
    """Settings with a topic prefix and keyspace of their own (migrated, topics applied), free REST
    and gRPC ports, a fresh operator key and a rate limit no bench reaches; ``overrides`` on top."""
    suffix = uuid.uuid4().hex[:6]
    fields: dict[str, Any] = {
        "topic_prefix": f"{name}{suffix}.", "cassandra_keyspace": f"{name}_{suffix}", "api_port": free_port(),
        "grpc_port": free_port(), "admin_api_key": SecretStr(new_api_key()), "rate_limit_per_minute": 10_000_000,
        **overrides,
    }
    settings = Settings(**fields)
    session = connect(settings)
    try:
        migrate(session, settings)
    finally:
        session.cluster.shutdown()
    apply(settings)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")  # the services' logs arrive as they are written
    return settings


@dataclass(frozen=True)
class TributaryRun:
    url: str  # the ingress
    env: dict[str, str]  # its environment: run `tributary` subcommands against the same system with it
    pid: int  # `tributary run` itself; the services are its children


@contextmanager
def tributary_run(name: str, ready_timeout_s: float = 180.0) -> Iterator[TributaryRun]:
    """The whole system as an operator starts it (`tributary run`) on the local stack, with a topic
    prefix, keyspace and ports of its own; yields once it answers ready, stops it with Ctrl-C's
    SIGINT on exit. Its output goes to ``<data dir>/logs/<name>-<suffix>.log``."""
    data_dir = Settings().data_dir
    suffix = uuid.uuid4().hex[:6]
    api_port = free_port()
    env = {**os.environ, "TRIBUTARY_TOPIC_PREFIX": f"{name}{suffix}.",
           "TRIBUTARY_CASSANDRA_KEYSPACE": f"{name}_{suffix}", "TRIBUTARY_API_PORT": str(api_port),
           "TRIBUTARY_GRPC_PORT": str(free_port()), "TRIBUTARY_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    url = f"http://127.0.0.1:{api_port}"
    with open(data_dir / "logs" / f"{name}-{suffix}.log", "wb") as log:
        run = subprocess.Popen([str(Path(sys.executable).parent / "tributary"), "run"], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + ready_timeout_s
            while True:
                try:
                    if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if run.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"tributary run did not get ready within {ready_timeout_s:.0f} s; see {log.name}")
                time.sleep(1)
            yield TributaryRun(url, env, run.pid)
        finally:
            os.killpg(run.pid, signal.SIGINT)
            try:
                run.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)


@contextmanager
def py_spy(pids: dict[str, int], out_dir: Path | None, label: str) -> Iterator[None]:
    """``py-spy record`` each named process while the block runs: collapsed stacks (flame graph input,
    one ``frame;frame;... count`` line per stack) in ``out_dir/<label>-<name>.txt``, of the thread
    holding the GIL only, in the process and its children (uvicorn workers) (``--gil``: where Python
    code spends CPU; a thread blocked in C, e.g. in a
    Kafka poll, would otherwise look busy); nothing when ``out_dir`` is None.
    ``python -m bench.profile_summary FILE`` reads one."""
    if out_dir is None:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).parent / "py-spy"
    recorders = [subprocess.Popen([str(spy), "record", "--pid", str(pid), "--subprocesses", "--gil", "--format", "raw",
                                   "--rate", "200", "--output", str(out_dir / f"{label}-{name}.txt")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, pid in pids.items()]
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        for recorder in recorders:
            try:
                recorder.wait(30)
            except subprocess.TimeoutExpired:
                recorder.kill()


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores, from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz
