"""Inference worker: ``tributary worker --priority high|medium|low`` runs ``main(settings, priority)``.

One process is one member of its priority's consumer group (``inference-workers-<p>``). It
reads ``inference_request`` messages, runs them through ``ModelCache`` + ``BuiltinModels`` +
``DynamicBatcher`` (batches per model) and produces one ``inference_response`` per request to
the responses partition the request names, with the same ``correlation_id``.

- At-least-once: an offset is committed only once its reply (or dead letter) is acknowledged
  by the broker. Requests run concurrently, so only the contiguous prefix of finished offsets
  of each partition is committed (``OffsetTracker``); a crash re-delivers the rest and the
  ingress drops the duplicate replies as late.
- A request whose deadline has passed is answered ``INFERENCE_TIMEOUT`` without running.
- Undecodable messages go to the group's dead-letter topic and the next one is served.
- SIGTERM: stop fetching, finish what is in flight, commit, leave the group, close.
- Models come from ``ModelFactory``: built-ins first, else the catalog (``consumers/inference/catalog.py``).
- Model commands: every process reads every ``load``/``unload`` command (``assign()`` on all
  partitions of the commands topic from the end, no group, no commits: a broadcast) and applies
  it to its cache (``consumers/inference/commands.py``); bad commands go to the group's dead letters.
- Residency: the cache's lifecycle events become this process's rows in ``model_residency``
  (``consumers/inference/residency.py``), refreshed every third of their TTL and deleted at shutdown.

``InferenceRequestHandler`` holds the request -> response logic and needs no Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import start_http_server

from consumers.inference.batching import DynamicBatcher
from consumers.inference.builtin import BuiltinModels
from consumers.inference.cache import ModelCache
from consumers.inference.carbon import BatchCarbon, CarbonRecorder
from consumers.inference.catalog import CatalogModels, ModelFactory
from consumers.inference.commands import ModelCommandHandler
from consumers.inference.errors import InferenceError
from consumers.inference.jobs import JobRunner
from consumers.inference.residency import ResidencyReporter
from consumers.inference.runtime import JsonDict, ModelRuntime
from consumers.inference.textgen import ON_DELTA, attach_carbon
from core.artifacts import ArtifactStore, S3ArtifactStore
from core.carbon import PowerModel
from core.cassandra.session import connect
from core.cassandra_carbon import CassandraCarbonStore
from core.claimcheck import INPUT_REFERENCE_INVALID, ClaimCheck, ClaimCheckError
from core.events import lifecycle_record
from core.fleet.cassandra_store import CassandraFleetStore
from core.fleet.store import FleetStore
from core.logs import configure, correlation_id_var, trace_id_var
from core.serving.cassandra_jobs import CassandraJobStore
from core.serving.cassandra_residency import CassandraResidencyStore
from core.serving.jobs import JobStore
from core.serving.metrics import MODEL_EVENTS, WORKER_REQUESTS, observe_batch
from core.serving.residency import ResidencyStore
from core.shutdown import arm_shutdown_deadline
from messaging.dead_letter import DeadLetterRouter, RawMessage, from_confluent, is_record
from messaging.group_member import group_member_config
from producers.events import KafkaEventSink, instance_name
from producers.publisher import Publisher
from schemas.clock import utcnow
from schemas.codec import Codec
from settings import Settings
from topology.groups import inference_group
from topology.messages import MessageType
from topology.topics import INFERENCE_REQUESTS, MODEL_COMMANDS, Priority

log = logging.getLogger(__name__)

# Private key the timing wrapper adds to each output; the handler moves it into metadata.
BATCH_META = "__tributary_batch__"
# A model that runs past the deadline is still awaited this long before the request is answered.
OVERRUN_GRACE_S = 30.0
# Share of the shutdown bound spent finishing in-flight requests (the rest: commit, leave, close).
DRAIN_SHARE = 0.6



# ---------------------------------------------------------------------------------------------
# Request -> response, without Kafka


class Runner(Protocol):
    """Runs one request's input on a model (``DynamicBatcher`` in production)."""

    async def infer_async(self, model_id: str, item: JsonDict, *, deadline: float | None = None) -> JsonDict: ...


