"""API keys (issue 16): operators create, list, rotate and revoke keys; a device rotates its own;
an operator deletes a device. Thin: parse, call ``core.keys.KeyService``, render."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from api.context import AppContext, authenticated, context
from api.routers.fleet import ERRORS, DeviceId
from core.auth import Principal, Propagation
from core.fleet.models import ApiKeyRecord, SubjectType

router = APIRouter(prefix="/api/v1", tags=["Keys"])
Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(authenticated)]
KeyId = Annotated[str, Path(pattern=r"^key_[0-9a-f]{16}$", description="The key's id (key_ + 16 hex digits)")]


class KeyCreateRequest(BaseModel):
    role: Literal["device", "service", "operator"]
    subject: str | None = Field(None, min_length=1, max_length=255, description=(
        "What holds the key: the device id for a device key (the device must be registered); a name for "
        "service and operator keys (default: the label, else the role)"))
    label: str | None = Field(None, max_length=255)
    rate_limit_per_minute: int | None = Field(None, ge=1, le=10_000_000,
                                              description="This key's own limit; unset: its role's")


class KeyOut(BaseModel):
    """A key as it may be shown: never the key, never its hash."""

    key_id: str
    role: str
    subject: str
    label: str | None
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None
    rate_limit_per_minute: int | None

    @classmethod
    def of(cls, record: ApiKeyRecord) -> KeyOut:
        return cls(key_id=record.key_id, role=record.subject_type.value, subject=record.subject_id,
                   label=record.label, created_at=record.created_at, created_by=record.created_by,
                   revoked_at=record.revoked_at, rate_limit_per_minute=record.rate_limit_per_minute)


class PropagationOut(BaseModel):
    confirmed: bool = Field(description="every live ingress replica applied the revocation before this answer")
    replicas: int = Field(description="live ingress replicas that applied it")
    pending: list[str] = Field(description="replicas that had not within the bound")

    @classmethod
    def of(cls, propagation: Propagation) -> PropagationOut:
        return cls(**propagation.row())


class IssuedKeyOut(KeyOut):
    api_key: str = Field(description="The key. Store it securely: it is shown this once and cannot be retrieved.")


class RotatedKeyOut(IssuedKeyOut):
    revoked_key_ids: list[str]
    propagation: PropagationOut


class KeyList(BaseModel):
    keys: list[KeyOut]


class RevokedOut(BaseModel):
    revoked: list[KeyOut]
    propagation: PropagationOut


class DeviceDeletedOut(BaseModel):
    device_id: str
    deleted: bool = True
    revoked: list[KeyOut]
    propagation: PropagationOut


@router.post("/keys", status_code=201, response_model=IssuedKeyOut, responses=ERRORS)
async def create_key(body: KeyCreateRequest, ctx: Ctx, caller: Caller) -> IssuedKeyOut:
    """Operators: a new key of any role. The key is in this answer only."""
    issued = await ctx.keys.create(caller, SubjectType(body.role), body.subject, body.label,
                                   body.rate_limit_per_minute)
    return IssuedKeyOut(**KeyOut.of(issued.record).model_dump(), api_key=issued.api_key)


@router.get("/keys", response_model=KeyList, responses=ERRORS)
async def list_keys(
    ctx: Ctx, caller: Caller,
    subject: Annotated[str | None, Query(max_length=255, description="Only this subject's keys")] = None,
) -> KeyList:
    return KeyList(keys=[KeyOut.of(k) for k in await ctx.keys.list_keys(caller, subject)])


@router.post("/keys/{key_id}/rotate", status_code=201, response_model=RotatedKeyOut, responses=ERRORS)
async def rotate_key(key_id: KeyId, ctx: Ctx, caller: Caller) -> RotatedKeyOut:
    """A new key with the same role, subject, label and limit; the old one stops working on every
    replica. ``propagation.confirmed`` false: a replica did not confirm in time (it refuses the old key
    within ``TRIBUTARY_KEY_CACHE_MAX_AGE_S`` at the latest)."""
    issued, revocation = await ctx.keys.rotate(caller, key_id)
    return _rotated(issued.record, issued.api_key, revocation.keys, revocation.propagation)


async def _revoke(key_id: str, ctx: AppContext, caller: Principal) -> RevokedOut:
    revocation = await ctx.keys.revoke(caller, key_id)
    return RevokedOut(revoked=[KeyOut.of(k) for k in revocation.keys],
                      propagation=PropagationOut.of(revocation.propagation))


@router.post("/keys/{key_id}/revoke", response_model=RevokedOut, responses=ERRORS)
async def revoke_key(key_id: KeyId, ctx: Ctx, caller: Caller) -> RevokedOut:
    """The key stops working on every ingress replica before this answers; 503
    ``KEY_REVOCATION_UNCONFIRMED`` when a replica could not confirm in time (repeat the call)."""
    return await _revoke(key_id, ctx, caller)


@router.delete("/keys/{key_id}", response_model=RevokedOut, responses=ERRORS)
async def delete_key(key_id: KeyId, ctx: Ctx, caller: Caller) -> RevokedOut:
    """The same as ``POST /keys/{key_id}/revoke`` (the record stays, revoked, for the audit trail)."""
    return await _revoke(key_id, ctx, caller)


@router.post("/devices/{device_id}/keys/rotate", status_code=201, response_model=RotatedKeyOut, tags=["Devices"],
             responses=ERRORS)
async def rotate_device_key(device_id: DeviceId, ctx: Ctx, caller: Caller) -> RotatedKeyOut:
    """A device swaps the key it calls with for a new one (the old one stops working everywhere)."""
    issued, revocation = await ctx.keys.rotate_device_key(caller, device_id)
    return _rotated(issued.record, issued.api_key, revocation.keys, revocation.propagation)


@router.delete("/devices/{device_id}", response_model=DeviceDeletedOut, tags=["Devices"], responses=ERRORS)
async def delete_device(device_id: DeviceId, ctx: Ctx, caller: Caller) -> DeviceDeletedOut:
    """Operators: the device's row goes, its keys stop working on every replica, and a
    ``device_deleted`` fleet event is published. Its device id may be registered again."""
    revocation = await ctx.keys.delete_device(caller, device_id)
    return DeviceDeletedOut(device_id=device_id, revoked=[KeyOut.of(k) for k in revocation.keys],
                            propagation=PropagationOut.of(revocation.propagation))


def _rotated(record: ApiKeyRecord, api_key: str, revoked: list[ApiKeyRecord],
             propagation: Propagation) -> RotatedKeyOut:
    return RotatedKeyOut(**KeyOut.of(record).model_dump(), api_key=api_key,
                         revoked_key_ids=[k.key_id for k in revoked], propagation=PropagationOut.of(propagation))
