"""The real FastAPI app wired with in-memory stores and a recording event sink: what the unit tests
drive the ingress through, instead of each module building the same context by hand."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient

from api.app import create_app
from api.context import AppContext
from core.artifacts import MemoryArtifactStore
from core.fleet.memory_store import InMemoryFleetStore
from settings import Settings
from tests.recording_sink import RecordingSink


def memory_context(settings: Settings, **wiring: Any) -> AppContext:
    """``wiring``: further ``AppContext`` fields, e.g. ``probes``."""
    return AppContext(settings=settings, store=InMemoryFleetStore(), artifacts=MemoryArtifactStore(),
                      events=RecordingSink(), **wiring)


@contextmanager
def app_client(ctx: AppContext) -> Iterator[TestClient]:
    with TestClient(create_app(ctx.settings, ctx)) as client:
        yield client
