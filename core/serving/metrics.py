"""Prometheus metrics of model serving, recorded where the work happens.

Ingress (served at the API's /metrics): requests by model, priority and outcome, end-to-end
duration, the worker-reported inference time and batch size of each reply, and the queue depth
per priority (consumer lag of each priority's worker group, read at scrape time).

Workers (served on ``TRIBUTARY_WORKER_METRICS_PORT`` when set): batches by size, inference time
per batch, requests by outcome and model cache evictions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

# --- ingress ---------------------------------------------------------------------------------
INFERENCE_REQUESTS = Counter("tributary_inference_requests_total",
                             "Sync inference requests by model, priority and outcome (success or error code)",
                             ["model", "priority", "outcome"])
INFERENCE_E2E = Histogram("tributary_inference_e2e_duration_seconds",
                          "Sync inference at the ingress: validated request to rendered reply",
                          ["model", "priority"], buckets=LATENCY_BUCKETS)
REPLY_INFERENCE = Histogram("tributary_inference_model_duration_seconds",
                            "Model time of the batch that answered a request, as the worker reported it",
                            ["model"], buckets=LATENCY_BUCKETS)
REPLY_BATCH = Histogram("tributary_inference_reply_batch_size", "Size of the batch that answered a request",
                        ["model"], buckets=BATCH_BUCKETS)

# seed 001 §2.8's names and labels, beside ours, so a dashboard built from the seed works as is
SEED_REQUESTS = Counter("modelmora_requests_total", "Total inference requests", ["model_id", "status"])
SEED_DURATION = Histogram("modelmora_inference_duration_seconds", "Inference duration", ["model_id"],
                          buckets=LATENCY_BUCKETS)

# --- workers ---------------------------------------------------------------------------------
WORKER_BATCHES = Histogram("tributary_worker_batch_size", "Batches run by this worker, by size",
                           ["model"], buckets=BATCH_BUCKETS)
WORKER_BATCH_TIME = Histogram("tributary_worker_batch_duration_seconds", "Model time per batch",
                              ["model"], buckets=LATENCY_BUCKETS)
WORKER_REQUESTS = Counter("tributary_worker_requests_total", "Requests answered by this worker, by outcome",
                          ["model", "outcome"])
MODEL_EVENTS = Counter("tributary_worker_model_events_total",
                       "Model cache events (model_loaded, model_evicted, model_unloaded, model_load_failed...)",
                       ["event"])


def observe_reply(model_id: str, priority: str, outcome: str, seconds: float, metadata: dict[str, Any]) -> None:
    INFERENCE_REQUESTS.labels(model_id, priority, outcome).inc()
    INFERENCE_E2E.labels(model_id, priority).observe(seconds)
    SEED_REQUESTS.labels(model_id, "success" if outcome == "success" else "error").inc()
    SEED_DURATION.labels(model_id).observe(seconds)
    inference_ms = metadata.get("inference_time_ms")
    if isinstance(inference_ms, int | float):
        REPLY_INFERENCE.labels(model_id).observe(inference_ms / 1000.0)
    batch = metadata.get("batch_size")
    if isinstance(batch, int):
        REPLY_BATCH.labels(model_id).observe(batch)


def observe_batch(observation: Any) -> None:
    """``DynamicBatcher`` hook (a ``BatchObservation``)."""
    WORKER_BATCHES.labels(observation.model_id).observe(observation.size)
    WORKER_BATCH_TIME.labels(observation.model_id).observe(observation.infer_s)


class QueueDepthCollector(Collector):
    """``tributary_inference_queue_depth{priority}`` (and seed 001's ``modelmora_queue_depth``): requests
    waiting per priority, read at scrape time."""

    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("tributary_inference_queue_depth",
                                   "Requests waiting per priority (consumer lag of its worker group)",
                                   labels=["priority"])
        try:
            depths = self.read()
        except Exception as exc:  # a scrape must not fail because the broker is slow
            log.warning("queue depth unavailable: %s", exc)
            depths = {}
        seed = GaugeMetricFamily("modelmora_queue_depth", "Current queue depth", labels=["priority"])
        for name, depth in depths.items():
            family.add_metric([name.removesuffix("_priority")], depth)
            seed.add_metric([name.removesuffix("_priority")], depth)
        yield family
        yield seed


def register_queue_depth(read: Callable[[], dict[str, int]]) -> Callable[[], None]:
    """Register the collector; returns its unregister (one ingress app per process, but tests build many)."""
    collector = QueueDepthCollector(read)
    REGISTRY.register(collector)
    return lambda: REGISTRY.unregister(collector)
