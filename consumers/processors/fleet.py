"""Device and round processors as faust apps: one consumer group each, scalable on their own.

    python -m consumers.processors.fleet devices   # heartbeats → device rows, freshness events
    python -m consumers.processors.fleet rounds    # updates → counters, streaming FedAvg, round closing

Events are decoded with the project codec (faust sees raw bytes); failures go through the
shared dead-letter router, so the agent always moves on and faust commits past the message.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust

from core.artifacts import S3ArtifactStore
from core.cassandra.session import connect
from core.fleet.cassandra_store import CassandraFleetStore
from core.fleet.processing import DeviceProcessor, RoundProcessor
from core.fleet.service import FleetService
from core.logs import configure, correlation_id_var, trace_id_var
from core.shutdown import arm_shutdown_deadline
from messaging.dead_letter import DeadLetterRouter, RawMessage
from producers.events import KafkaEventSink
from producers.publisher import Publisher
from schemas.codec import Codec
from settings import Settings, get_settings
from topology.groups import BY_GROUP
from topology.messages import MessageType
from topology.topics import DEVICE_HEARTBEATS, TRAINING_UPDATES, TopicSpec

log = logging.getLogger(__name__)
Handler = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass
class ProcessorSpec:
    group_id: str
    topic: TopicSpec
    handlers: dict[str, Handler]
    timer_s: float
    on_timer: Callable[[], Awaitable[Any]]
    closers: list[Callable[[], Any]]


def build(kind: str, settings: Settings) -> ProcessorSpec:
    session = connect(settings, settings.cassandra_keyspace)
    store = CassandraFleetStore(session)
    publisher = Publisher(settings, client_id=f"tributary-{kind}-processor")
    events = KafkaEventSink(settings, publisher, service=f"{kind}-processor")
    closers: list[Callable[[], Any]] = [publisher.close, session.cluster.shutdown]
    if kind == "devices":
        devices = DeviceProcessor(settings, store, events)

        async def on_heartbeat(_: str, record: dict[str, Any]) -> None:
            await devices.on_heartbeat(record)

        return ProcessorSpec("device-processor", DEVICE_HEARTBEATS, {MessageType.DEVICE_HEARTBEAT: on_heartbeat},
                             settings.freshness_sweep_s, devices.sweep, closers)
    if kind == "rounds":
        artifacts = S3ArtifactStore(settings)
        rounds = RoundProcessor(settings, store, artifacts, events, FleetService(settings, store, artifacts, events))

        async def on_update(_: str, record: dict[str, Any]) -> None:
            await rounds.on_update(record)

        return ProcessorSpec("round-processor", TRAINING_UPDATES, {MessageType.MODEL_UPDATE_SUBMITTED: on_update},
                             1.0, rounds.tick, closers)
    raise SystemExit(f"unknown processor {kind!r}; choose devices or rounds")


def make_app(spec: ProcessorSpec, settings: Settings) -> faust.App:
    group = BY_GROUP[spec.group_id]
    processors_dir = settings.data_dir / "processors"
    processors_dir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    app = faust.App(
        group.full_id(settings),  # the app id is the consumer group id
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store="memory://",
        # Faust keeps table metadata in a directory of its own; not in the working directory.
        datadir=str(processors_dir / "{conf.name}-data"),
        topic_allow_declare=False,  # topology/ owns topic creation
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=min(1.0, settings.session_timeout_ms / 3000),
        web_enabled=False,
        producer_acks=-1,
    )
    publisher = Publisher(settings, client_id=f"tributary-{spec.group_id}-dlq")
    router = DeadLetterRouter(settings, publisher, group.group_id)
    spec.closers.insert(0, publisher.close)
    codec = Codec()
    topic = app.topic(spec.topic.full_name(settings), key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw")

    async def handle(message: RawMessage) -> None:
        decoded = codec.decode(message.value)
        trace_id_var.set(decoded.record.get("trace_id"))
        correlation_id_var.set(decoded.record.get("correlation_id"))
        handler = spec.handlers.get(decoded.message_type)
        if handler is None:
            raise TypeError(f"{spec.group_id} does not handle {decoded.message_type}")
        await handler(decoded.message_type, decoded.record)

    @app.agent(topic, name=f"{spec.group_id}-agent")
    async def consume(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            msg = event.message
            raw = RawMessage(msg.topic, msg.partition, msg.offset, msg.key, msg.value,
                             [(k, bytes(v)) for k, v in (msg.headers or [])])
            # Returns once handled or dead-lettered; faust then acks (commits) the offset.
            await router.process(raw, handle)

    @app.timer(interval=spec.timer_s)  # type: ignore[untyped-decorator]
    async def periodic() -> None:
        try:
            await spec.on_timer()
        except Exception:
            log.exception("%s timer failed; retrying next tick", spec.group_id)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close(app: faust.App, **_: Any) -> None:
        arm_shutdown_deadline(settings.shutdown_timeout_s)
        # Flush our producers (events, dead letters) before faust commits and leaves the group.
        for closer in spec.closers:
            closer()

    return app


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if not args:
        raise SystemExit("usage: python -m consumers.processors.fleet devices|rounds")
    settings = get_settings()
    configure(f"{args[0]}-processor")
    spec = build(args[0], settings)
    app = make_app(spec, settings)
    # override_logging=False keeps the JSON handler configure() installed.
    worker = faust.Worker(app, loglevel="info", quiet=True, override_logging=False, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