class TimedRuntime(ModelRuntime):
    """Delegates to a loaded runtime and tags each output with its batch size and inference time,
    and, with ``carbon``, the energy and emissions of the batch split evenly over its requests
    (``carbon_emissions_g`` in the seed 003 shapes, ``energy_kwh``/``carbon_emissions_g`` in metadata)."""

    def __init__(self, inner: ModelRuntime, carbon: BatchCarbon | None = None) -> None:
        super().__init__(inner.model_id)
        self.inner = inner
        self.task_type = inner.task_type
        self.carbon = carbon

    @property
    def loaded(self) -> bool:
        return self.inner.loaded

    @property
    def memory_bytes(self) -> int:
        return self.inner.memory_bytes

    def load(self) -> None:
        self.inner.load()

    def close(self) -> None:
        self.inner.close()

    def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        token = self.carbon.start() if self.carbon is not None else None
        started = time.perf_counter()
        try:
            outputs = self.inner.infer_batch(inputs)
        except BaseException:
            if self.carbon is not None and token is not None:  # the energy was spent all the same
                self.carbon.finish(token, self.model_id, requests=0)
            raise
        meta: dict[str, Any] = {"batch_size": len(inputs),
                                "inference_time_ms": round((time.perf_counter() - started) * 1000.0, 3)}
        if self.carbon is None or token is None or not outputs:
            return [{**output, BATCH_META: meta} for output in outputs]
        measurement = self.carbon.finish(token, self.model_id, requests=len(outputs))
        grams, kwh = measurement.emissions_g / len(outputs), measurement.energy_kwh / len(outputs)
        meta = {**meta, "energy_kwh": kwh, "carbon_emissions_g": grams}
        return [{**attach_carbon(output, grams), BATCH_META: meta} for output in outputs]


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


