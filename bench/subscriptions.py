"""
What ``GET /subscribe`` costs, against a real ``twistd -n sse --publish-token t``
(memory broker) on 127.0.0.1:

    python bench/subscriptions.py                  # ~1.5 min
    python bench/subscriptions.py --memory-n 5000 --repeat 5
    python bench/subscriptions.py --parts deliveries --deliveries-n 2000

memory
    N idle subscribers (``--memory-n``, 2000) of one kind open against a fresh
    server; the server's RSS growth divided by N, in KB per subscriber, for
    ``/channels/a`` (one channel), ``/subscribe?channel=c0`` (one channel
    through ``/subscribe``) and ``/subscribe?channel=c0&...&channel=c9`` (ten
    channels).  The bar: a ten-channel subscriber costs at most 1.5x a
    one-channel one.

deliveries
    Events received per second, all subscribers summed, while a publisher
    POSTs 64-byte events (``data: <seq> <ts> <pad>`` is 64 bytes; the ``id:``
    and ``event:`` lines come on top) to ``/channels/x.y`` over keep-alive
    connections, ``--publish-conns`` (4) requests in flight:

    1. plain: N subscribers (``--deliveries-n``, 1000) on ``/channels/x.y``,
       no pattern anywhere;
    2. patterns elsewhere: the same, plus ``--patterns`` (100) idle
       subscribers on ``/subscribe?channel=other.*`` and as many on
       ``/subscribe?channel=z.*``, which never match;
    3. pattern matches: N subscribers on ``/subscribe?channel=x.*``, every
       event going through the fan-in and its per-event cursor.

    The bar: a publish to a channel that patterns watch delivers at least
    0.9x what a plain one does (runs 2 and 3 against run 1).  The table also
    divides the deliveries by the server's CPU time: when other processes
    share the server's core, that figure moves less than deliveries/s.

Every server is a new ``twistd`` pinned to ``--server-cpu`` (0); the load
client and the publisher, ``client/sseload.c`` and ``client/pub.c`` (built
into ``bench/build/`` from ``--client-src``), to ``--client-cpu`` (1).
Before each memory measurement the script opens a few subscribers of the
same kind itself and keeps them open (``--warm``, 10), so the channels
exist and first-use costs are paid; before each deliveries run
it publishes one event, so that ``x.y`` exists, and for run 2 it holds the
idle pattern subscribers.  Runs are interleaved over ``--repeat`` rounds and
the table shows medians.  One JSON line per run on stdout, then the table;
both also go to ``<out>/<stamp>-subscriptions.{jsonl,md}``.  The exit status
is 1 if a run failed or lost a connection or an event; missing a bar is
reported, not an error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import BUILD, machine_facts, raise_nofile, stop, taskset  # noqa: E402

#: The load client (sseload.c) and the publisher (pub.c), built by default.
DEFAULT_CLIENT_SRC = HERE / "client"
TOKEN = "t"
#: The channel every deliveries run publishes to.
PUBLISHED = "x.y"
TEN = "/subscribe?" + "&".join(f"channel=c{n}" for n in range(10))
_PORT_LINE = re.compile(r"starting on (\d+)")


@dataclass(frozen=True)
class Case:
    """One kind of subscriber, measured on a fresh server."""

    part: str
    name: str
    path: str
    #: Idle subscribers the script holds during the run: (path, count).
    idle: tuple[tuple[str, int], ...] = ()


def cases(args: argparse.Namespace) -> list[Case]:
    """The cases of the parts asked for."""
    out = []
    if "memory" in args.parts:
        out += [
            Case("memory", "one channel", "/channels/a"),
            Case("memory", "one channel via /subscribe", "/subscribe?channel=c0"),
            Case("memory", "ten channels", TEN),
        ]
    if "deliveries" in args.parts:
        patterns = (
            ("/subscribe?channel=other.*", args.patterns),
            ("/subscribe?channel=z.*", args.patterns),
        )
        out += [
            Case("deliveries", "1 plain", f"/channels/{PUBLISHED}"),
            Case(
                "deliveries",
                "2 patterns elsewhere",
                f"/channels/{PUBLISHED}",
                patterns,
            ),
            Case("deliveries", "3 pattern matches", "/subscribe?channel=x.*"),
        ]
    return out


def build(source: Path, name: str) -> Path:
    """Compile one of the harness's C programs unless it is up to date."""
    BUILD.mkdir(exist_ok=True)
    binary = BUILD / name
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    cc = os.environ.get("CC", "cc")
    subprocess.run(
        [cc, "-O2", "-Wall", "-o", str(binary), str(source)], check=True, timeout=120
    )
    return binary


