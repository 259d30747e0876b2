"""Settings are typed, read from TRIBUTARY_* variables, and every one is documented in the README."""

from __future__ import annotations

import pytest

from settings import REPO_ROOT, Settings

pytestmark = pytest.mark.unit


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`TRIBUTARY_{name.upper()}`" not in readme]
    assert missing == [], f"settings missing from the README table: {missing}"


def test_settings_read_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIBUTARY_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("TRIBUTARY_CASSANDRA_HOSTS", "c1, c2")
    monkeypatch.setenv("TRIBUTARY_TOPIC_PREFIX", "staging.")
    s = Settings()
    assert s.kafka_bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert s.cassandra_contact_points == ["c1", "c2"]
    assert s.prefixed("audit.events") == "staging.audit.events"


def test_local_defaults_use_loopback() -> None:
    s = Settings(_env_file=None)
    assert s.kafka_bootstrap_servers == f"127.0.0.1:{s.kafka_port}"
    assert s.cassandra_contact_points == ["127.0.0.1"]
    assert s.s3_endpoint_url == f"http://127.0.0.1:{s.s3_port}"


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIBUTARY_KAFKA_HEAP_MB", "lots")
    with pytest.raises(ValueError, match="kafka_heap_mb"):
        Settings()


def test_onnx_runtime_threads_default_to_half_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("TRIBUTARY_INFERENCE_INTRA_OP_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    assert Settings(_env_file=None).inference_intra_op_threads == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    assert Settings(_env_file=None).inference_intra_op_threads == 1
    monkeypatch.setenv("TRIBUTARY_INFERENCE_INTRA_OP_THREADS", "3")
    assert Settings(_env_file=None).inference_intra_op_threads == 3
