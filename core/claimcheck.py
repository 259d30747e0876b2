"""Large inference inputs and results by reference: the S3 claim check.

A request's ``input_data`` (or a reply's ``output_data``) whose JSON is larger than
``TRIBUTARY_INFERENCE_CLAIM_CHECK_BYTES`` is stored in S3 under ``claims/`` and the Kafka
message carries only its claim: ``{bucket, key, size, sha256}`` in ``input_ref`` (``output_ref``)
while ``input_data`` (``output_data``) is ``{}``. Whoever reads the message fetches the object,
checks its size and sha256 and puts the value back, so everything past the transport sees the
same record as for a small request. Kafka messages stay a few hundred bytes whatever the input.

A claim that cannot be honoured (object missing, size or sha256 mismatch, another bucket) is
``ClaimCheckError``, a ``DecodeError``: the message is poison and is dead-lettered with the reason
at once (retrying cannot make a corrupted object whole). S3 being down is not that: the store's
``ArtifactStoreUnavailable`` propagates and the message waits for S3 like any other.

Objects expire by an S3 lifecycle rule on ``claims/`` (``apply_lifecycle``, run where ``tributary up``
ensures the bucket, also for an external S3). SeaweedFS 4.48 stores and returns such a rule but, as measured
on the local stack, stamps no TTL on objects written under it (its expiry depends on a maintenance
worker ``weed mini`` is not shown to run), so ``sweep`` deletes expired claim objects itself and
the ingress runs it every ``TRIBUTARY_CLAIM_CHECK_SWEEP_INTERVAL_S``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from core.artifacts import ArtifactNotFound, ArtifactStore
from schemas.clock import utcnow
from schemas.codec import DecodeError

log = logging.getLogger(__name__)

PREFIX = "claims/"
LIFECYCLE_RULE_ID = "tributary-claim-checks"
# Reply codes of a claim the worker could not honour (the request was not run).
INPUT_REFERENCE_INVALID = "INPUT_REFERENCE_INVALID"
CONTENT_TYPE = "application/json"


class ClaimCheckError(DecodeError):
    """A claim that cannot be honoured: missing object, size or sha256 mismatch, foreign bucket."""


@dataclass(frozen=True)
class Claim:
    bucket: str
    key: str
    size: int
    sha256: str

    def as_record(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "size": self.size, "sha256": self.sha256}

    @classmethod
    def of(cls, record: dict[str, Any]) -> Claim:
        try:
            return cls(str(record["bucket"]), str(record["key"]), int(record["size"]), str(record["sha256"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ClaimCheckError(f"malformed claim check {record!r:.200}") from exc


def encode(value: Any) -> bytes:
    """The JSON bytes a value takes (the codec writes JSON fields the same way)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def may_exceed(value: Any, limit: int) -> bool:
    """False when ``value``'s JSON is certainly at most ``limit`` bytes, from an upper bound that
    needs no encoding: a string takes at most 12 bytes a character (an escaped surrogate pair),
    a number 26, plus quotes and separators. Stops as soon as the bound passes ``limit``."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += 12 * len(item) + 3
        elif item is None or isinstance(item, bool | float):
            total += 26
        elif isinstance(item, int):
            total += len(str(item)) + 1 if item.bit_length() > 64 else 22
        elif isinstance(item, dict):
            total += 2
            for key, child in item.items():
                total += 12 * len(str(key)) + 4
                stack.append(child)
        elif isinstance(item, list | tuple):
            if set(map(type, item)) == {float}:  # embeddings: one C-speed step, not one per number
                total += 27 * len(item) + 2
            else:
                total += 2 + len(item)
                stack.extend(item)
        else:
            return True  # not JSON as such: let the encoder decide
        if total > limit:
            return True
    return False


class ClaimCheck:
    """Offloads large values to S3 and resolves claims; blocking S3 calls run off the event loop."""

    def __init__(self, store: ArtifactStore | Callable[[], ArtifactStore], *, bucket: str, threshold_bytes: int,
                 clock: Callable[[], datetime] = utcnow) -> None:
        # A factory defers the S3 client until the first large value: small traffic never needs it.
        self._store = store
        self.bucket = bucket
        self.threshold_bytes = threshold_bytes
        self.clock = clock

    def store(self) -> ArtifactStore:
        if not isinstance(self._store, ArtifactStore):
            self._store = self._store()
        return self._store

    # --- blocking primitives --------------------------------------------------------------
    def put(self, kind: str, body: bytes) -> Claim:
        """Store ``body`` under ``claims/<kind>/<date>/<uuid>.json``; its claim."""
        key = f"{PREFIX}{kind}/{self.clock():%Y-%m-%d}/{uuid.uuid4()}.json"
        stored = self.store().put(key, body, content_type=CONTENT_TYPE)
        return Claim(self.bucket, stored.key, stored.size, stored.sha256)

    def fetch(self, claim: Claim) -> Any:
        """The value a claim names, after checking bucket, size and sha256; ClaimCheckError otherwise."""
        if claim.bucket != self.bucket:
            raise ClaimCheckError(f"claim names bucket {claim.bucket!r}; only {self.bucket!r} is read")
        if not claim.key.startswith(PREFIX):
            raise ClaimCheckError(f"claim key {claim.key!r:.200} is outside {PREFIX}")
        try:
            body = self.store().get(claim.key)
        except ArtifactNotFound as exc:
            raise ClaimCheckError(f"claim object {claim.key} does not exist (expired or never written)") from exc
        if len(body) != claim.size:
            raise ClaimCheckError(f"claim object {claim.key} has {len(body)} bytes; the message says {claim.size}")
        digest = hashlib.sha256(body).hexdigest()
        if digest != claim.sha256:
            raise ClaimCheckError(f"claim object {claim.key} fails its sha256 check: {digest} != {claim.sha256}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ClaimCheckError(f"claim object {claim.key} is not JSON: {exc}") from exc

    def _resolve(self, record: dict[str, Any], data_field: str, ref_field: str) -> dict[str, Any]:
        ref = record.get(ref_field)
        value = self.fetch(Claim.of(ref)) if isinstance(ref, dict) else None
        if not isinstance(value, dict):
            raise ClaimCheckError(f"claim {ref!r:.200} does not name a JSON object")
        return {**record, data_field: value, ref_field: None}

    async def _offload(self, record: dict[str, Any], data_field: str, ref_field: str, kind: str) -> dict[str, Any]:
        value = record.get(data_field)
        if value is None or record.get(ref_field):
            return record
        # A bound first: encoding is slow (~0.35 ms for a 384-d embedding) and the codec encodes
        # again; only a value that may be large is measured as the codec will write it.
        if not may_exceed(value, self.threshold_bytes):
            return record
        body = encode(value)
        if len(body) <= self.threshold_bytes:
            return record
        claim = await asyncio.to_thread(self.put, kind, body)
        return {**record, data_field: {}, ref_field: claim.as_record()}

    async def _resolve_async(self, record: dict[str, Any], data_field: str, ref_field: str) -> dict[str, Any]:
        if not record.get(ref_field):
            return record
        return await asyncio.to_thread(self._resolve, record, data_field, ref_field)

    # --- the four uses ------------------------------------------------------------------------
    async def offload_input(self, record: dict[str, Any]) -> dict[str, Any]:
        """An ``inference_request`` record whose large ``input_data`` became ``input_ref``."""
        return await self._offload(record, "input_data", "input_ref", "inputs")

    async def resolve_input(self, record: dict[str, Any]) -> dict[str, Any]:
        """The request record with ``input_data`` back from its claim (unchanged when it has none)."""
        return await self._resolve_async(record, "input_data", "input_ref")

    async def offload_output(self, record: dict[str, Any]) -> dict[str, Any]:
        """An ``inference_response`` record whose large ``output_data`` became ``output_ref``."""
        return await self._offload(record, "output_data", "output_ref", "outputs")

    async def resolve_output(self, record: dict[str, Any]) -> dict[str, Any]:
        """The reply record with ``output_data`` back from its claim (unchanged when it has none)."""
        return await self._resolve_async(record, "output_data", "output_ref")


# --- expiry ---------------------------------------------------------------------------------------

def lifecycle_rule(retention_days: int) -> dict[str, Any]:
    return {"ID": LIFECYCLE_RULE_ID, "Filter": {"Prefix": PREFIX}, "Status": "Enabled",
            "Expiration": {"Days": retention_days}}


def apply_lifecycle(client: Any, bucket: str, retention_days: int) -> dict[str, Any]:
    """Put the ``claims/`` expiration rule on ``bucket``, keeping any other rule; returns the rule."""
    rule = lifecycle_rule(retention_days)
    try:
        existing = client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("NoSuchLifecycleConfiguration", "NoSuchBucket", "404"):
            raise
        existing = []
    rules = [r for r in existing if r.get("ID") != LIFECYCLE_RULE_ID] + [rule]
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    return rule


def sweep(client: Any, bucket: str, *, older_than: timedelta, now: datetime | None = None) -> int:
    """Delete claim objects last modified before ``now - older_than``; how many were deleted."""
    cutoff = (now or utcnow()) - older_than
    deleted = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX):
        expired = [{"Key": obj["Key"]} for obj in page.get("Contents", []) if obj["LastModified"] < cutoff]
        for start in range(0, len(expired), 1000):  # DeleteObjects takes at most 1000 keys
            batch = expired[start:start + 1000]
            client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            deleted += len(batch)
    return deleted


async def sweep_periodically(client: Any, bucket: str, *, retention_days: int, interval_s: float) -> None:
    """``sweep`` every ``interval_s`` until cancelled (the ingress runs it; replicas may overlap:
    deleting an object twice is harmless). A failed sweep is logged and tried again next time."""
    while True:
        try:
            deleted = await asyncio.to_thread(sweep, client, bucket, older_than=timedelta(days=retention_days))
            if deleted:
                log.info("deleted %d expired claim-check object(s)", deleted)
        except Exception as exc:  # S3 down: the objects wait for the next sweep
            log.warning("claim-check sweep failed: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(interval_s)
