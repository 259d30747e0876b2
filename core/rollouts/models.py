"""Rollout records and the pure rules they obey: sticky bucketing, cohorts, telemetry aggregates,
stage gates. No I/O here, so every rule is unit-tested without a server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class RolloutStatus(StrEnum):
    ACTIVE = "active"  # the current stage's devices run the new version; gates are judged
    PAUSED = "paused"  # devices keep what they were assigned; nothing widens, no gate is judged
    COMPLETED = "completed"  # the last stage passed: the cohort runs the new version
    ROLLED_BACK = "rolled_back"  # every device is sent back to the baseline version

    @property
    def terminal(self) -> bool:
        return self in (RolloutStatus.COMPLETED, RolloutStatus.ROLLED_BACK)


class Command(StrEnum):
    """What an operator asks of a rollout (``POST /api/v1/rollouts/{id}/<command>``)."""

    PAUSE = "pause"
    RESUME = "resume"
    ADVANCE = "advance"
    ROLLBACK = "rollback"


# Which statuses each command may start from; anything else is a 409 at the ingress.
COMMAND_FROM: dict[Command, frozenset[RolloutStatus]] = {
    Command.PAUSE: frozenset({RolloutStatus.ACTIVE}),
    Command.RESUME: frozenset({RolloutStatus.PAUSED}),
    Command.ADVANCE: frozenset({RolloutStatus.ACTIVE, RolloutStatus.PAUSED}),
    Command.ROLLBACK: frozenset({RolloutStatus.ACTIVE, RolloutStatus.PAUSED}),
}


def bucket(device_id: str, rollout_id: str) -> float:
    """Where a device falls in a rollout, in [0, 100): a hash of both ids, so it never changes for
    the pair (sticky) and differs between rollouts (no device is always first). A device is in a
    stage of ``percent`` when its bucket is below it, so widening the percent keeps every device
    that was in and adds others."""
    digest = hashlib.sha256(f"{rollout_id}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


@dataclass(frozen=True)
class Cohort:
    """Which devices a rollout targets: every given filter must hold; none given = all devices."""

    platforms: tuple[str, ...] = ()  # any of these platforms
    capabilities: Mapping[str, Any] = field(default_factory=dict)  # key: value, or key: {"min": number}
    device_ids: tuple[str, ...] = ()  # exactly these devices

    @property
    def needs_device_row(self) -> bool:
        """Whether matching needs the device's registered platform or capabilities."""
        return bool(self.platforms or self.capabilities)

    def matches(self, device_id: str, platform: str | None = None,
                capabilities: Mapping[str, Any] | None = None) -> bool:
        if self.device_ids and device_id not in self.device_ids:
            return False
        if self.platforms and platform not in self.platforms:
            return False
        caps = capabilities or {}
        for key, wanted in self.capabilities.items():
            have = caps.get(key)
            if isinstance(wanted, Mapping):
                minimum = wanted.get("min")
                if not isinstance(have, int | float) or isinstance(have, bool) or (
                        minimum is not None and have < minimum):
                    return False
            elif have != wanted:
                return False
        return True

    def as_dict(self) -> dict[str, Any]:
        return {"platforms": list(self.platforms), "capabilities": dict(self.capabilities),
                "device_ids": list(self.device_ids)}

    @classmethod
    def of(cls, raw: Mapping[str, Any] | None) -> Cohort:
        raw = raw or {}
        return cls(tuple(raw.get("platforms") or ()), dict(raw.get("capabilities") or {}),
                   tuple(raw.get("device_ids") or ()))


@dataclass(frozen=True)
class Stage:
    """One step of a rollout: ``percent`` of the cohort, held ``hold_s`` seconds within thresholds."""

    percent: float
    hold_s: float
    min_inference_count: int = 1  # below it the stage's telemetry is too thin to judge
    max_error_rate: float | None = None  # errors / inferences of the new version; above it: roll back
    max_crash_rate: float | None = None  # crashes / inferences; above it: roll back
    max_p95_latency_ms: float | None = None  # inference-weighted p95 (see TelemetryAggregate); above it: pause

    def as_dict(self) -> dict[str, Any]:
        return {"percent": self.percent, "hold_s": self.hold_s, "min_inference_count": self.min_inference_count,
                "max_error_rate": self.max_error_rate, "max_crash_rate": self.max_crash_rate,
                "max_p95_latency_ms": self.max_p95_latency_ms}

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Stage:
        return cls(float(raw["percent"]), float(raw["hold_s"]), int(raw.get("min_inference_count", 1)),
                   raw.get("max_error_rate"), raw.get("max_crash_rate"), raw.get("max_p95_latency_ms"))


