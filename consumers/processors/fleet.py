"""The fleet's state processors as faust apps: one consumer group each, scalable on their own.

    tributary processor devices           # heartbeats → device rows, freshness events
    tributary processor rounds            # updates → counters, streaming FedAvg, round closing
    tributary processor learning-graphs   # retraining requests → a training round (or why not)
    tributary processor model-downloads   # registry download requests → fetched, checked, stored versions
    tributary processor rollouts          # rollout commands and telemetry → rollout state; gates on a timer

``consumers/processors/kinds.py`` names them, with the group and topic of each. Events are
decoded with the project codec (faust sees raw bytes); failures go through the shared
dead-letter router, so the agent always moves on and faust commits past the message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faust

from consumers.inference.weights import build_onnx
from consumers.processors.kinds import PROCESSORS
from core.artifacts import S3ArtifactStore
from core.cassandra.session import connect
from core.fleet.cassandra_store import CassandraFleetStore
from core.fleet.processing import DeviceProcessor, RoundProcessor
from core.fleet.retraining import RetrainingTrigger
from core.fleet.service import FleetService
from core.logs import configure, correlation_id_var, trace_id_var
from core.onboarding.downloads import ModelDownloads
from core.onboarding.fetch import FetchPolicy, SourceFetcher
from core.rollouts.cassandra_store import CassandraRolloutStore
from core.rollouts.processing import RolloutProcessor
from core.shutdown import arm_shutdown_deadline
from messaging.dead_letter import PERMANENT, DeadLetterRouter, RawMessage
from producers.events import KafkaEventSink
from producers.publisher import Publisher
from schemas.codec import Codec
from settings import Settings
from topology.groups import BY_GROUP
from topology.messages import MessageType
from topology.topics import TopicSpec

log = logging.getLogger(__name__)
# How long the device processor waits to fill a heartbeat batch: under load batches fill at once;
# alone, a heartbeat waits at most this long.
HEARTBEAT_BATCH_WAIT_S = 0.05
Handler = Callable[[str, dict[str, Any]], Awaitable[None]]
# Applies decoded records together; answers, per record, the failure that dead-letters it (or None).
BatchHandler = Callable[[Sequence[dict[str, Any]]], Awaitable[Sequence[BaseException | None]]]


@dataclass
class ProcessorSpec:
    group_id: str
    topic: TopicSpec
    handlers: dict[str, Handler]  # by MessageType
    closers: list[Callable[[], Any]]
    timer_s: float = 0.0
    on_timer: Callable[[], Awaitable[Any]] | None = None  # work that no message triggers
    # Messages of one type handled a batch at a time (up to batch_max, waiting at most batch_wait_s).
    batch: tuple[str, BatchHandler] | None = None
    batch_max: int = 1
    batch_wait_s: float = 0.0


def build(kind: str, settings: Settings) -> ProcessorSpec:
    if kind not in PROCESSORS:
        raise ValueError(f"unknown processor {kind!r}; choose one of {sorted(PROCESSORS)}")
    group, topic = PROCESSORS[kind].group.group_id, PROCESSORS[kind].topic
    session = connect(settings, settings.cassandra_keyspace)
    store = CassandraFleetStore(session)
    publisher = Publisher(settings, client_id=f"tributary-{kind}-processor")
    events = KafkaEventSink(settings, publisher, service=f"{kind}-processor")
    closers: list[Callable[[], Any]] = [publisher.close, session.cluster.shutdown]
    if kind == "devices":
        devices = DeviceProcessor(settings, store, events)

        async def on_heartbeat(_: str, record: dict[str, Any]) -> None:
            await devices.on_heartbeat(record)

        return ProcessorSpec(group, topic, {MessageType.DEVICE_HEARTBEAT: on_heartbeat}, closers,
                             settings.freshness_sweep_s, devices.sweep,
                             batch=(MessageType.DEVICE_HEARTBEAT, devices.on_heartbeats),
                             batch_max=settings.heartbeat_batch_max, batch_wait_s=HEARTBEAT_BATCH_WAIT_S)
    if kind == "rounds":
        artifacts = S3ArtifactStore(settings)
        rounds = RoundProcessor(settings, store, artifacts, events, FleetService(settings, store, artifacts, events))

        async def on_update(_: str, record: dict[str, Any]) -> None:
            await rounds.on_update(record)

        return ProcessorSpec(group, topic, {MessageType.MODEL_UPDATE_SUBMITTED: on_update}, closers, 1.0, rounds.tick)
    if kind == "learning-graphs":
        artifacts = S3ArtifactStore(settings)
        trigger = RetrainingTrigger(settings, store, FleetService(settings, store, artifacts, events), events)

        async def on_graph(_: str, record: dict[str, Any]) -> None:
            await trigger.on_graph_submitted(record)

        return ProcessorSpec(group, topic, {MessageType.LEARNING_GRAPH_SUBMITTED: on_graph}, closers)
    if kind == "model-downloads":
        artifacts = S3ArtifactStore(settings)
        fetcher = SourceFetcher(FetchPolicy.from_settings(settings), s3_client=lambda: artifacts.client)
        downloads = ModelDownloads(settings, store, artifacts, events, fetcher, weights_builder=build_onnx)

        async def on_download(_: str, record: dict[str, Any]) -> None:
            await downloads.on_requested(record)

        return ProcessorSpec(group, topic, {MessageType.MODEL_DOWNLOAD_REQUESTED: on_download}, closers)
    if kind == "rollouts":
        rollouts = RolloutProcessor(settings, CassandraRolloutStore(session), events)

        async def on_command(_: str, record: dict[str, Any]) -> None:
            await rollouts.on_command(record)

        async def on_telemetry(_: str, record: dict[str, Any]) -> None:
            await rollouts.on_telemetry(record)

        return ProcessorSpec(group, topic, {MessageType.ROLLOUT_COMMAND: on_command,
                                            MessageType.DEVICE_TELEMETRY: on_telemetry},
                             closers, settings.rollout_tick_s, rollouts.tick)
    raise AssertionError(f"processor {kind!r} is listed but not built")


def make_app(spec: ProcessorSpec, settings: Settings, dead_letters: DeadLetterRouter) -> faust.App:
    """The faust app of one processor: its id is the group id, its one agent reads ``spec.topic``."""
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

    def raw_of(event: Any) -> RawMessage:  # a faust EventT
        msg = event.message
        return RawMessage(msg.topic, msg.partition, msg.offset, msg.key, msg.value,
                          [(k, bytes(v)) for k, v in (msg.headers or [])])

    batch = spec.batch
    if batch is None:
        @app.agent(topic, name=f"{spec.group_id}-agent")
        async def consume(stream: faust.StreamT[bytes]) -> None:
            async for event in stream.events():
                # Returns once handled or dead-lettered; faust then acks (commits) the offset.
                await dead_letters.process(raw_of(event), handle)
        return _with_timer_and_close(app, spec, settings)

    batch_type, batch_handler = batch

    async def handle_batch(messages: Sequence[RawMessage]) -> list[BaseException | None]:
        """Decode each message (one that fails is dead-lettered alone), apply the rest together."""
        failures: list[BaseException | None] = [None] * len(messages)
        records: list[dict[str, Any]] = []
        positions: list[int] = []
        for i, message in enumerate(messages):
            try:
                decoded = codec.decode(message.value)
                if decoded.message_type != batch_type:
                    raise TypeError(f"{spec.group_id} does not handle {decoded.message_type}")
            except PERMANENT as exc:
                failures[i] = exc
                continue
            records.append(decoded.record)
            positions.append(i)
        for position, failure in zip(positions, await batch_handler(records), strict=True):
            failures[position] = failure
        return failures

    @app.agent(topic, name=f"{spec.group_id}-agent")
    async def consume_batches(stream: faust.StreamT[bytes]) -> None:
        # faust acks (commits) a batch's offsets once this body has handled or dead-lettered all of it.
        # take_events is faust-streaming's Stream method; its StreamT interface does not declare it.
        async for events in stream.take_events(spec.batch_max, within=spec.batch_wait_s):  # type: ignore[attr-defined]
            await dead_letters.process_batch([raw_of(event) for event in events], handle_batch, handle)

    return _with_timer_and_close(app, spec, settings)


def _with_timer_and_close(app: faust.App, spec: ProcessorSpec, settings: Settings) -> faust.App:
    on_timer = spec.on_timer
    if on_timer is not None:
        @app.timer(interval=spec.timer_s)  # type: ignore[untyped-decorator]
        async def periodic() -> None:
            try:
                await on_timer()
            except Exception:
                log.exception("%s timer failed; retrying next tick", spec.group_id)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close(app: faust.App, **_: Any) -> None:
        arm_shutdown_deadline(settings.shutdown_timeout_s)
        # Flush our producers (events, dead letters) before faust commits and leaves the group.
        for closer in spec.closers:
            closer()

    return app


def main(settings: Settings, kind: str) -> None:
    """Run processor ``kind`` (a name of ``PROCESSORS``) until SIGTERM/SIGINT; faust exits the process."""
    configure(f"{kind}-processor")
    spec = build(kind, settings)
    publisher = Publisher(settings, client_id=f"tributary-{spec.group_id}-dlq")
    spec.closers.insert(0, publisher.close)
    app = make_app(spec, settings, DeadLetterRouter(settings, publisher, spec.group_id))
    # override_logging=False keeps the JSON handler configure() installed.
    worker = faust.Worker(app, loglevel="info", quiet=True, override_logging=False, redirect_stdouts=False)
    worker.execute_from_commandline()
