"""Open-loop heartbeat load: REST -> Kafka -> device processor -> Cassandra at a fixed rate, zero loss.

    python -m bench.load_heartbeats [--rate 1000 | --closed N] [--seconds 60] [--devices 2000] [--api-workers N]
                                    [--profile DIR] [--json]

Needs the local stack (`tributary up`). Starts its own ingress and device processor under a fresh
topic prefix and keyspace (with a rate limit no bench reaches, so registering thousands of devices
from one address is allowed), registers ``--devices`` devices over REST, then sends heartbeats
open-loop at ``--rate`` per second for ``--seconds``: request i is sent at start + i/rate whatever the
answers do, round-robin over the devices. It stops by itself and reports, all computed:

- offered vs accepted: the rate the generator actually sent at (it reports how late it fell behind
  its own schedule, so a generator that cannot keep up shows as such) and the rate of 2xx answers;
- ingress latency p50/p99 of every request (an error or a timeout counts at the time it took);
- the device processor's lag sampled every ``--lag-every`` seconds during and after the load, its
  peak, its value when the load stopped and the time from then until it was 0 (drained);
- lost = accepted heartbeats missing from the heartbeats topic + devices whose row in Cassandra does
  not hold the timestamp of their last accepted heartbeat + lag left once the drain gave up. A device
  row keeps only its latest heartbeat (an older one is superseded, by design), so "applied" is
  checked per device: its row must hold the newest heartbeat the ingress accepted for it.

``--profile DIR`` runs ``py-spy record`` on the ingress (with its worker processes) and on the
device processor for the load's duration and writes their collapsed stacks there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.bench_inference_inprocess import percentile
from bench.environment import isolated_settings, py_spy
from bench.rawhttp import HttpProtocolError, RawHttpPool
from cli.services import system_services
from cli.supervisor import Supervisor
from core.cassandra.session import connect
from core.fleet.cassandra_store import CassandraFleetStore
from producers.events import KafkaEventSink
from producers.publisher import Publisher
from schemas.clock import utcnow
from settings import Settings
from tests.e2e.conftest import settings_env, wait_http
from topology.groups import group_spec
from topology.lag import group_lag, log_end
from topology.messages import MessageType
from topology.topics import DEVICE_HEARTBEATS


async def register(client: RawHttpPool, count: int, concurrency: int = 1) -> list[tuple[str, str]]:
    """``count`` devices over REST, ``concurrency`` registrations in flight at a time."""
    gate = asyncio.Semaphore(concurrency)
    run = uuid.uuid4().hex[:4]

    async def one(i: int) -> tuple[str, str]:
        device_id = f"load-{run}-{i:06d}"
        async with gate:
            answer = await client.send(client.format("POST", "/api/v1/devices/register",
                                                     orjson.dumps({"device_id": device_id})))
        if answer.status != 201:
            raise RuntimeError(f"registering {device_id}: {answer.status} {answer.body[:200]!r}")
        return device_id, orjson.loads(answer.body)["api_key"]

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def heartbeat_request(client: RawHttpPool, device_id: str, key: str, body: dict[str, Any]) -> bytes:
    return client.format("PUT", f"/api/v1/devices/{device_id}/heartbeat", orjson.dumps(body),
                         {"Authorization": f"Bearer {key}"})


async def warm_up(client: RawHttpPool, devices: list[tuple[str, str]], concurrency: int) -> None:
    """One heartbeat per device, so the measured load is a fleet already online: a device's first
    heartbeat is a freshness change (a compare-and-set, a fleet event and an audit record in the
    processor), which a fleet pays once, not at every beat."""
    gate = asyncio.Semaphore(concurrency)

    async def one(device_id: str, key: str) -> None:
        async with gate:
            answer = await client.send(heartbeat_request(client, device_id, key, {"status": "active"}))
        if answer.status != 200:
            raise RuntimeError(f"warm-up heartbeat of {device_id}: {answer.status} {answer.body[:200]!r}")

    await asyncio.gather(*(one(device_id, key) for device_id, key in devices))


async def drive(client: RawHttpPool, devices: list[tuple[str, str]], rate: float,
                seconds: float, closed: int = 0) -> dict[str, Any]:
    """Open loop: request i is sent at start + i/rate whatever the answers do. How late each send was
    against that schedule is recorded: it is the generator's own capacity showing."""
    latencies: list[float] = []
    lateness: list[float] = []
    codes: dict[int, int] = {}
    last_accepted: dict[str, str] = {}
    total = int(rate * seconds)
    started = time.monotonic()

    async def one(index: int) -> None:
        device_id, key = devices[index % len(devices)]
        request = heartbeat_request(client, device_id, key, {"status": "active", "metrics": {"seq": index}})
        sent = time.perf_counter()
        stamp = None
        try:
            answer = await client.send(request)
            status = answer.status
            if 200 <= status < 300:
                stamp = orjson.loads(answer.body)["last_heartbeat"]
        except (TimeoutError, OSError, asyncio.IncompleteReadError, HttpProtocolError):
            status = 0
        latencies.append((time.perf_counter() - sent) * 1000.0)
        codes[status] = codes.get(status, 0) + 1
        if stamp is not None and stamp > last_accepted.get(device_id, ""):
            last_accepted[device_id] = stamp

    if closed:
        # Closed loop: ``closed`` clients, each sending its next heartbeat when the last is answered,
        # for ``seconds``: the rate the system sustains (capacity), not what it does when offered more.
        counter = iter(range(10**9))

        async def client_loop() -> None:
            while time.monotonic() - started < seconds:
                await one(next(counter))

        await asyncio.gather(*(client_loop() for _ in range(closed)))
        total = len(latencies)
        sending_s = time.monotonic() - started
    else:
        sending_s = await send_open_loop(one, rate, total, started, lateness)
    elapsed = time.monotonic() - started
    accepted = sum(n for code, n in codes.items() if 200 <= code < 300)
    return {"tried": total, "accepted": accepted, "codes": codes, "elapsed_s": elapsed,
            "offered_per_s": total / sending_s if sending_s > 0 else float(total),
            "accepted_per_s": accepted / elapsed,
            "send_late_p99_ms": percentile(lateness, 0.99) if lateness else 0.0,
            "send_late_max_ms": max(lateness, default=0.0),
            "p50_ms": statistics.median(latencies), "p99_ms": percentile(latencies, 0.99),
            "last_accepted": last_accepted}


