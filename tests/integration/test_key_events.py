"""Key events on the real broker: a broadcast returns only after every live replica's group applied
it; a stopped replica is not waited for; a live one that does not apply it makes the broadcast
unconfirmed within the bound. Key management through the Cassandra store and the real audit topic."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from cassandra.cluster import Session
from confluent_kafka import Consumer
from pydantic import SecretStr

from core.api_keys import hash_api_key, key_id, new_api_key
from core.auth import Authenticator, KeyEvent
from core.fleet.cassandra_store import CassandraFleetStore
from core.fleet.models import ApiKeyRecord, SubjectType
from core.keys import KeyService
from messaging.key_events import KafkaKeyEventBus, KeyEventConsumer, group_prefix
from producers.events import KafkaEventSink
from producers.publisher import Publisher
from schemas.clock import utcnow
from schemas.codec import Codec
from settings import Settings
from topology.admin import apply
from topology.topics import AUDIT_EVENTS

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

ADMIN_KEY = new_api_key()


@pytest.fixture(scope="module")
def keyed(settings: Settings) -> Settings:
    configured = settings.model_copy(update={"admin_api_key": SecretStr(ADMIN_KEY), "key_propagation_timeout_s": 4.0})
    apply(configured)
    return configured


class Replica:
    """What one ingress replica holds for keys: a store, an authenticator and its key-events consumer."""

    def __init__(self, settings: Settings, session: Session) -> None:
        self.store = CassandraFleetStore(session)
        self.authenticator = Authenticator(self.store, settings)
        self.consumer = KeyEventConsumer(settings, self.authenticator)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def wired(keyed: Settings, session: Session) -> AsyncIterator[tuple[Publisher, KafkaEventSink, KafkaKeyEventBus]]:
    publisher = Publisher(keyed)
    sink = KafkaEventSink(keyed, publisher, service="keys-test")
    yield publisher, sink, KafkaKeyEventBus(keyed, sink)
    publisher.close()


def stored_key(store: CassandraFleetStore) -> tuple[str, ApiKeyRecord]:
    secret = new_api_key()
    record = ApiKeyRecord(hash_api_key(secret), key_id(secret), SubjectType.SERVICE, f"svc-{uuid.uuid4().hex[:6]}",
                          utcnow())
    store.put_api_key(record)
    return secret, record


async def test_a_revocation_is_applied_by_every_live_replica_before_the_broadcast_returns(
        keyed: Settings, session: Session, wired: tuple[Publisher, KafkaEventSink, KafkaKeyEventBus]) -> None:
    _, _, bus = wired
    a, b = Replica(keyed, session), Replica(keyed, session)
    await a.consumer.start()
    await b.consumer.start()
    try:
        secret, record = stored_key(a.store)
        for replica in (a, b):
            replica.authenticator.lookup(secret)
            assert replica.authenticator.try_authenticate(secret) is not None  # cached
        a.store.revoke_api_key(record.key_hash, utcnow())
        propagation = await bus.broadcast([KeyEvent(record.key_id, "revoked", SubjectType.SERVICE,
                                                    record.subject_id, utcnow())])
        assert propagation.confirmed and propagation.replicas >= 2
        for replica in (a, b):  # no longer cached: the next use reads the store, which says revoked
            assert replica.authenticator.try_authenticate(secret) is None
    finally:
        await a.consumer.close()
        await b.consumer.close()
    assert a.consumer.group_id not in bus.live_groups()  # a stopped replica is not waited for


async def test_a_live_replica_that_does_not_apply_it_leaves_the_broadcast_unconfirmed(
        keyed: Settings, session: Session, wired: tuple[Publisher, KafkaEventSink, KafkaKeyEventBus]) -> None:
    _, _, bus = wired
    stuck_group = group_prefix(keyed) + "stuck-" + uuid.uuid4().hex[:6]
    stuck = Consumer({"bootstrap.servers": keyed.kafka_bootstrap_servers, "group.id": stuck_group,
                      "enable.auto.commit": False, "session.timeout.ms": 10_000})
    stuck.subscribe([bus.settings.prefixed("tributary.keys.events")])
    deadline = time.monotonic() + 20
    while not stuck.assignment() and time.monotonic() < deadline:
        stuck.poll(0.2)
    try:
        started = time.monotonic()
        propagation = await bus.broadcast([KeyEvent("key_" + "0" * 16, "revoked", SubjectType.SERVICE, "svc",
                                                    utcnow())])
        waited = time.monotonic() - started
        assert not propagation.confirmed
        assert propagation.pending == ("stuck-" + stuck_group.rsplit("stuck-", 1)[1],)
        assert keyed.key_propagation_timeout_s <= waited < keyed.key_propagation_timeout_s + 5
    finally:
        stuck.close()
        bus.admin.delete_consumer_groups([stuck_group], request_timeout=10)[stuck_group].result()


def audit_records(settings: Settings, chain_prefix: str, want: int) -> list[dict[str, Any]]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": f"audit-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([AUDIT_EVENTS.full_name(settings)])
    codec, records = Codec(), list[dict[str, Any]]()
    deadline = time.monotonic() + 30
    while len(records) < want and time.monotonic() < deadline:
        message = consumer.poll(0.3)
        if message is not None and not message.error():
            record = codec.decode(message.value()).record
            if record["chain_id"].startswith(chain_prefix):
                records.append(record)
    consumer.close()
    return records


async def test_key_management_lands_on_the_audit_topic_with_the_actor_s_key_id_and_never_a_key(
        keyed: Settings, session: Session) -> None:
    publisher = Publisher(keyed)
    service_name = f"keys-audit-{uuid.uuid4().hex[:6]}"
    sink = KafkaEventSink(keyed, publisher, service=service_name)
    replica = Replica(keyed, session)
    await replica.consumer.start()
    keys = KeyService(keyed, replica.store, sink, replica.authenticator, KafkaKeyEventBus(keyed, sink))
    operator = replica.authenticator.authenticate(ADMIN_KEY)
    try:
        issued = await keys.create(operator, SubjectType.SERVICE, None, "audited", None)
        rotated, _ = await keys.rotate(operator, issued.record.key_id)
        await keys.revoke(operator, rotated.record.key_id)
    finally:
        await replica.consumer.close()
        publisher.close()
    records = audit_records(keyed, f"{service_name}:", 3)
    assert [r["action"] for r in records] == ["key.create", "key.rotate", "key.revoke"]
    assert {r["actor"] for r in records} == {key_id(ADMIN_KEY)}
    assert records[0]["subject"] == f"key/{issued.record.key_id}"
    text = json.dumps(records, default=str)
    assert "sk_live_" not in text and issued.record.key_hash not in text


async def test_keys_with_roles_survive_the_cassandra_store_and_find_by_id(keyed: Settings, session: Session) -> None:
    store = CassandraFleetStore(session)
    secret, record = stored_key(store)
    assert store.find_api_key(record.key_id) == record
    assert record in store.list_api_keys(record.subject_id)
    assert Authenticator(store, keyed).authenticate(secret).subject_type is SubjectType.SERVICE
