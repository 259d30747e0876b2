"""Prometheus metrics of the ingress (served at /metrics)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter("tributary_http_requests_total", "HTTP requests by route and status",
                        ["method", "route", "status"])
HTTP_DURATION = Histogram("tributary_http_request_duration_seconds", "HTTP request duration by route",
                          ["method", "route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


GRPC_CALLS = Counter("tributary_grpc_calls_total", "gRPC calls by method and status code", ["method", "code"])
GRPC_DURATION = Histogram("tributary_grpc_call_duration_seconds", "gRPC call duration by method (streams: whole call)",
                          ["method"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
GRPC_STREAM_MESSAGES = Counter("tributary_grpc_stream_messages_total",
                               "InferStream answers by outcome (OK or the error code of that message)", ["code"])


@contextmanager
def grpc_call_metrics(method: str) -> Iterator[list[str]]:
    """Counts one call; the body sets ``outcome[0]`` to the status code name it ends with."""
    started = time.perf_counter()
    outcome = ["OK"]
    try:
        yield outcome
    except asyncio.CancelledError:
        outcome[0] = "CANCELLED"  # the client went away or its deadline passed
        raise
    finally:
        GRPC_CALLS.labels(method, outcome[0]).inc()
        GRPC_DURATION.labels(method).observe(time.perf_counter() - started)