async def send_open_loop(one: Callable[[int], Coroutine[Any, Any, None]], rate: float, total: int, started: float,
                         lateness: list[float]) -> float:
    """Send request i at start + i/rate whatever the answers do; returns how long sending took."""
    tasks = []
    for index in range(total):
        due = started + index / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        lateness.append(max(0.0, time.monotonic() - due) * 1000.0)
        tasks.append(asyncio.create_task(one(index)))
    sending_s = time.monotonic() - started
    await asyncio.gather(*tasks)
    return sending_s


async def publish_direct(settings: Settings, devices: list[tuple[str, str]], rate: float,
                         seconds: float) -> dict[str, Any]:
    """The processor alone: heartbeats published straight to the topic at ``rate`` (as the ingress
    would, each acknowledged by the broker), no REST in front."""
    publisher = Publisher(settings, client_id="load-direct")
    events = KafkaEventSink(settings, publisher, service="load-direct")
    last_accepted: dict[str, str] = {}
    lateness: list[float] = []
    total = int(rate * seconds)

    async def one(index: int) -> None:
        device_id = devices[index % len(devices)][0]
        now = utcnow()  # what the ingress stamps: milliseconds, as Cassandra keeps them
        record = {"device_id": device_id, "status": "active", "metrics": {"seq": index}, "sent_at": now}
        last_accepted[device_id] = now.isoformat()
        await events.publish(MessageType.DEVICE_HEARTBEAT, record)

    started = time.monotonic()
    try:
        sending_s = await send_open_loop(one, rate, total, started, lateness)
    finally:
        publisher.close()
    elapsed = time.monotonic() - started
    return {"tried": total, "accepted": total, "codes": {"published": total}, "elapsed_s": elapsed,
            "offered_per_s": total / sending_s if sending_s > 0 else float(total), "accepted_per_s": total / elapsed,
            "send_late_p99_ms": percentile(lateness, 0.99), "send_late_max_ms": max(lateness, default=0.0),
            "p50_ms": None, "p99_ms": None, "last_accepted": last_accepted}  # no ingress: no latency


def topic_messages(settings: Settings) -> int:
    reader = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "load-count"})
    try:
        topic = DEVICE_HEARTBEATS.full_name(settings)
        return sum(log_end(reader, TopicPartition(topic, p))[1] for p in range(DEVICE_HEARTBEATS.partitions))
    finally:
        reader.close()


