"""
Large runs of our hub: tens of thousands of subscribers on ``twistd -n
sse``, the load spread over several load-client processes and source
addresses, on 127.0.0.1:

    python bench/large.py --n 18000                    # one process
    python bench/large.py --procs 6 --broker redis --n 100000
    python bench/large.py --n 4000 --events 10 --sat-s 4    # a quick look

The hubs (``--procs``, ``--broker``):

``--procs 1`` (the default)
    one ``twistd -n sse`` on the memory broker: the most subscribers one
    process can hold (``--n 18000``).
``--procs P --broker redis``
    P ``twistd -n sse`` processes, each on its own port, sharing one Redis
    (``--redis-url``, ``redis://127.0.0.1:6379/14``, a Redis this script
    does not start): ``--n 100000`` over six processes.

Every hub runs as ``bench/hub.py`` runs ``twisted_sse``: ``--access-log off
--stream-log off --heartbeat 0``, pinned to ``--server-cpu`` (0);
``--spread-hubs`` pins hub k to the k-th CPU of that list instead (``--server-cpu
0,1 --spread-hubs``: hubs on both cores, round-robin; a plain ``0,1`` lets
every hub run on either).  The channel is new for every run
(``large-<stamp>-<pid>``), so that nothing else publishing into the same
Redis reaches its subscribers.

The load: ``--clients`` K processes of the C load client ``sseload``
(``bench/client/sseload.c``, built with ``cc -O2`` into ``bench/build/``) in
its ``--follow`` mode, by default as many as keep each at 16,000
subscribers or fewer.  Client k holds its share of N, opened from the source
address 127.0.0.(2 + k) (``--first-address``), its subscribers spread
round-robin over the hubs' ports, at most ``--inflight`` (256) set-ups at
once over all clients.  The clients and the publisher ``pub``
(``bench/client/pub.c``) are pinned to ``--client-cpu`` (1).  This script
starts the hubs, then the clients, tells them when each phase begins and
which events were published, and merges what they report.  Three workloads,
in this order, each a row:

setup
    N subscribers open ``GET /channels/<channel>``; one is ready at its first
    frame (``retry:``).  ``setup_conn_per_s``: the subscribers over the time
    from the first connect to the last ready, all clients together;
    ``rss_per_conn_kb``: the growth of the hubs' RSS (``VmRSS``, every hub
    summed) from before the first connect to ``--settle`` (1) seconds after
    the last ready, over the subscribers connected.
paced
    ``--events`` (20) events, one every ``--interval`` (1) seconds,
    published by ``pub`` to the first hub over one keep-alive connection
    (the others get them through Redis).  ``p50_ms``, ``p99_ms``, ``max_ms``:
    the latency of every delivery, from ``pub``'s clock just before it sends
    the event to the subscriber's ``recv()``, the clients' histograms
    merged.
saturation
    ``--size`` (64) byte events posted as fast as the hubs answer, for
    ``--sat-s`` (10) seconds: one ``pub`` per hub (``--publishers``), each
    with a share of ``--publish-conns`` (4, at least 1 each) requests in
    flight.  ``deliveries_per_s``: the events received, all subscribers
    summed, over the time from the first receipt to the last, all clients
    together; the latency meanwhile.

In both publishing workloads every subscriber checks every event it gets
against the sequence numbers the publishers announce: ``lost`` is the
events a subscriber that stayed connected had not received
``--drain-timeout`` (60) seconds after the last publish, summed over
subscribers (exact: each keeps a bitmap); ``duplicated`` the events one
received twice; ``died`` the subscribers whose connection ended during the
phase (their missing events are ``lost_on_died``, not ``lost``).
``reordered`` counts events received after one with a higher sequence
number: not a loss, and with several publishers, whose ranges of sequence
numbers interleave, no sign of anything.

Output: a ``# machine:`` line, a ``# layout:`` line (where each hub and
client runs, their shares), then one JSON object a line per workload with
``peer`` (``twisted_sse`` or ``twisted_sse-redis``), ``n``, ``procs``,
``clients``, ``workload``, ``setup_conn_per_s``, ``rss_per_conn_kb``,
``deliveries_per_s``, ``p50_ms``, ``p99_ms``, ``max_ms``, ``lost`` and
``duplicated`` (null where they do not apply) and more; the same lines go
to ``--out`` (``bench/results/<stamp>-large.jsonl``), the hubs' logs and the
clients' standard error to ``<name>-logs/``.  A hub that cannot start, or a
client that fails, gives rows with an ``error`` field; the exit status is
then 1.  Limits are checked first: a process may hold only so many
descriptors (``ulimit -Hn``), and each source address has the ephemeral
ports of ``net.ipv4.ip_local_port_range``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hub import (  # noqa: E402
    FD_MARGIN,
    TOKEN,
    Hub,
    HubError,
    _die_with_parent,
    _interrupt,
    at_least,
    redis_problem,
    tail,
    terminate,
    twisted_hub,
)
from run import machine_facts, raise_nofile, taskset  # noqa: E402
from subscriptions import DEFAULT_CLIENT_SRC, build  # noqa: E402

WORKLOADS = ("setup", "paced", "saturation")
#: The measurements every row carries, null where they do not apply.
FIELDS = (
    "setup_conn_per_s",
    "rss_per_conn_kb",
    "deliveries_per_s",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "lost",
    "duplicated",
)
#: Subscribers one client holds at most when --clients is not given.
PER_CLIENT = 16000
#: Descriptors a client needs beyond one per subscriber (sseload's own check).
CLIENT_MARGIN = 64
#: Seconds a client has, beyond its own timeouts, to answer a command.
SLACK = 60.0
TICK = os.sysconf("SC_CLK_TCK")


class LargeError(Exception):
    """A client or publisher failed; the message says why."""


# The processes


def rss_kb(pid: int) -> int:
    """The resident set of ``pid`` in KB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LargeError(f"process {pid} has no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of ``pid`` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def alive(hubs: Sequence[Hub]) -> None:
    """:raises LargeError: when a hub process has died."""
    gone = [
        pid for hub in hubs for pid in hub.pids if not Path(f"/proc/{pid}").exists()
    ]
    if gone:
        raise LargeError(f"hub processes {gone} died during the run")


@dataclass
class Follower:
    """A load client in ``--follow`` mode: commands in, JSON lines out."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    share: int
    address: str
    ports: tuple[int, ...]
    buffer: bytes = b""

    def gone(self) -> LargeError:
        """Why it stopped answering: its exit status and the end of its log."""
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        return LargeError(
            f"{self.name} exited with status {self.process.returncode}: "
            f"{tail(self.log)}"
        )

    def send(self, command: str) -> None:
        """Write one command line."""
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(command.encode() + b"\n")
            stdin.flush()
        except OSError:
            raise self.gone() from None

    def read(self, event: str, deadline: float) -> dict[str, Any]:
        """
        The next line reporting ``event``; an ``error`` line is raised.

        :raises LargeError: at the line ``{"event": "error"}``, at the end
            of the client's output, or at ``deadline`` (``time.monotonic``).
        """
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            line, newline, rest = self.buffer.partition(b"\n")
            if newline:
                self.buffer = rest
                if not line.startswith(b"{"):
                    continue
                report: dict[str, Any] = json.loads(line)
                if report.get("event") == "error":
                    raise LargeError(f"{self.name}: {report.get('message')}")
                if report.get("event") == event:
                    return report
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise LargeError(f"{self.name} gave no {event!r} line in time")
            ready, _, _ = select.select([stdout.fileno()], [], [], left)
            if not ready:
                continue
            chunk = os.read(stdout.fileno(), 65536)
            if not chunk:
                raise self.gone()
            self.buffer += chunk


def shares(n: int, k: int) -> list[int]:
    """``n`` split into ``k`` parts that differ by one at most."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def start_followers(
    stack: ExitStack,
    args: argparse.Namespace,
    sseload: Path,
    ports: Sequence[int],
    path: str,
    logdir: Path,
) -> list[Follower]:
    """Start the ``--clients`` load clients; their ready lines are not read."""
    followers = []
    first = 0
    parts = shares(args.n, args.clients)
    inflight = [max(1, part) for part in shares(args.inflight, args.clients)]
    deadline = (
        args.connect_timeout
        + args.settle
        + args.events * args.interval
        + args.sat_s
        + 2 * (args.drain_timeout + SLACK)
        + 120
    )
    for k, share in enumerate(parts):
        address = f"127.0.0.{args.first_address + k}"
        # Subscriber g of all (client k's i-th is first + i) goes to port
        # g mod P: every hub gets its share whatever the clients hold.
        shift = first % len(ports)
        rotated = (*ports[shift:], *ports[:shift])
        first += share
        name = f"client-{k}"
        argv = [
            *taskset(args.client_cpu),
            str(sseload),
            "--follow",
            *("--label", name, "-n", str(share), "--bind", address),
            *("--ports", ",".join(str(port) for port in rotated)),
            *("--path", path, "--ready", "retry", "--inflight", str(inflight[k])),
            *("--connect-timeout", f"{args.connect_timeout:g}"),
            *("--drain-timeout", f"{args.drain_timeout:g}"),
            *("--deadline", f"{deadline:g}"),
        ]
        log = logdir / f"{name}.log"
        log.write_text(shlex.join(argv) + "\n")
        with open(log, "ab") as err:
            try:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as error:
                raise LargeError(f"cannot run {sseload}: {error}") from error
        stack.callback(terminate, process, 5.0)
        followers.append(
            Follower(name, process, log, share, address, tuple(int(p) for p in rotated))
        )
    return followers


