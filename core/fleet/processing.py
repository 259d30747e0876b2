"""What the fleet's stream processors do with each event, independent of the streaming library.

``consumers/processors`` feeds these from Kafka (faust agents and timers); unit tests feed them
directly. Every handler is idempotent so at-least-once delivery never double counts:
heartbeats are monotonic upserts, and FedAvg's checkpoint lists the updates it includes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from core.artifacts import ArtifactNotFound, ArtifactStore
from core.errors import DomainError
from core.events import EventSink, fleet_record
from core.fleet.models import CatalogModel, Freshness, Round, RoundStatus
from core.fleet.service import FleetService, freshness_of, iso
from core.fleet.store import FleetStore
from core.fleet.weights import FedAvgAccumulator, StateDict, dump_state_dict, load_state_dict
from schemas.clock import utcnow
from settings import Settings
from topology.messages import MessageType

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

FRESHNESS_EVENT = {Freshness.ONLINE: "device_online", Freshness.STALE: "device_stale",
                   Freshness.OFFLINE: "device_offline"}


class UnknownSubject(LookupError):
    """The event names a device or round we do not know: it goes to the dead-letter topic."""


async def _io(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


def _parse_ts(value: str | datetime | None, default: datetime) -> datetime:
    if value is None:
        return default
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class DeviceProcessor:
    def __init__(self, settings: Settings, store: FleetStore, events: EventSink,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.store = store
        self.events = events
        self.clock = clock

    async def on_heartbeat(self, record: dict[str, Any]) -> None:
        device_id = record["device_id"]
        at = _parse_ts(record.get("sent_at"), self.clock())
        device = await _io(self.store.record_heartbeat, device_id, at, record.get("status"),
                           record.get("metrics") or {})
        if device is None:
            raise UnknownSubject(f"heartbeat for unknown device {device_id!r}")
        await self._refresh(device_id, device.last_heartbeat, device.freshness)

    async def sweep(self) -> int:
        """Re-derive every device's freshness; returns how many changed."""
        changed = 0
        for device in await _io(self.store.list_devices):
            if await self._refresh(device.device_id, device.last_heartbeat, device.freshness):
                changed += 1
        return changed

    async def _refresh(self, device_id: str, last_heartbeat: datetime | None, current: Freshness) -> bool:
        new = freshness_of(last_heartbeat, self.clock(), self.settings.heartbeat_interval_s)
        if new is current or last_heartbeat is None:
            return False
        # CAS: when two processors race, exactly one emits the transition.
        if not await _io(self.store.set_freshness, device_id, current, new):
            return False
        record = fleet_record(FRESHNESS_EVENT[new], "device", device_id, last_heartbeat=iso(last_heartbeat),
                              **{"from": current.value, "to": new.value})
        await self.events.publish(MessageType.FLEET_EVENT, record)
        await self.events.audit(actor="processor:devices", action="device.freshness", subject=f"device/{device_id}",
                                outcome="changed", before={"freshness": current.value},
                                after={"freshness": new.value})
        return True