class LagSampler(threading.Thread):
    """The device processor's committed lag every ``every`` seconds, as (seconds since start, lag), through
    one admin client and one offsets reader kept open (a fresh pair per sample took seconds here)."""

    def __init__(self, settings: Settings, every: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.every = settings, every
        self.samples: list[tuple[float, int]] = []
        self.started_at = time.monotonic()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
        self._reader = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "load-lag"})

    def lag(self) -> int:
        with self._lock:
            return sum(row.lag for row in group_lag(self.settings, group_spec("device-processor"), self._admin,
                                                    self._reader))

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((round(time.monotonic() - self.started_at, 2), self.lag()))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def close(self) -> None:
        self._reader.close()


def wait_drained(sampler: LagSampler, supervisor: Supervisor, timeout_s: float) -> None:
    """Until the device processor has committed everything in its topic (or ``timeout_s``); a service
    that exited meanwhile (say it could not reach a busy Cassandra at start) is restarted."""
    deadline = time.monotonic() + timeout_s
    while sampler.lag() > 0 and time.monotonic() < deadline:
        supervisor.check()
        time.sleep(0.1)


TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float]:
    """(parent pid, CPU seconds used) of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root`` and every process under it (an ingress's workers)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = _stat(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    tree, total, grew = {root}, 0.0, True
    while grew:
        grew = False
        for pid, (parent, _) in stats.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    for pid in tree:
        total += stats.get(pid, (0, 0.0))[1]
    return total


def server_pids() -> dict[str, int]:
    """The local stack's Cassandra and Kafka JVMs, found by their main class."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"CassandraDaemon" in cmdline:
            found["cassandra"] = int(entry.name)
        elif b"kafka.Kafka" in cmdline:
            found["kafka"] = int(entry.name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="heartbeats per second, all devices together")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--api-workers", type=int, default=None,
                        help="TRIBUTARY_API_WORKERS of the ingress (default: the setting's default)")
    parser.add_argument("--closed", type=int, default=0, metavar="N",
                        help="closed loop instead: N clients, each sending when its last heartbeat is answered "
                             "(the sustainable rate); --rate is then ignored")
    parser.add_argument("--direct", action="store_true",
                        help="the device processor alone: publish the heartbeats straight to the topic at --rate "
                             "(no ingress; ingress latency is then not measured)")
    parser.add_argument("--connections", type=int, default=512, help="the generator's connection pool")
    parser.add_argument("--register-concurrency", type=int, default=32)
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="skip the one heartbeat per device (and the wait for the processor) before the load")
    parser.add_argument("--lag-every", type=float, default=0.5, help="seconds between lag samples")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the ingress and processor into DIR")
    parser.add_argument("--log-dir", type=Path, default=Path(".local/logs/load-heartbeats"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    overrides: dict[str, Any] = {} if args.api_workers is None else {"api_workers": args.api_workers}
    settings = isolated_settings("load", **overrides)
    session = connect(settings, settings.cassandra_keyspace)  # to check the stored rows at the end
    workers = getattr(settings, "api_workers", 1)  # absent on a checkout before the setting
    env = settings_env(settings, TRIBUTARY_API_WORKERS=str(workers))
    services = [s for s in system_services(settings, env) if s.name in ("api", "device-processor")]
    supervisor = Supervisor(services, args.log_dir, stop_timeout_s=20,
                            progress=lambda line: print(line, file=sys.stderr))
    supervisor.start()
    url = f"http://127.0.0.1:{settings.api_port}"
    sampler = LagSampler(settings, args.lag_every)
    watched: dict[str, int] = {}
    cpu_before: dict[str, float] = {}
    try:
        wait_http(f"{url}/api/v1/health", timeout_s=120)

        async def run() -> dict[str, Any]:
            async with RawHttpPool("127.0.0.1", settings.api_port, args.connections) as client:
                began = time.monotonic()
                devices = await register(client, args.devices, args.register_concurrency)
                registered_s = time.monotonic() - began
                began = time.monotonic()
                if args.warm_up:
                    await warm_up(client, devices, args.register_concurrency)
                    await asyncio.to_thread(wait_drained, sampler, supervisor, args.drain_timeout)
                warm_s = time.monotonic() - began
                await asyncio.sleep(2.0)  # let the processor's group settle before the clock starts
                sampler.started_at = time.monotonic()  # lag samples count from the start of the load
                sampler.start()
                watched.update({name: supervisor.running[name].proc.pid for name in ("api", "device-processor")})
                watched.update(server_pids())
                cpu_before.update({name: cpu_seconds(pid) for name, pid in watched.items()})
                cpu_before["generator"] = sum(os.times()[:2])
                profiled = {name: supervisor.running[name].proc.pid for name in ("api", "device-processor")}
                with py_spy(profiled, args.profile, "heartbeats"):
                    if args.direct:
                        out = await publish_direct(settings, devices, args.rate, args.seconds)
                    else:
                        out = await drive(client, devices, args.rate, args.seconds, args.closed)
                load_s = out["elapsed_s"]
                used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in watched.items()}
                used["generator"] = sum(os.times()[:2]) - cpu_before["generator"]
                # Share of one core each used while the load ran (the machine has os.cpu_count() cores).
                out["cpu_share_of_a_core"] = {name: round(seconds / load_s, 3) for name, seconds in used.items()}
                # CPU per accepted heartbeat: what each part costs, which holds when the cores are shared
                # (a rate does not).
                out["cpu_ms_per_heartbeat"] = {name: round(seconds * 1000.0 / max(1, out["accepted"]), 3)
                                               for name, seconds in used.items()}
                out["register_s"], out["warm_up_s"] = registered_s, warm_s
                return out

        report = asyncio.run(run())
        stopped_at = time.monotonic() - sampler.started_at
        lag_at_stop = sampler.lag()
        drain_started = time.monotonic()
        wait_drained(sampler, supervisor, args.drain_timeout)
        drain_s = time.monotonic() - drain_started
        sampler.stop()
        lag_after = sampler.lag()
        sampler.close()
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
    lags = [lag for _, lag in sampler.samples]
    report.update({"rate": args.rate, "seconds": args.seconds, "devices": args.devices,
                   "api_workers": workers, "heartbeats_in_topic": in_topic,
                   "processor_lag_peak": max(lags, default=0), "processor_lag_at_stop": lag_at_stop,
                   "load_stopped_at_s": round(stopped_at, 2), "drain_s": drain_s,
                   "processor_lag_after": lag_after,
                   "service_restarts": {name: run.restarts for name, run in supervisor.running.items()},
                   "devices_missing_their_last_heartbeat": len(stale),
                   "lag_samples": sampler.samples})
    report["lost"] = max(0, report["accepted"] - in_topic) + len(stale) + lag_after
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return
    print(f"registered {args.devices} devices in {report['register_s']:.1f}s, one heartbeat each applied in "
          f"{report['warm_up_s']:.1f}s; ingress workers: {workers}")
    mode = (f"closed loop, {args.closed} clients" if args.closed
            else f"straight to the topic at {args.rate:g}/s" if args.direct else f"open loop at {args.rate:g}/s")
    print(f"heartbeats: {report['tried']} ({mode}) for {args.seconds:g}s; offered "
          f"{report['offered_per_s']:.1f}/s (generator late p99 {report['send_late_p99_ms']:.1f} ms, max "
          f"{report['send_late_max_ms']:.1f} ms); accepted {report['accepted']} = {report['accepted_per_s']:.1f}/s "
          f"({report['codes']})")
    if report["p50_ms"] is not None:
        print(f"ingress p50 {report['p50_ms']:.1f} ms, p99 {report['p99_ms']:.1f} ms")
    shares = ", ".join(f"{k} {v:.0%}" for k, v in report["cpu_share_of_a_core"].items())
    print(f"CPU while loaded, share of one core (the machine has {os.cpu_count()}): {shares}")
    costs = ", ".join(f"{k} {v:.2f}" for k, v in report["cpu_ms_per_heartbeat"].items())
    print(f"CPU ms per accepted heartbeat: {costs} (total {sum(report['cpu_ms_per_heartbeat'].values()):.2f})")
    every = max(1, int(5 / args.lag_every))
    print("processor lag (s, lag): " + " ".join(f"{t:g}:{lag}" for t, lag in sampler.samples[::every]))
    print(f"processor lag peak {report['processor_lag_peak']}, at stop {lag_at_stop}, drained in {drain_s:.1f}s "
          f"(lag now {lag_after})")
    print(f"in the heartbeats topic: {in_topic}; devices whose row misses their last accepted heartbeat: "
          f"{len(stale)}; lost: {report['lost']}")


if __name__ == "__main__":
    main()
