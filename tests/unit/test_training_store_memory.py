"""The shared TrainingJobStore suite against the in-memory store."""

from __future__ import annotations

import pytest

from core.training.store import InMemoryTrainingJobStore, TrainingJobStore
from tests.training_store_contract import *  # noqa: F403

pytestmark = pytest.mark.unit


@pytest.fixture
def training_store() -> TrainingJobStore:
    return InMemoryTrainingJobStore()
