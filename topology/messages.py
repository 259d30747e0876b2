"""Every message type, declared once: its schema, the topic it travels on and the field that keys it.

Publishers name only the type (``EventSink.publish(MessageType.X, record)``): the sink looks up
the topic and the key here. Consumers compare what they decoded with ``MessageType``. A new
message type is therefore its schema files (``schemas/avro/<type>/v1.avsc`` and
``schemas/json/<type>/v1.schema.json``) plus one member and one row below;
``tests/unit/test_messages.py`` fails until both exist and the row's topic is declared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from topology.topics import (
    AUDIT_EVENTS,
    DEVICE_EVENTS,
    DEVICE_HEARTBEATS,
    FLEET_EVENTS,
    INFERENCE_REQUESTS,
    INFERENCE_RESPONSES,
    JOB_EVENTS,
    KEY_EVENTS,
    LEARNING_GRAPHS,
    LIFECYCLE_EVENTS,
    MODEL_COMMANDS,
    MODEL_DOWNLOADS,
    ROLLOUTS,
    TRAINING_JOBS,
    TRAINING_ROUNDS,
    TRAINING_UPDATES,
    Priority,
    TopicSpec,
)


class MessageType(StrEnum):
    """Every message type; the value names its schema directory (``schemas/avro/<value>/``)."""

    INFERENCE_REQUEST = "inference_request"
    INFERENCE_RESPONSE = "inference_response"
    JOB_EVENT = "job_event"
    MODEL_COMMAND = "model_command"
    MODEL_DOWNLOAD_REQUESTED = "model_download_requested"
    LIFECYCLE_EVENT = "lifecycle_event"  # seed 001 §4.2.3's model events only
    FLEET_EVENT = "fleet_event"  # every other catalog, device, round, update or retraining event
    AUDIT_EVENT = "audit_event"
    DEVICE_REGISTERED = "device_registered"
    DEVICE_HEARTBEAT = "device_heartbeat"
    ROUND_COMMAND = "round_command"
    ROUND_EVENT = "round_event"
    MODEL_UPDATE_SUBMITTED = "model_update_submitted"
    LEARNING_GRAPH_SUBMITTED = "learning_graph_submitted"
    KEY_EVENT = "key_event"  # an API key stopped working: every ingress replica forgets it
    TRAINING_JOB_REQUESTED = "training_job_requested"  # a LoRA training job for the trainers
    ROLLOUT_COMMAND = "rollout_command"  # pause, resume, advance or roll back a rollout
    DEVICE_TELEMETRY = "device_telemetry"  # a device's per-model inference counts and latencies


@dataclass(frozen=True)
class MessageRoute:
    """Where one message type goes and what keys it (all messages of one subject share a partition)."""

    topic: TopicSpec | Mapping[Priority, TopicSpec]  # a mapping: one topic per the record's ``priority``
    key_field: str  # the record field whose value is the Kafka key
    partition_field: str | None = None  # a record field naming the partition; unset or null: by key

    @property
    def topics(self) -> tuple[TopicSpec, ...]:
        return (self.topic,) if isinstance(self.topic, TopicSpec) else tuple(self.topic.values())

    def topic_for(self, record: Mapping[str, Any]) -> TopicSpec:
        if isinstance(self.topic, TopicSpec):
            return self.topic
        return self.topic[Priority(record["priority"])]

    def key_for(self, record: Mapping[str, Any]) -> str:
        value = record.get(self.key_field)
        if not value:
            raise ValueError(f"the record has no {self.key_field} to key by")
        return str(value)

    def partition_for(self, record: Mapping[str, Any]) -> int | None:
        if self.partition_field is None:
            return None
        value = record.get(self.partition_field)
        return None if value is None else int(value)


MESSAGES: dict[MessageType, MessageRoute] = {
    MessageType.INFERENCE_REQUEST: MessageRoute(INFERENCE_REQUESTS, "message_id"),  # the request id
    # A sync reply goes to the partition its ingress replica reads (reply_partition); async ones by key.
    MessageType.INFERENCE_RESPONSE: MessageRoute(INFERENCE_RESPONSES, "correlation_id", "reply_partition"),
    MessageType.JOB_EVENT: MessageRoute(JOB_EVENTS, "job_id"),
    MessageType.MODEL_COMMAND: MessageRoute(MODEL_COMMANDS, "model_id"),
    MessageType.MODEL_DOWNLOAD_REQUESTED: MessageRoute(MODEL_DOWNLOADS, "model_id"),
    MessageType.LIFECYCLE_EVENT: MessageRoute(LIFECYCLE_EVENTS, "model_id"),
    MessageType.FLEET_EVENT: MessageRoute(FLEET_EVENTS, "subject_id"),
    MessageType.AUDIT_EVENT: MessageRoute(AUDIT_EVENTS, "chain_id"),
    MessageType.DEVICE_REGISTERED: MessageRoute(DEVICE_EVENTS, "device_id"),
    MessageType.DEVICE_HEARTBEAT: MessageRoute(DEVICE_HEARTBEATS, "device_id"),
    MessageType.ROUND_COMMAND: MessageRoute(TRAINING_ROUNDS, "round_id"),
    MessageType.ROUND_EVENT: MessageRoute(TRAINING_ROUNDS, "round_id"),
    MessageType.MODEL_UPDATE_SUBMITTED: MessageRoute(TRAINING_UPDATES, "round_id"),
    MessageType.LEARNING_GRAPH_SUBMITTED: MessageRoute(LEARNING_GRAPHS, "device_id_hash"),
    MessageType.KEY_EVENT: MessageRoute(KEY_EVENTS, "key_id"),
    MessageType.TRAINING_JOB_REQUESTED: MessageRoute(TRAINING_JOBS, "job_id"),
    MessageType.ROLLOUT_COMMAND: MessageRoute(ROLLOUTS, "rollout_id"),
    MessageType.DEVICE_TELEMETRY: MessageRoute(ROLLOUTS, "device_id"),
}
