"""Production wiring of the ingress: Cassandra store, S3 artifacts, Kafka events."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from api.context import AppContext
from core.artifacts import S3ArtifactStore
from core.cassandra.session import connect
from core.cassandra_carbon import CassandraCarbonStore
from core.claimcheck import ClaimCheck, sweep_periodically
from core.datasets.cassandra_store import CassandraDatasetStore
from core.fleet.cassandra_store import CassandraFleetStore
from core.probes import component_probes
from core.registry import seed_builtins
from core.rollouts.cassandra_store import CassandraRolloutStore
from core.serving.cassandra_jobs import CassandraJobStore
from core.serving.cassandra_residency import CassandraResidencyStore
from core.serving.jobs_service import JobService
from core.serving.metrics import register_queue_depth
from core.serving.service import InferenceService
from core.training.cassandra_store import CassandraTrainingJobStore
from messaging.dead_letter import DeadLetterRouter
from messaging.key_events import KafkaKeyEventBus, KeyEventConsumer
from messaging.reply_consumer import REPLY_GROUP, ReplyConsumer
from producers.events import KafkaEventSink
from producers.publisher import Publisher
from settings import Settings
from topology.lag import queue_depths

QUEUE_DEPTH_CACHE_S = 2.0


def queue_depth_reader(settings: Settings) -> tuple[Callable[[], dict[str, int]], Callable[[], None]]:
    """(read, close): requests waiting per priority, cached for a moment (one reader, serialised)."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    reader = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "tributary-queue-depth",
                       "enable.auto.commit": False})
    lock = threading.Lock()
    cached: list[tuple[float, dict[str, int]]] = []

    def read() -> dict[str, int]:
        with lock:
            if cached and time.monotonic() - cached[0][0] < QUEUE_DEPTH_CACHE_S:
                return cached[0][1]
            depths = queue_depths(settings, admin, reader)
            cached[:] = [(time.monotonic(), depths)]
            return depths

    return read, reader.close


async def build_context(settings: Settings, service: str = "api") -> AppContext:
    session = await asyncio.to_thread(connect, settings, settings.cassandra_keyspace)
    publisher = Publisher(settings, client_id=f"tributary-{service}")
    artifacts = S3ArtifactStore(settings)
    events = KafkaEventSink(settings, publisher, service=service)
    # Sync inference: join the reply group and wait for a partition before serving (readiness).
    replies = ReplyConsumer(settings, dead_letters=DeadLetterRouter(settings, publisher, REPLY_GROUP.group_id))
    await replies.start()
    store = CassandraFleetStore(session)
    # The built-in models are registry entries like any other: upserted at every start (idempotent).
    await asyncio.to_thread(seed_builtins, store)
    claims = ClaimCheck(artifacts, bucket=settings.s3_bucket, threshold_bytes=settings.inference_claim_check_bytes)
    inference = InferenceService(settings, events, replies, catalog=store, claims=claims)
    depth, close_depth = queue_depth_reader(settings)
    unregister_depth = register_queue_depth(depth)  # /metrics: tributary_inference_queue_depth{priority}
    context = AppContext(
        settings=settings,
        store=store,
        artifacts=artifacts,
        events=events,
        probes={**component_probes(settings, session, publisher, artifacts), "inference_replies": replies.probe},
        inference=inference,
        jobs=JobService(settings, inference, CassandraJobStore(session), events),
        residency=CassandraResidencyStore(session),
        dataset_store=CassandraDatasetStore(session),
        carbon=CassandraCarbonStore(session),
        queue_depth=depth,
        key_events=KafkaKeyEventBus(settings, events),
        training_jobs=CassandraTrainingJobStore(session),
        rollout_store=CassandraRolloutStore(session),
    )
    # Key events: this replica caches key lookups only because it applies every revocation before the
    # revoking call returns; it joins before it serves.
    key_events = KeyEventConsumer(settings, context.authenticator)
    await key_events.start()
    # Flush what is in flight before the session goes: nothing accepted is left unsent. Closers run in
    # reverse: the reply consumer leaves its group first, so other replicas take its partitions at once.
    context.closers += [session.cluster.shutdown, publisher.close, close_depth, unregister_depth, replies.close,
                        key_events.close]
    if settings.claim_check_sweep_interval_s > 0:
        # Claim objects expire by the bucket's lifecycle rule where the S3 enforces it; this deletes
        # them where it does not (SeaweedFS: see core/claimcheck.py).
        sweeper = asyncio.create_task(sweep_periodically(
            artifacts.client, settings.s3_bucket, retention_days=settings.claim_check_retention_days,
            interval_s=settings.claim_check_sweep_interval_s))
        context.closers.append(sweeper.cancel)
    return context
