"""The shared ResidencyStore suite against the in-memory store (a fake clock for TTLs)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.serving.residency import InMemoryResidencyStore
from tests.residency_contract import *  # noqa: F403
from tests.residency_contract import Fixture

pytestmark = pytest.mark.unit


@pytest.fixture
def residency() -> Fixture:
    now = [datetime(2026, 11, 1, tzinfo=UTC)]

    def wait(seconds: float) -> None:
        now[0] += timedelta(seconds=seconds)

    return InMemoryResidencyStore(clock=lambda: now[0]), wait
