"""Request and response bodies of seed 000 (fleet, rounds, updates, catalog), field for field."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AnyUrl, BaseModel, ConfigDict, Field

from core.fleet.models import (
    CatalogModel,
    Device,
    ModelUpdate,
    ModelVersion,
    Round,
    registry_status,
    registry_status_reason,
)
from core.onboarding.fetch import redact
from core.task_types import TaskType

PlatformName = Literal["python", "ios", "android", "edge"]
FrameworkName = Literal["pytorch", "tensorflow", "xgboost", "sklearn"]
RoundStatusName = Literal["pending", "active", "aggregating", "completed", "failed", "cancelled"]


class StrictBody(BaseModel):
    # Unknown fields are refused so that typos surface as 400s instead of being ignored.
    model_config = ConfigDict(extra="forbid")


class ResourceRequirements(StrictBody):
    memory_mb: int | None = Field(None, ge=0)
    gpu_vram_mb: int | None = Field(None, ge=0)
    cpu_threads: int | None = Field(None, ge=1)


class StatusResponse(BaseModel):
    status: Literal["operational", "degraded", "maintenance"] = Field(
        description="degraded when a component of detailed health (Cassandra, Kafka, S3, worker groups) is not healthy")
    version: str = Field(description="API version (seed 001 /status)")
    uptime_seconds: int = Field(description="Seconds since this ingress replica started (seed 001 /status)")
    active_devices: int
    total_devices: int
    current_round_number: int | None = None
    current_round_status: RoundStatusName | None = None
    total_models: int
    timestamp: datetime
    # seed 001 §2.6.3 (one answer for both seeds, see docs/conformance.md)
    loaded_models: list[dict[str, Any]] = Field(
        default_factory=list, description="ModelStatusResponse of every model loaded on a worker (one per worker)")
    queue_depth: dict[str, int] = Field(
        default_factory=dict, description="Requests waiting per priority: high_priority, medium_priority, "
                                          "low_priority (empty when the broker cannot be asked)")


class DeviceRegisterRequest(StrictBody):
    device_id: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f/\\]+$",
                           description="Unique, user-chosen identifier for the device.")
    platform: PlatformName | None = Field(None, description="Device platform. Defaults to `python` if omitted.")
    capabilities: dict[str, Any] | None = None


class DeviceRegisterResponse(BaseModel):
    id: str
    device_id: str
    api_key: str = Field(description="API key for this device. Store it securely -- it cannot be retrieved again.")
    platform: PlatformName | None = None
    status: Literal["active", "inactive", "offline"]
    created_at: datetime


class DeviceOut(BaseModel):
    id: str
    device_id: str
    platform: PlatformName | None = None
    capabilities: dict[str, Any] | None = None
    status: Literal["active", "inactive", "offline"]
    last_heartbeat: datetime | None = None
    created_at: datetime
    updated_at: datetime
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="The metrics of the device's last applied heartbeat ({} before the first)")

    @classmethod
    def of(cls, d: Device) -> DeviceOut:
        return cls(id=d.id, device_id=d.device_id, platform=d.platform.value, capabilities=d.capabilities,
                   status=d.status.value, last_heartbeat=d.last_heartbeat, created_at=d.created_at,
                   updated_at=d.updated_at, metrics=d.metrics)


class DeviceList(BaseModel):
    devices: list[DeviceOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last page")


INT32_MAX = 2**31 - 1
SHA256 = r"^(sha256:)?[0-9a-fA-F]{64}$"
MODEL_ID = r"^[^\x00-\x1f]{1,255}$"


class RoutingOut(BaseModel):
    decision: Literal["on_device", "cloud"]
    reason: str
    cloud_url: str


class AssignmentOut(BaseModel):
    model_id: str
    version: int
    rollout_id: str | None = Field(description="The rollout that assigns this version; null: no rollout does "
                                               "(the catalog's current version, or a rollout's baseline)")
    stage: int | None
    download_url: str
    size_bytes: int
    sha256: str
    downloaded: bool = Field(description="Whether the device's installed_models lists this version")
    routing: RoutingOut


class AssignmentResponse(BaseModel):
    device_id: str
    assignments: list[AssignmentOut]
    generated_at: datetime


class InstalledModel(StrictBody):
    model_id: str = Field(pattern=MODEL_ID)
    version: int = Field(ge=1, le=INT32_MAX)
    sha256: str | None = Field(None, pattern=SHA256)


class HeartbeatMetrics(BaseModel):
    """Seed 000's free-form metrics, with the keys assignments and routing read checked (others pass)."""

    model_config = ConfigDict(extra="allow")

    installed_models: list[InstalledModel] | None = Field(None, max_length=100)
    memory_available_mb: int | None = Field(None, ge=0, le=INT32_MAX)
    battery_level: int | float | None = Field(None, ge=0, le=100)
    charging: bool | None = None
    network: Literal["wifi", "cellular", "ethernet", "offline"] | None = None


