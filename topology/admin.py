"""Apply and verify the declared topology against a real cluster, idempotently.

``apply`` creates missing topics (with ``retention.ms``, ``cleanup.policy`` and
``min.insync.replicas``), raises partition counts that are too low, sets configs that differ,
and reports (never hides) every drift it cannot or must not fix: too many partitions (they can
never be removed and keys would move), a different replication factor (needs a reassignment),
partition raises or config changes the broker refuses. Applying twice changes nothing.
``verify`` / ``inspect`` only read; the CLI exits non-zero on any drift.

What Tansu 0.6.0 (the local broker) supports, seen with confluent-kafka 2.16.1 on memory://:

- CreateTopics works (partitions, replication factor, configs); a second create answers
  TOPIC_ALREADY_EXISTS. It validates nothing: 0 partitions, ``cleanup.policy=nonsense`` and
  replication factor 3 on one broker are all accepted (metadata then lists the single broker
  three times as replicas and ISR). ``TopicSpec`` therefore validates itself, and the
  replication check compares the length of the replica list, which Tansu reports as asked.
- ``validate_only=True`` is ignored: the topic IS created. Never use it as a dry run.
- A metadata request naming a topic (``AdminClient.list_topics(topic=...)``) auto-creates it
  with 4 partitions, like a produce does. This module only lists all topics;
  DescribeTopics of a missing topic answers UNKNOWN_TOPIC_OR_PART without creating it, and
  ``Consumer.get_watermark_offsets`` answers _UNKNOWN_PARTITION without creating it.
- DescribeConfigs(topic) answers only the configs set explicitly (at creation or later), each
  flagged as a default; a topic created without configs and a topic that does not exist both
  answer ``{}``. So an unreported key counts as drift ("unset"), and when no present topic
  reports any config the broker keeps none: "config drift not checkable on this broker".
  DescribeConfigs(broker) answers nothing.
- IncrementalAlterConfigs is accepted for any key (``bogus.key``), any value
  (``min.insync.replicas=5`` at replication 1) and even a topic that does not exist (no error,
  nothing created). Success proves nothing, so ``apply`` reads the configs back.
- AlterConfigs (legacy, KIP-133): _UNSUPPORTED_FEATURE. Used only as a fallback for brokers
  without IncrementalAlterConfigs.
- CreatePartitions (KIP-195): _UNSUPPORTED_FEATURE. A partition count that is too low is
  reported; with ``apply(..., recreate_empty=True)`` a topic that never held a record is
  deleted and recreated with the declared count instead.
- DeleteTopics works at once: the name is free immediately, and a re-create with another
  partition count is seen by clients. Deleting a missing topic: UNKNOWN_TOPIC_OR_PART.
- ``retention.ms`` is stored but was not seen enforced (1000 ms, low watermark still 0 after
  8 s; inconclusive, since Apache Kafka also deletes only closed segments).
- DescribeCluster: cluster id ``tansu_cluster``, one node (id 111). ListConsumerGroups works.
- ListOffsets(latest) answers the base offset of the last batch + 1, not the last record's
  offset + 1 (see ``topology.lag.log_end``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
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
    recreated: list[str] = field(default_factory=list)  # empty topics re-made with more partitions
    configs_altered: list[str] = field(default_factory=list)
    unfixable: list[Drift] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.partitions_raised or self.recreated or self.configs_altered)

    def rows(self) -> list[dict[str, str]]:
        rows = [{"topic": t, "action": "created", "detail": ""} for t in self.created]
        rows += [{"topic": t, "action": "partitions raised", "detail": ""} for t in self.partitions_raised]
        rows += [{"topic": t, "action": "recreated", "detail": "was empty; partition count raised"}
                 for t in self.recreated]
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
    # All topics, never one by name: a metadata request naming a topic auto-creates it on Tansu.
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
    try:
        futures = admin.describe_configs(list(resources.values()), request_timeout=TIMEOUT_S)
        for name, resource in resources.items():
            entries = futures[resource].result()
            out[name] = {key: entry.value for key, entry in entries.items() if entry.value is not None}
    except KafkaException as exc:
        return {}, f"{NOT_CHECKABLE}: {_error(exc).str()}"
    if not any(out.values()):
        # Tansu answers only explicitly set configs; if no topic has any, it keeps none.
        return {}, f"{NOT_CHECKABLE} (it reports no topic configs)"
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


def apply(settings: Settings, admin: AdminClient | None = None, *, recreate_empty: bool = False) -> ApplyReport:
    """Make the cluster match the declaration as far as that is safe; report the rest.

    ``recreate_empty``: when the broker cannot add partitions (Tansu), delete and recreate a
    topic whose partitions are too few if it never held a record. Off by default: a producer
    writing between the check and the delete would lose that record.
    """
    admin = admin or admin_client(settings)
    report = ApplyReport()
    actual = _describe(admin)
    specs = {spec.full_name(settings): spec for spec in all_topics()}
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

    if to_create:
        futures = admin.create_topics(to_create, request_timeout=TIMEOUT_S, operation_timeout=TIMEOUT_S)
        for name, future in futures.items():
            try:
                future.result()
                report.created.append(name)
            except KafkaException as exc:
                if _error(exc).code() != KafkaError.TOPIC_ALREADY_EXISTS:  # else a concurrent apply won
                    report.unfixable.append(Drift(name, DriftKind.MISSING, f"{specs[name].partitions} partitions",
                                                  "absent", f"create refused: {_error(exc).str()}"))

    if to_raise:
        futures = admin.create_partitions(to_raise, request_timeout=TIMEOUT_S, operation_timeout=TIMEOUT_S)
        for name, future in futures.items():
            spec = specs[name]
            try:
                future.result()
                report.partitions_raised.append(name)
            except KafkaException as exc:
                refused = f"partitions not raised: {_error(exc).str()}"
                if recreate_empty and _never_written(settings, name, actual[name].partitions):
                    reason = _recreate(admin, settings, spec)
                    if reason is None:
                        report.recreated.append(name)
                        continue
                    refused += f"; recreate failed: {reason}"
                elif recreate_empty:
                    refused += "; not recreated: it holds records"
                report.unfixable.append(Drift(name, DriftKind.PARTITIONS_LOW, str(spec.partitions),
                                              str(actual[name].partitions), refused))

    # Configs last, over every topic that exists now (new ones included: they must read back).
    existing = [spec for name, spec in specs.items() if name in actual or name in report.created]
    configs, note = _read_configs(admin, [s.full_name(settings) for s in existing])
    if note:
        report.notes.append(note)
    wanted: dict[str, list[Drift]] = {}
    for drift in _config_drift(settings, existing, configs):
        wanted.setdefault(drift.topic, []).append(drift)
    refused_by: dict[str, str] = {}
    for name, drifts in wanted.items():
        want = dict(d.expected.split("=", 1) for d in drifts)
        reason = _alter_configs(admin, name, want, specs[name].configs(settings))
        if reason is not None:
            refused_by[name] = reason
    # Read back: Tansu accepts any alter, even one it does not apply.
    after, _ = _read_configs(admin, list(wanted)) if wanted else ({}, None)
    for name, drifts in wanted.items():
        if name in after:
            left = _config_drift(settings, [specs[name]], {name: after[name]})
        else:  # the broker cannot show them: trust its answer to the alter
            left = drifts if name in refused_by else []
        if not left:
            report.configs_altered.append(name)
        for drift in left:
            report.unfixable.append(_with(drift, refused_by.get(name, "broker accepted the change but still "
                                                                      "reports the old value")))
    return report


def _with(drift: Drift, detail: str) -> Drift:
    return Drift(drift.topic, drift.kind, drift.expected, drift.actual, detail)


def _alter_configs(admin: AdminClient, name: str, want: dict[str, str], full: dict[str, str]) -> str | None:
    """Set the wanted configs; None on success, else why the broker refused."""
    entries = [ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET) for key, value in want.items()]
    resource = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=entries)
    try:
        admin.incremental_alter_configs([resource], request_timeout=TIMEOUT_S)[resource].result()
        return None
    except KafkaException as exc:
        if _error(exc).code() != KafkaError._UNSUPPORTED_FEATURE:
            return f"alter refused: {_error(exc).str()}"
    # Brokers before 2.3 only have AlterConfigs, which replaces the whole set: send all we declare.
    legacy = ConfigResource(ConfigResource.Type.TOPIC, name, set_config=full)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            admin.alter_configs([legacy], request_timeout=TIMEOUT_S)[legacy].result()
        return None
    except KafkaException as exc:
        return f"alter refused: {_error(exc).str()}"


def _never_written(settings: Settings, name: str, partitions: int) -> bool:
    """True when no partition ever held a record (high watermark 0 everywhere)."""
    reader = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "tributary-topology",
                       "enable.auto.commit": False})
    try:
        for partition in range(partitions):
            _low, high = reader.get_watermark_offsets(TopicPartition(name, partition), timeout=TIMEOUT_S)
            if high > 0:
                return False
        return True
    except KafkaException:
        return False  # cannot tell: keep the data
    finally:
        reader.close()


def _recreate(admin: AdminClient, settings: Settings, spec: TopicSpec) -> str | None:
    """Delete and create again with the declared shape; None on success, else the reason."""
    name = spec.full_name(settings)
    try:
        admin.delete_topics([name], request_timeout=TIMEOUT_S, operation_timeout=TIMEOUT_S)[name].result()
    except KafkaException as exc:
        return f"delete refused: {_error(exc).str()}"
    new = NewTopic(name, num_partitions=spec.partitions, replication_factor=spec.replication(settings),
                   config=spec.configs(settings))
    deadline = time.monotonic() + 2 * TIMEOUT_S
    while True:
        try:
            admin.create_topics([new], request_timeout=TIMEOUT_S, operation_timeout=TIMEOUT_S)[name].result()
            return None
        except KafkaException as exc:
            # Apache Kafka deletes asynchronously: the name stays taken for a moment.
            if _error(exc).code() != KafkaError.TOPIC_ALREADY_EXISTS or time.monotonic() > deadline:
                return f"create refused: {_error(exc).str()}"
            time.sleep(0.5)
