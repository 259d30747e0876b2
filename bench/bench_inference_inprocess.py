"""In-process txt2embed on ONNX Runtime (all-MiniLM-L6-v2): batch-1 latency, and throughput with
dynamic batching on vs off under the same concurrent load.

    python -m bench.bench_inference_inprocess [--seconds 5] [--concurrency 32] [--json]

1. latency: one request at a time straight into the runtime (batch 1), p50/p99.
   Cost grows with tokens per text (compute-bound on CPU): ``--min-words``/``--max-words``.
2. throughput: ``--concurrency`` closed-loop client threads submit one sentence each through
   ``DynamicBatcher``; once with ``max_batch_size=1`` (off) and once with ``--max-batch-size``
   and ``--max-wait-ms`` (on). Both runs use the same runtime, sentences and duration, so the
   ratio is what to compare. No Kafka here: see the end-to-end benchmarks for that.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from consumers.inference.batching import DynamicBatcher
from consumers.inference.builtin import MiniLMEmbedder
from core.serving.builtin_specs import MINILM_ID
from settings import Settings

_VOCABULARY = ("sensor battery fleet device update round model gradient kafka partition replica broker latency "
               "throughput embedding vector sentence cluster quickly slowly reports failed healthy firmware "
               "network offline online heartbeat the a of and to in on with for from")
WORDS = _VOCABULARY.split(" ")


def sentences(count: int, min_words: int = 4, max_words: int = 16) -> list[str]:
    """Deterministic sentences of ``min_words``..``max_words`` words."""
    out = []
    span = max_words - min_words + 1
    for i in range(count):
        length = min_words + (i * 7) % span
        out.append(" ".join(WORDS[(i * 13 + j * 5) % len(WORDS)] for j in range(length)) + ".")
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency_batch1(runtime: MiniLMEmbedder, texts: list[str], seconds: float) -> dict[str, float]:
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        runtime.infer_batch([{"text": texts[i % len(texts)]}])
        samples.append((time.perf_counter() - start) * 1000.0)
        i += 1
    return {"requests": len(samples), "p50_ms": percentile(samples, 0.50), "p99_ms": percentile(samples, 0.99),
            "per_s": len(samples) / seconds}


def throughput(runtime: MiniLMEmbedder, texts: list[str], seconds: float, concurrency: int,
               max_batch_size: int, max_wait_ms: float) -> dict[str, float]:
    sizes: list[int] = []
    batcher = DynamicBatcher(lambda _: runtime, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                             on_batch=lambda observation: sizes.append(observation.size))
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop = threading.Event()

    def client(index: int) -> None:
        i = index
        while not stop.is_set():
            start = time.perf_counter()
            batcher.infer(MINILM_ID, {"text": texts[i % len(texts)]}, timeout=60)
            latencies[index].append((time.perf_counter() - start) * 1000.0)
            i += concurrency

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(60)
    elapsed = time.perf_counter() - started
    batcher.close()
    flat = [value for values in latencies for value in values]
    return {"requests": len(flat), "per_s": len(flat) / elapsed, "p50_ms": percentile(flat, 0.50),
            "p99_ms": percentile(flat, 0.99), "mean_batch": statistics.fmean(sizes) if sizes else 0.0,
            "max_batch": float(max(sizes, default=0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="client threads in the throughput runs")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--min-words", type=int, default=4, help="shortest sentence, in words")
    parser.add_argument("--max-words", type=int, default=16, help="longest sentence, in words")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the ONNX export is kept (default: <data_dir>/models/builtin)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    cache_dir = args.cache_dir or Settings().data_dir / "models" / "builtin"
    runtime = MiniLMEmbedder(cache_dir=cache_dir, intra_op_threads=args.threads)
    load_start = time.perf_counter()
    runtime.load()
    load_s = time.perf_counter() - load_start
    texts = sentences(512, args.min_words, args.max_words)
    tokenizer = runtime.tokenizer
    tokens = statistics.fmean(len(e.ids) for e in tokenizer.encode_batch(texts)) if tokenizer else 0.0
    runtime.infer_batch([{"texts": texts[:64]}])  # warm-up: arena allocation, kernel selection

    latency = latency_batch1(runtime, texts, args.seconds)
    off = throughput(runtime, texts, args.seconds, args.concurrency, 1, 0.0)
    on = throughput(runtime, texts, args.seconds, args.concurrency, args.max_batch_size, args.max_wait_ms)
    runtime.close()

    report: dict[str, Any] = {
        "model": MINILM_ID, "intra_op_threads": args.threads, "load_s": load_s,
        "words_per_text": [args.min_words, args.max_words], "mean_tokens_per_text": tokens,
        "batch1_latency": latency,
        "batching_off": off,
        "batching_on": {**on, "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms},
        "throughput_ratio_on_vs_off": on["per_s"] / off["per_s"] if off["per_s"] else 0.0,
        "concurrency": args.concurrency,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"txt2embed {MINILM_ID} on ONNX Runtime, {args.threads} intra-op threads, load {load_s:.2f}s; "
          f"texts of {args.min_words}-{args.max_words} words, {tokens:.1f} tokens on average")
    print(f"{'run':<34}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'mean batch':>12}")
    print(f"{'batch 1, sequential':<34}{latency['per_s']:>10.1f}{latency['p50_ms']:>10.2f}"
          f"{latency['p99_ms']:>10.2f}{1.0:>12.1f}")
    for name, run in ((f"batching off, {args.concurrency} clients", off),
                      (f"batching on ({args.max_batch_size}/{args.max_wait_ms:g} ms), {args.concurrency} clients",
                       on)):
        print(f"{name:<34}{run['per_s']:>10.1f}{run['p50_ms']:>10.2f}{run['p99_ms']:>10.2f}"
              f"{run['mean_batch']:>12.1f}")
    print(f"throughput ratio, batching on / off: {report['throughput_ratio_on_vs_off']:.2f}x")


if __name__ == "__main__":
    main()
