"""Bounded heartbeat load: REST -> Kafka -> device processor -> Cassandra at a fixed rate, zero loss.

    python -m bench.load_heartbeats [--rate 100] [--seconds 60] [--devices 200] [--json]

Needs the local stack (`tributary up`). Starts its own ingress and device processor under a fresh
topic prefix and keyspace, registers ``--devices`` devices, then sends heartbeats open-loop at
``--rate`` per second for ``--seconds`` (loopback only; it stops by itself). Reports the
sustained accepted rate, ingress latency (p50/p99), the processor's lag when the load stops and
how long it takes to drain, and checks for loss three ways: every 2xx heartbeat is in the
heartbeats topic (message count), the processor committed to the log end, and each device row
holds the timestamp of its last accepted heartbeat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from confluent_kafka import Consumer, TopicPartition

from bench.bench_inference_inprocess import percentile
from bench.environment import isolated_settings
from cli.services import system_services
from cli.supervisor import Supervisor
from core.cassandra.session import connect
from core.fleet.cassandra_store import CassandraFleetStore
from settings import Settings
from tests.e2e.conftest import settings_env, wait_http
from topology.lag import log_end, topic_lag
from topology.topics import DEVICE_HEARTBEATS


async def register(client: aiohttp.ClientSession, url: str, count: int) -> list[tuple[str, str]]:
    devices = []
    for i in range(count):
        device_id = f"load-{i:05d}-{uuid.uuid4().hex[:4]}"
        async with client.post(f"{url}/api/v1/devices/register", json={"device_id": device_id}) as response:
            response.raise_for_status()
            devices.append((device_id, (await response.json())["api_key"]))
    return devices


async def drive(client: aiohttp.ClientSession, url: str, devices: list[tuple[str, str]], rate: float,
                seconds: float) -> dict[str, Any]:
    """Open loop: request i is sent at start + i/rate whatever the answers do (aiohttp: the
    generator must not be the bottleneck; httpx's async client saturated near 40 req/s here)."""
    latencies: list[float] = []
    codes: dict[int, int] = {}
    last_accepted: dict[str, str] = {}
    total = int(rate * seconds)
    started = time.monotonic()

    async def one(index: int) -> None:
        device_id, key = devices[index % len(devices)]
        sent = time.perf_counter()
        stamp = None
        try:
            async with client.put(f"{url}/api/v1/devices/{device_id}/heartbeat",
                                  json={"status": "active", "metrics": {"seq": index}},
                                  headers={"Authorization": f"Bearer {key}"}) as response:
                status = response.status
                if 200 <= status < 300:
                    stamp = (await response.json())["last_heartbeat"]
                else:
                    await response.read()
        except aiohttp.ClientError:
            status = 0
        latencies.append((time.perf_counter() - sent) * 1000.0)
        codes[status] = codes.get(status, 0) + 1
        if stamp is not None and stamp > last_accepted.get(device_id, ""):
            last_accepted[device_id] = stamp

    tasks = []
    for index in range(total):
        delay = started + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    accepted = sum(n for code, n in codes.items() if 200 <= code < 300)
    return {"tried": total, "accepted": accepted, "codes": codes, "elapsed_s": elapsed,
            "sustained_per_s": accepted / elapsed, "p50_ms": statistics.median(latencies),
            "p99_ms": percentile(latencies, 0.99), "last_accepted": last_accepted}


def topic_messages(settings: Settings) -> int:
    reader = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "load-count"})
    try:
        topic = DEVICE_HEARTBEATS.full_name(settings)
        return sum(log_end(reader, TopicPartition(topic, p))[1] for p in range(DEVICE_HEARTBEATS.partitions))
    finally:
        reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0, help="heartbeats per second, all devices together")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--log-dir", type=Path, default=Path(".local/logs/load-heartbeats"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    settings = isolated_settings("load")
    session = connect(settings, settings.cassandra_keyspace)  # to check the stored rows at the end
    services = [s for s in system_services(settings, settings_env(settings)) if s.name in ("api", "device-processor")]
    supervisor = Supervisor(services, args.log_dir, stop_timeout_s=20, progress=lambda _: None)
    supervisor.start()
    url = f"http://127.0.0.1:{settings.api_port}"
    try:
        wait_http(f"{url}/api/v1/health", timeout_s=120)

        async def run() -> dict[str, Any]:
            connector = aiohttp.TCPConnector(limit=64)
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
                devices = await register(client, url, args.devices)
                return await drive(client, url, devices, args.rate, args.seconds)

        report = asyncio.run(run())
        lag_at_stop = sum(row.lag for row in topic_lag(settings, "device-processor"))
        drain_started = time.monotonic()
        while sum(row.lag for row in topic_lag(settings, "device-processor")) > 0:
            if time.monotonic() - drain_started > 300:
                break
            time.sleep(0.5)
        drain_s = time.monotonic() - drain_started
        lag_after = sum(row.lag for row in topic_lag(settings, "device-processor"))
        in_topic = topic_messages(settings)
        store = CassandraFleetStore(session)
        last_accepted: dict[str, str] = report.pop("last_accepted")
        stale = []
        for device_id, stamp in last_accepted.items():
            device = store.get_device(device_id)
            accepted_at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            if device is None or device.last_heartbeat is None or device.last_heartbeat < accepted_at:
                stale.append(device_id)
    finally:
        supervisor.stop()
        session.cluster.shutdown()
    report.update({"rate": args.rate, "devices": args.devices, "heartbeats_in_topic": in_topic,
                   "processor_lag_at_stop": lag_at_stop, "drain_s": drain_s, "processor_lag_after": lag_after,
                   "devices_missing_their_last_heartbeat": len(stale)})
    lost = report["accepted"] - in_topic
    report["lost"] = max(0, lost) + len(stale) + lag_after
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return
    print(f"heartbeats: {report['tried']} tried at {args.rate:g}/s over {args.devices} devices in "
          f"{report['elapsed_s']:.1f}s; {report['accepted']} accepted ({report['codes']})")
    print(f"sustained {report['sustained_per_s']:.1f}/s; ingress p50 {report['p50_ms']:.1f} ms, "
          f"p99 {report['p99_ms']:.1f} ms")
    print(f"in the heartbeats topic: {in_topic}; processor lag when the load stopped: {lag_at_stop}, "
          f"drained in {drain_s:.1f}s (lag now {lag_after})")
    print(f"devices whose row misses their last accepted heartbeat: {len(stale)}; lost: {report['lost']}")


if __name__ == "__main__":
    main()
