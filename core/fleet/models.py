"""Domain records of the fleet. Plain dataclasses: stores persist them, transports render them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from core.task_types import GENERIC_TASK_TYPE, TaskType

# Task types the workers serve user (catalog) models with; the others get the generic tensor contract.
USER_MODEL_TASK_TYPES = frozenset({TaskType.TXT2EMBED.value, TaskType.IMG2EMBED.value})


class Platform(StrEnum):
    PYTHON = "python"
    IOS = "ios"
    ANDROID = "android"
    EDGE = "edge"


class DeviceStatus(StrEnum):
    """What seed 000 reports as a device's `status`."""

    ACTIVE = "active"
    INACTIVE = "inactive"
    OFFLINE = "offline"


class Freshness(StrEnum):
    """Derived from heartbeat age: online < 2x interval <= stale < 5x interval <= offline."""

    ONLINE = "online"
    STALE = "stale"
    OFFLINE = "offline"


class RoundStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    AGGREGATING = "aggregating"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # by an operator

    @property
    def terminal(self) -> bool:
        return self in (RoundStatus.COMPLETED, RoundStatus.FAILED, RoundStatus.CANCELLED)


class Seat(StrEnum):
    """What asking for a seat in a round answered (``FleetStore.select_device``)."""

    TAKEN = "taken"  # this call selected the device
    HELD = "held"  # the device was already selected
    FULL = "full"  # the round has its target_devices
    CLOSED = "closed"  # the round is not active


class SubjectType(StrEnum):
    """A key's role: what kind of caller holds it (``core.auth.ROLE_ACTIONS`` says what each may do)."""

    DEVICE = "device"  # acts only for its own device (seed 000)
    SERVICE = "service"  # an application: inference, jobs, catalog reads, status
    OPERATOR = "operator"  # everything, including fleet and registry writes and key management


@dataclass
class Device:
    id: str  # internal uuid
    device_id: str  # user-chosen
    platform: Platform
    capabilities: dict[str, Any]
    status: DeviceStatus
    api_key_id: str
    created_at: datetime
    updated_at: datetime
    last_heartbeat: datetime | None = None
    freshness: Freshness = Freshness.OFFLINE
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Heartbeat:
    """One heartbeat as the device processor applies it: the device's time, reported status, metrics."""

    device_id: str
    at: datetime
    status: str | None = None  # None: the status stays what it was
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceQuery:
    """Which devices to list: every given filter must hold (None: no filter on it)."""

    status: DeviceStatus | None = None  # the status the device last reported
    platform: Platform | None = None
    heartbeat_before: datetime | None = None  # last heartbeat strictly older (never-beaten devices excluded)
    heartbeat_since: datetime | None = None  # last heartbeat at or after
    limit: int = 100
    cursor: str | None = None  # opaque: the previous page's next_cursor


@dataclass(frozen=True)
class DevicePage:
    devices: list[Device]
    next_cursor: str | None  # None: this was the last page


@dataclass(frozen=True)
class ApiKeyRecord:
    key_hash: str
    key_id: str
    subject_type: SubjectType
    subject_id: str
    created_at: datetime
    revoked_at: datetime | None = None
    label: str | None = None  # what the operator called it
    created_by: str | None = None  # key id of the operator that created it (None: registration)
    rate_limit_per_minute: int | None = None  # None: the role's limit


@dataclass
class Round:
    id: str
    round_number: int
    status: RoundStatus
    target_devices: int
    min_devices: int
    timeout_seconds: int
    created_at: datetime
    global_model_id: str | None = None
    global_model_path: str | None = None
    selected_devices: list[str] = field(default_factory=list)
    participated_devices: int = 0
    completed_devices: int = 0
    failed_devices: int = 0
    started_at: datetime | None = None
    timeout_at: datetime | None = None
    completed_at: datetime | None = None
    aggregated_model_id: str | None = None
    aggregated_model_path: str | None = None
    failure_reason: str | None = None
    # Aggregation bookkeeping, so a crash or an outage never leaves a round aggregating for good:
    # the attempt that holds the round, until when (a lease), and why the last attempt failed.
    aggregation_attempts: int = 0
    aggregation_lease_until: datetime | None = None
    aggregation_error: str | None = None


@dataclass(frozen=True)
class ModelUpdate:
    id: str
    round_id: str
    device_id: str
    model_path: str  # s3://bucket/key
    artifact_key: str
    model_size_bytes: int
    sha256: str
    num_samples: int
    created_at: datetime
    local_loss: float | None = None
    local_accuracy: float | None = None
    training_time_seconds: int | None = None


