"""One inference worker draining a backlog from Kafka, dynamic batching on vs off, in the same run.

    python -m bench.bench_worker_batching [--requests 3000] [--max-batch-size 8] [--without-off] [--json]

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
4. the same with ``TRIBUTARY_INFERENCE_MAX_BATCH_SIZE=1`` (off), same texts; ratio on / off;
5. the baseline of issue 18: the same model in this process (the worker's ONNX Runtime threads),
   fed through ``DynamicBatcher`` at the same max batch size by 2x as many client threads, same
   texts; measured in ``--rounds`` turns that alternate with the worker's drains of
   ``--requests / --rounds`` each (the worker idles meanwhile), so both see the same load from
   whatever else runs on the machine; ratio worker (batching on) / in-process, means of the turns.
   Each turn also times the model alone on back-to-back batches of that size (no batcher, no
   client threads: those threads cost the in-process baseline much on a loaded machine), a
   stricter second baseline.

``--profile DIR`` records the worker with py-spy while it drains (``bench.profile_summary`` reads it).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from bench.bench_inference_inprocess import sentences, throughput
from bench.environment import isolated_settings, machine_busy_s, process_cpu_s, py_spy
from cli.services import system_services
from cli.supervisor import Supervisor
from consumers.inference.builtin import MiniLMEmbedder
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

    def collect(self, wanted: set[str], timeout_s: float) -> dict[str, tuple[float, int, str, float]]:
        """correlation id -> (arrival time, batch size, status, model time of its batch in ms) per wanted answer."""
        found: dict[str, tuple[float, int, str, float]] = {}
        deadline = time.monotonic() + timeout_s
        while len(found) < len(wanted) and time.monotonic() < deadline:
            for message in self.consumer.consume(500, 0.2):
                if message.error() is not None:
                    continue
                record = self.codec.decode(message.value()).record
                if record["correlation_id"] in wanted:
                    metadata = record.get("metadata") or {}
                    found[record["correlation_id"]] = (time.perf_counter(), int(metadata.get("batch_size") or 1),
                                                       record["status"], float(metadata.get("inference_time_ms") or 0))
        return found

    def close(self) -> None:
        self.consumer.close()


def drain_once(producer: RequestProducer, answers: Answers, texts: list[str], count: int, first: int,
               pid: int) -> dict[str, float]:
    """Produce ``count`` requests at once and read every answer: steady-state answers/s and what it cost."""
    cpu_before, machine_before = process_cpu_s(pid), machine_busy_s()
    started = time.perf_counter()
    wanted = {producer.send(texts[i % len(texts)], timeout_s=600) for i in range(first, first + count)}
    producer.flush()
    produced_s = time.perf_counter() - started
    got = answers.collect(wanted, 600)
    elapsed = time.perf_counter() - started
    worker_cpu = (process_cpu_s(pid) - cpu_before) / elapsed
    machine_after = machine_busy_s()
    machine = (machine_after[0] - machine_before[0]) / max(1e-9, machine_after[1] - machine_before[1])
    if len(got) != count:
        raise RuntimeError(f"{count - len(got)} of {count} requests got no answer")
    arrivals = sorted(t for t, *_ in got.values())
    low, high = arrivals[count // 10], arrivals[(count * 9) // 10]
    steady = sum(1 for t in arrivals if low < t <= high)
    sizes = [b for _, b, _, _ in got.values()]
    # Each answer carries its batch's model time: a batch of n contributes n times, so divide by n.
    model_s = sum(ms / 1000.0 / b for t, b, _, ms in got.values() if low < t <= high)
    return {"requests": count, "per_s": steady / (high - low), "overall_per_s": count / (arrivals[-1] - started),
            "mean_batch": sum(sizes) / len(sizes),
            "errors": float(sum(1 for _, _, s, _ in got.values() if s != "success")),
            "produced_in_s": produced_s, "model_busy": model_s / (high - low),
            "worker_cpu_cores": worker_cpu, "machine_busy": machine}


def mean_of(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    return {**{k: sum(run[k] for run in runs) / len(runs) for k in keys},
            "per_round_per_s": [round(run["per_s"], 1) for run in runs]}  # type: ignore[dict-item]


def drain(settings: Settings, texts: list[str], count: int, batch_size: int, log_dir: Path,
          profile: Path | None = None, rounds: int = 1,
          baseline: Callable[[], dict[str, float]] | None = None) -> tuple[dict[str, float], dict[str, float] | None]:
    """Start the worker, then ``rounds`` times: the in-process ``baseline`` (while the worker idles),
    then a drain of ``count / rounds`` requests. Means over the rounds, worker's and baseline's."""
    env = settings_env(settings, TRIBUTARY_INFERENCE_MAX_BATCH_SIZE=str(batch_size))
    worker = [s for s in system_services(settings, env) if s.name == "inference-worker-high"]
    supervisor = Supervisor(worker, log_dir / f"batch-{batch_size}", stop_timeout_s=20, progress=lambda _: None)
    producer = RequestProducer(settings, Priority.HIGH, service="bench-batching")
    answers = Answers(settings)
    supervisor.start()
    runs: list[dict[str, float]] = []
    baselines: list[dict[str, float]] = []
    try:
        warm = {producer.send("warm up", timeout_s=300) for _ in range(16)}
        producer.flush()
        if len(answers.collect(warm, 300)) != len(warm):
            raise RuntimeError("the worker did not answer the warm-up requests")
        pid = supervisor.running["inference-worker-high"].proc.pid
        per_round = count // rounds
        for r in range(rounds):
            if baseline is not None:
                baselines.append(baseline())
            with py_spy({"worker": pid}, profile if r == 0 else None, f"drain-batch{batch_size}"):
                runs.append(drain_once(producer, answers, texts, per_round, r * per_round, pid))
    finally:
        answers.close()
        supervisor.stop()
    return mean_of(runs), (mean_of(baselines) if baselines else None)


def in_process(settings: Settings, texts: list[str], batch_size: int,
               seconds: float) -> tuple[MiniLMEmbedder, Callable[[], dict[str, float]]]:
    """The worker's model and batcher settings in this process (what the worker would do without
    Kafka): the loaded runtime and a function that measures it for ``seconds``."""
    runtime = MiniLMEmbedder(cache_dir=settings.data_dir / "models" / "builtin",
                             intra_op_threads=settings.inference_intra_op_threads)
    runtime.load()
    runtime.infer_batch([{"texts": texts[:64]}])  # warm-up: arena allocation, kernel selection
    def measure() -> dict[str, float]:
        run = throughput(runtime, texts, seconds, 2 * batch_size, batch_size, settings.inference_max_wait_ms)
        return {**run, "model_only_per_s": model_only(runtime, texts, seconds / 2, batch_size)}

    return runtime, measure


def model_only(runtime: MiniLMEmbedder, texts: list[str], seconds: float, batch_size: int) -> float:
    """Texts/s of back-to-back ``infer_batch`` calls of ``batch_size`` texts: no batcher, no client
    threads, the stricter baseline (what the model alone does at that batch size)."""
    done, first = 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        runtime.infer_batch([{"text": texts[(first + k) % len(texts)]} for k in range(batch_size)])
        done += batch_size
        first += batch_size
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--min-words", type=int, default=4)
    parser.add_argument("--max-words", type=int, default=16)
    parser.add_argument("--in-process-seconds", type=float, default=4.0,
                        help="duration of each turn of the in-process baseline")
    parser.add_argument("--rounds", type=int, default=3,
                        help="baseline and worker measured in this many alternating turns (batching on)")
    parser.add_argument("--without-off", action="store_true", help="skip the batching-off run")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the worker into this directory")
    parser.add_argument("--log-dir", type=Path, default=Path(".local/logs/bench-worker-batching"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    settings = isolated_settings("benchw")
    texts = sentences(512, args.min_words, args.max_words)

    runtime, measure = in_process(settings, texts, args.max_batch_size, args.in_process_seconds)
    on, measured = drain(settings, texts, args.requests, args.max_batch_size, args.log_dir, args.profile,
                         max(1, args.rounds), measure)
    runtime.close()
    assert measured is not None
    baseline = measured
    off = None if args.without_off else drain(settings, texts, args.requests, 1, args.log_dir)[0]
    report: dict[str, Any] = {"requests": args.requests, "words_per_text": [args.min_words, args.max_words],
                              "intra_op_threads": settings.inference_intra_op_threads,
                              "in_process": {**baseline, "max_batch_size": args.max_batch_size},
                              "batching_on": {**on, "max_batch_size": args.max_batch_size}, "batching_off": off,
                              "throughput_ratio_on_vs_off": on["per_s"] / off["per_s"] if off else None,
                              "worker_vs_in_process": on["per_s"] / baseline["per_s"],
                              "worker_vs_model_only": on["per_s"] / baseline["model_only_per_s"]}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"one high worker draining {args.requests} txt2embed requests ({args.min_words}-{args.max_words} words), "
          f"{settings.inference_intra_op_threads} ONNX Runtime intra-op thread(s)")
    print(f"  {'in process (baseline)':<26} {baseline['per_s']:7.1f} answers/s, "
          f"mean batch {baseline['mean_batch']:.2f}; per turn {baseline['per_round_per_s']}")
    print(f"  {'model alone, batches of ' + str(args.max_batch_size):<26} {baseline['model_only_per_s']:7.1f} texts/s")
    for name, run in ((f"batching on (max {args.max_batch_size})", on), ("batching off", off)):
        if run is not None:
            print(f"  {name:<26} {run['per_s']:7.1f} answers/s steady ({run['overall_per_s']:.1f} overall), "
                  f"mean batch {run['mean_batch']:.2f}, errors {run['errors']:.0f}")
            print(f"  {'':<26} per turn {run['per_round_per_s']}; model busy {100 * run['model_busy']:.0f} % of "
                  f"the time; the worker used {run['worker_cpu_cores']:.2f} cores; the machine was "
                  f"{100 * run['machine_busy']:.0f} % busy")
    if off is not None:
        print(f"  ratio on / off: {report['throughput_ratio_on_vs_off']:.2f}x")
    print(f"  worker / in process at max batch {args.max_batch_size}: {report['worker_vs_in_process']:.2f}x "
          f"(target >= 0.85); / the model alone: {report['worker_vs_model_only']:.2f}x")


if __name__ == "__main__":
    main()
