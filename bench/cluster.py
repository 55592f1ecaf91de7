"""
What Redis Cluster buys the Redis broker: the publish rate one Redis and a
cluster of three primaries absorb, and what the hub publishes end to end
over each, in one run on 127.0.0.1:

    python bench/cluster.py                      # ~1.5 min
    python bench/cluster.py --seconds 20 --channels 5000
    python bench/cluster.py --parts redis --json

Two parts (``--parts``), each a row per topology, every topology a fresh
set of private ``redis-server`` processes (free ports, no persistence,
their own folders), torn down after its row:

redis
    The broker's publish script (``PUBLISH`` of ``twisted_sse._redis._scripts``,
    loaded with ``SCRIPT LOAD``) run with ``EVALSHA`` as the broker runs it,
    64-byte ``data`` (``--size``), round the ``--channels`` (1,000)
    channels, by ``--loaders`` (2) processes of this script, each with one
    connection per primary and two pipelines of ``--pipeline`` (64)
    publishes in flight on each.  The loaders route by the hash slot of
    the channel's keys, as the broker does.  Three rows:

    * ``single``, ``log``: one Redis, cluster mode off, keys and arguments
      as the single-node broker sends them (``sse:<channel>``, its epoch
      ``sse:<channel>#epoch``; ``#log``: the publish log's entry too);
    * ``single``, ``live``: the same Redis, the arguments of the cluster
      form (``#live``: ``SPUBLISH`` instead of the publish log), to tell
      the script's form from the topology;
    * ``cluster``, ``live``: three primaries (``--primaries``), the keys
      ``sse:{<channel>}`` and ``sse:{<channel>}#epoch``.

    Every Redis is pinned to ``--server-cpu`` (0), the loaders to
    ``--client-cpu`` (1).  So the three primaries share one core, as the
    single Redis has it alone: the rows compare the same Redis CPU, and
    ``publishes/s`` tells what clustering costs, not what it gains.  What
    it gains is the ``projected`` rate: each primary on a core of its own,
    at 100 %, every channel publishing at the same rate; the least of
    (publishes per CPU-second of a primary) / (its share of the channels).
    Redis CPU is read from ``/proc/<pid>/stat`` (user + system, all its
    threads) at the start and the end of the measured window.
hub
    ``twistd -n sse --broker <url>`` (``--hubs``, one process by default,
    with ``--access-log off --stream-log off``) on one Redis
    and on the cluster, pinned to ``--server-cpu``, with Redis
    and the publisher pinned to ``--client-cpu``.  The publisher, this
    script again, keeps ``--in-flight`` (16) keep-alive connections, one
    ``POST /channels/<name>`` in flight on each, round the channels; a row
    gives the publishes acknowledged (2xx) per second.  Here the hub, in
    Python, is the limit, not Redis.

Each run warms up ``--warm`` (1) seconds and is then measured for
``--seconds`` (8); ``--repeat`` runs every row again in rounds, the
topologies interleaved, and the tables give medians.  Each row says how
busy each side was (in cores: 1.0 is one core all the time), and, from
``/proc/stat``, ``others_cpu``, the CPU that other processes used
meanwhile, ``core_busy``, each core's use by anyone, and ``steal``, what
the hypervisor took: other work on the machine takes from both cores.

Output: a ``# machine:`` line, one JSON object a line per row, then the
tables (``--json``: the JSON lines only).  A topology that cannot start is
a row with an ``error``; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import hiredis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from hub import (  # noqa: E402
    TOKEN,
    HubError,
    _die_with_parent,
    _interrupt,
    at_least,
    exited,
    spawn,
    tail,
    terminate,
    twistd_env,
    wait_ready,
)
from run import free_port, machine_facts, taskset  # noqa: E402
from subscriptions import twistd  # noqa: E402

from twisted_sse._broker import DEFAULT_CHANNEL_TTL, DEFAULT_HISTORY  # noqa: E402
from twisted_sse._redis._broker import DEFAULT_PREFIX  # noqa: E402
from twisted_sse._redis._cluster import SLOTS, key_slot  # noqa: E402
from twisted_sse._redis._scripts import LIVE_FIELD, LOG_FIELD, PUBLISH  # noqa: E402
from twisted_sse._redis._watch import LOG_LENGTH  # noqa: E402

PARTS = ("redis", "hub")
#: The Redis rows: (topology, the publish script's form).
REDIS_ROWS = (("single", "log"), ("single", "live"), ("cluster", "live"))
TOPOLOGIES = ("single", "cluster")
#: Seconds a loader or the publisher has to connect and say it is ready.
READY_TIMEOUT = 30.0
#: Seconds a topology has to settle (cluster_state:ok everywhere).
CLUSTER_TIMEOUT = 30.0
TICK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A topology, hub or load process failed; the message says why."""


# Redis, blocking, for set-up and checks


def call(port: int, *args: str | int, timeout: float = 5.0) -> Any:
    """
    One command on a fresh connection to 127.0.0.1:``port``, its reply.

    :raises BenchError: when Redis answers an error.
    """
    return pipeline(port, [args], timeout)[0]


def pipeline(
    port: int, commands: Sequence[Sequence[str | int]], timeout: float = 10.0
) -> list[Any]:
    """
    ``commands`` in one write on a fresh connection, their replies.

    :raises BenchError: when Redis answers an error to any of them.
    """
    reader = hiredis.Reader()
    replies: list[Any] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # hiredis's stub wants a 1-tuple; any tuple of arguments works.
        packed = [hiredis.pack_command(tuple(c)) for c in commands]  # type: ignore[arg-type]
        sock.sendall(b"".join(packed))
        while len(replies) < len(commands):
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise BenchError(f"Redis on port {port} closed the connection")
            reader.feed(chunk)
            while (reply := reader.gets()) is not False:
                replies.append(reply)
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise BenchError(f"Redis on port {port}: {reply}")
    return replies


