"""The serving registry (seed 001 §2.3) over the one catalog the fleet uses (seed 000).

A registry model is a ``CatalogModel`` whose id is the registry's ``model_id`` (e.g.
``sentence-transformers/all-MiniLM-L6-v2``) and whose ``task_type`` is set; the registry's
own fields (version label, status, config, resource requirements, source URL) live in
``extra``. Fleet models (uuid ids, no task type) appear in the same listings.

The built-in models are registry entries too (``seed_builtins``: upserted at every ingress
start from ``core.serving.builtin_specs``, the one definition), with ``extra.builtin`` set:
listed, filtered and shown like any other, never deleted.

A model registered with a ``source_url`` is ``registered`` until ``download`` (or
``auto_download``) moves it to ``downloading`` and publishes a ``model_download_requested``
that the model-download processor turns into ``ready`` or ``failed``
(``core/onboarding/downloads.py``); the ingress never fetches.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from core.auth import Principal
from core.errors import conflict, invalid, not_found, unavailable
from core.events import EventSink, EventsUnavailable, fleet_record, lifecycle_record
from core.fleet.models import CatalogModel, RegistryStatus
from core.fleet.store import FleetStore
from core.onboarding.fetch import FetchError, FetchPolicy, check_source_url, redact
from core.routing import RoutingPolicy
from core.serving.builtin_specs import BUILTIN_SPECS, BuiltinSpec
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


def builtin_version(spec: BuiltinSpec) -> str:
    """The installed version of the package a built-in model comes from ("unavailable" when absent)."""
    if not spec.packages:
        return "unavailable"
    try:
        return f"{spec.packages[0]}=={importlib.metadata.version(spec.packages[0])}"
    except importlib.metadata.PackageNotFoundError:
        return "unavailable"


def builtin_entry(spec: BuiltinSpec, now: datetime) -> CatalogModel:
    return CatalogModel(
        id=spec.model_id, is_baseline=False, created_at=now, updated_at=now, name=spec.model_id.rsplit("/", 1)[-1],
        task_type=spec.task_type.value, description=spec.description,
        extra={"version": builtin_version(spec), "builtin": True, "packages": list(spec.packages),
               "source_url": None, "resource_requirements": {}, "config": {},
               # a built-in without offline weights (txt2img) says so instead of pretending to be ready
               "status": None if spec.packages else RegistryStatus.FAILED.value,
               "status_reason": None if spec.packages else "MODEL_UNAVAILABLE: no offline weights on this deployment"},
    )


def seed_builtins(store: FleetStore, clock: Callable[[], datetime] = utcnow) -> list[str]:
    """Upsert one registry entry per built-in model (idempotent: every ingress start runs it, replicas
    race harmlessly through ``create_model``'s compare-and-set). Returns the ids written or changed."""
    changed = []
    for spec in BUILTIN_SPECS.values():
        wanted = builtin_entry(spec, clock())
        if store.create_model(wanted):
            changed.append(spec.model_id)
            continue
        current = store.get_model(spec.model_id)
        if current is None:
            continue  # deleted between the two calls; the next start writes it again
        fields = {"task_type": wanted.task_type, "description": wanted.description}
        extra = {k: wanted.extra[k] for k in ("version", "builtin", "packages", "status", "status_reason")}
        if any(getattr(current, k) != v for k, v in fields.items()) or \
                any(current.extra.get(k) != v for k, v in extra.items()):
            current.task_type, current.description = wanted.task_type, wanted.description
            current.extra.update(extra)
            current.updated_at = wanted.updated_at
            store.update_model(current)
            changed.append(spec.model_id)
    return changed


def is_builtin(model: CatalogModel) -> bool:
    """A seeded built-in entry (``seed_builtins`` marks them), not a user entry that reuses an id."""
    return bool(model.extra.get("builtin"))


class RegistryService:
    def __init__(self, store: FleetStore, events: EventSink, clock: Callable[[], datetime] = utcnow,
                 residency: ResidencyStore | None = None, policy: FetchPolicy | None = None,
                 download_stale_s: float = 1200.0) -> None:
        self.store = store
        self.events = events
        self.clock = clock
        self.residency = residency  # where the inference workers report loaded models
        self.policy = policy or FetchPolicy()  # which source URLs a registration may name
        # A download that has not moved for this long (its processor died with the request lost) may be asked again.
        self.download_stale_s = download_stale_s

    async def loaded_on(self, model: CatalogModel) -> list[str]:
        """Workers that hold (or are loading) the model, from the residency rows the workers write."""
        workers = [str(w) for w in model.extra.get("loaded_on") or []]  # entries written before residency
        if self.residency is not None:
            workers += await asyncio.to_thread(self.residency.loaded_on, model.id)
        return sorted(set(workers))

    async def register(self, principal: Principal, *, model_id: str, task_type: TaskType, version: str,
                       display_name: str | None, description: str | None, source_url: str | None,
                       resource_requirements: dict[str, Any] | None, config: dict[str, Any] | None,
                       sha256: str | None = None, auto_download: bool = False) -> CatalogModel:
        principal.require_operator()
        validate_model_id(model_id)
        if source_url:
            try:
                check_source_url(source_url, self.policy)
            except FetchError as exc:
                raise invalid(exc.code, f"source_url refused: {exc.message}", field="source_url") from exc
        elif auto_download:
            raise invalid("VALIDATION_ERROR", "auto_download needs a source_url.", field="auto_download")
        now = self.clock()
        extra: dict[str, Any] = {"version": version, "source_url": source_url,
                                 "resource_requirements": resource_requirements or {}, "config": config or {}}
        if source_url:
            extra.update(status=RegistryStatus.REGISTERED.value, sha256=sha256.lower() if sha256 else None)
        model = CatalogModel(
            id=model_id, is_baseline=False, created_at=now, updated_at=now, name=display_name,
            task_type=task_type.value, description=description, extra=extra,
        )
        if not await asyncio.to_thread(self.store.create_model, model):
            raise conflict("MODEL_ALREADY_EXISTS", f"Model '{model_id}' is already registered.")
        await self._fleet_event("model_registered", model_id, task_type=task_type.value, version=version)
        await self.events.audit(actor=principal.key_id, action="model.register", subject=f"model/{model_id}",
                                outcome="accepted", after={"task_type": task_type.value, "version": version})
        if auto_download:
            model = await self._request_download(principal, model)
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

    async def routing_policy(self, model_id: str) -> tuple[CatalogModel, RoutingPolicy]:
        """The model and its stored routing policy (overrides only; ``RoutingPolicy.effective`` fills
        in the deployment's defaults)."""
        model = await self.get(model_id)
        return model, RoutingPolicy.of(model.extra.get("routing_policy"))

    async def set_routing_policy(self, principal: Principal, model_id: str,
                                 policy: RoutingPolicy) -> tuple[CatalogModel, RoutingPolicy]:
        """Operators replace a model's routing policy (fields left out take the defaults). Audited:
        it changes where every device runs the model from its next assignment on."""
        principal.require_operator()
        model = await self.get(model_id)
        before = model.extra.get("routing_policy")
        model.extra["routing_policy"] = policy.overrides()
        model.updated_at = self.clock()
        await asyncio.to_thread(self.store.update_model, model)
        await self.events.audit(actor=principal.key_id, action="model.routing_policy.update",
                                subject=f"model/{model_id}", outcome="accepted", before=before,
                                after=model.extra["routing_policy"])
        return model, policy

    async def delete(self, principal: Principal, model_id: str, force: bool) -> None:
        principal.require_operator()
        model = await self.get(model_id)
        if is_builtin(model):
            raise conflict("BUILTIN_MODEL", f"Model '{model_id}' is built in; it can be unloaded, not deleted.")
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
        """202: a model with a ``source_url`` that is not ``ready`` is fetched by the model-download
        processor (status ``downloading`` now, ``ready`` or ``failed`` when it is done; asking again
        while it downloads changes nothing). A model with stored files is loaded on the workers.
        An entry with neither is refused (409 ``MODEL_FILES_MISSING``)."""
        principal.require_operator()
        model = await self.get(model_id)
        status = model.extra.get("status")
        if model.extra.get("source_url") and status != RegistryStatus.READY.value:
            if status == RegistryStatus.DOWNLOADING.value and not self._stale(model):
                return model
            return await self._request_download(principal, model)
        if not model.model_path and not is_builtin(model):
            raise conflict("MODEL_FILES_MISSING",
                           f"Model '{model_id}' has no stored files and no source_url to fetch them from: "
                           "upload a version or register it with a source_url.", source_url=None)
        await self._command("load", model_id, "download requested")
        await self._lifecycle("model_load_requested", model_id)
        await self.events.audit(actor=principal.key_id, action="model.download", subject=f"model/{model_id}",
                                outcome="accepted")
        return model

    def _stale(self, model: CatalogModel) -> bool:
        download = model.extra.get("download") or {}
        stamp = download.get("updated_at") or download.get("requested_at")
        if not stamp:
            return True
        return (self.clock() - datetime.fromisoformat(stamp)).total_seconds() > self.download_stale_s

    async def _request_download(self, principal: Principal, model: CatalogModel) -> CatalogModel:
        """Mark the model ``downloading`` under a new request id (written before the 202: the caller's
        next GET sees it), then publish the request; a broker failure puts the status back (503)."""
        before = {k: model.extra.get(k) for k in ("status", "status_reason", "download")}
        request_id, now = str(uuid.uuid4()), self.clock()
        model.extra.update(status=RegistryStatus.DOWNLOADING.value, status_reason=None,
                           download={"request_id": request_id, "requested_at": now.isoformat(),
                                     "updated_at": now.isoformat(), "bytes": 0, "total_bytes": None,
                                     "progress": 0.0})
        model.updated_at = now
        await asyncio.to_thread(self.store.update_model, model)
        try:
            await self.events.publish(MessageType.MODEL_DOWNLOAD_REQUESTED, {
                "model_id": model.id, "request_id": request_id, "source_url": str(model.extra["source_url"]),
                "sha256": model.extra.get("sha256")})
        except EventsUnavailable as exc:
            model.extra.update(before)
            await asyncio.to_thread(self.store.update_model, model)
            raise unavailable("SERVICE_UNAVAILABLE", "The download request could not be sent; nothing changed.",
                              exc.retry_after_s) from exc
        await self._lifecycle("model_load_requested", model.id, phase="download", status="downloading",
                              request_id=request_id)
        await self.events.audit(actor=principal.key_id, action="model.download", subject=f"model/{model.id}",
                                outcome="accepted", after={"request_id": request_id})
        return model

    async def lock_file(self) -> dict[str, Any]:
        models, _ = await asyncio.to_thread(self.store.list_models, limit=10_000, offset=0)
        entries = []
        for model in sorted(models, key=lambda m: m.id):
            entries.append({
                "model_id": model.id,
                "version": str(model.extra.get("version") or (f"v{model.latest_version}" if model.latest_version
                                                               else "main")),
                "source_url": redact(model.extra["source_url"]) if model.extra.get("source_url")
                else model.model_path or "",
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
