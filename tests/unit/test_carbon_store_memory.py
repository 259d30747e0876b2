"""The shared CarbonStore suite against the in-memory store."""

from __future__ import annotations

import pytest

from core.carbon import CarbonStore, InMemoryCarbonStore
from tests.carbon_store_contract import *  # noqa: F403

pytestmark = pytest.mark.unit


@pytest.fixture
def carbon_store() -> CarbonStore:
    return InMemoryCarbonStore()
