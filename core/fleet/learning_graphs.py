"""Seed 002: signed, encrypted, privacy-checked learning graphs that trigger retraining.

Wire format: ``encryptedData`` = base64(nonce[12] || AES-256-GCM ciphertext+tag) of the
graph's UTF-8 JSON; ``signature`` = HMAC-SHA256(key, encryptedData as sent), hex (as
seed 002's reference code computes it) or base64 of the raw digest.

Privacy rules (each violation is a 403 naming the rule and the JSON path):
1. no raw text: no key named text, raw_text, transcript, content, message or utterance,
   and no string value longer than 64 characters anywhere in the graph;
2. bucketed values: every value under ``emotions`` is a bucket label
   (none/low/medium/high) or one of 0, 0.25, 0.5, 0.75, 1;
3. noise marker: ``privacy.noise`` names a mechanism (laplace or gaussian) and a positive
   ``epsilon``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.errors import DomainError, ErrorKind, invalid
from core.events import EventSink, fleet_record
from core.fleet.models import LearningGraph
from core.fleet.service import iso
from core.fleet.store import FleetStore
from schemas.clock import utcnow
from settings import Settings
from topology.messages import MessageType

RAW_TEXT_KEYS = {"text", "raw_text", "transcript", "content", "message", "utterance"}
MAX_STRING = 64
BUCKET_LABELS = {"none", "low", "medium", "high"}
BUCKET_VALUES = {0.0, 0.25, 0.5, 0.75, 1.0}
NOISE_MECHANISMS = {"laplace", "gaussian"}


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, str | None, Any]]:
    """(path, key, value) for every node."""
    if isinstance(value, dict):
        for key, child in value.items():
            child_path = f"{path}.{key}" if path else str(key)
            yield child_path, str(key), child
            yield from _walk(child, child_path)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield f"{path}[{i}]", None, child
            yield from _walk(child, f"{path}[{i}]")


def privacy_violations(graph: dict[str, Any]) -> list[str]:
    problems = []
    for path, key, value in _walk(graph):
        if key is not None and key.lower() in RAW_TEXT_KEYS:
            problems.append(f"raw_text: '{path}' is a raw-text field")
        if isinstance(value, str) and len(value) > MAX_STRING:
            problems.append(f"raw_text: '{path}' holds a {len(value)}-character string")
    for path, _key, value in _walk(graph.get("emotions", {}), "emotions"):
        if isinstance(value, (dict, list)):
            continue
        if isinstance(value, str) and value in BUCKET_LABELS:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) in BUCKET_VALUES:
            continue
        problems.append(f"not_bucketed: '{path}' = {value!r} is not a bucket")
    noise = graph.get("privacy", {}).get("noise") if isinstance(graph.get("privacy"), dict) else None
    if not isinstance(noise, dict) or noise.get("mechanism") not in NOISE_MECHANISMS or not (
        isinstance(noise.get("epsilon"), (int, float)) and noise["epsilon"] > 0
    ):
        problems.append("missing_noise: 'privacy.noise' must name a mechanism (laplace|gaussian) and epsilon > 0")
    return problems


def encrypt_graph(
    graph: dict[str, Any], aes_key: bytes, hmac_key: bytes, nonce: bytes | None = None
) -> tuple[str, str]:
    """What a device sends: (encryptedData, signature). Used by the SDK and the tests."""
    nonce = nonce or uuid.uuid4().bytes[:12]
    data = base64.b64encode(nonce + AESGCM(aes_key).encrypt(nonce, json.dumps(graph).encode(), None)).decode()
    return data, hmac.new(hmac_key, data.encode(), hashlib.sha256).hexdigest()


class LearningGraphService:
    def __init__(self, settings: Settings, store: FleetStore, events: EventSink) -> None:
        self.settings = settings
        self.store = store
        self.events = events

    def _keys(self) -> tuple[bytes, bytes]:
        hmac_key = self.settings.learning_graph_hmac_key.get_secret_value().encode()
        aes_hex = self.settings.learning_graph_aes_key.get_secret_value()
        if not hmac_key or len(aes_hex) != 64:
            raise DomainError(ErrorKind.UNAVAILABLE, "LEARNING_GRAPHS_NOT_CONFIGURED",
                              "Learning-graph keys are not configured on this server.")
        return hmac_key, bytes.fromhex(aes_hex)

    def verify_signature(self, data: str, signature: str, hmac_key: bytes) -> None:
        try:  # non-ASCII or unpaired surrogates can never match: a 401, not a TypeError / UnicodeError
            message, given = data.encode(), signature.encode()
        except UnicodeEncodeError:
            raise DomainError(ErrorKind.UNAUTHENTICATED, "INVALID_SIGNATURE", "Invalid signature") from None
        digest = hmac.new(hmac_key, message, hashlib.sha256).digest()
        candidates = {digest.hex().encode(), base64.b64encode(digest)}
        if not any(hmac.compare_digest(given, c) for c in candidates):
            raise DomainError(ErrorKind.UNAUTHENTICATED, "INVALID_SIGNATURE", "Invalid signature")

    def decrypt(self, data: str, aes_key: bytes) -> dict[str, Any]:
        try:
            blob = base64.b64decode(data, validate=True)
            plain = AESGCM(aes_key).decrypt(blob[:12], blob[12:], None)
            graph = json.loads(plain)
        except (binascii.Error, ValueError, Exception) as exc:
            raise invalid("DECRYPTION_FAILED", f"Decryption failed: {type(exc).__name__}") from exc
        if not isinstance(graph, dict):
            raise invalid("DECRYPTION_FAILED", "Decryption failed: the graph is not a JSON object")
        return graph

    async def submit(self, actor: str, *, device_id_hash: str, app_version: str, model_version: str,
                     encrypted_data: str, signature: str, timestamp: datetime) -> dict[str, Any]:
        import asyncio

        hmac_key, aes_key = self._keys()
        self.verify_signature(encrypted_data, signature, hmac_key)
        graph = self.decrypt(encrypted_data, aes_key)
        problems = privacy_violations(graph)
        if problems:
            raise DomainError(ErrorKind.FORBIDDEN, "PRIVACY_VIOLATION", "Privacy violation detected",
                              details={"violations": problems})
        record = LearningGraph(str(uuid.uuid4()), device_id_hash, app_version, model_version, timestamp, graph)
        pending = await asyncio.to_thread(self.store.add_learning_graph, record)
        retrain = pending >= self.settings.learning_graph_threshold
        if retrain:
            # Two submissions can both see the threshold; only the one that takes the graphs asks.
            taken = await asyncio.to_thread(self.store.take_pending_graphs)
            retrain = taken >= self.settings.learning_graph_threshold
            pending = taken if retrain else 0
        await self.events.publish(MessageType.LEARNING_GRAPH_SUBMITTED, {
            "graph_id": record.id, "device_id_hash": device_id_hash, "app_version": app_version,
            "model_version": model_version, "pending_count": pending, "retraining_requested": retrain,
        })
        if retrain:
            event = fleet_record("retraining_requested", "model", model_version, graphs=pending,
                                 requested_at=iso(utcnow()))
            await self.events.publish(MessageType.FLEET_EVENT, event)
        await self.events.audit(actor=actor, action="learning_graph.submit", subject=f"graph/{record.id}",
                                outcome="accepted", after={"retraining_requested": retrain})
        return {"status": "accepted", "retraining_requested": retrain, "pending": pending}
