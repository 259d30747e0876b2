"""Tamper-evident audit records.

Every producer instance writes its own hash chain: ``chain_id`` = service:instance, keyed
by chain id so the whole chain lands on one partition in order. Each record carries
``seq`` (0, 1, 2, ...), ``prev_hash`` and ``hash = H(prev_hash || canonical JSON of the
record without its hash)`` where H is HMAC-SHA256 with ``TRIBUTARY_AUDIT_HMAC_KEY`` (or
plain SHA-256 when no key is set: then tampering is detectable only by whoever trusts
the first record). A replay proves that no record was altered (hash), dropped or inserted
(seq and prev_hash) — except after the last record of a chain, which no chain can show.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

GENESIS = "0" * 64
_KEY_LIKE = re.compile(r"sk_live_[A-Za-z0-9]{8,}")
CHAINED_FIELDS = ("chain_id", "seq", "prev_hash", "actor", "action", "subject", "outcome", "before", "after",
                  "timestamp", "message_id")


class SecretInAuditRecord(ValueError):
    """Audit records name keys by id; a raw key must never be written."""


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def record_digest(record: dict[str, Any], prev_hash: str, key: bytes | None) -> str:
    body = {name: _canonical(record.get(name)) for name in CHAINED_FIELDS if name != "prev_hash"}
    message = prev_hash.encode() + json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    if key:
        return hmac.new(key, message, hashlib.sha256).hexdigest()
    return hashlib.sha256(message).hexdigest()


def refuse_secrets(*values: Any) -> None:
    for value in values:
        text = json.dumps(value, default=str) if not isinstance(value, str) else value
        if _KEY_LIKE.search(text):
            raise SecretInAuditRecord("an API key must not appear in an audit record")


class AuditChain:
    """Assigns seq/prev_hash/hash for one producer's chain (callers serialise calls)."""

    def __init__(self, chain_id: str, key: bytes | None) -> None:
        self.chain_id = chain_id
        self.key = key
        self.seq = 0
        self.prev_hash = GENESIS

    def seal(self, record: dict[str, Any]) -> dict[str, Any]:
        refuse_secrets(record.get("actor"), record.get("subject"), record.get("before"), record.get("after"))
        sealed = {**record, "chain_id": self.chain_id, "seq": self.seq, "prev_hash": self.prev_hash}
        sealed["hash"] = record_digest(sealed, self.prev_hash, self.key)
        self.seq += 1
        self.prev_hash = sealed["hash"]
        return sealed


@dataclass(frozen=True)
class BrokenLink:
    chain_id: str
    seq: int
    reason: str


@dataclass(frozen=True)
class VerificationResult:
    ok: bool
    checked: int
    chains: int
    first_broken: BrokenLink | None = None


def verify_chain(
    records: Iterable[dict[str, Any]], key: bytes | None, *, from_start: bool = True
) -> VerificationResult:
    """Check records in log order. ``from_start=False`` accepts a window that begins mid-chain
    (the first record seen of each chain anchors it; its own hash is still checked)."""
    last: dict[str, tuple[int, str]] = {}
    checked = 0
    for record in records:
        checked += 1
        chain, seq = record["chain_id"], int(record["seq"])
        expected = record_digest(record, record["prev_hash"], key)
        if not hmac.compare_digest(expected, record["hash"]):
            return VerificationResult(False, checked, len(last), BrokenLink(chain, seq, "hash mismatch: altered"))
        if chain in last:
            prev_seq, prev_hash = last[chain]
            if seq != prev_seq + 1:
                reason = f"seq {seq} follows {prev_seq}: " + ("dropped" if seq > prev_seq + 1 else "inserted")
                return VerificationResult(False, checked, len(last), BrokenLink(chain, seq, reason))
            if record["prev_hash"] != prev_hash:
                return VerificationResult(False, checked, len(last),
                                          BrokenLink(chain, seq, "prev_hash does not match: inserted or replaced"))
        elif from_start and (seq != 0 or record["prev_hash"] != GENESIS):
            return VerificationResult(False, checked, len(last), BrokenLink(chain, seq, "chain does not start at 0"))
        last[chain] = (seq, record["hash"])
    return VerificationResult(True, checked, len(last))
