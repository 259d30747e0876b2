"""Consumer groups: who reads what, where its dead letters go, how far it can scale."""

from __future__ import annotations

from dataclasses import dataclass

from topology.topics import (
    AUDIT_EVENTS,
    DATA_TOPICS,
    DEVICE_HEARTBEATS,
    INFERENCE_REQUESTS,
    INFERENCE_RESPONSES,
    JOB_EVENTS,
    LEARNING_GRAPHS,
    MODEL_COMMANDS,
    TRAINING_ROUNDS,
    TRAINING_UPDATES,
    Priority,
    TopicSpec,
    dead_letter_topic,
)


@dataclass(frozen=True)
class ConsumerGroupSpec:
    group_id: str
    inputs: tuple[TopicSpec, ...]
    purpose: str

    @property
    def dead_letters(self) -> TopicSpec:
        return dead_letter_topic(self.group_id)

    @property
    def max_replicas(self) -> int:
        """More members than the smallest input's partitions would sit idle."""
        return min(t.partitions for t in self.inputs)


def inference_group(priority: Priority) -> ConsumerGroupSpec:
    return ConsumerGroupSpec(f"inference-workers-{priority.value}", (INFERENCE_REQUESTS[priority],),
                             f"inference workers for {priority.value}-priority requests")


GROUPS: tuple[ConsumerGroupSpec, ...] = (
    *(inference_group(p) for p in Priority),
    ConsumerGroupSpec("device-processor", (DEVICE_HEARTBEATS,), "applies heartbeats, tracks freshness"),
    ConsumerGroupSpec("round-processor", (TRAINING_UPDATES, TRAINING_ROUNDS), "counts updates, FedAvg"),
    ConsumerGroupSpec("job-processor", (JOB_EVENTS,), "async job state in Cassandra"),
    ConsumerGroupSpec("model-processor", (MODEL_COMMANDS,), "model load/unload bookkeeping"),
    ConsumerGroupSpec("learning-graph-processor", (LEARNING_GRAPHS,), "retraining requests"),
    ConsumerGroupSpec("audit-sink", (AUDIT_EVENTS,), "audit archive and verification"),
    ConsumerGroupSpec("ingress-replies", (INFERENCE_RESPONSES,), "ingress replicas awaiting sync replies"),
)
BY_GROUP = {g.group_id: g for g in GROUPS}


def all_topics() -> tuple[TopicSpec, ...]:
    """Data topics and one dead-letter topic per group."""
    return (*DATA_TOPICS, *(g.dead_letters for g in GROUPS))
