"""Key events reach every ingress replica before a revocation is answered.

Each ingress replica caches key lookups (``core.auth.Authenticator``), so a revoked key must leave
every replica's cache before the revoking call returns. The key-events topic (compacted, one
partition) carries them:

- every replica consumes it in a consumer group of its own, ``<prefix>ingress-keys.<replica id>``
  (``KeyEventConsumer``): it starts at the log end (its cache is empty then), commits that start
  position before it serves, and for each event evicts the key and then commits past it,
  synchronously;
- the revoking call publishes its events and waits (``KafkaKeyEventBus``) until every group of that
  prefix that has live members has committed past the last one: a committed offset beyond the event
  means that replica applied it. Groups without members (replicas that stopped) are not waited for;
  a replica killed without leaving stays a member until its session times out
  (``KEY_SESSION_TIMEOUT_MS``), so a revoke in that window is answered as unconfirmed (``Propagation``)
  once ``key_propagation_timeout_s`` passes.

These groups are not in ``topology.groups.GROUPS``: there is one per running replica, made and
removed with it (a replica that stops deletes its group).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import Counter

from core.auth import Authenticator, KeyEvent, Propagation
from core.events import MessageSink
from producers.publisher import DeliveryReport
from schemas.codec import Codec, DecodeError
from settings import Settings
from topology.messages import MessageType
from topology.topics import KEY_EVENTS

log = logging.getLogger(__name__)

GROUP_STEM = "ingress-keys."
# Short, so a replica that was killed stops being waited for soon (the broker's minimum is 6 s).
KEY_SESSION_TIMEOUT_MS = 10_000
WAIT_POLL_S = 0.05
ADMIN_TIMEOUT_S = 5.0

KEY_EVENTS_APPLIED = Counter("tributary_key_events_applied_total", "Key events this ingress replica applied")
KEY_EVENTS_UNDECODABLE = Counter("tributary_key_events_undecodable_total",
                                 "Messages on the key-events topic this replica could not decode (skipped)")


def group_prefix(settings: Settings) -> str:
    return settings.prefixed(GROUP_STEM)


class KeyEventConsumer:
    """One per ingress replica: applies key events to the replica's authenticator."""

    def __init__(self, settings: Settings, authenticator: Authenticator, *, replica_id: str | None = None,
                 codec: Codec | None = None) -> None:
        self.settings = settings
        self.authenticator = authenticator
        self.codec = codec or Codec()
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        self.group_id = group_prefix(settings) + self.replica_id
        self.topic = KEY_EVENTS.full_name(settings)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._start_offsets: list[TopicPartition] = []  # set on assignment, committed by the poll loop
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None

    def consumer_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.settings.kafka_bootstrap_servers,
            "group.id": self.group_id,
            "client.id": f"tributary-ingress-keys-{self.replica_id}",
            "enable.auto.commit": False,  # committed offsets are the proof a revoker waits for
            "auto.offset.reset": "latest",
            "session.timeout.ms": KEY_SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": 1000,
            # One member with every partition from its start: a parked fetch is answered as soon as an
            # event arrives, so a long wait delays nothing and spares the broker idle fetches.
            "fetch.wait.max.ms": self.settings.idle_fetch_max_wait_ms,
        }

    async def start(self, timeout_s: float = 30.0) -> None:
        """Join, take the partition and commit the start position; until then the replica must not serve."""
        self._consumer = Consumer(self.consumer_config())
        self._consumer.subscribe([self.topic], on_assign=self._on_assign)
        self._thread = threading.Thread(target=self._run, name="ingress-keys", daemon=True)
        self._thread.start()
        if not await asyncio.to_thread(self._ready.wait, timeout_s):
            raise RuntimeError(f"the key-events consumer {self.group_id} got no partition within {timeout_s:.0f}s")

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 15)
        await asyncio.to_thread(self._delete_group)

    def _delete_group(self) -> None:
        """Leave no group behind: revokers list these groups, and a stopped replica's is noise."""
        admin = AdminClient({"bootstrap.servers": self.settings.kafka_bootstrap_servers})
        try:
            admin.delete_consumer_groups([self.group_id], request_timeout=ADMIN_TIMEOUT_S)[self.group_id].result()
        except KafkaException as exc:
            log.warning("could not delete key-events group %s: %s", self.group_id, exc)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Start exactly at the log end, fixed here: the cache is empty, so earlier events do not
        # matter, and committing this very position tells revokers what this replica has seen.
        for tp in partitions:
            _low, high = consumer.get_watermark_offsets(tp, timeout=ADMIN_TIMEOUT_S)
            tp.offset = high
        consumer.assign(partitions)
        self._start_offsets = [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in partitions]

    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.1)
                if self._start_offsets:
                    consumer.commit(offsets=self._start_offsets, asynchronous=False)
                    self._start_offsets = []
                    self._ready.set()
                if message is None:
                    continue
                if message.error():
                    log.warning("key-events consumer: %s", message.error())
                    continue
                self._apply(message)
                consumer.commit(message=message, asynchronous=False)
        except Exception:
            log.exception("key-events consumer %s stopped", self.group_id)
        finally:
            consumer.close()

    def _apply(self, message: Message) -> None:
        try:
            event = KeyEvent.of(self.codec.decode(message.value()).record)
        except (DecodeError, KeyError, ValueError) as exc:
            # Only ingress replicas write here, with this codec; skip rather than stop revocations.
            KEY_EVENTS_UNDECODABLE.inc()
            log.error("undecodable key event at %s[%d]@%d skipped: %s", message.topic(), message.partition(),
                      message.offset(), exc)
            return
        self.authenticator.apply(event)
        KEY_EVENTS_APPLIED.inc()


