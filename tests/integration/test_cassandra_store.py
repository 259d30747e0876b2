"""The shared FleetStore suite against the real Cassandra."""

from __future__ import annotations

import uuid

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


def test_a_round_from_before_migration_0007_takes_seats_and_resumes(session: Session) -> None:
    """Rounds written before 0007 have no selected_count and no aggregation_attempts (null): the CAS
    operations read null as zero instead of never applying."""
    from datetime import UTC, datetime

    from core.fleet.models import RoundStatus, Seat
    from tests.store_contract import finish_active, make_round

    store = CassandraFleetStore(session)
    finish_active(store)
    old = make_round(target_devices=2)
    assert store.create_active_round(old) is None
    store.transition_round(old.id, RoundStatus.PENDING, RoundStatus.ACTIVE, selected_devices=["a"])
    # The old state is written with LWTs too: a plain write can lose to the Paxos write before it
    # (its timestamp can be older), which left the round 'active' now and then.
    assert session.execute("UPDATE rounds SET selected_count = null WHERE round_id = %s IF status = 'active'",
                           [old.id]).one().applied
    assert store.select_device(old.id, "b") is Seat.TAKEN
    assert store.select_device(old.id, "c") is Seat.FULL
    stored = store.get_round(old.id)
    assert stored is not None and stored.selected_devices == ["a", "b"]

    assert session.execute("UPDATE rounds SET status = 'aggregating', aggregation_attempts = null "
                           "WHERE round_id = %s IF status = 'active'", [old.id]).one().applied
    lease = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    assert store.claim_aggregation(old.id, 0, lease) is True
    resumed = store.get_round(old.id)
    assert resumed is not None and (resumed.aggregation_attempts, resumed.aggregation_lease_until) == (1, lease)
    finish_active(store)


def test_rate_limit_rows_expire_by_themselves(store: FleetStore) -> None:
    """Counting requests leaves nothing behind for ever: the table's rows carry a TTL."""
    assert isinstance(store, CassandraFleetStore)
    store.hit(f"ttl-{uuid.uuid4().hex[:6]}", 60, 5)
    keyspace = store.session.keyspace
    row = store.session.execute("SELECT default_time_to_live FROM system_schema.tables "
                                "WHERE keyspace_name = %s AND table_name = 'rate_limit_leases'", (keyspace,)).one()
    assert row is not None and 60 < row.default_time_to_live <= 600
    tables = {r.table_name for r in store.session.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,))}
    assert "rate_limits" not in tables  # the counter table that grew for ever is gone