class HeartbeatRequest(StrictBody):
    status: Literal["active", "inactive"] | None = None
    metrics: HeartbeatMetrics | None = None

    def metrics_sent(self) -> dict[str, Any] | None:
        """The metrics as the device sent them (checked keys validated, other keys kept as they were)."""
        return self.metrics.model_dump(exclude_unset=True) if self.metrics is not None else None


class HeartbeatResponse(BaseModel):
    status: Literal["active", "inactive", "offline"]
    last_heartbeat: datetime
    pending_round_id: str | None = None
    message: str | None = None
    assignments: list[AssignmentOut] | None = Field(None, description=(
        "The model versions assigned to this device (as GET /devices/{id}/assignment), judged on this "
        "heartbeat's metrics"))


class RoundStartRequest(StrictBody):
    target_devices: int = Field(ge=1, le=2**31 - 1)  # Cassandra int columns
    min_devices: int = Field(ge=1, le=2**31 - 1)
    timeout_seconds: int = Field(300, ge=60, le=3600)
    global_model_id: str | None = Field(None, pattern=r"^[0-9a-fA-F-]{36}$")


class RoundOut(BaseModel):
    id: str
    round_number: int
    status: RoundStatusName
    target_devices: int
    min_devices: int
    participated_devices: int
    completed_devices: int
    failed_devices: int
    global_model_path: str | None = None
    aggregated_model_path: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    timeout_at: datetime | None = None
    created_at: datetime
    failure_reason: str | None = Field(None, description="Why a failed or cancelled round ended (not in seed 000)")

    @classmethod
    def of(cls, r: Round) -> RoundOut:
        return cls(id=r.id, round_number=r.round_number, status=r.status.value, target_devices=r.target_devices,
                   min_devices=r.min_devices, participated_devices=r.participated_devices,
                   completed_devices=r.completed_devices, failed_devices=r.failed_devices,
                   global_model_path=r.global_model_path, aggregated_model_path=r.aggregated_model_path,
                   started_at=r.started_at, completed_at=r.completed_at, timeout_at=r.timeout_at,
                   created_at=r.created_at, failure_reason=r.failure_reason)


class ModelUpdateOut(BaseModel):
    id: str
    round_id: str
    device_id: str
    model_path: str
    model_size_bytes: int | None = None
    num_samples: int
    local_loss: float | None = None
    local_accuracy: float | None = None
    training_time_seconds: int | None = None
    created_at: datetime

    @classmethod
    def of(cls, u: ModelUpdate) -> ModelUpdateOut:
        return cls(id=u.id, round_id=u.round_id, device_id=u.device_id, model_path=u.model_path,
                   model_size_bytes=u.model_size_bytes, num_samples=u.num_samples, local_loss=u.local_loss,
                   local_accuracy=u.local_accuracy, training_time_seconds=u.training_time_seconds,
                   created_at=u.created_at)


