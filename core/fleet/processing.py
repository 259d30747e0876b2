"""What the fleet's stream processors do with each event, independent of the streaming library.

``consumers/processors`` feeds these from Kafka (faust agents and timers); unit tests feed them
directly. Every handler is idempotent so at-least-once delivery never double counts:
heartbeats are monotonic upserts, and FedAvg's checkpoint lists the updates it includes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from core.artifacts import ArtifactNotFound, ArtifactStore
from core.errors import DomainError
from core.events import EventSink, fleet_record
from core.fleet.models import (
    CatalogModel,
    Device,
    DeviceQuery,
    Freshness,
    Heartbeat,
    ModelUpdate,
    ModelVersion,
    Round,
    RoundStatus,
)
from core.fleet.service import OFFLINE_AFTER_INTERVALS, FleetService, freshness_of, iso
from core.fleet.store import FleetStore
from core.fleet.weights import FedAvgAccumulator, StateDict, load_update_file, saved_state_dict, spooled
from schemas.clock import as_utc, utcnow
from settings import Settings
from topology.messages import MessageType

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

SWEEP_PAGE = 500  # devices per index read of the freshness sweep
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
        self._swept_at: datetime | None = None  # when the last sweep that succeeded began

    async def on_heartbeat(self, record: dict[str, Any]) -> None:
        failure = (await self.on_heartbeats([record]))[0]
        if failure is not None:
            raise failure

    async def on_heartbeats(self, records: Sequence[dict[str, Any]]) -> list[UnknownSubject | None]:
        """Apply a batch of heartbeats together (last-write-wins by their own time, no compare-and-set),
        then refresh the freshness of each device once. Returns, per record, why it could not be
        applied (an unknown device: the caller dead-letters it) or None."""
        now = self.clock()
        beats = [Heartbeat(r["device_id"], _parse_ts(r.get("sent_at"), now), r.get("status"), r.get("metrics") or {})
                 for r in records]
        devices = await _io(self.store.record_heartbeats, beats)
        latest = {device.device_id: device for device in devices if device is not None}
        await asyncio.gather(*(self._refresh(d.device_id, d.last_heartbeat, d.freshness) for d in latest.values()))
        return [None if device is not None else UnknownSubject(f"heartbeat for unknown device {beat.device_id!r}")
                for beat, device in zip(beats, devices, strict=True)]

    async def sweep(self) -> int:
        """Re-derive freshness where it can have changed; returns how many devices changed.

        The first sweep of a process reads every device (what happened while no processor ran). After
        that only the devices whose last heartbeat crossed an age boundary (2 intervals: online to
        stale; 5 intervals: stale to offline) since the previous sweep are read, through the
        ``last_heartbeat`` index, one window per boundary: a sweep costs the devices that changed,
        not the fleet. A sweep that fails is redone over the same windows by the next one."""
        now = self.clock()
        since = self._swept_at
        if since is None:
            devices = await _io(self.store.list_devices)
        else:
            devices = []
            interval = self.settings.heartbeat_interval_s
            for age in (2 * interval, OFFLINE_AFTER_INTERVALS * interval):
                devices += await self._beaten_between(since - timedelta(seconds=age), now - timedelta(seconds=age))
        changed = 0
        for device in devices:
            if await self._refresh(device.device_id, device.last_heartbeat, device.freshness):
                changed += 1
        self._swept_at = now
        return changed

    async def _beaten_between(self, since: datetime, before: datetime) -> list[Device]:
        """Devices whose last heartbeat is in [since, before), page by page through the index."""
        devices: list[Device] = []
        cursor: str | None = None
        while True:
            page = await _io(self.store.find_devices, DeviceQuery(heartbeat_since=since, heartbeat_before=before,
                                                                   limit=SWEEP_PAGE, cursor=cursor))
            devices += page.devices
            if page.next_cursor is None:
                return devices
            cursor = page.next_cursor

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


ACTOR = "processor:rounds"
# Namespace of the catalog ids of round aggregates (uuid5 of the round id).
ROUND_MODELS = uuid.UUID("6f1c7a52-3f0e-4b7e-9d55-2a8f6c1e4b10")


def aggregate_model_id(round_id: str) -> str:
    """The catalog id of a round's aggregate, derived from the round: a redone aggregation finds
    the model an earlier attempt made instead of making a second one."""
    return str(uuid.uuid5(ROUND_MODELS, round_id))


class AggregationLost(Exception):
    """The round left this attempt: its lease ran out and another attempt began, or it was cancelled."""


class RoundProcessor:
    """Counts updates, folds them into a streaming FedAvg, closes rounds on time and finishes their
    aggregation: also one that a crash or an outage interrupted (``tick`` resumes it).

    The running sum lives in memory. The updates it folds are already in S3, so a restarted processor
    rebuilds the sum from them (starting from the last checkpoint, if one was written): checkpoints
    are an optimisation by count or time (``fedavg_checkpoint_every``, ``fedavg_checkpoint_interval_s``),
    never what makes the result exact."""

    def __init__(self, settings: Settings, store: FleetStore, artifacts: ArtifactStore, events: EventSink,
                 fleet: FleetService, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.store = store
        self.artifacts = artifacts
        self.events = events
        self.fleet = fleet
        self.clock = clock
        self._accumulators: dict[str, FedAvgAccumulator] = {}
        self._failed: dict[str, dict[str, str]] = {}  # updates this process rejected, by round: id -> reason
        self._checkpointed: dict[str, tuple[int, datetime]] = {}  # by round: updates included at the last write, when
        self._lock = asyncio.Lock()

    @staticmethod
    def checkpoint_key(round_id: str) -> str:
        return f"rounds/{round_id}/fedavg.ckpt"

    async def _accumulator(self, round_id: str) -> tuple[FedAvgAccumulator, bool]:
        """The round's running FedAvg and whether it was just restored: then it holds only what the
        checkpoint had (or nothing), and the caller folds the stored updates it lacks."""
        acc = self._accumulators.get(round_id)
        if acc is not None:
            return acc, False
        acc = FedAvgAccumulator(precision=self.settings.fedavg_sum_precision)
        try:
            data = await _io(self.artifacts.get, self.checkpoint_key(round_id))
        except ArtifactNotFound:
            pass
        else:
            try:
                acc = await _io(FedAvgAccumulator.from_bytes, data)
            except Exception:  # only a cache of stored updates: start over from them
                log.warning("unreadable FedAvg checkpoint of round %s; folding its updates again", round_id)
            del data
        self._accumulators[round_id] = acc
        self._checkpointed[round_id] = (len(acc.included), self.clock())
        return acc, True

    async def _fold_one(self, acc: FedAvgAccumulator, update_id: str, artifact_key: str, sha256: str | None,
                        num_samples: int) -> str | None:
        """Stream one update from S3 to a spool file, check its sha256, map it and add it into the sum
        (off the event loop); the reason when it is refused. S3 being down raises."""
        def fold() -> str | None:
            try:
                with spooled(self.artifacts.stream(artifact_key)) as (path, digest):
                    if sha256 and digest != sha256:
                        return "sha256 mismatch"
                    state, release = load_update_file(path)
                    acc.add(update_id, state, num_samples, release)
            except ArtifactNotFound:
                return "update file missing"
            except (DomainError, ValueError) as exc:
                return str(exc)
            return None

        return await _io(fold)

    async def _fold_stored(self, round_: Round, acc: FedAvgAccumulator,
                           renew: Callable[[], Awaitable[None]] | None = None) -> list[ModelUpdate]:
        """Fold every stored update of the round that the sum lacks (and this process did not refuse);
        returns the stored updates. This is how a restarted processor rebuilds the sum."""
        failed = self._failed.setdefault(round_.id, {})
        updates = await _io(self.store.list_updates, round_.id)
        for update in updates:
            if update.id in acc.included or update.id in failed:
                continue
            if renew is not None:
                await renew()
            reason = await self._fold_one(acc, update.id, update.artifact_key, update.sha256, update.num_samples)
            if reason is None:
                await self._checkpoint_if_due(round_.id, acc)
            else:
                failed[update.id] = reason
                await self._lifecycle("update_rejected", round_.id, update_id=update.id, reason=reason)
        return updates

    async def _checkpoint_if_due(self, round_id: str, acc: FedAvgAccumulator) -> None:
        every, interval = self.settings.fedavg_checkpoint_every, self.settings.fedavg_checkpoint_interval_s
        count, at = self._checkpointed.get(round_id, (0, self.clock()))
        if not ((every and len(acc.included) - count >= every)
                or (interval and (self.clock() - at).total_seconds() >= interval)):
            return
        data = await _io(acc.to_bytes)  # sum and included ids in one object: always consistent
        await _io(self.artifacts.put, self.checkpoint_key(round_id), data)
        self._checkpointed[round_id] = (len(acc.included), self.clock())

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
        acc, restored = await self._accumulator(round_id)
        if restored:  # after a restart: the updates folded before it (and this one) are read again
            await self._fold_stored(round_, acc)
        failed = self._failed.setdefault(round_id, {})
        if update_id in acc.included or update_id in failed:
            if not restored:
                return  # redelivered: already counted
        else:
            reason = await self._fold_one(acc, update_id, record["artifact_key"], record["sha256"],
                                          int(record["num_samples"]))
            if reason is None:
                await self._checkpoint_if_due(round_id, acc)
            else:
                failed[update_id] = reason
                await self._lifecycle("update_rejected", round_id, update_id=update_id, reason=reason)
        await _io(self.store.update_round_counters, round_id,
                  participated=len(acc.included) + len(failed), completed=len(acc.included), failed=len(failed))

    async def tick(self) -> None:
        """Move the active round along (on each update and by a timer): close it when its policy says
        so, and finish its aggregation, including one a crash or an outage left unfinished."""
        round_id = await _io(self.store.active_round_id)
        async with self._lock:
            for other in (set(self._accumulators) | set(self._failed)) - {round_id}:  # finished, cancelled
                self._forget(other)
            if round_id is None:
                return
            round_ = await _io(self.store.get_round, round_id)
            if round_ is None:
                return
            if round_.status is RoundStatus.ACTIVE:
                await self._close_if_due(round_)
            elif round_.status is RoundStatus.AGGREGATING:
                await self._resume(round_)
            elif round_.status is RoundStatus.PENDING:
                await self.fleet.close_if_expired(round_, ACTOR)

    async def _close_if_due(self, round_: Round) -> None:
        """Straggler policy over the stored updates (those of a processor that was down count too):
        aggregate when the target is reached, or min_devices and the grace window, or min_devices at
        the timeout; fail at the timeout with fewer than min_devices."""
        now = self.clock()
        rejected = self._failed.get(round_.id, {})
        updates = [u for u in await _io(self.store.list_updates, round_.id) if u.id not in rejected]
        timed_out = round_.timeout_at is not None and now >= _parse_ts(round_.timeout_at, now)
        if len(updates) >= round_.min_devices and (
            len(updates) >= round_.target_devices or timed_out or self._grace_passed(round_, updates, now)
        ):
            if await _io(self.store.transition_round, round_.id, RoundStatus.ACTIVE, RoundStatus.AGGREGATING,
                         aggregation_attempts=1, aggregation_lease_until=self._lease_end(),
                         aggregation_error=None):
                round_.status, round_.aggregation_attempts = RoundStatus.AGGREGATING, 1
                await self.fleet.round_event(round_, "round_aggregating", ACTOR)
                await self._attempt(round_, 1)
        elif timed_out:
            await self._fail(round_, f"timeout with {len(updates)} of {round_.min_devices} required updates")

    def _grace_passed(self, round_: Round, updates: list[ModelUpdate], now: datetime) -> bool:
        """The grace window starts when the min_devices-th update was stored (derived, not stored)."""
        if len(updates) < round_.min_devices:
            return False
        ordered = sorted(updates, key=lambda u: u.created_at)
        reached_at = _parse_ts(ordered[round_.min_devices - 1].created_at, now)
        return now >= reached_at + timedelta(seconds=self.settings.straggler_grace_s)

    def _lease_end(self) -> datetime:
        return self.clock() + timedelta(seconds=self.settings.aggregation_lease_s)

    async def _resume(self, round_: Round) -> None:
        """An aggregating round whose lease ran out: its attempt crashed, failed (S3, the broker or
        Cassandra unavailable) or was never started (the round timed out while no processor ran).
        Start the next attempt, or fail the round once the attempts are used up."""
        lease = as_utc(round_.aggregation_lease_until)
        if lease is not None and self.clock() < lease:
            return  # an attempt holds the round, or waits out the pause after a failure
        if round_.aggregation_attempts >= self.settings.aggregation_max_attempts:
            await self._fail(round_, f"aggregation failed {round_.aggregation_attempts} times; last error: "
                                     f"{round_.aggregation_error or 'the processor stopped during aggregation'}")
            return
        if not await _io(self.store.claim_aggregation, round_.id, round_.aggregation_attempts, self._lease_end()):
            return  # another processor claimed it first
        attempt = round_.aggregation_attempts = round_.aggregation_attempts + 1
        if attempt > 1:
            await self._lifecycle("round_aggregation_retried", round_.id, attempt=attempt,
                                  previous_error=round_.aggregation_error)
        await self._attempt(round_, attempt)

    async def _attempt(self, round_: Round, attempt: int) -> None:
        try:
            await self._aggregate(round_, attempt)
        except AggregationLost as exc:
            log.info("aggregation attempt %d of round %s stopped: %s", attempt, round_.id, exc)
        except Exception as exc:  # whatever it was, the round must not stay aggregating for good
            error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("aggregation attempt %d of round %s failed: %s", attempt, round_.id, error)
            retry_at = self.clock() + timedelta(seconds=self.settings.aggregation_retry_s)
            try:
                await _io(self.store.extend_aggregation, round_.id, attempt, retry_at, error)
            except Exception:  # Cassandra down too: the lease runs out by itself
                log.warning("could not record the failure of round %s's aggregation", round_.id)
        finally:
            self._accumulators.pop(round_.id, None)  # spent or suspect: a next attempt rebuilds it
            self._checkpointed.pop(round_.id, None)

    async def _renew(self, round_: Round, attempt: int) -> None:
        if not await _io(self.store.extend_aggregation, round_.id, attempt, self._lease_end()):
            raise AggregationLost(f"attempt {attempt} no longer holds the round")

    async def _aggregate(self, round_: Round, attempt: int) -> None:
        """FedAvg of the round's stored updates, idempotently: the sum in memory (or rebuilt from the
        checkpoint) holds those already folded, the rest are read from S3; the aggregate's catalog id
        is derived from the round."""
        renew_at = self.clock() + timedelta(seconds=self.settings.aggregation_lease_s / 2)

        async def renew() -> None:  # a long fold keeps the round, so no one takes it over meanwhile
            nonlocal renew_at
            if self.clock() >= renew_at:
                await self._renew(round_, attempt)
                renew_at = self.clock() + timedelta(seconds=self.settings.aggregation_lease_s / 2)

        acc, _ = await self._accumulator(round_.id)
        updates = await self._fold_stored(round_, acc, renew)
        if acc.included - {u.id for u in updates}:
            # An update folded earlier was withdrawn (its device deleted): the sum cannot give it back
            # exactly, so it is rebuilt from the updates that remain.
            log.info("round %s: %d folded update(s) withdrawn; rebuilding the sum from the stored ones",
                     round_.id, len(acc.included - {u.id for u in updates}))
            acc = self._accumulators[round_.id] = FedAvgAccumulator(precision=self.settings.fedavg_sum_precision)
            updates = await self._fold_stored(round_, acc, renew)
        rejected: dict[str, str] = self._failed.get(round_.id, {})
        included = len(acc.included)
        await _io(self.store.update_round_counters, round_.id, participated=included + len(rejected),
                  completed=included, failed=len(rejected))
        if included < round_.min_devices:
            await self._fail(round_, f"only {included} of {len(updates)} stored updates are readable; "
                                     f"{round_.min_devices} required")
            return
        await self._renew(round_, attempt)
        averaged: StateDict = await _io(acc.take_average)  # in place: the sum becomes the average
        version = await self._store_aggregate(round_, acc, averaged)
        if await _io(self.store.transition_round, round_.id, RoundStatus.AGGREGATING, RoundStatus.COMPLETED,
                     completed_at=self.clock(), aggregated_model_id=version.model_id,
                     aggregated_model_path=version.model_path, aggregation_lease_until=None):
            round_.status = RoundStatus.COMPLETED
            round_.aggregated_model_id, round_.aggregated_model_path = version.model_id, version.model_path
            await self.fleet.round_event(round_, "round_completed", ACTOR)
        self._failed.pop(round_.id, None)

    async def _store_aggregate(self, round_: Round, acc: FedAvgAccumulator, averaged: StateDict) -> ModelVersion:
        """The round's model and its one version, made once however often aggregation is redone."""
        now = self.clock()
        model = CatalogModel(
            id=aggregate_model_id(round_.id), is_baseline=False, created_at=now, updated_at=now, round_id=round_.id,
            framework="pytorch", framework_version=_torch_version(),
            description=f"FedAvg of round {round_.round_number} ({len(acc.included)} updates, "
                        f"{acc.total_samples} samples)",
        )
        await _io(self.store.create_model, model)  # False: an earlier attempt made it; keep that one
        stored = await _io(self.store.get_model, model.id) or model
        for version in await _io(self.store.list_versions, model.id):
            if version.round_id == round_.id:  # an earlier attempt stored it, maybe not its catalog entry
                if stored.latest_version is None:
                    stored.latest_version, stored.model_path = version.version, version.model_path
                    stored.model_size_bytes, stored.model_hash = version.model_size_bytes, f"sha256:{version.sha256}"
                    stored.updated_at = now
                    await _io(self.store.update_model, stored)
                return version
        # Saved to a file and streamed to S3: serialised into memory beside the tensors, the model was
        # held twice (the round processor's peak, 2.04 models in bench_fedavg); the tensors go once written.
        with saved_state_dict(averaged) as path:
            return await self.fleet.add_version(ACTOR, stored, path, "pytorch", stored.description,
                                                round_id=round_.id)

    async def _fail(self, round_: Round, reason: str) -> None:
        if await _io(self.store.transition_round, round_.id, round_.status, RoundStatus.FAILED,
                     completed_at=self.clock(), failure_reason=reason, aggregation_lease_until=None):
            round_.status, round_.failure_reason = RoundStatus.FAILED, reason
            await self.fleet.round_event(round_, "round_failed", ACTOR)
        self._forget(round_.id)

    def _forget(self, round_id: str) -> None:
        self._accumulators.pop(round_id, None)
        self._failed.pop(round_id, None)
        self._checkpointed.pop(round_id, None)

    async def _lifecycle(self, event_type: str, round_id: str, **data: Any) -> None:
        await self.events.publish(MessageType.FLEET_EVENT, fleet_record(event_type, "round", round_id, **data))


def _torch_version() -> str:
    import torch

    return str(torch.__version__).split("+")[0]