def quit_followers(followers: Sequence[Follower]) -> None:
    """Tell every client to close its subscribers and exit."""
    for follower in followers:
        with suppress(OSError, LargeError):
            follower.send("quit")
            assert follower.process.stdin is not None
            follower.process.stdin.close()
    for follower in followers:
        with suppress(subprocess.TimeoutExpired):
            follower.process.wait(timeout=20)


# Publishing


@dataclass(frozen=True)
class Published:
    """What one ``pub`` run published: its reply, and its first sequence number."""

    start: int
    reply: dict[str, Any]

    @property
    def last(self) -> int:
        """The last sequence number it sent (accepted or not)."""
        return self.start + int(self.reply["attempted"]) - 1


def publish(
    args: argparse.Namespace,
    pub: Path,
    runs: Sequence[tuple[Hub, int, int]],
    rate: float,
    duration: float,
    conns: int,
    path: str,
    logdir: Path,
) -> list[Published]:
    """
    One ``pub`` per ``(hub, first seq, count)`` of ``runs``, all at once;
    what each published.
    """
    started = []
    for k, (hub, first, count) in enumerate(runs):
        argv = [
            *taskset(args.client_cpu),
            str(pub),
            *("--kind", "twisted", "--port", str(hub.port), "--path", path),
            *("--token", TOKEN, "--rate", f"{rate:g}", "--count", str(count)),
            *("--duration", f"{duration:g}", "--start-seq", str(first)),
            *("--size", str(args.size), "--conns", str(conns)),
        ]
        log = logdir / f"pub-{k}.log"
        with open(log, "ab") as err:
            err.write((shlex.join(argv) + "\n").encode())
            err.flush()
            try:
                process = subprocess.Popen(
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as error:
                raise LargeError(f"cannot run {pub}: {error}") from error
        started.append((process, log, first))
    results = []
    deadline = time.monotonic() + duration + 90
    try:
        for process, log, first in started:
            try:
                out, _ = process.communicate(
                    timeout=max(1.0, deadline - time.monotonic())
                )
            except subprocess.TimeoutExpired:
                raise LargeError(
                    f"the publisher ran over {duration + 90:g} s"
                ) from None
            lines = [line for line in out.decode().splitlines() if line.startswith("{")]
            if not lines:
                raise LargeError(
                    f"the publisher failed ({process.returncode}): {tail(log)}"
                )
            results.append(Published(first, json.loads(lines[-1])))
    finally:
        for process, _, _ in started:
            terminate(process, grace=2.0)
    return results


# Merging the clients' reports


def merge_histograms(reports: Sequence[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """The clients' latency buckets summed: ``(lo_us, hi_us, count)``, sorted."""
    counts: dict[tuple[int, int], int] = {}
    for report in reports:
        for lo, hi, count in report["lat_hist"]:
            counts[(lo, hi)] = counts.get((lo, hi), 0) + count
    return sorted((lo, hi, count) for (lo, hi), count in counts.items())


def percentile_ms(buckets: Sequence[tuple[int, int, int]], p: float) -> float | None:
    """
    The ``p`` quantile (0 to 1) of merged buckets, in milliseconds, at the
    middle of its bucket (as ``sseload`` reports its own).
    """
    total = sum(count for _, _, count in buckets)
    if not total:
        return None
    want = min(int(p * total), total - 1)
    seen = 0
    for lo, hi, count in buckets:
        seen += count
        if seen > want:
            return round((lo + hi) / 2 / 1000, 3)
    return None  # pragma: no cover - the loop always reaches the total


def phase_row(
    reports: Sequence[dict[str, Any]],
    published: Sequence[Published],
    wall: float,
    hub_cpu: float,
) -> dict[str, Any]:
    """The measurements of one publishing phase, from every client's report."""
    buckets = merge_histograms(reports)
    deliveries = sum(r["received"] for r in reports)
    samples = sum(r["lat_n"] for r in reports)
    firsts = [r["first_rx_ns"] for r in reports if r["first_rx_ns"] > 0]
    lasts = [r["last_rx_ns"] for r in reports if r["last_rx_ns"] > 0]
    window = (max(lasts) - min(firsts)) / 1e9 if firsts and lasts else 0.0
    in_phase = sum(r["in_phase"] for r in reports)
    accepted = sum(int(p.reply["published"]) for p in published)
    attempted = sum(int(p.reply["attempted"]) for p in published)
    elapsed = max((float(p.reply["elapsed_s"]) for p in published), default=0.0)
    top = max((r["lat_max_ms"] for r in reports if r["lat_n"]), default=None)

    def quantile(p: float) -> float | None:
        # A bucket's middle may lie above the largest latency it holds.
        value = percentile_ms(buckets, p)
        return None if value is None or top is None else min(value, top)

    row: dict[str, Any] = {
        "p50_ms": quantile(0.50),
        "p99_ms": quantile(0.99),
        "max_ms": top,
        "mean_ms": round(sum(r["lat_sum_us"] for r in reports) / samples / 1000, 3)
        if samples
        else None,
        "lost": sum(r["lost"] for r in reports),
        "duplicated": sum(r["duplicated"] for r in reports),
        "published": accepted,
        "publish_errors": sum(int(p.reply["errors"]) for p in published),
        "events_per_s": round(accepted / elapsed, 1) if elapsed > 0 else None,
        "in_phase": in_phase,
        "expected": attempted * in_phase,
        "delivered": deliveries,
        "died": sum(r["died"] for r in reports),
        "lost_on_died": sum(r["lost_on_died"] for r in reports),
        "subscribers_short": sum(r["conns_short"] for r in reports),
        "unexpected": sum(r["unexpected"] for r in reports),
        "reordered": sum(r["reordered"] for r in reports),
        "timed_out": any(r["timed_out"] for r in reports),
        "window_s": round(window, 4),
        "drain_s": max(r["drain_s"] for r in reports),
        "wall_s": round(wall, 3),
        "hub_cpu_util": round(hub_cpu / wall, 3) if wall > 0 else None,
        "client_cpu_util": round(sum(r["cpu_s"] for r in reports) / wall, 3)
        if wall > 0
        else None,
        "publisher_cpu_util": round(
            sum(float(p.reply["pub_cpu_util"]) for p in published), 3
        ),
        "latency_samples": samples,
        "latency_hist_us": [list(bucket) for bucket in buckets],
    }
    if row["publish_errors"]:
        row["error"] = (
            f"{row['publish_errors']:,} of {attempted:,} publishes were refused: "
            "see pub-*.log"
        )
    elif not accepted:
        row["error"] = "nothing was published"
    return row


# One run


@dataclass
class Run:
    """What one run needs and what it has measured so far."""

    args: argparse.Namespace
    sseload: Path
    pub: Path
    logdir: Path
    emit: Callable[[dict[str, Any]], None]
    done: list[str] = field(default_factory=list)

    def base(self, workload: str) -> dict[str, Any]:
        """A row with no measurement yet."""
        args = self.args
        return {
            "peer": "twisted_sse" if args.broker == "memory" else "twisted_sse-redis",
            "n": args.n,
            "procs": args.procs,
            "clients": args.clients,
            "workload": workload,
            **dict.fromkeys(FIELDS),
        }

    def row(self, workload: str, values: dict[str, Any]) -> None:
        """Emit the row of ``workload``."""
        self.emit({**self.base(workload), **values})
        self.done.append(workload)

    def fail(self, message: str) -> None:
        """Emit an ``error`` row for every workload not reported yet."""
        for workload in WORKLOADS:
            if workload not in self.done:
                self.row(workload, {"error": message})


def hub_cpus(args: argparse.Namespace) -> list[str]:
    """The CPU list each hub is pinned to ('' = not pinned)."""
    if args.spread_hubs and args.server_cpu:
        cpus = [word for word in args.server_cpu.split(",") if word]
        return [cpus[k % len(cpus)] for k in range(args.procs)]
    return [args.server_cpu] * args.procs


def layout(args: argparse.Namespace) -> str:
    """Where the hubs and the clients run, in words."""
    cpus = hub_cpus(args)
    if len(set(cpus)) == 1:
        one = "1 hub process" if args.procs == 1 else f"{args.procs} hub processes"
        hubs = f"{one} on CPU {cpus[0] or 'any'}"
    else:
        hubs = f"{args.procs} hub processes on CPUs {', '.join(cpus)} (round-robin)"
    parts = shares(args.n, args.clients)
    clients = (
        f"{args.clients} client{'s' if args.clients > 1 else ''} on CPU "
        f"{args.client_cpu or 'any'}, "
        f"{min(parts):,} to {max(parts):,} subscribers each, from "
        f"127.0.0.{args.first_address} to "
        f"127.0.0.{args.first_address + args.clients - 1}"
    )
    server = {c for cpu in cpus for c in cpu.split(",") if c}
    client = {c for c in args.client_cpu.split(",") if c}
    shared = sorted(server & client)
    note = f"; hubs and clients share CPU {','.join(shared)}" if shared else ""
    broker = "memory broker" if args.broker == "memory" else args.redis_url
    return f"{hubs} ({broker}); {clients}; publisher with the clients{note}"


def measure(run: Run) -> None:
    """Start the hubs and the clients, and emit a row per workload."""
    args = run.args
    if args.broker == "redis":
        reason = redis_problem(args.redis_url)
        if reason is not None:
            run.fail(reason)
            return
    broker = "memory" if args.broker == "memory" else args.redis_url
    channel = f"large-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}"
    path = f"/channels/{channel}"
    try:
        with ExitStack() as stack:
            hubs: list[Hub] = []
            for k, cpu in enumerate(hub_cpus(args)):
                folder = run.logdir / f"hub-{k}"
                folder.mkdir(parents=True, exist_ok=True)
                options = argparse.Namespace(server_cpu=cpu, inflight=args.inflight)
                hubs.append(stack.enter_context(twisted_hub(options, broker, folder)))
            pids = [pid for hub in hubs for pid in hub.pids]
            ports = [hub.port for hub in hubs]
            time.sleep(0.2)
            rss_before = [rss_kb(pid) for pid in pids]
            cpu_before = sum(cpu_seconds(pid) for pid in pids)
            followers = start_followers(
                stack, args, run.sseload, ports, path, run.logdir
            )
            # Unwound first: the clients leave before they are terminated.
            stack.callback(quit_followers, followers)
            deadline = time.monotonic() + args.connect_timeout + SLACK
            ready = [f.read("ready", deadline) for f in followers]
            setup_cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
            time.sleep(args.settle)
            alive(hubs)
            rss_after = [rss_kb(pid) for pid in pids]
            run.row("setup", setup_row(args, ready, rss_before, rss_after, setup_cpu))
            if not sum(r["connected"] for r in ready):
                raise LargeError("no subscriber connected: nothing to publish to")

            # The paced broadcast: one event every --interval seconds.
            first = 1
            reports, published, wall, spent = run_phase(
                followers,
                "paced",
                first,
                args.events,
                lambda: publish(
                    args,
                    run.pub,
                    [(hubs[0], first, args.events)],
                    1 / args.interval,
                    args.events * args.interval + 5,
                    1,
                    path,
                    run.logdir,
                ),
                args,
                pids,
            )
            alive(hubs)
            paced = phase_row(reports, published, wall, spent)
            paced.update(events=args.events, interval_s=args.interval)
            # The rate is set, not measured.
            paced["deliveries_per_s"] = None
            run.row("paced", paced)

            # Saturation: one publisher per hub, as fast as they answer.
            first = max(p.last for p in published) + 1
            count = args.sat_count or max(20, 4_000_000 // args.n)
            publishers = args.publishers or len(hubs)
            each = math.ceil(count / publishers)
            conns = max(1, math.ceil(args.publish_conns / publishers))
            runs = [
                (hubs[k % len(hubs)], first + k * each, each) for k in range(publishers)
            ]
            reports, published, wall, spent = run_phase(
                followers,
                "saturation",
                first,
                publishers * each,
                lambda: publish(
                    args, run.pub, runs, 0, args.sat_s, conns, path, run.logdir
                ),
                args,
                pids,
            )
            alive(hubs)
            saturation = phase_row(reports, published, wall, spent)
            window = saturation["window_s"]
            saturation.update(
                deliveries_per_s=round(saturation["delivered"] / window)
                if window
                else None,
                publishers=publishers,
                publish_conns=conns * publishers,
                sat_s=args.sat_s,
                rss_end_kb=sum(rss_kb(pid) for pid in pids),
            )
            run.row("saturation", saturation)
    except (HubError, LargeError, OSError, ValueError, KeyError) as error:
        run.fail(str(error) or type(error).__name__)


def setup_row(
    args: argparse.Namespace,
    ready: Sequence[dict[str, Any]],
    rss_before: Sequence[int],
    rss_after: Sequence[int],
    hub_cpu: float,
) -> dict[str, Any]:
    """The set-up measurements, from every client's ready line."""
    connected = sum(r["connected"] for r in ready)
    first = min(r["t_first_ns"] for r in ready)
    lasts = [r["t_last_ready_ns"] for r in ready if r["t_last_ready_ns"] > 0]
    seconds = (max(lasts) - first) / 1e9 if lasts else 0.0
    growth = sum(rss_after) - sum(rss_before)
    row: dict[str, Any] = {
        "setup_conn_per_s": round(connected / seconds) if seconds > 0 else None,
        "rss_per_conn_kb": round(growth / connected, 2) if connected else None,
        "connected": connected,
        "failed": sum(r["failed"] for r in ready),
        "pending": sum(r["pending"] for r in ready),
        "dropped": sum(r["dropped"] for r in ready),
        "setup_s": round(seconds, 3),
        "setup_hub_cpu_s": round(hub_cpu, 3),
        "setup_client_rates": [r["setup_rate"] for r in ready],
        "setup_p99_ms_worst_client": max(r["setup_p99_ms"] for r in ready),
        "rss_before_kb": sum(rss_before),
        "rss_after_kb": sum(rss_after),
        "rss_growth_kb_per_hub": [
            after - before for before, after in zip(rss_before, rss_after, strict=True)
        ],
        "shares": [r["n"] for r in ready],
        "sources": [f"127.0.0.{args.first_address + k}" for k in range(len(ready))],
        "pinned": {"hubs": hub_cpus(args), "clients": args.client_cpu},
    }
    if connected < args.n:
        row["error"] = (
            f"only {connected:,} of {args.n:,} subscribers connected within "
            f"{args.connect_timeout:g} s ({row['failed']:,} failed): see client-*.log"
        )
    return row


def run_phase(
    followers: Sequence[Follower],
    name: str,
    first: int,
    cap: int,
    publish_all: Callable[[], list[Published]],
    args: argparse.Namespace,
    pids: Sequence[int],
) -> tuple[list[dict[str, Any]], list[Published], float, float]:
    """
    One publishing phase: the clients record the seqs ``[first, first +
    cap)``, ``publish_all`` publishes, the clients are told what was and
    drain.  Their reports, what was published, the seconds and the hubs'
    CPU seconds it took.
    """
    for follower in followers:
        follower.send(f"begin {name} {first} {cap}")
    deadline = time.monotonic() + SLACK
    for follower in followers:
        follower.read("begun", deadline)
    started = time.monotonic()
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    published = publish_all()
    ranges = " ".join(f"{p.start} {p.last}" for p in published)
    for follower in followers:
        follower.send(f"end {ranges}")
    deadline = time.monotonic() + args.drain_timeout + SLACK
    reports = [follower.read("phase", deadline) for follower in followers]
    wall = time.monotonic() - started
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    return reports, published, wall, cpu


# The command


def port_range() -> int:
    """How many ephemeral ports a source address has (ip_local_port_range)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return 28232  # Linux's default, 32768 to 60999
    return int(high) - int(low) + 1


def check_limits(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Stop with a message when the run cannot fit this machine's limits."""
    if args.procs > 1 and args.broker == "memory":
        p.error(
            "several hub processes share events only through Redis: "
            "add --broker redis (or use --procs 1)"
        )
    if args.clients is None:
        args.clients = max(1, math.ceil(args.n / PER_CLIENT))
    per_hub = math.ceil(args.n / args.procs)
    per_client = math.ceil(args.n / args.clients)
    needed = max(per_hub + FD_MARGIN, per_client + CLIENT_MARGIN)
    hard = raise_nofile(needed)
    if hard < needed:
        advice = []
        if per_hub + FD_MARGIN > hard:
            least = math.ceil(args.n / (hard - FD_MARGIN))
            advice.append(
                f"each hub process would hold {per_hub:,} subscribers and need "
                f"{per_hub + FD_MARGIN:,} descriptors: use --procs {least} or "
                "more (with --broker redis)"
            )
        if per_client + CLIENT_MARGIN > hard:
            least = math.ceil(args.n / (hard - CLIENT_MARGIN))
            advice.append(
                f"each client would hold {per_client:,} subscribers and need "
                f"{per_client + CLIENT_MARGIN:,} descriptors: use --clients "
                f"{least} or more"
            )
        p.error(
            f"a process may hold {hard:,} descriptors here (RLIMIT_NOFILE hard "
            f"limit; raise it with ulimit -Hn as root): {'; '.join(advice)}"
        )
    if args.clients > args.n:
        p.error(f"--clients {args.clients} is more than --n {args.n}")
    last = args.first_address + args.clients - 1
    if last > 254:
        p.error(
            f"{args.clients} clients from 127.0.0.{args.first_address} would "
            f"need 127.0.0.{last}: use fewer --clients or a lower --first-address"
        )
    # With IP_BIND_ADDRESS_NO_PORT a source port need only be unique per
    # (source, destination) pair; a client's busiest pair is one hub port.
    pair = math.ceil(per_client / min(args.procs, per_client))
    ephemeral = port_range()
    if pair > ephemeral:
        p.error(
            f"each client would open {pair:,} connections from one source "
            f"address to one port, and a source address has {ephemeral:,} "
            "ephemeral ports (net.ipv4.ip_local_port_range): use more --clients"
        )
    for k in range(args.clients):
        address = f"127.0.0.{args.first_address + k}"
        try:
            with socket.socket() as sock:
                sock.bind((address, 0))
        except OSError as error:
            p.error(
                f"cannot bind a socket to {address} ({error}): the clients' "
                "source addresses must be local (on Linux all of 127.0.0.0/8 "
                "is on lo; elsewhere add them as aliases of the loopback)"
            )


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--n", type=at_least(1, int), default=18000, help="subscribers (18000)"
    )
    p.add_argument(
        "--procs", type=at_least(1, int), default=1, help="hub processes (1)"
    )
    p.add_argument(
        "--broker",
        choices=("memory", "redis"),
        default="memory",
        help="the hubs' broker: memory (one process only) or redis (memory)",
    )
    p.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/14",
        help="the Redis of --broker redis (redis://127.0.0.1:6379/14); not "
        "started by this script",
    )
    p.add_argument(
        "--clients",
        type=at_least(1, int),
        default=None,
        help=f"load-client processes (enough for {PER_CLIENT:,} subscribers each)",
    )
    p.add_argument(
        "--first-address",
        type=at_least(2, int),
        default=2,
        help="client k connects from 127.0.0.(this + k) (2)",
    )
    p.add_argument(
        "--inflight",
        type=at_least(1, int),
        default=256,
        help="subscriber set-ups in flight at once, all clients together (256)",
    )
    p.add_argument(
        "--events", type=at_least(1, int), default=20, help="paced events (20)"
    )
    p.add_argument(
        "--interval",
        type=at_least(0.001),
        default=1.0,
        help="seconds between paced events (1)",
    )
    p.add_argument(
        "--sat-s", type=at_least(0.1), default=10.0, help="saturation seconds (10)"
    )
    p.add_argument(
        "--publishers",
        type=at_least(0, int),
        default=0,
        help="publisher processes at saturation, round the hubs (0: one per hub)",
    )
    p.add_argument(
        "--publish-conns",
        type=at_least(1, int),
        default=4,
        help="publishes in flight at saturation, all publishers together, at "
        "least one each (4)",
    )
    p.add_argument(
        "--sat-count",
        type=at_least(0, int),
        default=0,
        help="most events published at saturation (0: 4,000,000 / N, at least 20)",
    )
    p.add_argument("--size", type=at_least(48, int), default=64, help="frame bytes")
    p.add_argument(
        "--settle",
        type=at_least(0),
        default=1.0,
        help="seconds between the last set-up and reading the RSS (1)",
    )
    p.add_argument(
        "--connect-timeout",
        type=at_least(1),
        default=180.0,
        help="seconds to open every subscriber (180)",
    )
    p.add_argument(
        "--drain-timeout",
        type=at_least(0.5),
        default=60.0,
        help="seconds a phase waits for its last deliveries (60)",
    )
    two_cores = (os.cpu_count() or 1) >= 2
    p.add_argument(
        "--server-cpu",
        default="0" if two_cores else "",
        help="the hubs' CPUs, for taskset ('' = not pinned; default 0, none "
        "on one core)",
    )
    p.add_argument(
        "--spread-hubs",
        action="store_true",
        help="pin hub k to the k-th CPU of --server-cpu, round-robin, instead "
        "of every hub to all of them",
    )
    p.add_argument(
        "--client-cpu",
        default="1" if two_cores else "",
        help="the clients' and publishers' CPUs ('' = not pinned; default 1)",
    )
    p.add_argument(
        "--client-src",
        default=str(DEFAULT_CLIENT_SRC),
        help="the folder of sseload.c (with --follow, --bind and --ports) and "
        "pub.c [default: bench/client]",
    )
    p.add_argument(
        "--out",
        help="the results file (bench/results/<stamp>-large.jsonl); the logs "
        "go into <name>-logs/",
    )
    return p


def digest(source: Path) -> str:
    """
    A short hash of ``source``'s text: the binary's name carries it, so that
    a binary built from another copy of the file is never taken for it.
    """
    return hashlib.sha256(source.read_bytes()).hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    check_limits(p, args)
    source = Path(args.client_src)
    if not (source / "sseload.c").is_file() or not (source / "pub.c").is_file():
        p.error(f"no sseload.c and pub.c in {source}: see --client-src")
    if shutil.which(os.environ.get("CC", "cc")) is None:
        p.error("no C compiler (cc, or CC=...) to build the load client")
    if '"--follow"' not in (source / "sseload.c").read_text(errors="replace"):
        p.error(f"{source / 'sseload.c'} has no --follow mode: see --client-src")
    sseload = build(
        source / "sseload.c", f"large-sseload-{digest(source / 'sseload.c')}"
    )
    pub = build(source / "pub.c", f"large-pub-{digest(source / 'pub.c')}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else HERE / "results" / f"{stamp}-large.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    logdir = out.with_name(out.stem + "-logs")
    logdir.mkdir(parents=True, exist_ok=True)
    # SIGINT and SIGTERM unwind, so that every hub and client is torn down.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)

    facts: dict[str, Any] = machine_facts(args.client_cpu, args.server_cpu)
    facts["loadavg"] = Path("/proc/loadavg").read_text().split()[0]
    print("# machine: " + json.dumps(facts), flush=True)
    print("# layout: " + layout(args), flush=True)
    rows: list[dict[str, Any]] = []
    with open(out, "w") as results:

        def emit(row: dict[str, Any]) -> None:
            line = json.dumps(row)
            print(line, flush=True)
            results.write(line + "\n")
            results.flush()
            rows.append(row)

        run = Run(args, sseload, pub, logdir, emit)
        try:
            measure(run)
        except KeyboardInterrupt:
            run.fail("interrupted")
            return 130
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