@dataclass
class Rollout:
    id: str
    model_id: str
    version: int  # the catalog version being rolled out
    baseline_version: int | None  # what devices outside the stage (or after a rollback) run; None: nothing
    cohort: Cohort
    stages: list[Stage]
    status: RolloutStatus
    current_stage: int
    stage_started_at: datetime
    created_at: datetime
    updated_at: datetime
    created_by: str  # key id of the operator
    revision: int = 0  # bumped by every change: the compare-and-set token
    reason: str | None = None  # why the last change happened
    # per stage index (as str): the telemetry the last gate judgement saw and what it decided
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def stage(self) -> Stage:
        return self.stages[self.current_stage]

    def assigns(self, device_id: str) -> bool:
        """Whether the device runs the new version now (the cohort is checked by the caller)."""
        if self.status is RolloutStatus.ROLLED_BACK:
            return False
        if self.status is RolloutStatus.COMPLETED:
            return True
        return bucket(device_id, self.id) < self.stage.percent


@dataclass(frozen=True)
class TelemetryRow:
    """One device's report about one model version over one window, filed under a rollout's stage."""

    rollout_id: str
    stage: int
    version: int
    device_id: str
    window_start: datetime
    window_end: datetime
    inference_count: int
    error_count: int
    crash_count: int
    cloud_fallback_count: int
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


@dataclass(frozen=True)
class TelemetryAggregate:
    """A stage's telemetry for one version. Percentiles of different devices cannot be merged exactly
    from their percentiles, so ``p95_ms`` is the inference-weighted mean of the devices' p95s (what the
    gate judges: one slow device with few inferences does not trip it) and ``p95_max_ms`` the worst
    device's (shown, not gated)."""

    devices: int
    reports: int
    inference_count: int
    error_count: int
    crash_count: int
    cloud_fallback_count: int
    p95_ms: float | None
    p95_max_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.error_count / self.inference_count if self.inference_count else None

    @property
    def crash_rate(self) -> float | None:
        return self.crash_count / self.inference_count if self.inference_count else None

    def as_dict(self) -> dict[str, Any]:
        return {"devices": self.devices, "reports": self.reports, "inference_count": self.inference_count,
                "error_count": self.error_count, "crash_count": self.crash_count,
                "cloud_fallback_count": self.cloud_fallback_count, "error_rate": self.error_rate,
                "crash_rate": self.crash_rate, "latency_p95_ms": self.p95_ms, "latency_p95_max_ms": self.p95_max_ms}


def aggregate(rows: Iterable[TelemetryRow]) -> TelemetryAggregate:
    rows = list(rows)
    weighted = [(r.p95_ms, r.inference_count) for r in rows if r.p95_ms is not None and r.inference_count > 0]
    weight = sum(n for _, n in weighted)
    return TelemetryAggregate(
        devices=len({r.device_id for r in rows}), reports=len(rows),
        inference_count=sum(r.inference_count for r in rows), error_count=sum(r.error_count for r in rows),
        crash_count=sum(r.crash_count for r in rows), cloud_fallback_count=sum(r.cloud_fallback_count for r in rows),
        p95_ms=sum(p * n for p, n in weighted) / weight if weight else None,
        p95_max_ms=max((p for p, _ in weighted), default=None))


class Verdict(StrEnum):
    WAIT = "wait"  # hold time not over, or too little telemetry to judge
    ADVANCE = "advance"  # held long enough inside the thresholds
    PAUSE = "pause"  # latency crossed its threshold: an operator decides
    ROLLBACK = "rollback"  # errors or crashes crossed theirs: the version is broken


@dataclass(frozen=True)
class Gate:
    verdict: Verdict
    reason: str


def judge(stage: Stage, telemetry: TelemetryAggregate, held_s: float) -> Gate:
    """The gate of a stage: breaches are judged as soon as there is enough telemetry (they need not
    wait for the hold time); advancing needs both the hold time and enough telemetry."""
    enough = telemetry.inference_count >= max(1, stage.min_inference_count)
    if enough:
        for name, rate, limit in (("error rate", telemetry.error_rate, stage.max_error_rate),
                                  ("crash rate", telemetry.crash_rate, stage.max_crash_rate)):
            if limit is not None and rate is not None and rate > limit:
                return Gate(Verdict.ROLLBACK, f"{name} {rate:.4f} above the stage's maximum {limit} "
                                              f"over {telemetry.inference_count} inferences")
        p95 = telemetry.p95_ms
        if stage.max_p95_latency_ms is not None and p95 is not None and p95 > stage.max_p95_latency_ms:
            return Gate(Verdict.PAUSE, f"p95 latency {p95:.1f} ms above the stage's maximum "
                                       f"{stage.max_p95_latency_ms} ms")
    if held_s < stage.hold_s:
        return Gate(Verdict.WAIT, f"held {held_s:.0f}s of {stage.hold_s:.0f}s")
    if not enough:
        return Gate(Verdict.WAIT, f"{telemetry.inference_count} inferences reported, "
                                  f"{stage.min_inference_count} needed to judge the stage")
    return Gate(Verdict.ADVANCE, f"held {held_s:.0f}s within thresholds over "
                                 f"{telemetry.inference_count} inferences")
