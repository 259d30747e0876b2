"""Routing decisions (issue 20 item 5): does a device run a model itself (``on_device``) or call the
serving plane for it (``cloud``: ``POST /api/v1/infer/{model_id}`` with its own device key)?

``decide`` is pure: the device's conditions (its registration's capabilities and its latest
heartbeat's metrics), what the model needs (catalog ``resource_requirements.memory_mb``, the
version's file format), what the device was assigned (downloaded yet or not) and the model's
``RoutingPolicy`` in, one ``RoutingDecision`` out. Checks run from the most lasting reason to the
most passing one, and the first that fails names the decision's reason:

1. ``cloud_only_policy``      the model's policy sends everyone to the cloud
2. ``unsupported_platform``   the policy lists platforms and the device's is not one of them
3. ``unsupported_runtime``    the device lists the runtimes it has (``capabilities.runtimes``)
                              and the version's format is not one of them
4. ``insufficient_memory``    memory_mb x headroom factor exceeds the device's memory (the least of
                              its heartbeat's ``memory_available_mb`` and registration's ``memory_mb``)
   ``memory_unknown``         the model needs memory and the device never said how much it has
5. ``not_downloaded``         the assigned version is not on the device yet: cloud meanwhile, and
                              the device may download now (its network is one the policy allows)
   ``download_deferred``      not downloaded, and the device's network is not one the policy
                              downloads on (e.g. cellular): cloud, and no download yet
6. ``offline``                the device reports no network: the cloud is out of reach, so it runs
                              on device (it is downloaded and able to), battery or not
7. ``low_battery``            battery below the policy's minimum and not charging: cloud
8. ``ok``                     on device

So a device that cannot hold the model never downloads it (3, 4 come before 5), and a device whose
assigned version is not there yet falls back to the cloud rather than fail. Conditions a device
did not report (battery, network) do not count against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from settings import Settings

NETWORKS = ("wifi", "cellular", "ethernet", "offline")


class Route(StrEnum):
    ON_DEVICE = "on_device"
    CLOUD = "cloud"


class RoutingReason(StrEnum):
    """Stable codes of why a decision was made (clients may switch on them; never renamed)."""

    OK = "ok"
    CLOUD_ONLY_POLICY = "cloud_only_policy"
    UNSUPPORTED_PLATFORM = "unsupported_platform"
    UNSUPPORTED_RUNTIME = "unsupported_runtime"
    INSUFFICIENT_MEMORY = "insufficient_memory"
    MEMORY_UNKNOWN = "memory_unknown"
    NOT_DOWNLOADED = "not_downloaded"
    DOWNLOAD_DEFERRED = "download_deferred"
    OFFLINE = "offline"
    LOW_BATTERY = "low_battery"


class RoutingMode(StrEnum):
    AUTO = "auto"  # decide by the checks above
    CLOUD_ONLY = "cloud_only"  # always the serving plane (e.g. a model not fit for devices yet)


@dataclass(frozen=True)
class RoutingPolicy:
    """A model's routing thresholds. ``None`` fields take the deployment's defaults (settings
    ``routing_*``) through ``effective``; what the catalog stores are only the operator's overrides."""

    mode: RoutingMode = RoutingMode.AUTO
    min_battery_pct: int | None = None  # below it (and not charging): cloud; 0 = battery never counts
    download_networks: tuple[str, ...] | None = None  # networks a device may download models on
    memory_headroom: float | None = None  # memory needed = memory_mb x this
    platforms: tuple[str, ...] | None = None  # platforms that may run it on device; None = any

    def effective(self, settings: Settings) -> RoutingPolicy:
        """This policy with every unset threshold taken from the settings."""
        return replace(
            self,
            min_battery_pct=self.min_battery_pct if self.min_battery_pct is not None
            else settings.routing_min_battery_pct,
            download_networks=self.download_networks if self.download_networks is not None
            else _names(settings.routing_download_networks),
            memory_headroom=self.memory_headroom if self.memory_headroom is not None
            else settings.routing_memory_headroom)

    def overrides(self) -> dict[str, Any]:
        """The stored form (catalog ``extra["routing_policy"]``): only what differs from the defaults."""
        out: dict[str, Any] = {"mode": self.mode.value}
        for name in ("min_battery_pct", "memory_headroom"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name in ("download_networks", "platforms"):
            if getattr(self, name) is not None:
                out[name] = list(getattr(self, name))
        return out

    @classmethod
    def of(cls, stored: Mapping[str, Any] | None) -> RoutingPolicy:
        """Read the stored form back (unknown keys ignored: an older writer's extra fields)."""
        stored = stored or {}
        networks, platforms = stored.get("download_networks"), stored.get("platforms")
        return cls(mode=RoutingMode(stored.get("mode") or RoutingMode.AUTO),
                   min_battery_pct=_int_or_none(stored.get("min_battery_pct")),
                   download_networks=tuple(networks) if networks is not None else None,
                   memory_headroom=float(stored["memory_headroom"]) if stored.get("memory_headroom") is not None
                   else None,
                   platforms=tuple(platforms) if platforms is not None else None)


def policy_of(model_extra: Mapping[str, Any], settings: Settings) -> RoutingPolicy:
    """The effective policy of a catalog model (its ``extra``)."""
    return RoutingPolicy.of(model_extra.get("routing_policy")).effective(settings)


@dataclass(frozen=True)
class DeviceConditions:
    """What is known of the device: registration (platform, capabilities) and last heartbeat metrics.
    None = not reported."""

    platform: str | None = None
    memory_mb: int | None = None  # capabilities.memory_mb (registration): the device's memory
    runtimes: tuple[str, ...] | None = None  # capabilities.runtimes, e.g. ("onnx",); None = not said
    memory_available_mb: int | None = None  # heartbeat metrics
    battery_level: float | None = None  # 0-100
    charging: bool | None = None
    network: str | None = None  # wifi | cellular | ethernet | offline

    @property
    def memory_for_models_mb(self) -> int | None:
        """The least of what the device said it has: free memory now, and its memory at all."""
        known = [m for m in (self.memory_available_mb, self.memory_mb) if m is not None]
        return min(known) if known else None

    @classmethod
    def of(cls, platform: str | None, capabilities: Mapping[str, Any] | None,
           metrics: Mapping[str, Any] | None) -> DeviceConditions:
        """From a device's registration and heartbeat metrics; values of the wrong type count as not
        reported (metrics are the device's word, validated at the ingress, but old rows may hold anything)."""
        capabilities, metrics = capabilities or {}, metrics or {}
        runtimes = capabilities.get("runtimes")
        network = metrics.get("network")
        return cls(
            platform=platform,
            memory_mb=_int_or_none(capabilities.get("memory_mb")),
            runtimes=tuple(str(r).lower() for r in runtimes) if isinstance(runtimes, list | tuple) else None,
            memory_available_mb=_int_or_none(metrics.get("memory_available_mb")),
            battery_level=_number_or_none(metrics.get("battery_level")),
            charging=metrics["charging"] if isinstance(metrics.get("charging"), bool) else None,
            network=network if network in NETWORKS else None)


@dataclass(frozen=True)
class ModelRequirements:
    memory_mb: int | None = None  # catalog resource_requirements.memory_mb
    format: str | None = None  # the assigned version's file format (onnx, pytorch, ...)

    @classmethod
    def of(cls, model_extra: Mapping[str, Any], fmt: str | None) -> ModelRequirements:
        requirements = model_extra.get("resource_requirements") or {}
        return cls(memory_mb=_int_or_none(requirements.get("memory_mb")), format=fmt)


@dataclass(frozen=True)
class AssignmentState:
    version: str | int | None
    downloaded: bool


@dataclass(frozen=True)
class RoutingDecision:
    decision: Route
    reason: RoutingReason
    detail: str = field(default="", compare=False)  # the reason in a sentence, for people

    def entry(self, model_id: str) -> dict[str, str]:
        """The assignment's ``routing`` object: {"decision", "reason", "cloud_url"}."""
        return {"decision": self.decision.value, "reason": self.reason.value, "cloud_url": cloud_url(model_id)}


def cloud_url(model_id: str) -> str:
    """The serving plane's inference route for the model (seed 001): what ``cloud`` calls."""
    return f"/api/v1/infer/{model_id}"


def _cloud(reason: RoutingReason, detail: str) -> RoutingDecision:
    return RoutingDecision(Route.CLOUD, reason, detail)


def decide(device: DeviceConditions, model: ModelRequirements, assignment: AssignmentState,
           policy: RoutingPolicy) -> RoutingDecision:
    """``on_device`` or ``cloud``, with the first reason that holds (module docstring). ``policy``
    should be ``effective`` (unset thresholds: no limit)."""
    if policy.mode is RoutingMode.CLOUD_ONLY:
        return _cloud(RoutingReason.CLOUD_ONLY_POLICY, "The model's routing policy serves it from the cloud only.")
    if policy.platforms is not None and device.platform not in policy.platforms:
        return _cloud(RoutingReason.UNSUPPORTED_PLATFORM,
                      f"Platform {device.platform!r} is not one of {list(policy.platforms)}.")
    if device.runtimes is not None and model.format is not None and model.format.lower() not in device.runtimes:
        return _cloud(RoutingReason.UNSUPPORTED_RUNTIME,
                      f"The device runs {list(device.runtimes)}, not {model.format!r} files.")
    if model.memory_mb:
        needed = model.memory_mb * (policy.memory_headroom or 1.0)
        have = device.memory_for_models_mb
        if have is None:
            return _cloud(RoutingReason.MEMORY_UNKNOWN,
                          f"The model needs {needed:.0f} MB and the device never reported its memory "
                          "(capabilities.memory_mb or heartbeat memory_available_mb).")
        if have < needed:
            return _cloud(RoutingReason.INSUFFICIENT_MEMORY,
                          f"The model needs {needed:.0f} MB ({model.memory_mb} MB x {policy.memory_headroom} "
                          f"headroom); the device has {have} MB.")
    if not assignment.downloaded:
        allowed = policy.download_networks
        if device.network is not None and allowed is not None and device.network not in allowed:
            return _cloud(RoutingReason.DOWNLOAD_DEFERRED,
                          f"Version {assignment.version} is not on the device, and models are downloaded over "
                          f"{list(allowed)}, not {device.network}.")
        return _cloud(RoutingReason.NOT_DOWNLOADED,
                      f"Version {assignment.version} is not on the device yet: the cloud serves it meanwhile.")
    if device.network == "offline":
        return RoutingDecision(Route.ON_DEVICE, RoutingReason.OFFLINE,
                               "The device has no network: the cloud is out of reach, so it runs on device.")
    if (policy.min_battery_pct and device.battery_level is not None and device.battery_level < policy.min_battery_pct
            and device.charging is not True):
        return _cloud(RoutingReason.LOW_BATTERY,
                      f"Battery at {device.battery_level:g} % (below {policy.min_battery_pct} %) and not charging.")
    return RoutingDecision(Route.ON_DEVICE, RoutingReason.OK, "The device can run it and has it.")


def decide_for(settings: Settings, model_extra: Mapping[str, Any], fmt: str | None, platform: str | None,
               capabilities: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None, version: str | int | None,
               downloaded: bool) -> RoutingDecision:
    """``decide`` from what the callers hold: a catalog model's ``extra`` (its policy and resource
    requirements), the assigned version's format, the device's platform and capabilities
    (registration) and its latest heartbeat metrics."""
    return decide(DeviceConditions.of(platform, capabilities, metrics), ModelRequirements.of(model_extra, fmt),
                  AssignmentState(version, downloaded), policy_of(model_extra, settings))


def is_downloaded(installed: Iterable[Any] | None, model_id: str, version: str | int, sha256: str | None) -> bool:
    """Whether heartbeat ``metrics.installed_models`` lists this model at this version (and, when the
    assignment names one, with this sha256: a corrupted or different file is not the assignment)."""
    for item in installed or ():
        if not isinstance(item, Mapping) or item.get("model_id") != model_id:
            continue
        if str(item.get("version")) != str(version):
            continue
        if sha256 and _hex(item.get("sha256")) != _hex(sha256):
            continue
        return True
    return False


def _names(value: str) -> tuple[str, ...]:
    return tuple(n.strip().lower() for n in value.split(",") if n.strip())


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _hex(digest: Any) -> str:
    return str(digest or "").lower().removeprefix("sha256:")
