"""Key management (issue 16): operators create, list, rotate and revoke keys of every role; a device
rotates its own key; an operator deletes a device. REST and the CLI call these; the rules live here.

A key stops working on every ingress replica before the call that revoked it returns: the store is
written first, then a key event goes to every replica (``KeyEventBus``) and the call waits until each
live one applied it. When that cannot be confirmed within ``key_propagation_timeout_s``, revoke and
device delete answer 503 ``KEY_REVOCATION_UNCONFIRMED`` (the store already says revoked; replicas that
missed the event stop accepting the key within ``key_cache_max_age_s``; repeating the call is safe and
confirms again). Rotation cannot fail that way without losing the new key, so it answers with the key
and ``propagation.confirmed = false``.

Every action is audited with the actor's key id, never a key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from core.api_keys import hash_api_key, key_id, new_api_key
from core.auth import Action, Authenticator, KeyEvent, KeyEventBus, Principal, Propagation
from core.errors import DomainError, ErrorKind, conflict, invalid, not_found, unavailable
from core.events import EventSink, EventsUnavailable, fleet_record
from core.fleet.models import ApiKeyRecord, RoundStatus, SubjectType
from core.fleet.store import FleetStore
from schemas.clock import utcnow
from settings import Settings
from topology.messages import MessageType

P = ParamSpec("P")
T = TypeVar("T")
SUBJECT_MAX = 255


@dataclass(frozen=True)
class IssuedKey:
    """A new key: its record and the secret, which is shown this once and never stored."""

    record: ApiKeyRecord
    api_key: str


@dataclass(frozen=True)
class Revocation:
    keys: list[ApiKeyRecord]  # as they are now (revoked)
    propagation: Propagation


class KeyService:
    def __init__(self, settings: Settings, store: FleetStore, events: EventSink, authenticator: Authenticator,
                 bus: KeyEventBus, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.store = store
        self.events = events
        self.authenticator = authenticator
        self.bus = bus
        self.clock = clock

    async def _io(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _audit(self, actor: Principal, action: str, subject: str, *, before: dict[str, Any] | None = None,
                     after: dict[str, Any] | None = None, outcome: str = "accepted") -> None:
        try:
            await self.events.audit(actor=actor.key_id, action=action, subject=subject, outcome=outcome,
                                    before=before, after=after)
        except EventsUnavailable as exc:
            raise unavailable("EVENTS_UNAVAILABLE", "The audit log is unavailable.", exc.retry_after_s) from exc

    # --- what operators do -------------------------------------------------------------
    async def create(self, actor: Principal, role: SubjectType, subject: str | None, label: str | None,
                     rate_limit_per_minute: int | None) -> IssuedKey:
        """A new key. A device key needs its device (an operator re-issuing one for a device that lost
        its key); service and operator keys name what holds them (default: the label or the role)."""
        actor.require(Action.KEYS)
        subject = (subject or label or role.value).strip()
        if not subject or len(subject) > SUBJECT_MAX:
            raise invalid("INVALID_SUBJECT", f"subject must be 1 to {SUBJECT_MAX} characters.")
        if role is SubjectType.DEVICE and await self._io(self.store.get_device, subject) is None:
            raise not_found("DEVICE_NOT_FOUND", f"Device '{subject}' not found: device keys belong to a "
                                                "registered device.")
        issued = self._new_key(role, subject, label, actor.key_id, rate_limit_per_minute)
        await self._io(self.store.put_api_key, issued.record)
        await self._audit(actor, "key.create", f"key/{issued.record.key_id}", after=key_view(issued.record))
        return issued

    async def list_keys(self, actor: Principal, subject: str | None = None) -> list[ApiKeyRecord]:
        actor.require(Action.KEYS)
        keys = await self._io(self.store.list_api_keys, subject)
        await self._audit(actor, "key.list", f"keys/{subject}" if subject else "keys", after={"count": len(keys)})
        return keys

    async def rotate(self, actor: Principal, target_key_id: str) -> tuple[IssuedKey, Revocation]:
        """A new key with the old one's role, subject, label and limit; the old one is revoked."""
        actor.require(Action.KEYS)
        old = await self._stored(target_key_id)
        if old.revoked_at is not None:
            raise conflict("KEY_REVOKED", f"Key {target_key_id} is revoked; create a new one instead.",
                           key_id=target_key_id)
        issued = self._new_key(old.subject_type, old.subject_id, old.label, actor.key_id, old.rate_limit_per_minute)
        await self._io(self.store.put_api_key, issued.record)
        revocation = await self._revoke([old])
        await self._audit(actor, "key.rotate", f"key/{old.key_id}", before=key_view(old),
                          after={**key_view(issued.record), "propagation": revocation.propagation.row()})
        return issued, revocation

    async def revoke(self, actor: Principal, target_key_id: str) -> Revocation:
        """Idempotent: revoking a revoked key confirms again that every replica dropped it."""
        actor.require(Action.KEYS)
        old = await self._stored(target_key_id)
        revocation = await self._revoke([old])
        await self._audit(actor, "key.revoke", f"key/{old.key_id}", before=key_view(old),
                          after={"propagation": revocation.propagation.row()},
                          outcome="confirmed" if revocation.propagation.confirmed else "unconfirmed")
        self._raise_unconfirmed(revocation)
        return revocation

    async def delete_device(self, actor: Principal, device_id: str) -> Revocation:
        """The device's row goes, every key of it is revoked on every replica, and its update to the
        round in progress (not yet aggregating) is withdrawn: the round processor, which may already
        have folded it into its running sum, sees at aggregation that the stored updates no longer
        include it and rebuilds the sum from those that remain. Updates to rounds already aggregated
        stay, as those rounds' record. A ``device_deleted`` fleet event says what was done."""
        actor.require(Action.FLEET_ADMIN)
        device = await self._io(self.store.get_device, device_id)
        keys = await self._io(self.store.list_api_keys, device_id)
        keys = [k for k in keys if k.subject_type is SubjectType.DEVICE]
        if device is None and all(k.revoked_at is not None for k in keys):
            raise not_found("DEVICE_NOT_FOUND", f"Device '{device_id}' not found.")
        revocation = await self._revoke(keys)  # first: a half-done delete never leaves a working key
        await self._io(self.store.delete_device, device_id)
        withdrawn = await self._withdraw_pending_update(device_id)
        try:
            await self.events.publish(MessageType.FLEET_EVENT, fleet_record(
                "device_deleted", "device", device_id, deleted_by=actor.key_id,
                revoked_key_ids=[k.key_id for k in keys], withdrawn_update_ids=withdrawn))
        except EventsUnavailable as exc:
            raise unavailable("EVENTS_UNAVAILABLE", "The device is deleted but its event could not be published; "
                                                    "repeat the call.", exc.retry_after_s) from exc
        await self._audit(actor, "device.delete", f"device/{device_id}",
                          before={"device_id": device_id, "key_ids": [k.key_id for k in keys]},
                          after={"propagation": revocation.propagation.row()},
                          outcome="confirmed" if revocation.propagation.confirmed else "unconfirmed")
        self._raise_unconfirmed(revocation)
        return revocation

    async def _withdraw_pending_update(self, device_id: str) -> list[str]:
        round_id = await self._io(self.store.active_round_id)
        round_ = await self._io(self.store.get_round, round_id) if round_id else None
        if round_ is None or round_.status not in (RoundStatus.PENDING, RoundStatus.ACTIVE):
            return []
        update_id = await self._io(self.store.withdraw_update, round_.id, device_id)
        return [update_id] if update_id else []

    # --- what a device does ------------------------------------------------------------
    async def rotate_device_key(self, actor: Principal, device_id: str) -> tuple[IssuedKey, Revocation]:
        """A device swaps the key it called with for a new one (an operator may do it for any device:
        every key of the device is revoked and one new key issued)."""
        actor.require(Action.OWN_DEVICE)
        actor.require_device(device_id)
        if await self._io(self.store.get_device, device_id) is None:
            raise not_found("DEVICE_NOT_FOUND", f"Device '{device_id}' not found.")
        keys = [k for k in await self._io(self.store.list_api_keys, device_id)
                if k.subject_type is SubjectType.DEVICE and k.revoked_at is None]
        if actor.subject_type is SubjectType.DEVICE:
            keys = [k for k in keys if k.key_id == actor.key_id]
        label = keys[0].label if keys else None
        limit = keys[0].rate_limit_per_minute if keys else None
        issued = self._new_key(SubjectType.DEVICE, device_id, label, actor.key_id, limit)
        await self._io(self.store.put_api_key, issued.record)
        revocation = await self._revoke(keys)
        await self._audit(actor, "device.key.rotate", f"device/{device_id}",
                          before={"key_ids": [k.key_id for k in keys]},
                          after={**key_view(issued.record), "propagation": revocation.propagation.row()})
        return issued, revocation

    # --- helpers -----------------------------------------------------------------------
    def _new_key(self, role: SubjectType, subject: str, label: str | None, created_by: str,
                 rate_limit_per_minute: int | None) -> IssuedKey:
        secret = new_api_key()
        record = ApiKeyRecord(hash_api_key(secret), key_id(secret), role, subject, self.clock(), label=label,
                              created_by=created_by, rate_limit_per_minute=rate_limit_per_minute)
        return IssuedKey(record, secret)

    async def _stored(self, target_key_id: str) -> ApiKeyRecord:
        if target_key_id == self.authenticator.admin_key_id:
            raise conflict("CONFIGURED_KEY", "This is the environment's operator key (TRIBUTARY_ADMIN_API_KEY); "
                                             "change the setting to rotate or retire it.", key_id=target_key_id)
        record = await self._io(self.store.find_api_key, target_key_id)
        if record is None:
            raise not_found("KEY_NOT_FOUND", f"Key {target_key_id} not found.")
        return record

    async def _revoke(self, keys: list[ApiKeyRecord]) -> Revocation:
        """Store first, then tell every replica: a replica that reads the store after the event sees
        the revocation, one that cached the key drops it when the event arrives."""
        if not keys:
            return Revocation([], Propagation(True, 0))
        now = self.clock()
        revoked = []
        for key in keys:
            await self._io(self.store.revoke_api_key, key.key_hash, now)  # False: revoked before, kept as is
            revoked.append(key if key.revoked_at is not None else replace(key, revoked_at=now))
        events = [KeyEvent(k.key_id, "revoked", k.subject_type, k.subject_id, now) for k in revoked]
        try:
            propagation = await self.bus.broadcast(events)
        except EventsUnavailable as exc:
            raise unavailable("EVENTS_UNAVAILABLE", "The key is revoked in the store but the replicas could not be "
                                                    "told; repeat the call.", exc.retry_after_s) from exc
        return Revocation(revoked, propagation)

    def _raise_unconfirmed(self, revocation: Revocation) -> None:
        if revocation.propagation.confirmed:
            return
        raise DomainError(
            ErrorKind.UNAVAILABLE, "KEY_REVOCATION_UNCONFIRMED",
            "The key is revoked in the store, but not every ingress replica confirmed it within "
            f"{self.settings.key_propagation_timeout_s:g}s.",
            retry_after_s=1.0, details={"key_ids": [k.key_id for k in revocation.keys],
                                        **revocation.propagation.row(),
                                        "cache_max_age_s": self.settings.key_cache_max_age_s},
            hint=f"Replicas that missed it refuse the key within {self.settings.key_cache_max_age_s:g}s at the "
                 "latest; repeating the call is safe and confirms again.")


def key_view(record: ApiKeyRecord) -> dict[str, Any]:
    """What may be shown and audited about a key: never the key, never its hash."""
    return {"key_id": record.key_id, "role": record.subject_type.value, "subject": record.subject_id,
            "label": record.label, "created_at": record.created_at, "created_by": record.created_by,
            "revoked_at": record.revoked_at, "rate_limit_per_minute": record.rate_limit_per_minute}
