"""The state processors by name, as ``tributary processor NAME`` runs them.

Each one is one faust app, that is one consumer group, reading one topic. Kept free of faust and
of the domain so the CLI can list the names (and ``--help``) without importing them.
"""

from __future__ import annotations

from dataclasses import dataclass

from topology.groups import BY_GROUP, ConsumerGroupSpec, Group
from topology.topics import DEVICE_HEARTBEATS, LEARNING_GRAPHS, MODEL_DOWNLOADS, ROLLOUTS, TRAINING_UPDATES, TopicSpec


@dataclass(frozen=True)
class ProcessorKind:
    name: str  # the CLI argument
    group: ConsumerGroupSpec
    topic: TopicSpec  # what its agent subscribes to
    summary: str  # one line for --help


PROCESSORS: dict[str, ProcessorKind] = {kind.name: kind for kind in (
    ProcessorKind("devices", BY_GROUP[Group.DEVICE_PROCESSOR], DEVICE_HEARTBEATS,
                  "heartbeats -> device rows; a timer re-derives freshness (fleet events)"),
    ProcessorKind("rounds", BY_GROUP[Group.ROUND_PROCESSOR], TRAINING_UPDATES,
                  "model updates -> counters and streaming FedAvg; a timer closes rounds"),
    ProcessorKind("learning-graphs", BY_GROUP[Group.LEARNING_GRAPH_PROCESSOR], LEARNING_GRAPHS,
                  "retraining requests (seed 002) -> a training round, or an event saying why not"),
    ProcessorKind("model-downloads", BY_GROUP[Group.MODEL_DOWNLOAD_PROCESSOR], MODEL_DOWNLOADS,
                  "registry download requests -> fetch source_url, check the artifact, store a version"),
    ProcessorKind("rollouts", BY_GROUP[Group.ROLLOUT_PROCESSOR], ROLLOUTS,
                  "rollout commands and device telemetry -> rollout state; a timer judges stage gates"),
)}
