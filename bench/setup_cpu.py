"""
Connection setup, measured closely: the server CPU time spent opening N
streams, and what CPython's cyclic garbage collector took of it.

    python bench/setup_cpu.py                          # N=10000, 5 runs each
    python bench/setup_cpu.py --sizes 1000,10000 --repeat 7
    python bench/setup_cpu.py --naive ../shared/bench/peers/twisted_peer.py

For each server (``stream`` and ``hub``: ``bench/peer.py``; ``naive``: the
shared harness's plain twisted.web peer, when ``--naive`` names it), this
starts it pinned to one core and ``sseload`` pinned to the other, opens N
connections, and reads the server's user+system CPU time from ``/proc``
before the first connection and once it has gone idle with all N open.
That is steadier than the harness's setup rate, which also counts the load
client's side and the scheduler's noise: the rate varies by about 10 %
between runs, the CPU time by about 3 %.

The server runs with a ``gc.callbacks`` hook that counts
collections by generation and their time, reported at exit: most of what
setup costs beyond Python's own work is full collections, whose number and
length grow with the objects each open connection keeps.

Prints one JSON line per run and a table of medians.  Loopback only; needs
````taskset`` and a C compiler (``sseload`` is built as ``run.py`` builds it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import _ready, build_client, free_port, raise_nofile, taskset  # noqa: E402

#: Runs the server with a gc.callbacks hook; writes the counts at exit.
_GC_HOOK = """
import atexit, gc, json, os, runpy, sys, time
stats = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
started = [0.0]
def hook(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        entry = stats[info["generation"]]
        entry[0] += 1
        entry[1] += time.perf_counter() - started[0]
gc.callbacks.append(hook)
def report():
    with open(os.environ["SETUP_CPU_GC"], "w") as out:
        json.dump(stats, out)
atexit.register(report)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clients(port: int) -> int:
    """The open streams the server counts (its ``/stats``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats") as answer:
        count: int = json.load(answer)["clients"]
    return count


def one_run(
    name: str, command: list[str], n: int, client: Path, cpus: tuple[str, str]
) -> dict[str, Any]:
    port = free_port()
    server_cpu, client_cpu = (taskset(cpu) for cpu in cpus)
    with tempfile.TemporaryDirectory() as scratch:
        hook = Path(scratch) / "gc_hook.py"
        hook.write_text(_GC_HOOK)
        gc_out = Path(scratch) / "gc.json"
        argv = [sys.executable, str(hook), *command, "--port", str(port)]
        server = subprocess.Popen(
            server_cpu + argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, SETUP_CPU_GC=str(gc_out)),
        )
        try:
            deadline = time.monotonic() + 30
            while not _ready(port):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"{name} did not answer on port {port}")
                time.sleep(0.05)
            time.sleep(0.3)
            before = cpu_seconds(server.pid)
            options = {
                "--port": port,
                "--pid": server.pid,
                "-n": n,
                "--rate": 1,
                "--paced-s": 0,
                "--sat-s": 0,
                "--settle": 3,
                "--deadline": 120,
            }
            flags = [str(word) for pair in options.items() for word in pair]
            load = subprocess.Popen(
                [*client_cpu, str(client), *flags], stdout=subprocess.PIPE, text=True
            )
            # Every connection open (the server counts them), then idle:
            # three equal readings in a row.
            deadline = time.monotonic() + 120
            while clients(port) < n and time.monotonic() < deadline:
                time.sleep(0.1)
            last, same = cpu_seconds(server.pid), 0
            while same < 3:
                time.sleep(0.1)
                now = cpu_seconds(server.pid)
                same = same + 1 if now == last else 0
                last = now
            output = load.communicate(timeout=180)[0]
        finally:
            server.terminate()
            server.wait(timeout=30)
        gc_stats = json.loads(gc_out.read_text()) if gc_out.exists() else {}
    lines = [line for line in output.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    return {
        "server": name,
        "n": n,
        "setup_cpu_s": round(last - before, 3),
        "setup_rate": result.get("setup_rate"),
        "connected": result.get("connected"),
        "full_collections": gc_stats.get("2", [None])[0],
        "gc_s": round(sum(t for _, t in gc_stats.values()), 3) if gc_stats else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000", help="connection counts")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--servers", default="naive,stream,hub")
    parser.add_argument(
        "--naive",
        default=str(
            HERE.parent.parent / "shared" / "bench" / "peers" / "twisted_peer.py"
        ),
        help="the shared harness's twisted_peer.py (skipped when missing)",
    )
    two_cores = (os.cpu_count() or 1) >= 2
    parser.add_argument(
        "--server-cpu", default="0" if two_cores else "", help="'' = no pinning"
    )
    parser.add_argument(
        "--client-cpu", default="1" if two_cores else "", help="'' = no pinning"
    )
    args = parser.parse_args(argv)
    commands = {
        "naive": [args.naive],
        "stream": [str(HERE / "peer.py")],
        "hub": [str(HERE / "peer.py"), "--via", "hub"],
    }
    servers = [s for s in args.servers.split(",") if s]
    if "naive" in servers and not Path(args.naive).exists():
        print(f"no naive peer at {args.naive}: skipped", file=sys.stderr)
        servers.remove("naive")
    sizes = [int(size) for size in args.sizes.split(",")]
    if raise_nofile(max(sizes) + 100) < max(sizes) + 100:
        print(
            f"the fd limit is below {max(sizes) + 100}: see README.md", file=sys.stderr
        )
        return 2
    client = build_client()
    results: list[dict[str, Any]] = []
    for n in sizes:
        for _ in range(args.repeat):
            # Interleaved, so that a change in the machine's load hits all.
            for name in servers:
                result = one_run(
                    name, commands[name], n, client, (args.server_cpu, args.client_cpu)
                )
                print(json.dumps(result), flush=True)
                results.append(result)
    print()
    print("| N | server | setup CPU s (median) | conn/s (median) | full GCs | GC s |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        for name in servers:
            runs = [r for r in results if r["server"] == name and r["n"] == n]
            cpu = statistics.median(r["setup_cpu_s"] for r in runs)
            rate = statistics.median(r["setup_rate"] or 0 for r in runs)
            full = statistics.median(r["full_collections"] or 0 for r in runs)
            gc_s = statistics.median(r["gc_s"] or 0 for r in runs)
            print(f"| {n} | {name} | {cpu:.3f} | {rate:,.0f} | {full:g} | {gc_s:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
