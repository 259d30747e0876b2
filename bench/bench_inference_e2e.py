"""Sync txt2embed through REST -> Kafka -> worker -> REST, against in-process ONNX Runtime in the same run.

    python -m bench.bench_inference_e2e [--seconds 10] [--concurrency 16] [--without-off] [--json]

Needs the local stack (`tributary up`, or TRIBUTARY_* pointing at servers). Starts its own
ingress and the three priority workers under a fresh topic prefix and keyspace, then measures:

1. baseline: the same model in this process on ONNX Runtime, one request at a time (p50/p99), and
   its throughput under ``--concurrency`` client threads through ``DynamicBatcher`` at
   ``--in-process-batch`` (32: issue 18's baseline for the concurrent REST run);
2. end to end at batch 1: one request at a time over HTTP keep-alive (p50/p99), high priority;
3. throughput under ``--concurrency`` closed-loop HTTP clients with dynamic batching on, then the
   workers restarted with ``TRIBUTARY_INFERENCE_MAX_BATCH_SIZE=1`` (off), same load and texts;
4. priority isolation: high-priority p99 of sequential requests while a low-priority backlog of
   10x as many requests (produced straight to the low topic) is being served, vs (2).

(1) is measured in ``--rounds`` turns alternating with (2), then with (3), while the system is up
(idle during the baseline's turns), so a machine shared with other work loads both sides alike.

Targets (issues 5 and 18, 2-core machine): (2) p50 within 5 ms of (1) p50; (3) batching on >= 0.7x the
in-process batched throughput of (1); (4) p99 no worse than 2x the unloaded p99.

``--profile DIR`` records the ingress and the high worker with py-spy during (2) and (3)
(``bench.profile_summary`` reads the files).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.bench_inference_inprocess import percentile, sentences, throughput
from bench.environment import isolated_settings, py_spy
from cli.services import system_services
from cli.supervisor import Supervisor
from consumers.inference.builtin import MiniLMEmbedder
from core.serving.builtin_specs import MINILM_ID
from settings import Settings
from tests.e2e.conftest import settings_env, wait_http
from tests.e2e.serving import RequestProducer
from topology.groups import inference_group
from topology.lag import topic_lag
from topology.topics import Priority

ENCODED = MINILM_ID.replace("/", "%2F")


@contextmanager
def running_system(settings: Settings, log_dir: Path, **env: str) -> Iterator[tuple[str, dict[str, int]]]:
    """The ingress and the three priority workers as real processes; yields the base URL and their pids."""
    services = [s for s in system_services(settings, settings_env(settings, **env))
                if s.name == "api" or s.name.startswith("inference-worker-")]
    supervisor = Supervisor(services, log_dir, stop_timeout_s=20, progress=lambda _: None)
    supervisor.start()
    url = f"http://127.0.0.1:{settings.api_port}"
    try:
        wait_http(f"{url}/api/v1/health", timeout_s=120)
        yield url, {"ingress": supervisor.running["api"].proc.pid,
                    "worker": supervisor.running["inference-worker-high"].proc.pid}
    finally:
        supervisor.stop()


def warm_up(http: httpx.Client, url: str, headers: dict[str, str]) -> None:
    """First requests wait for group joins and model loads: not part of any measurement."""
    for priority in ("high", "low"):
        for _ in range(5):
            response = http.post(f"{url}/api/v1/infer/{ENCODED}",
                                 json={"input_data": {"text": "warm up"}, "priority": priority,
                                       "timeout_seconds": 300}, headers=headers, timeout=300)
            response.raise_for_status()


def sequential_samples(http: httpx.Client, url: str, headers: dict[str, str], texts: list[str], count: int,
                       first: int = 0, stages: dict[str, list[float]] | None = None) -> list[float]:
    """Milliseconds of ``count`` requests sent one at a time, texts from index ``first`` on; with
    ``stages``, each reply's own timings are appended to it (see ``stage_medians``)."""
    samples = []
    for i in range(first, first + count):
        started = time.perf_counter()
        response = http.post(f"{url}/api/v1/infer/{ENCODED}",
                             json={"input_data": {"text": texts[i % len(texts)]}, "priority": "high",
                                   "timeout_seconds": 30}, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000.0
        samples.append(elapsed)
        response.raise_for_status()
        if stages is not None:
            metadata = response.json()["metadata"]
            stages.setdefault("client", []).append(elapsed)
            for name in ("total_time_ms", "queue_time_ms", "inference_time_ms"):
                stages.setdefault(name, []).append(float(metadata.get(name) or 0.0))
    return samples


def stage_medians(stages: dict[str, list[float]]) -> dict[str, float]:
    """Where a sequential request's time goes, medians of each reply's own timings (ms):
    HTTP and the ingress outside the inference service (client - ingress total), the request's way
    to the model (``queue_time_ms``: from its Avro timestamp, millisecond-truncated, to the worker
    taking it up), the model (``inference_time_ms``), and the rest of the ingress total (the
    reply's way back, the worker's and the ingress's own steps around them)."""
    if not stages:
        return {}
    rows = list(zip(stages["client"], stages["total_time_ms"], stages["queue_time_ms"],
                    stages["inference_time_ms"], strict=True))
    return {"client_ms": percentile([r[0] for r in rows], 0.5),
            "http_and_ingress_outside_service_ms": percentile([r[0] - r[1] for r in rows], 0.5),
            "request_to_worker_ms": percentile([r[2] for r in rows], 0.5),
            "model_ms": percentile([r[3] for r in rows], 0.5),
            "reply_back_and_rest_ms": percentile([r[1] - r[2] - r[3] for r in rows], 0.5)}


def in_process_samples(runtime: MiniLMEmbedder, texts: list[str], count: int, first: int = 0,
                       gap_s: float = 0.0) -> list[float]:
    """The same as ``sequential_samples`` straight into the runtime: the batch-1 baseline. ``gap_s``
    of sleep between calls makes each one a request that finds the model idle, as the worker's
    model is at one client; back to back, on a loaded machine, the kernel's fair scheduler gives a
    thread that never sleeps a fraction of the share it gives the worker's."""
    samples = []
    for i in range(first, first + count):
        if gap_s:
            time.sleep(gap_s)
        started = time.perf_counter()
        runtime.infer_batch([{"text": texts[i % len(texts)]}])
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    return {"requests": len(samples), "p50_ms": percentile(samples, 0.5), "p99_ms": percentile(samples, 0.99)}


def combined(runs: list[dict[str, float]]) -> dict[str, float]:
    """Throughput runs taken in turns as one: requests over their summed time; latencies and batch
    sizes are the median of the runs' own."""
    seconds = sum(run["requests"] / run["per_s"] for run in runs if run["per_s"])
    middle = sorted(runs, key=lambda run: run["p50_ms"])[len(runs) // 2]
    return {"requests": sum(run["requests"] for run in runs),
            "per_s": sum(run["requests"] for run in runs) / seconds if seconds else 0.0,
            "p50_ms": middle["p50_ms"], "p99_ms": middle["p99_ms"], "mean_batch": middle.get("mean_batch", 1.0),
            "per_round_per_s": [round(run["per_s"], 1) for run in runs]}  # type: ignore[dict-item]


def sequential(http: httpx.Client, url: str, headers: dict[str, str], texts: list[str],
               count: int) -> dict[str, float]:
    return summary(sequential_samples(http, url, headers, texts, count))


def concurrent(url: str, headers: dict[str, str], texts: list[str], seconds: float,
               concurrency: int) -> dict[str, float]:
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    batch_sizes: list[list[int]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    stop = threading.Event()

    def client(index: int) -> None:
        i = index
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                started = time.perf_counter()
                response = http.post(f"{url}/api/v1/infer/{ENCODED}",
                                     json={"input_data": {"text": texts[i % len(texts)]}, "priority": "high",
                                           "timeout_seconds": 30}, headers=headers)
                if response.status_code == 200:
                    latencies[index].append((time.perf_counter() - started) * 1000.0)
                    batch_sizes[index].append(int(response.json()["metadata"].get("batch_size") or 1))
                else:
                    errors[index] += 1
                i += concurrency

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)  # ramp up: connections open, batches settle
    for values in latencies:
        values.clear()
    for sizes in batch_sizes:
        sizes.clear()
    started = time.perf_counter()
    time.sleep(seconds)
    flat = [v for values in latencies for v in values]
    sizes_flat = [s for sizes in batch_sizes for s in sizes]
    elapsed = time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join(90)
    return {"requests": len(flat), "per_s": len(flat) / elapsed, "p50_ms": percentile(flat, 0.5),
            "p99_ms": percentile(flat, 0.99), "mean_batch": sum(sizes_flat) / max(1, len(sizes_flat)),
            "errors": float(sum(errors))}


def flood_low(settings: Settings, texts: list[str], count: int) -> None:
    flood = RequestProducer(settings, Priority.LOW, service="bench-flood")
    for i in range(count):
        flood.send(texts[i % len(texts)], timeout_s=600)
    flood.flush()


def low_backlog(settings: Settings) -> int:
    return sum(row.lag for row in topic_lag(settings, inference_group(Priority.LOW).group_id))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--in-process-batch", type=int, default=32, help="max batch of the in-process baseline")
    parser.add_argument("--without-off", action="store_true", help="skip the batching-off run")
    parser.add_argument("--baseline-gap-ms", type=float, default=10.0,
                        help="sleep between the in-process batch-1 calls (0: back to back, as before issue 18)")
    parser.add_argument("--without-flood", action="store_true", help="skip the priority-isolation run")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the ingress and the high worker")
    parser.add_argument("--sequential", type=int, default=300, help="requests in each sequential run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="baseline and system measured in this many alternating turns (sequential and concurrent)")
    parser.add_argument("--min-words", type=int, default=4, help="shortest sentence, in words")
    parser.add_argument("--max-words", type=int, default=16, help="longest sentence, in words")
    parser.add_argument("--log-dir", type=Path, default=Path(".local/logs/bench-inference"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    settings = isolated_settings("bench")
    texts = sentences(512, args.min_words, args.max_words)
    headers = {"Authorization": f"Bearer {settings.admin_api_key.get_secret_value()}"}

    # 1. baseline, same texts, same thread count as a worker's session; kept loaded and measured in
    # turns with the system (``--rounds``), so both see the same load from whatever else runs here.
    runtime = MiniLMEmbedder(cache_dir=settings.data_dir / "models" / "builtin",
                             intra_op_threads=settings.inference_intra_op_threads)
    runtime.load()
    runtime.infer_batch([{"texts": texts[:64]}])
    rounds = max(1, args.rounds)
    per_round = max(1, args.sequential // rounds)
    in_process_ms: list[float] = []
    e2e_ms: list[float] = []
    stages: dict[str, list[float]] = {}
    batched_runs: list[dict[str, float]] = []
    on_runs: list[dict[str, float]] = []
    with running_system(settings, args.log_dir / "batching-on") as (url, pids), httpx.Client(timeout=60) as http:
        warm_up(http, url, headers)
        for r in range(rounds):
            in_process_ms += in_process_samples(runtime, texts, per_round, r * per_round,
                                                args.baseline_gap_ms / 1000.0)
            with py_spy(pids, args.profile if r == 0 else None, "sequential"):
                e2e_ms += sequential_samples(http, url, headers, texts, per_round, r * per_round, stages)
        for r in range(rounds):
            batched_runs.append(throughput(runtime, texts, args.seconds / rounds, args.concurrency,
                                           args.in_process_batch, settings.inference_max_wait_ms))
            with py_spy(pids, args.profile if r == 0 else None, f"concurrent{args.concurrency}"):
                on_runs.append(concurrent(url, headers, texts, args.seconds / rounds, args.concurrency))
        in_process, in_process_batched = summary(in_process_ms), combined(batched_runs)
        report: dict[str, Any] = {
            "model": MINILM_ID, "concurrency": args.concurrency, "rounds": rounds, "in_process_batch1": in_process,
            "in_process_batched": {**in_process_batched, "max_batch_size": args.in_process_batch},
            "words_per_text": [args.min_words, args.max_words], "e2e_batch1": summary(e2e_ms),
            "e2e_batch1_stages": stage_medians(stages),
            "batching_on": combined(on_runs)}
        # 4. priority isolation: a low backlog of 10x the high requests, served while high runs
        if not args.without_flood:
            flood_low(settings, texts, 10 * args.sequential)
            backlog_before = low_backlog(settings)
            report["high_under_low_flood"] = sequential(http, url, headers, texts, args.sequential)
            report["low_backlog"] = {"before": backlog_before, "after": low_backlog(settings)}
            deadline = time.monotonic() + 300
            while low_backlog(settings) > 0 and time.monotonic() < deadline:
                time.sleep(1)
    runtime.close()
    if not args.without_off:
        with running_system(settings, args.log_dir / "batching-off", TRIBUTARY_INFERENCE_MAX_BATCH_SIZE="1") as \
                (url, _), httpx.Client(timeout=60) as http:
            warm_up(http, url, headers)
            report["batching_off"] = concurrent(url, headers, texts, args.seconds, args.concurrency)

    report["e2e_minus_in_process_p50_ms"] = report["e2e_batch1"]["p50_ms"] - in_process["p50_ms"]
    report["throughput_ratio_on_vs_off"] = (report["batching_on"]["per_s"] / max(1e-9, report["batching_off"]["per_s"])
                                            if "batching_off" in report else None)
    report["throughput_ratio_e2e_vs_in_process_batched"] = (report["batching_on"]["per_s"]
                                                            / max(1e-9, in_process_batched["per_s"]))
    report["high_p99_ratio_flood_vs_unloaded"] = (report["high_under_low_flood"]["p99_ms"]
                                                  / max(1e-9, report["e2e_batch1"]["p99_ms"])
                                                  if "high_under_low_flood" in report else None)
    report["load_average"] = os.getloadavg()
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"txt2embed {MINILM_ID}; texts of {args.min_words}-{args.max_words} words; {args.sequential} sequential "
          f"requests, {args.concurrency} concurrent clients for {args.seconds:g}s")
    print(f"{'run':<44}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}")
    print(f"baseline and system measured in {rounds} alternating turns; throughput per turn: in-process "
          f"{in_process_batched['per_round_per_s']}, REST+Kafka {report['batching_on']['per_round_per_s']}")
    rows = [("in-process ONNX Runtime, batch 1 (baseline)", in_process),
            (f"in-process, {args.concurrency} clients, batch {args.in_process_batch}", in_process_batched),
            ("REST+Kafka, sequential, high", report["e2e_batch1"]),
            (f"REST+Kafka, {args.concurrency} clients, batching on", report["batching_on"]),
            (f"REST+Kafka, {args.concurrency} clients, batching off", report.get("batching_off")),
            (f"REST+Kafka, sequential high, low backlog {report.get('low_backlog', {}).get('before')}",
             report.get("high_under_low_flood"))]
    for name, run in rows:
        if run is None:
            continue
        print(f"{name:<44}{run.get('per_s', 0.0):>9.1f}{run['p50_ms']:>9.2f}{run['p99_ms']:>9.2f}"
              f"{run.get('mean_batch', 1.0):>7.1f}")
    print("sequential stages, medians (ms): " + ", ".join(f"{name[:-3]} {value:.2f}"
                                                        for name, value in report["e2e_batch1_stages"].items()))
    print(f"e2e p50 - in-process p50: {report['e2e_minus_in_process_p50_ms']:.2f} ms (target <= 5)")
    if report["throughput_ratio_on_vs_off"] is not None:
        print(f"throughput batching on / off: {report['throughput_ratio_on_vs_off']:.2f}x")
    print(f"throughput REST+Kafka / in-process batched: {report['throughput_ratio_e2e_vs_in_process_batched']:.2f}x "
          f"(target >= 0.7)")
    if report["high_p99_ratio_flood_vs_unloaded"] is not None:
        print(f"high p99 under low flood / unloaded: {report['high_p99_ratio_flood_vs_unloaded']:.2f}x "
              "(target <= 2)")
    print("machine load average at the end (1, 5, 15 min): {:.1f} {:.1f} {:.1f}".format(*report["load_average"]))


if __name__ == "__main__":
    main()
