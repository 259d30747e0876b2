"""Each real server of the local stack is used for real: broker, Cassandra (LWT) and S3."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator

import pytest
from cassandra.cluster import Session
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from core.artifacts import ArtifactNotFound, S3ArtifactStore
from core.cassandra.migrate import current_version, load_migrations, migrate
from core.cassandra.session import connect
from settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cql(settings: Settings) -> Iterator[Session]:
    session = connect(settings)
    migrate(session, settings)
    yield session
    session.execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra_keyspace}")
    session.cluster.shutdown()


def test_message_round_trips_through_broker_with_consumer_group(settings: Settings) -> None:
    topic = settings.prefixed("roundtrip")
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result()
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "enable.idempotence": True})
    sent = {f"key-{i}": os.urandom(16).hex() for i in range(30)}
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value, headers=[("origin", b"test")])
    assert producer.flush(10) == 0

    group = settings.prefixed("roundtrip-group")
    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": group,
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "session.timeout.ms": settings.session_timeout_ms, "fetch.wait.max.ms": settings.fetch_max_wait_ms,
    })
    consumer.subscribe([topic])
    received: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while len(received) < len(sent) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        received[(msg.key() or b"").decode()] = (msg.value() or b"").decode()
        assert dict(msg.headers() or [])["origin"] == b"test"
    consumer.commit(asynchronous=False)
    consumer.close()
    assert received == sent

    # The group's committed offsets cover every message: a restarted member reads nothing new.
    again = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": group,
        "auto.offset.reset": "earliest", "session.timeout.ms": settings.session_timeout_ms,
    })
    again.subscribe([topic])
    leftovers = [m for m in (again.poll(0.5) for _ in range(12)) if m is not None and not m.error()]
    again.close()
    assert leftovers == []


def test_cassandra_lwt_conflict_is_detected(cql: Session) -> None:
    device_id = f"dev-{uuid.uuid4().hex[:8]}"
    insert = "INSERT INTO devices (device_id, platform) VALUES (%s, %s) IF NOT EXISTS"
    first = cql.execute(insert, (device_id, "ios")).one()
    second = cql.execute(insert, (device_id, "android")).one()
    assert first.applied is True
    assert second.applied is False
    assert second.platform == "ios"  # the winner's row comes back with the conflict

    # Compare-and-set: only the transition from the expected state applies.
    cql.execute("INSERT INTO rounds (round_id, status) VALUES (%s, 'active')", (device_id,))
    cas = "UPDATE rounds SET status = %s WHERE round_id = %s IF status = %s"
    assert cql.execute(cas, ("aggregating", device_id, "active")).one().applied is True
    lost = cql.execute(cas, ("failed", device_id, "active")).one()
    assert lost.applied is False and lost.status == "aggregating"


def test_migrate_twice_is_a_no_op(cql: Session, settings: Settings) -> None:
    assert migrate(cql, settings) == []
    assert current_version(cql, settings) == max(m.version for m in load_migrations())


def test_object_round_trips_through_s3_with_sha256(settings: Settings) -> None:
    store = S3ArtifactStore(settings)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    key = f"tests/{uuid.uuid4()}.bin"
    stored = store.put(key, payload)
    assert stored.sha256 == hashlib.sha256(payload).hexdigest()
    assert store.head(key).sha256 == stored.sha256
    assert store.head(key).size == len(payload)
    back = store.get(key)
    assert hashlib.sha256(back).hexdigest() == stored.sha256
    store.delete(key)
    with pytest.raises(ArtifactNotFound):
        store.head(key)
