"""Apply and verify the declared topology against a real cluster, idempotently.

``apply`` creates missing topics (with ``retention.ms``, ``cleanup.policy`` and
``min.insync.replicas``), raises partition counts that are too low, sets configs that differ,
and reports (never hides) every drift it cannot or must not fix: too many partitions (they can
never be removed and keys would move), a different replication factor (needs a reassignment),
partition raises or config changes the broker refuses. Applying twice changes nothing.
``verify`` / ``inspect`` only read; the CLI exits non-zero on any drift.

Apache Kafka validates what it is asked (partition counts, config values, replication against
the live brokers) and DescribeConfigs answers every config of a topic, defaults included, so a
declared key that differs is drift whether it was set at creation or never set at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from settings import Settings
from topology.groups import all_topics
from topology.topics import TopicSpec

TIMEOUT_S = 15.0
READ_BACK_S = 5.0
NOT_CHECKABLE = "config drift not checkable on this broker"


class DriftKind(StrEnum):
    MISSING = "missing"
    PARTITIONS_LOW = "partitions_low"
    PARTITIONS_HIGH = "partitions_high"
    REPLICATION = "replication"
    CONFIG = "config"


@dataclass(frozen=True)
class Drift:
    """One difference between the declaration and the cluster; plain fields for a table row."""

    topic: str
    kind: str  # a DriftKind value
    expected: str
    actual: str
    detail: str = ""  # why apply could not fix it, when it could not

    def row(self) -> dict[str, str]:
        return {"topic": self.topic, "drift": str(self.kind), "expected": self.expected, "actual": self.actual,
                "detail": self.detail}


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

    def rows(self) -> list[dict[str, str]]:
        rows = [{"topic": t, "action": "created", "detail": ""} for t in self.created]
        rows += [{"topic": t, "action": "partitions raised", "detail": ""} for t in self.partitions_raised]
        rows += [{"topic": t, "action": "configs altered", "detail": ""} for t in self.configs_altered]
        rows += [{"topic": d.topic, "action": f"UNFIXABLE {d.kind}",
                  "detail": f"want {d.expected}, have {d.actual}" + (f" ({d.detail})" if d.detail else "")}
                 for d in self.unfixable]
        rows += [{"topic": "-", "action": "note", "detail": n} for n in self.notes]
        return rows


@dataclass(frozen=True)
class Inspection:
    drift: list[Drift]
    notes: list[str]  # e.g. NOT_CHECKABLE: shown to the operator, not drift

    @property
    def config_checkable(self) -> bool:
        return not any(n.startswith(NOT_CHECKABLE) for n in self.notes)


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})


@dataclass(frozen=True)
class _Actual:
    partitions: int
    replication: int


def _error(exc: KafkaException) -> KafkaError:
    error: KafkaError = exc.args[0]
    return error


def _describe(admin: AdminClient) -> dict[str, _Actual]:
    metadata = admin.list_topics(timeout=TIMEOUT_S)
    actual = {}
    for name, topic in metadata.topics.items():
        if topic.error is not None and topic.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            continue
        replicas = [len(p.replicas) for p in topic.partitions.values()] or [0]
        actual[name] = _Actual(len(topic.partitions), min(replicas))
    return actual


def _structural_drift(settings: Settings, spec: TopicSpec, have: _Actual) -> list[Drift]:
    name = spec.full_name(settings)
    drift = []
    if have.partitions < spec.partitions:
        drift.append(Drift(name, DriftKind.PARTITIONS_LOW, str(spec.partitions), str(have.partitions)))
    elif have.partitions > spec.partitions:
        drift.append(Drift(name, DriftKind.PARTITIONS_HIGH, str(spec.partitions), str(have.partitions)))
    if have.replication != spec.replication(settings):
        drift.append(Drift(name, DriftKind.REPLICATION, str(spec.replication(settings)), str(have.replication)))
    return drift


def _read_configs(admin: AdminClient, names: list[str]) -> tuple[dict[str, dict[str, str]], str | None]:
    """Topic configs by topic, or a note saying why the broker cannot tell us."""
    if not names:
        return {}, None
    resources = {name: ConfigResource(ConfigResource.Type.TOPIC, name) for name in names}
    out: dict[str, dict[str, str]] = {}
    futures = admin.describe_configs(list(resources.values()), request_timeout=TIMEOUT_S)
    for name, resource in resources.items():
        try:
            entries = futures[resource].result()
        except KafkaException as exc:
            if _error(exc).code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue  # deleted since it was listed: the next look reports it missing
            return {}, f"{NOT_CHECKABLE}: {_error(exc).str()}"
        out[name] = {key: entry.value for key, entry in entries.items() if entry.value is not None}
    return out, None


def _normal(key: str, value: str) -> str:
    if key == "cleanup.policy":  # "delete,compact" == "compact,delete"
        return ",".join(sorted(v.strip() for v in value.split(",")))
    return value.strip()


def _config_drift(settings: Settings, specs: Iterable[TopicSpec], configs: dict[str, dict[str, str]]) -> list[Drift]:
    drift = []
    for spec in specs:
        name = spec.full_name(settings)
        if name not in configs:
            continue
        have = configs[name]
        for key, want in spec.configs(settings).items():
            value = have.get(key)
            if value is None:
                drift.append(Drift(name, DriftKind.CONFIG, f"{key}={want}", f"{key} unset"))
            elif _normal(key, value) != _normal(key, want):
                drift.append(Drift(name, DriftKind.CONFIG, f"{key}={want}", f"{key}={value}"))
    return drift


def inspect(settings: Settings, admin: AdminClient | None = None) -> Inspection:
    """Drift plus notes on what could not be checked."""
    admin = admin or admin_client(settings)
    actual = _describe(admin)
    drift: list[Drift] = []
    present = []
    for spec in all_topics():
        name = spec.full_name(settings)
        have = actual.get(name)
        if have is None:
            drift.append(Drift(name, DriftKind.MISSING, f"{spec.partitions} partitions", "absent"))
            continue
        present.append(spec)
        drift += _structural_drift(settings, spec, have)
    configs, note = _read_configs(admin, [s.full_name(settings) for s in present])
    drift += _config_drift(settings, present, configs)
    return Inspection(drift, [note] if note else [])


def verify(settings: Settings, admin: AdminClient | None = None) -> list[Drift]:
    """Every difference between the declaration and the cluster; empty means in sync."""
    return inspect(settings, admin).drift


def apply(settings: Settings, admin: AdminClient | None = None) -> ApplyReport:
    """Make the cluster match the declaration as far as that is safe; report the rest."""
    admin = admin or admin_client(settings)
    report = ApplyReport()
    actual = _describe(admin)
    specs = {spec.full_name(settings): spec for spec in all_topics()}
    to_create, to_raise = _plan(settings, specs, actual, report)
    _create(admin, to_create, specs, report)
    _raise_partitions(admin, to_raise, specs, actual, report)
    _await_metadata(admin, {name: specs[name].partitions for name in report.created + report.partitions_raised})
    # Configs last, over every topic that exists now (new ones included: they must read back).
    existing = [spec for name, spec in specs.items() if name in actual or name in report.created]
    _align_configs(settings, admin, existing, report)
    return report


def _plan(settings: Settings, specs: dict[str, TopicSpec], actual: dict[str, _Actual],
          report: ApplyReport) -> tuple[list[NewTopic], list[NewPartitions]]:
    """Topics to create and partition counts to raise; structural drift apply must not fix goes to the report."""
    to_create: list[NewTopic] = []
    to_raise: list[NewPartitions] = []
    for name, spec in specs.items():
        have = actual.get(name)
        if have is None:
            to_create.append(NewTopic(name, num_partitions=spec.partitions,
                                      replication_factor=spec.replication(settings), config=spec.configs(settings)))
            continue
        for drift in _structural_drift(settings, spec, have):
            if drift.kind == DriftKind.PARTITIONS_LOW:
                to_raise.append(NewPartitions(name, spec.partitions))
            elif drift.kind == DriftKind.PARTITIONS_HIGH:
                report.unfixable.append(_with(drift, "partitions can never be removed"))
            else:
                report.unfixable.append(_with(drift, "needs a partition reassignment"))
    return to_create, to_raise


def _create(admin: AdminClient, to_create: list[NewTopic], specs: dict[str, TopicSpec], report: ApplyReport) -> None:
    if not to_create:
        return
    futures = admin.create_topics(to_create, request_timeout=TIMEOUT_S, operation_timeout=TIMEOUT_S)
    for name, future in futures.items():
        try:
            future.result()
            report.created.append(name)
        except KafkaException as exc:
            if _error(exc).code() != KafkaError.TOPIC_ALREADY_EXISTS:  # else a concurrent apply won
                report.unfixable.append(Drift(name, DriftKind.MISSING, f"{specs[name].partitions} partitions",
                                              "absent", f"create refused: {_error(exc).str()}"))


def _raise_partitions(admin: AdminClient, to_raise: list[NewPartitions], specs: dict[str, TopicSpec],
                      actual: dict[str, _Actual], report: ApplyReport) -> None:
    if not to_raise:
        return
    futures = admin.create_partitions(to_raise, request_timeout=TIMEOUT_S, operation_timeout=TIMEOUT_S)
    for name, future in futures.items():
        spec = specs[name]
        try:
            future.result()
            report.partitions_raised.append(name)
        except KafkaException as exc:
            refused = f"partitions not raised: {_error(exc).str()}"
            report.unfixable.append(Drift(name, DriftKind.PARTITIONS_LOW, str(spec.partitions),
                                          str(actual[name].partitions), refused))


def _align_configs(settings: Settings, admin: AdminClient, existing: list[TopicSpec], report: ApplyReport) -> None:
    """Set the configs that differ, read them back, and report what the broker refused or still shows."""
    configs, note = _read_configs(admin, [s.full_name(settings) for s in existing])
    if note:
        report.notes.append(note)
    specs = {spec.full_name(settings): spec for spec in existing}
    wanted: dict[str, list[Drift]] = {}
    for drift in _config_drift(settings, existing, configs):
        wanted.setdefault(drift.topic, []).append(drift)
    refused_by = _alter_each(admin, wanted)
    after = _read_back(settings, admin, [specs[name] for name in wanted if name not in refused_by])
    for name, drifts in wanted.items():
        if name in refused_by:
            left = drifts
        elif name in after:
            left = _config_drift(settings, [specs[name]], {name: after[name]})
        else:  # the broker cannot show them: trust its answer to the alter
            left = []
        if not left:
            report.configs_altered.append(name)
        for drift in left:
            report.unfixable.append(_with(drift, refused_by.get(name, "broker accepted the change but still "
                                                                      "reports the old value")))


def _alter_each(admin: AdminClient, wanted: dict[str, list[Drift]]) -> dict[str, str]:
    """Alter each topic's drifting configs; returns why the broker refused, by topic."""
    refused_by: dict[str, str] = {}
    for name, drifts in wanted.items():
        reason = _alter_configs(admin, name, dict(d.expected.split("=", 1) for d in drifts))
        if reason is not None:
            refused_by[name] = reason
    return refused_by


