"""Model commands (``tributary.models.commands``) -> this worker's model cache.

Every worker process sees every command (broadcast): each process reads all partitions of
the topic with ``assign()`` from the end, outside any consumer group, and never commits.
A command sent while a worker is down is not replayed to it; the ingress's load endpoint
answers from the residency rows of the workers that did act, and a worker that starts later
loads models on first use (or through ``TRIBUTARY_INFERENCE_PRELOAD_MODELS``).

- ``load``: ``cache.get_or_load`` on a thread. The cache emits the lifecycle events
  (``model_load_requested`` then ``model_loaded`` or ``model_load_failed``, the latter also for
  ids this worker cannot create), which the worker publishes and writes as residency rows.
- ``unload``: ``cache.unload`` (``model_unloaded``); when the model was not loaded here, only
  this worker's residency row (e.g. an ``unhealthy`` one from a failed load) is removed.
- Undecodable payloads and other message types raise from ``decode``: the worker hands them to
  its group's dead-letter path, nothing is dropped silently.

``ModelCommandHandler`` holds that logic and needs no Kafka.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from consumers.inference.runtime import ModelRuntime
from schemas.codec import Codec
from topology.messages import MessageType

log = logging.getLogger(__name__)

LOAD, UNLOAD = "load", "unload"


class Cache(Protocol):
    def get_or_load(self, model_id: str) -> ModelRuntime: ...

    def unload(self, model_id: str) -> bool: ...


class Forgetter(Protocol):
    def forget(self, model_id: str) -> None: ...


class ModelCommandHandler:
    def __init__(self, cache: Cache, residency: Forgetter | None = None, *, worker: str,
                 codec: Codec | None = None) -> None:
        self.cache = cache
        self.residency = residency
        self.worker = worker
        self.codec = codec or Codec()
        self.handled: dict[str, int] = {}

    def decode(self, payload: bytes | None) -> dict[str, Any]:
        """The command record; DecodeError, SchemaValidationError or TypeError for anything else."""
        decoded = self.codec.decode(payload)
        if decoded.message_type != MessageType.MODEL_COMMAND:
            raise TypeError(f"the model command topic does not carry {decoded.message_type}")
        record = decoded.record
        if record.get("command") not in (LOAD, UNLOAD) or not record.get("model_id"):
            raise TypeError(f"not a load/unload command: {record.get('command')!r}")
        return record

    async def handle(self, record: dict[str, Any]) -> str:
        """Apply one decoded command; returns the outcome (``loaded``, ``load_failed``, ``unloaded``,
        ``not_loaded``). Never raises for what the model got wrong: the cache reported it."""
        command, model_id = str(record["command"]), str(record["model_id"])
        outcome = await (self._load(model_id) if command == LOAD else self._unload(model_id))
        self.handled[outcome] = self.handled.get(outcome, 0) + 1
        log.info("model command %s %s (%s): %s", command, model_id, record.get("reason") or "-", outcome)
        return outcome

    async def _load(self, model_id: str) -> str:
        try:
            await asyncio.to_thread(self.cache.get_or_load, model_id)
        except Exception as exc:  # the cache emitted model_load_failed with the code
            log.warning("worker %s cannot load %s: %s: %s", self.worker, model_id, type(exc).__name__, exc)
            return "load_failed"
        return "loaded"

    async def _unload(self, model_id: str) -> str:
        if await asyncio.to_thread(self.cache.unload, model_id):
            return "unloaded"
        if self.residency is not None:
            await asyncio.to_thread(self.residency.forget, model_id)
        return "not_loaded"
