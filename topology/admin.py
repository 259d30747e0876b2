"""Apply and verify the declared topology against a real cluster (idempotently).

``apply`` creates missing topics and raises partition counts that are too low; it reports,
without touching, what it must not fix by itself (too many partitions, a different
replication factor), and partition counts the broker refuses to raise (Tansu 0.6 has no
CreatePartitions). Config drift is checked where the broker answers DescribeConfigs and
fixed with IncrementalAlterConfigs where it accepts them; a broker that answers neither
(Tansu 0.6 does not keep topic configs) gets one "not checkable" note, not a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from core.settings import Settings
from topology.groups import all_topics
from topology.topics import TopicSpec

TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Drift:
    topic: str
    kind: str  # missing | partitions_low | partitions_high | replication | config | unverifiable
    expected: str
    actual: str

    def row(self) -> dict[str, Any]:
        return {"topic": self.topic, "drift": self.kind, "expected": self.expected, "actual": self.actual}


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    partitions_raised: list[str] = field(default_factory=list)
    configs_altered: list[str] = field(default_factory=list)
    unfixable: list[Drift] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.partitions_raised or self.configs_altered)

    def rows(self) -> list[dict[str, Any]]:
        rows = [{"topic": t, "action": "created", "detail": ""} for t in self.created]
        rows += [{"topic": t, "action": "partitions raised", "detail": ""} for t in self.partitions_raised]
        rows += [{"topic": t, "action": "configs altered", "detail": ""} for t in self.configs_altered]
        rows += [{"topic": d.topic, "action": f"UNFIXABLE {d.kind}", "detail": f"want {d.expected}, have {d.actual}"}
                 for d in self.unfixable]
        rows += [{"topic": "-", "action": "note", "detail": n} for n in self.notes]
        return rows


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})


@dataclass(frozen=True)
class _Actual:
    partitions: int
    replication: int


def _describe(admin: AdminClient) -> dict[str, _Actual]:
    metadata = admin.list_topics(timeout=TIMEOUT_S)
    actual = {}
    for name, topic in metadata.topics.items():
        if topic.error is not None:
            continue
        replicas = [len(p.replicas) for p in topic.partitions.values()] or [0]
        actual[name] = _Actual(len(topic.partitions), min(replicas))
    return actual


def _config_drift(admin: AdminClient, settings: Settings, specs: list[TopicSpec]) -> tuple[list[Drift], str | None]:
    """Config differences per topic, or a note when the broker cannot describe configs."""
    resources = [ConfigResource(ConfigResource.Type.TOPIC, s.full_name(settings)) for s in specs]
    if not resources:
        return [], None
    drift = []
    try:
        futures = admin.describe_configs(resources, request_timeout=TIMEOUT_S)
        for spec, resource in zip(specs, resources, strict=True):
            entries = futures[resource].result()
            for key, want in spec.configs(settings).items():
                have = entries.get(key)
                if have is None or have.value is None:
                    return [], f"config drift not checkable on this broker ({key} not reported)"
                if have.value != want:
                    drift.append(Drift(spec.full_name(settings), "config", f"{key}={want}", f"{key}={have.value}"))
    except KafkaException as exc:
        return [], f"config drift not checkable on this broker: {exc.args[0]}"
    return drift, None


def verify(settings: Settings, admin: AdminClient | None = None) -> list[Drift]:
    """Every difference between the declaration and the cluster."""
    admin = admin or admin_client(settings)
    actual = _describe(admin)
    drift: list[Drift] = []
    present = []
    for spec in all_topics():
        name = spec.full_name(settings)
        have = actual.get(name)
        if have is None:
            drift.append(Drift(name, "missing", f"{spec.partitions} partitions", "absent"))
            continue
        present.append(spec)
        if have.partitions < spec.partitions:
            drift.append(Drift(name, "partitions_low", str(spec.partitions), str(have.partitions)))
        elif have.partitions > spec.partitions:
            drift.append(Drift(name, "partitions_high", str(spec.partitions), str(have.partitions)))
        if have.replication != spec.replication(settings):
            drift.append(Drift(name, "replication", str(spec.replication(settings)), str(have.replication)))
    config_drift, _note = _config_drift(admin, settings, present)
    return drift + config_drift


def apply(settings: Settings, admin: AdminClient | None = None) -> ApplyReport:
    """Make the cluster match the declaration as far as that is safe; report the rest."""
    admin = admin or admin_client(settings)
    report = ApplyReport()
    actual = _describe(admin)
    to_create, to_raise, present = [], [], []
    for spec in all_topics():
        name = spec.full_name(settings)
        have = actual.get(name)
        if have is None:
            to_create.append(NewTopic(name, num_partitions=spec.partitions,
                                      replication_factor=spec.replication(settings), config=spec.configs(settings)))
            continue
        present.append(spec)
        if have.partitions < spec.partitions:
            to_raise.append(NewPartitions(name, spec.partitions))
        elif have.partitions > spec.partitions:
            # Partitions can never be removed; keys would move if we recreated the topic.
            report.unfixable.append(Drift(name, "partitions_high", str(spec.partitions), str(have.partitions)))
        if have.replication != spec.replication(settings):
            report.unfixable.append(
                Drift(name, "replication", str(spec.replication(settings)), str(have.replication)))
    for name, future in (admin.create_topics(to_create, request_timeout=TIMEOUT_S) if to_create else {}).items():
        try:
            future.result()
            report.created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != exc.args[0].TOPIC_ALREADY_EXISTS:  # a concurrent apply won the race
                raise
    wanted = {p.topic: p.new_total_count for p in to_raise}
    for name, future in (admin.create_partitions(to_raise, request_timeout=TIMEOUT_S) if to_raise else {}).items():
        try:
            future.result()
            report.partitions_raised.append(name)
        except KafkaException as exc:
            # Tansu 0.6 has no CreatePartitions (KIP-195): say so rather than fail the whole apply.
            report.unfixable.append(Drift(name, "partitions_low", str(wanted[name]),
                                          f"{actual[name].partitions} ({exc.args[0].str()})"))
    config_drift, note = _config_drift(admin, settings, present)
    if note:
        report.notes.append(note)
    for drift in config_drift:
        if _alter_config(admin, drift):
            report.configs_altered.append(drift.topic)
        else:
            report.unfixable.append(drift)
    return report


def _alter_config(admin: AdminClient, drift: Drift) -> bool:
    key, value = drift.expected.split("=", 1)
    resource = ConfigResource(ConfigResource.Type.TOPIC, drift.topic, incremental_configs=[
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)])
    try:
        admin.incremental_alter_configs([resource], request_timeout=TIMEOUT_S)[resource].result()
        return True
    except KafkaException:
        return False
