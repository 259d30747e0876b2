"""Production wiring of the ingress: Cassandra store, S3 artifacts, Kafka events."""

from __future__ import annotations

import asyncio

from api.context import AppContext
from consumers.dead_letter import DeadLetterRouter
from core.artifacts import S3ArtifactStore
from core.cassandra.session import connect
from core.fleet.cassandra_store import CassandraFleetStore
from core.probes import component_probes
from core.serving.cassandra_jobs import CassandraJobStore
from core.serving.jobs_service import JobService
from core.serving.service import InferenceService
from core.settings import Settings
from producers.events import KafkaEventSink
from producers.publisher import Publisher
from producers.replies import REPLY_GROUP, ReplyRouter


async def build_context(settings: Settings, service: str = "api") -> AppContext:
    session = await asyncio.to_thread(connect, settings, settings.cassandra_keyspace)
    publisher = Publisher(settings, client_id=f"tributary-{service}")
    artifacts = S3ArtifactStore(settings)
    events = KafkaEventSink(settings, publisher, service=service)
    # Sync inference: join the reply group and wait for a partition before serving (readiness).
    replies = ReplyRouter(settings, dead_letters=DeadLetterRouter(settings, publisher, REPLY_GROUP.group_id))
    await replies.start()
    inference = InferenceService(settings, events, replies)
    context = AppContext(
        settings=settings,
        store=CassandraFleetStore(session),
        artifacts=artifacts,
        events=events,
        probes={**component_probes(settings, session, publisher, artifacts), "inference_replies": replies.probe},
        inference=inference,
        jobs=JobService(settings, inference, CassandraJobStore(session), events),
    )
    # Flush what is in flight before the session goes: nothing accepted is left unsent. Closers run in
    # reverse: the reply router leaves its group first, so other replicas take its partitions at once.
    context.closers += [session.cluster.shutdown, publisher.close, replies.close]
    return context
