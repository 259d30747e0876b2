"""The shared DatasetStore suite against the in-memory store."""

from __future__ import annotations

import pytest

from core.datasets.store import DatasetStore, InMemoryDatasetStore
from tests.dataset_store_contract import *  # noqa: F403

pytestmark = pytest.mark.unit


@pytest.fixture
def datasets() -> DatasetStore:
    return InMemoryDatasetStore()