def _await_metadata(admin: AdminClient, partitions: dict[str, int]) -> None:
    """Return once metadata shows these topics with these partition counts (bounded). The controller
    answers CreateTopics/CreatePartitions when it has committed them; brokers learn of them from
    the metadata log a moment later, and a client that subscribes or describes in between is told
    the topic does not exist. Waiting here makes "apply returned" mean "usable"."""
    deadline = time.monotonic() + READ_BACK_S
    while partitions and time.monotonic() < deadline:
        actual = _describe(admin)
        if all(name in actual and actual[name].partitions >= count for name, count in partitions.items()):
            return
        time.sleep(0.05)


def _read_back(settings: Settings, admin: AdminClient, specs: list[TopicSpec]) -> dict[str, dict[str, str]]:
    """Configs after an accepted alter. The controller commits the change before answering, and
    the broker that DescribeConfigs asks applies it from the metadata log a moment later: give it
    a few seconds to show the new values before calling what is left drift."""
    names = [spec.full_name(settings) for spec in specs]
    deadline = time.monotonic() + READ_BACK_S
    while True:
        after, _ = _read_configs(admin, names)
        if not _config_drift(settings, specs, after) or time.monotonic() > deadline:
            return after
        time.sleep(0.1)


def _with(drift: Drift, detail: str) -> Drift:
    return Drift(drift.topic, drift.kind, drift.expected, drift.actual, detail)


def _alter_configs(admin: AdminClient, name: str, want: dict[str, str]) -> str | None:
    """Set the wanted configs (leaving the others alone); None on success, else why the broker refused."""
    entries = [ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET) for key, value in want.items()]
    resource = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=entries)
    try:
        admin.incremental_alter_configs([resource], request_timeout=TIMEOUT_S)[resource].result()
        return None
    except KafkaException as exc:
        return f"alter refused: {_error(exc).str()}"
