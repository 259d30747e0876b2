"""The shared RolloutStore suite against the in-memory store."""

from __future__ import annotations

import pytest

from core.rollouts.memory_store import InMemoryRolloutStore
from core.rollouts.store import RolloutStore
from tests.rollout_store_contract import *  # noqa: F403

pytestmark = pytest.mark.unit


@pytest.fixture
def rollout_store() -> RolloutStore:
    return InMemoryRolloutStore()