def twistd() -> list[str]:
    """The virtualenv's ``twistd``, or the same through this interpreter."""
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


@contextmanager
def server(
    cpu: str,
    log_path: Path,
    args: Sequence[str] = ("--publish-token", TOKEN),
    env: dict[str, str] | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """
    A ``twistd -n sse`` with ``args`` on a free port, pinned to ``cpu``,
    its output in ``log_path``; yields it and its port.
    """
    argv = [
        *taskset(cpu),
        *twistd(),
        *("-n", "--pidfile=", "sse"),
        *("--port", "tcp:0:interface=127.0.0.1", *args),
    ]
    with (
        tempfile.TemporaryDirectory(prefix="sse-bench-") as scratch,
        open(log_path, "wb") as log,
    ):
        process = subprocess.Popen(
            argv,
            cwd=scratch,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env if env is not None else dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                found = _PORT_LINE.search(log_path.read_text(errors="replace"))
                if found:
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-500:]
                    raise RuntimeError(f"twistd did not start: {tail}")
                time.sleep(0.05)
            yield process, int(found.group(1))
        finally:
            stop(process)


def subscribe(port: int, path: str, timeout: float = 10.0) -> socket.socket:
    """One subscriber that has its response head and first frame."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    received = b""
    while True:
        head, _, body = received.partition(b"\r\n\r\n")
        if _ and b"\n\n" in body:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"{path}: closed before the first frame")
        received += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{path}: {head[:200]!r}")
    return sock


def publish(port: int, channel: str, data: str) -> None:
    """One event, over its own connection."""
    body = data.encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST /channels/{channel} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    if not answer.startswith(b"HTTP/1.1 2"):
        raise RuntimeError(f"publish: {answer[:200]!r}")


def close_all(socks: list[socket.socket]) -> None:
    """Close every socket of ``socks``."""
    for sock in socks:
        sock.close()


def run_case(
    case: Case,
    args: argparse.Namespace,
    load: Path,
    pub: Path,
    logdir: Path,
    round_: int,
) -> dict[str, Any]:
    """One fresh server, one measurement; the load client's JSON and ours."""
    n = args.memory_n if case.part == "memory" else args.deliveries_n
    base: dict[str, Any] = {
        "part": case.part,
        "case": case.name,
        "path": case.path,
        "n": n,
        "round": round_,
    }
    slug = re.sub(r"\W+", "-", case.name)
    held: list[socket.socket] = []
    try:
        with ExitStack() as stack:
            proc, port = stack.enter_context(
                server(args.server_cpu, logdir / f"{slug}-{round_}.log")
            )
            # Closed before the server stops, which then has no stream to drain.
            stack.callback(close_all, held)
            warm: tuple[tuple[str, int], ...] = ()
            if case.part == "memory":
                warm = ((case.path, args.warm),)
            else:
                # The channel exists before anyone subscribes, in every run.
                # (Held subscribers of the published channel would not read,
                # so there are none.)
                publish(port, PUBLISHED, "warm-up")
            for path, count in (*warm, *case.idle):
                held += [subscribe(port, path) for _ in range(count)]
            time.sleep(0.3)
            options: dict[str, Any] = {
                "--port": port,
                "--pid": proc.pid,
                "-n": n,
                "--label": slug,
                "--path": case.path,
                "--ready": "retry",
                "--size": args.size,
                "--rate": 0,
                "--paced-s": 0,
                "--settle": args.settle,
                "--deadline": 120,
            }
            if case.part == "memory":
                options["--sat-s"] = 0
            else:
                publisher = [
                    str(pub),
                    *("--kind", "twisted", "--port", str(port)),
                    *("--path", f"/channels/{PUBLISHED}", "--token", TOKEN),
                    *("--conns", str(args.publish_conns)),
                ]
                options["--sat-s"] = args.sat_s
                options["--pub-cmd"] = shlex.join(publisher)
            flags = [str(word) for pair in options.items() for word in pair]
            done = subprocess.run(
                [*taskset(args.client_cpu), str(load), *flags],
                capture_output=True,
                text=True,
                timeout=180,
            )
            alive = proc.poll() is None
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        return {**base, "error": str(error)[-300:]}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {**base, "error": "sseload: " + done.stderr.strip()[-300:]}
    result: dict[str, Any] = {**base, **json.loads(lines[-1]), "server_alive": alive}
    result["held"] = len(held)
    result["lost_connections"] = int(result["failed"] + result["dropped"])
    result["lost_events"] = 0
    if case.part == "deliveries":
        # Several publish requests are in flight, so the server may publish
        # them in another order than their sequence numbers: gaps and
        # reordering in those numbers are expected, not losses.  An event
        # missing on a connection, or arriving twice, is.
        result["lost_events"] = int(max(result["sat_missing"], 0) + result["sat_dups"])
        result["lost_connections"] += int(result["sat_timed_out"])
    return result


def median(runs: list[dict[str, Any]], key: str) -> float:
    """The median of one number over several runs."""
    return float(statistics.median(float(r[key]) for r in runs))


def _verdict(ratio: float, bar: float, at_most: bool) -> str:
    met = ratio <= bar if at_most else ratio >= bar
    return "met" if met else "**missed**"


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown tables of medians, with the bars."""
    ok = [r for r in results if "error" not in r]
    out = []
    errors = [r for r in results if "error" in r]
    for r in errors:
        out.append(f"error in {r['case']} (round {r['round']}): {r['error']}")
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in ok:
        by_case.setdefault(r["case"], []).append(r)
    memory = [c for c in cases(args) if c.part == "memory" and c.name in by_case]
    if memory:
        out += [
            "",
            f"memory: {args.memory_n} idle subscribers per server (after "
            f"{args.warm} held ones), server RSS growth / N; medians of "
            f"{args.repeat}",
            "",
            "| subscriber | path | KB/subscriber (runs) | median | x /channels/a "
            "| x /subscribe?channel=c0 | lost conns |",
            "|---|---|---|---|---|---|---|",
        ]
        kb = {c.name: median(by_case[c.name], "rss_per_conn_kb") for c in memory}
        one, via = kb.get("one channel"), kb.get("one channel via /subscribe")
        for c in memory:
            runs = by_case[c.name]
            each = " / ".join(f"{r['rss_per_conn_kb']:.2f}" for r in runs)
            ratio_one = f"{kb[c.name] / one:.2f}x" if one else "-"
            ratio_via = f"{kb[c.name] / via:.2f}x" if via else "-"
            lost = sum(r["lost_connections"] for r in runs)
            shown = c.path if len(c.path) < 40 else c.path[:34] + "...c9"
            out.append(
                f"| {c.name} | `{shown}` | {each} | {kb[c.name]:.2f} "
                f"| {ratio_one} | {ratio_via} | {lost} |"
            )
        ten = kb.get("ten channels")
        if ten is not None:
            out.append("")
            for label, against in (
                ("/channels/a", one),
                ("/subscribe?channel=c0", via),
            ):
                if against:
                    ratio = ten / against
                    out.append(
                        f"bar, ten channels <= 1.5x one channel ({label}): "
                        f"{ratio:.2f}x, {_verdict(ratio, 1.5, at_most=True)}"
                    )
    deliveries = [
        c for c in cases(args) if c.part == "deliveries" and c.name in by_case
    ]
    if deliveries:
        out += [
            "",
            f"deliveries: {args.deliveries_n} subscribers, {args.size}-byte "
            f"events POSTed to /channels/{PUBLISHED}, {args.publish_conns} "
            f"in flight, {args.sat_s:g} s; medians of {args.repeat}",
            "",
            "| run | subscribers | deliveries/s (runs) | median | x run 1 "
            "| per server CPU-s | x run 1 | srv CPU | cli CPU | lost conns / events |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        rate = {
            c.name: median(by_case[c.name], "sat_deliveries_per_s") for c in deliveries
        }
        cost = {
            c.name: median(by_case[c.name], "sat_deliveries_per_server_cpu_s")
            for c in deliveries
        }
        first, first_cost = rate.get("1 plain"), cost.get("1 plain")
        for c in deliveries:
            runs = by_case[c.name]
            each = " / ".join(f"{r['sat_deliveries_per_s']:,.0f}" for r in runs)
            who = f"{args.deliveries_n} on `{c.path}`"
            for path, count in c.idle:
                who += f" + {count} idle on `{path}`"
            cli = median(runs, "sat_client_cpu_util")
            flag = " (!)" if cli > 0.9 else ""
            by_rate = f"{rate[c.name] / first:.2f}x" if first else "-"
            by_cost = f"{cost[c.name] / first_cost:.2f}x" if first_cost else "-"
            out.append(
                f"| {c.name} | {who} | {each} | {rate[c.name]:,.0f} | {by_rate} "
                f"| {cost[c.name]:,.0f} | {by_cost} "
                f"| {100 * median(runs, 'sat_server_cpu_util'):.0f}% "
                f"| {100 * cli:.0f}%{flag} "
                f"| {sum(r['lost_connections'] for r in runs)} / "
                f"{sum(r['lost_events'] for r in runs)} |"
            )
        if first and first_cost:
            out.append("")
            for name in ("2 patterns elsewhere", "3 pattern matches"):
                if name in rate:
                    ratio = rate[name] / first
                    out.append(
                        f"bar, run {name} >= 0.9x run 1: {ratio:.2f}x, "
                        f"{_verdict(ratio, 0.9, at_most=False)} (per server "
                        f"CPU-second: {cost[name] / first_cost:.2f}x)"
                    )
    return "\n".join(out).lstrip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts", default="memory,deliveries", help="memory, deliveries or both"
    )
    parser.add_argument("--memory-n", type=int, default=2000, help="idle subscribers")
    parser.add_argument(
        "--deliveries-n", type=int, default=1000, help="subscribers that read"
    )
    parser.add_argument(
        "--patterns", type=int, default=100, help="idle subscribers per pattern (run 2)"
    )
    parser.add_argument("--warm", type=int, default=10, help="subscribers held first")
    parser.add_argument("--size", type=int, default=64, help="bytes of data: frame")
    parser.add_argument("--sat-s", type=float, default=4, help="seconds of publishing")
    parser.add_argument(
        "--publish-conns", type=int, default=4, help="publish requests in flight"
    )
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds before reading the RSS"
    )
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds")
    two_cores = (os.cpu_count() or 1) >= 2
    parser.add_argument(
        "--server-cpu", default="0" if two_cores else "", help="'' = no pinning"
    )
    parser.add_argument(
        "--client-cpu", default="1" if two_cores else "", help="'' = no pinning"
    )
    parser.add_argument(
        "--client-src",
        default=str(DEFAULT_CLIENT_SRC),
        help="the folder of sseload.c (with --path and --pub-cmd) and pub.c "
        "[default: bench/client]",
    )
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = set(args.parts) - {"memory", "deliveries"}
    if unknown:
        parser.error(f"unknown part {sorted(unknown)[0]!r}: use memory, deliveries")
    source = Path(args.client_src)
    if not (source / "sseload.c").exists() or not (source / "pub.c").exists():
        parser.error(f"no sseload.c and pub.c in {source}: see --client-src")
    needed = max(args.memory_n, args.deliveries_n) + 2 * args.patterns + 200
    hard = raise_nofile(needed)
    if hard < needed:
        parser.error(f"RLIMIT_NOFILE hard limit {hard} is below {needed}")
    load = build(source / "sseload.c", "harness-sseload")
    pub = build(source / "pub.c", "harness-pub")

    out = Path(args.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logdir = out / f"{stamp}-subscriptions-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    facts: dict[str, Any] = machine_facts(args.client_cpu, args.server_cpu)
    facts["loadavg"] = Path("/proc/loadavg").read_text().split()[0]
    print("# machine: " + json.dumps(facts), flush=True)
    started = time.monotonic()
    results = []
    with open(out / f"{stamp}-subscriptions.jsonl", "w") as jsonl:
        jsonl.write(json.dumps({"facts": facts, "argv": sys.argv[1:]}) + "\n")
        for round_ in range(args.repeat):
            for case in cases(args):
                result = run_case(case, args, load, pub, logdir, round_)
                line = json.dumps(result)
                print(line, flush=True)
                jsonl.write(line + "\n")
                results.append(result)
    text = report(results, args)
    text += (
        f"\n\nserver cpu {args.server_cpu or '-'}, client cpu "
        f"{args.client_cpu or '-'}; {time.monotonic() - started:.0f} s"
    )
    print("\n" + text)
    (out / f"{stamp}-subscriptions.md").write_text(f"{json.dumps(facts)}\n\n{text}\n")
    bad = [
        r
        for r in results
        if "error" in r
        or r["lost_connections"]
        or r["lost_events"]
        or r["connected"] != r["n"]
        or not r["server_alive"]
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
