"""Replies of synchronous inference, routed back to the ingress replica that holds the HTTP request.

Every ingress replica is a member of the ``ingress-replies`` consumer group on the responses
topic, so each replica owns a disjoint set of its partitions. A request names one partition
its replica owns (``reply_partition``) and workers produce the reply to exactly that
partition; the replica's consumer thread reads it and resolves the waiting asyncio future by
``correlation_id``.

Rebalances (Kafka's classic group protocol with an eager assignor revokes *every* partition on
each rebalance and assigns them again once every member has rejoined):

- a revoke only *suspends* the partitions: waiters keep waiting and new requests may still
  name them, because an eager rebalance revokes everything and usually hands much of it
  back. The consumer resumes each partition it got back from its own last position, so
  replies produced during the gap are read (late by the gap), never skipped;
- partitions that did not come back (or were lost, or no assignment arrived within the grace
  period) fail their waiters with ``ReplyPartitionRevoked``; the inference service re-sends
  such a request on a partition it owns while its deadline allows, else answers 503;
- a partition assigned for the first time starts at its log end, fixed *before* the
  partition is handed out, so a reply can never be produced ahead of the consumer's start.

Replies nobody waits for (the request timed out, a duplicate after a re-send or a worker
retry, a partition that changed hands) are dropped and counted (``late_replies``).

Committed offsets are only a report: every second the consumer commits how far it has read on
the partitions it holds, so ``tributary lag`` shows replies not yet read (0 when idle) rather
than every reply ever produced. Start positions never come from them (see above).

Limit: a replica without partitions cannot serve sync inference; with more replicas than
the topic's partitions (6) the extra replicas answer 503, so scale partitions first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import Counter

from core.health import ProbeResult, degraded
from core.serving.replies import NoReplyPartition, ReplyConsumerClosed, ReplyPartitionRevoked, is_partial
from messaging.dead_letter import DeadLetterRouter, from_confluent, is_record
from messaging.group_member import group_member_config
from schemas.codec import Codec, DecodeError
from settings import Settings
from topology.groups import BY_GROUP
from topology.messages import MessageType
from topology.topics import INFERENCE_RESPONSES

log = logging.getLogger(__name__)
__all__ = ["NoReplyPartition", "ReplyConsumer", "ReplyConsumerClosed", "ReplyPartitionRevoked", "ReplyTable"]

REPLY_GROUP = BY_GROUP["ingress-replies"]
COMMIT_INTERVAL_S = 1.0
Reply = dict[str, Any]

LATE_REPLIES = Counter("tributary_inference_late_replies_total",
                       "Inference replies that arrived with no waiter (late, duplicate or foreign)")
REVOKED_WAITERS = Counter("tributary_inference_reply_revoked_total",
                          "Waiters whose reply partition was taken away by a rebalance")
UNDECODABLE_REPLIES = Counter("tributary_inference_undecodable_replies_total",
                              "Messages on the responses topic that could not be decoded (dead-lettered)")


@dataclass
class _Waiter:
    partition: int
    future: asyncio.Future[Reply]
    partials: asyncio.Queue[Reply] | None = None  # a streamed request's partial replies, in arrival order


class ReplyTable:
    """Waiters by correlation id and the partitions this replica may name. Loop-side only.

    Every method runs on the event loop (the consumer thread hands over events with
    ``call_soon_threadsafe``), so registration, delivery and revocation are serialised:
    a waiter registered on a partition before its revocation is processed is failed by it.
    """

    def __init__(self, suspend_grace_s: float = 15.0) -> None:
        self.suspend_grace_s = suspend_grace_s
        self.late_replies = 0
        self.revoked_waiters = 0
        self._waiters: dict[str, _Waiter] = {}
        self._owned: list[int] = []
        self._suspended: list[int] = []
        self._cycle: Iterator[int] = iter(())
        self._cycle_of: tuple[int, ...] = ()
        self._usable = asyncio.Event()  # set while a partition can be named
        self._grace: asyncio.TimerHandle | None = None
        self._closed = False

    # --- queries -------------------------------------------------------------------------
    @property
    def owned(self) -> tuple[int, ...]:
        return tuple(self._owned)

    @property
    def suspended(self) -> tuple[int, ...]:
        return tuple(self._suspended)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def ready(self) -> bool:
        return bool(self._owned)

    def owned_partition(self) -> int:
        """One partition to name as ``reply_partition``, round-robin over the owned ones.

        During a rebalance the suspended partitions are named instead: many come back, and
        waiters on those that do not are failed (and re-sent) when the assignment arrives.
        """
        if self._closed:
            raise ReplyConsumerClosed("the reply consumer is closed")
        usable = tuple(self._owned or self._suspended)
        if not usable:
            raise NoReplyPartition("this ingress replica owns no responses partition")
        if usable != self._cycle_of:
            self._cycle_of, self._cycle = usable, itertools.cycle(usable)
        return next(self._cycle)

    async def wait_for_partition(self, timeout_s: float) -> int:
        """``owned_partition()``, waiting up to ``timeout_s`` for an assignment (TimeoutError after)."""
        if not self._usable.is_set() and not self._closed:
            await asyncio.wait_for(self._usable.wait(), timeout_s)
        return self.owned_partition()

    def _update_usable(self) -> None:
        if self._closed or self._owned or self._suspended:
            self._usable.set()
        else:
            self._usable.clear()

    # --- waiters -------------------------------------------------------------------------
    def expect(self, correlation_id: str, partition: int) -> asyncio.Future[Reply]:
        """Register a waiter before the request is published (a reply may beat the acknowledgement)."""
        if self._closed:
            raise ReplyConsumerClosed("the reply consumer is closed")
        if correlation_id in self._waiters:
            raise ValueError(f"already waiting for {correlation_id}")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiters[correlation_id] = _Waiter(partition, future)
        return future

    def watch_partials(self, correlation_id: str, partials: asyncio.Queue[Reply]) -> None:
        """Deliver the partial replies of an expected request (``metadata.partial``) to ``partials``."""
        waiter = self._waiters.get(correlation_id)
        if waiter is None:
            raise KeyError(f"not waiting for {correlation_id}")
        waiter.partials = partials

    def discard(self, correlation_id: str) -> None:
        """Stop waiting (deadline passed, publish failed); a reply arriving later counts as late."""
        waiter = self._waiters.pop(correlation_id, None)
        if waiter is not None and not waiter.future.done():
            waiter.future.cancel()

    def resolve(self, correlation_id: str, reply: Reply) -> bool:
        """Hand a reply to its waiter; False (and counted as late) when nobody waits for it. A partial
        reply goes to the waiter's partials queue and leaves the waiter waiting for the final one."""
        if is_partial(reply):
            streaming = self._waiters.get(correlation_id)
            if streaming is None or streaming.partials is None or streaming.future.done():
                return False  # nobody streams it: the final reply carries the whole result anyway
            streaming.partials.put_nowait(reply)
            return True
        waiter = self._waiters.pop(correlation_id, None)
        if waiter is None or waiter.future.done():
            self.late_replies += 1
            LATE_REPLIES.inc()
            log.debug("dropping late reply %s", correlation_id)
            return False
        waiter.future.set_result(reply)
        return True

    def _fail(self, partitions: Iterable[int], error: Exception | None = None) -> int:
        gone = set(partitions)
        failed = 0
        for correlation_id, waiter in list(self._waiters.items()):
            if waiter.partition not in gone:
                continue
            del self._waiters[correlation_id]
            if not waiter.future.done():
                waiter.future.set_exception(error or ReplyPartitionRevoked(waiter.partition))
                failed += 1
        if failed and error is None:
            self.revoked_waiters += failed
            REVOKED_WAITERS.inc(failed)
        return failed

    def fail_all(self, error: Exception) -> None:
        self._fail({w.partition for w in self._waiters.values()}, error)

    # --- membership (called on the loop, in the order the consumer saw it) -------------
    def assigned(self, partitions: Iterable[int]) -> None:
        """The full new assignment: waiters on suspended partitions that did not come back fail."""
        new = sorted(set(partitions))
        lost = set(self._suspended) - set(new)
        self._owned, self._suspended = new, []
        self._cancel_grace()
        if lost:
            failed = self._fail(lost)
            log.info("responses partitions %s moved to another replica; %d waiter(s) re-routed", sorted(lost), failed)
        log.info("owning responses partitions %s", new)
        self._update_usable()

    def revoked(self, partitions: Iterable[int]) -> None:
        """Suspend: keep waiters and keep naming these partitions until the assignment says otherwise."""
        revoked = set(partitions)
        self._suspended = sorted(set(self._suspended) | revoked)
        self._owned = [p for p in self._owned if p not in revoked]
        self._cancel_grace()
        if self._suspended:
            self._grace = asyncio.get_running_loop().call_later(self.suspend_grace_s, self._grace_expired)
        self._update_usable()

    def lost(self, partitions: Iterable[int]) -> None:
        """Partitions taken away without a clean revoke (session lost): their replies go elsewhere."""
        gone = set(partitions)
        self._owned = [p for p in self._owned if p not in gone]
        self._suspended = [p for p in self._suspended if p not in gone]
        self._fail(gone)
        self._update_usable()

    def _grace_expired(self) -> None:
        self._grace = None
        if self._suspended:
            log.warning("no new assignment %.0fs after a revoke; failing waiters on %s",
                        self.suspend_grace_s, self._suspended)
            suspended, self._suspended = self._suspended, []
            self._fail(suspended)
        self._update_usable()

    def _cancel_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    def probe(self) -> str | ProbeResult:
        """Health detail (core/health.py): which partitions this replica answers on."""
        owned, suspended = self.owned, self.suspended
        detail = (f"owning responses partitions {list(owned)}; suspended {list(suspended)}; "
                  f"{self.waiting} waiting; {self.revoked_waiters} re-routed after a rebalance; "
                  f"{self.late_replies} late replies dropped")
        return detail if owned else degraded(detail)

    def close_waiters(self) -> None:
        """Stop naming partitions and fail every waiter (shutdown)."""
        self._closed = True
        self._cancel_grace()
        self.fail_all(ReplyConsumerClosed("the ingress is shutting down"))
        self._update_usable()


