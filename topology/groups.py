"""Consumer groups: who reads what, where its dead letters go, how far it can scale.

The group id on the wire is ``group.full_id(settings)`` (the topic prefix applied), so test
sessions and environments sharing a cluster never join each other's groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from settings import Settings
from topology.topics import (
    DATA_TOPICS,
    DEVICE_HEARTBEATS,
    INFERENCE_REQUESTS,
    INFERENCE_RESPONSES,
    LEARNING_GRAPHS,
    MODEL_DOWNLOADS,
    ROLLOUTS,
    TRAINING_JOBS,
    TRAINING_UPDATES,
    Priority,
    TopicSpec,
    dead_letter_topic,
)


class Group(StrEnum):
    """Every consumer group id (without the environment prefix).

    Each one is a process that runs (``cli.services.MEMBER_ARGS``: its ``tributary`` subcommand), and
    its inputs are exactly the topics that process subscribes to (tests/unit/test_group_processes.py
    reads them from the code): a declared group nobody runs shows as lag that only grows and as a
    group without members in detailed health. Topics nobody reads as a group are not consumed here: job events,
    lifecycle events and fleet events are for other services, model commands are a broadcast every inference
    worker ``assign()``s without a group, and the audit topic is replayed by time
    (``tributary audit replay``), not by a group.
    """

    INFERENCE_HIGH = "inference-workers-high"
    INFERENCE_MEDIUM = "inference-workers-medium"
    INFERENCE_LOW = "inference-workers-low"
    DEVICE_PROCESSOR = "device-processor"
    ROUND_PROCESSOR = "round-processor"
    LEARNING_GRAPH_PROCESSOR = "learning-graph-processor"
    MODEL_DOWNLOAD_PROCESSOR = "model-download-processor"
    ROLLOUT_PROCESSOR = "rollout-processor"
    INGRESS_REPLIES = "ingress-replies"
    TRAINERS = "trainers"

    @classmethod
    def inference(cls, priority: Priority) -> Group:
        return cls(f"inference-workers-{priority.value}")


@dataclass(frozen=True)
class ConsumerGroupSpec:
    group_id: str
    inputs: tuple[TopicSpec, ...]  # topics consumed
    purpose: str

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError(f"group {self.group_id} consumes nothing")

    @property
    def dead_letters(self) -> TopicSpec:
        return dead_letter_topic(self.group_id)

    @property
    def max_replicas(self) -> int:
        """More members than the smallest input's partitions would sit idle."""
        return min(t.partitions for t in self.inputs)

    def full_id(self, settings: Settings) -> str:
        return settings.prefixed(self.group_id)

    def input_names(self, settings: Settings) -> list[str]:
        return [t.full_name(settings) for t in self.inputs]


def inference_group(priority: Priority) -> ConsumerGroupSpec:
    return ConsumerGroupSpec(Group.inference(priority).value, (INFERENCE_REQUESTS[priority],),
                             f"inference workers for {priority.value}-priority requests")


GROUPS: tuple[ConsumerGroupSpec, ...] = (
    *(inference_group(p) for p in Priority),
    ConsumerGroupSpec(Group.DEVICE_PROCESSOR.value, (DEVICE_HEARTBEATS,),
                      "applies heartbeats, tracks device freshness"),
    # Round commands are answered by the ingress itself (the active-round CAS); the processor
    # reads only the updates, and closes rounds on a timer.
    ConsumerGroupSpec(Group.ROUND_PROCESSOR.value, (TRAINING_UPDATES,),
                      "update counting, FedAvg aggregation, round closing"),
    ConsumerGroupSpec(Group.LEARNING_GRAPH_PROCESSOR.value, (LEARNING_GRAPHS,),
                      "retraining requests (seed 002) start a training round"),
    ConsumerGroupSpec(Group.MODEL_DOWNLOAD_PROCESSOR.value, (MODEL_DOWNLOADS,),
                      "fetches registry models from their source_url, checks and stores them"),
    ConsumerGroupSpec(Group.TRAINERS.value, (TRAINING_JOBS,),
                      "trainers: run LoRA training jobs, one at a time per member"),
    ConsumerGroupSpec(Group.ROLLOUT_PROCESSOR.value, (ROLLOUTS,),
                      "rollout commands and telemetry; a timer judges stage gates"),
    ConsumerGroupSpec(Group.INGRESS_REPLIES.value, (INFERENCE_RESPONSES,),
                      "ingress replicas awaiting synchronous inference replies"),
)
BY_GROUP: dict[str, ConsumerGroupSpec] = {g.group_id: g for g in GROUPS}


def group_spec(group_id: str) -> ConsumerGroupSpec:
    try:
        return BY_GROUP[group_id]
    except KeyError:
        raise KeyError(f"unknown consumer group {group_id!r}; known: {sorted(BY_GROUP)}") from None


def dlq_for(group: ConsumerGroupSpec | str) -> TopicSpec:
    """The dead-letter topic of a declared group (by spec or id)."""
    spec = group if isinstance(group, ConsumerGroupSpec) else group_spec(group)
    return spec.dead_letters


def all_topics() -> tuple[TopicSpec, ...]:
    """Data topics and one dead-letter topic per group: everything ``apply`` creates."""
    return (*DATA_TOPICS, *(g.dead_letters for g in GROUPS))