class ModelCreateRequest(StrictBody):
    framework: FrameworkName | None = None
    framework_version: str | None = Field(None, max_length=64)
    description: str | None = Field(None, max_length=1000)
    is_baseline: bool = False


class ModelOut(BaseModel):
    """One catalog entry, in the shape of both seed 000's Model and seed 001's ModelResponse."""

    id: str
    round_id: str | None = None
    model_path: str | None = None
    model_size_bytes: int | None = None
    model_hash: str | None = None
    framework: FrameworkName | None = None
    framework_version: str | None = None
    accuracy: float | None = None
    loss: float | None = None
    is_baseline: bool
    description: str | None = None
    created_at: datetime
    # seed 001 registry view of the same entry
    model_id: str
    version: str | None = None
    task_type: TaskType | None = None
    display_name: str | None = None
    status: Literal["registered", "downloading", "ready", "failed"] = Field(
        description="A source_url model's download state until it is ready (registered, downloading, failed); "
                    "then what the inference workers report (ready when one holds it, downloading while one "
                    "loads it, failed when the load failed), else ready when its files are stored or it is "
                    "built in, else registered")
    status_reason: str | None = Field(None, description="Why it failed: 'CODE: message' of the download or the "
                                                        "worker's load")
    download: dict[str, Any] | None = Field(None, description="The last download from source_url: bytes, "
                                                              "total_bytes, progress (0..1), timestamps")
    source_url: str | None = None
    signature: dict[str, Any] | None = Field(None, description="Input/output tensors (name, type, shape; null = "
                                                               "free dimension) recorded when the file was checked")
    builtin: bool = Field(False, description="Served from an installed package (cannot be deleted)")
    loaded_on: list[str] = Field(default_factory=list, description="Inference workers that hold it now")
    resource_requirements: dict[str, Any] = {}
    config: dict[str, Any] = {}
    updated_at: datetime

    @classmethod
    def fields_of(cls, m: CatalogModel) -> dict[str, Any]:
        framework = m.framework if m.framework in ("pytorch", "tensorflow", "xgboost", "sklearn") else None
        version = m.extra.get("version") or (f"v{m.latest_version}" if m.latest_version else None)
        return dict(id=m.id, round_id=m.round_id, model_path=m.model_path, model_size_bytes=m.model_size_bytes,
                    model_hash=m.model_hash, framework=framework, framework_version=m.framework_version,
                    accuracy=m.accuracy, loss=m.loss, is_baseline=m.is_baseline, description=m.description,
                    created_at=m.created_at, model_id=m.id, version=version, task_type=m.task_type,
                    display_name=m.name, status=registry_status(m), status_reason=registry_status_reason(m),
                    resource_requirements=m.extra.get("resource_requirements") or {},
                    config=m.extra.get("config") or {}, updated_at=m.updated_at,
                    download=_public_download(m.extra.get("download")),
                    source_url=redact(m.extra["source_url"]) if m.extra.get("source_url") else None,
                    signature=m.extra.get("signature"), builtin=bool(m.extra.get("builtin")),
                    loaded_on=list(m.observed_workers))

    @classmethod
    def of(cls, m: CatalogModel) -> ModelOut:
        return cls(**cls.fields_of(m))


class ModelVersionSummary(BaseModel):
    version: int
    format: str
    model_size_bytes: int | None = None
    uploaded_at: datetime


class CarbonEmissions(BaseModel):
    """Seed 003 ``CarbonEmissions`` of a model, from the carbon records (docs/operations.md)."""

    training_kg: float = Field(0.0, ge=0)
    training_duration_hours: float = Field(0.0, ge=0)
    training_energy_kwh: float = Field(0.0, ge=0)
    inference_kg: float = Field(0.0, ge=0)
    inference_requests: int = Field(0, ge=0)


