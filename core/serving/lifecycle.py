"""Seed 001 §2.6/§2.7 model lifecycle: load, unload, model health, loaded models.

Commands travel as ``model_command`` messages on ``tributary.models.commands``; every inference
worker process applies each one (broadcast, ``consumers/inference/commands.py``) and reports
the outcome in the residency store (``core/serving/residency.py``). So the ingress answers
from the residency rows:

- ``load``: 404 when the id is neither built in nor in the catalog, 409 ``MODEL_NOT_READY`` for a
  ``source_url`` model that is not ``ready`` (never downloaded, downloading, failed); publish ``load``; wait up to
  ``TRIBUTARY_MODEL_LOAD_WAIT_S`` for a row in state ``loaded`` -> 200 with that row's
  ``ModelStatusResponse``. A row ``unhealthy`` written after the command (and nobody loading or
  loaded) ends the wait: ``INSUFFICIENT_MEMORY`` -> 507, any other code -> 503 with the
  worker's code (``MODEL_LOAD_FAILED``, ...). Broker down or no answer in time -> 503 with
  ``Retry-After``.
- ``unload``: 404 ``MODEL_NOT_LOADED`` when no worker holds it (``MODEL_NOT_FOUND`` when the id is
  unknown too); publish ``unload``; wait until no row is left (503 on timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from core.auth import Principal
from core.errors import DomainError, ErrorKind, conflict, not_found, unavailable
from core.events import EventSink, EventsUnavailable, lifecycle_record
from core.fleet.models import not_ready_reason
from core.fleet.store import FleetStore
from core.serving.residency import Residency, ResidencyState, ResidencyStore
from schemas.clock import utcnow
from topology.messages import MessageType

POLL_INTERVAL_S = 0.2
# Rows are compared with the command's time; allow this much clock difference between hosts.
CLOCK_SKEW = timedelta(milliseconds=500)



class ModelLifecycleService:
    def __init__(self, store: FleetStore, residency: ResidencyStore, events: EventSink, *,
                 builtins: Callable[[], Mapping[str, str]], wait_s: float, clock: Callable[[], datetime] = utcnow,
                 poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self.store = store
        self.residency = residency
        self.events = events
        self.builtins = builtins  # model id -> task type of the built-in models (resolved lazily)
        self.wait_s = wait_s
        self.clock = clock
        self.poll_interval_s = poll_interval_s

    async def _known(self, model_id: str, *, for_load: bool = False) -> bool:
        if model_id in self.builtins():
            return True
        model = await asyncio.to_thread(self.store.get_model, model_id)
        if model is None:
            return False
        reason = not_ready_reason(model) if for_load else None
        if reason is not None:  # the workers would refuse it too (MODEL_NOT_READY); say so without asking them
            raise conflict("MODEL_NOT_READY", f"Model '{model_id[:200]}' is {model.extra.get('status')}: {reason}.",
                           status=model.extra.get("status"))
        return True

    async def _rows(self, model_id: str) -> list[Residency]:
        return await asyncio.to_thread(self.residency.for_model, model_id)

    async def _command(self, command: str, model_id: str, reason: str) -> None:
        try:
            await self.events.publish(MessageType.MODEL_COMMAND,
                                      {"command": command, "model_id": model_id, "version": None, "reason": reason})
        except EventsUnavailable as exc:
            raise unavailable("SERVICE_UNAVAILABLE", f"The {command} command could not be sent; nothing changed.",
                              exc.retry_after_s) from exc

    async def load(self, principal: Principal, model_id: str) -> dict[str, Any]:
        """``ModelStatusResponse`` once a worker reports the model loaded."""
        principal.require_operator()
        if not await self._known(model_id, for_load=True):
            raise not_found("MODEL_NOT_FOUND", f"Model '{model_id[:200]}' not found.")
        sent_at = self.clock()
        await self._command("load", model_id, "load requested")
        # The command is out; its audit record may be lost to a broker hiccup, the workers' events are not.
        with contextlib.suppress(EventsUnavailable):
            await self._audit(principal, "model.load", model_id)
        deadline = time.monotonic() + self.wait_s
        while True:
            rows = await self._rows(model_id)
            loaded = [r for r in rows if r.state is ResidencyState.LOADED]
            if loaded:
                return {**loaded[0].status(), "workers": [r.worker for r in loaded]}
            fresh_failures = [r for r in rows if r.state is ResidencyState.UNHEALTHY
                              and r.updated_at >= sent_at - CLOCK_SKEW]
            if fresh_failures and not any(r.state is ResidencyState.LOADING for r in rows):
                raise self._load_failed(model_id, fresh_failures)
            if time.monotonic() >= deadline:
                raise unavailable("MODEL_NOT_LOADED", f"No worker reported '{model_id[:200]}' loaded within "
                                  f"{self.wait_s:.0f}s; the load may still complete.", 5.0)
            await asyncio.sleep(self.poll_interval_s)

    @staticmethod
    def _load_failed(model_id: str, failures: list[Residency]) -> DomainError:
        first = next((r for r in failures if r.error_code == "INSUFFICIENT_MEMORY"), failures[0])
        details = {"model_id": model_id, "workers": {r.worker: {"error_code": r.error_code, "error": r.error}
                                                     for r in failures}}
        message = f"Model '{model_id[:200]}' could not be loaded: {first.error or first.error_code}"
        if first.error_code == "INSUFFICIENT_MEMORY":
            return DomainError(ErrorKind.INSUFFICIENT_MEMORY, "INSUFFICIENT_MEMORY", message, details=details,
                               hint="Unload other models or raise TRIBUTARY_INFERENCE_MEMORY_BUDGET_MB.")
        return DomainError(ErrorKind.UNAVAILABLE, first.error_code or "MODEL_LOAD_FAILED", message, details=details,
                           hint="Check the model's uploaded version (ONNX or TorchScript) and the worker logs.")

    async def unload(self, principal: Principal, model_id: str) -> dict[str, Any]:
        """Unload from every worker; answers once no worker reports the model any more."""
        principal.require_operator()
        rows = [r for r in await self._rows(model_id) if r.state is not ResidencyState.UNHEALTHY]
        if not rows:
            if not await self._known(model_id):
                raise not_found("MODEL_NOT_FOUND", f"Model '{model_id[:200]}' not found.")
            raise not_found("MODEL_NOT_LOADED", f"Model '{model_id[:200]}' is not loaded on any worker.")
        await self._command("unload", model_id, "unload requested")
        with contextlib.suppress(EventsUnavailable):
            await self._audit(principal, "model.unload", model_id)
        deadline = time.monotonic() + self.wait_s
        while [r for r in await self._rows(model_id) if r.state is not ResidencyState.UNHEALTHY]:
            if time.monotonic() >= deadline:
                raise unavailable("SERVICE_UNAVAILABLE", f"Workers still report '{model_id[:200]}' loaded after "
                                  f"{self.wait_s:.0f}s.", 5.0)
            await asyncio.sleep(self.poll_interval_s)
        return {"model_id": model_id, "state": "unloaded", "workers": sorted(r.worker for r in rows),
                "unloaded_at": self.clock()}

    async def models_health(self) -> dict[str, Any]:
        """Seed 001 ``/health/models``: one entry per resident model per worker."""
        rows = await asyncio.to_thread(self.residency.all)
        models = [{"model_id": r.model_id, "worker": r.worker, "state": r.state.value, "healthy": r.healthy,
                   "last_check_at": r.updated_at, "memory_usage_mb": round(r.memory_bytes / 2**20, 3),
                   "device": r.device, **({"error": r.error} if r.error else {}),
                   **({"error_code": r.error_code} if r.error_code else {})} for r in rows]
        healthy = sum(1 for r in rows if r.healthy)
        return {"healthy_count": healthy, "unhealthy_count": len(rows) - healthy, "models": models}

    async def loaded_models(self) -> list[dict[str, Any]]:
        """``ModelStatusResponse`` of every loaded (model, worker), for ``GET /status``."""
        rows = await asyncio.to_thread(self.residency.all)
        return [r.status() for r in rows if r.state is ResidencyState.LOADED]

    async def status(self, queue_depth: Callable[[], dict[str, int]] | None) -> dict[str, Any]:
        """The serving part of ``GET /status``: ``loaded_models`` and ``queue_depth`` per priority."""
        depth: dict[str, int] = {}
        if queue_depth is not None:
            try:
                depth = await asyncio.wait_for(asyncio.to_thread(queue_depth), 3.0)
            except Exception:
                depth = {}  # the broker is slow or down: the rest of the status still answers
        return {"loaded_models": await self.loaded_models(), "queue_depth": depth}

    async def _audit(self, principal: Principal, action: str, model_id: str) -> None:
        if action == "model.load":  # seed 001 §4.2.3; the workers emit model_loaded / model_unloaded
            await self.events.publish(MessageType.LIFECYCLE_EVENT,
                                      lifecycle_record("model_load_requested", model_id))
        await self.events.audit(actor=principal.key_id, action=action, subject=f"model/{model_id}",
                                outcome="accepted")
