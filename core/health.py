"""Component health: each probe answers healthy / degraded / unhealthy with a short detail.

Transports render it: REST's /api/v1/health?detailed=true and /health/ready, gRPC's
ReadinessCheck and the standard ``grpc.health.v1`` service all read the same probes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ComponentHealth(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class ProbeResult:
    status: ComponentHealth
    latency_ms: float
    detail: str = ""


Probe = Callable[[], Any]  # blocking callable; raises or returns a detail string / ProbeResult


async def run_probe(probe: Probe, timeout_s: float = 3.0) -> ProbeResult:
    started = time.perf_counter()
    try:
        outcome = await asyncio.wait_for(asyncio.to_thread(probe), timeout_s)
    except TimeoutError:
        return ProbeResult(ComponentHealth.UNHEALTHY, timeout_s * 1000, f"no answer within {timeout_s:.0f}s")
    except Exception as exc:
        return ProbeResult(ComponentHealth.UNHEALTHY, (time.perf_counter() - started) * 1000,
                           f"{type(exc).__name__}: {str(exc)[:200]}")
    latency = (time.perf_counter() - started) * 1000
    if isinstance(outcome, ProbeResult):
        return outcome
    return ProbeResult(ComponentHealth.HEALTHY, latency, str(outcome or ""))


async def run_probes(probes: dict[str, Probe]) -> tuple[ComponentHealth, dict[str, ProbeResult]]:
    names = list(probes)
    results = await asyncio.gather(*(run_probe(probes[n]) for n in names))
    by_name = dict(zip(names, results, strict=True))
    statuses = {r.status for r in results}
    if ComponentHealth.UNHEALTHY in statuses:
        overall = ComponentHealth.UNHEALTHY
    elif ComponentHealth.DEGRADED in statuses:
        overall = ComponentHealth.DEGRADED
    else:
        overall = ComponentHealth.HEALTHY
    return overall, by_name


async def readiness(probes: dict[str, Probe]) -> dict[str, bool]:
    """Seed 001's readiness checks: ``database`` (Cassandra answers) and ``queue`` (the producer
    reaches the broker); a component without a probe (unit tests) counts as ready."""
    _, results = await run_probes({k: v for k, v in probes.items() if k in ("cassandra", "kafka")})
    healthy = {name: r.status is ComponentHealth.HEALTHY for name, r in results.items()}
    return {"database": healthy.get("cassandra", True), "queue": healthy.get("kafka", True)}


def degraded(detail: str) -> ProbeResult:
    return ProbeResult(ComponentHealth.DEGRADED, 0.0, detail)


WaitProbe = Callable[[], Awaitable[ProbeResult]]
