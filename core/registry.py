"""The serving registry (seed 001 §2.3) over the one catalog the fleet uses (seed 000).

A registry model is a ``CatalogModel`` whose id is the registry's ``model_id`` (e.g.
``sentence-transformers/all-MiniLM-L6-v2``) and whose ``task_type`` is set; the registry's
own fields (version label, status, config, resource requirements, source URL) live in
``extra``. Fleet models (uuid ids, no task type) appear in the same listings.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from core.auth import Principal
from core.errors import conflict, invalid, not_found
from core.events import EventSink, fleet_record, lifecycle_record
from core.fleet.models import CatalogModel
from core.fleet.store import FleetStore
from core.serving.residency import ResidencyStore, observe
from core.task_types import TaskType
from schemas.clock import utcnow
from topology.messages import MessageType

# HuggingFace-style ids: org/name with letters, digits, . _ -; no traversal, no spaces.
MODEL_ID = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def validate_model_id(model_id: str) -> None:
    if not MODEL_ID.match(model_id):
        raise invalid("INVALID_MODEL_ID", f"Invalid model id '{model_id[:100]}'.",
                      hint="Use 'name' or 'org/name' with letters, digits, '.', '_' or '-'.")


class RegistryService:
    def __init__(self, store: FleetStore, events: EventSink, clock: Callable[[], datetime] = utcnow,
                 residency: ResidencyStore | None = None) -> None:
        self.store = store
        self.events = events
        self.clock = clock
        self.residency = residency  # where the inference workers report loaded models

    async def loaded_on(self, model: CatalogModel) -> list[str]:
        """Workers that hold (or are loading) the model, from the residency rows the workers write."""
        workers = [str(w) for w in model.extra.get("loaded_on") or []]  # entries written before residency
        if self.residency is not None:
            workers += await asyncio.to_thread(self.residency.loaded_on, model.id)
        return sorted(set(workers))

    async def register(self, principal: Principal, *, model_id: str, task_type: TaskType, version: str,
                       display_name: str | None, description: str | None, source_url: str | None,
                       resource_requirements: dict[str, Any] | None, config: dict[str, Any] | None) -> CatalogModel:
        principal.require_operator()
        validate_model_id(model_id)
        now = self.clock()
        model = CatalogModel(
            id=model_id, is_baseline=False, created_at=now, updated_at=now, name=display_name,
            task_type=task_type.value, description=description,
            extra={"version": version, "source_url": source_url,
                   "resource_requirements": resource_requirements or {}, "config": config or {}},
        )
        if not await asyncio.to_thread(self.store.create_model, model):
            raise conflict("MODEL_ALREADY_EXISTS", f"Model '{model_id}' is already registered.")
        await self._fleet_event("model_registered", model_id, task_type=task_type.value, version=version)
        await self.events.audit(actor=principal.key_id, action="model.register", subject=f"model/{model_id}",
                                outcome="accepted", after={"task_type": task_type.value, "version": version})
        return model

    async def get(self, model_id: str) -> CatalogModel:
        model = await asyncio.to_thread(self.store.get_model, model_id)
        if model is None:
            raise not_found("MODEL_NOT_FOUND", f"Model '{model_id}' not found in registry")
        if self.residency is not None:
            observe([model], await asyncio.to_thread(self.residency.for_model, model_id))
        return model

    async def update(self, principal: Principal, model_id: str, *, display_name: str | None,
                     description: str | None, config: dict[str, Any] | None,
                     resource_requirements: dict[str, Any] | None) -> CatalogModel:
        principal.require_operator()
        model = await self.get(model_id)
        before = {"display_name": model.name, "description": model.description, "config": model.extra.get("config")}
        if display_name is not None:
            model.name = display_name
        if description is not None:
            model.description = description
        if config is not None:
            model.extra["config"] = config
        if resource_requirements is not None:
            model.extra["resource_requirements"] = resource_requirements
        model.updated_at = self.clock()
        await asyncio.to_thread(self.store.update_model, model)
        await self.events.audit(actor=principal.key_id, action="model.update", subject=f"model/{model_id}",
                                outcome="accepted", before=before,
                                after={"display_name": model.name, "description": model.description,
                                       "config": model.extra.get("config")})
        return model

    async def delete(self, principal: Principal, model_id: str, force: bool) -> None:
        principal.require_operator()
        model = await self.get(model_id)
        loaded_on = await self.loaded_on(model)
        if loaded_on and not force:
            raise conflict("MODEL_LOADED", f"Model '{model_id}' is loaded; unload it or pass force=true.",
                           loaded_on=loaded_on)
        if loaded_on:
            await self._command("unload", model_id, "deleted with force=true")
        await asyncio.to_thread(self.store.delete_model, model_id)
        await self._fleet_event("model_deleted", model_id, forced=force)
        await self.events.audit(actor=principal.key_id, action="model.delete", subject=f"model/{model_id}",
                                outcome="accepted", before={"task_type": model.task_type})

    async def download(self, principal: Principal, model_id: str) -> CatalogModel:
        """Ask the workers to fetch the model's stored files into their caches and load them (202: it
        happens asynchronously; the status reads ``downloading`` while a worker loads it, then ``ready``
        or ``failed`` as the workers report). An entry without stored files is refused: nothing here
        fetches a ``source_url`` yet, and a status that no process would ever move is not an answer."""
        principal.require_operator()
        model = await self.get(model_id)
        if not model.model_path:
            raise conflict("MODEL_FILES_MISSING",
                           f"Model '{model_id}' has no stored files to download: upload a version first "
                           "(fetching source_url is not supported yet).", source_url=model.extra.get("source_url"))
        await self._command("load", model_id, "download requested")
        await self._lifecycle("model_load_requested", model_id)
        await self.events.audit(actor=principal.key_id, action="model.download", subject=f"model/{model_id}",
                                outcome="accepted")
        return model

    async def lock_file(self) -> dict[str, Any]:
        models, _ = await asyncio.to_thread(self.store.list_models, limit=10_000, offset=0)
        entries = []
        for model in sorted(models, key=lambda m: m.id):
            entries.append({
                "model_id": model.id,
                "version": str(model.extra.get("version") or (f"v{model.latest_version}" if model.latest_version
                                                               else "main")),
                "source_url": model.extra.get("source_url") or model.model_path or "",
                "checksum": model.model_hash or "",
                "task_type": model.task_type,
            })
        return {"version": "1", "generated_at": datetime.now(UTC), "models": entries}

    async def _command(self, command: str, model_id: str, reason: str) -> None:
        await self.events.publish(MessageType.MODEL_COMMAND,
                                  {"command": command, "model_id": model_id, "version": None, "reason": reason})

    async def _lifecycle(self, event_type: str, model_id: str, **details: Any) -> None:
        await self.events.publish(MessageType.LIFECYCLE_EVENT, lifecycle_record(event_type, model_id, **details))

    async def _fleet_event(self, event_type: str, model_id: str, **details: Any) -> None:
        await self.events.publish(MessageType.FLEET_EVENT, fleet_record(event_type, "model", model_id, **details))
