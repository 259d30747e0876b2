"""The S3 claim check (issue 17 item 4): what it adds to every reply, and what a large input costs.

    python -m bench.bench_claim_check --seconds 3 [--s3] [--json]

1. No servers: the worker encodes each reply; the claim check first decides whether the reply's
   ``output_data`` may be larger than the threshold (``may_exceed``, no encoding). Measured on a
   384-d embedding reply: encode alone (baseline) vs decide + encode, in interleaved rounds (median).
2. ``--s3`` (the local stack's S3, ``TRIBUTARY_S3_ENDPOINT``): a 20 MB image as the JSON input the
   ingress builds (26.7 MB). Offload (sha256 + put) and resolve (get + size/sha256 check + parse)
   against a baseline of ``json.dumps`` + ``json.loads`` of the same input in the same run, and the
   Avro message sizes inline and by reference (Kafka refuses the inline one: > 1 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.bench_codec import rate
from core.artifacts import S3ArtifactStore
from core.claimcheck import ClaimCheck, may_exceed
from schemas.codec import Codec
from settings import Settings
from tests.samples import sample

THRESHOLD = 256 * 1024


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Best of ``repeat`` runs, seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def reply_overhead(seconds: float) -> dict[str, float]:
    codec = Codec()
    record = sample("inference_response")
    record["output_data"] = {"embedding": [0.0123456789 * i for i in range(384)], "dimensions": 384}

    def with_check() -> None:
        may_exceed(record["output_data"], THRESHOLD)
        codec.encode("inference_response", record)

    # Interleaved short rounds, median of the per-round ratios: a shared machine's noise hits both.
    rounds = max(4, int(seconds / 0.5))
    pairs = [(rate(lambda: codec.encode("inference_response", record), seconds / rounds / 2),
              rate(with_check, seconds / rounds / 2)) for _ in range(rounds)]
    ratios = sorted(checked / baseline for baseline, checked in pairs)
    decide = rate(lambda: may_exceed(record["output_data"], THRESHOLD), seconds / 4)
    return {"decide_per_s": decide, "encode_per_s": statistics.median(b for b, _ in pairs),
            "check_and_encode_per_s": statistics.median(c for _, c in pairs),
            "ratio": statistics.median(ratios), "rounds": rounds}


def large_input(repeat: int) -> dict[str, Any]:
    settings = Settings(s3_endpoint=os.environ.get("TRIBUTARY_S3_ENDPOINT", "http://127.0.0.1:8333"))
    image = os.urandom(20_000_000)
    input_data = {"image": base64.b64encode(image).decode()}
    claims = ClaimCheck(S3ArtifactStore(settings), bucket=settings.s3_bucket, threshold_bytes=THRESHOLD)
    record = {**sample("inference_request"), "model_id": "efficientnet-lite0", "task_type": "img2embed",
              "input_data": input_data}
    codec = Codec()
    inline, _ = codec.encode("inference_request", record)
    sent = asyncio.run(claims.offload_input(record))
    by_reference, _ = codec.encode("inference_request", sent)
    baseline = timed(lambda: json.loads(json.dumps(input_data)), repeat)
    offload = timed(lambda: asyncio.run(claims.offload_input(record)), repeat)
    resolve = timed(lambda: asyncio.run(claims.resolve_input(sent)), repeat)
    return {"image_bytes": len(image), "input_json_bytes": sent["input_ref"]["size"],
            "message_bytes_inline": len(inline), "message_bytes_by_reference": len(by_reference),
            "json_round_trip_s": baseline, "offload_s": offload, "resolve_s": resolve,
            "offload_vs_json": offload / baseline, "resolve_vs_json": resolve / baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--s3", action="store_true", help="also time a 20 MB input through the real S3")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args()
    results: dict[str, Any] = {"reply": reply_overhead(args.seconds)}
    if args.s3:
        results["large_input"] = large_input(args.repeat)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    reply = results["reply"]
    print(f"reply encode: {reply['encode_per_s']:,.0f}/s; decide + encode: {reply['check_and_encode_per_s']:,.0f}/s "
          f"({reply['ratio']:.2f}x, median of {reply['rounds']} interleaved rounds); decide alone: "
          f"{reply['decide_per_s']:,.0f}/s")
    if "large_input" in results:
        big = results["large_input"]
        print(f"20 MB image: JSON input {big['input_json_bytes']:,} B; message inline "
              f"{big['message_bytes_inline']:,} B, by reference {big['message_bytes_by_reference']:,} B")
        print(f"offload {big['offload_s']:.3f}s ({big['offload_vs_json']:.2f}x), resolve {big['resolve_s']:.3f}s "
              f"({big['resolve_vs_json']:.2f}x) vs json dumps+loads {big['json_round_trip_s']:.3f}s")


if __name__ == "__main__":
    main()
