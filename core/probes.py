"""Health probes of the real components (Cassandra, Kafka, S3, consumer groups), for core/health.py."""

from __future__ import annotations

from typing import Any, Protocol

from cassandra.cluster import Session
from confluent_kafka.admin import AdminClient

from core.artifacts import S3ArtifactStore
from core.health import Probe, ProbeResult, degraded
from settings import Settings
from topology.groups import GROUPS, Group


class ProducerState(Protocol):
    """What the Kafka probe reads from the process's producer (``producers.publisher.Publisher``)."""

    @property
    def broker_down(self) -> bool: ...

    @property
    def in_flight(self) -> int: ...


def cassandra_probe(session: Session) -> Probe:
    def probe() -> str:
        row = session.execute("SELECT release_version FROM system.local").one()
        return f"Cassandra {row.release_version}"

    return probe


def kafka_probe(publisher: ProducerState, admin: AdminClient) -> Probe:
    def probe() -> str:
        if publisher.broker_down:
            raise ConnectionError("the producer reports the broker unreachable")
        topics = admin.list_topics(timeout=2).topics
        return f"{len(topics)} topics, {publisher.in_flight} messages awaiting acknowledgement"

    return probe


def s3_probe(artifacts: S3ArtifactStore) -> Probe:
    def probe() -> str:
        artifacts.client.head_bucket(Bucket=artifacts.bucket)
        return f"bucket {artifacts.bucket} reachable"

    return probe


def workers_probe(settings: Settings, admin: AdminClient) -> Probe:
    """Every declared consumer group that does work should have at least one live member.

    The ingress's own reply group is left out: this probe runs inside an ingress, which is its member.
    """
    worker_groups = [g for g in GROUPS if g.group_id != Group.INGRESS_REPLIES]

    def probe() -> str | ProbeResult:
        names = [g.full_id(settings) for g in worker_groups]
        futures: dict[str, Any] = admin.describe_consumer_groups(names, request_timeout=3)
        empty = []
        for name, future in futures.items():
            try:
                if not future.result().members:
                    empty.append(name)
            except Exception:
                empty.append(name)
        if empty:
            return degraded(f"no live members in {', '.join(sorted(empty))}")
        return f"{len(names)} groups have members"

    return probe


def component_probes(settings: Settings, session: Session, publisher: ProducerState,
                     artifacts: S3ArtifactStore) -> dict[str, Probe]:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    return {
        "cassandra": cassandra_probe(session),
        "kafka": kafka_probe(publisher, admin),
        "s3": s3_probe(artifacts),
        "workers": workers_probe(settings, admin),
    }