def wait_ping(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Return once Redis on ``port`` answers PING."""
    deadline = time.monotonic() + 10.0
    while True:
        if process.poll() is not None:
            raise BenchError(
                f"redis-server exited with status {process.returncode}: {tail(log)}"
            )
        with suppress(OSError, BenchError):
            if call(port, "PING", timeout=1.0) == b"PONG":
                return
        if time.monotonic() > deadline:
            raise BenchError(f"redis-server did not answer PING on port {port}")
        time.sleep(0.02)


def stream_key(kind: str, channel: str) -> str:
    """
    A channel's stream key, as the broker names it: ``sse:<channel>``, or
    on a cluster ``sse:{<channel>}`` (the channel as the hash tag).
    """
    if kind == "cluster":
        return f"{DEFAULT_PREFIX}{{{channel}}}"
    return DEFAULT_PREFIX + channel


@dataclass
class Topology:
    """Private Redis processes that are up."""

    kind: str
    #: The primaries' ports, and the process of each.
    ports: list[int]
    pids: list[int]
    #: The slot ranges: (first, last, port); one range for a single Redis.
    slots: list[tuple[int, int, int]]

    def url(self) -> str:
        """The ``--broker`` of ``twistd sse`` for this topology."""
        if self.kind == "cluster":
            return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def key(self, channel: str) -> str:
        """A channel's stream key, as the broker names it on this topology."""
        return stream_key(self.kind, channel)

    def owner(self, channel: str) -> int:
        """The port of the primary that holds ``channel``."""
        slot = key_slot(self.key(channel))
        for first, last, port in self.slots:
            if first <= slot <= last:
                return port
        raise BenchError(f"no primary owns slot {slot}")

    def spread(self, channels: Sequence[str]) -> dict[int, list[str]]:
        """The channels of each primary."""
        found: dict[int, list[str]] = {port: [] for port in self.ports}
        for channel in channels:
            found[self.owner(channel)].append(channel)
        return found


def redis_argv(args: argparse.Namespace, port: int, folder: Path) -> list[str]:
    """A private ``redis-server`` without persistence."""
    return [
        args.redis_server,
        *("--port", str(port), "--bind", "127.0.0.1"),
        *("--save", "", "--appendonly", "no", "--dir", str(folder)),
    ]


@contextmanager
def topology(
    kind: str, args: argparse.Namespace, cpu: str, logdir: Path
) -> Iterator[Topology]:
    """A fresh single Redis or cluster, pinned to ``cpu``; torn down after."""
    with ExitStack() as stack:
        count = args.primaries if kind == "cluster" else 1
        ports, pids = [], []
        for n in range(count):
            port = free_port()
            folder = logdir / f"redis-{n}"
            folder.mkdir()
            argv = redis_argv(args, port, folder)
            if kind == "cluster":
                argv += [
                    *("--cluster-enabled", "yes"),
                    *("--cluster-config-file", "nodes.conf"),
                    # The bus is port + 10000 unless told: a free port
                    # above 55535 would have none.
                    *("--cluster-port", str(free_port())),
                ]
            log = logdir / f"redis-{n}.log"
            try:
                process = spawn(stack, argv, log, cpu)
            except HubError as error:
                raise BenchError(str(error)) from None
            wait_ping(port, process, log)
            ports.append(port)
            pids.append(process.pid)
        if kind == "cluster":
            slots = create_cluster(args, ports)
        else:
            slots = [(0, SLOTS - 1, ports[0])]
        yield Topology(kind, ports, pids, slots)


def create_cluster(
    args: argparse.Namespace, ports: list[int]
) -> list[tuple[int, int, int]]:
    """Join the nodes with ``redis-cli --cluster create``; the slot map."""
    try:
        created = subprocess.run(
            [
                args.redis_cli,
                *("--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CLUSTER_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BenchError(f"redis-cli --cluster create: {error}") from None
    if created.returncode != 0:
        text = (created.stdout + created.stderr).decode(errors="replace")
        raise BenchError(
            f"redis-cli --cluster create failed: {' '.join(text.split())[-300:]}"
        )
    deadline = time.monotonic() + CLUSTER_TIMEOUT
    while not settled(ports):
        if time.monotonic() > deadline:
            raise BenchError("the cluster did not reach cluster_state:ok")
        time.sleep(0.05)
    ranges = []
    for item in call(ports[0], "CLUSTER", "SLOTS"):
        ranges.append((int(item[0]), int(item[1]), int(item[2][1])))
    return sorted(ranges)


def settled(ports: list[int]) -> bool:
    """Whether every node says ``cluster_state:ok`` and knows every other."""
    for port in ports:
        try:
            info, nodes = pipeline(port, [("CLUSTER", "INFO"), ("CLUSTER", "NODES")])
        except (OSError, BenchError):
            return False
        lines = nodes.decode().strip().splitlines()
        if b"cluster_state:ok" not in info or len(lines) != len(ports):
            return False
        if any("handshake" in line or "connected" not in line for line in lines):
            return False
    return True


def stored(top: Topology, channels: Sequence[str]) -> dict[int, int]:
    """The entries of the channels' streams (``XLEN``), per primary."""
    counts = {}
    for port, mine in top.spread(channels).items():
        replies = pipeline(port, [("XLEN", top.key(c)) for c in mine])
        counts[port] = sum(int(r) for r in replies)
    return counts


# CPU, from /proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid``, all its threads."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name may hold spaces and parentheses: parse after it.
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> list[float]:
    """
    CPU seconds the machine spent busy so far, and those the hypervisor
    took (steal): all its cores, then each core, as ``[busy, steal, busy
    of cpu0, busy of cpu1...]`` (``/proc/stat``).
    """
    found: list[float] = []
    with open("/proc/stat") as stat:
        for line in stat:
            if not line.startswith("cpu"):
                break
            # user nice system idle iowait irq softirq steal ...
            user, nice, system, _, _, irq, softirq, steal = (
                int(w) for w in line.split()[1:9]
            )
            busy = (user + nice + system + irq + softirq) / TICK
            found += [busy, steal / TICK] if not found else [busy]
    return found


@dataclass
class Snapshot:
    """CPU seconds of each process watched, and of the machine, at a time."""

    at: float
    machine: list[float]
    pids: dict[int, float]

    @classmethod
    def take(cls, pids: Sequence[int]) -> Snapshot:
        return cls(time.monotonic(), machine_busy(), {p: cpu_seconds(p) for p in pids})


def used(first: Snapshot, last: Snapshot, pids: Sequence[int]) -> float:
    """Cores ``pids`` used between the snapshots (1.0: one core all along)."""
    spent = sum(last.pids[p] - first.pids[p] for p in pids)
    return spent / (last.at - first.at)


def others(first: Snapshot, last: Snapshot) -> float:
    """Cores used meanwhile by processes other than the ones watched."""
    ours = sum(last.pids[p] - first.pids[p] for p in first.pids)
    busy = last.machine[0] - first.machine[0]
    return max(0.0, (busy - ours) / (last.at - first.at))


def steal(first: Snapshot, last: Snapshot) -> float:
    """Cores the hypervisor gave to others while ours wanted to run."""
    return (last.machine[1] - first.machine[1]) / (last.at - first.at)


def cores(first: Snapshot, last: Snapshot) -> list[float]:
    """How busy each core was between the snapshots, whoever used it."""
    elapsed = last.at - first.at
    return [
        round((b - a) / elapsed, 2)
        for a, b in zip(first.machine[2:], last.machine[2:], strict=True)
    ]


# The load processes


@dataclass
class Worker:
    """A load process of this script: ready, then told its window."""

    process: subprocess.Popen[bytes]
    stdin: IO[bytes]
    stdout: IO[bytes]
    log: Path


def start_worker(
    stack: ExitStack, mode: str, spec: dict[str, Any], cpu: str, log: Path
) -> Worker:
    """This script in ``mode`` (``--load`` or ``--post``) pinned to ``cpu``."""
    errors = stack.enter_context(open(log, "wb"))  # noqa: SIM115 - the stack closes it
    process = subprocess.Popen(
        [*taskset(cpu), sys.executable, str(Path(__file__).resolve()), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    stack.callback(terminate, process, 2.0)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(spec).encode() + b"\n")
    process.stdin.flush()
    return Worker(process, process.stdin, process.stdout, log)


def run_window(
    workers: list[Worker], watched: Sequence[int], args: argparse.Namespace
) -> tuple[Snapshot, Snapshot, list[dict[str, Any]]]:
    """
    Wait until every worker is loading, give them all the same window
    (``--warm`` from now, ``--seconds`` long), snapshot the CPU of
    ``watched`` at its start and end, and collect the workers' results.
    """
    deadline = time.monotonic() + READY_TIMEOUT
    for worker in workers:
        line = read_line(worker, deadline)
        if line != "ready":
            raise BenchError(f"a load process said {line!r}: {tail(worker.log)}")
    start = time.monotonic() + args.warm
    end = start + args.seconds
    for worker in workers:
        worker.stdin.write(json.dumps({"start": start, "end": end}).encode() + b"\n")
        worker.stdin.flush()
    time.sleep(max(0.0, start - time.monotonic()))
    first = Snapshot.take(watched)
    time.sleep(max(0.0, end - time.monotonic()))
    last = Snapshot.take(watched)
    results = []
    deadline = time.monotonic() + 30.0
    for worker in workers:
        line = read_line(worker, deadline)
        try:
            result = json.loads(line)
        except ValueError:
            raise BenchError(
                f"a load process said {line!r}: {tail(worker.log)}"
            ) from None
        if "error" in result:
            raise BenchError(f"a load process failed: {result['error']}")
        results.append(result)
    return first, last, results


def read_line(worker: Worker, deadline: float) -> str:
    """The next line a worker writes, before ``deadline``."""
    with selectors.DefaultSelector() as chooser:
        chooser.register(worker.stdout, selectors.EVENT_READ)
        if not chooser.select(max(0.0, deadline - time.monotonic())):
            raise BenchError(f"a load process said nothing in time: {tail(worker.log)}")
    line = worker.stdout.readline().decode(errors="replace").strip()
    if not line:
        code = worker.process.wait()
        raise BenchError(
            f"a load process exited with status {code}: {tail(worker.log)}"
        )
    return line


def publish_args(
    kind: str, form: str, channel: str, data: str
) -> tuple[str | int, ...]:
    """
    The ``EVALSHA`` of a publish of ``data`` on ``channel``, as the broker
    sends it with its defaults (``RedisBroker.publish``): ``log``, with the
    publish log's entry (one Redis), or ``live`` (a cluster's).
    """
    key = stream_key(kind, channel)
    ttl_ms = round(DEFAULT_CHANNEL_TTL * 1000)
    extra: tuple[str | int, ...] = (LIVE_FIELD,)
    if form == "log":
        extra = (LOG_FIELD, DEFAULT_PREFIX + "#log", channel, LOG_LENGTH)
    return (
        *("EVALSHA", PUBLISH.sha, 2, key, key + "#epoch"),
        *(DEFAULT_HISTORY, ttl_ms, *extra),
        *("data", data, "key", "message"),
    )


# The Redis part


def redis_row(
    kind: str, form: str, args: argparse.Namespace, channels: list[str]
) -> dict[str, Any]:
    """A fresh topology loaded by the loaders: one row."""
    row: dict[str, Any] = {"part": "redis", "topology": kind, "form": form}
    with ExitStack() as stack:
        logdir = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="cluster-"))
        )
        try:
            top = stack.enter_context(topology(kind, args, args.server_cpu, logdir))
            row["primaries"] = len(top.ports)
            for port in top.ports:
                sha = call(port, "SCRIPT", "LOAD", PUBLISH.source)
                if sha.decode() != PUBLISH.sha:
                    raise BenchError(f"SCRIPT LOAD answered {sha!r}, not {PUBLISH.sha}")
            spread = top.spread(channels)
            workers = []
            for n in range(args.loaders):
                spec = {
                    "nodes": [
                        {
                            "port": port,
                            "commands": [
                                list(publish_args(kind, form, c, args.data))
                                for c in rotate(mine, n, args.loaders)
                            ],
                        }
                        for port, mine in spread.items()
                        if mine
                    ],
                    "pipeline": args.pipeline,
                }
                log = logdir / f"loader-{n}.log"
                workers.append(
                    start_worker(stack, "--load", spec, args.client_cpu, log)
                )
            loaders = [w.process.pid for w in workers]
            first, last, results = run_window(workers, [*top.pids, *loaders], args)
            counts = stored(top, channels)
        except (BenchError, OSError) as error:
            return {**row, "error": str(error) or type(error).__name__}
    rate = sum(r["window_published"] / r["window_s"] for r in results)
    redis_cpu = used(first, last, top.pids)
    nodes = []
    for port, pid in zip(top.ports, top.pids, strict=True):
        node_rate = sum(r["nodes"].get(str(port), 0) / r["window_s"] for r in results)
        node_cpu = used(first, last, [pid])
        nodes.append(
            {
                "port": port,
                "channels": len(spread[port]),
                "publishes_per_s": round(node_rate),
                "cpu": round(node_cpu, 3),
                "publishes_per_cpu_s": round(node_rate / node_cpu)
                if node_cpu
                else None,
                "stored": counts[port],
            }
        )
    projected = None
    holding = [n for n in nodes if n["channels"]]
    if all(n["publishes_per_cpu_s"] for n in holding):
        # Each primary on its own core, every channel at the same rate: the
        # primary that reaches 100 % first, given its share of the channels.
        projected = min(
            n["publishes_per_cpu_s"] * len(channels) / n["channels"] for n in holding
        )
    published = sum(r["published"] for r in results)
    errors = sum(r["errors"] for r in results)
    row.update(
        channels=len(channels),
        publishes_per_s=round(rate),
        redis_cpu=round(redis_cpu, 3),
        redis_cpu_us_per_publish=round(redis_cpu / rate * 1e6, 2) if rate else None,
        publishes_per_redis_cpu_s=round(rate / redis_cpu) if redis_cpu else None,
        projected_per_s=None if projected is None else round(projected),
        loader_cpu=round(used(first, last, loaders), 3),
        loader_cpu_us_per_publish=(
            round(used(first, last, loaders) / rate * 1e6, 2) if rate else None
        ),
        others_cpu=round(others(first, last), 3),
        core_busy=cores(first, last),
        steal=round(steal(first, last), 3),
        loaders=args.loaders,
        in_flight_per_connection=2 * args.pipeline,
        published=published,
        stored=sum(counts.values()),
        errors=errors,
        window_s=round(last.at - first.at, 3),
        loadavg=loadavg(),
        nodes=nodes,
    )
    if errors:
        first_error = next(r["first_error"] for r in results if r["first_error"])
        row["error"] = (
            f"{errors:,} publishes were not answered an id, the first: {first_error}"
        )
    return row


def rotate(items: list[str], n: int, of: int) -> list[str]:
    """``items`` starting ``n``/``of`` of the way in, so loaders differ."""
    cut = len(items) * n // of
    return items[cut:] + items[:cut]


def drive_redis(spec: dict[str, Any], control: IO[bytes]) -> dict[str, Any]:
    """
    The loader: ``EVALSHA``\\ s round the commands of each node, two
    pipelines in flight per connection, until the window given on
    ``control`` ends; the replies within it, per node.
    """
    size = int(spec["pipeline"])
    links = []
    chooser = selectors.DefaultSelector()
    for node in spec["nodes"]:
        packed = [hiredis.pack_command(tuple(c)) for c in node["commands"]]
        sock = socket.create_connection(("127.0.0.1", node["port"]), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = Link(
            str(node["port"]), sock, hiredis.Reader(), batches(packed, size), size
        )
        links.append(link)
        chooser.register(sock, selectors.EVENT_READ, link)
    for link in links:
        link.send()
        link.send()
    return pump(chooser, links, control)


def batches(packed: list[bytes], size: int) -> list[bytes]:
    """``packed`` commands, round and round, in writes of ``size``."""
    count = len(packed)
    out, at = [], 0
    while True:
        out.append(b"".join(packed[(at + i) % count] for i in range(size)))
        at = (at + size) % count
        if at == 0 or len(out) >= count:
            return out


@dataclass
class Link:
    """A loader's connection to one node."""

    name: str
    sock: socket.socket
    reader: Any
    writes: list[bytes]
    #: Publishes a write.
    size: int
    next: int = 0
    in_flight: int = 0
    #: Publishes answered with an id, and answered otherwise.
    published: int = 0
    errors: int = 0
    first_error: str = ""
    marks: list[int] = field(default_factory=list)

    def send(self) -> None:
        """Write the next pipeline of publishes."""
        self.sock.sendall(self.writes[self.next])
        self.next = (self.next + 1) % len(self.writes)
        self.in_flight += self.size

    def receive(self) -> int:
        """Read what Redis answered; how many replies it was."""
        data = self.sock.recv(1 << 18)
        if not data:
            raise ConnectionError(f"port {self.name} closed the connection")
        self.reader.feed(data)
        got = 0
        while (reply := self.reader.gets()) is not False:
            got += 1
            # A publish answers <epoch>:<entry id>; anything else is a failure.
            if isinstance(reply, bytes) and b":" in reply and b"-" in reply:
                self.published += 1
            else:
                self.errors += 1
                if not self.first_error:
                    self.first_error = repr(reply)[:200]
        return got


class Window:
    """The measured window a load process is told, and where it stands."""

    def __init__(self, control: IO[bytes]) -> None:
        self.fd = control.fileno()
        self.buffer = b""
        self.start: float | None = None
        self.end: float | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None

    def read(self) -> None:
        """Read from the controlling script: the window, once it is told."""
        data = os.read(self.fd, 4096)
        if not data:
            raise ConnectionError("the controlling script went away")
        self.buffer += data
        if b"\n" in self.buffer:
            told = json.loads(self.buffer.split(b"\n", 1)[0])
            self.start, self.end = float(told["start"]), float(told["end"])

    def tick(self, now: float) -> tuple[bool, bool]:
        """Whether the window starts now, and whether it ends now."""
        starts = ends = False
        if self.start is not None and self.started_at is None and now >= self.start:
            self.started_at, starts = now, True
        if self.end is not None and self.ended_at is None and now >= self.end:
            self.ended_at, ends = now, True
        return starts, ends


def pump(
    chooser: selectors.BaseSelector, links: list[Link], control: IO[bytes]
) -> dict[str, Any]:
    """The loader's loop (see :func:`drive_redis`)."""
    window = Window(control)
    chooser.register(window.fd, selectors.EVENT_READ, None)
    print("ready", flush=True)
    stopping = False
    given_up = time.monotonic() + READY_TIMEOUT + 60
    while True:
        for key, _ in chooser.select(0.2):
            if key.data is None:
                window.read()
                continue
            link = key.data
            link.in_flight -= link.receive()
            if not stopping and link.in_flight <= link.size:
                link.send()
        starts, ends = window.tick(time.monotonic())
        if starts:
            for link in links:
                link.marks.append(link.published)
        if ends:
            for link in links:
                link.marks.append(link.published)
            stopping = True
        if stopping and all(link.in_flight == 0 for link in links):
            break
        if window.start is None and time.monotonic() > given_up:
            raise TimeoutError("no window was given")
    assert window.started_at is not None and window.ended_at is not None
    return {
        "window_s": window.ended_at - window.started_at,
        "window_published": sum(link.marks[1] - link.marks[0] for link in links),
        "nodes": {link.name: link.marks[1] - link.marks[0] for link in links},
        "published": sum(link.published for link in links),
        "errors": sum(link.errors for link in links),
        "first_error": next((link.first_error for link in links if link.errors), ""),
    }


# The hub part


def hub_row(
    kind: str, hubs: int, args: argparse.Namespace, channels: list[str]
) -> dict[str, Any]:
    """``twistd sse`` on a fresh topology, publishers POSTing: one row."""
    row: dict[str, Any] = {"part": "hub", "topology": kind, "hubs": hubs}
    with ExitStack() as stack:
        logdir = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="cluster-"))
        )
        try:
            top = stack.enter_context(topology(kind, args, args.client_cpu, logdir))
            row["primaries"] = len(top.ports)
            ports, pids = [], []
            for n in range(hubs):
                port = free_port()
                log = logdir / f"twistd-{n}.log"
                argv = [
                    *twistd(),
                    *("-n", "--pidfile=", "sse"),
                    *("--access-log", "off", "--stream-log", "off"),
                    *("--port", f"tcp:{port}:interface=127.0.0.1:backlog=1024"),
                    *("--broker", top.url(), "--heartbeat", "0"),
                ]
                process = spawn(
                    stack, argv, log, args.server_cpu, cwd=logdir, env=hub_env()
                )
                wait_ready(port, "/channels/ready", exited({"twistd": process}, log))
                ports.append(port)
                pids.append(process.pid)
            spec = {
                "ports": ports,
                "channels": channels,
                "connections": args.in_flight,
                "token": TOKEN,
                "data": args.data,
            }
            worker = start_worker(
                stack, "--post", spec, args.client_cpu, logdir / "publisher.log"
            )
            publisher = worker.process.pid
            first, last, (result,) = run_window(
                [worker], [*pids, *top.pids, publisher], args
            )
            gone = [pid for pid in pids if not Path(f"/proc/{pid}").exists()]
            if gone:
                raise BenchError(f"twistd {gone} died during the run")
            counts = stored(top, channels)
        except (BenchError, HubError, OSError) as error:
            return {**row, "error": str(error) or type(error).__name__}
    rate = result["window_ok"] / result["window_s"]
    hub_cpu = used(first, last, pids)
    redis_cpu = used(first, last, top.pids)
    row.update(
        channels=len(channels),
        publishes_per_s=round(rate),
        hub_cpu=round(hub_cpu, 3),
        hub_cpu_us_per_publish=round(hub_cpu / rate * 1e6, 1) if rate else None,
        redis_cpu=round(redis_cpu, 3),
        redis_cpu_us_per_publish=round(redis_cpu / rate * 1e6, 2) if rate else None,
        publisher_cpu=round(used(first, last, [publisher]), 3),
        others_cpu=round(others(first, last), 3),
        core_busy=cores(first, last),
        steal=round(steal(first, last), 3),
        in_flight=args.in_flight,
        acknowledged=result["ok"],
        refused=result["refused"],
        statuses=result["statuses"],
        stored=sum(counts.values()),
        stored_per_primary=list(counts.values()),
        window_s=round(last.at - first.at, 3),
        loadavg=loadavg(),
    )
    if result["refused"]:
        row["error"] = (
            f"{result['refused']:,} publishes were refused: {result['statuses']}"
        )
    return row


