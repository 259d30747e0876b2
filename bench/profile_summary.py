"""Where a process spent its time, from a ``py-spy record --format raw`` file (``bench.environment.py_spy``).

    python -m bench.profile_summary FILE [--top 25] [--match SUBSTRING]

Prints the share of samples per thread, then the functions with the most samples inclusive
(anywhere on the stack) and exclusive (on top), so a profile reads without a flame-graph viewer.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(.*?) \((.*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    """``function (path/to/module.py:123)`` -> ``function (module.py)``: lines merged, paths shortened."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    function, path = match.groups()
    return f"{function} ({'/'.join(path.split('/')[-2:])})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="", help="only stacks containing this substring")
    args = parser.parse_args()

    total = 0
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    exclusive: Counter[str] = Counter()
    for line in args.file.read_text().splitlines():
        match = _LINE.match(line)
        if match is None or args.match not in line:
            continue
        stack, count = match.group(1), int(match.group(2))
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        names = [_name(f) for f in frames[1:]] or [frames[0]]
        for name in set(names):
            inclusive[name] += count
        exclusive[names[-1]] += count
    if not total:
        print("no samples")
        return
    print(f"{total} samples")
    for title, counter in (("threads", threads), ("inclusive", inclusive), ("exclusive", exclusive)):
        print(f"-- {title}")
        for name, count in counter.most_common(args.top):
            print(f"{100.0 * count / total:6.1f}%  {name[:150]}")


if __name__ == "__main__":
    main()
