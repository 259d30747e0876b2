"""The whole system for end-to-end tests: topology, schema, the API and every processor as real
processes on the session's real servers, with this session's topic prefix and keyspace."""

from __future__ import annotations

import os
import random
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from cli.services import system_services
from cli.supervisor import Supervisor
from consumers.inference.builtin import BuiltinModels
from core.api_keys import new_api_key
from core.cassandra.migrate import migrate
from core.cassandra.session import connect
from core.serving.builtin_specs import MINILM_ID
from settings import Settings
from topology.admin import apply


@dataclass(frozen=True)
class RunningSystem:
    settings: Settings
    base_url: str
    admin_key: str
    log_dir: Path
    supervisor: Supervisor

    @property
    def grpc_target(self) -> str:
        """host:port of the ingress's gRPC server (seed 001 §3)."""
        return f"127.0.0.1:{self.settings.grpc_port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {
        "TRIBUTARY_TOPIC_PREFIX": settings.topic_prefix,
        "TRIBUTARY_CASSANDRA_KEYSPACE": settings.cassandra_keyspace,
        "TRIBUTARY_API_PORT": str(settings.api_port),
        "TRIBUTARY_GRPC_PORT": str(settings.grpc_port),
        "TRIBUTARY_ADMIN_API_KEY": settings.admin_api_key.get_secret_value(),
        "TRIBUTARY_HEARTBEAT_INTERVAL_S": str(settings.heartbeat_interval_s),
        "TRIBUTARY_STRAGGLER_GRACE_S": str(settings.straggler_grace_s),
        "TRIBUTARY_AGGREGATION_LEASE_S": str(settings.aggregation_lease_s),
        "TRIBUTARY_AGGREGATION_RETRY_S": str(settings.aggregation_retry_s),
        "TRIBUTARY_AGGREGATION_MAX_ATTEMPTS": str(settings.aggregation_max_attempts),
        "TRIBUTARY_FRESHNESS_SWEEP_S": str(settings.freshness_sweep_s),
        "TRIBUTARY_RATE_LIMIT_PER_MINUTE": str(settings.rate_limit_per_minute),
        # The tests stand in for a load balancer on loopback: their X-Forwarded-For is believed.
        "TRIBUTARY_TRUSTED_PROXIES": "127.0.0.1",
        "TRIBUTARY_MAX_UPLOAD_BYTES": str(settings.max_upload_bytes),
        "TRIBUTARY_LEARNING_GRAPH_HMAC_KEY": settings.learning_graph_hmac_key.get_secret_value(),
        "TRIBUTARY_LEARNING_GRAPH_AES_KEY": settings.learning_graph_aes_key.get_secret_value(),
        "TRIBUTARY_MODEL_FETCH_ALLOW_HTTP": str(settings.model_fetch_allow_http).lower(),
        "TRIBUTARY_MODEL_FETCH_ALLOWED_NETWORKS": settings.model_fetch_allowed_networks,
        "TRIBUTARY_MODEL_SOURCE_FILE_ROOT": settings.model_source_file_root,
        "TRIBUTARY_DATASET_MAX_BYTES": str(settings.dataset_max_bytes),
    }
    return {**env, **extra}


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


@pytest.fixture(scope="session")
def system(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    e2e = settings.model_copy(update={
        "api_port": free_port(), "grpc_port": free_port(), "admin_api_key": SecretStr(new_api_key()),
        "heartbeat_interval_s": 5.0,
        "straggler_grace_s": 3.0, "freshness_sweep_s": 1.0, "rate_limit_per_minute": 100,
        # Short enough that the tests see an interrupted aggregation resumed, long enough for an
        # outage of a few seconds not to use up the attempts.
        "aggregation_lease_s": 5.0, "aggregation_retry_s": 3.0, "aggregation_max_attempts": 10,
        "max_upload_bytes": 2 * 1024 * 1024,
        # Keys, so seed 002's learning-graph submission is wired as in production (threshold unchanged).
        "learning_graph_hmac_key": SecretStr(secrets.token_hex(16)),
        "learning_graph_aes_key": SecretStr(secrets.token_hex(32)),
        # Onboarding tests serve model files from a server on loopback and from a directory: both are
        # refused by default, so this system allows exactly 127.0.0.1, plain http and that directory.
        "model_fetch_allow_http": True, "model_fetch_allowed_networks": "127.0.0.1",
        "model_source_file_root": str(tmp_path_factory.mktemp("model-sources").resolve()),
        # Small, so the dataset tests can show the 413 without sending megabytes.
        "dataset_max_bytes": 64 * 1024,
    })
    session = connect(e2e)
    migrate(session, e2e)
    session.cluster.shutdown()
    apply(e2e)
    log_dir = tmp_path_factory.mktemp("e2e-logs")
    supervisor = Supervisor(system_services(e2e, settings_env(e2e)), log_dir, stop_timeout_s=20,
                            progress=lambda line: print(f"[e2e] {line}"))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    supervisor.start()
    base_url = f"http://127.0.0.1:{e2e.api_port}"
    try:
        wait_http(f"{base_url}/api/v1/health")
        yield RunningSystem(e2e, base_url, e2e.admin_api_key.get_secret_value(), log_dir, supervisor)
    finally:
        supervisor.stop()


@pytest.fixture(scope="module")
def reference(system: RunningSystem) -> Callable[[list[str]], np.ndarray]:
    """The built-in embedding model run in this process on ONNX Runtime, no Kafka involved."""
    runtime = BuiltinModels(system.settings.data_dir / "models" / "builtin").create(MINILM_ID)
    runtime.load()

    def embed(texts: list[str]) -> np.ndarray:
        (output,) = runtime.infer_batch([{"text": texts}])
        return np.asarray(output["embeddings"], dtype=np.float32)

    return embed


def client_address() -> dict[str, str]:
    """An X-Forwarded-For of its own (TEST-NET-3) for a registration: registrations are limited per
    client address, and every test here comes from 127.0.0.1, so without it the session's tests
    would share one per-minute budget and fail by timing."""
    return {"X-Forwarded-For": f"203.0.113.{random.randint(1, 254)}"}


@pytest.fixture
def caller(system: RunningSystem) -> dict[str, str]:
    """A fresh device key per test: each key has its own rate-limit window."""
    device_id = f"{system.settings.topic_prefix}infer-{uuid.uuid4().hex[:8]}"
    response = httpx.post(f"{system.base_url}/api/v1/devices/register", json={"device_id": device_id},
                          headers=client_address(), timeout=30)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['api_key']}"}


@contextmanager
def ingress_replica(system: RunningSystem, name: str, grpc_port: int | None = None, **env: str) -> Iterator[str]:
    """Another ingress process on the session's servers (own ports, ``env`` on top); yields its URL."""
    replica: Settings = system.settings.model_copy(update={"api_port": free_port(),
                                                           "grpc_port": grpc_port or free_port()})
    api = [s for s in system_services(replica, settings_env(replica, **env)) if s.name == "api"]
    supervisor = Supervisor(api, system.log_dir / name, progress=lambda _: None)
    supervisor.start()
    url = f"http://127.0.0.1:{replica.api_port}"
    try:
        wait_http(f"{url}/api/v1/health", timeout_s=90)  # answers once it owns a responses partition
        yield url
    finally:
        supervisor.stop()


@pytest.fixture
def second_replica(system: RunningSystem) -> Iterator[str]:
    with ingress_replica(system, "replica-2") as url:
        yield url
