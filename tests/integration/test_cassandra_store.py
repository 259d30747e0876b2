"""The shared FleetStore suite against the real Cassandra."""

from __future__ import annotations

import pytest
from cassandra.cluster import Session

from core.fleet.cassandra_store import CassandraFleetStore
from core.fleet.store import FleetStore
from tests.store_contract import *  # noqa: F403

pytestmark = pytest.mark.integration


@pytest.fixture
def store(session: Session) -> FleetStore:
    return CassandraFleetStore(session)


def test_a_slot_left_on_a_finished_round_is_taken_over(session: Session) -> None:
    """Finishing a round writes its status, then frees the slot: a start between the two writes
    (or after a crash between them) must not be refused by a round that is already over."""
    from core.fleet.models import RoundStatus
    from tests.store_contract import finish_active, make_round

    store = CassandraFleetStore(session)
    finish_active(store)
    finished = make_round()
    assert store.create_active_round(finished) is None
    session.execute("UPDATE rounds SET status = 'completed' WHERE round_id = %s", [finished.id])  # slot kept
    assert store.active_round_id() == finished.id

    following = make_round()
    assert store.create_active_round(following) is None
    assert store.active_round_id() == following.id
    assert following.round_number == finished.round_number + 1
    blocked = store.create_active_round(make_round())
    assert blocked is not None and blocked.id == following.id and blocked.status is RoundStatus.PENDING
    finish_active(store)
