"""An unavailable backing service is a 503 for clients and a wait (not a dead letter) for consumers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from cassandra.cluster import NoHostAvailable
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.context import AppContext
from core.api_keys import new_api_key
from core.artifacts import MemoryArtifactStore
from core.errors import is_transient_infrastructure_error
from core.fleet.memory_store import InMemoryFleetStore
from messaging.dead_letter import DeadLetterRouter, RawMessage
from settings import Settings
from tests.recording_sink import RecordingSink

pytestmark = pytest.mark.unit


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, value: bytes, **_: Any) -> None:
        self.sent.append((topic, value))


MESSAGE = RawMessage("t", 0, 7, b"k", b"v", [])


async def test_an_outage_is_waited_out_without_using_attempts_or_dead_lettering() -> None:
    publisher = FakePublisher()
    router = DeadLetterRouter(Settings(max_processing_attempts=2), publisher, "device-processor")  # type: ignore[arg-type]
    calls = 0

    async def handler(_: RawMessage) -> None:
        nonlocal calls
        calls += 1
        if calls <= 4:  # more failures than max_processing_attempts
            raise NoHostAvailable("Unable to connect to any servers", {})

    assert await router.process(MESSAGE, handler, backoff_s=0.001)
    assert calls == 5 and publisher.sent == []


async def test_a_real_failure_still_dead_letters_after_its_attempts() -> None:
    publisher = FakePublisher()
    router = DeadLetterRouter(Settings(max_processing_attempts=2), publisher, "device-processor")  # type: ignore[arg-type]

    async def handler(_: RawMessage) -> None:
        raise RuntimeError("bug")

    assert not await router.process(MESSAGE, handler, backoff_s=0.001)
    assert len(publisher.sent) == 1 and publisher.sent[0][0].endswith("dlq.device-processor")


async def test_a_batch_waits_out_an_outage_then_dead_letters_only_the_messages_it_reports() -> None:
    publisher = FakePublisher()
    router = DeadLetterRouter(Settings(max_processing_attempts=2), publisher, "device-processor")  # type: ignore[arg-type]
    batch = [RawMessage("t", 0, offset, b"k", f"v{offset}".encode(), []) for offset in range(3)]
    calls = 0

    async def handler(messages: Sequence[RawMessage]) -> list[BaseException | None]:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise NoHostAvailable("Unable to connect to any servers", {})
        return [None, LookupError("unknown device"), None]

    async def single(_: RawMessage) -> None:
        raise AssertionError("an outage is no reason to split the batch")

    await router.process_batch(batch, handler, single, backoff_s=0.001)
    assert calls == 4 and publisher.sent == [("tributary.dlq.device-processor", b"v1")]


async def test_a_batch_that_fails_otherwise_is_handled_one_message_at_a_time() -> None:
    publisher = FakePublisher()
    router = DeadLetterRouter(Settings(max_processing_attempts=2), publisher, "device-processor")  # type: ignore[arg-type]
    batch = [RawMessage("t", 0, offset, b"k", f"v{offset}".encode(), []) for offset in range(3)]
    handled: list[bytes] = []

    async def handler(messages: Sequence[RawMessage]) -> list[BaseException | None]:
        raise RuntimeError("one of them breaks the batch")

    async def single(message: RawMessage) -> None:
        if message.value == b"v2":
            raise RuntimeError("this one")
        handled.append(message.value or b"")

    await router.process_batch(batch, handler, single, backoff_s=0.001)
    assert handled == [b"v0", b"v1"] and [value for _, value in publisher.sent] == [b"v2"]


def test_classification() -> None:
    assert is_transient_infrastructure_error(NoHostAvailable("down", {}))
    assert is_transient_infrastructure_error(ConnectionRefusedError())
    assert not is_transient_infrastructure_error(ValueError("bad input"))


class DownStore(InMemoryFleetStore):
    def get_api_key(self, key_hash: str) -> Any:
        raise NoHostAvailable("Unable to connect to any servers", {})


def test_cassandra_down_is_503_with_retry_after_not_500() -> None:
    settings = Settings(admin_api_key=SecretStr(new_api_key()))
    ctx = AppContext(settings=settings, store=DownStore(), artifacts=MemoryArtifactStore(), events=RecordingSink())
    with TestClient(create_app(settings, ctx), raise_server_exceptions=False) as client:
        response = client.get("/api/v1/devices/dev-1", headers={"Authorization": f"Bearer {new_api_key()}"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert response.json()["error_code"] == "SERVICE_UNAVAILABLE"
