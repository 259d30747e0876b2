"""Request and response bodies of rollouts, assignments and device telemetry (issue 20)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from api.schemas_fleet import INT32_MAX, MODEL_ID, PlatformName, StrictBody
from core.rollouts.models import Cohort, Rollout, Stage

INT64_MAX = 2**63 - 1


class StageIn(StrictBody):
    percent: float = Field(gt=0, le=100, description="Share of the cohort that runs the new version in this stage")
    hold_s: float = Field(ge=0, le=30 * 86400, description="How long the stage holds inside its thresholds "
                                                          "before it advances by itself")
    min_inference_count: int = Field(1, ge=1, le=INT32_MAX, description="Inferences of the new version the stage "
                                                                         "needs before its gate judges it")
    max_error_rate: float | None = Field(None, ge=0, le=1, description="errors / inferences; above it: rolled back")
    max_crash_rate: float | None = Field(None, ge=0, le=1, description="crashes / inferences; above it: rolled back")
    max_p95_latency_ms: float | None = Field(None, gt=0, le=3_600_000, description=(
        "inference-weighted mean of the devices' p95 latency; above it: paused"))

    def stage(self) -> Stage:
        return Stage.of(self.model_dump())


class CohortIn(StrictBody):
    """Which devices: every given filter must hold; none given = every device."""

    platforms: list[PlatformName] | None = Field(None, max_length=8)
    capabilities: dict[str, Any] | None = Field(None, max_length=32, description=(
        "Registered capabilities to match: a value for equality, or {\"min\": number} for at least"))
    device_ids: list[str] | None = Field(None, max_length=10_000)

    @model_validator(mode="after")
    def _flat_capabilities(self) -> CohortIn:
        for key, wanted in (self.capabilities or {}).items():
            if isinstance(wanted, dict) and (set(wanted) != {"min"} or not isinstance(wanted["min"], int | float)):
                raise ValueError(f"capabilities.{key}: a value, or {{\"min\": number}}")
            if isinstance(wanted, list):
                raise ValueError(f"capabilities.{key}: a value, or {{\"min\": number}}")
        return self

    def cohort(self) -> Cohort:
        return Cohort.of(self.model_dump(exclude_none=True))


class RolloutCreateRequest(StrictBody):
    model_id: str = Field(pattern=MODEL_ID, description="Catalog model id")
    version: int = Field(ge=1, le=INT32_MAX, description="The catalog version to roll out")
    baseline_version: int | None = Field(None, ge=1, le=INT32_MAX, description=(
        "What the rest of the cohort runs, and all of it after a rollback; default: the newest older version"))
    cohort: CohortIn = Field(default_factory=CohortIn)
    stages: list[StageIn] = Field(min_length=1, max_length=20)


class RolloutCommandRequest(StrictBody):
    reason: str | None = Field(None, max_length=500)


class StageOut(BaseModel):
    percent: float
    hold_s: float
    min_inference_count: int
    max_error_rate: float | None = None
    max_crash_rate: float | None = None
    max_p95_latency_ms: float | None = None


class RolloutOut(BaseModel):
    rollout_id: str
    model_id: str
    version: int
    baseline_version: int | None = None
    status: Literal["active", "paused", "completed", "rolled_back"]
    current_stage: int
    current_percent: float
    stage_started_at: datetime
    stages: list[StageOut]
    cohort: dict[str, Any]
    reason: str | None = None
    created_at: datetime
    updated_at: datetime
    created_by: str
    revision: int

    @classmethod
    def of(cls, r: Rollout) -> RolloutOut:
        return cls(rollout_id=r.id, model_id=r.model_id, version=r.version, baseline_version=r.baseline_version,
                   status=r.status.value, current_stage=r.current_stage, current_percent=r.stage.percent,
                   stage_started_at=r.stage_started_at, stages=[StageOut(**s.as_dict()) for s in r.stages],
                   cohort=r.cohort.as_dict(), reason=r.reason, created_at=r.created_at, updated_at=r.updated_at,
                   created_by=r.created_by, revision=r.revision)


class RolloutDetail(RolloutOut):
    gates: dict[str, dict[str, Any]] = Field(description="Per stage: the last gate judgement (verdict, reason, "
                                                         "thresholds, the telemetry it saw)")
    telemetry: dict[str, dict[str, Any]] = Field(description="The current stage's telemetry per version")
    devices: dict[str, Any] = Field(description="cohort size; per version, devices assigned it and devices "
                                                "whose last heartbeat lists it installed")


class RolloutList(BaseModel):
    rollouts: list[RolloutOut]


class RolloutCommandAccepted(BaseModel):
    rollout_id: str
    command: Literal["pause", "resume", "advance", "rollback"]
    status: Literal["accepted"] = "accepted"
    message: str


class LatencyIn(StrictBody):
    p50: float = Field(ge=0, le=3_600_000)
    p95: float = Field(ge=0, le=3_600_000)
    p99: float = Field(ge=0, le=3_600_000)


class ModelTelemetryIn(StrictBody):
    model_id: str = Field(pattern=MODEL_ID)
    version: int = Field(ge=1, le=INT32_MAX)
    inference_count: int = Field(ge=0, le=INT64_MAX)
    error_count: int = Field(0, ge=0, le=INT64_MAX)
    crash_count: int = Field(0, ge=0, le=INT64_MAX)
    cloud_fallback_count: int = Field(0, ge=0, le=INT64_MAX)
    latency_ms: LatencyIn | None = None

    @model_validator(mode="after")
    def _counts_fit(self) -> ModelTelemetryIn:
        if self.error_count > self.inference_count:
            raise ValueError("error_count cannot exceed inference_count")
        return self


class TelemetryRequest(StrictBody):
    window_start: datetime
    window_end: datetime
    models: list[ModelTelemetryIn] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _window(self) -> TelemetryRequest:
        if self.window_start.tzinfo is None or self.window_end.tzinfo is None:
            raise ValueError("window_start and window_end need a time zone (e.g. 'Z')")
        if self.window_end < self.window_start:
            raise ValueError("window_end is before window_start")
        return self


class TelemetryAccepted(BaseModel):
    device_id: str
    status: Literal["accepted"] = "accepted"
    models: int
