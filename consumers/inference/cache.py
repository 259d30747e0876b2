"""Loaded models under a memory budget, least recently used evicted first.

``get_or_load`` is the only way in: it returns the loaded runtime, loading it on first use.
The loader makes a runtime cheaply; its ``memory_bytes`` estimate is checked against the
budget *before* the expensive ``load()``, so a model that can never fit fails at once and
room is made by evicting idle models first. Concurrent callers for the same model wait on
one load. Memory being loaded is reserved, so two concurrent loads cannot overcommit.

Lifecycle events go to ``on_event(event_type, model_id, details)`` with the event types of
seed 001 §4.2.3, in the order they happen for each model (the worker publishes them to the
lifecycle topic). A failing callback is logged and never breaks the cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consumers.inference.errors import InferenceError, InsufficientMemoryError, ModelLoadError
from consumers.inference.runtime import ModelRuntime

log = logging.getLogger(__name__)

MODEL_LOAD_REQUESTED = "model_load_requested"
MODEL_LOADED = "model_loaded"
MODEL_LOAD_FAILED = "model_load_failed"
MODEL_UNLOADED = "model_unloaded"
MODEL_EVICTED = "model_evicted"

Loader = Callable[[str], ModelRuntime]
EventCallback = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True)
class LoadedModel:
    """What the status endpoints show for one loaded model (seed 001 ``ModelStatusResponse``)."""

    model_id: str
    task_type: str
    memory_bytes: int
    loaded_at: datetime
    last_used_at: datetime
    load_ms: float
    uses: int


@dataclass
class _Entry:
    runtime: ModelRuntime
    memory_bytes: int
    loaded_at: datetime
    last_used_at: datetime
    load_ms: float
    uses: int = 0


def _error_details(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, InferenceError):
        return {"error_code": exc.code, "error": exc.message}
    return {"error_code": "MODEL_LOAD_FAILED", "error": f"{type(exc).__name__}: {exc}"}


class ModelCache:
    """Thread-safe LRU cache of loaded ``ModelRuntime`` objects under ``memory_budget_bytes``."""

    def __init__(
        self,
        memory_budget_bytes: int,
        loader: Loader,
        on_event: EventCallback | None = None,
    ) -> None:
        if memory_budget_bytes <= 0:
            raise ValueError("memory_budget_bytes must be positive")
        self.memory_budget_bytes = memory_budget_bytes
        self._loader = loader
        self._on_event = on_event
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._loading: dict[str, Future[ModelRuntime]] = {}
        self._reserved: dict[str, int] = {}

    # -- queries ---------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """Memory of loaded models plus memory reserved by loads in progress."""
        with self._lock:
            return self._used_locked()

    def loaded(self) -> list[LoadedModel]:
        """Loaded models, least recently used first."""
        with self._lock:
            return [
                LoadedModel(model_id, e.runtime.task_type, e.memory_bytes, e.loaded_at, e.last_used_at, e.load_ms,
                            e.uses)
                for model_id, e in self._entries.items()
            ]

    def is_loaded(self, model_id: str) -> bool:
        with self._lock:
            return model_id in self._entries

    def loading(self) -> list[str]:
        with self._lock:
            return list(self._loading)

    def _used_locked(self) -> int:
        return sum(e.memory_bytes for e in self._entries.values()) + sum(self._reserved.values())

    # -- loading ---------------------------------------------------------------------------

    def get_or_load(self, model_id: str) -> ModelRuntime:
        """The loaded runtime for ``model_id``; loads it (once, whoever asks concurrently) if needed.

        Raises ModelNotFoundError/ModelLoadError/InsufficientMemoryError (or what the loader raised).
        """
        with self._lock:
            entry = self._touch_locked(model_id)
            if entry is not None:
                return entry.runtime
            pending = self._loading.get(model_id)
            if pending is None:
                pending = Future()
                self._loading[model_id] = pending
                owner = True
            else:
                owner = False
        if not owner:
            runtime = pending.result()  # re-raises the owner's load error
            with self._lock:
                self._touch_locked(model_id)
            return runtime
        self._emit(MODEL_LOAD_REQUESTED, model_id, {})
        try:
            runtime = self._load(model_id)
        except BaseException as exc:
            with self._lock:
                self._loading.pop(model_id, None)
                self._reserved.pop(model_id, None)
            self._emit(MODEL_LOAD_FAILED, model_id, _error_details(exc))
            pending.set_exception(exc)
            raise
        pending.set_result(runtime)
        return runtime

    def _touch_locked(self, model_id: str) -> _Entry | None:
        entry = self._entries.get(model_id)
        if entry is not None:
            self._entries.move_to_end(model_id)
            entry.last_used_at = datetime.now(UTC)
            entry.uses += 1
        return entry

    def _load(self, model_id: str) -> ModelRuntime:
        runtime = self._loader(model_id)
        estimate = max(0, runtime.memory_bytes)
        if estimate > self.memory_budget_bytes:
            raise InsufficientMemoryError(
                f"model {model_id} needs about {estimate / 2**20:.0f} MiB, more than the worker's whole "
                f"memory budget of {self.memory_budget_bytes / 2**20:.0f} MiB",
                details={"model_id": model_id, "memory_bytes": estimate, "budget_bytes": self.memory_budget_bytes},
                hint="Raise the worker's model memory budget or serve this model on a larger worker.",
            )
        evicted = self._make_room(model_id, estimate)
        self._close_evicted(evicted)
        started = time.perf_counter()
        try:
            runtime.load()
        except BaseException as exc:
            self._close(model_id, runtime)  # drop whatever a half-done load holds
            if isinstance(exc, InferenceError) or not isinstance(exc, Exception):
                raise
            raise ModelLoadError(f"model {model_id} failed to load: {type(exc).__name__}: {exc}",
                                 details={"model_id": model_id}) from exc
        load_ms = (time.perf_counter() - started) * 1000.0
        # The estimate may be refined once loaded (e.g. parameter sizes); the budget follows it.
        actual = max(0, runtime.memory_bytes)
        now = datetime.now(UTC)
        with self._lock:
            self._reserved.pop(model_id, None)
            self._entries[model_id] = _Entry(runtime, actual, now, now, load_ms, uses=1)
            self._loading.pop(model_id, None)
            evicted = self._evict_locked(keep=model_id) if actual > estimate else []
            over = self._used_locked() - self.memory_budget_bytes
        if over > 0:
            log.warning("model %s measured %d bytes after load; the cache is %d bytes over budget",
                        model_id, actual, over)
        self._close_evicted(evicted)
        self._emit(MODEL_LOADED, model_id, {"memory_bytes": actual, "load_ms": round(load_ms, 3),
                                            "task_type": str(runtime.task_type)})
        return runtime

    def _make_room(self, model_id: str, needed: int) -> list[tuple[str, _Entry]]:
        """Evict least recently used models until ``needed`` fits, and reserve it."""
        with self._lock:
            evicted: list[tuple[str, _Entry]] = []
            while self._used_locked() + needed > self.memory_budget_bytes and self._entries:
                evicted.append(self._entries.popitem(last=False))
            if self._used_locked() + needed > self.memory_budget_bytes:
                # Loads in progress hold the rest of the budget. The candidates are not closed yet:
                # put them back in their LRU places and report a transient shortage.
                in_flight = sorted(self._reserved)
                self._entries.update(evicted)
                for key, _ in reversed(evicted):
                    self._entries.move_to_end(key, last=False)
                raise InsufficientMemoryError(
                    f"model {model_id} needs about {needed / 2**20:.0f} MiB but loads in progress hold the budget",
                    details={"model_id": model_id, "memory_bytes": needed, "loading": in_flight},
                    hint="Retry when the other loads finish.",
                )
            self._reserved[model_id] = needed
            return evicted

    def _evict_locked(self, keep: str) -> list[tuple[str, _Entry]]:
        evicted: list[tuple[str, _Entry]] = []
        for candidate in list(self._entries):
            if self._used_locked() <= self.memory_budget_bytes:
                break
            if candidate != keep:
                evicted.append((candidate, self._entries.pop(candidate)))
        return evicted

    def _close_evicted(self, evicted: list[tuple[str, _Entry]]) -> None:
        for model_id, entry in evicted:
            self._close(model_id, entry.runtime)
            self._emit(MODEL_EVICTED, model_id, {"memory_bytes": entry.memory_bytes, "reason": "memory_budget",
                                                 "idle_s": round((datetime.now(UTC) - entry.last_used_at)
                                                                 .total_seconds(), 3)})

    # -- unloading -------------------------------------------------------------------------

    def unload(self, model_id: str) -> bool:
        """Unload ``model_id``; False if it was not loaded. In-flight calls keep their session."""
        with self._lock:
            entry = self._entries.pop(model_id, None)
        if entry is None:
            return False
        self._close(model_id, entry.runtime)
        self._emit(MODEL_UNLOADED, model_id, {"memory_bytes": entry.memory_bytes})
        return True

    def close(self) -> None:
        """Unload every model (worker shutdown)."""
        with self._lock:
            model_ids = list(self._entries)
        for model_id in model_ids:
            self.unload(model_id)

    # -- plumbing --------------------------------------------------------------------------

    @staticmethod
    def _close(model_id: str, runtime: ModelRuntime) -> None:
        try:
            runtime.close()
        except Exception:
            log.exception("closing model %s failed", model_id)

    def _emit(self, event_type: str, model_id: str, details: dict[str, Any]) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event_type, model_id, details)
        except Exception:
            log.exception("lifecycle callback failed for %s %s", event_type, model_id)
