"""Codec throughput for an inference request: Avro single-object encoding vs a JSON baseline.

    python -m bench.bench_codec --seconds 3 [--json]

Both are measured in the same run on the same record; the ratio is what to compare.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from schemas.codec import Codec
from tests.samples import sample


def rate(fn: Callable[[], Any], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            fn()
        count += 200
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    codec = Codec()
    record = sample("inference_request")
    record["input_data"] = {"texts": ["x" * 200]}
    payload, _ = codec.encode("inference_request", record)
    view = codec.to_json("inference_request", record)
    text = json.dumps(view)

    results = {
        "avro_encode": rate(lambda: codec.encode("inference_request", record), args.seconds),
        "avro_decode": rate(lambda: codec.decode(payload), args.seconds),
        "json_encode_baseline": rate(lambda: json.dumps(codec.to_json("inference_request", record)), args.seconds),
        "json_decode_baseline": rate(lambda: json.loads(text), args.seconds),
    }
    sizes = {"avro_bytes": len(payload), "json_bytes": len(text.encode())}
    ratios = {
        "encode_vs_json": results["avro_encode"] / results["json_encode_baseline"],
        "decode_vs_json": results["avro_decode"] / results["json_decode_baseline"],
    }
    if args.json:
        print(json.dumps({"msgs_per_s": results, "sizes": sizes, "ratios": ratios}, indent=2))
        return
    print(f"{'operation':<24}{'msgs/s':>12}")
    for name, value in results.items():
        print(f"{name:<24}{value:>12,.0f}")
    print(f"payload: avro {sizes['avro_bytes']} B, json {sizes['json_bytes']} B")
    print(f"ratios: encode {ratios['encode_vs_json']:.2f}x json, decode {ratios['decode_vs_json']:.2f}x json")


if __name__ == "__main__":
    main()
