"""The declared topology is complete and consistent."""

from __future__ import annotations

import pytest

from settings import Settings
from topology.admin import Drift, DriftKind
from topology.groups import BY_GROUP, GROUPS, Group, all_topics, dlq_for, group_spec, inference_group
from topology.topics import (
    AUDIT_EVENTS,
    DATA_TOPICS,
    DAY_MS,
    DEVICE_HEARTBEATS,
    INFERENCE_REQUESTS,
    INFERENCE_RESPONSES,
    KEY_EVENTS,
    Priority,
    TopicSpec,
    dead_letter_topic,
)

pytestmark = pytest.mark.unit


def test_topic_names_are_unique() -> None:
    names = [t.name for t in all_topics()]
    assert len(names) == len(set(names))


def test_prefix_is_applied_to_every_topic_and_group() -> None:
    settings = Settings(topic_prefix="staging.")
    assert all(t.full_name(settings) == f"staging.{t.name}" for t in all_topics())
    assert INFERENCE_RESPONSES.full_name(settings) == "staging.modelmora.inference.responses"
    assert INFERENCE_REQUESTS[Priority.HIGH].full_name(settings) == "staging.modelmora.inference.requests.high"
    assert all(g.full_id(settings) == f"staging.{g.group_id}" for g in GROUPS)
    assert Settings(topic_prefix="").prefixed("x") == "x"


def test_seed_topic_names_are_kept() -> None:
    # Seed 001 §4.1; requests are split per priority under the seed's name.
    names = {t.name for t in DATA_TOPICS}
    assert {"modelmora.inference.responses", "modelmora.lifecycle.events", "modelmora.audit.events"} <= names
    assert {f"modelmora.inference.requests.{p.value}" for p in Priority} <= names


def test_one_request_topic_and_group_per_priority() -> None:
    assert set(INFERENCE_REQUESTS) == set(Priority) == {Priority.HIGH, Priority.MEDIUM, Priority.LOW}
    assert all(INFERENCE_REQUESTS[p].name == f"modelmora.inference.requests.{p.value}" for p in Priority)
    groups = {inference_group(p).group_id for p in Priority}
    assert groups == {Group.inference(p).value for p in Priority} and len(groups) == 3
    assert all(inference_group(p).inputs == (INFERENCE_REQUESTS[p],) for p in Priority)
    assert all(BY_GROUP[Group.inference(p)] == inference_group(p) for p in Priority)


def test_every_declared_group_exists_and_every_group_is_declared() -> None:
    assert {g.group_id for g in GROUPS} == {g.value for g in Group}
    assert len(BY_GROUP) == len(GROUPS)


def test_every_group_has_its_own_dead_letter_topic() -> None:
    dlqs = {g.dead_letters.name for g in GROUPS}
    assert len(dlqs) == len(GROUPS)
    assert dlqs <= {t.name for t in all_topics()}
    assert all(dlq_for(g) == dlq_for(g.group_id) == dead_letter_topic(g.group_id) for g in GROUPS)
    assert all(1 <= g.dead_letters.partitions <= 3 for g in GROUPS)
    with pytest.raises(KeyError, match="unknown consumer group"):
        group_spec("no-such-group")


def test_audit_topic_keeps_a_year() -> None:
    assert AUDIT_EVENTS.retention_ms >= 365 * DAY_MS
    assert AUDIT_EVENTS.cleanup_policy == "delete"


def test_partition_counts() -> None:
    assert all(t.partitions == 6 for t in INFERENCE_REQUESTS.values())
    assert DEVICE_HEARTBEATS.partitions == 6
    # Key events: one partition on purpose (rare; one offset tells a revoker how far each replica read).
    assert all(t.partitions >= 3 for t in DATA_TOPICS if t is not KEY_EVENTS)
    assert KEY_EVENTS.partitions == 1 and KEY_EVENTS.cleanup_policy == "compact"


def test_max_replicas_never_exceed_partitions() -> None:
    for group in GROUPS:
        assert 1 <= group.max_replicas <= min(t.partitions for t in group.inputs)
    assert inference_group(Priority.HIGH).max_replicas == 6


def test_replication_comes_from_settings() -> None:
    settings = Settings(default_replication_factor=3, default_min_insync_replicas=2)
    for spec in all_topics():
        assert spec.replication(settings) == 3
        assert spec.configs(settings)["min.insync.replicas"] == "2"
        assert spec.min_isr(settings) <= spec.replication(settings)
    assert all(s.min_isr(Settings()) <= s.replication(Settings()) for s in all_topics())


@pytest.mark.parametrize("bad", [
    {"partitions": 0}, {"retention_ms": 0}, {"retention_ms": -2}, {"cleanup_policy": "nonsense"},
    {"replication_factor": 0}, {"min_insync_replicas": 0},
])
def test_topic_spec_rejects_what_the_broker_would_swallow(bad: dict[str, object]) -> None:
    fields: dict[str, object] = {"name": "x", "partitions": 1, "retention_ms": DAY_MS, "purpose": "test", **bad}
    with pytest.raises(ValueError):
        TopicSpec(**fields)  # type: ignore[arg-type]


def test_specs_are_frozen_and_purposes_are_one_line() -> None:
    with pytest.raises(AttributeError):
        AUDIT_EVENTS.partitions = 1  # type: ignore[misc]
    assert all(t.purpose and "\n" not in t.purpose for t in all_topics())
    assert all(g.purpose and "\n" not in g.purpose for g in GROUPS)


def test_drift_is_a_plain_table_row() -> None:
    row = Drift("t.x", DriftKind.MISSING, "3 partitions", "absent").row()
    assert row == {"topic": "t.x", "drift": "missing", "expected": "3 partitions", "actual": "absent", "detail": ""}
    assert all(type(v) is str for v in row.values())
