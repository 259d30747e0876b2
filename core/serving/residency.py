"""Model residency: which inference worker holds which model, in what state.

Workers write one row per (model, worker) from their model cache's lifecycle events
(``consumers/inference/residency.py``) and refresh the rows on a timer; every row carries a
TTL, so the rows of a worker that died without a goodbye (SIGKILL, OOM) vanish on their own
within one TTL. The ingress reads the rows to answer ``POST /models/{id}/load``, ``/unload``,
``GET /health/models``, ``GET /status`` (``loaded_models``) and the registry's delete (409
while loaded).

``ResidencyStore`` is the interface: ``CassandraResidencyStore`` in every environment,
``InMemoryResidencyStore`` for unit tests; ``tests/residency_contract.py`` runs against both.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from core.fleet.models import CatalogModel, RegistryStatus
from schemas.clock import as_utc, utcnow


class ResidencyState(StrEnum):
    LOADING = "loading"
    LOADED = "loaded"
    UNHEALTHY = "unhealthy"  # the last load on this worker failed (error_code says why)


@dataclass(frozen=True)
class Residency:
    model_id: str
    worker: str
    state: ResidencyState
    updated_at: datetime
    memory_bytes: int = 0
    device: str = "cpu"
    task_type: str | None = None
    loaded_at: datetime | None = None
    last_used_at: datetime | None = None
    error_code: str | None = None
    error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.state is not ResidencyState.UNHEALTHY

    def status(self) -> dict[str, Any]:
        """Seed 001 ``ModelStatusResponse`` of this row (plus the worker that reported it)."""
        body: dict[str, Any] = {
            "model_id": self.model_id, "state": self.state.value,
            "memory_usage_mb": round(self.memory_bytes / 2**20, 3), "device": self.device,
            "loaded_at": self.loaded_at, "last_used_at": self.last_used_at, "worker": self.worker,
            "health_status": {"healthy": self.healthy, "last_check_at": self.updated_at,
                              **({"error_message": self.error} if self.error else {})},
        }
        if self.task_type:
            body["task_type"] = self.task_type
        return body


class ResidencyStore(ABC):
    @abstractmethod
    def put(self, row: Residency, ttl_s: int) -> None:
        """Insert or replace the (model_id, worker) row; it expires ``ttl_s`` seconds after this write."""

    @abstractmethod
    def delete(self, model_id: str, worker: str) -> None:
        """Remove the row (no error when absent)."""

    @abstractmethod
    def for_model(self, model_id: str) -> list[Residency]:
        """Unexpired rows of one model, ordered by worker."""

    @abstractmethod
    def all(self) -> list[Residency]:
        """Every unexpired row, ordered by model id then worker (a full scan: rows = models x workers)."""

    def loaded_on(self, model_id: str) -> list[str]:
        """Workers where the model is loaded or loading."""
        return [r.worker for r in self.for_model(model_id) if r.state is not ResidencyState.UNHEALTHY]


class InMemoryResidencyStore(ResidencyStore):
    """Rows in a dict; TTLs measured with ``clock`` (tests move it forward)."""

    def __init__(self, clock: Callable[[], datetime] = utcnow) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str], tuple[Residency, datetime]] = {}

    def put(self, row: Residency, ttl_s: int) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        stored = replace(row, updated_at=as_utc(row.updated_at) or self.clock(), loaded_at=as_utc(row.loaded_at),
                         last_used_at=as_utc(row.last_used_at))
        with self._lock:
            self._rows[(row.model_id, row.worker)] = (stored, self.clock() + timedelta(seconds=ttl_s))

    def delete(self, model_id: str, worker: str) -> None:
        with self._lock:
            self._rows.pop((model_id, worker), None)

    def _live(self) -> list[Residency]:
        now = self.clock()
        with self._lock:
            for key in [k for k, (_, expires) in self._rows.items() if expires <= now]:
                del self._rows[key]
            return [row for row, _ in self._rows.values()]

    def for_model(self, model_id: str) -> list[Residency]:
        return sorted((r for r in self._live() if r.model_id == model_id), key=lambda r: r.worker)

    def all(self) -> list[Residency]:
        return sorted(self._live(), key=lambda r: (r.model_id, r.worker))


def observe(models: list[CatalogModel], rows: list[Residency]) -> list[CatalogModel]:
    """Set each model's observed registry status from the workers' residency rows: ``ready`` when a
    worker holds it, ``downloading`` while one loads it, ``failed`` (with the worker's reason) when
    every worker that tried reports the load failed; untouched when no worker has a row for it."""
    by_model: dict[str, list[Residency]] = {}
    for row in rows:
        by_model.setdefault(row.model_id, []).append(row)
    for model in models:
        states = {r.state for r in by_model.get(model.id, [])}
        model.observed_workers = sorted(r.worker for r in by_model.get(model.id, [])
                                        if r.state is not ResidencyState.UNHEALTHY)
        if ResidencyState.LOADED in states:
            model.observed_status = RegistryStatus.READY
        elif ResidencyState.LOADING in states:
            model.observed_status = RegistryStatus.DOWNLOADING
        elif states:
            failed = by_model[model.id][0]
            model.observed_status = RegistryStatus.FAILED
            model.observed_reason = f"{failed.error_code or 'LOAD_FAILED'}: {failed.error or 'load failed'}"
    return models
