"""Domain records of the fleet. Plain dataclasses: stores persist them, transports render them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


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
    DEVICE = "device"
    OPERATOR = "operator"


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


def registry_status(model: CatalogModel) -> str:
    """The registry status of a catalog entry (seed 001): what the workers report when they hold or
    tried to load it, else ``ready`` when its files are stored, else ``registered``. Nothing is
    ``downloading`` or ``failed`` unless a worker says so, so no status is one nothing will leave."""
    if model.observed_status is not None:
        return model.observed_status.value
    return RegistryStatus.READY.value if model.model_path else RegistryStatus.REGISTERED.value


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
