"""Every Kafka topic, declared once. Nothing else in the code base spells a topic name.

The four topics of seed 001 §4.1 keep their names (``modelmora.inference.requests`` is split
into one topic per priority so each priority has its own consumer group); fleet and
federated-learning topics live under ``tributary.``. ``settings.topic_prefix`` is prepended
to every name so several environments can share a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from core.settings import Settings

DAY_MS = 24 * 60 * 60 * 1000


class Priority(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass(frozen=True)
class TopicSpec:
    name: str  # without the environment prefix
    partitions: int
    retention_ms: int
    purpose: str
    cleanup_policy: str = "delete"
    replication_factor: int | None = None  # None: settings.default_replication_factor
    min_insync_replicas: int | None = None  # None: settings.default_min_insync_replicas

    def full_name(self, settings: Settings) -> str:
        return settings.topic(self.name)

    def replication(self, settings: Settings) -> int:
        return self.replication_factor or settings.default_replication_factor

    def min_isr(self, settings: Settings) -> int:
        return self.min_insync_replicas or settings.default_min_insync_replicas

    def configs(self, settings: Settings) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
            "min.insync.replicas": str(self.min_isr(settings)),
        }


def _requests(priority: Priority) -> TopicSpec:
    return TopicSpec(f"modelmora.inference.requests.{priority.value}", 6, 1 * DAY_MS,
                     f"inference requests of priority {priority.value}, keyed by request id")


INFERENCE_REQUESTS = {p: _requests(p) for p in Priority}
INFERENCE_RESPONSES = TopicSpec("modelmora.inference.responses", 6, 1 * DAY_MS,
                                "inference results, routed to the waiting ingress replica's partition")
LIFECYCLE_EVENTS = TopicSpec("modelmora.lifecycle.events", 3, 30 * DAY_MS,
                             "lifecycle of models, devices, rounds and jobs, for other services")
AUDIT_EVENTS = TopicSpec("modelmora.audit.events", 3, 365 * DAY_MS,
                         "tamper-evident audit trail that auditors replay")
JOB_EVENTS = TopicSpec("tributary.jobs.events", 3, 7 * DAY_MS, "async job state changes, keyed by job id")
MODEL_COMMANDS = TopicSpec("tributary.models.commands", 3, 7 * DAY_MS, "model load/unload, keyed by model id")
DEVICE_EVENTS = TopicSpec("tributary.devices.events", 3, 30 * DAY_MS, "device registrations, keyed by device id")
DEVICE_HEARTBEATS = TopicSpec("tributary.devices.heartbeats", 6, 1 * DAY_MS,
                              "device heartbeats with metrics, keyed by device id")
TRAINING_ROUNDS = TopicSpec("tributary.training.rounds", 3, 30 * DAY_MS,
                            "round commands and events, keyed by round id")
TRAINING_UPDATES = TopicSpec("tributary.training.updates", 3, 30 * DAY_MS,
                             "submitted model updates (claim checks to S3), keyed by round id")
LEARNING_GRAPHS = TopicSpec("tributary.learning.graphs", 3, 30 * DAY_MS,
                            "accepted learning graphs and retraining requests")


def dead_letter_topic(group_id: str) -> TopicSpec:
    return TopicSpec(f"tributary.dlq.{group_id}", 1, 30 * DAY_MS, f"dead letters of consumer group {group_id}")


DATA_TOPICS: tuple[TopicSpec, ...] = (
    *INFERENCE_REQUESTS.values(), INFERENCE_RESPONSES, LIFECYCLE_EVENTS, AUDIT_EVENTS, JOB_EVENTS,
    MODEL_COMMANDS, DEVICE_EVENTS, DEVICE_HEARTBEATS, TRAINING_ROUNDS, TRAINING_UPDATES, LEARNING_GRAPHS,
)
BY_NAME = {spec.name: spec for spec in DATA_TOPICS}
