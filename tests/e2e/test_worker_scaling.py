"""Scale a worker group from 1 to 3 processes under load and back to 1: no request lost, lag drained.

A steady stream of requests is produced to the medium-priority topic with a reply partition
that this test reads. Two extra members join the group (eager rebalance: the running member
finishes and commits what it holds before its partitions move), run for a while, then leave
with SIGTERM (they finish in-flight work, commit and leave the group). Every request must be
answered, none twice, and the group's lag must reach zero.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from cli.services import GROUP_COMMANDS
from cli.supervisor import ServiceSpec, Supervisor
from schemas.codec import Codec
from tests.e2e.conftest import RunningSystem, settings_env
from tests.e2e.serving import RequestProducer
from topology.groups import inference_group
from topology.lag import log_end, topic_lag
from topology.topics import INFERENCE_RESPONSES, Priority

pytestmark = pytest.mark.e2e

RATE_PER_S = 15
REPLY_PARTITION = 5
GROUP = inference_group(Priority.MEDIUM).group_id


class Load:
    """Produces requests at a fixed rate until stopped; remembers every correlation id sent."""

    def __init__(self, system: RunningSystem) -> None:
        self.settings = system.settings
        self.sent: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        load = RequestProducer(self.settings, Priority.MEDIUM)
        i = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.sent.append(load.send(f"scaling {i}", reply_partition=REPLY_PARTITION))
            i += 1
            next_at += 1.0 / RATE_PER_S
            time.sleep(max(0.0, next_at - time.monotonic()))
        load.flush()


def group_lag(system: RunningSystem) -> int:
    return sum(row.lag for row in topic_lag(system.settings, GROUP))


def test_scale_out_to_three_and_back_loses_nothing(system: RunningSystem) -> None:
    settings = system.settings
    responses = INFERENCE_RESPONSES.full_name(settings)
    reader = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                       "group.id": f"e2e-scaling-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
                       "fetch.wait.max.ms": settings.fetch_max_wait_ms})
    _, start_offset = log_end(reader, TopicPartition(responses, REPLY_PARTITION))
    reader.assign([TopicPartition(responses, REPLY_PARTITION, start_offset)])

    extra = Supervisor([ServiceSpec(f"medium-extra-{n}", GROUP_COMMANDS[GROUP], settings_env(settings))
                        for n in (1, 2)], system.log_dir / "scaling", stop_timeout_s=30, progress=lambda _: None)
    load = Load(system)
    load.thread.start()
    started = time.monotonic()
    try:
        time.sleep(5)
        extra.start()  # 1 -> 3
        time.sleep(12)
        stop_started = time.monotonic()
        extra.stop()  # 3 -> 1, gracefully
        stop_s = time.monotonic() - stop_started
        codes = {name: run.proc.returncode for name, run in extra.running.items()}
        time.sleep(6)
    finally:
        load.stop.set()
        load.thread.join(60)
        load_s = time.monotonic() - started
        if any(run.proc.poll() is None for run in extra.running.values()):
            extra.stop()

    sent = set(load.sent)
    replies: dict[str, int] = {}
    codec = Codec()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not sent <= replies.keys():
        message = reader.poll(0.5)
        if message is None or message.error() is not None:
            continue
        correlation_id = codec.decode(message.value()).record["correlation_id"]
        if correlation_id in sent:
            replies[correlation_id] = replies.get(correlation_id, 0) + 1
    while (message := reader.poll(2.0)) is not None:  # anything still arriving would be a duplicate
        if message.error() is None:
            correlation_id = codec.decode(message.value()).record["correlation_id"]
            if correlation_id in sent:
                replies[correlation_id] = replies.get(correlation_id, 0) + 1
    reader.close()
    drain_deadline = time.monotonic() + 60
    while group_lag(system) > 0 and time.monotonic() < drain_deadline:
        time.sleep(0.5)
    duplicates = sum(count - 1 for count in replies.values())
    print(f"\nscaling: {len(sent)} requests at {RATE_PER_S}/s over {load_s:.0f}s; scale-in took {stop_s:.1f}s "
          f"(exit codes {codes}); {len(sent & replies.keys())} answered, {duplicates} duplicate replies")
    assert all(code == 0 for code in codes.values()), codes  # left gracefully, not killed
    assert sent - replies.keys() == set(), f"{len(sent - replies.keys())} requests never answered"
    assert duplicates == 0  # graceful rebalances commit what they answered before partitions move
    assert group_lag(system) == 0
