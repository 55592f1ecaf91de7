"""
Summarise a ``py-spy record -f raw`` profile (collapsed stacks): the top
functions by own samples and by inclusive samples, as Markdown tables.

    python bench/pyspy_top.py profile.txt [--top 25]

Paths are shortened to what follows ``site-packages/`` or the repository,
so the output names no directory of the machine it ran on.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_TRIM = re.compile(r"^.*?/(site-packages|lib/python3\.\d+|twisted_sse|bench)/")


def short(frame: str, with_line: bool) -> str:
    """``function (file:line)`` with the file relative to its package."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    trimmed = _TRIM.sub(
        lambda m: (
            "" if m[1] in ("site-packages",) or m[1].startswith("lib/") else m[1] + "/"
        ),
        path,
    )
    line = f":{match['line']}" if with_line and match["line"] else ""
    return f"{match['function']} ({trimmed}{line})"


def read(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path) as source:
        for row in source:
            row = row.rstrip("\n")
            if not row:
                continue
            stack, _, count = row.rpartition(" ")
            frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
            frames = [f for f in frames if not f.startswith("thread ")]
            stacks.append((frames, int(count)))
    return stacks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    stacks = read(args.profile)
    total = sum(count for _, count in stacks)
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        own[short(frames[-1], True)] += count
        for name in {short(f, False) for f in frames}:
            inclusive[name] += count
    print(f"{total} samples\n")
    for title, counter in (("own", own), ("inclusive", inclusive)):
        print(f"| % {title} | samples | function (file:line) |")
        print("|---|---|---|")
        for name, count in counter.most_common(args.top):
            print(f"| {100 * count / total:.1f} | {count} | `{name}` |")
        print()


if __name__ == "__main__":
    main()
