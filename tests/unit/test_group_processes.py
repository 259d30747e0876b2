"""No phantom consumer groups: every declared group has a process (a `tributary` subcommand), and
declares as inputs exactly the topics that process subscribes to.

The subscriptions are read from the processes' own code, not from a second list: the faust app
each processor builds (``build`` + ``make_app``, with stand-ins for Cassandra, S3 and Kafka),
the inference worker's subscribe list, and the ingress's reply router.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cli.services import GROUP_ARGS, MEMBER_ARGS, system_services
from consumers.inference.worker import InferenceWorker
from consumers.processors import fleet
from consumers.processors.kinds import PROCESSORS
from core.artifacts import MemoryArtifactStore
from core.fleet.memory_store import InMemoryFleetStore
from core.rollouts.memory_store import InMemoryRolloutStore
from messaging.dead_letter import DeadLetterRouter
from messaging.reply_consumer import ReplyConsumer
from settings import Settings
from tests.recording_sink import RecordingSink
from topology.groups import BY_GROUP, GROUPS, Group
from topology.topics import Priority

pytestmark = pytest.mark.unit


class FakePublisher:
    def close(self, timeout_s: float = 10.0) -> None:
        pass


class FakeSession:
    class cluster:  # the driver names it so
        @staticmethod
        def shutdown() -> None:
            pass


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(topic_prefix="env.", data_dir=tmp_path)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fleet.build`` without servers: what it connects to becomes in-memory stand-ins."""
    monkeypatch.setattr(fleet, "connect", lambda *_: FakeSession())
    monkeypatch.setattr(fleet, "CassandraFleetStore", lambda _: InMemoryFleetStore())
    monkeypatch.setattr(fleet, "Publisher", lambda *_, **__: FakePublisher())
    monkeypatch.setattr(fleet, "KafkaEventSink", lambda *_, **__: RecordingSink())
    monkeypatch.setattr(fleet, "S3ArtifactStore", lambda _: MemoryArtifactStore())
    monkeypatch.setattr(fleet, "CassandraRolloutStore", lambda _: InMemoryRolloutStore())


def processor_subscription(name: str, settings: Settings) -> tuple[str, set[str], set[str]]:
    """(group id on the wire, topics, message types handled) of ``tributary processor NAME``."""
    spec = fleet.build(name, settings)
    router = DeadLetterRouter(settings, FakePublisher(), spec.group_id)  # type: ignore[arg-type]
    app = fleet.make_app(spec, settings, router)
    topics = {topic for agent in app.agents.values() for topic in agent.channel.topics}
    assert not app.tables, "a table would add a changelog topic to the group"
    return str(app.conf.id), topics, set(spec.handlers)


def subscription(args: tuple[str, ...], settings: Settings) -> tuple[str | None, set[str]]:
    """(group id on the wire if the code names it without starting, topics) of ``tributary ARGS``."""
    command = args[0]
    if command == "api":
        router = ReplyConsumer(settings)
        return router.group_id, set(router.subscriptions)
    if command == "worker":
        assert args[1] == "--priority"
        return None, set(InferenceWorker.subscriptions(settings, Priority(args[2])))
    if command == "processor":
        group_id, topics, _ = processor_subscription(args[1], settings)
        return group_id, topics
    raise AssertionError(f"no subscription reader for `tributary {' '.join(args)}`")


def test_every_declared_group_has_a_process_and_nothing_else_has_one() -> None:
    assert set(MEMBER_ARGS) == set(BY_GROUP)
    assert set(GROUP_ARGS) == set(BY_GROUP) - {Group.INGRESS_REPLIES.value}
    started = {tuple(spec.argv[3:]) for spec in system_services(Settings())}
    assert set(MEMBER_ARGS.values()) <= started  # `tributary run` starts a member of every group


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.group_id)
def test_a_group_declares_exactly_what_its_process_subscribes_to(group: Any, settings: Settings) -> None:
    group_id, topics = subscription(MEMBER_ARGS[group.group_id], settings)
    assert topics == set(group.input_names(settings))
    if group_id is not None:
        assert group_id == group.full_id(settings)


@pytest.mark.usefixtures("offline")
def test_each_processor_handles_a_message_type_and_reads_one_topic(settings: Settings) -> None:
    for name in PROCESSORS:
        _, topics, handled = processor_subscription(name, settings)
        assert len(topics) == 1 and handled, name


def test_the_inference_worker_group_is_its_priority(settings: Settings) -> None:
    # The worker names its group in __init__ from the priority: one group per priority topic.
    for priority in Priority:
        group = BY_GROUP[Group.inference(priority).value]
        assert InferenceWorker.subscriptions(settings, priority) == group.input_names(settings)
        assert MEMBER_ARGS[group.group_id] == ("worker", "--priority", priority.value)
