"""
Benchmark twisted_sse's broadcast: one command, loopback only.

    python bench/run.py                       # N = 100, 1000, 10000; ~1.5 min
    python bench/run.py --sizes 1000 --repeat 3
    python bench/run.py --configs stream --sizes 10 --paced-s 1 --sat-s 1

For every configuration (``stream``: an EventStreamResource fanning out to
its streams; ``hub-memory``: the hub on the in-memory broker; ``hub-redis``:
the hub on ``twisted_sse.RedisBroker`` with a private ``redis-server``, run
only when both exist) and every connection count N, this starts
``bench/peer.py`` (the shared harness's workload contract) pinned to one core
and the C load client ``bench/client/sseload.c`` (built here with ``cc``,
single-threaded epoll, never the bottleneck below ~150k deliveries/s) pinned
to the other, then reports:

- ``setup_rate``: connections made ready per second (headers + first frame),
- ``rss_per_conn_kb``: the server's RSS growth per idle connection,
- ``paced_lat_p50_ms`` / ``paced_lat_p99_ms``: publish-to-receipt latency at
  clamp(10000/N, 1, 100) events/s,
- ``sat_deliveries_per_s``: events received per second, all clients summed,
  with one event published per reactor turn,
- ``lost_connections`` / ``lost_events``: connections failed or dropped, and
  events missing or out of sequence on any connection: must be 0.

Output: one JSON line per run on stdout (also in ``<out>/<stamp>.jsonl``),
then a table (also in ``<out>/<stamp>.md``).  The exit status is 1 if any
run lost a connection or an event, or failed.

File descriptors: N clients need N sockets in the client and N in the
server.  The runner raises its soft ``RLIMIT_NOFILE`` to the hard limit (and
the hard limit too when it may, as root) and its children inherit it; if the
hard limit is below N + 100 it stops with a message: raise it with
``ulimit -Hn`` or ``/etc/security/limits.conf``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CLIENT_SOURCE = HERE / "client" / "sseload.c"
BUILD = HERE / "build"

#: Configuration name -> peer.py arguments.
CONFIGS: dict[str, list[str]] = {
    "stream": ["--via", "stream"],
    "hub-memory": ["--via", "hub", "--broker", "memory"],
    "hub-redis": ["--via", "hub", "--broker", "redis"],
}
#: Keys every result line has (the smoke test checks them).
RESULT_KEYS = (
    "config",
    "n",
    "connected",
    "setup_rate",
    "rss_per_conn_kb",
    "paced_lat_p50_ms",
    "paced_lat_p99_ms",
    "sat_deliveries_per_s",
    "sat_lat_p50_ms",
    "sat_lat_p99_ms",
    "lost_connections",
    "lost_events",
)


def build_client() -> Path:
    """Compile the load client if it is missing or older than its source."""
    BUILD.mkdir(exist_ok=True)
    binary = BUILD / "sseload"
    if binary.exists() and binary.stat().st_mtime >= CLIENT_SOURCE.stat().st_mtime:
        return binary
    cc = os.environ.get("CC", "cc")
    subprocess.run(
        [cc, "-O2", "-Wall", "-o", str(binary), str(CLIENT_SOURCE)],
        check=True,
        timeout=120,
    )
    return binary


def raise_nofile(needed: int) -> int:
    """Raise the soft fd limit to the hard one (and the hard one if allowed)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            hard = needed
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _child_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_available() -> bool:
    """Whether a RedisBroker exists and a redis-server can be started."""
    import twisted_sse

    return (
        hasattr(twisted_sse, "RedisBroker") and shutil.which("redis-server") is not None
    )