class ModelDetail(ModelOut):
    versions: list[ModelVersionSummary] = []
    carbon_emissions: CarbonEmissions | None = Field(
        None, description="Seed 003: energy and emissions of the training jobs that made it and of every "
                          "inference batch it ran")

    @classmethod
    def with_versions(cls, m: CatalogModel, versions: list[ModelVersion]) -> ModelDetail:
        summaries = [ModelVersionSummary(version=v.version, format=v.format, model_size_bytes=v.model_size_bytes,
                                         uploaded_at=v.uploaded_at) for v in versions]
        return cls(**cls.fields_of(m), versions=summaries)


class ModelVersionOut(BaseModel):
    model_id: str
    version: int
    format: str
    model_path: str
    model_size_bytes: int | None = None
    model_hash: str | None = None
    description: str | None = None
    uploaded_at: datetime

    @classmethod
    def of(cls, v: ModelVersion) -> ModelVersionOut:
        return cls(model_id=v.model_id, version=v.version, format=v.format, model_path=v.model_path,
                   model_size_bytes=v.model_size_bytes, model_hash=f"sha256:{v.sha256}",
                   description=v.description, uploaded_at=v.uploaded_at)


class PaginationMeta(BaseModel):
    total: int
    page: int
    page_size: int
    total_pages: int


class ModelListResponse(BaseModel):
    """Seed 000's {models, total, limit, offset} and seed 001's {data, meta} in one answer."""

    models: list[ModelOut]
    total: int
    limit: int
    offset: int
    data: list[ModelOut]
    meta: PaginationMeta


class RegisterModelRequest(StrictBody):
    model_id: str = Field(min_length=1, max_length=192, description="HuggingFace-style model identifier")
    version: str = Field("main", max_length=64)
    task_type: TaskType
    display_name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=1000)
    source_url: AnyUrl | None = Field(None, description="https:// (http:// if allowed), s3:// of our S3, or "
                                                        "file:// under the configured root")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$",
                               description="Expected sha256 (hex) of the source_url's file; a mismatch fails it")
    auto_download: bool = Field(False, description="Start the download at once (as POST /download would)")
    resource_requirements: ResourceRequirements | None = None
    config: dict[str, Any] | None = Field(None, description="Model-specific configuration; for user models "
                                          "'contract': 'tensor' serves the generic tensor contract, "
                                          "'tokenizer_url' names a txt2embed tokenizer.json elsewhere")

    def registration(self) -> dict[str, Any]:
        """Keyword arguments of ``RegistryService.register`` (REST and gRPC)."""
        return {"model_id": self.model_id, "task_type": self.task_type, "version": self.version,
                "display_name": self.display_name, "description": self.description,
                "source_url": str(self.source_url) if self.source_url else None,
                "resource_requirements": _requirements(self.resource_requirements), "config": self.config,
                "sha256": self.sha256, "auto_download": self.auto_download}


class UpdateModelRequest(StrictBody):
    display_name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=1000)
    config: dict[str, Any] | None = None
    resource_requirements: ResourceRequirements | None = None

    def changes(self) -> dict[str, Any]:
        """Keyword arguments of ``RegistryService.update`` (REST and gRPC); None leaves a field as it is."""
        return {"display_name": self.display_name, "description": self.description, "config": self.config,
                "resource_requirements": _requirements(self.resource_requirements)}


def _public_download(download: Any) -> dict[str, Any] | None:
    if not isinstance(download, dict):
        return None
    return {k: download.get(k) for k in ("bytes", "total_bytes", "progress", "requested_at", "updated_at",
                                         "finished_at") if k in download}


def _requirements(requirements: ResourceRequirements | None) -> dict[str, Any] | None:
    return requirements.model_dump(exclude_none=True) if requirements else None


class DownloadAccepted(BaseModel):
    model_id: str
    status: Literal["downloading"]
    message: str


class LockEntry(BaseModel):
    model_id: str
    version: str
    source_url: str
    checksum: str
    task_type: TaskType | None = None


class LockFile(BaseModel):
    version: str
    generated_at: datetime
    models: list[LockEntry]
