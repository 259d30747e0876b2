"""Serving metrics: what the ingress and the workers record, and the queue depth collector."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, generate_latest

from consumers.inference.batching import BatchObservation
from core.auth import Principal
from core.fleet.models import SubjectType
from core.serving.metrics import QueueDepthCollector, observe_batch, register_queue_depth
from core.serving.service import InferenceService
from messaging.reply_consumer import ReplyTable
from settings import Settings
from tests.unit.test_reply_consumer import MINILM, MODELS, FakeSink

pytestmark = pytest.mark.unit
CALLER = Principal("key-1", SubjectType.OPERATOR, "operator")


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


async def test_a_sync_reply_counts_by_model_priority_and_outcome() -> None:
    table = ReplyTable()
    table.assigned([0])
    service = InferenceService(Settings(), FakeSink(table), table, models=MODELS)
    before = sample("tributary_inference_requests_total", model=MINILM, priority="high", outcome="success")
    batches = sample("tributary_inference_reply_batch_size_count", model=MINILM)
    await service.infer(CALLER, MINILM, {"text": "hi"}, priority="high")
    assert sample("tributary_inference_requests_total", model=MINILM, priority="high", outcome="success") == before + 1
    assert sample("tributary_inference_reply_batch_size_count", model=MINILM) == batches + 1
    assert sample("tributary_inference_e2e_duration_seconds_count", model=MINILM, priority="high") >= 1


def test_worker_batches_are_observed_by_size() -> None:
    before = sample("tributary_worker_batch_size_sum", model="m")
    observe_batch(BatchObservation("m", 6, 0.001, 0.01, False, 0, 0))
    assert sample("tributary_worker_batch_size_sum", model="m") == before + 6


def test_queue_depth_is_read_at_scrape_time_and_a_failure_does_not_break_the_scrape() -> None:
    depths = {"high_priority": 3, "medium_priority": 0, "low_priority": 41}
    unregister = register_queue_depth(lambda: depths)
    try:
        text = generate_latest(REGISTRY).decode()
        assert 'tributary_inference_queue_depth{priority="low"} 41.0' in text
        assert 'modelmora_queue_depth{priority="low"} 41.0' in text  # seed 001's name, same figure
        depths["low_priority"] = 2
        assert sample("tributary_inference_queue_depth", priority="low") == 2
    finally:
        unregister()
    assert sample("tributary_inference_queue_depth", priority="low") == 0  # gone with the app

    def broken() -> dict[str, int]:
        raise ConnectionError("broker down")

    assert [list(family.samples) for family in QueueDepthCollector(broken).collect()] == [[], []]
