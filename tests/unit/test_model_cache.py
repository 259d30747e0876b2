"""ModelCache: LRU under a memory budget, lifecycle events, single load under concurrency."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from consumers.inference.cache import (
    MODEL_EVICTED,
    MODEL_LOAD_FAILED,
    MODEL_LOAD_REQUESTED,
    MODEL_LOADED,
    MODEL_UNLOADED,
    ModelCache,
)
from consumers.inference.errors import InsufficientMemoryError, ModelLoadError, ModelNotFoundError
from consumers.inference.runtime import JsonDict, ModelRuntime

pytestmark = pytest.mark.unit

MiB = 1024 * 1024


class FakeRuntime(ModelRuntime):
    task_type = "txt2embed"

    def __init__(self, model_id: str, size: int, *, load_s: float = 0.0, fail: bool = False,
                 size_after_load: int | None = None) -> None:
        super().__init__(model_id)
        self.size, self.load_s, self.fail, self.size_after_load = size, load_s, fail, size_after_load
        self.loads = 0
        self.closes = 0
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def memory_bytes(self) -> int:
        if self._loaded and self.size_after_load is not None:
            return self.size_after_load
        return self.size

    def load(self) -> None:
        self.loads += 1
        time.sleep(self.load_s)
        if self.fail:
            raise RuntimeError("corrupt weights")
        self._loaded = True

    def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        return [{} for _ in inputs]

    def close(self) -> None:
        self.closes += 1
        self._loaded = False


class Harness:
    """A loader over declared fake models plus a record of lifecycle events."""

    def __init__(self, budget: int, models: dict[str, dict[str, Any]]) -> None:
        self.models = models
        self.created: dict[str, list[FakeRuntime]] = {}
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.loader_calls = 0
        self._lock = threading.Lock()
        self.cache = ModelCache(budget, self.load, self.record)

    def load(self, model_id: str) -> ModelRuntime:
        with self._lock:
            self.loader_calls += 1
        if model_id not in self.models:
            raise ModelNotFoundError(f"model {model_id!r} not found")
        runtime = FakeRuntime(model_id, **self.models[model_id])
        with self._lock:
            self.created.setdefault(model_id, []).append(runtime)
        return runtime

    def record(self, event_type: str, model_id: str, details: dict[str, Any]) -> None:
        with self._lock:
            self.events.append((event_type, model_id, details))

    def kinds(self, model_id: str | None = None) -> list[tuple[str, str]]:
        return [(kind, mid) for kind, mid, _ in self.events if model_id is None or mid == model_id]


def test_lru_order_and_eviction_under_budget() -> None:
    h = Harness(300 * MiB, {name: {"size": 100 * MiB} for name in "abcd"})
    for name in "abc":
        h.cache.get_or_load(name)
    h.cache.get_or_load("a")  # a becomes most recently used: b is now the oldest
    assert [m.model_id for m in h.cache.loaded()] == ["b", "c", "a"]

    h.events.clear()
    h.cache.get_or_load("d")

    assert [m.model_id for m in h.cache.loaded()] == ["c", "a", "d"]
    assert h.kinds() == [(MODEL_LOAD_REQUESTED, "d"), (MODEL_EVICTED, "b"), (MODEL_LOADED, "d")]
    evicted = h.events[1][2]
    assert evicted["memory_bytes"] == 100 * MiB and evicted["reason"] == "memory_budget"
    assert h.created["b"][0].closes == 1 and not h.created["b"][0].loaded
    assert h.cache.used_bytes == 300 * MiB


def test_eviction_frees_as_many_models_as_needed() -> None:
    h = Harness(300 * MiB, {"a": {"size": 100 * MiB}, "b": {"size": 100 * MiB}, "c": {"size": 100 * MiB},
                            "big": {"size": 250 * MiB}})
    for name in "abc":
        h.cache.get_or_load(name)
    h.cache.get_or_load("big")
    assert [m.model_id for m in h.cache.loaded()] == ["big"]
    assert [mid for kind, mid in h.kinds() if kind == MODEL_EVICTED] == ["a", "b", "c"]


def test_model_larger_than_budget_fails_without_evicting() -> None:
    h = Harness(300 * MiB, {"small": {"size": 100 * MiB}, "huge": {"size": 500 * MiB}})
    h.cache.get_or_load("small")
    h.events.clear()

    with pytest.raises(InsufficientMemoryError) as raised:
        h.cache.get_or_load("huge")

    assert raised.value.code == "INSUFFICIENT_MEMORY"
    assert "500 MiB" in raised.value.message and "300 MiB" in raised.value.message
    assert h.kinds() == [(MODEL_LOAD_REQUESTED, "huge"), (MODEL_LOAD_FAILED, "huge")]
    assert h.events[1][2]["error_code"] == "INSUFFICIENT_MEMORY"
    assert h.created["huge"][0].loads == 0  # refused before reading any weights
    assert [m.model_id for m in h.cache.loaded()] == ["small"]


def test_concurrent_get_or_load_loads_once() -> None:
    h = Harness(300 * MiB, {"m": {"size": 100 * MiB, "load_s": 0.3}})
    barrier = threading.Barrier(8)
    results: list[ModelRuntime] = []
    lock = threading.Lock()

    def call() -> None:
        barrier.wait()
        runtime = h.cache.get_or_load("m")
        with lock:
            results.append(runtime)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert len(results) == 8 and all(r is results[0] for r in results)
    assert h.loader_calls == 1 and h.created["m"][0].loads == 1
    assert h.kinds() == [(MODEL_LOAD_REQUESTED, "m"), (MODEL_LOADED, "m")]
    assert h.cache.loaded()[0].uses == 8


def test_concurrent_waiters_share_a_load_failure_and_a_later_call_retries() -> None:
    h = Harness(300 * MiB, {"m": {"size": 100 * MiB, "load_s": 0.2, "fail": True}})
    errors: list[BaseException] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            h.cache.get_or_load("m")
        except ModelLoadError as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert len(errors) == 4 and h.loader_calls == 1
    assert h.kinds() == [(MODEL_LOAD_REQUESTED, "m"), (MODEL_LOAD_FAILED, "m")]
    details = h.events[1][2]
    assert details["error_code"] == "MODEL_LOAD_FAILED" and "corrupt weights" in details["error"]
    assert h.cache.used_bytes == 0  # the reservation was released

    with pytest.raises(ModelLoadError):
        h.cache.get_or_load("m")
    assert h.loader_calls == 2  # a failure is not cached


def test_unknown_model_fails_with_model_not_found() -> None:
    h = Harness(300 * MiB, {})
    with pytest.raises(ModelNotFoundError):
        h.cache.get_or_load("nope")
    assert h.kinds() == [(MODEL_LOAD_REQUESTED, "nope"), (MODEL_LOAD_FAILED, "nope")]
    assert h.events[1][2]["error_code"] == "MODEL_NOT_FOUND"


def test_unload_closes_and_emits_once() -> None:
    h = Harness(300 * MiB, {"m": {"size": 100 * MiB}})
    runtime = h.cache.get_or_load("m")
    assert h.cache.unload("m") is True
    assert h.cache.unload("m") is False
    assert isinstance(runtime, FakeRuntime) and runtime.closes == 1
    assert h.kinds()[-1] == (MODEL_UNLOADED, "m")
    assert h.cache.loaded() == [] and h.cache.used_bytes == 0


def test_concurrent_loads_reserve_memory() -> None:
    h = Harness(150 * MiB, {"a": {"size": 100 * MiB, "load_s": 0.4}, "b": {"size": 100 * MiB}})
    loaded = threading.Thread(target=h.cache.get_or_load, args=("a",))
    loaded.start()
    deadline = time.monotonic() + 5
    while "a" not in h.cache.loading() and time.monotonic() < deadline:
        time.sleep(0.005)

    # a's load holds 100 of the 150 MiB: b cannot be promised memory until a is done.
    with pytest.raises(InsufficientMemoryError) as raised:
        h.cache.get_or_load("b")
    assert raised.value.details is not None and raised.value.details["loading"] == ["a"]
    loaded.join(5)
    assert [m.model_id for m in h.cache.loaded()] == ["a"]


def test_estimate_refined_after_load_evicts_others() -> None:
    h = Harness(300 * MiB, {"a": {"size": 100 * MiB}, "b": {"size": 100 * MiB, "size_after_load": 250 * MiB}})
    h.cache.get_or_load("a")
    h.cache.get_or_load("b")
    assert [m.model_id for m in h.cache.loaded()] == ["b"]
    assert (MODEL_EVICTED, "a") in h.kinds()
    assert h.cache.used_bytes == 250 * MiB


def test_failing_event_callback_does_not_break_the_cache() -> None:
    def explode(event_type: str, model_id: str, details: dict[str, Any]) -> None:
        raise RuntimeError("broker down")

    cache = ModelCache(100 * MiB, lambda mid: FakeRuntime(mid, 10 * MiB), explode)
    assert cache.get_or_load("m").loaded
    assert cache.unload("m")


def test_close_unloads_everything() -> None:
    h = Harness(300 * MiB, {name: {"size": 100 * MiB} for name in "ab"})
    h.cache.get_or_load("a")
    h.cache.get_or_load("b")
    h.cache.close()
    assert h.cache.loaded() == []
    assert sorted(mid for kind, mid in h.kinds() if kind == MODEL_UNLOADED) == ["a", "b"]
