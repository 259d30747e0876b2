"""Dynamic batching: requests for the same model are run together in one ``infer_batch`` call.

Each model gets a queue and a worker thread (started on first use, gone after an idle
period). The worker takes the oldest request, then waits until ``max_batch_size`` requests
are queued or the oldest has waited ``max_wait_ms``, whichever comes first, and runs them as
one batch. ``max_batch_size=1`` switches batching off: every request runs alone at once.
With ``eager_when_idle`` a request that finds the model idle (no batch finished within the last
``max_wait_ms``) runs at once: a lone request pays no batching delay, and under sustained load
the requests that arrive while a batch runs still form the next one.

If a batch call fails, each request is retried alone, so one bad input fails only its own
request. Requests whose deadline has passed are answered with INFERENCE_TIMEOUT without
running; cancelled futures are skipped. Threads (not asyncio) because the model calls block
on CPU; asyncio callers use ``infer_async``, which wraps the same future.

``on_batch`` receives a ``BatchObservation`` after every batch (size, waits, duration), for
the batch-size histogram and queue metrics.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from consumers.inference.errors import (
    BatcherClosedError,
    InferenceFailedError,
    InferenceTimeoutError,
    ModelLoadError,
    ModelNotLoadedError,
    QueueFullError,
)
from consumers.inference.runtime import ModelRuntime

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]
Resolver = Callable[[str], ModelRuntime]
# Errors that say the model, not the input, is at fault: retrying items one by one cannot help.
_MODEL_ERRORS = (ModelLoadError, ModelNotLoadedError)


@dataclass(frozen=True)
class BatchObservation:
    """One batch run: for metrics (batch size histogram, queue wait, inference time)."""

    model_id: str
    size: int
    queue_wait_s: float  # how long the oldest request of the batch waited before it ran
    infer_s: float
    fallback: bool  # the batch call failed and requests ran one by one
    failed: int  # requests of this batch answered with an error
    expired: int  # requests dropped because their deadline had passed


@dataclass
class _Request:
    item: JsonDict
    future: Future[JsonDict]
    enqueued: float
    deadline: float | None


@dataclass
class _ModelQueue:
    condition: threading.Condition
    items: deque[_Request] = field(default_factory=deque)
    thread: threading.Thread | None = None
    last_finished: float = float("-inf")  # monotonic end of the last batch


class DynamicBatcher:
    """Per-model dynamic batching in front of ``ModelRuntime.infer_batch``.

    ``resolve(model_id)`` is called for every batch (typically ``ModelCache.get_or_load``), so
    a model evicted between batches is loaded again rather than used after close.
    """

    def __init__(
        self,
        resolve: Resolver,
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        idle_timeout_s: float = 60.0,
        on_batch: Callable[[BatchObservation], None] | None = None,
        eager_when_idle: bool = False,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1 (1 switches batching off)")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")
        self._resolve = resolve
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.idle_timeout_s = idle_timeout_s
        self._on_batch = on_batch
        self.eager_when_idle = eager_when_idle
        self._lock = threading.Lock()
        self._queues: dict[str, _ModelQueue] = {}
        self._closed = False

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    # -- submitting ------------------------------------------------------------------------

    def submit(self, model_id: str, item: JsonDict, *, deadline: float | None = None) -> Future[JsonDict]:
        """Queue one request; the future resolves to its own output dict or its own error.

        ``deadline`` is a ``time.monotonic()`` instant after which the request is not run.
        """
        future: Future[JsonDict] = Future()
        with self._lock:
            if self._closed:
                future.set_exception(BatcherClosedError("the batcher is closed"))
                return future
            queue = self._queues.get(model_id)
            if queue is None:
                queue = _ModelQueue(threading.Condition(self._lock))
                self._queues[model_id] = queue
            if len(queue.items) >= self.max_queue:
                future.set_exception(QueueFullError(f"{len(queue.items)} requests already queued for {model_id}",
                                                    details={"model_id": model_id, "max_queue": self.max_queue}))
                return future
            queue.items.append(_Request(item, future, time.monotonic(), deadline))
            if queue.thread is None:
                queue.thread = threading.Thread(target=self._work, args=(model_id, queue),
                                                name=f"batcher-{model_id}", daemon=True)
                queue.thread.start()
            queue.condition.notify()
        return future

    def infer(self, model_id: str, item: JsonDict, *, timeout: float | None = None) -> JsonDict:
        """Submit and wait (blocking callers); InferenceTimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        future = self.submit(model_id, item, deadline=deadline)
        try:
            return future.result(timeout)
        except FutureTimeoutError:
            future.cancel()  # skipped if still queued; a running batch completes and is ignored
            raise InferenceTimeoutError(f"no result from {model_id} within {timeout}s",
                                        details={"model_id": model_id}) from None

    async def infer_async(self, model_id: str, item: JsonDict, *, deadline: float | None = None) -> JsonDict:
        """Submit and await (asyncio callers); the model still runs on the batcher's thread."""
        return await asyncio.wrap_future(self.submit(model_id, item, deadline=deadline))

    def queue_depth(self, model_id: str | None = None) -> int:
        """Requests waiting (not yet running), for one model or all."""
        with self._lock:
            if model_id is not None:
                queue = self._queues.get(model_id)
                return len(queue.items) if queue is not None else 0
            return sum(len(q.items) for q in self._queues.values())

    # -- the per-model worker --------------------------------------------------------------

    def _next_batch(self, model_id: str, queue: _ModelQueue) -> list[_Request] | None:
        """Block until a batch is due; None when the worker should exit (idle or closed)."""
        with self._lock:
            while not queue.items:
                if self._closed:
                    queue.thread = None
                    return None
                if not queue.condition.wait(self.idle_timeout_s) and not queue.items:
                    queue.thread = None
                    if self._queues.get(model_id) is queue:
                        del self._queues[model_id]
                    return None
            due = queue.items[0].enqueued + self.max_wait_s
            if self.eager_when_idle and time.monotonic() - queue.last_finished > self.max_wait_s:
                due = 0.0  # idle model: nothing is coming that waiting would batch with this one
            while len(queue.items) < self.max_batch_size and not self._closed:
                remaining = due - time.monotonic()
                if remaining <= 0:
                    break
                queue.condition.wait(remaining)
            count = min(self.max_batch_size, len(queue.items))
            return [queue.items.popleft() for _ in range(count)]

    def _work(self, model_id: str, queue: _ModelQueue) -> None:
        while True:
            batch = self._next_batch(model_id, queue)
            if batch is None:
                return
            try:
                self._run(model_id, batch)
            except BaseException as exc:  # never leave a caller waiting forever
                log.exception("batch for %s failed unexpectedly", model_id)
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
            finally:
                queue.last_finished = time.monotonic()

    def _call(self, model_id: str, runtime: ModelRuntime, items: list[JsonDict]) -> tuple[ModelRuntime, list[JsonDict]]:
        try:
            outputs = runtime.infer_batch(items)
        except ModelNotLoadedError:
            # Evicted between resolve and call: load it again, once.
            runtime = self._resolve(model_id)
            outputs = runtime.infer_batch(items)
        if len(outputs) != len(items):
            raise InferenceFailedError(f"model {model_id} returned {len(outputs)} outputs for {len(items)} inputs")
        return runtime, outputs

    def _run(self, model_id: str, batch: list[_Request]) -> None:
        started = time.monotonic()
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        expired = [r for r in live if r.deadline is not None and r.deadline <= started]
        for request in expired:
            request.future.set_exception(InferenceTimeoutError(
                f"deadline passed {started - (request.deadline or started):.3f}s before the request could run",
                details={"model_id": model_id, "queued_s": round(started - request.enqueued, 6)}))
        live = [r for r in live if r not in expired]
        if not live:
            return
        clock = time.perf_counter()
        failed, fallback = self._run_live(model_id, live)
        self._observe(BatchObservation(model_id, len(live), started - live[0].enqueued, time.perf_counter() - clock,
                                       fallback, failed, len(expired)))

    def _run_live(self, model_id: str, live: list[_Request]) -> tuple[int, bool]:
        """Complete every request of ``live``; returns (requests failed, whether it fell back)."""
        try:
            runtime = self._resolve(model_id)
        except Exception as exc:  # not found, load failed, no memory: the same answer for every request
            for request in live:
                request.future.set_exception(exc)
            return len(live), False
        try:
            runtime, outputs = self._call(model_id, runtime, [r.item for r in live])
        except Exception as exc:
            if len(live) == 1 or isinstance(exc, _MODEL_ERRORS):
                for request in live:
                    request.future.set_exception(exc)
                return len(live), False
            log.info("batch of %d for %s failed (%s: %s); running its requests one by one",
                     len(live), model_id, type(exc).__name__, exc)
            return self._run_one_by_one(model_id, runtime, live), True
        for request, output in zip(live, outputs, strict=True):
            request.future.set_result(output)
        return 0, False

    def _run_one_by_one(self, model_id: str, runtime: ModelRuntime, live: list[_Request]) -> int:
        failed = 0
        for request in live:
            try:
                runtime, outputs = self._call(model_id, runtime, [request.item])
            except Exception as exc:
                request.future.set_exception(exc)
                failed += 1
            else:
                request.future.set_result(outputs[0])
        return failed

    def _observe(self, observation: BatchObservation) -> None:
        if self._on_batch is None:
            return
        try:
            self._on_batch(observation)
        except Exception:
            log.exception("batch observer failed")

    # -- shutdown --------------------------------------------------------------------------

    def close(self, *, drain: bool = True, timeout: float | None = 10.0) -> None:
        """Stop taking requests. ``drain`` runs what is queued; otherwise queued requests fail."""
        with self._lock:
            self._closed = True
            dropped: list[_Request] = []
            if not drain:
                for queue in self._queues.values():
                    dropped.extend(queue.items)
                    queue.items.clear()
            threads = [q.thread for q in self._queues.values() if q.thread is not None]
            for queue in self._queues.values():
                queue.condition.notify_all()
        for request in dropped:
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(BatcherClosedError("the batcher closed before the request ran"))
        for thread in threads:
            thread.join(timeout)

    def __enter__(self) -> DynamicBatcher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