def start_redis(logdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = open(logdir / "redis.log", "wb")  # noqa: SIM115 - closed with the child
    process = subprocess.Popen(
        [
            "redis-server",
            *("--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, f"redis://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("redis-server did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def taskset(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus] if cpus and shutil.which("taskset") else []


def start_peer(
    config: str, args: argparse.Namespace, log_path: Path, redis_url: str | None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start bench/peer.py on a free port; return it and its port."""
    argv = [sys.executable, str(HERE / "peer.py"), "--port", "0", *CONFIGS[config]]
    if redis_url is not None:
        argv += ["--redis-url", redis_url]
    env = dict(
        os.environ,
        SSE_SIZE=str(args.size),
        SSE_BACKLOG="1024",
        SSE_MAX_LIFETIME=str(args.deadline + 60),
        PYTHONUNBUFFERED="1",
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            taskset(args.server_cpu) + argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_child_nofile,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        for line in log_path.read_text(errors="replace").splitlines():
            if " listening on " in line:
                port = int(line.rsplit(":", 1)[1])
                if _ready(port):
                    return process, port
        time.sleep(0.1)
    stop(process)
    tail = log_path.read_text(errors="replace")[-500:]
    raise RuntimeError(f"peer {config} did not start: {tail}")


def _ready(port: int) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/stats"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def run_one(
    config: str,
    n: int,
    args: argparse.Namespace,
    client: Path,
    logdir: Path,
    redis_url: str | None,
) -> dict[str, Any]:
    """One server, one client run; the client's JSON plus our verdict."""
    base: dict[str, Any] = {"config": config, "n": n}
    try:
        log_path = logdir / f"{config}-{n}.log"
        process, port = start_peer(config, args, log_path, redis_url)
    except RuntimeError as error:
        return {**base, "error": str(error)}
    try:
        time.sleep(0.3)
        rate = min(100.0, max(1.0, args.paced_deliveries / n))
        cmd = [
            *taskset(args.client_cpu),
            str(client),
            "--port", str(port),
            "--pid", str(process.pid),
            "-n", str(n),
            "--label", config,
            "--size", str(args.size),
            "--rate", f"{rate:g}",
            "--paced-s", str(args.paced_s),
            "--sat-s", str(args.sat_s),
            "--inflight", str(args.inflight),
            "--deadline", str(args.deadline),
        ]  # fmt: skip
        load = float(Path("/proc/loadavg").read_text().split()[0])
        try:
            out = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=args.deadline + 40,
                preexec_fn=_child_nofile,
            )
        except subprocess.TimeoutExpired:
            return {**base, "error": "client timeout"}
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if not lines:
            return {**base, "error": "client: " + out.stderr.strip()[-300:]}
        result: dict[str, Any] = {**base, **json.loads(lines[-1])}
        result["config"] = config
        result["loadavg_before"] = load
        result["server_alive"] = process.poll() is None
    finally:
        stop(process)
    result["lost_connections"] = int(result.get("failed", 0) + result.get("dropped", 0))
    result["lost_events"] = int(
        sum(
            max(result.get(f"{phase}_missing", 0), 0) + result.get(f"{phase}_gaps", 0)
            for phase in ("paced", "sat")
        )
    )
    result["timed_out"] = int(
        result.get("paced_timed_out", 0) or result.get("sat_timed_out", 0)
    )
    return result


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric median across repeats; losses are summed, not medianed."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
            out[key] = statistics.median(values)
    for key in ("lost_connections", "lost_events", "timed_out"):
        out[key] = sum(r.get(key, 0) for r in runs)
    out["repeats"] = len(runs)
    return out


def _num(value: Any, digits: int = 0) -> str:
    if not isinstance(value, int | float) or value < 0:
        return "-"
    return f"{value:,.{digits}f}"


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| N | config | conn/s | RSS KB/conn | paced p50 / p99 ms | sat deliveries/s "
        "| sat p50 / p99 ms | srv CPU | cli CPU | lost conns / events |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['n']} | {r['config']} | error: {r['error'][:80]} |")
            continue
        client_cpu = r.get("sat_client_cpu_util", 0)
        flag = " (!)" if client_cpu > 0.9 else ""
        rows.append(
            f"| {r['n']} | {r['config']} | {_num(r.get('setup_rate'))} "
            f"| {_num(r.get('rss_per_conn_kb'), 1)} "
            f"| {_num(r.get('paced_lat_p50_ms'), 1)} / "
            f"{_num(r.get('paced_lat_p99_ms'), 1)} "
            f"| {_num(r.get('sat_deliveries_per_s'))} "
            f"| {_num(r.get('sat_lat_p50_ms'), 1)} / "
            f"{_num(r.get('sat_lat_p99_ms'), 1)} "
            f"| {_num(100 * r.get('sat_server_cpu_util', 0))}% "
            f"| {_num(100 * client_cpu)}%{flag} "
            f"| {r['lost_connections']} / {r['lost_events']} |"
        )
    return "\n".join(rows)


def machine_facts(client_cpu: str, server_cpu: str) -> dict[str, Any]:
    import twisted
    import twisted_sse

    def first(path: str, prefix: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpu": first("/proc/cpuinfo", "model name"),
        "nproc": os.cpu_count(),
        "mem": first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "twisted_sse": twisted_sse.__version__,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "server_cpu": server_cpu or "-",
        "client_cpu": client_cpu or "-",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,1000,10000", help="connection counts")
    parser.add_argument(
        "--configs",
        default="auto",
        help="comma-separated of stream, hub-memory, hub-redis; auto = the first "
        "two, plus hub-redis when twisted_sse.RedisBroker and redis-server exist",
    )
    parser.add_argument("--size", type=int, default=64, help="frame bytes")
    parser.add_argument("--paced-deliveries", type=float, default=10000)
    parser.add_argument("--paced-s", type=float, default=2)
    parser.add_argument("--sat-s", type=float, default=4)
    parser.add_argument("--inflight", type=int, default=256)
    parser.add_argument("--deadline", type=float, default=120, help="per client run")
    parser.add_argument("--repeat", type=int, default=1)
    two_cores = (os.cpu_count() or 1) >= 2
    parser.add_argument(
        "--server-cpu", default="0" if two_cores else "", help="'' = no pinning"
    )
    parser.add_argument(
        "--client-cpu", default="1" if two_cores else "", help="'' = no pinning"
    )
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)

    sizes = [int(x) for x in args.sizes.split(",") if x]
    if args.configs == "auto":
        configs = ["stream", "hub-memory"]
        if redis_available():
            configs.append("hub-redis")
    else:
        configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown config {unknown[0]!r}: use {', '.join(CONFIGS)}")
    hard = raise_nofile(max(sizes) + 1000)
    if max(sizes) + 100 > hard:
        parser.error(f"RLIMIT_NOFILE hard limit {hard} is too low for N={max(sizes)}")
    client = build_client()

    out = Path(args.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logdir = out / f"{stamp}-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    facts = machine_facts(args.client_cpu, args.server_cpu)
    print("# machine: " + json.dumps(facts), flush=True)
    redis: subprocess.Popen[bytes] | None = None
    redis_url = None
    if "hub-redis" in configs:
        redis, redis_url = start_redis(logdir)
    results = []
    started = time.monotonic()
    try:
        with open(out / f"{stamp}.jsonl", "w") as jsonl:
            jsonl.write(json.dumps({"facts": facts, "argv": sys.argv[1:]}) + "\n")
            for n in sizes:
                for config in configs:
                    url = redis_url if config == "hub-redis" else None
                    runs = []
                    for _ in range(args.repeat):
                        result = run_one(config, n, args, client, logdir, url)
                        line = json.dumps(result)
                        print(line, flush=True)
                        jsonl.write(line + "\n")
                        jsonl.flush()
                        runs.append(result)
                    ok = [r for r in runs if "error" not in r]
                    results.append(median_run(ok) if ok else runs[-1])
    finally:
        if redis is not None:
            stop(redis)
    summary = (
        f"frame {args.size} B; paced clamp({args.paced_deliveries:g}/N, 1, 100) ev/s "
        f"for {args.paced_s:g} s; saturation {args.sat_s:g} s; server cpu "
        f"{args.server_cpu or '-'}, client cpu {args.client_cpu or '-'}; "
        f"medians of {args.repeat}; {time.monotonic() - started:.0f} s"
    )
    report = summary + "\n\n" + table(results)
    print("\n" + report)
    (out / f"{stamp}.md").write_text(f"{json.dumps(facts)}\n\n{report}\n")
    bad = [
        r
        for r in results
        if "error" in r or r["lost_connections"] or r["lost_events"] or r["timed_out"]
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
