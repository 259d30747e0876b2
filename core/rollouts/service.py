"""Rollout commands and queries at the ingress (REST calls these; they hold no rules of their own).

Only creation writes here (its 409 must be answered at once: the slot compare-and-set); pause,
resume, advance and rollback are checked against the rollout as it stands (409 when its status
does not allow them) and published on the rollouts topic for the rollouts processor to apply
(``core/rollouts/processing.py``), which emits the lifecycle event and the audit record.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from core.auth import Principal
from core.errors import DomainError, conflict, invalid, not_found, unavailable
from core.events import EventSink, EventsUnavailable, fleet_record
from core.fleet.store import FleetStore
from core.rollouts.models import (
    COMMAND_FROM,
    Cohort,
    Command,
    Rollout,
    RolloutStatus,
    Stage,
    aggregate,
)
from core.rollouts.store import RolloutStore
from core.routing import is_downloaded
from schemas.clock import utcnow
from topology.messages import MessageType

P = ParamSpec("P")
T = TypeVar("T")


def rollout_view(rollout: Rollout) -> dict[str, Any]:
    """What events and the audit trail record of a rollout's state."""
    return {"status": rollout.status.value, "stage": rollout.current_stage,
            "percent": rollout.stage.percent, "version": rollout.version, "revision": rollout.revision}