class RegistryStatus(StrEnum):
    """A serving registry entry's status (seed 001)."""

    REGISTERED = "registered"
    DOWNLOADING = "downloading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class CatalogModel:
    """One catalog serves both the fleet spec (seed 000) and the serving registry (seed 001)."""

    id: str
    is_baseline: bool
    created_at: datetime
    updated_at: datetime
    round_id: str | None = None
    framework: str | None = None
    framework_version: str | None = None
    description: str | None = None
    accuracy: float | None = None
    loss: float | None = None
    latest_version: int | None = None
    model_path: str | None = None
    model_size_bytes: int | None = None
    model_hash: str | None = None  # "sha256:<hex>"
    # serving registry fields (seed 001); None for fleet-only models
    name: str | None = None
    task_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # What the inference workers report about this model right now (core.serving.residency.observe):
    # read-time only, never stored, None where nobody asked them.
    observed_status: RegistryStatus | None = None
    observed_reason: str | None = None
    observed_workers: list[str] = field(default_factory=list)  # workers holding or loading it


def registry_status(model: CatalogModel) -> str:
    """The registry status of a catalog entry (seed 001). A model onboarded from a ``source_url``
    carries its own until it is ``ready`` (``registered``, ``downloading`` with the download
    processor's progress, ``failed`` with the reason); a ``ready`` one, an uploaded one or a built-in
    one shows what the workers report when they hold or tried to load it, else ``ready`` when its
    files are stored (or it is built in), else ``registered``. Nothing is ``downloading`` unless a
    download or a worker's load is under way, so no status is one nothing will leave."""
    stored = model.extra.get("status")
    if stored in (RegistryStatus.REGISTERED, RegistryStatus.DOWNLOADING, RegistryStatus.FAILED):
        return str(stored)
    if model.observed_status is not None:
        return model.observed_status.value
    if model.model_path or model.extra.get("builtin"):
        return RegistryStatus.READY.value
    return RegistryStatus.REGISTERED.value


def served_task_type(model: CatalogModel) -> str:
    """The contract a catalog model is served with (ingress validation and worker runtime agree on it):
    its task type where the workers have a runtime for user models of it (txt2embed, img2embed:
    ``consumers/inference/user_models.py``), else the generic tensor contract, also when its config
    asks for it (``"contract": "tensor"``)."""
    config = model.extra.get("config") or {}
    if config.get("contract") == GENERIC_TASK_TYPE or model.task_type not in USER_MODEL_TASK_TYPES:
        return GENERIC_TASK_TYPE
    return str(model.task_type)


def not_ready_reason(model: CatalogModel) -> str | None:
    """Why a model onboarded from a source_url cannot be served yet (None when it can)."""
    status = model.extra.get("status")
    if status in (RegistryStatus.REGISTERED, RegistryStatus.DOWNLOADING, RegistryStatus.FAILED):
        return {"registered": "its files were never downloaded (POST /models/{id}/download)",
                "downloading": "its download is still under way",
                "failed": f"its download failed ({model.extra.get('status_reason') or 'no reason recorded'})",
                }[str(status)]
    return None


def registry_status_reason(model: CatalogModel) -> str | None:
    """Why the entry is ``failed`` (its download, or the workers' load), else None."""
    if model.extra.get("status") == RegistryStatus.FAILED:
        return str(model.extra.get("status_reason") or "failed")
    return model.observed_reason


@dataclass(frozen=True)
class ModelVersion:
    model_id: str
    version: int
    format: str
    artifact_key: str
    model_path: str
    model_size_bytes: int
    sha256: str
    uploaded_at: datetime
    description: str | None = None
    onnx_key: str | None = None
    onnx_size_bytes: int | None = None
    onnx_sha256: str | None = None
    round_id: str | None = None


@dataclass(frozen=True)
class LearningGraph:
    id: str
    device_id_hash: str
    app_version: str
    model_version: str
    received_at: datetime
    graph: dict[str, Any]


@dataclass(frozen=True)
class RetrainingDecision:
    """What became of one retraining request (seed 002): the training round started for it, or why none was."""

    trigger_id: str  # the graph whose submission took the pending graphs and asked for retraining
    model_version: str
    graphs: int
    decided_at: datetime
    round_id: str | None = None  # the round started for it
    reason: str | None = None  # an error code when no round was started (e.g. ROUND_ALREADY_ACTIVE)
    detail: str | None = None  # the reason in a sentence

    @property
    def started(self) -> bool:
        return self.reason is None
