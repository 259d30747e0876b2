"""Routing decisions (core/routing.py): every reason, the order the checks run in, what counts as
not reported, the policy's defaults and overrides, and ``installed_models`` matching."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from core.routing import (
    AssignmentState,
    DeviceConditions,
    ModelRequirements,
    Route,
    RoutingDecision,
    RoutingMode,
    RoutingPolicy,
    RoutingReason,
    cloud_url,
    decide,
    decide_for,
    is_downloaded,
    policy_of,
)
from settings import Settings

pytestmark = pytest.mark.unit

SETTINGS = Settings(routing_min_battery_pct=20, routing_download_networks="wifi,ethernet",
                    routing_memory_headroom=1.5)
POLICY = RoutingPolicy().effective(SETTINGS)
# A device that can run a 100 MB onnx model and has it: every case changes one or two things.
CAPABLE = DeviceConditions(platform="android", memory_mb=4096, runtimes=("onnx",), memory_available_mb=1024,
                           battery_level=80, charging=False, network="wifi")
MODEL = ModelRequirements(memory_mb=100, format="onnx")
HAS_IT = AssignmentState(version=2, downloaded=True)
MISSING = AssignmentState(version=2, downloaded=False)

ON, CLOUD = Route.ON_DEVICE, Route.CLOUD
R = RoutingReason

CASES: list[tuple[str, DeviceConditions, ModelRequirements, AssignmentState, RoutingPolicy, Route, RoutingReason]] = [
    ("capable and downloaded", CAPABLE, MODEL, HAS_IT, POLICY, ON, R.OK),
    ("cloud-only policy beats everything", CAPABLE, MODEL, HAS_IT, replace(POLICY, mode=RoutingMode.CLOUD_ONLY),
     CLOUD, R.CLOUD_ONLY_POLICY),
    ("platform not in the policy's list", CAPABLE, MODEL, HAS_IT, replace(POLICY, platforms=("ios",)),
     CLOUD, R.UNSUPPORTED_PLATFORM),
    ("platform in the policy's list", CAPABLE, MODEL, HAS_IT, replace(POLICY, platforms=("ios", "android")),
     ON, R.OK),
    ("unknown platform against a platform list", replace(CAPABLE, platform=None), MODEL, HAS_IT,
     replace(POLICY, platforms=("android",)), CLOUD, R.UNSUPPORTED_PLATFORM),
    ("device lacks the runtime of the format", replace(CAPABLE, runtimes=("tflite", "coreml")), MODEL, HAS_IT,
     POLICY, CLOUD, R.UNSUPPORTED_RUNTIME),
    ("runtime match ignores case", replace(CAPABLE, runtimes=("onnx",)), replace(MODEL, format="ONNX"), HAS_IT,
     POLICY, ON, R.OK),
    ("device that lists no runtimes is not held to one", replace(CAPABLE, runtimes=None), MODEL, HAS_IT, POLICY,
     ON, R.OK),
    ("free memory below requirement x headroom", replace(CAPABLE, memory_available_mb=149), MODEL, HAS_IT, POLICY,
     CLOUD, R.INSUFFICIENT_MEMORY),
    ("free memory exactly requirement x headroom", replace(CAPABLE, memory_available_mb=150), MODEL, HAS_IT, POLICY,
     ON, R.OK),
    ("registered memory below requirement, free memory not reported",
     replace(CAPABLE, memory_mb=120, memory_available_mb=None), MODEL, HAS_IT, POLICY, CLOUD, R.INSUFFICIENT_MEMORY),
    ("the lesser of registered and free memory counts", replace(CAPABLE, memory_mb=140, memory_available_mb=9000),
     MODEL, HAS_IT, POLICY, CLOUD, R.INSUFFICIENT_MEMORY),
    ("memory never reported, model needs some", replace(CAPABLE, memory_mb=None, memory_available_mb=None), MODEL,
     HAS_IT, POLICY, CLOUD, R.MEMORY_UNKNOWN),
    ("memory never reported, model needs none", replace(CAPABLE, memory_mb=None, memory_available_mb=None),
     replace(MODEL, memory_mb=None), HAS_IT, POLICY, ON, R.OK),
    ("insufficient memory comes before not downloaded (no pointless download)",
     replace(CAPABLE, memory_available_mb=10), MODEL, MISSING, POLICY, CLOUD, R.INSUFFICIENT_MEMORY),
    ("not downloaded on wifi: cloud meanwhile, download now", CAPABLE, MODEL, MISSING, POLICY,
     CLOUD, R.NOT_DOWNLOADED),
    ("not downloaded on ethernet", replace(CAPABLE, network="ethernet"), MODEL, MISSING, POLICY,
     CLOUD, R.NOT_DOWNLOADED),
    ("not downloaded on cellular: download deferred", replace(CAPABLE, network="cellular"), MODEL, MISSING, POLICY,
     CLOUD, R.DOWNLOAD_DEFERRED),
    ("cellular allowed by the policy", replace(CAPABLE, network="cellular"), MODEL, MISSING,
     replace(POLICY, download_networks=("wifi", "cellular")), CLOUD, R.NOT_DOWNLOADED),
    ("not downloaded, network not reported", replace(CAPABLE, network=None), MODEL, MISSING, POLICY,
     CLOUD, R.NOT_DOWNLOADED),
    ("not downloaded and offline: deferred", replace(CAPABLE, network="offline"), MODEL, MISSING, POLICY,
     CLOUD, R.DOWNLOAD_DEFERRED),
    ("offline with the model runs on device even on low battery",
     replace(CAPABLE, network="offline", battery_level=3), MODEL, HAS_IT, POLICY, ON, R.OFFLINE),
    ("low battery, not charging", replace(CAPABLE, battery_level=19), MODEL, HAS_IT, POLICY, CLOUD, R.LOW_BATTERY),
    ("low battery, charging state not reported", replace(CAPABLE, battery_level=5, charging=None), MODEL, HAS_IT,
     POLICY, CLOUD, R.LOW_BATTERY),
    ("low battery but charging", replace(CAPABLE, battery_level=5, charging=True), MODEL, HAS_IT, POLICY, ON, R.OK),
    ("battery exactly at the minimum", replace(CAPABLE, battery_level=20), MODEL, HAS_IT, POLICY, ON, R.OK),
    ("battery not reported", replace(CAPABLE, battery_level=None), MODEL, HAS_IT, POLICY, ON, R.OK),
    ("battery check off (0)", replace(CAPABLE, battery_level=1), MODEL, HAS_IT, replace(POLICY, min_battery_pct=0),
     ON, R.OK),
    ("not downloaded comes before low battery", replace(CAPABLE, battery_level=1), MODEL, MISSING, POLICY,
     CLOUD, R.NOT_DOWNLOADED),
    ("nothing reported, nothing required", DeviceConditions(), ModelRequirements(), HAS_IT, POLICY, ON, R.OK),
    ("nothing reported, not downloaded", DeviceConditions(), ModelRequirements(), MISSING, POLICY,
     CLOUD, R.NOT_DOWNLOADED),
]


@pytest.mark.parametrize(("device", "model", "assignment", "policy", "route", "reason"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_decide_routes_each_case_with_its_reason(device: DeviceConditions, model: ModelRequirements,
                                                 assignment: AssignmentState, policy: RoutingPolicy, route: Route,
                                                 reason: RoutingReason) -> None:
    decision = decide(device, model, assignment, policy)
    assert (decision.decision, decision.reason) == (route, reason)
    assert decision.detail  # every decision explains itself in a sentence


def test_every_reason_code_is_reachable_from_the_table() -> None:
    assert {case[6] for case in CASES} == set(RoutingReason)


def test_decision_entry_is_the_assignment_routing_object() -> None:
    decision = decide(replace(CAPABLE, memory_available_mb=10), MODEL, HAS_IT, POLICY)
    assert decision.entry("org/model") == {"decision": "cloud", "reason": "insufficient_memory",
                                           "cloud_url": "/api/v1/infer/org/model"}
    assert cloud_url("m") == "/api/v1/infer/m"
    assert isinstance(decision, RoutingDecision)


def test_insufficient_memory_detail_names_need_and_have() -> None:
    decision = decide(replace(CAPABLE, memory_available_mb=120), MODEL, HAS_IT, POLICY)
    assert "150 MB" in decision.detail and "120 MB" in decision.detail


# --- device conditions from registration and heartbeat ---------------------------------------

def test_conditions_read_capabilities_and_heartbeat_metrics() -> None:
    conditions = DeviceConditions.of("ios", {"memory_mb": 2048, "runtimes": ["ONNX", "coreml"]},
                                     {"memory_available_mb": 700, "battery_level": 55.5, "charging": True,
                                      "network": "cellular", "installed_models": []})
    assert conditions == DeviceConditions(platform="ios", memory_mb=2048, runtimes=("onnx", "coreml"),
                                          memory_available_mb=700, battery_level=55.5, charging=True,
                                          network="cellular")
    assert conditions.memory_for_models_mb == 700


@pytest.mark.parametrize("metrics", [
    {"memory_available_mb": "lots", "battery_level": True, "charging": "yes", "network": "5g"},
    {"memory_available_mb": None, "battery_level": None, "charging": None, "network": None},
    {},
])
def test_conditions_of_the_wrong_type_count_as_not_reported(metrics: dict[str, Any]) -> None:
    conditions = DeviceConditions.of("python", {"memory_mb": "4GB", "runtimes": "onnx"}, metrics)
    assert conditions == DeviceConditions(platform="python")


# --- the policy: stored overrides, defaults from settings -----------------------------------

def test_policy_defaults_come_from_settings() -> None:
    assert RoutingPolicy().effective(SETTINGS) == RoutingPolicy(
        mode=RoutingMode.AUTO, min_battery_pct=20, download_networks=("wifi", "ethernet"), memory_headroom=1.5)


def test_policy_overrides_survive_the_stored_form_and_beat_defaults() -> None:
    policy = RoutingPolicy(mode=RoutingMode.AUTO, min_battery_pct=50, download_networks=("wifi",),
                           platforms=("android",))
    stored = policy.overrides()
    assert stored == {"mode": "auto", "min_battery_pct": 50, "download_networks": ["wifi"], "platforms": ["android"]}
    assert RoutingPolicy.of(stored) == policy
    effective = policy_of({"routing_policy": stored}, SETTINGS)
    assert (effective.min_battery_pct, effective.download_networks, effective.memory_headroom) == (50, ("wifi",), 1.5)


def test_a_model_without_a_policy_gets_the_defaults() -> None:
    assert policy_of({}, SETTINGS) == RoutingPolicy().effective(SETTINGS)


def test_requirements_read_the_catalog_memory() -> None:
    assert ModelRequirements.of({"resource_requirements": {"memory_mb": 512}}, "onnx") == \
        ModelRequirements(memory_mb=512, format="onnx")
    assert ModelRequirements.of({}, None) == ModelRequirements()


# --- installed_models ------------------------------------------------------------------------

SHA = "ab" * 32


@pytest.mark.parametrize(("installed", "expected"), [
    ([{"model_id": "m", "version": 2, "sha256": SHA}], True),
    ([{"model_id": "m", "version": "2", "sha256": f"sha256:{SHA.upper()}"}], True),  # either spelling
    ([{"model_id": "m", "version": 1, "sha256": SHA}], False),  # the old version
    ([{"model_id": "m", "version": 2, "sha256": "cd" * 32}], False),  # a different file
    ([{"model_id": "other", "version": 2, "sha256": SHA}], False),
    (["m", None, {"version": 2}], False),  # junk entries are skipped
    ([], False),
    (None, False),
])
def test_is_downloaded_matches_model_version_and_sha(installed: Any, expected: bool) -> None:
    assert is_downloaded(installed, "m", 2, SHA) is expected


def test_is_downloaded_without_an_expected_sha_matches_model_and_version() -> None:
    assert is_downloaded([{"model_id": "m", "version": 2}], "m", 2, None)


def test_decide_for_reads_catalog_registration_and_heartbeat() -> None:
    extra = {"resource_requirements": {"memory_mb": 200}, "routing_policy": {"mode": "auto", "min_battery_pct": 50}}
    small = decide_for(SETTINGS, extra, "onnx", "android", {"memory_mb": 256}, {"network": "wifi"}, 1, True)
    assert small.reason is R.INSUFFICIENT_MEMORY  # 200 x 1.5 > 256
    weak = decide_for(SETTINGS, extra, "onnx", "android", {"memory_mb": 512}, {"battery_level": 45}, 1, True)
    assert weak.reason is R.LOW_BATTERY  # the model's own minimum (50), not the default (20)
    fine = decide_for(SETTINGS, extra, "onnx", "android", {"memory_mb": 512}, {"battery_level": 45,
                                                                             "charging": True}, 1, True)
    assert fine.decision is ON
