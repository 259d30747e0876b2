"""One table of message types: a new type is its schema files plus one row in ``topology/messages.py``."""

from __future__ import annotations

import pytest

from schemas.base import AVRO_DIR, JSON_DIR
from schemas.codec import Codec, default_schemas, new_envelope
from tests.samples import sample
from topology.groups import GROUPS
from topology.messages import MESSAGES, MessageRoute, MessageType
from topology.topics import (
    AUDIT_EVENTS,
    DATA_TOPICS,
    FLEET_EVENTS,
    INFERENCE_REQUESTS,
    INFERENCE_RESPONSES,
    LIFECYCLE_EVENTS,
    Priority,
    TopicSpec,
)

pytestmark = pytest.mark.unit


def test_every_schema_has_a_row_and_every_row_a_schema() -> None:
    avro = {path.name for path in AVRO_DIR.iterdir() if path.is_dir()}
    json_views = {path.name for path in JSON_DIR.iterdir() if path.is_dir() and path.name != "seed"}
    assert avro == json_views == set(MessageType) == set(MESSAGES)
    assert set(default_schemas().message_types()) == set(MessageType)


@pytest.mark.parametrize("message_type", list(MessageType))
def test_every_row_names_declared_topics(message_type: MessageType) -> None:
    route = MESSAGES[message_type]
    assert route.topics and set(route.topics) <= set(DATA_TOPICS)


@pytest.mark.parametrize("message_type", list(MessageType))
def test_every_row_keys_by_a_field_of_its_schema(message_type: MessageType) -> None:
    route = MESSAGES[message_type]
    fields = default_schemas().get(message_type).field_names
    assert route.key_field in fields and (route.partition_field is None or route.partition_field in fields)
    record = {**new_envelope(service="t", instance="t"), **sample(message_type)}
    assert route.key_for(record) == str(record[route.key_field])
    Codec().encode(message_type, record)  # the sample is a valid record of the type


def test_inference_requests_go_to_their_priority_and_replies_to_their_partition() -> None:
    route = MESSAGES[MessageType.INFERENCE_REQUEST]
    assert set(route.topics) == set(INFERENCE_REQUESTS.values())
    for priority in Priority:
        assert route.topic_for({"priority": priority.value}) is INFERENCE_REQUESTS[priority]
    reply = MESSAGES[MessageType.INFERENCE_RESPONSE]
    assert reply.topic_for({}) is INFERENCE_RESPONSES
    assert reply.partition_for({"reply_partition": 4}) == 4
    assert reply.partition_for({"reply_partition": None}) is None  # async job results: by key
    assert route.partition_for({"reply_partition": 4}) is None  # a request's reply_partition is for its reply


def test_a_record_without_its_key_is_refused() -> None:
    route = MessageRoute(DATA_TOPICS[0], "device_id")
    with pytest.raises(ValueError, match="device_id"):
        route.key_for({"device_id": ""})


def test_groups_read_the_topics_the_table_routes_to() -> None:
    # Every topic a group consumes carries at least one declared message type.
    routed = {topic for route in MESSAGES.values() for topic in route.topics}
    assert {topic for group in GROUPS for topic in group.inputs} <= routed



def test_seed_topics_carry_only_the_seeds_messages() -> None:
    # Seed 001 §4.1/§4.2: each seed topic has one schema, so one message type; fleet events have their own.
    carried: dict[TopicSpec, set[MessageType]] = {}
    for message_type, route in MESSAGES.items():
        for topic in route.topics:
            carried.setdefault(topic, set()).add(message_type)
    for topic in INFERENCE_REQUESTS.values():
        assert carried[topic] == {MessageType.INFERENCE_REQUEST}
    assert carried[INFERENCE_RESPONSES] == {MessageType.INFERENCE_RESPONSE}
    assert carried[LIFECYCLE_EVENTS] == {MessageType.LIFECYCLE_EVENT}
    assert carried[AUDIT_EVENTS] == {MessageType.AUDIT_EVENT}
    assert carried[FLEET_EVENTS] == {MessageType.FLEET_EVENT}
    assert FLEET_EVENTS.name == "tributary.fleet.events"
    assert all(FLEET_EVENTS not in group.inputs for group in GROUPS)  # for other services, like lifecycle events
