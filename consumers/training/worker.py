"""Trainer: ``tributary trainer`` runs one member of the ``trainers`` consumer group.

Each member runs one training job at a time (``consumers/training/runner.py``), so the group scales
like the inference workers: ``tributary workers --group trainers --replicas N`` (or N pods), at most
one busy member per partition of ``tributary.training.jobs``.

- At-least-once: a job's offset is committed only when the job ends (completed, failed, cancelled
  or skipped). While it trains, the member's partitions are paused and it keeps polling, so it stays
  in the group (no ``max.poll.interval.ms`` expiry) without taking a second job.
- A trainer killed mid-run never commits: the job is redelivered (to it after a restart, or to
  another member) and resumes from its newest checkpoint in S3.
- SIGTERM stops the run at the next batch without committing (it resumes on redelivery), leaves
  the group and exits. A revoked partition stops its job the same way.
- Undecodable messages go to the group's dead-letter topic and are committed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from core.artifacts import S3ArtifactStore
from core.carbon import CarbonMeter
from core.cassandra.session import connect
from core.cassandra_carbon import CassandraCarbonStore
from core.datasets.cassandra_store import CassandraDatasetStore
from core.fleet.cassandra_store import CassandraFleetStore
from core.logs import configure
from core.shutdown import arm_shutdown_deadline
from core.training.cassandra_store import CassandraTrainingJobStore
from messaging.dead_letter import DeadLetterRouter, RawMessage, from_confluent, is_record
from messaging.group_member import group_member_config
from producers.events import KafkaEventSink, instance_name
from producers.publisher import Publisher
from schemas.codec import Codec
from settings import Settings
from topology.groups import BY_GROUP, Group
from topology.messages import MessageType

log = logging.getLogger(__name__)
GROUP = BY_GROUP[Group.TRAINERS.value]
PUBLISH_TIMEOUT_S = 30.0


class Trainer:
    def __init__(self, settings: Settings) -> None:
        import torch

        from consumers.inference.weights import build_onnx
        from consumers.training.runner import TrainingJobRunner

        torch.set_num_threads(settings.trainer_torch_threads)
        self.settings = settings
        self.instance = instance_name("trainer")
        self.group_id = GROUP.full_id(settings)
        self.publisher = Publisher(settings, client_id=f"tributary-{self.instance}")
        self.sink = KafkaEventSink(settings, self.publisher, service="trainer")
        self.dead_letters = DeadLetterRouter(settings, self.publisher, GROUP.group_id)
        self.codec = Codec()
        self.session = connect(settings, settings.cassandra_keyspace)
        self.runner = TrainingJobRunner(
            CassandraTrainingJobStore(self.session), CassandraDatasetStore(self.session), S3ArtifactStore(settings),
            CassandraFleetStore(self.session), self._publish, bucket=settings.s3_bucket,
            work_dir=settings.data_dir / "training", worker=self.instance, onnx_builder=build_onnx,
            cancel_poll_s=settings.trainer_cancel_poll_s, carbon=CassandraCarbonStore(self.session),
            meter_factory=lambda: CarbonMeter(settings))
        self.stopping = threading.Event()  # SIGTERM: stop the run, commit nothing, leave
        self._job_stop = threading.Event()  # the running job's stop flag: SIGTERM or its partition revoked
        self._current: tuple[str, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Every consumer call on one thread (librdkafka callbacks included); training on another.
        self._kafka = ThreadPoolExecutor(1, thread_name_prefix="kafka-consumer")
        self._train = ThreadPoolExecutor(1, thread_name_prefix="training")
        self.consumer = Consumer(self.consumer_config())

    def stop(self) -> None:
        """Stop the running job at its next batch (uncommitted: it resumes on redelivery) and leave."""
        self.stopping.set()
        self._job_stop.set()

    @staticmethod
    def subscriptions(settings: Settings) -> list[str]:
        return GROUP.input_names(settings)

    def consumer_config(self) -> dict[str, Any]:
        # Offsets committed when the job ends; jobs are rare and last minutes, so the idle fetch wait.
        return group_member_config(self.settings, self.group_id, f"{self.instance}-{socket.gethostname()}",
                                   offset_reset="earliest", fetch_wait_ms=self.settings.idle_fetch_max_wait_ms)

    # --- publishing from the training thread ----------------------------------------------
    def _publish(self, message_type: MessageType, record: dict[str, Any]) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self.sink.publish(message_type, record), self._loop).result(
            PUBLISH_TIMEOUT_S)

    # --- consumer thread ------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._current is not None:  # busy: take no second job until this one ends
            consumer.pause(partitions)
        log.info("assigned %s", [tp.partition for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._current is not None and any((tp.topic, tp.partition) == self._current for tp in partitions):
            log.warning("the running job's partition was revoked: stopping it (it resumes on its new owner)")
            self._job_stop.set()
        log.info("revoked %s", [tp.partition for tp in partitions])

    def _poll(self, timeout: float) -> Message | None:
        message: Message | None = self.consumer.poll(timeout)
        return message

    def _pause_all(self) -> None:
        self.consumer.pause(self.consumer.assignment())

    def _resume_all(self) -> None:
        self.consumer.resume(self.consumer.assignment())

    def _commit(self, raw: RawMessage) -> None:
        self.consumer.commit(offsets=[TopicPartition(raw.topic, raw.partition, raw.offset + 1)], asynchronous=False)

    # --- event loop -----------------------------------------------------------------------
    async def _kafka_call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._kafka, fn, *args)

    async def _handle(self, message: Message) -> None:
        raw = from_confluent(message)
        try:
            decoded = self.codec.decode(raw.value)
            if decoded.message_type != MessageType.TRAINING_JOB_REQUESTED:
                raise TypeError(f"the training jobs topic does not carry {decoded.message_type}")
            job_id = str(decoded.record["job_id"])
        except Exception as exc:
            await self.dead_letters.send(raw, exc, 1)
            await self._kafka_call(self._commit, raw)
            return
        if self.stopping.is_set():  # shutting down: leave it uncommitted for the next owner
            return
        self._current, stop = (raw.topic, raw.partition), threading.Event()
        self._job_stop = stop
        await self._kafka_call(self._pause_all)
        future: Future[str] = self._train.submit(self.runner.run, job_id, stop)
        try:
            while not future.done():
                await self._kafka_call(self._poll, 0.2)  # paused: keeps the membership, serves callbacks
                await asyncio.sleep(0.1)
            outcome = future.result()
        finally:
            self._current = None
        log.info("training job %s: %s", job_id, outcome)
        if outcome != "interrupted":
            await self._kafka_call(self._commit, raw)
        if not self.stopping.is_set():
            await self._kafka_call(self._resume_all)

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        await self._kafka_call(lambda: self.consumer.subscribe(self.subscriptions(self.settings),
                                                               on_assign=self._on_assign, on_revoke=self._on_revoke))
        log.info("training as %s", self.group_id)
        try:
            while not self.stopping.is_set():
                message = await self._kafka_call(self._poll, 0.5)
                if message is None or not is_record(message, log, "consumer"):
                    continue
                await self._handle(message)
        finally:
            await self._kafka_call(self.consumer.close)
            self._kafka.shutdown(wait=True)
            self._train.shutdown(wait=False)
            await asyncio.to_thread(self.publisher.close)
            await asyncio.to_thread(self.session.cluster.shutdown)
            log.info("stopped")
        return 0


def main(settings: Settings) -> int:
    """Train until SIGTERM/SIGINT; returns the process exit code."""
    configure("trainer")

    async def serve() -> int:
        trainer = Trainer(settings)
        loop = asyncio.get_running_loop()

        def stop() -> None:
            arm_shutdown_deadline(settings.shutdown_timeout_s)
            trainer.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        return await trainer.run()

    return asyncio.run(serve())
