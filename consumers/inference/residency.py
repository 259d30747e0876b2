"""A worker's model residency rows, written from its model cache's lifecycle events.

=====================  ==========================================================
cache event            residency row of (model, this worker)
=====================  ==========================================================
model_load_requested   ``loading``
model_loaded           ``loaded`` (memory, task type, loaded_at)
model_load_failed      ``unhealthy`` with the error code (e.g. INSUFFICIENT_MEMORY)
model_unloaded         deleted
model_evicted          deleted
=====================  ==========================================================

``refresh`` rewrites the rows of loaded models (with ``last_used_at``) and is called on a
timer every third of the TTL; ``clear`` deletes every row this worker wrote (graceful
shutdown). A worker that dies without ``clear`` leaves rows that expire within one TTL.
Store failures are logged, never raised: residency is reporting, serving goes on without it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from consumers.inference.cache import (
    MODEL_EVICTED,
    MODEL_LOAD_FAILED,
    MODEL_LOAD_REQUESTED,
    MODEL_LOADED,
    MODEL_UNLOADED,
    LoadedModel,
)
from core.serving.residency import Residency, ResidencyState, ResidencyStore
from schemas.clock import utcnow

log = logging.getLogger(__name__)



class ResidencyReporter:
    def __init__(self, store: ResidencyStore | Callable[[], ResidencyStore], *, worker: str, ttl_s: int,
                 loaded: Callable[[], list[LoadedModel]], device: str = "cpu",
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._store = store
        self.worker = worker
        self.ttl_s = ttl_s
        self.loaded = loaded
        self.device = device
        self.clock = clock
        self._lock = threading.Lock()
        self._failed: dict[str, Residency] = {}  # unhealthy rows, refreshed until a load or unload clears them
        self.errors = 0

    def store(self) -> ResidencyStore:
        with self._lock:
            if not isinstance(self._store, ResidencyStore):
                self._store = self._store()
            return self._store

    def _safely(self, what: str, action: Callable[[ResidencyStore], None]) -> None:
        try:
            action(self.store())
        except Exception as exc:
            self.errors += 1
            log.warning("residency %s failed: %s: %s", what, type(exc).__name__, exc)

    def _put(self, row: Residency) -> None:
        self._safely(f"write of {row.model_id}", lambda store: store.put(row, self.ttl_s))

    def forget(self, model_id: str) -> None:
        """Delete this worker's row of ``model_id`` (unloaded, evicted, or an unload of a failed model)."""
        with self._lock:
            self._failed.pop(model_id, None)
        self._safely(f"delete of {model_id}", lambda store: store.delete(model_id, self.worker))

    def on_event(self, event_type: str, model_id: str, details: dict[str, Any]) -> None:
        """The model cache's ``on_event`` (called on whichever thread loaded or unloaded)."""
        now = self.clock()
        if event_type == MODEL_LOAD_REQUESTED:
            self._put(Residency(model_id, self.worker, ResidencyState.LOADING, now, device=self.device))
        elif event_type == MODEL_LOADED:
            with self._lock:
                self._failed.pop(model_id, None)
            self._put(Residency(model_id, self.worker, ResidencyState.LOADED, now,
                                memory_bytes=int(details.get("memory_bytes") or 0), device=self.device,
                                task_type=details.get("task_type"), loaded_at=now, last_used_at=now))
        elif event_type == MODEL_LOAD_FAILED:
            row = Residency(model_id, self.worker, ResidencyState.UNHEALTHY, now, device=self.device,
                            error_code=str(details.get("error_code") or "MODEL_LOAD_FAILED"),
                            error=str(details.get("error") or "")[:2000])
            with self._lock:
                self._failed[model_id] = row
            self._put(row)
        elif event_type in (MODEL_UNLOADED, MODEL_EVICTED):
            self.forget(model_id)

    def refresh(self) -> int:
        """Rewrite every row this worker owns (TTL renewed); returns how many."""
        now = self.clock()
        rows = [Residency(m.model_id, self.worker, ResidencyState.LOADED, now, memory_bytes=m.memory_bytes,
                          device=self.device, task_type=m.task_type, loaded_at=m.loaded_at,
                          last_used_at=m.last_used_at) for m in self.loaded()]
        with self._lock:
            rows += list(self._failed.values())
        for row in rows:
            self._put(row)
        return len(rows)

    def clear(self) -> None:
        """Delete every row of this worker (graceful shutdown)."""
        with self._lock:
            failed = list(self._failed)
        for model_id in {*(m.model_id for m in self.loaded()), *failed}:
            self.forget(model_id)