class ReplyConsumer(ReplyTable):
    """``ReplyTable`` fed by one confluent-kafka consumer (background thread) per ingress process."""

    def __init__(self, settings: Settings, *, codec: Codec | None = None,
                 dead_letters: DeadLetterRouter | None = None, client_id: str | None = None) -> None:
        super().__init__(suspend_grace_s=max(5.0, 3 * settings.session_timeout_ms / 1000))
        self.settings = settings
        self.codec = codec or Codec()
        self.dead_letters = dead_letters
        self.topic = INFERENCE_RESPONSES.full_name(settings)
        self.group_id = REPLY_GROUP.full_id(settings)
        self.client_id = client_id or f"tributary-ingress-replies-{socket.gethostname()}-{os.getpid()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Consumer | None = None
        # Consumer-thread state: the next offset to read per partition we hold or held at the last revoke.
        self._positions: dict[int, int] = {}
        self._committed: dict[int, int] = {}  # what we last committed, per partition of this assignment
        self._next_commit = 0.0

    @property
    def subscriptions(self) -> list[str]:
        """The topics the reply group's consumer subscribes to."""
        return [self.topic]

    def consumer_config(self) -> dict[str, Any]:
        # The group only spreads partitions across replicas; positions are set on assignment. Eager
        # round-robin: the revoke/resume handling above is written for it (cooperative-sticky would need
        # incremental assign callbacks).
        return {**group_member_config(self.settings, self.group_id, self.client_id, offset_reset="latest",
                                      fetch_wait_ms=self.settings.fetch_max_wait_ms),
                "on_commit": self._on_commit}

    async def start(self, timeout_s: float | None = None) -> bool:
        """Join the group and wait for the first assignment; False if none came within the timeout."""
        self._loop = asyncio.get_running_loop()
        self._consumer = Consumer(self.consumer_config())
        self._consumer.subscribe(self.subscriptions, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)
        self._thread = threading.Thread(target=self._run, name="ingress-replies", daemon=True)
        self._thread.start()
        try:
            await self.wait_for_partition(timeout_s or self.settings.reply_assignment_timeout_s)
        except TimeoutError:
            log.warning("no responses partition assigned within %.0fs; sync inference answers 503 until one is",
                        timeout_s or self.settings.reply_assignment_timeout_s)
            return False
        return True

    async def close(self) -> None:
        self.close_waiters()
        self._stop.set()
        if self._thread is not None:
            # Leaving the group hands our partitions to the other replicas at once.
            await asyncio.to_thread(self._thread.join, 15)

    # --- consumer thread -------------------------------------------------------------------
    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._stop.is_set():
                first = consumer.poll(0.1)
                if first is not None:
                    # poll() returns on the first message; drain what is already fetched without waiting.
                    for message in [first, *consumer.consume(499, 0)]:
                        self._handle(message)
                self._commit_positions(consumer)
        except Exception:
            log.exception("reply consumer failed")
        finally:
            with contextlib.suppress(Exception):  # best effort: leaving the group matters more
                self._commit_positions(consumer, force=True)
            try:
                consumer.close()
            except Exception:
                log.exception("closing the reply consumer failed")

    def _commit_positions(self, consumer: Consumer, *, force: bool = False) -> None:
        """Commit what changed of our read positions on the partitions we hold (for lag reports only)."""
        now = time.monotonic()
        if not force and now < self._next_commit:
            return
        self._next_commit = now + COMMIT_INTERVAL_S
        held = {tp.partition for tp in consumer.assignment()}
        offsets = [TopicPartition(self.topic, p, o) for p, o in self._positions.items()
                   if p in held and self._committed.get(p) != o]
        if not offsets:
            return
        try:
            # Asynchronous: a slow or absent coordinator must never hold up the replies.
            consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.debug("reply offsets not committed: %s", exc)

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Consumer thread (from poll): remember what the broker took; a failure is retried next interval."""
        if error is not None:
            log.debug("reply offsets not committed: %s", error)
            return
        for tp in partitions:
            if tp.error is None and tp.topic == self.topic:
                self._committed[tp.partition] = tp.offset

    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody is waiting any more
            loop.call_soon_threadsafe(fn, *args)

    def _handle(self, message: Message) -> None:
        if not is_record(message, log, "reply consumer"):
            return
        partition, offset = message.partition() or 0, message.offset() or 0
        self._positions[partition] = offset + 1
        try:
            decoded = self.codec.decode(message.value())
            if decoded.message_type != MessageType.INFERENCE_RESPONSE:
                raise TypeError(f"{decoded.message_type} on the responses topic")
            correlation_id = str(decoded.record["correlation_id"])
        except (DecodeError, TypeError, KeyError) as exc:
            UNDECODABLE_REPLIES.inc()
            self._dead_letter(message, exc)
            return
        if decoded.record.get("job_id") and decoded.record.get("reply_partition") is None:
            return  # an async job's result: for the job store and other consumers, nobody waits here
        self._call(self.resolve, correlation_id, decoded.record)

    def _dead_letter(self, message: Message, error: Exception) -> None:
        loop, router = self._loop, self.dead_letters
        if loop is None or router is None:
            log.error("dropping undecodable reply at %s[%s]@%s: %s", message.topic(), message.partition(),
                      message.offset(), error)
            return
        future = asyncio.run_coroutine_threadsafe(router.send(from_confluent(message), error, 1), loop)

        def report(done: concurrent.futures.Future[None]) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.error("dead-lettering a reply failed: %s", done.exception())

        future.add_done_callback(report)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Fix every start offset *before* the loop hands the partition out: resume where we were
        # for partitions we get back, the log end for new ones.
        positioned = []
        for tp in partitions:
            offset = self._positions.get(tp.partition)
            if offset is None:
                try:
                    _, offset = consumer.get_watermark_offsets(TopicPartition(self.topic, tp.partition), timeout=5)
                except KafkaException as exc:
                    log.warning("no log end for responses partition %d (%s); starting at the end", tp.partition, exc)
                    offset = -1  # OFFSET_END
            positioned.append(TopicPartition(self.topic, tp.partition, offset))
        consumer.assign(positioned)
        self._positions = {tp.partition: tp.offset for tp in positioned if tp.offset >= 0}
        self._committed = {}  # another member may have committed meanwhile: report ours afresh
        self._call(self.assigned, [tp.partition for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._call(self.revoked, [tp.partition for tp in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._positions.pop(tp.partition, None)
        self._call(self.lost, [tp.partition for tp in partitions])
