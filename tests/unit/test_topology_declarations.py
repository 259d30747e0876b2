"""The declared topology is complete and consistent."""

from __future__ import annotations

import pytest

from core.settings import Settings
from topology.groups import GROUPS, all_topics, inference_group
from topology.topics import AUDIT_EVENTS, DAY_MS, INFERENCE_REQUESTS, Priority

pytestmark = pytest.mark.unit


def test_topic_names_are_unique_and_prefixed() -> None:
    names = [t.name for t in all_topics()]
    assert len(names) == len(set(names))
    settings = Settings(topic_prefix="staging.")
    assert all(t.full_name(settings).startswith("staging.") for t in all_topics())


def test_one_request_topic_and_group_per_priority() -> None:
    assert set(INFERENCE_REQUESTS) == set(Priority)
    groups = {inference_group(p).group_id for p in Priority}
    assert len(groups) == 3
    assert all(inference_group(p).inputs == (INFERENCE_REQUESTS[p],) for p in Priority)


def test_every_group_has_its_own_dead_letter_topic() -> None:
    dlqs = {g.dead_letters.name for g in GROUPS}
    assert len(dlqs) == len(GROUPS)
    assert dlqs <= {t.name for t in all_topics()}


def test_audit_topic_keeps_a_year() -> None:
    assert AUDIT_EVENTS.retention_ms >= 365 * DAY_MS
    assert AUDIT_EVENTS.cleanup_policy == "delete"


def test_max_replicas_never_exceed_partitions() -> None:
    for group in GROUPS:
        assert 1 <= group.max_replicas <= min(t.partitions for t in group.inputs)