class RoundProcessor:
    """Counts updates, folds them into a streaming FedAvg and closes rounds on time."""

    def __init__(self, settings: Settings, store: FleetStore, artifacts: ArtifactStore, events: EventSink,
                 fleet: FleetService, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.store = store
        self.artifacts = artifacts
        self.events = events
        self.fleet = fleet
        self.clock = clock
        self._accumulators: dict[str, FedAvgAccumulator] = {}
        self._failed: dict[str, set[str]] = {}
        self._lock = asyncio.Lock()

    @staticmethod
    def checkpoint_key(round_id: str) -> str:
        return f"rounds/{round_id}/fedavg.ckpt"

    async def _accumulator(self, round_id: str, fresh: bool = False) -> FedAvgAccumulator:
        """The round's running FedAvg; ``fresh`` re-reads the checkpoint, which another
        replica (the one owning the round's partition) may have advanced."""
        if fresh or round_id not in self._accumulators:
            try:
                data = await _io(self.artifacts.get, self.checkpoint_key(round_id))
                self._accumulators[round_id] = FedAvgAccumulator.from_bytes(data)
            except ArtifactNotFound:
                self._accumulators[round_id] = FedAvgAccumulator()
        return self._accumulators[round_id]

    async def on_update(self, record: dict[str, Any]) -> None:
        async with self._lock:
            await self._fold(record)
        await self.tick()

    async def _fold(self, record: dict[str, Any]) -> None:
        round_id, update_id = record["round_id"], record["update_id"]
        round_ = await _io(self.store.get_round, round_id)
        if round_ is None:
            raise UnknownSubject(f"update for unknown round {round_id!r}")
        if round_.status is not RoundStatus.ACTIVE:
            log.info("update %s arrived after round %s left active (%s)", update_id, round_id, round_.status)
            return
        acc = await self._accumulator(round_id)
        failed = self._failed.setdefault(round_id, set())
        if update_id in acc.included or update_id in failed:
            return  # redelivered: already counted
        data = await _io(self.artifacts.get, record["artifact_key"])
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            failed.add(update_id)
            await self._lifecycle("update_rejected", round_id, update_id=update_id, reason="sha256 mismatch")
        else:
            try:
                acc.add(update_id, load_state_dict(data), int(record["num_samples"]))
            except DomainError as exc:
                failed.add(update_id)
                await self._lifecycle("update_rejected", round_id, update_id=update_id, reason=exc.message)
            else:
                # The checkpoint is written before counters and offsets: a crash after this
                # point redelivers the update, which the included set then skips.
                await _io(self.artifacts.put, self.checkpoint_key(round_id), acc.to_bytes())
        await _io(self.store.update_round_counters, round_id,
                  participated=len(acc.included) + len(failed), completed=len(acc.included), failed=len(failed))

    async def tick(self) -> None:
        """Close the active round when its policy says so (called on each update and by a timer)."""
        round_id = await _io(self.store.active_round_id)
        if round_id is None:
            return
        async with self._lock:
            round_ = await _io(self.store.get_round, round_id)
            if round_ is None or round_.status is not RoundStatus.ACTIVE:
                return
            acc = await self._accumulator(round_id, fresh=True)
            now = self.clock()
            completed = len(acc.included)
            timed_out = round_.timeout_at is not None and now >= _parse_ts(round_.timeout_at, now)
            if completed >= round_.min_devices and (
                completed >= len(round_.selected_devices) or timed_out
                or await self._grace_passed(round_, now)
            ):
                await self._aggregate(round_, acc)
            elif timed_out:
                await self._fail(round_, f"timeout with {completed} of {round_.min_devices} required updates")

    async def _grace_passed(self, round_: Round, now: datetime) -> bool:
        """The grace window starts when the min_devices-th update was accepted (derived, not stored)."""
        acc = await self._accumulator(round_.id)
        updates = sorted((u for u in await _io(self.store.list_updates, round_.id) if u.id in acc.included),
                         key=lambda u: u.created_at)
        if len(updates) < round_.min_devices:
            return False
        reached_at = _parse_ts(updates[round_.min_devices - 1].created_at, now)
        return now >= reached_at + timedelta(seconds=self.settings.straggler_grace_s)

    async def _aggregate(self, round_: Round, acc: FedAvgAccumulator) -> None:
        if not await _io(self.store.transition_round, round_.id, RoundStatus.ACTIVE, RoundStatus.AGGREGATING):
            return
        await self._round_event(round_, "round_aggregating", RoundStatus.AGGREGATING)
        like = await self._reference_state(round_.id, acc)
        averaged: StateDict = acc.average(like)
        now = self.clock()
        model = CatalogModel(
            id=str(uuid.uuid4()), is_baseline=False, created_at=now, updated_at=now, round_id=round_.id,
            framework="pytorch", framework_version=_torch_version(),
            description=f"FedAvg of round {round_.round_number} ({len(acc.included)} updates, "
                        f"{acc.total_samples} samples)",
        )
        await _io(self.store.create_model, model)
        version = await self.fleet.add_version("processor:rounds", model, dump_state_dict(averaged), "pytorch",
                                               model.description, round_id=round_.id)
        await _io(self.store.transition_round, round_.id, RoundStatus.AGGREGATING, RoundStatus.COMPLETED,
                  completed_at=self.clock(), aggregated_model_id=model.id,
                  aggregated_model_path=version.model_path)
        round_.aggregated_model_id, round_.aggregated_model_path = model.id, version.model_path
        await self._round_event(round_, "round_completed", RoundStatus.COMPLETED)
        self._accumulators.pop(round_.id, None)

    async def _reference_state(self, round_id: str, acc: FedAvgAccumulator) -> StateDict | None:
        """One included update, to cast the average back to the parameters' own dtypes."""
        for update in await _io(self.store.list_updates, round_id):
            if update.id in acc.included:
                return load_state_dict(await _io(self.artifacts.get, update.artifact_key))
        return None

    async def _fail(self, round_: Round, reason: str) -> None:
        if await _io(self.store.transition_round, round_.id, RoundStatus.ACTIVE, RoundStatus.FAILED,
                     completed_at=self.clock(), failure_reason=reason):
            round_.failure_reason = reason
            await self._round_event(round_, "round_failed", RoundStatus.FAILED)
            self._accumulators.pop(round_.id, None)

    async def _round_event(self, round_: Round, event_type: str, status: RoundStatus) -> None:
        record = {"event_type": event_type, "round_id": round_.id, "round_number": round_.round_number,
                  "status": status.value, "aggregated_model_id": round_.aggregated_model_id,
                  "failure_reason": round_.failure_reason}
        await self.events.publish(MessageType.ROUND_EVENT, record)
        await self._lifecycle(event_type, round_.id, round_number=round_.round_number,
                              aggregated_model_id=round_.aggregated_model_id, reason=round_.failure_reason)
        await self.events.audit(actor="processor:rounds", action=f"round.{status.value}",
                                subject=f"round/{round_.id}", outcome=status.value, after=record)

    async def _lifecycle(self, event_type: str, round_id: str, **data: Any) -> None:
        await self.events.publish(MessageType.FLEET_EVENT, fleet_record(event_type, "round", round_id, **data))


def _torch_version() -> str:
    import torch

    return str(torch.__version__).split("+")[0]
