"""Every Kafka topic, declared once. Nothing else in the code base spells a topic name.

``SPEC.full_name(settings)`` is the one way to get a topic's name on the wire:
``settings.topic_prefix`` is prepended to every name so several environments (and test sessions)
can share one cluster. Which message type travels on which topic is ``topology.messages``.

Names and seed 001 §4.1 (the only seed that names topics):

============================================  ===========================================
seed 001 §4.1                                 declared here
============================================  ===========================================
``modelmora.inference.requests``              ``modelmora.inference.requests.high``,
                                              ``modelmora.inference.requests.medium``,
                                              ``modelmora.inference.requests.low``: one topic
                                              per priority, so each priority has its own
                                              consumer group and scales (and lags) alone
``modelmora.inference.responses``             same name
``modelmora.lifecycle.events``                same name, seed 001 §4.2.3's five model
                                              events only
``modelmora.audit.events``                    same name
(not in the seeds)                            ``tributary.*``: jobs, model commands, devices,
                                              training rounds and updates, learning graphs,
                                              LoRA training jobs, rollout commands and device telemetry,
                                              fleet events (catalog, device, round, update
                                              and retraining events: the lifecycle topic's
                                              schema refuses them), and
                                              ``tributary.dlq.<group id>``
============================================  ===========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from settings import Settings

DAY_MS = 24 * 60 * 60 * 1000
CLEANUP_POLICIES = frozenset({"delete", "compact", "compact,delete"})


class Priority(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass(frozen=True)
class TopicSpec:
    name: str  # without the environment prefix
    partitions: int
    retention_ms: int  # -1: keep forever
    purpose: str  # one line, shown by the CLI
    cleanup_policy: str = "delete"
    replication_factor: int | None = None  # None: settings.default_replication_factor
    min_insync_replicas: int | None = None  # None: settings.default_min_insync_replicas

    def __post_init__(self) -> None:
        # Fail at import, not at `topology apply` against a live cluster.
        if self.partitions < 1:
            raise ValueError(f"{self.name}: partitions must be >= 1")
        if self.retention_ms < -1 or self.retention_ms == 0:
            raise ValueError(f"{self.name}: retention_ms must be -1 (forever) or positive")
        if self.cleanup_policy not in CLEANUP_POLICIES:
            raise ValueError(f"{self.name}: cleanup_policy must be one of {sorted(CLEANUP_POLICIES)}")
        for value in (self.replication_factor, self.min_insync_replicas):
            if value is not None and value < 1:
                raise ValueError(f"{self.name}: replication settings must be >= 1")

    def full_name(self, settings: Settings) -> str:
        """The name on the wire (environment prefix applied)."""
        return settings.prefixed(self.name)

    def replication(self, settings: Settings) -> int:
        return self.replication_factor or settings.default_replication_factor

    def min_isr(self, settings: Settings) -> int:
        return self.min_insync_replicas or settings.default_min_insync_replicas

    def configs(self, settings: Settings) -> dict[str, str]:
        """The topic configs apply sets and verify checks."""
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
            "min.insync.replicas": str(self.min_isr(settings)),
        }


def _spec(name: str, partitions: int, retention_days: int, purpose: str) -> TopicSpec:
    return TopicSpec(name, partitions, retention_days * DAY_MS, purpose)


# Requests and heartbeats carry the volume, so they get the most partitions (= most consumers).
INFERENCE_REQUESTS: dict[Priority, TopicSpec] = {
    p: _spec(f"modelmora.inference.requests.{p.value}", 6, 1,
             f"inference requests of priority {p.value}, keyed by request id")
    for p in Priority
}
# 6, not 3: each ingress replica owns reply partitions, so this bounds the ingress replicas.
INFERENCE_RESPONSES = _spec("modelmora.inference.responses", 6, 1,
                            "inference results, routed to the waiting ingress replica's partition")
LIFECYCLE_EVENTS = _spec("modelmora.lifecycle.events", 3, 30,
                         "model load/unload lifecycle (seed 001's five event types), for other services")
AUDIT_EVENTS = _spec("modelmora.audit.events", 3, 365, "tamper-evident audit trail that auditors replay")
JOB_EVENTS = _spec("tributary.jobs.events", 3, 7, "async job state changes, keyed by job id")
MODEL_COMMANDS = _spec("tributary.models.commands", 3, 7, "model load/unload commands, keyed by model id")
MODEL_DOWNLOADS = _spec("tributary.models.downloads", 3, 7,
                        "requests to fetch a registry model from its source_url, keyed by model id")
DEVICE_EVENTS = _spec("tributary.devices.events", 3, 30, "device registrations and changes, keyed by device id")
DEVICE_HEARTBEATS = _spec("tributary.devices.heartbeats", 6, 1, "device heartbeats with metrics, keyed by device id")
TRAINING_ROUNDS = _spec("tributary.training.rounds", 3, 30, "training round commands and events, keyed by round id")
TRAINING_UPDATES = _spec("tributary.training.updates", 3, 30,
                         "submitted model updates (claim checks to S3), keyed by round id")
LEARNING_GRAPHS = _spec("tributary.learning.graphs", 3, 30, "accepted learning graphs and retraining requests")
FLEET_EVENTS = _spec("tributary.fleet.events", 3, 30,
                     "catalog, device, round, update and retraining events, keyed by subject, for other services")
# Few partitions: a training job holds its partition for minutes to hours (its offset is committed only when
# the job ends), so this bounds the trainers that run at once.
TRAINING_JOBS = _spec("tributary.training.jobs", 3, 7,
                      "LoRA training jobs (seed 003) to run, keyed by job id; committed when the job ends")
# One topic for the rollouts processor's input (a processor reads one topic): operators' rollout
# commands, keyed by rollout id, and devices' inference telemetry, keyed by device id.
ROLLOUTS = _spec("tributary.rollouts", 6, 7,
                 "rollout commands (keyed by rollout id) and device telemetry (keyed by device id) that gate them")
# Compacted: the latest event per key is kept for good (a key never becomes valid again). One
# partition: revocations are rare, and one offset tells a revoker how far each replica has read.
KEY_EVENTS = TopicSpec("tributary.keys.events", 1, -1,
                       "API key revocations, keyed by key id, applied by every ingress replica's key cache",
                       cleanup_policy="compact")

DATA_TOPICS: tuple[TopicSpec, ...] = (
    *INFERENCE_REQUESTS.values(), INFERENCE_RESPONSES, LIFECYCLE_EVENTS, AUDIT_EVENTS, JOB_EVENTS,
    MODEL_COMMANDS, MODEL_DOWNLOADS, DEVICE_EVENTS, DEVICE_HEARTBEATS, TRAINING_ROUNDS, TRAINING_UPDATES,
    LEARNING_GRAPHS, FLEET_EVENTS, KEY_EVENTS, TRAINING_JOBS, ROLLOUTS,
)


def dead_letter_topic(group_id: str) -> TopicSpec:
    """The dead-letter topic of one consumer group (see ``topology.groups.dlq_for``)."""
    # One partition: dead letters are rare and read in order by an operator or a redrive.
    return TopicSpec(f"tributary.dlq.{group_id}", 1, 30 * DAY_MS, f"dead letters of consumer group {group_id}")