def hub_env() -> dict[str, str]:
    """``twistd sse``'s environment: the publish token."""
    return twistd_env()


def request(channel: str, data: str, token: str) -> bytes:
    """A publish of ``data`` on ``channel``, as a keep-alive request."""
    body = data.encode()
    return (
        f"POST /channels/{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def response(buffer: bytes) -> tuple[int, int] | None:
    """The status and length of the first whole response in ``buffer``."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buffer[:head_end].lower()
    status = int(buffer[9:12])
    at = head_end + 4
    length = head.find(b"\r\ncontent-length:")
    if length >= 0:
        line_end = head.find(b"\r\n", length + 2)
        end = at + int(head[length + 17 : line_end if line_end >= 0 else None])
        return (status, end) if len(buffer) >= end else None
    if b"\r\ntransfer-encoding: chunked" not in head:
        return status, at
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(buffer[at:line_end].split(b";")[0], 16)
        if size == 0:
            end = line_end + 4  # no trailers
            return (status, end) if len(buffer) >= end else None
        at = line_end + 2 + size + 2


@dataclass
class Poster:
    """One keep-alive connection of the publisher, one request in flight."""

    sock: socket.socket
    requests: list[bytes]
    next: int = 0
    buffer: bytes = b""

    def send(self) -> None:
        """Send the next publish."""
        self.sock.sendall(self.requests[self.next])
        self.next = (self.next + 1) % len(self.requests)


def drive_http(spec: dict[str, Any], control: IO[bytes]) -> dict[str, Any]:
    """
    The publisher: ``--in-flight`` connections spread over the hubs, each
    POSTing round the channels, one request in flight, until the window
    given on ``control`` ends; the acknowledgements within it.
    """
    channels = list(spec["channels"])
    ports = list(spec["ports"])
    count = int(spec["connections"])
    chooser = selectors.DefaultSelector()
    posters = []
    for n in range(count):
        sock = socket.create_connection(
            ("127.0.0.1", ports[n % len(ports)]), timeout=30
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mine = rotate(channels, n, count)
        poster = Poster(sock, [request(c, spec["data"], spec["token"]) for c in mine])
        posters.append(poster)
        chooser.register(sock, selectors.EVENT_READ, poster)
        poster.send()
    window = Window(control)
    chooser.register(window.fd, selectors.EVENT_READ, None)
    print("ready", flush=True)
    ok = refused = 0
    statuses: dict[str, int] = {}
    marks: list[int] = []
    waiting = count
    stopping = False
    given_up = time.monotonic() + READY_TIMEOUT + 60
    while waiting:
        for key, _ in chooser.select(0.2):
            if key.data is None:
                window.read()
                continue
            poster = key.data
            data = poster.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the hub closed a publisher's connection")
            poster.buffer += data
            while (answer := response(poster.buffer)) is not None:
                status, end = answer
                poster.buffer = poster.buffer[end:]
                if 200 <= status < 300:
                    ok += 1
                else:
                    refused += 1
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                if stopping:
                    waiting -= 1
                else:
                    poster.send()
        starts, ends = window.tick(time.monotonic())
        if starts:
            marks.append(ok)
        if ends:
            marks.append(ok)
            stopping = True
        if window.start is None and time.monotonic() > given_up:
            raise TimeoutError("no window was given")
    assert window.started_at is not None and window.ended_at is not None
    return {
        "window_s": window.ended_at - window.started_at,
        "window_ok": marks[1] - marks[0],
        "ok": ok,
        "refused": refused,
        "statuses": statuses,
    }


def worker_main(mode: str) -> int:
    """A load process: the spec on standard input, the result on output."""
    control = sys.stdin.buffer
    spec = json.loads(control.readline())
    try:
        if mode == "--load":
            result = drive_redis(spec, control)
        else:
            result = drive_http(spec, control)
    except (OSError, ValueError, KeyError) as error:
        result = {"error": f"{type(error).__name__}: {error}"}
    print(json.dumps(result), flush=True)
    return 0


# The tables


def loadavg() -> float:
    """The machine's load average over the last minute."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def kind_of(row: dict[str, Any]) -> tuple[str, str, Any]:
    """What a row measures, whatever its round: part, topology, form or hubs."""
    return row["part"], row["topology"], row.get("form", row.get("hubs"))


def ratios(rows: list[dict[str, Any]]) -> None:
    """Put in each cluster row its ratios to the single rows of its round."""
    singles = {
        (*kind_of(r), r["round"]): r
        for r in rows
        if r["topology"] == "single" and "error" not in r
    }
    for row in rows:
        if row["topology"] != "cluster" or "error" in row:
            continue
        part, _, detail = kind_of(row)
        if part == "redis":
            for form in ("log", "live"):
                single = singles.get(("redis", "single", form, row["round"]))
                if single is not None:
                    row[f"vs_single_{form}"] = _ratio(row, single, "publishes_per_s")
                    row[f"projected_vs_single_{form}"] = _ratio(
                        row, single, "projected_per_s"
                    )
        else:
            single = singles.get(("hub", "single", detail, row["round"]))
            if single is not None:
                row["vs_single"] = _ratio(row, single, "publishes_per_s")


def _ratio(row: dict[str, Any], single: dict[str, Any], key: str) -> float | None:
    if row.get(key) and single.get(key):
        return round(float(row[key]) / float(single[key]), 3)
    return None


def _show(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _values(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if isinstance(r.get(key), int | float)]


def median(
    rows: list[dict[str, Any]], key: str, digits: int = 0, spread: bool = False
) -> str:
    """The median of ``key`` over ``rows``; with ``spread``, its range too."""
    values = _values(rows, key)
    if not values:
        return "-"
    shown = _show(statistics.median(values), digits)
    if spread and len(values) > 1:
        shown += f" ({_show(min(values), digits)}-{_show(max(values), digits)})"
    return shown


def groups(
    rows: list[dict[str, Any]], part: str
) -> Iterator[tuple[str, Any, list[dict[str, Any]], list[str]]]:
    """Each kind of row of ``part``: its name, form or hubs, rows, errors."""
    kinds: dict[tuple[str, str, Any], list[dict[str, Any]]] = {}
    for row in rows:
        if row["part"] == part:
            kinds.setdefault(kind_of(row), []).append(row)
    for (_, topology, detail), found in kinds.items():
        good = [r for r in found if "error" not in r]
        primaries = found[0].get("primaries", "?")
        errors = sorted({r["error"] for r in found if "error" in r})
        yield f"{topology} ({primaries})", detail, good, errors


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The Redis rows, their ratios, then the hub rows; medians of rounds."""
    out = []
    if any(r["part"] == "redis" for r in rows):
        out += [
            f"Redis capacity: the broker's publish script, {args.size}-byte data, "
            f"{args.channels:,} channels; Redis on cpu {args.server_cpu or '-'}, "
            f"{args.loaders} loaders on cpu {args.client_cpu or '-'}",
            "",
            "| topology | form | publishes/s | Redis CPU | Redis µs/publish "
            "| publishes per Redis CPU-s | projected, a core per primary "
            "| per primary: publishes/s (CPU) | loader CPU | others' CPU "
            "| cores busy |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, form, good, errors in groups(rows, "redis"):
            for error in errors:
                out.append(f"| {name} | {form} | error: {error[:160]} |")
            if not good:
                continue
            per_node = [
                [r["nodes"][i] for r in good] for i in range(len(good[0]["nodes"]))
            ]
            nodes = ", ".join(
                f"{median(node, 'publishes_per_s')} ({median(node, 'cpu', 2)})"
                for node in per_node
            )
            # Redis waited for the loaders part of the time: not its limit.
            idle = " (!)" if statistics.median(_values(good, "redis_cpu")) < 0.9 else ""
            out.append(
                f"| {name} | {form} | {median(good, 'publishes_per_s', spread=True)} "
                f"| {median(good, 'redis_cpu', 2)}{idle} "
                f"| {median(good, 'redis_cpu_us_per_publish', 2)} "
                f"| {median(good, 'publishes_per_redis_cpu_s', spread=True)} "
                f"| {median(good, 'projected_per_s', spread=True)} | {nodes} "
                f"| {median(good, 'loader_cpu', 2)} | {median(good, 'others_cpu', 2)} "
                f"| {' / '.join(busy(good))} |"
            )
        clusters = [
            r
            for r in rows
            if kind_of(r) == ("redis", "cluster", "live") and "error" not in r
        ]
        said = [
            f"cluster / single ({form} form), the rounds' ratios: "
            f"{median(clusters, f'vs_single_{form}', 2, True)}x publishes/s "
            "with one core for all of Redis; "
            f"{median(clusters, f'projected_vs_single_{form}', 2, True)}x "
            "projected (a core per primary)."
            for form in ("log", "live")
            if any(f"vs_single_{form}" in r for r in clusters)
        ]
        if said:
            out += ["", *said]
    if any(r["part"] == "hub" for r in rows):
        if out:
            out.append("")
        out += [
            f"End to end: twistd sse on cpu {args.server_cpu or '-'}, Redis and "
            f"the publisher on cpu {args.client_cpu or '-'}, {args.in_flight} "
            f"POSTs in flight over {args.channels:,} channels",
            "",
            "| topology | hubs | publishes/s acknowledged | hub CPU | hub µs/publish "
            "| Redis CPU | Redis µs/publish | publisher CPU | others' CPU "
            "| cores busy | refused | vs single |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, hubs, good, errors in groups(rows, "hub"):
            for error in errors:
                out.append(f"| {name} | {hubs} | error: {error[:160]} |")
            if not good:
                continue
            out.append(
                f"| {name} | {hubs} | {median(good, 'publishes_per_s', spread=True)} "
                f"| {median(good, 'hub_cpu', 2)} "
                f"| {median(good, 'hub_cpu_us_per_publish', 1)} "
                f"| {median(good, 'redis_cpu', 2)} "
                f"| {median(good, 'redis_cpu_us_per_publish', 1)} "
                f"| {median(good, 'publisher_cpu', 2)} "
                f"| {median(good, 'others_cpu', 2)} | {' / '.join(busy(good))} "
                f"| {sum(r['refused'] for r in good)} "
                f"| {median(good, 'vs_single', 2, True)} |"
            )
    rounds = (
        f"medians of {args.repeat} rounds (the rates: least-most)"
        if args.repeat > 1
        else "one round"
    )
    stolen = max(_values(rows, "steal"), default=0.0)
    out += [
        "",
        f"{rounds}; CPU in cores (1.00: one core all the time), over the "
        f"measured {args.seconds:g} s; others' CPU: what the machine's other "
        "processes used meanwhile; cores busy: each core, whoever used it; "
        "(!): Redis was under 90 % busy, so not all the time the limit; "
        f"the hypervisor took up to {stolen:.2f} cores (steal) in a row.",
    ]
    return "\n".join(out)


def busy(rows: list[dict[str, Any]]) -> list[str]:
    """The median use of each core over ``rows``."""
    return [
        f"{statistics.median(r['core_busy'][i] for r in rows):.2f}"
        for i in range(len(rows[0]["core_busy"]))
    ]


# The command


def name_list(choices: Sequence[str], option: str) -> Any:
    """An argparse type: comma-separated names from ``choices``."""

    def parse(text: str) -> list[str]:
        names = [word.strip() for word in text.split(",") if word.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"{option}: unknown {(unknown or [text])[0]!r}, use {','.join(choices)}"
            )
        return list(dict.fromkeys(names))

    return parse


def hub_counts(text: str) -> list[int]:
    """``--hubs``: comma-separated counts of hub processes, 1 to 8."""
    try:
        counts = [int(word) for word in text.split(",") if word.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--hubs takes whole numbers: {text!r}"
        ) from None
    if not counts or min(counts) < 1 or max(counts) > 8:
        raise argparse.ArgumentTypeError(f"--hubs: each from 1 to 8: {text!r}")
    return list(dict.fromkeys(counts))


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--parts",
        type=name_list(PARTS, "--parts"),
        default=list(PARTS),
        help="redis, hub or both (redis,hub)",
    )
    p.add_argument(
        "--topologies",
        type=name_list(TOPOLOGIES, "--topologies"),
        default=list(TOPOLOGIES),
        help="single, cluster or both (single,cluster)",
    )
    p.add_argument(
        "--seconds", type=at_least(0.2), default=8.0, help="measured seconds a row (8)"
    )
    p.add_argument(
        "--warm", type=at_least(0), default=1.0, help="seconds of load before (1)"
    )
    p.add_argument(
        "--channels",
        type=at_least(3, int),
        default=1000,
        help="channel names published round (1000)",
    )
    p.add_argument(
        "--size", type=at_least(1, int), default=64, help="bytes of data (64)"
    )
    p.add_argument(
        "--primaries", type=at_least(3, int), default=3, help="of the cluster (3)"
    )
    p.add_argument(
        "--loaders",
        type=at_least(1, int),
        default=2,
        help="load processes of the Redis part (2)",
    )
    p.add_argument(
        "--pipeline",
        type=at_least(1, int),
        default=64,
        help="publishes per write; two writes in flight a connection (64)",
    )
    p.add_argument(
        "--in-flight",
        type=at_least(1, int),
        default=16,
        help="POSTs in flight (connections) in the hub part (16)",
    )
    p.add_argument(
        "--hubs",
        type=hub_counts,
        default=[1],
        help="twistd processes in the hub part, a row each (1; 1,2 for both)",
    )
    p.add_argument(
        "--repeat",
        type=at_least(1, int),
        default=1,
        help="rounds, each row once a round; the table gives medians (1)",
    )
    p.add_argument("--json", action="store_true", help="JSON lines only, no table")
    two_cores = (os.cpu_count() or 1) >= 2
    p.add_argument(
        "--server-cpu",
        default="0" if two_cores else "",
        help="Redis in the Redis part, twistd in the hub part ('' = not pinned; 0)",
    )
    p.add_argument(
        "--client-cpu",
        default="1" if two_cores else "",
        help="the loaders; Redis and the publisher in the hub part ('' = not "
        "pinned; 1)",
    )
    p.add_argument(
        "--redis-server",
        default=shutil.which("redis-server") or "redis-server",
        help="the redis-server program",
    )
    p.add_argument(
        "--redis-cli",
        default=shutil.which("redis-cli") or "redis-cli",
        help="the redis-cli program (creates the cluster)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    # The data: the same length as a real one; its text does not matter.
    args.data = ("x" * args.size)[: args.size]
    channels = [f"c{n}" for n in range(args.channels)]
    # SIGINT and SIGTERM unwind, so that every Redis is torn down.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    facts: dict[str, Any] = machine_facts(args.client_cpu, args.server_cpu)
    facts["loadavg"] = loadavg()
    if not args.json:
        print("# machine: " + json.dumps(facts), flush=True)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    plan: list[tuple[str, str, Any]] = []
    if "redis" in args.parts:
        plan += [("redis", k, f) for k, f in REDIS_ROWS if k in args.topologies]
    if "hub" in args.parts:
        plan += [("hub", k, n) for n in args.hubs for k in args.topologies]
    interrupted = False
    try:
        # Rounds interleave the topologies, so that a change in the
        # machine's load reaches them all.
        for round_ in range(args.repeat):
            for part, kind, detail in plan:
                if part == "redis":
                    row = redis_row(kind, detail, args, channels)
                else:
                    row = hub_row(kind, detail, args, channels)
                row["round"] = round_
                rows.append(row)
                ratios(rows)
                print(json.dumps(row), flush=True)
    except KeyboardInterrupt:
        interrupted = True
    if not args.json:
        late = " (interrupted)" if interrupted else ""
        print(
            f"\n{table(rows, args)}\n\n{time.monotonic() - started:.0f} s{late}; "
            f"load average {facts['loadavg']:.2f} before, {loadavg():.2f} after",
            flush=True,
        )
    if interrupted:
        return 130
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] in ("--load", "--post"):
        sys.exit(worker_main(sys.argv[1]))
    sys.exit(main())
