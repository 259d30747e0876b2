"""CPU of the whole system at rest: the servers alone, then with every service of `tributary run` up.

    python -m bench.bench_idle_cpu [--seconds 30] [--settle 15] [--json]

Baseline and measurement come from the same run on the same servers: first the local stack's
servers (Kafka, Cassandra, SeaweedFS) with nothing of ours connected, then `tributary run` (the
ingress and one member of every consumer group it starts) on a topic prefix and keyspace of its
own, idle, after it answered ready and settled. CPU is read from /proc (utime + stime of each
process and its threads) over the window, in % of one core. Needs the local stack (`tributary up`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench.environment import tributary_run
from infra.local_stack import LocalStack
from settings import Settings

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def children(pid: int) -> list[int]:
    """Every descendant of ``pid``, from /proc (no psutil needed)."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent_of[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, pp in parent_of.items() if pp == current]
        found += kids
        frontier += kids
    return found


def label(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    words = [a.decode(errors="replace") for a in argv if a]
    if "-m" in words:
        i = words.index("-m")
        return " ".join(words[i + 1:])  # e.g. "cli worker --priority high"
    return " ".join(Path(w).name for w in words[:2])


def sample(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """% of one core each process used over ``seconds``."""
    before = {name: cpu_ticks(pid) for name, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    after = {name: cpu_ticks(pid) for name, pid in pids.items()}
    out = {}
    for name in pids:
        b, a = before[name], after[name]
        if a is not None and b is not None:
            out[name] = 100.0 * (a - b) / TICKS / elapsed
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window, each phase")
    parser.add_argument("--settle", type=float, default=15.0, help="wait after the system answered ready")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    base = Settings()
    stack = LocalStack(base)
    stack.up(progress=lambda _line: None)
    servers = {s.name: s.pid() for s in stack}
    server_pids = {name: pid for name, pid in servers.items() if pid is not None}
    if len(server_pids) < 3:
        sys.exit("needs the local stack's own servers (tributary up), not external ones")

    alone = sample(server_pids, args.seconds)

    with tributary_run("idle") as system:
        time.sleep(args.settle)
        services = {f"{label(pid)} ({pid})": pid for pid in children(system.pid) if cpu_ticks(pid) is not None}
        busy = sample({**server_pids, **services}, args.seconds)

    result = {
        "seconds": args.seconds,
        "servers_alone": alone,
        "servers_alone_total": sum(alone.values()),
        "with_services": busy,
        "with_services_total": sum(busy.values()),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"CPU at rest, % of one core, over {args.seconds:.0f} s per phase")
    print(f"{'process':60s} {'alone':>8s} {'all up':>8s}")
    for name in busy:
        print(f"{name[:60]:60s} {alone.get(name, float('nan')):8.1f} {busy[name]:8.1f}")
    print(f"{'total':60s} {result['servers_alone_total']:8.1f} {result['with_services_total']:8.1f}")


if __name__ == "__main__":
    main()
