"""The fleet domain core: every fleet and federated-learning command and query.

REST (api/) and later gRPC call these methods; they never hold business rules of their own.
Commands that must be answered at once (409s, read-your-writes 201s) write through the
store's compare-and-set operations; everything else becomes an event for the processors.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from core.api_keys import hash_api_key, key_id, new_api_key
from core.artifacts import ArtifactStore, ArtifactStoreUnavailable
from core.auth import Principal
from core.errors import DomainError, ErrorKind, conflict, invalid, not_found, unavailable
from core.events import EventSink, EventsUnavailable, fleet_record
from core.fleet.models import (
    ApiKeyRecord,
    CatalogModel,
    Device,
    DevicePage,
    DeviceQuery,
    DeviceStatus,
    Freshness,
    ModelUpdate,
    ModelVersion,
    Platform,
    Round,
    RoundStatus,
    Seat,
    SubjectType,
    registry_status,
)
from core.fleet.store import FleetStore
from core.fleet.weights import load_state_dict
from core.serving.residency import ResidencyStore, observe
from schemas.clock import as_utc, utcnow
from settings import Settings
from topology.messages import MessageType

P = ParamSpec("P")
T = TypeVar("T")

MODEL_FORMATS = ("pytorch", "tensorflow", "onnx", "sklearn", "xgboost")
FILE_SUFFIX = {"pytorch": "pt", "tensorflow": "h5", "onnx": "onnx", "sklearn": "pkl", "xgboost": "json"}


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


TIMEOUT_ACTOR = "ingress:round-timeout"  # who the audit trail names for a timeout the ingress found
ACTIVE_ROUND_CACHE_S = 1.0  # how stale the heartbeat path's view of the active-round slot may be
OFFLINE_AFTER_INTERVALS = 5  # DESIGN: online within 2x the heartbeat interval, stale within 5x, offline beyond


def freshness_of(last_heartbeat: datetime | None, now: datetime, interval_s: float) -> Freshness:
    if last_heartbeat is None:
        return Freshness.OFFLINE
    if last_heartbeat.tzinfo is None:
        last_heartbeat = last_heartbeat.replace(tzinfo=UTC)
    age = (now - last_heartbeat).total_seconds()
    if age < 2 * interval_s:
        return Freshness.ONLINE
    if age < OFFLINE_AFTER_INTERVALS * interval_s:
        return Freshness.STALE
    return Freshness.OFFLINE


class FleetService:
    def __init__(
        self,
        settings: Settings,
        store: FleetStore,
        artifacts: ArtifactStore,
        events: EventSink,
        clock: Callable[[], datetime] = utcnow,
        residency: ResidencyStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.artifacts = artifacts
        self.events = events
        self.clock = clock
        self.residency = residency  # what the workers report: a catalog entry's registry status
        self._slot: tuple[float, str | None] | None = None  # (time.monotonic() read, active round id)

    async def observed(self, models: list[CatalogModel]) -> list[CatalogModel]:
        if self.residency is None or not models:
            return models
        return observe(models, await self._io(self.residency.all))

    # Blocking store and S3 calls run in threads so one slow call does not stall the loop.
    async def _io(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _publish(self, message_type: MessageType, record: dict[str, Any]) -> None:
        try:
            await self.events.publish(message_type, record)
        except EventsUnavailable as exc:
            raise unavailable("EVENTS_UNAVAILABLE", "The event log is unavailable; nothing was accepted.",
                              exc.retry_after_s) from exc

    async def _audit(self, actor: Principal | str, action: str, subject: str, outcome: str = "accepted",
                     before: dict[str, Any] | None = None, after: dict[str, Any] | None = None) -> None:
        actor_id = actor.key_id if isinstance(actor, Principal) else actor
        try:
            await self.events.audit(actor=actor_id, action=action, subject=subject, outcome=outcome,
                                    before=before, after=after)
        except EventsUnavailable as exc:
            raise unavailable("EVENTS_UNAVAILABLE", "The audit log is unavailable.", exc.retry_after_s) from exc

    async def _lifecycle(self, event_type: str, subject_kind: str, subject_id: str, **data: Any) -> None:
        await self._publish(MessageType.FLEET_EVENT, fleet_record(event_type, subject_kind, subject_id, **data))

    # --- devices ------------------------------------------------------------------------
    async def register_device(
        self, device_id: str, platform: Platform | None, capabilities: dict[str, Any] | None
    ) -> tuple[Device, str]:
        now = self.clock()
        api_key = new_api_key()
        device = Device(
            id=str(uuid.uuid4()), device_id=device_id, platform=platform or Platform.PYTHON,
            capabilities=capabilities or {}, status=DeviceStatus.ACTIVE, api_key_id=key_id(api_key),
            created_at=now, updated_at=now,
        )
        key = ApiKeyRecord(hash_api_key(api_key), key_id(api_key), SubjectType.DEVICE, device_id, now)
        if not await self._io(self.store.create_device, device, key):
            raise conflict("DEVICE_EXISTS", f"Device with device_id '{device_id}' already exists.")
        record = {"device_uuid": device.id, "device_id": device_id, "platform": device.platform.value,
                  "capabilities": device.capabilities, "api_key_id": device.api_key_id}
        try:
            await self._publish(MessageType.DEVICE_REGISTERED, record)
            await self._lifecycle("device_registered", "device", device_id, platform=device.platform.value)
            await self._audit(device.api_key_id, "device.register", f"device/{device_id}",
                              after={"device_id": device_id, "platform": device.platform.value})
        except DomainError:
            # No event, no device: undo the rows so a retry can register again.
            await self._io(self.store.revoke_api_key, key.key_hash, now)
            await self._io(self.store.delete_device, device_id)
            raise
        return device, api_key

    async def get_device(self, principal: Principal, device_id: str) -> Device:
        principal.require_device(device_id)
        device = await self._io(self.store.get_device, device_id)
        if device is None:
            raise not_found("DEVICE_NOT_FOUND", f"Device '{device_id}' not found.")
        return self._as_seen_now(device, self.clock())

    def _as_seen_now(self, device: Device, now: datetime) -> Device:
        """The reported status, except ``offline`` once its last heartbeat is older than 5 intervals."""
        device.freshness = freshness_of(device.last_heartbeat, now, self.settings.heartbeat_interval_s)
        if device.freshness is Freshness.OFFLINE and device.last_heartbeat is not None:
            device.status = DeviceStatus.OFFLINE
        return device

    def _offline_before(self, now: datetime) -> datetime:
        return now - timedelta(seconds=OFFLINE_AFTER_INTERVALS * self.settings.heartbeat_interval_s)

    async def list_devices(self, principal: Principal, status: DeviceStatus | None, platform: Platform | None,
                           heartbeat_before: datetime | None, limit: int, cursor: str | None) -> DevicePage:
        """Operators' fleet view, one page at a time. ``offline`` is derived (no heartbeat within 5
        intervals), so it filters on the heartbeat time; ``active``/``inactive`` are what devices reported
        and also exclude the offline ones."""
        principal.require_operator()
        heartbeat_before = as_utc(heartbeat_before)  # a time without a zone is read as UTC
        now = self.clock()
        cutoff = self._offline_before(now)
        if status is DeviceStatus.OFFLINE:
            before = cutoff if heartbeat_before is None else min(cutoff, heartbeat_before)
            query = DeviceQuery(platform=platform, heartbeat_before=before, limit=limit, cursor=cursor)
        else:
            since = cutoff if status is not None else None
            query = DeviceQuery(status=status, platform=platform, heartbeat_before=heartbeat_before,
                                heartbeat_since=since, limit=limit, cursor=cursor)
        try:
            page = await self._io(self.store.find_devices, query)
        except ValueError as exc:  # a cursor that is not one of ours
            raise invalid("INVALID_CURSOR", "The cursor is not one this API returned.") from exc
        return DevicePage([self._as_seen_now(d, now) for d in page.devices], page.next_cursor)

    async def heartbeat(
        self, principal: Principal, device_id: str, status: str | None, metrics: dict[str, Any] | None
    ) -> dict[str, Any]:
        principal.require_device(device_id)
        # A device key exists only while its device does (registration writes the device first and
        # revokes the key before undoing it), so only an operator's call needs the row read.
        if principal.is_operator and await self._io(self.store.get_device, device_id) is None:
            raise not_found("DEVICE_NOT_FOUND", f"Device '{device_id}' not found.")
        now = self.clock()
        record = {"device_id": device_id, "status": status or "active", "metrics": metrics or {}, "sent_at": now}
        # Accepted = stored by the broker; the device processor applies it to the row. Not audited:
        # a heartbeat is data (the heartbeats topic keeps it), not a change of rights or models.
        await self._publish(MessageType.DEVICE_HEARTBEAT, record)
        pending_round_id, message = await self._pending_round_for(principal, device_id, status or "active")
        return {"status": status or "active", "last_heartbeat": now, "pending_round_id": pending_round_id,
                "message": message}

    async def _pending_round_for(self, principal: Principal, device_id: str,
                                 reported: str) -> tuple[str | None, str | None]:
        """The round awaiting this device, if any. Selection is open: while the active round is below
        its target, a device that heartbeats and reports ``active`` takes a seat (it is online: it just
        beat), and learns it from this answer, as Flower's clients do when they connect."""
        round_ = await self._open_round()
        if round_ is None:
            return None, None
        if device_id not in round_.selected_devices:
            if reported != DeviceStatus.ACTIVE.value or len(round_.selected_devices) >= round_.target_devices:
                return None, None
            seat = await self._io(self.store.select_device, round_.id, device_id)
            if seat is Seat.TAKEN:
                await self._lifecycle("device_selected", "device", device_id, round_id=round_.id)
                await self._audit(principal, "round.device.select", f"round/{round_.id}/device/{device_id}",
                                  after={"round_id": round_.id})
            elif seat is not Seat.HELD:
                return None, None
        submitted = {u.device_id for u in await self._io(self.store.list_updates, round_.id)}
        device = await self._io(self.store.get_device, device_id)
        if device is not None and device.id in submitted:
            return None, None
        return round_.id, f"Training round {round_.round_number} is awaiting your participation."

    async def _active_round_id(self) -> str | None:
        """The active-round slot as read at most ACTIVE_ROUND_CACHE_S ago: every heartbeat asks it, and
        at fleet rates that was a Cassandra read per heartbeat for a value that changes a few times a
        day. A round started or cancelled through this process is seen at once (``_forget_round``);
        one started through another replica, within ACTIVE_ROUND_CACHE_S."""
        now = time.monotonic()
        if self._slot is not None and now - self._slot[0] < ACTIVE_ROUND_CACHE_S:
            return self._slot[1]
        round_id = await self._io(self.store.active_round_id)
        self._slot = (now, round_id)
        return round_id

    def _forget_round(self) -> None:
        self._slot = None

    async def _open_round(self) -> Round | None:
        """The active round while it takes devices and updates (before its timeout); None otherwise."""
        round_id = await self._active_round_id()
        if round_id is None:
            return None
        round_ = await self._io(self.store.get_round, round_id)
        if round_ is None or round_.status is not RoundStatus.ACTIVE or await self.close_if_expired(round_):
            return None
        return round_

    async def close_if_expired(self, round_: Round, actor: str = TIMEOUT_ACTOR) -> bool:
        """Settle a round whose time is up, wherever it is found (a start, a heartbeat, an update, the
        round processor's tick), so no outage of one process keeps it open: an active round past its
        ``timeout_at`` goes ``aggregating`` when ``min_devices`` updates are stored (a round processor
        aggregates it, see ``RoundProcessor.tick``), else ``failed``; a round left ``pending`` longer than
        its timeout (its starter died between the two writes of a start) is failed. Compare-and-set, so
        of the many that may find it, one settles it. True when the round was due (settled by anyone)."""
        now = self.clock()
        if round_.status is RoundStatus.PENDING:
            if now < round_.created_at + timedelta(seconds=round_.timeout_seconds):
                return False
            await self._settle(round_, RoundStatus.FAILED, actor, "the round's start did not complete")
            return True
        deadline = as_utc(round_.timeout_at)
        if round_.status is not RoundStatus.ACTIVE or deadline is None or now < deadline:
            return False
        stored = len(await self._io(self.store.list_updates, round_.id))
        if stored >= round_.min_devices:
            await self._settle(round_, RoundStatus.AGGREGATING, actor)
        else:
            await self._settle(round_, RoundStatus.FAILED, actor,
                               f"timeout with {stored} of {round_.min_devices} required updates")
        return True

    async def _settle(self, round_: Round, new: RoundStatus, actor: str, reason: str | None = None) -> None:
        fields: dict[str, Any] = ({"aggregation_attempts": 0, "aggregation_lease_until": None}
                                  if new is RoundStatus.AGGREGATING
                                  else {"completed_at": self.clock(), "failure_reason": reason})
        if await self._io(self.store.transition_round, round_.id, round_.status, new, **fields):
            round_.status, round_.failure_reason = new, reason
            await self.round_event(round_, f"round_{new.value}", actor)

    async def round_event(self, round_: Round, event_type: str, actor: Principal | str,
                          before: dict[str, Any] | None = None) -> None:
        """A round changed state: the round event, its lifecycle event and the audit record."""
        record = {"event_type": event_type, "round_id": round_.id, "round_number": round_.round_number,
                  "status": round_.status.value, "aggregated_model_id": round_.aggregated_model_id,
                  "failure_reason": round_.failure_reason}
        await self._publish(MessageType.ROUND_EVENT, record)
        await self._lifecycle(event_type, "round", round_.id, round_number=round_.round_number,
                              aggregated_model_id=round_.aggregated_model_id, reason=round_.failure_reason)
        await self._audit(actor, f"round.{round_.status.value}", f"round/{round_.id}", outcome=round_.status.value,
                          before=before, after=record)

    # --- status -------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        now = self.clock()
        since = now - timedelta(seconds=self.settings.active_device_window_s)
        total = await self._io(self.store.count_devices)
        active = await self._io(self.store.count_devices, since)
        latest = await self._io(self.store.latest_round)
        _, total_models = await self._io(self.store.list_models, limit=1, offset=0)
        return {
            "status": "operational", "active_devices": active, "total_devices": total,
            "current_round_number": latest.round_number if latest else None,
            "current_round_status": latest.status.value if latest else None,
            "total_models": total_models, "timestamp": now,
        }

    # --- rounds -------------------------------------------------------------------------
    async def start_round(
        self, principal: Principal, target_devices: int, min_devices: int, timeout_seconds: int,
        global_model_id: str | None, *, round_id: str | None = None,
    ) -> Round:
        """``round_id`` (default: a new one) lets a caller that may retry name the round it started."""
        principal.require_operator()
        if min_devices > target_devices:
            raise invalid("INVALID_ROUND", "min_devices must be less than or equal to target_devices.",
                          min_devices=min_devices, target_devices=target_devices)
        global_model_path = None
        if global_model_id is not None:
            model = await self._io(self.store.get_model, global_model_id)
            if model is None:
                raise not_found("MODEL_NOT_FOUND", f"Model '{global_model_id}' not found.")
            global_model_path = model.model_path
        else:
            latest = await self._latest_global_model()
            if latest is not None:
                global_model_id, global_model_path = latest.id, latest.model_path
        now = self.clock()
        round_ = Round(
            id=round_id or str(uuid.uuid4()), round_number=0, status=RoundStatus.PENDING, target_devices=target_devices,
            min_devices=min_devices, timeout_seconds=timeout_seconds, created_at=now,
            global_model_id=global_model_id, global_model_path=global_model_path,
        )
        self._forget_round()
        holder = await self._io(self.store.create_active_round, round_)
        if holder is not None and await self.close_if_expired(holder):
            # The holder's time was up (say no round processor ran to close it): it is settled now,
            # and if that freed the slot this start takes it.
            holder = await self._io(self.store.create_active_round, round_)
        if holder is not None:
            raise conflict("ROUND_ALREADY_ACTIVE",
                           f"Round {holder.round_number} is currently {holder.status.value}. "
                           "Wait for it to complete or cancel it.", round_id=holder.id)
        selected = await self._select_devices(target_devices, now)
        timeout_at = now + timedelta(seconds=timeout_seconds)
        await self._io(self.store.transition_round, round_.id, RoundStatus.PENDING, RoundStatus.ACTIVE,
                       selected_devices=selected, started_at=now, timeout_at=timeout_at)
        round_.status, round_.selected_devices = RoundStatus.ACTIVE, selected
        round_.started_at, round_.timeout_at = now, timeout_at
        record = {"event_type": "round_started", "round_id": round_.id, "round_number": round_.round_number,
                  "status": "active", "selected_devices": selected,
                  "details": {"min_devices": min_devices, "target_devices": target_devices,
                              "timeout_at": iso(timeout_at), "global_model_id": global_model_id}}
        try:
            await self._publish(MessageType.ROUND_EVENT, record)
            await self._lifecycle("round_started", "round", round_.id, round_number=round_.round_number,
                                  selected=len(selected))
            for device_id in selected:
                await self._lifecycle("device_selected", "device", device_id, round_id=round_.id)
            await self._audit(principal, "round.start", f"round/{round_.id}", after=record)
        except DomainError:
            await self._io(self.store.transition_round, round_.id, RoundStatus.ACTIVE, RoundStatus.FAILED,
                           completed_at=self.clock(), failure_reason="events unavailable at start")
            raise
        return round_

    async def eligible_device_count(self) -> int:
        """Devices a round started now could select (active, online or stale; never offline)."""
        return len(await self._select_devices(None, self.clock()))

    async def _select_devices(self, target: int | None, now: datetime) -> list[str]:
        """Freshest devices first (online before stale). Devices that last reported ``inactive`` and
        offline devices are never selected; the index query reads only the eligible ones."""
        eligible: list[Device] = []
        query: DeviceQuery | None = DeviceQuery(status=DeviceStatus.ACTIVE, heartbeat_since=self._offline_before(now),
                                                limit=500)
        while query is not None:
            page = await self._io(self.store.find_devices, query)
            eligible += page.devices
            query = replace(query, cursor=page.next_cursor) if page.next_cursor else None
        eligible.sort(key=lambda d: d.last_heartbeat or now, reverse=True)
        return [d.device_id for d in eligible[:target]]

    async def _latest_global_model(self) -> CatalogModel | None:
        models, _ = await self._io(self.store.list_models, limit=100, offset=0)
        for model in models:  # newest first: the latest aggregate, else the newest baseline
            if model.round_id is not None and model.model_path:
                return model
        return next((m for m in models if m.is_baseline and m.model_path), None)

    async def latest_aggregated_model(self) -> CatalogModel:
        """Seed 002's GET /models/latest: the newest model a round produced (else the newest baseline)."""
        latest = await self._latest_global_model()
        if latest is None or latest.latest_version is None:
            raise not_found("MODEL_NOT_FOUND", "No aggregated or baseline model with a version exists yet.")
        return latest

    async def improvements_of(self, model: CatalogModel) -> list[str]:
        """What the round that made ``model`` improved over the round before it, from the devices'
        reported training metrics (sample-weighted means over the updates each round received).
        Empty for a baseline, a first round, or metrics that did not improve or were not reported."""
        if model.round_id is None:
            return []
        models, _ = await self._io(self.store.list_models, limit=100, offset=0)
        earlier = [m for m in models if m.round_id is not None and m.created_at < model.created_at]
        if not earlier:
            return []
        before, after = earlier[0], model  # newest first
        old = await self._round_metrics(before.round_id or "")
        new = await self._round_metrics(model.round_id)
        numbers = {r.id: r.round_number for r in await asyncio.gather(
            self._io(self.store.get_round, before.round_id or ""), self._io(self.store.get_round, after.round_id or ""))
            if r is not None}
        span = f"round {numbers.get(before.round_id or '', '?')} -> {numbers.get(model.round_id, '?')}"
        out = []
        if old["loss"] is not None and new["loss"] is not None and new["loss"] < old["loss"]:
            out.append(f"mean local loss {old['loss']:.4f} -> {new['loss']:.4f} ({span})")
        if old["accuracy"] is not None and new["accuracy"] is not None and new["accuracy"] > old["accuracy"]:
            out.append(f"mean local accuracy {old['accuracy']:.4f} -> {new['accuracy']:.4f} ({span})")
        return out

    async def _round_metrics(self, round_id: str) -> dict[str, float | None]:
        updates = await self._io(self.store.list_updates, round_id)

        def weighted(values: list[tuple[float, int]]) -> float | None:
            samples = sum(n for _, n in values)
            return sum(v * n for v, n in values) / samples if samples else None

        return {"loss": weighted([(u.local_loss, u.num_samples) for u in updates if u.local_loss is not None]),
                "accuracy": weighted([(u.local_accuracy, u.num_samples) for u in updates
                                      if u.local_accuracy is not None])}

    async def current_round(self) -> Round:
        latest = await self._io(self.store.latest_round)
        if latest is None:
            raise not_found("ROUND_NOT_FOUND", "No training rounds exist yet.")
        return latest

    async def round_status(self, round_id: str) -> Round:
        round_ = await self._io(self.store.get_round, round_id)
        if round_ is None:
            raise not_found("ROUND_NOT_FOUND", f"Round '{round_id}' not found.")
        return round_

    async def cancel_round(self, principal: Principal, round_id: str) -> Round:
        """Operators end a round that has not finished (pending, active or aggregating): it becomes
        ``cancelled`` and frees the active slot; updates for it are refused from then on."""
        principal.require_operator()
        round_ = await self.round_status(round_id)
        reason = f"cancelled by operator {principal.key_id}"
        # CAS from the status read; a round that moved meanwhile (active -> aggregating) is read again.
        while not round_.status.terminal:
            if await self._io(self.store.transition_round, round_.id, round_.status, RoundStatus.CANCELLED,
                              completed_at=self.clock(), failure_reason=reason):
                before = {"status": round_.status.value}
                round_ = await self.round_status(round_id)
                await self.round_event(round_, "round_cancelled", principal, before=before)
                return round_
            round_ = await self.round_status(round_id)
        raise conflict("ROUND_ALREADY_FINISHED",
                       f"Round {round_.round_number} is already {round_.status.value}; only pending, active or "
                       "aggregating rounds can be cancelled.", round_id=round_.id, status=round_.status.value)

    async def submit_update(
        self, principal: Principal, round_id: str, data: bytes, num_samples: int, local_loss: float | None,
        local_accuracy: float | None, training_time_seconds: int | None,
    ) -> ModelUpdate:
        if principal.is_operator:
            raise DomainError(ErrorKind.FORBIDDEN, "FORBIDDEN", "Model updates are submitted with a device key.")
        device_id = principal.subject_id
        round_ = await self.round_status(round_id)
        await self.close_if_expired(round_)  # an update after the timeout is refused, whoever closes the round
        if round_.status is not RoundStatus.ACTIVE:
            raise conflict("ROUND_NOT_ACTIVE",
                           f"Round {round_.round_number} is no longer accepting updates "
                           f"(status: {round_.status.value}).")
        if device_id not in round_.selected_devices:
            raise DomainError(ErrorKind.FORBIDDEN, "DEVICE_NOT_SELECTED",
                              f"Device '{device_id}' was not selected for round {round_.round_number}.")
        self._check_size(len(data))
        load_state_dict(data)  # type check before anything is stored
        device = await self._io(self.store.get_device, device_id)
        if device is None:
            raise not_found("DEVICE_NOT_FOUND", f"Device '{device_id}' not found.")
        artifact_key = f"updates/{round_id}/{device.id}.pt"
        update = ModelUpdate(
            id=str(uuid.uuid4()), round_id=round_id, device_id=device.id,
            model_path=f"s3://{self.settings.s3_bucket}/{artifact_key}", artifact_key=artifact_key,
            model_size_bytes=len(data), sha256="", num_samples=num_samples, created_at=self.clock(),
            local_loss=local_loss, local_accuracy=local_accuracy, training_time_seconds=training_time_seconds,
        )
        stored = await self._store_artifact(artifact_key, data)
        update = ModelUpdate(**{**asdict(update), "sha256": stored.sha256})
        if not await self._io(self.store.add_update, update):
            raise conflict("UPDATE_ALREADY_SUBMITTED",
                           f"Device '{device_id}' already submitted an update for round {round_.round_number}.")
        record = {"update_id": update.id, "round_id": round_id, "device_id": device_id,
                  "device_uuid": device.id, "artifact_key": artifact_key, "size_bytes": len(data),
                  "sha256": stored.sha256, "num_samples": num_samples, "local_loss": local_loss,
                  "local_accuracy": local_accuracy, "training_time_seconds": training_time_seconds}
        await self._publish(MessageType.MODEL_UPDATE_SUBMITTED, record)
        await self._lifecycle("update_accepted", "round", round_id, device_id=device_id, update_id=update.id)
        await self._audit(principal, "round.update.submit", f"round/{round_id}/device/{device_id}",
                          after={"update_id": update.id, "sha256": stored.sha256, "num_samples": num_samples})
        return update

    def _check_size(self, size: int) -> None:
        if size > self.settings.max_upload_bytes:
            raise DomainError(ErrorKind.TOO_LARGE, "FILE_TOO_LARGE",
                              f"Upload of {size} bytes exceeds the limit of {self.settings.max_upload_bytes}.",
                              details={"max_bytes": self.settings.max_upload_bytes})
        if size == 0:
            raise invalid("EMPTY_FILE", "The uploaded file is empty.")

    async def _store_artifact(self, key: str, data: bytes | Path) -> Any:
        try:
            if isinstance(data, Path):  # streamed from the file, never read into memory whole
                return await self._io(self.artifacts.put_path, key, data)
            return await self._io(self.artifacts.put, key, data)
        except ArtifactStoreUnavailable as exc:
            raise unavailable("STORAGE_UNAVAILABLE", "Object storage is unavailable; nothing was stored.",
                              5.0) from exc

    # --- catalog ------------------------------------------------------------------------
    async def create_model(
        self, principal: Principal, *, framework: str | None, framework_version: str | None,
        description: str | None, is_baseline: bool,
    ) -> CatalogModel:
        principal.require_operator()
        now = self.clock()
        model = CatalogModel(id=str(uuid.uuid4()), is_baseline=is_baseline, created_at=now, updated_at=now,
                             framework=framework, framework_version=framework_version, description=description)
        await self._io(self.store.create_model, model)
        await self._lifecycle("model_registered", "model", model.id, framework=framework)
        await self._audit(principal, "model.create", f"model/{model.id}",
                          after={"framework": framework, "is_baseline": is_baseline})
        return model

    async def list_models(
        self, *, limit: int, offset: int, framework: str | None, is_baseline: bool | None,
        task_type: str | None = None, status: str | None = None,
    ) -> tuple[list[CatalogModel], int]:
        if status is None:
            models, total = await self._io(self.store.list_models, limit=limit, offset=offset, framework=framework,
                                           is_baseline=is_baseline, task_type=task_type)
            return await self.observed(models), total
        # Registry status is derived per entry, so filter it here (catalogs are small).
        everything, _ = await self._io(self.store.list_models, limit=100_000, offset=0, framework=framework,
                                       is_baseline=is_baseline, task_type=task_type)
        matching = [m for m in await self.observed(everything) if registry_status(m) == status]
        return matching[offset:offset + limit], len(matching)

    async def get_model(self, model_id: str) -> tuple[CatalogModel, list[ModelVersion]]:
        model = await self._io(self.store.get_model, model_id)
        if model is None:
            raise not_found("MODEL_NOT_FOUND", f"Model '{model_id}' not found.")
        [model] = await self.observed([model])
        return model, await self._io(self.store.list_versions, model_id)

    async def upload_version(
        self, principal: Principal, model_id: str, data: bytes, filename: str, fmt: str | None,
        description: str | None,
    ) -> ModelVersion:
        principal.require_operator()
        model = await self._io(self.store.get_model, model_id)
        if model is None:
            raise not_found("MODEL_NOT_FOUND", f"Model '{model_id}' not found.")
        if model.extra.get("builtin"):  # served from its package: an uploaded file would never be used
            raise conflict("BUILTIN_MODEL", f"Model '{model_id}' is built in; register your own id for your files.")
        self._check_size(len(data))
        fmt = fmt or model.framework or _format_from_name(filename)
        if fmt not in MODEL_FORMATS:
            raise invalid("INVALID_FORMAT", f"Unknown model format '{fmt}'.", allowed=list(MODEL_FORMATS))
        from core.fleet.conversion import check_artifact, convert_to_onnx

        check_artifact(fmt, data)
        return await self.add_version(principal.key_id, model, data, fmt, description, convert_to_onnx)

    async def add_version(
        self, actor: str, model: CatalogModel, data: bytes | Path, fmt: str, description: str | None,
        convert: Callable[[str, bytes], bytes | None] | None = None, round_id: str | None = None,
    ) -> ModelVersion:
        """Store an artifact (and its ONNX form when convertible) as the model's next version; ``data``
        may be a local file (a round's aggregate), which is streamed and not converted."""
        version = await self._io(self.store.next_version, model.id)
        key = f"models/{model.id}/v{version}/model.{FILE_SUFFIX.get(fmt, 'bin')}"
        stored = await self._store_artifact(key, data)
        onnx_key = onnx_stored = None
        if fmt == "onnx":
            onnx_key, onnx_stored = key, stored
        elif convert is not None and isinstance(data, bytes):
            onnx_bytes = await self._io(convert, fmt, data)
            if onnx_bytes is not None:
                onnx_key = f"models/{model.id}/v{version}/model.onnx"
                onnx_stored = await self._store_artifact(onnx_key, onnx_bytes)
        now = self.clock()
        entry = ModelVersion(
            model_id=model.id, version=version, format=fmt, artifact_key=key,
            model_path=f"s3://{self.settings.s3_bucket}/{key}", model_size_bytes=stored.size, sha256=stored.sha256,
            uploaded_at=now, description=description, onnx_key=onnx_key,
            onnx_size_bytes=onnx_stored.size if onnx_stored else None,
            onnx_sha256=onnx_stored.sha256 if onnx_stored else None, round_id=round_id,
        )
        await self._io(self.store.add_version, entry)
        model.latest_version, model.model_path = version, entry.model_path
        model.model_size_bytes, model.model_hash = stored.size, f"sha256:{stored.sha256}"
        if model.extra.get("status"):  # a registry entry from a source_url: an uploaded version makes it ready
            model.extra.update(status="ready", status_reason=None)
        model.updated_at = now
        await self._io(self.store.update_model, model)
        await self._lifecycle("model_version_created", "model", model.id, version=version, format=fmt,
                              onnx=onnx_key is not None)
        await self._audit(actor, "model.version.upload", f"model/{model.id}/v{version}",
                          after={"sha256": stored.sha256, "format": fmt, "size_bytes": stored.size})
        return entry

    async def download(self, model_id: str, version: int, fmt: str | None) -> tuple[ModelVersion, str, str, int, str]:
        """Returns (version, s3 key, filename, size, sha256) of the requested artifact."""
        entry = await self._io(self.store.get_version, model_id, version)
        if entry is None:
            raise not_found("VERSION_NOT_FOUND", f"Model '{model_id}' has no version {version}.")
        if fmt is None or fmt == entry.format:
            suffix = FILE_SUFFIX.get(entry.format, "bin")
            return entry, entry.artifact_key, f"model_v{version}.{suffix}", entry.model_size_bytes, entry.sha256
        if fmt == "onnx" and entry.onnx_key and entry.onnx_size_bytes is not None and entry.onnx_sha256:
            return entry, entry.onnx_key, f"model_v{version}.onnx", entry.onnx_size_bytes, entry.onnx_sha256
        raise not_found("FORMAT_NOT_AVAILABLE", f"Format '{fmt}' is not available for version {version}.")


def _format_from_name(filename: str) -> str:
    suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return {"pt": "pytorch", "pth": "pytorch", "onnx": "onnx", "h5": "tensorflow", "pkl": "sklearn",
            "json": "xgboost"}.get(suffix, "")