class KafkaKeyEventBus:
    """Publishes key events and waits until every live ingress replica applied them."""

    def __init__(self, settings: Settings, sink: MessageSink, admin: AdminClient | None = None) -> None:
        self.settings = settings
        self.sink = sink
        self.admin = admin or AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
        self.prefix = group_prefix(settings)

    async def broadcast(self, events: list[KeyEvent]) -> Propagation:
        last: object = None
        for event in events:
            last = await self.sink.publish(MessageType.KEY_EVENT, event.record())
        if not isinstance(last, DeliveryReport):
            return Propagation(True, 0)  # nothing was published
        return await asyncio.to_thread(self._wait, last, time.monotonic() + self.settings.key_propagation_timeout_s)

    def _wait(self, report: DeliveryReport, deadline: float) -> Propagation:
        while True:
            live = self.live_groups()
            pending = [group for group in live if not self._applied(group, report)]
            if not pending:
                return Propagation(True, len(live))
            if time.monotonic() >= deadline:
                log.warning("key event %s[%d]@%d not confirmed by %s", report.topic, report.partition,
                            report.offset, pending)
                return Propagation(False, len(live) - len(pending),
                                   tuple(group.removeprefix(self.prefix) for group in pending))
            time.sleep(WAIT_POLL_S)

    def live_groups(self) -> list[str]:
        """The key-events groups of this environment that have members now."""
        listing = self.admin.list_consumer_groups(request_timeout=ADMIN_TIMEOUT_S).result()
        ids = [g.group_id for g in listing.valid if g.group_id.startswith(self.prefix)]
        if not ids:
            return []
        described = self.admin.describe_consumer_groups(ids, request_timeout=ADMIN_TIMEOUT_S)
        live = []
        for group_id, future in described.items():
            try:
                if future.result().members:
                    live.append(group_id)
            except KafkaException:
                continue  # deleted between the listing and now: a replica that stopped
        return sorted(live)

    def _applied(self, group_id: str, report: DeliveryReport) -> bool:
        committed = self.committed(group_id, report)
        return committed is not None and committed > report.offset

    def committed(self, group_id: str, report: DeliveryReport) -> int | None:
        request = [ConsumerGroupTopicPartitions(group_id, [TopicPartition(report.topic, report.partition)])]
        try:
            result = self.admin.list_consumer_group_offsets(request, request_timeout=ADMIN_TIMEOUT_S)[group_id]
            offsets = result.result().topic_partitions
        except KafkaException:
            return None
        return next((tp.offset for tp in offsets if tp.offset >= 0), None)
