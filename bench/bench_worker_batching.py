"""One inference worker draining a backlog from Kafka, dynamic batching on vs off, in the same run.

    python -m bench.bench_worker_batching [--requests 3000] [--max-batch-size 8] [--json]

Needs the local stack (`tributary up`). Issue 5's batching target compares the batched worker's
throughput with the unbatched worker's; the HTTP benchmark (`bench_inference_e2e`) cannot show
that, because under HTTP load the ingress and its clients saturate first. Here nothing but the
worker stands between the requests and the answers:

1. start one high-priority worker process (``TRIBUTARY_INFERENCE_MAX_BATCH_SIZE`` = N), warm it up
   (group join, model load) with a few requests and wait for their answers;
2. produce ``--requests`` txt2embed requests straight onto the high topic (far faster than the
   worker drains them, so it always has a backlog) and read every answer off the responses topic;
3. throughput = answers between the 10th and the 90th percentile of arrival times / that span
   (steady state, no start-up or tail), plus the mean batch the worker reported;
4. the same with ``TRIBUTARY_INFERENCE_MAX_BATCH_SIZE=1`` (off), same texts; ratio on / off.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from bench.bench_inference_inprocess import sentences
from bench.environment import isolated_settings
from cli.services import system_services
from cli.supervisor import Supervisor
from schemas.codec import Codec
from settings import Settings
from tests.e2e.conftest import settings_env
from tests.e2e.serving import RequestProducer
from topology.topics import INFERENCE_RESPONSES, Priority


class Answers:
    """Reads the responses topic from its end: arrival time and batch size per correlation id."""

    def __init__(self, settings: Settings) -> None:
        self.codec = Codec()
        self.consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                                  "group.id": f"bench-answers-{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False})
        topic = INFERENCE_RESPONSES.full_name(settings)
        self.consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in range(INFERENCE_RESPONSES.partitions)])
        self.consumer.poll(0.5)  # resolve OFFSET_END before anything is produced

    def collect(self, wanted: set[str], timeout_s: float) -> dict[str, tuple[float, int, str]]:
        """correlation id -> (arrival time, batch size, status) for every wanted answer."""
        found: dict[str, tuple[float, int, str]] = {}
        deadline = time.monotonic() + timeout_s
        while len(found) < len(wanted) and time.monotonic() < deadline:
            for message in self.consumer.consume(500, 0.2):
                if message.error() is not None:
                    continue
                record = self.codec.decode(message.value()).record
                if record["correlation_id"] in wanted:
                    batch = int((record.get("metadata") or {}).get("batch_size") or 1)
                    found[record["correlation_id"]] = (time.perf_counter(), batch, record["status"])
        return found

    def close(self) -> None:
        self.consumer.close()


def drain(settings: Settings, texts: list[str], count: int, batch_size: int, log_dir: Path) -> dict[str, float]:
    env = settings_env(settings, TRIBUTARY_INFERENCE_MAX_BATCH_SIZE=str(batch_size))
    worker = [s for s in system_services(settings, env) if s.name == "inference-worker-high"]
    supervisor = Supervisor(worker, log_dir / f"batch-{batch_size}", stop_timeout_s=20, progress=lambda _: None)
    producer = RequestProducer(settings, Priority.HIGH, service="bench-batching")
    answers = Answers(settings)
    supervisor.start()
    try:
        warm = {producer.send("warm up", timeout_s=120) for _ in range(16)}
        producer.flush()
        if len(answers.collect(warm, 120)) != len(warm):
            raise RuntimeError("the worker did not answer the warm-up requests")
        started = time.perf_counter()
        wanted = {producer.send(texts[i % len(texts)], timeout_s=600) for i in range(count)}
        producer.flush()
        produced_s = time.perf_counter() - started
        got = answers.collect(wanted, 600)
    finally:
        answers.close()
        supervisor.stop()
    if len(got) != count:
        raise RuntimeError(f"{count - len(got)} of {count} requests got no answer")
    arrivals = sorted(t for t, _, _ in got.values())
    low, high = arrivals[count // 10], arrivals[(count * 9) // 10]
    steady = sum(1 for t in arrivals if low < t <= high)
    sizes = [b for _, b, _ in got.values()]
    return {"requests": count, "per_s": steady / (high - low), "overall_per_s": count / (arrivals[-1] - started),
            "mean_batch": sum(sizes) / len(sizes), "errors": float(sum(1 for *_, s in got.values() if s != "success")),
            "produced_in_s": produced_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--min-words", type=int, default=4)
    parser.add_argument("--max-words", type=int, default=16)
    parser.add_argument("--log-dir", type=Path, default=Path(".local/logs/bench-worker-batching"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    settings = isolated_settings("benchw")
    texts = sentences(512, args.min_words, args.max_words)

    on = drain(settings, texts, args.requests, args.max_batch_size, args.log_dir)
    off = drain(settings, texts, args.requests, 1, args.log_dir)
    report: dict[str, Any] = {"requests": args.requests, "words_per_text": [args.min_words, args.max_words],
                              "intra_op_threads": settings.inference_intra_op_threads,
                              "batching_on": {**on, "max_batch_size": args.max_batch_size}, "batching_off": off,
                              "throughput_ratio_on_vs_off": on["per_s"] / off["per_s"]}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"one high worker draining {args.requests} txt2embed requests ({args.min_words}-{args.max_words} words), "
          f"{settings.inference_intra_op_threads} ONNX Runtime intra-op thread(s)")
    for name, run in ((f"batching on (max {args.max_batch_size})", on), ("batching off (baseline)", off)):
        print(f"  {name:<26} {run['per_s']:7.1f} answers/s steady ({run['overall_per_s']:.1f} overall), "
              f"mean batch {run['mean_batch']:.2f}, errors {run['errors']:.0f}")
    print(f"  ratio on / off: {report['throughput_ratio_on_vs_off']:.2f}x")


if __name__ == "__main__":
    main()
