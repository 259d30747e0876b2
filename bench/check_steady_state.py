"""`tributary run` at rest and after a heartbeat load: detailed health and consumer lag.

    python -m bench.check_steady_state [--rate 50] [--seconds 60] [--devices 50] [--json]

Starts the whole system as an operator would (`tributary run`: ingress, every declared processor
and the three inference workers) on a topic prefix and keyspace of its own, on the local stack
(`tributary up`). Reads `GET /api/v1/health?detailed=true` and `tributary lag --json` with no
traffic, sends heartbeats open-loop at ``--rate`` for ``--seconds`` from ``--devices`` devices, then
reads both again until every group's lag is 0 (or 120 s pass). Exits 1 unless health is `healthy`
and lag 0 both before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.environment import tributary_run
from bench.load_heartbeats import drive, register
from bench.rawhttp import RawHttpPool


def health(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/api/v1/health", params={"detailed": "true"}, timeout=15).json()
    return {"status": body["status"], **{name: c["status"] for name, c in body["components"].items()}}


def lag(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([str(Path(sys.executable).parent / "tributary"), "lag", "--json"], env=env,
                         capture_output=True, text=True, timeout=120)
    report: dict[str, Any] = json.loads(out.stdout)
    return {"total": report["total"], "by_group": report["totals"]}


def settle(url: str, env: dict[str, str], timeout_s: float) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Health and lag once lag is 0 and health healthy, or after ``timeout_s``; and how long it took."""
    started = time.monotonic()
    while True:
        now_health, now_lag = health(url), lag(env)
        if (now_lag["total"] == 0 and now_health["status"] == "healthy") or time.monotonic() - started > timeout_s:
            return now_health, now_lag, time.monotonic() - started
        time.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--devices", type=int, default=50, help="at most ~90: registration is 100/min per address")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tributary_run("steady") as system:
        before_health, before_lag, settled_s = settle(system.url, system.env, 120)

        async def load() -> dict[str, Any]:
            address = urlsplit(system.url)
            async with RawHttpPool(address.hostname or "127.0.0.1", address.port or 80, 64) as client:
                devices = await register(client, args.devices)
                return await drive(client, devices, args.rate, args.seconds)

        traffic = asyncio.run(load())
        traffic.pop("last_accepted")
        after_health, after_lag, drained_s = settle(system.url, system.env, 120)
    report = {"at_rest": {"health": before_health, "lag": before_lag, "settled_s": round(settled_s, 1)},
              "load": {k: traffic[k] for k in ("tried", "accepted", "codes", "accepted_per_s", "p50_ms", "p99_ms")},
              "after_load": {"health": after_health, "lag": after_lag, "lag_zero_after_s": round(drained_s, 1)}}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"at rest:    health {before_health['status']} {before_health}; lag total {before_lag['total']}")
        print(f"load:       {traffic['accepted']}/{traffic['tried']} heartbeats accepted at "
              f"{traffic['accepted_per_s']:.1f}/s, p50 {traffic['p50_ms']:.1f} ms, p99 {traffic['p99_ms']:.1f} ms")
        print(f"after load: health {after_health['status']}; lag total {after_lag['total']} "
              f"({drained_s:.1f} s after the load ended)")
    ok = all(h["status"] == "healthy" for h in (before_health, after_health)) and \
        before_lag["total"] == after_lag["total"] == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