class InferenceRequestHandler:
    """Turns one ``inference_request`` record into its ``inference_response`` record.

    Never raises for what the model or the input got wrong: those become failure replies
    with the seed's error code. Only undecodable payloads raise (they are dead-lettered).
    """

    def __init__(self, runner: Runner, *, worker: str, codec: Codec | None = None,
                 clock: Callable[[], datetime] = utcnow, device: str = "cpu",
                 overrun_grace_s: float = OVERRUN_GRACE_S, claims: ClaimCheck | None = None) -> None:
        self.runner = runner
        self.claims = claims  # resolves inputs that ride S3 (input_ref)
        self.worker = worker
        self.codec = codec or Codec()
        self.clock = clock
        self.device = device
        self.overrun_grace_s = overrun_grace_s
        self.expired = 0

    def decode(self, payload: bytes | None) -> dict[str, Any]:
        """The request record; DecodeError or TypeError for what does not belong here."""
        decoded = self.codec.decode(payload)
        if decoded.message_type != MessageType.INFERENCE_REQUEST:
            raise TypeError(f"inference workers do not handle {decoded.message_type}")
        return decoded.record

    async def respond(self, payload: bytes | None) -> dict[str, Any]:
        return await self.answer(self.decode(payload))

    def _reply(self, request: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return {"correlation_id": request["correlation_id"], "causation_id": request["message_id"],
                "trace_id": request.get("trace_id") or request["correlation_id"], "model_id": request["model_id"],
                "job_id": request.get("job_id"), "reply_partition": request.get("reply_partition"), **fields}

    def failure(self, request: dict[str, Any], code: str, message: str, **metadata: Any) -> dict[str, Any]:
        return self._reply(request, status="failure", error={"code": code, "message": message[:2000]},
                           metadata={"worker": self.worker, "device": self.device, **metadata})

    def _deltas(self, request: dict[str, Any],
                on_partial: Callable[[dict[str, Any]], None]) -> Callable[[int, str], None]:
        """What a streamed txt2txt request's model calls with each finished sentence (on the batcher's
        thread): a partial reply (``metadata.partial``, ``metadata.sequence``) handed to the loop."""
        loop = asyncio.get_running_loop()

        def on_delta(sequence: int, text: str) -> None:
            record = self._reply(request, status="success", output_data={"delta": text},
                                 metadata={"partial": True, "sequence": sequence, "worker": self.worker,
                                           "device": self.device})
            loop.call_soon_threadsafe(on_partial, record)

        return on_delta

    async def answer(self, request: dict[str, Any],
                     on_partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """``on_partial``: where partial replies of a streamed txt2txt request go (sync requests only;
        the final reply, returned, always holds the whole result)."""
        now = self.clock()
        deadline = _aware(request["deadline"])
        queued_ms = round(max(0.0, (now - _aware(request["timestamp"])).total_seconds()) * 1000.0, 3)
        remaining = (deadline - now).total_seconds()
        if remaining <= 0:
            # The caller has given up: answer at once and spend no model time on it.
            self.expired += 1
            return self.failure(request, "INFERENCE_TIMEOUT",
                                f"deadline passed {-remaining:.3f}s before a worker dequeued the request; not run",
                                ran=False, queue_time_ms=queued_ms)
        if request.get("input_ref"):
            try:
                if self.claims is None:
                    raise ClaimCheckError("this worker has no object store for claim checks")
                request = await self.claims.resolve_input(request)
            except ClaimCheckError as exc:
                # Answered here so the caller learns why; ``InferenceWorker`` also dead-letters it.
                return self.failure(request, INPUT_REFERENCE_INVALID, f"the request's input was not run: {exc}",
                                    ran=False, queue_time_ms=queued_ms)
        input_data, parameters = request.get("input_data"), request.get("parameters") or {}
        if not isinstance(input_data, dict) or not isinstance(parameters, dict):
            return self.failure(request, "INVALID_INPUT", "input_data and parameters must be JSON objects",
                                ran=False, queue_time_ms=queued_ms)
        item: JsonDict = {**input_data, "parameters": parameters} if parameters else dict(input_data)
        if on_partial is not None and request.get("task_type") == "txt2txt" and input_data.get("stream") is True:
            item[ON_DELTA] = self._deltas(request, on_partial)
        try:
            output = await asyncio.wait_for(
                self.runner.infer_async(request["model_id"], item, deadline=time.monotonic() + remaining),
                remaining + self.overrun_grace_s)
        except InferenceError as exc:
            return self.failure(request, exc.code, exc.message, queue_time_ms=queued_ms)
        except TimeoutError:
            return self.failure(request, "INFERENCE_TIMEOUT", "the model did not answer in time",
                                queue_time_ms=queued_ms)
        except Exception as exc:  # a runtime bug must still answer the waiting caller
            log.exception("inference of %s failed", request["model_id"])
            return self.failure(request, "INFERENCE_FAILED", f"{type(exc).__name__}: {exc}", queue_time_ms=queued_ms)
        meta = output.pop(BATCH_META, None) or {}
        metadata = {"inference_time_ms": meta.get("inference_time_ms", 0.0), "batch_size": meta.get("batch_size", 1),
                    "device": self.device, "worker": self.worker, "queue_time_ms": queued_ms}
        metadata.update({k: meta[k] for k in ("energy_kwh", "carbon_emissions_g") if k in meta})
        return self._reply(request, status="success", output_data=output, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Offsets


class OffsetTracker:
    """In-flight offsets per partition; only the contiguous finished prefix is committable.

    Thread-safe: tasks finish on the event loop while a revoke waits on the consumer thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._pending: dict[tuple[str, int], OrderedDict[int, bool]] = {}

    def started(self, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            self._pending.setdefault((topic, partition), OrderedDict())[offset] = False

    def finished(self, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            offsets = self._pending.get((topic, partition))
            if offsets is not None and offset in offsets:
                offsets[offset] = True
                self._lock.notify_all()

    def in_flight(self, partitions: Iterable[tuple[str, int]] | None = None) -> int:
        with self._lock:
            keys = self._pending.keys() if partitions is None else set(partitions)
            return sum(1 for key in keys for done in self._pending.get(key, {}).values() if not done)

    def committable(self, partitions: Iterable[tuple[str, int]] | None = None) -> list[tuple[str, int, int]]:
        """(topic, partition, next offset) for each partition whose oldest offsets are finished; pops them."""
        out = []
        with self._lock:
            keys = list(self._pending) if partitions is None else [k for k in partitions if k in self._pending]
            for key in keys:
                offsets = self._pending[key]
                done = [offset for offset, _ in itertools.takewhile(lambda item: item[1], offsets.items())]
                for offset in done:
                    del offsets[offset]
                if done:
                    out.append((key[0], key[1], done[-1] + 1))
        return out

    def wait_idle(self, partitions: Iterable[tuple[str, int]] | None, timeout_s: float) -> bool:
        keys = None if partitions is None else list(partitions)
        with self._lock:
            return self._lock.wait_for(lambda: self._in_flight_locked(keys) == 0, timeout_s)

    def _in_flight_locked(self, keys: list[tuple[str, int]] | None) -> int:
        selected = self._pending.keys() if keys is None else keys
        return sum(1 for key in selected for done in self._pending.get(key, {}).values() if not done)

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        with self._lock:
            for key in partitions:
                self._pending.pop(key, None)


# ---------------------------------------------------------------------------------------------
# The Kafka worker


class InferenceWorker:
    def __init__(self, settings: Settings, priority: Priority) -> None:
        self.settings = settings
        self.drain_timeout_s = settings.shutdown_timeout_s * DRAIN_SHARE
        self.priority = priority
        self.group = inference_group(priority)
        self.group_id = self.group.full_id(settings)
        self.topic = INFERENCE_REQUESTS[priority].full_name(settings)
        service = f"inference-worker-{priority.value}"
        self.instance = instance_name(service)
        self.publisher = Publisher(settings, client_id=f"tributary-{service}")
        self.sink = KafkaEventSink(settings, self.publisher, service=service)
        self.dead_letters = DeadLetterRouter(settings, self.publisher, self.group.group_id)
        self.models = BuiltinModels(settings.data_dir / "models" / "builtin",
                                    intra_op_threads=settings.inference_intra_op_threads)
        self.catalog = CatalogModels(self._fleet_store, self._artifact_store, settings.data_dir / "models" / "catalog",
                                     intra_op_threads=settings.inference_intra_op_threads)
        self.factory = ModelFactory(self.models, self.catalog)
        self.residency = ResidencyReporter(self._residency_store, worker=self.instance,
                                           ttl_s=settings.model_residency_ttl_s, loaded=self._loaded)
        # every batch is measured; its record reaches Cassandra from the recorder's thread
        self.carbon_records = CarbonRecorder(lambda: CassandraCarbonStore(self._session()),
                                             settings.carbon_flush_interval_s)
        self.carbon = BatchCarbon(lambda: PowerModel.from_codecarbon(settings), self.carbon_records)
        self.cache = ModelCache(settings.inference_memory_budget_mb * 1024 * 1024, self.factory,
                                on_event=self._lifecycle)
        self.commands_topic = MODEL_COMMANDS.full_name(settings)
        self.commands = ModelCommandHandler(self.cache, self.residency, worker=self.instance)
        self.batcher = DynamicBatcher(self._resolve, max_batch_size=settings.inference_max_batch_size,
                                      max_wait_ms=settings.inference_max_wait_ms,
                                      max_queue=max(1024, settings.inference_max_in_flight),
                                      eager_when_idle=True,  # a lone request pays no batching delay
                                      on_batch=observe_batch)
        self.claims = ClaimCheck(self._artifact_store, bucket=settings.s3_bucket,
                                 threshold_bytes=settings.inference_claim_check_bytes)
        self.handler = InferenceRequestHandler(self.batcher, worker=self.instance, claims=self.claims)
        self.jobs = JobRunner(self._connect_jobs, self.handler, worker=self.instance, clock=utcnow)
        self._cassandra: Any = None
        self._cassandra_lock = threading.Lock()
        self.tracker = OffsetTracker()
        self.stopping = asyncio.Event()
        self.fatal: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Every consumer call happens on this one thread (librdkafka callbacks included).
        self._kafka = ThreadPoolExecutor(1, thread_name_prefix="kafka-consumer")
        self.consumer = Consumer(self.consumer_config())
        # Model commands: a second consumer outside any group, on its own thread.
        self._commands_kafka = ThreadPoolExecutor(1, thread_name_prefix="kafka-commands")
        self.commands_consumer = Consumer(self.commands_consumer_config())

    @staticmethod
    def subscriptions(settings: Settings, priority: Priority) -> list[str]:
        """The topics the worker's group consumer subscribes to (model commands are assign()ed, no group)."""
        return [INFERENCE_REQUESTS[priority].full_name(settings)]

    def consumer_config(self) -> dict[str, Any]:
        # Offsets committed after the reply is acknowledged; "earliest": a new group must not skip
        # requests sent before it joined.
        return group_member_config(self.settings, self.group_id, f"{self.instance}-{socket.gethostname()}",
                                   offset_reset="earliest", fetch_wait_ms=self.settings.fetch_max_wait_ms)

    def commands_consumer_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.settings.kafka_bootstrap_servers,
            # Required by the client but never joined: partitions are assign()ed, offsets never committed.
            "group.id": f"{self.group_id}.commands.{self.instance}",
            "client.id": f"{self.instance}-commands-{socket.gethostname()}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "fetch.wait.max.ms": self.settings.idle_fetch_max_wait_ms,  # assigned, never rebalanced
        }

    def _session(self) -> Any:
        """One Cassandra session per process (jobs, catalog, residency), connected on first use."""
        with self._cassandra_lock:
            if self._cassandra is None:
                self._cassandra = connect(self.settings, self.settings.cassandra_keyspace)
            return self._cassandra

    def _connect_jobs(self) -> JobStore:
        return CassandraJobStore(self._session())

    def _fleet_store(self) -> FleetStore:
        return CassandraFleetStore(self._session())

    def _artifact_store(self) -> ArtifactStore:
        return S3ArtifactStore(self.settings)

    def _residency_store(self) -> ResidencyStore:
        return CassandraResidencyStore(self._session())

    def _loaded(self) -> list[Any]:
        return self.cache.loaded()

    def _resolve(self, model_id: str) -> ModelRuntime:
        return TimedRuntime(self.cache.get_or_load(model_id), self.carbon)

    def _lifecycle(self, event_type: str, model_id: str, details: dict[str, Any]) -> None:
        """Model cache events (batcher threads) -> residency rows, and the lifecycle topic (fire and forget)."""
        MODEL_EVENTS.labels(event_type).inc()
        self.residency.on_event(event_type, model_id, details)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        record = lifecycle_record(event_type, model_id, worker=self.instance, **details)
        future = asyncio.run_coroutine_threadsafe(
            self.sink.publish(MessageType.LIFECYCLE_EVENT, record), loop)
        future.add_done_callback(lambda f: None if f.cancelled() or f.exception() is None
                                 else log.warning("lifecycle event %s lost: %s", event_type, f.exception()))

    # --- consumer thread --------------------------------------------------------------------
    def _commit(self, partitions: Iterable[tuple[str, int]] | None = None, *, wait: bool = False) -> None:
        offsets = [TopicPartition(t, p, o) for t, p, o in self.tracker.committable(partitions)]
        if not offsets:
            return
        try:
            if wait:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            else:
                self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            # Not committed means re-delivered: at-least-once, the ingress drops the duplicate reply.
            log.warning("commit failed: %s", exc)

    def _poll(self, limit: int) -> list[Message]:
        self._commit()
        first = self.consumer.poll(0.1)
        if first is None:
            return []
        # poll() returns on the first message; take what is already fetched without waiting.
        return [first, *self.consumer.consume(limit - 1, 0)] if limit > 1 else [first]

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", [tp.partition for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        # Finish and commit what we hold before the next owner starts from our committed offset.
        if not self.tracker.wait_idle(keys, self.drain_timeout_s):
            log.warning("%d request(s) still running at revoke; they will be re-delivered",
                        self.tracker.in_flight(keys))
        self._commit(keys, wait=True)
        self.tracker.forget(keys)
        log.info("revoked %s", [tp.partition for tp in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self.tracker.forget(keys)  # another member owns them now: committing would fail anyway
        log.warning("lost %s", [tp.partition for tp in partitions])

    # --- event loop -------------------------------------------------------------------------
    async def _job_event(self, record: dict[str, Any]) -> None:
        await self.sink.publish(MessageType.JOB_EVENT, record)

    async def _process(self, raw: RawMessage) -> None:
        answered = False
        response: dict[str, Any] | None = None
        job_record: dict[str, Any] | None = None

        partials: list[asyncio.Future[Any]] = []

        def publish_partial(record: dict[str, Any]) -> None:
            partials.append(asyncio.ensure_future(self.sink.publish(MessageType.INFERENCE_RESPONSE, record)))

        async def handle(message: RawMessage) -> None:
            nonlocal answered, response, job_record
            if not answered:  # a retry after a failed publish does not run the model again
                request = self.handler.decode(message.value)
                trace_id_var.set(request.get("trace_id"))
                correlation_id_var.set(request.get("correlation_id"))
                if request.get("job_id"):
                    outcome = await self.jobs.run(request, on_claimed=self._job_event)
                    response, job_record = outcome.response, outcome.event
                else:
                    response = await self.handler.answer(request, on_partial=publish_partial)
                    # The final reply goes after its partials (a lost partial costs nothing: the final
                    # reply holds the whole result).
                    await asyncio.gather(*partials, return_exceptions=True)
                if response is not None:
                    result = "success" if response.get("status") == "success" else str(
                        (response.get("error") or {}).get("code") or "INFERENCE_FAILED")
                    WORKER_REQUESTS.labels(str(response.get("model_id")), result).inc()
                    response = await self.claims.offload_output(response)  # a large result rides S3
                answered = True
            if response is not None:
                await self.sink.publish(MessageType.INFERENCE_RESPONSE, response)
            if job_record is not None:
                await self._job_event(job_record)
            error = (response or {}).get("error") or {}
            if error.get("code") == INPUT_REFERENCE_INVALID:
                # The caller has its answer; the message itself is poison: to the dead letters, with why.
                raise ClaimCheckError(str(error.get("message")))

        try:
            await self.dead_letters.process(raw, handle)
        except Exception as exc:  # not even the dead-letter topic took it: stop uncommitted
            log.exception("cannot answer or dead-letter %s[%d]@%d", raw.topic, raw.partition, raw.offset)
            self.fatal = exc
            self.stopping.set()
            return
        self.tracker.finished(raw.topic, raw.partition, raw.offset)

    def _spawn(self, message: Message) -> None:
        if not is_record(message, log, "consumer"):
            return
        raw = from_confluent(message)
        self.tracker.started(raw.topic, raw.partition, raw.offset)
        task = asyncio.create_task(self._process(raw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- model commands (broadcast) ---------------------------------------------------------
    def _assign_commands(self) -> list[int]:
        """Every partition of the commands topic, from its end (thread: the commands executor)."""
        metadata = self.commands_consumer.list_topics(self.commands_topic, timeout=10)
        topic = metadata.topics.get(self.commands_topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"no topic {self.commands_topic}"))
        partitions = sorted(topic.partitions)
        self.commands_consumer.assign([TopicPartition(self.commands_topic, p, OFFSET_END) for p in partitions])
        return partitions

    async def _command_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            try:
                partitions = await loop.run_in_executor(self._commands_kafka, self._assign_commands)
                break
            except KafkaException as exc:
                log.warning("cannot assign %s yet: %s", self.commands_topic, exc)
                await asyncio.sleep(1.0)
        else:
            return
        log.info("listening to model commands on %s%s", self.commands_topic, partitions)
        while not self.stopping.is_set():
            message = await loop.run_in_executor(self._commands_kafka, self.commands_consumer.poll, 1.0)
            if message is None or not is_record(message, log, "commands consumer"):
                continue
            raw = from_confluent(message)

            async def handle(command: RawMessage) -> None:
                await self.commands.handle(self.commands.decode(command.value))

            try:
                await self.dead_letters.process(raw, handle)
            except Exception:  # the dead-letter topic refused it too: log loudly, keep listening
                log.exception("cannot apply or dead-letter model command %s[%d]@%d", raw.topic, raw.partition,
                              raw.offset)

    async def _refresh_residency(self) -> None:
        """Renew this worker's residency rows every third of their TTL."""
        interval = max(1.0, self.settings.model_residency_ttl_s / 3)
        while not self.stopping.is_set():
            await asyncio.to_thread(self.residency.refresh)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), interval)

    async def _preload(self) -> None:
        for model_id in filter(None, (m.strip() for m in self.settings.inference_preload_models.split(","))):
            try:
                await asyncio.to_thread(self.cache.get_or_load, model_id)
                log.info("preloaded %s", model_id)
            except Exception as exc:
                log.warning("preloading %s failed: %s", model_id, exc)

    def _serve_metrics(self) -> None:
        """Prometheus on TRIBUTARY_WORKER_METRICS_PORT + the priority's index (high 0, medium 1, low 2)."""
        if not self.settings.worker_metrics_port:
            return
        port = self.settings.worker_metrics_port + list(Priority).index(self.priority)
        try:
            start_http_server(port, addr=self.settings.api_host)
            log.info("metrics on %s:%d", self.settings.api_host, port)
        except OSError as exc:  # e.g. a second replica on this host: serve without metrics
            log.warning("metrics port %d unavailable: %s", port, exc)

    async def run(self) -> int:
        """Serve until ``stopping`` is set; returns the process exit code."""
        loop = self._loop = asyncio.get_running_loop()
        self._serve_metrics()
        # codecarbon's hardware probe takes seconds: before the first request, not inside it
        await asyncio.to_thread(self.carbon.ready)
        self.carbon_records.start()
        preload = asyncio.create_task(self._preload())
        background = [asyncio.create_task(self._command_loop()), asyncio.create_task(self._refresh_residency())]
        await loop.run_in_executor(self._kafka, lambda: self.consumer.subscribe(
            self.subscriptions(self.settings, self.priority), on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_lost))
        log.info("serving %s as %s", self.topic, self.group_id)
        limit = self.settings.inference_max_in_flight
        try:
            while not self.stopping.is_set():
                free = limit - len(self._tasks)
                if free <= 0:
                    await asyncio.wait(self._tasks, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
                    continue
                for message in await loop.run_in_executor(self._kafka, self._poll, free):
                    self._spawn(message)
        finally:
            await self._shutdown(preload, background)
        return 1 if self.fatal is not None else 0

    async def _shutdown(self, preload: asyncio.Task[None], background: list[asyncio.Task[None]]) -> None:
        preload.cancel()
        self.stopping.set()
        await asyncio.wait(background, timeout=5)
        for task in background:
            task.cancel()
        if self._tasks:
            log.info("finishing %d in-flight request(s)", len(self._tasks))
            await asyncio.wait(self._tasks, timeout=self.drain_timeout_s)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._kafka, lambda: self._commit(wait=True))
        await loop.run_in_executor(self._kafka, self.consumer.close)  # leaves the group at once
        self._kafka.shutdown(wait=True)
        await asyncio.get_running_loop().run_in_executor(self._commands_kafka, self.commands_consumer.close)
        self._commands_kafka.shutdown(wait=True)
        await asyncio.to_thread(self.residency.clear)  # graceful: this worker's rows go at once
        self.batcher.close(drain=False, timeout=5)
        await asyncio.to_thread(self.carbon_records.close)  # the last batches' records
        await asyncio.to_thread(self.publisher.close)
        self.cache.close()
        if self._cassandra is not None:
            await asyncio.to_thread(self._cassandra.cluster.shutdown)
        log.info("stopped")


def main(settings: Settings, priority: Priority) -> int:
    """Serve ``priority``'s requests until SIGTERM/SIGINT; returns the process exit code."""
    configure(f"inference-worker-{priority.value}")

    async def serve() -> int:
        worker = InferenceWorker(settings, priority)
        loop = asyncio.get_running_loop()
        def stop() -> None:
            arm_shutdown_deadline(settings.shutdown_timeout_s)
            worker.stopping.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        return await worker.run()

    return asyncio.run(serve())
