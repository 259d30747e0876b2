"""What a device learns: the model versions assigned to it, where to download them, whether it has,
and where each should run (``core.routing``).

The heartbeat path answers this for every heartbeat (issue 18: 1,000/s per fleet), so nothing here
reads Cassandra per heartbeat: the rollouts (latest per model) and catalog models are cached per
replica for ``rollout_cache_s``, model versions (immutable) for good, and a device's registered
platform and capabilities for ``rollout_device_cache_s``; whether the device has downloaded its
version and its conditions (memory, battery, network) come from the heartbeat's own metrics.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from cachetools import LRUCache, TTLCache

from core.fleet.models import CatalogModel, Device, ModelVersion
from core.fleet.store import FleetStore
from core.rollouts.models import Rollout, RolloutStatus
from core.rollouts.store import RolloutStore
from core.routing import decide_for, is_downloaded
from schemas.clock import utcnow
from settings import Settings

P = ParamSpec("P")
T = TypeVar("T")
VERSION_CACHE_SIZE = 10_000
MODEL_CACHE_SIZE = 10_000


def download_url(model_id: str, version: int) -> str:
    """The catalog's download route of one version (seed 000)."""
    return f"/api/v1/models/{model_id}/versions/{version}/download"


class AssignmentService:
    def __init__(self, settings: Settings, rollouts: RolloutStore, fleet: FleetStore,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.rollouts = rollouts
        self.fleet = fleet
        self.clock = clock
        self._lock = threading.Lock()  # the caches are filled from worker threads
        self._current: tuple[float, list[Rollout]] | None = None
        self._devices: TTLCache[str, tuple[str | None, dict[str, Any]]] = TTLCache(
            settings.rollout_device_cache_size, settings.rollout_device_cache_s)
        self._models: TTLCache[str, CatalogModel | None] = TTLCache(MODEL_CACHE_SIZE, settings.rollout_cache_s)
        self._versions: LRUCache[tuple[str, int], ModelVersion | None] = LRUCache(VERSION_CACHE_SIZE)

    async def _io(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def forget(self) -> None:
        """Drop the cached rollouts (this replica just changed one): the next answer reads them afresh."""
        self._current = None

    async def current_rollouts(self) -> list[Rollout]:
        cached = self._current
        if cached is not None and time.monotonic() - cached[0] < self.settings.rollout_cache_s:
            return cached[1]
        rollouts: list[Rollout] = await self._io(self.rollouts.current)
        self._current = (time.monotonic(), rollouts)
        return rollouts

    async def _device(self, device_id: str) -> tuple[str | None, dict[str, Any]]:
        with self._lock:
            found = self._devices.get(device_id)
        if found is None:
            device = await self._io(self.fleet.get_device, device_id)
            found = (device.platform.value, dict(device.capabilities)) if device else (None, {})
            with self._lock:
                self._devices[device_id] = found
        return found

    async def _model(self, model_id: str) -> CatalogModel | None:
        with self._lock:
            if model_id in self._models:
                return self._models[model_id]
        model = await self._io(self.fleet.get_model, model_id)
        with self._lock:
            self._models[model_id] = model
        return model

    async def _version(self, model_id: str, version: int) -> ModelVersion | None:
        with self._lock:
            if (model_id, version) in self._versions:
                return self._versions[(model_id, version)]
        found = await self._io(self.fleet.get_version, model_id, version)
        if found is not None:  # a version that does not exist yet may be uploaded: not cached
            with self._lock:
                self._versions[(model_id, version)] = found
        return found

    async def for_device(self, device_id: str, metrics: Mapping[str, Any] | None,
                         device: Device | None = None) -> list[dict[str, Any]]:
        """The device's assignments, given its latest metrics (the heartbeat's own, or the stored ones);
        ``device``: its row when the caller has it (else the cached registration is used)."""
        metrics = metrics or {}
        installed = [m for m in metrics.get("installed_models") or () if isinstance(m, Mapping)]
        rollouts = await self.current_rollouts()
        if not rollouts and not installed:
            return []  # the common heartbeat: nothing to assign, nothing read
        platform: str | None
        if device is not None:
            platform, capabilities = device.platform.value, dict(device.capabilities)
        else:
            platform, capabilities = await self._device(device_id)
        wanted: dict[str, tuple[int, Rollout | None, int | None]] = {}  # model_id -> version, rollout, stage
        for rollout in rollouts:
            chosen = self._choose(rollout, device_id, platform, capabilities, installed)
            if chosen is not None:
                wanted[rollout.model_id] = chosen
        for item in installed:
            model_id = str(item.get("model_id"))
            if model_id in wanted or any(r.model_id == model_id for r in rollouts):
                continue
            model = await self._model(model_id)
            if model is not None and model.latest_version:
                wanted[model_id] = (model.latest_version, None, None)  # the catalog's current version
        entries = []
        for model_id, (version, assigning, stage) in sorted(wanted.items()):
            entry = await self._entry(model_id, version, assigning, stage, platform, capabilities, metrics,
                                      installed)
            if entry is not None:
                entries.append(entry)
        return entries

    @staticmethod
    def _choose(rollout: Rollout, device_id: str, platform: str | None, capabilities: dict[str, Any],
                installed: list[Mapping[str, Any]]) -> tuple[int, Rollout | None, int | None] | None:
        """(version, the rollout that assigns it or None, stage) for one model with a rollout, or None."""
        in_cohort = platform is not None and rollout.cohort.matches(device_id, platform, capabilities)
        if in_cohort and rollout.assigns(device_id):
            return rollout.version, rollout, rollout.current_stage
        # Outside the stage, outside the cohort, or rolled back: the baseline, to cohort devices and to
        # devices that run the model already (never the rolled-out version to those it was not meant for).
        runs_it = any(m.get("model_id") == rollout.model_id for m in installed)
        if rollout.baseline_version is not None and (in_cohort or runs_it):
            return rollout.baseline_version, None, None
        return None

    async def _entry(self, model_id: str, version: int, rollout: Rollout | None, stage: int | None,
                     platform: str | None, capabilities: dict[str, Any], metrics: Mapping[str, Any],
                     installed: list[Mapping[str, Any]]) -> dict[str, Any] | None:
        found = await self._version(model_id, version)
        model = await self._model(model_id)
        if found is None or model is None:
            return None  # deleted since: nothing to download
        downloaded = is_downloaded(installed, model_id, version, found.sha256)
        routing = decide_for(self.settings, model.extra, found.format, platform, capabilities, metrics, version,
                             downloaded)
        return {"model_id": model_id, "version": version,
                "rollout_id": rollout.id if rollout is not None else None,
                "stage": stage if rollout is not None and rollout.status is not RolloutStatus.ROLLED_BACK else None,
                "download_url": download_url(model_id, version), "size_bytes": found.model_size_bytes,
                "sha256": found.sha256, "downloaded": downloaded, "routing": routing.entry(model_id)}