class RolloutService:
    def __init__(self, store: RolloutStore, fleet: FleetStore, events: EventSink,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.fleet = fleet
        self.events = events
        self.clock = clock

    async def _io(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _emit(self, message_type: MessageType, record: dict[str, Any]) -> None:
        try:
            await self.events.publish(message_type, record)
        except EventsUnavailable as exc:
            raise unavailable("EVENTS_UNAVAILABLE", "The event log is unavailable; nothing was accepted.",
                              exc.retry_after_s) from exc

    async def create(self, principal: Principal, model_id: str, version: int, stages: Sequence[Stage],
                     cohort: Cohort, baseline_version: int | None = None) -> Rollout:
        principal.require_operator()
        if not stages:
            raise invalid("INVALID_STAGES", "A rollout needs at least one stage.")
        percents = [s.percent for s in stages]
        if any(b <= a for a, b in itertools.pairwise(percents)):
            raise invalid("INVALID_STAGES", "Stage percents must increase (a stage never takes devices back).",
                          percents=percents)
        model = await self._io(self.fleet.get_model, model_id)
        if model is None:
            raise not_found("MODEL_NOT_FOUND", f"Model '{model_id}' not found.")
        if await self._io(self.fleet.get_version, model_id, version) is None:
            raise not_found("VERSION_NOT_FOUND", f"Model '{model_id}' has no version {version}.")
        if baseline_version is None:
            # The newest version below the one rolled out: what the cohort runs until its stage comes.
            older = [v.version for v in await self._io(self.fleet.list_versions, model_id) if v.version < version]
            baseline_version = max(older, default=None)
        elif baseline_version == version or await self._io(self.fleet.get_version, model_id,
                                                           baseline_version) is None:
            raise invalid("INVALID_BASELINE", f"baseline_version {baseline_version} is not another version of "
                                              f"'{model_id}'.")
        now = self.clock()
        rollout = Rollout(id=str(uuid.uuid4()), model_id=model_id, version=version,
                          baseline_version=baseline_version, cohort=cohort, stages=list(stages),
                          status=RolloutStatus.ACTIVE, current_stage=0, stage_started_at=now, created_at=now,
                          updated_at=now, created_by=principal.key_id, reason="created")
        holder = await self._io(self.store.create, rollout)
        if holder is not None:
            raise conflict("ROLLOUT_ACTIVE", f"Model '{model_id}' already has an active rollout.",
                           rollout_id=holder)
        try:
            await self._emit(MessageType.FLEET_EVENT, fleet_record(
                "rollout_created", "rollout", rollout.id, model_id=model_id, version=version,
                baseline_version=baseline_version, stages=[s.as_dict() for s in stages], cohort=cohort.as_dict()))
            await self.events.audit(actor=principal.key_id, action="rollout.create", subject=f"rollout/{rollout.id}",
                                    outcome="accepted", after={"model_id": model_id, **rollout_view(rollout)})
        except (DomainError, EventsUnavailable) as exc:
            # The rollout is stored and answers at once (201); its event is what was lost. Roll it back
            # so the slot is free and the caller's retry creates it again, announced this time.
            rollout.status, rollout.reason = RolloutStatus.ROLLED_BACK, "its creation event could not be published"
            await self._io(self.store.update, rollout, rollout.revision)
            if isinstance(exc, EventsUnavailable):
                raise unavailable("EVENTS_UNAVAILABLE", "The event log is unavailable; nothing was accepted.",
                                  exc.retry_after_s) from exc
            raise
        return rollout

    async def command(self, principal: Principal, rollout_id: str, command: Command,
                      reason: str | None = None) -> Rollout:
        """Check the command against the rollout as it stands and hand it to the rollouts processor."""
        principal.require_operator()
        rollout = await self.get(principal, rollout_id)
        if rollout.status not in COMMAND_FROM[command]:
            raise conflict("ROLLOUT_STATE", f"A {rollout.status.value} rollout cannot {command.value}.",
                           status=rollout.status.value,
                           allowed_from=sorted(s.value for s in COMMAND_FROM[command]))
        await self._emit(MessageType.ROLLOUT_COMMAND, {"rollout_id": rollout_id, "command": command.value,
                                                      "actor": principal.key_id, "reason": reason})
        return rollout

    async def report_telemetry(self, principal: Principal, device_id: str, window_start: datetime,
                               window_end: datetime, models: list[dict[str, Any]]) -> None:
        """A device's inference telemetry: published for the rollouts processor to aggregate (202)."""
        principal.require_device(device_id)
        await self._emit(MessageType.DEVICE_TELEMETRY, {"device_id": device_id, "window_start": window_start,
                                                       "window_end": window_end, "models": models})

    async def get(self, principal: Principal, rollout_id: str) -> Rollout:
        principal.require_operator()
        rollout = await self._io(self.store.get, rollout_id)
        if rollout is None:
            raise not_found("ROLLOUT_NOT_FOUND", f"Rollout '{rollout_id}' not found.")
        return rollout

    async def list_rollouts(self, principal: Principal, model_id: str | None = None) -> list[Rollout]:
        principal.require_operator()
        return await self._io(self.store.list_rollouts, model_id)

    async def details(self, rollout: Rollout) -> dict[str, Any]:
        """What operators see beside the rollout: the gate judgements of each stage, the current stage's
        telemetry per version, and device counts per version."""
        gates = await self._io(self.store.gates, rollout.id)
        rows = await self._io(self.store.telemetry, rollout.id, rollout.current_stage)
        versions = sorted({r.version for r in rows})
        telemetry = {str(v): aggregate(r for r in rows if r.version == v).as_dict() for v in versions}
        return {"gates": {str(k): v for k, v in sorted(gates.items())}, "telemetry": telemetry,
                "devices": await self._io(self._device_counts, rollout)}

    def _device_counts(self, rollout: Rollout) -> dict[str, Any]:
        """Per version: devices the rollout assigns it to now, and devices whose last applied heartbeat
        lists it installed. Reads every device row (as the freshness sweep does): for operators' reads of
        one rollout, never on a device's path."""
        assigned: Counter[str] = Counter()
        installed: Counter[str] = Counter()
        cohort = 0
        for device in self.fleet.list_devices():
            if not rollout.cohort.matches(device.device_id, device.platform.value, device.capabilities):
                continue
            cohort += 1
            version = rollout.version if rollout.assigns(device.device_id) else rollout.baseline_version
            if version is not None:
                assigned[str(version)] += 1
            for item in device.metrics.get("installed_models") or ():
                if isinstance(item, dict) and item.get("model_id") == rollout.model_id and is_downloaded(
                        [item], rollout.model_id, item.get("version", ""), None):
                    installed[str(item.get("version"))] += 1
        return {"cohort": cohort, "assigned": dict(assigned), "installed": dict(installed)}
