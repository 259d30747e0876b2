"""gRPC InferStream vs the REST path for txt2embed, both measured in the same run on the same system.

    python -m bench.bench_grpc_stream [--seconds 10] [--concurrency 32] [--sequential 300] [--json]

Needs the local stack (`tributary up`, or TRIBUTARY_* pointing at servers). Starts one ingress
(REST and gRPC in one process) and the three priority workers under a fresh topic prefix and
keyspace, then, with the same texts, high priority, after a warm-up:

1. latency at batch 1: ``--sequential`` requests one at a time, REST (HTTP keep-alive) then gRPC
   ``Infer`` (one channel): p50/p99 and the gRPC/REST p50 ratio;
2. throughput with ``--concurrency`` requests in flight for ``--seconds``: REST with that many
   closed-loop HTTP clients (the baseline), then ONE ``InferStream`` call whose client keeps that
   many requests in flight (a new one goes out as each answer comes back): requests/s, p50/p99
   per request, and the stream/REST throughput ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx

from bench.bench_inference_e2e import concurrent, running_system, sequential, warm_up
from bench.bench_inference_inprocess import percentile, sentences
from bench.environment import isolated_settings
from core.serving.builtin_specs import MINILM_ID
from modelmora.v1 import common_pb2, inference_pb2, inference_pb2_grpc


def request(text: str, request_id: str = "") -> inference_pb2.InferenceRequest:
    return inference_pb2.InferenceRequest(model_id=MINILM_ID, input_data=inference_pb2.InputData(text=text),
                                          priority=common_pb2.PRIORITY_HIGH, timeout_seconds=30,
                                          request_id=request_id)


def grpc_sequential(target: str, metadata: tuple[tuple[str, str], ...], texts: list[str],
                    count: int) -> dict[str, float]:
    with grpc.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        for _ in range(10):  # connection set-up is not part of the measurement
            stub.Infer(request("warm up"), metadata=metadata)
        samples = []
        for i in range(count):
            started = time.perf_counter()
            response = stub.Infer(request(texts[i % len(texts)]), metadata=metadata)
            samples.append((time.perf_counter() - started) * 1000.0)
            assert len(response.output_data.embedding.values) == 384
    return {"requests": count, "p50_ms": percentile(samples, 0.5), "p99_ms": percentile(samples, 0.99)}


async def grpc_stream(target: str, metadata: tuple[tuple[str, str], ...], texts: list[str], seconds: float,
                      in_flight: int) -> dict[str, float]:
    """One InferStream; the client keeps ``in_flight`` requests outstanding for ramp-up + ``seconds``."""
    window = asyncio.Semaphore(in_flight)
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    errors = 0
    ramp_up_until = time.perf_counter() + 2.0
    stop_at = ramp_up_until + seconds

    async def outgoing() -> AsyncIterator[inference_pb2.InferenceRequest]:
        i = 0
        while time.perf_counter() < stop_at:
            await window.acquire()
            request_id = uuid.uuid4().hex
            sent_at[request_id] = time.perf_counter()
            yield request(texts[i % len(texts)], request_id)
            i += 1

    async with grpc.aio.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        measured_from = 0.0
        async for response in stub.InferStream(outgoing(), metadata=metadata):
            now = time.perf_counter()
            window.release()
            started = sent_at.pop(response.output_data.custom_data["request_id"])
            if measured_from == 0.0 and now >= ramp_up_until:
                measured_from = now
            if started >= ramp_up_until:
                if response.HasField("error"):
                    errors += 1
                else:
                    latencies.append((now - started) * 1000.0)
        elapsed = time.perf_counter() - measured_from
    return {"requests": len(latencies), "per_s": len(latencies) / elapsed, "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99), "errors": float(errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput run")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight in the throughput runs")
    parser.add_argument("--sequential", type=int, default=300, help="requests in each latency run")
    parser.add_argument("--log-dir", type=Path, default=Path(".local/logs/bench-grpc"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    settings = isolated_settings("benchg", grpc_stream_max_in_flight=max(64, args.concurrency))
    texts = sentences(512, 4, 16)
    key = settings.admin_api_key.get_secret_value()
    headers = {"Authorization": f"Bearer {key}"}
    metadata = (("authorization", f"Bearer {key}"),)
    target = f"127.0.0.1:{settings.grpc_port}"
    env = {"TRIBUTARY_GRPC_STREAM_MAX_IN_FLIGHT": str(settings.grpc_stream_max_in_flight)}

    report: dict[str, Any] = {"model": MINILM_ID, "concurrency": args.concurrency}
    with running_system(settings, args.log_dir, **env) as (url, _), httpx.Client(timeout=60) as http:
        warm_up(http, url, headers)
        report["rest_sequential"] = sequential(http, url, headers, texts, args.sequential)
        report["grpc_sequential"] = grpc_sequential(target, metadata, texts, args.sequential)
        report["rest_concurrent"] = concurrent(url, headers, texts, args.seconds, args.concurrency)
        report["grpc_stream"] = asyncio.run(grpc_stream(target, metadata, texts, args.seconds, args.concurrency))

    report["grpc_vs_rest_p50_ratio"] = report["grpc_sequential"]["p50_ms"] / report["rest_sequential"]["p50_ms"]
    report["stream_vs_rest_throughput_ratio"] = (report["grpc_stream"]["per_s"]
                                                 / max(1e-9, report["rest_concurrent"]["per_s"]))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    rest_seq, grpc_seq = report["rest_sequential"], report["grpc_sequential"]
    rest_con, stream = report["rest_concurrent"], report["grpc_stream"]
    print(f"model {MINILM_ID}, high priority, 4-16 words per text")
    print(f"batch 1, {args.sequential} sequential requests")
    print(f"  REST  p50 {rest_seq['p50_ms']:7.2f} ms  p99 {rest_seq['p99_ms']:7.2f} ms   (baseline)")
    print(f"  gRPC  p50 {grpc_seq['p50_ms']:7.2f} ms  p99 {grpc_seq['p99_ms']:7.2f} ms   "
          f"p50 ratio {report['grpc_vs_rest_p50_ratio']:.2f}x")
    print(f"{args.concurrency} in flight, {args.seconds:.0f} s")
    print(f"  REST ({args.concurrency} clients)  {rest_con['per_s']:7.1f} req/s  p50 {rest_con['p50_ms']:7.2f} ms  "
          f"p99 {rest_con['p99_ms']:7.2f} ms  errors {rest_con['errors']:.0f}   (baseline)")
    print(f"  InferStream (1 call)  {stream['per_s']:7.1f} req/s  p50 {stream['p50_ms']:7.2f} ms  "
          f"p99 {stream['p99_ms']:7.2f} ms  errors {stream['errors']:.0f}   "
          f"throughput ratio {report['stream_vs_rest_throughput_ratio']:.2f}x")


if __name__ == "__main__":
    main()
