"""The rollouts processor's rules: operators' commands and devices' telemetry from the rollouts topic,
and a timer that judges each active stage's gate.

Every change is a compare-and-set on the rollout's revision (``RolloutStore.update``), so several
processor replicas, a redelivered command or a timer racing a command apply it once; the one that
wins publishes the lifecycle event (a fleet event about the rollout) and the audit record. State is
all in Cassandra (rollout rows, telemetry rows, gate rows): a killed processor resumes where it was.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from cachetools import TTLCache

from core.events import EventSink, fleet_record
from core.rollouts.models import (
    COMMAND_FROM,
    Command,
    Rollout,
    RolloutStatus,
    TelemetryRow,
    Verdict,
    aggregate,
    judge,
)
from core.rollouts.service import rollout_view
from core.rollouts.store import RolloutStore
from schemas.clock import as_utc, utcnow
from settings import Settings
from topology.messages import MessageType

log = logging.getLogger(__name__)
# How long "this model has no running rollout" is believed for telemetry: a report about such a model
# reads the model's latest rollout at most this often, and one that arrives within this of the
# rollout's creation, right after a report that found none, is not filed (documented).
NO_ROLLOUT_CACHE_S = 1.0
P = ParamSpec("P")
T = TypeVar("T")
GATE_ACTOR = "processor:rollout-gate"  # who the audit trail names for an automatic gate decision
CAS_RETRIES = 5

# What each change is called in events and the audit trail.
EVENT_OF = {Command.PAUSE: "rollout_paused", Command.RESUME: "rollout_resumed",
            Command.ADVANCE: "rollout_stage_advanced", Command.ROLLBACK: "rollout_rolled_back"}


def _utc(value: Any) -> datetime:
    return as_utc(value) or utcnow()


class RolloutProcessor:
    def __init__(self, settings: Settings, store: RolloutStore, events: EventSink,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.store = store
        self.events = events
        self.clock = clock
        self._current: tuple[float, dict[str, Rollout]] | None = None  # (monotonic read, model_id -> rollout)
        self._none: TTLCache[str, bool] = TTLCache(10_000, NO_ROLLOUT_CACHE_S)  # models found without one

    async def _io(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _rollouts_by_model(self, fresh: bool = False) -> dict[str, Rollout]:
        if fresh or self._current is None or time.monotonic() - self._current[0] >= self.settings.rollout_cache_s:
            self._current = (time.monotonic(), {r.model_id: r for r in await self._io(self.store.current)})
        return self._current[1]

    async def _running(self, model_id: str) -> Rollout | None:
        """The model's running rollout: from the cached view, else (a rollout created since the view
        was read) from the store, at most every NO_ROLLOUT_CACHE_S per model."""
        rollouts = await self._rollouts_by_model()
        rollout = rollouts.get(model_id)
        if rollout is not None and not rollout.status.terminal:
            return rollout
        if model_id in self._none:
            return None
        rollout = await self._io(self.store.latest, model_id)
        if rollout is None or rollout.status.terminal:
            self._none[model_id] = True
            return None
        rollouts[model_id] = rollout
        return rollout

    # --- telemetry --------------------------------------------------------------------------
    async def on_telemetry(self, record: dict[str, Any]) -> None:
        """File each model's report under its model's rollout and the stage it is at (reports about a
        model without a running rollout gate nothing and are not kept)."""
        rows = []
        for item in record.get("models") or ():
            rollout = await self._running(str(item["model_id"]))
            if rollout is None:
                continue
            latency = item.get("latency_ms") or {}
            rows.append(TelemetryRow(
                rollout.id, rollout.current_stage, int(item["version"]), str(record["device_id"]),
                _utc(record["window_start"]), _utc(record["window_end"]), int(item["inference_count"]),
                int(item["error_count"]), int(item["crash_count"]), int(item["cloud_fallback_count"]),
                latency.get("p50"), latency.get("p95"), latency.get("p99")))
        if rows:
            await self._io(self.store.add_telemetry, rows)

    # --- commands ---------------------------------------------------------------------------
    async def on_command(self, record: dict[str, Any]) -> None:
        command, actor = Command(record["command"]), str(record["actor"])
        reason = record.get("reason") or f"{command.value} by an operator"
        for _ in range(CAS_RETRIES):
            rollout = await self._io(self.store.get, str(record["rollout_id"]))
            if rollout is None or rollout.status not in COMMAND_FROM[command]:
                # Checked at the ingress, so the rollout changed in between (a gate, another command):
                # the command no longer applies. Recorded, so the operator's trail says what became of it.
                await self.events.audit(actor=actor, action=f"rollout.{command.value}",
                                        subject=f"rollout/{record['rollout_id']}", outcome="rejected",
                                        before=rollout_view(rollout) if rollout else None)
                return
            if await self._apply(rollout, command, reason, actor):
                return
        raise RuntimeError(f"rollout {record['rollout_id']} kept changing under command {command.value}")

    async def _apply(self, rollout: Rollout, command: Command, reason: str, actor: str) -> bool:
        """Apply one change with a compare-and-set; False when another writer changed the rollout first."""
        now = self.clock()
        after = copy.deepcopy(rollout)
        after.updated_at, after.reason = now, reason
        event = EVENT_OF[command]
        if command is Command.PAUSE:
            after.status = RolloutStatus.PAUSED
        elif command is Command.RESUME:
            # The stage's hold starts again, and its gate judges only telemetry from now on.
            after.status, after.stage_started_at = RolloutStatus.ACTIVE, now
        elif command is Command.ROLLBACK:
            after.status = RolloutStatus.ROLLED_BACK
        elif rollout.current_stage + 1 < len(rollout.stages):
            after.status, after.current_stage = RolloutStatus.ACTIVE, rollout.current_stage + 1
            after.stage_started_at = now
        else:
            after.status, event = RolloutStatus.COMPLETED, "rollout_completed"
        if not await self._io(self.store.update, after, rollout.revision):
            return False
        after.revision = rollout.revision + 1
        self._current = None  # the next telemetry is filed under the new stage
        await self.events.publish(MessageType.FLEET_EVENT, fleet_record(
            event, "rollout", rollout.id, model_id=rollout.model_id, version=rollout.version,
            status=after.status.value, stage=after.current_stage, percent=after.stage.percent, reason=reason,
            actor=actor))
        await self.events.audit(actor=actor, action=f"rollout.{command.value}", subject=f"rollout/{rollout.id}",
                                outcome="applied", before=rollout_view(rollout),
                                after={**rollout_view(after), "reason": reason})
        log.info("rollout %s: %s (%s)", rollout.id, event, reason)
        return True

    # --- gates ------------------------------------------------------------------------------
    async def tick(self) -> None:
        """Judge the gate of every active rollout's stage; act on what it decides."""
        for rollout in (await self._rollouts_by_model(fresh=True)).values():
            if rollout.status is RolloutStatus.ACTIVE:
                await self.judge(rollout)

    async def judge(self, rollout: Rollout) -> Verdict:
        now = self.clock()
        rows = await self._io(self.store.telemetry, rollout.id, rollout.current_stage)
        # Only the new version's reports, and only those since the stage (re)started: a resumed stage is
        # judged afresh, not paused again by the telemetry that paused it.
        since = rollout.stage_started_at
        fresh = [r for r in rows if r.version == rollout.version and r.window_end > since]
        telemetry = aggregate(fresh)
        baseline = aggregate(r for r in rows if r.version == rollout.baseline_version and r.window_end > since)
        held_s = (now - rollout.stage_started_at).total_seconds()
        gate = judge(rollout.stage, telemetry, held_s)
        await self._io(self.store.record_gate, rollout.id, rollout.current_stage, {
            "verdict": gate.verdict.value, "reason": gate.reason, "judged_at": now.isoformat(),
            "held_s": round(held_s, 1), "thresholds": rollout.stage.as_dict(),
            "telemetry": telemetry.as_dict(), "baseline_telemetry": baseline.as_dict()})
        command = {Verdict.ADVANCE: Command.ADVANCE, Verdict.PAUSE: Command.PAUSE,
                   Verdict.ROLLBACK: Command.ROLLBACK}.get(gate.verdict)
        if command is not None:
            await self._apply(rollout, command, f"gate: {gate.reason}", GATE_ACTOR)
        return gate.verdict
