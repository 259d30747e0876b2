"""Production wiring of the ingress: Cassandra store, S3 artifacts, Kafka events."""

from __future__ import annotations

import asyncio

from api.context import AppContext
from core.artifacts import S3ArtifactStore
from core.cassandra.session import connect
from core.fleet.cassandra_store import CassandraFleetStore
from core.probes import component_probes
from core.settings import Settings
from producers.events import KafkaEventSink
from producers.publisher import Publisher


async def build_context(settings: Settings, service: str = "api") -> AppContext:
    session = await asyncio.to_thread(connect, settings, settings.cassandra_keyspace)
    publisher = Publisher(settings, client_id=f"tributary-{service}")
    artifacts = S3ArtifactStore(settings)
    context = AppContext(
        settings=settings,
        store=CassandraFleetStore(session),
        artifacts=artifacts,
        events=KafkaEventSink(settings, publisher, service=service),
        probes=component_probes(settings, session, publisher, artifacts),
    )
    # Flush what is in flight before the session goes: nothing accepted is left unsent.
    context.closers += [session.cluster.shutdown, publisher.close]
    return context
