"""DynamicBatcher: batch size and wait limits, per-request isolation, batching off, deadlines."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from consumers.inference.batching import BatchObservation, DynamicBatcher
from consumers.inference.errors import (
    BatcherClosedError,
    InferenceTimeoutError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotLoadedError,
    ModelUnavailableError,
    QueueFullError,
)
from consumers.inference.runtime import JsonDict, ModelRuntime

pytestmark = pytest.mark.unit


class EchoRuntime(ModelRuntime):
    """Doubles ``x``; any batch holding ``{"bad": True}`` fails as a whole, like a real model would."""

    task_type = "tensor"

    def __init__(self, model_id: str = "echo", *, delay_s: float = 0.0, error: Exception | None = None) -> None:
        super().__init__(model_id)
        self.delay_s = delay_s
        self.error = error
        self.batches: list[int] = []
        self.gate: threading.Event | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return True

    @property
    def memory_bytes(self) -> int:
        return 1

    def load(self) -> None:
        return None

    def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        if self.gate is not None:
            self.gate.wait(5)
        with self._lock:
            self.batches.append(len(inputs))
        time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        if any(item.get("bad") for item in inputs):
            raise InvalidInputError("bad input")
        return [{"y": item["x"] * 2} for item in inputs]

    def close(self) -> None:
        return None


def make(runtime: ModelRuntime, *, max_batch_size: int, max_wait_ms: float,
         eager_when_idle: bool = False) -> tuple[DynamicBatcher, list[BatchObservation]]:
    observations: list[BatchObservation] = []
    batcher = DynamicBatcher(lambda model_id: runtime, on_batch=observations.append,
                             max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                             eager_when_idle=eager_when_idle)
    return batcher, observations


def results(futures: list[Future[JsonDict]]) -> list[JsonDict]:
    return [f.result(timeout=5) for f in futures]


def test_batches_fill_up_to_max_size_and_each_caller_gets_its_own_output() -> None:
    runtime = EchoRuntime()
    batcher, observations = make(runtime, max_batch_size=8, max_wait_ms=300)
    with batcher:
        futures = [batcher.submit("echo", {"x": i}) for i in range(20)]
        assert results(futures) == [{"y": 2 * i} for i in range(20)]
    assert runtime.batches == [8, 8, 4]
    assert [o.size for o in observations] == [8, 8, 4]
    assert not any(o.fallback for o in observations)


def test_a_partial_batch_runs_when_the_oldest_request_has_waited_max_wait() -> None:
    runtime = EchoRuntime()
    batcher, observations = make(runtime, max_batch_size=64, max_wait_ms=80)
    with batcher:
        started = time.monotonic()
        futures = [batcher.submit("echo", {"x": i}) for i in range(3)]
        results(futures)
        elapsed = time.monotonic() - started
    assert runtime.batches == [3]
    assert 0.075 <= elapsed < 1.0
    assert observations[0].queue_wait_s >= 0.075


def test_requests_arriving_while_a_batch_runs_form_the_next_batch() -> None:
    runtime = EchoRuntime()
    runtime.gate = threading.Event()
    batcher, _ = make(runtime, max_batch_size=4, max_wait_ms=0)
    with batcher:
        first = batcher.submit("echo", {"x": 0})
        deadline = time.monotonic() + 5
        while batcher.queue_depth("echo") and time.monotonic() < deadline:
            time.sleep(0.001)
        rest = [batcher.submit("echo", {"x": i}) for i in range(1, 6)]
        runtime.gate.set()
        results([first, *rest])
    assert runtime.batches == [1, 4, 1]


def test_one_bad_input_fails_only_its_own_request() -> None:
    runtime = EchoRuntime()
    batcher, observations = make(runtime, max_batch_size=5, max_wait_ms=200)
    with batcher:
        futures = [batcher.submit("echo", {"x": i, "bad": i == 2}) for i in range(5)]
        for i, future in enumerate(futures):
            if i == 2:
                with pytest.raises(InvalidInputError):
                    future.result(timeout=5)
            else:
                assert future.result(timeout=5) == {"y": 2 * i}
    assert runtime.batches == [5, 1, 1, 1, 1, 1]  # the batch, then each request alone
    assert observations[0].fallback and observations[0].failed == 1 and observations[0].size == 5


def test_model_level_errors_are_not_retried_per_request() -> None:
    runtime = EchoRuntime(error=ModelUnavailableError("no weights"))
    batcher, observations = make(runtime, max_batch_size=4, max_wait_ms=200)
    with batcher:
        futures = [batcher.submit("echo", {"x": i}) for i in range(4)]
        for future in futures:
            with pytest.raises(ModelUnavailableError):
                future.result(timeout=5)
    assert runtime.batches == [4]
    assert observations[0].failed == 4 and not observations[0].fallback


def test_batching_off_runs_every_request_alone_without_waiting() -> None:
    runtime = EchoRuntime()
    batcher, observations = make(runtime, max_batch_size=1, max_wait_ms=1000)
    assert not batcher.batching
    with batcher:
        started = time.monotonic()
        futures = [batcher.submit("echo", {"x": i}) for i in range(10)]
        assert results(futures) == [{"y": 2 * i} for i in range(10)]
        elapsed = time.monotonic() - started
    assert runtime.batches == [1] * 10
    assert {o.size for o in observations} == {1}
    assert elapsed < 0.5  # max_wait is irrelevant when a batch is full at one request


def test_models_are_batched_separately() -> None:
    runtimes = {"a": EchoRuntime("a"), "b": EchoRuntime("b")}
    batcher = DynamicBatcher(runtimes.__getitem__, max_batch_size=8, max_wait_ms=50)
    with batcher:
        futures = [batcher.submit(name, {"x": i}) for i in range(3) for name in "ab"]
        results(futures)
    assert runtimes["a"].batches == [3] and runtimes["b"].batches == [3]


def test_expired_and_cancelled_requests_are_not_run() -> None:
    runtime = EchoRuntime()
    runtime.gate = threading.Event()
    batcher, observations = make(runtime, max_batch_size=8, max_wait_ms=0)
    with batcher:
        blocker = batcher.submit("echo", {"x": 0})
        deadline = time.monotonic() + 5
        while batcher.queue_depth("echo") and time.monotonic() < deadline:
            time.sleep(0.001)
        expired = batcher.submit("echo", {"x": 1}, deadline=time.monotonic() - 0.01)
        cancelled = batcher.submit("echo", {"x": 2})
        assert cancelled.cancel()
        alive = batcher.submit("echo", {"x": 3})
        runtime.gate.set()
        assert blocker.result(timeout=5) == {"y": 0}
        assert alive.result(timeout=5) == {"y": 6}
        with pytest.raises(InferenceTimeoutError) as raised:
            expired.result(timeout=5)
        assert raised.value.code == "INFERENCE_TIMEOUT"
    assert runtime.batches == [1, 1]
    assert observations[1].expired == 1


def test_resolve_failure_fails_every_request_of_the_batch() -> None:
    def resolve(model_id: str) -> ModelRuntime:
        raise ModelNotFoundError(f"model {model_id!r} not found")

    with DynamicBatcher(resolve, max_batch_size=4, max_wait_ms=50) as batcher:
        futures = [batcher.submit("ghost", {"x": i}) for i in range(3)]
        for future in futures:
            with pytest.raises(ModelNotFoundError):
                future.result(timeout=5)


def test_a_model_evicted_between_resolve_and_call_is_resolved_again() -> None:
    evicted, fresh = EchoRuntime(error=ModelNotLoadedError("closed")), EchoRuntime()
    resolved: list[ModelRuntime] = []

    def resolve(model_id: str) -> ModelRuntime:
        runtime = evicted if not resolved else fresh
        resolved.append(runtime)
        return runtime

    with DynamicBatcher(resolve, max_batch_size=2, max_wait_ms=50) as batcher:
        futures = [batcher.submit("m", {"x": i}) for i in range(2)]
        assert results(futures) == [{"y": 0}, {"y": 2}]
    assert resolved == [evicted, fresh] and fresh.batches == [2]


def test_queue_limit_and_close() -> None:
    runtime = EchoRuntime()
    runtime.gate = threading.Event()
    batcher = DynamicBatcher(lambda _: runtime, max_batch_size=1, max_wait_ms=0, max_queue=2)
    running = batcher.submit("echo", {"x": 0})
    deadline = time.monotonic() + 5
    while batcher.queue_depth("echo") and time.monotonic() < deadline:
        time.sleep(0.001)
    queued = [batcher.submit("echo", {"x": i}) for i in (1, 2)]
    with pytest.raises(QueueFullError):
        batcher.submit("echo", {"x": 3}).result(timeout=5)
    assert batcher.queue_depth() == 2

    closer = threading.Thread(target=batcher.close, kwargs={"drain": False})
    closer.start()
    runtime.gate.set()
    closer.join(5)
    assert running.result(timeout=5) == {"y": 0}
    for future in queued:
        with pytest.raises(BatcherClosedError):
            future.result(timeout=5)
    with pytest.raises(BatcherClosedError):
        batcher.submit("echo", {"x": 4}).result(timeout=5)


def test_close_drains_queued_requests_by_default() -> None:
    runtime = EchoRuntime(delay_s=0.05)
    batcher = DynamicBatcher(lambda _: runtime, max_batch_size=2, max_wait_ms=1000)
    futures = [batcher.submit("echo", {"x": i}) for i in range(5)]
    batcher.close()
    assert results(futures) == [{"y": 2 * i} for i in range(5)]


def test_idle_worker_thread_exits_and_restarts_on_demand() -> None:
    runtime = EchoRuntime()
    batcher = DynamicBatcher(lambda _: runtime, max_batch_size=4, max_wait_ms=0, idle_timeout_s=0.05)
    assert batcher.infer("echo", {"x": 1}, timeout=5) == {"y": 2}
    deadline = time.monotonic() + 5
    while any(t.name == "batcher-echo" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "batcher-echo" for t in threading.enumerate())
    assert batcher.infer("echo", {"x": 2}, timeout=5) == {"y": 4}
    batcher.close()


def test_blocking_infer_times_out_with_inference_timeout() -> None:
    runtime = EchoRuntime()
    runtime.gate = threading.Event()
    with DynamicBatcher(lambda _: runtime, max_batch_size=1, max_wait_ms=0) as batcher:
        with pytest.raises(InferenceTimeoutError):
            batcher.infer("echo", {"x": 1}, timeout=0.05)
        runtime.gate.set()


async def test_infer_async() -> None:
    runtime = EchoRuntime()
    with DynamicBatcher(lambda _: runtime, max_batch_size=4, max_wait_ms=20) as batcher:
        assert await batcher.infer_async("echo", {"x": 21}) == {"y": 42}


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(lambda _: EchoRuntime(), max_batch_size=0)
    with pytest.raises(ValueError):
        DynamicBatcher(lambda _: EchoRuntime(), max_wait_ms=-1)


def test_eager_when_idle_runs_a_lone_request_at_once_and_still_batches_under_load() -> None:
    runtime = EchoRuntime()
    runtime.gate = threading.Event()
    batcher, observations = make(runtime, max_batch_size=8, max_wait_ms=400, eager_when_idle=True)
    with batcher:
        first = batcher.submit("echo", {"x": 0})
        deadline = time.monotonic() + 5
        while batcher.queue_depth("echo") and time.monotonic() < deadline:
            time.sleep(0.001)
        assert batcher.queue_depth("echo") == 0  # taken at once, not held for the 400 ms window
        # While the first request runs, the next ones queue up and go as one batch.
        rest = [batcher.submit("echo", {"x": i}) for i in range(1, 6)]
        runtime.gate.set()
        assert results([first, *rest]) == [{"y": 2 * i} for i in range(6)]
    assert runtime.batches == [1, 5]
    assert observations[0].queue_wait_s < 0.2
