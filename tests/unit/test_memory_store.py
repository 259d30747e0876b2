"""The shared FleetStore suite against the in-memory store."""

from __future__ import annotations

import pytest

from core.fleet.memory_store import InMemoryFleetStore
from core.fleet.store import FleetStore
from tests.store_contract import *  # noqa: F403

pytestmark = pytest.mark.unit


@pytest.fixture
def store() -> FleetStore:
    return InMemoryFleetStore()
