"""
What presence costs, against a real ``twistd -n sse`` on 127.0.0.1: each
measurement twice, with presence on and with ``--no-presence``, on the memory
broker and on Redis, all in one run:

    python bench/presence.py                         # ~10 min
    python bench/presence.py --brokers memory --parts setup,deliveries
    python bench/presence.py --quick                 # a few dozen subscribers

Every subscriber has an identity: the server verifies HS256 JWTs
(``--jwt-secret``, through its environment), and subscriber ``i`` opens its
stream with ``?access_token=`` a token of ``{"sub": "user<i>", "sse":
{"subscribe": ["*"]}}``, so that presence counts it under ``user<i>``.
Every presence-on run checks, with ``GET /presence/{channel}``, that the
server counted the subscribers it should (``presence_count``).

setup
    Connection set-up: N subscribers (``--n``, 5000) open their streams, at
    most ``--in-flight`` (256) handshakes at once, on one channel (``x``) and
    on N/10 channels (``c0`` ... ``c<N/10 - 1>``, subscriber ``i`` on
    ``c<i mod N/10>``), and stay open.  The client is this script in another
    process (``--drive``), pinned to ``--client-cpu``; a set-up is done at
    the response head and the first frame.  Reported: connections per
    second from the first connect to the last set-up (``cold_rate``: every
    token verified for the first time) and the server's CPU time (user +
    system, from ``/proc/<pid>/task/*/schedstat``) per set-up, read before
    and once the server is idle again; the RSS growth per subscriber; then
    a reconnect: every subscriber closes (a reset) and opens again at once
    (``reconnect_rate`` and its CPU per subscriber, leaving counted, the
    tokens now cached).

deliveries
    N subscribers on channel ``x`` read while the C publisher ``pub``
    POSTs 64-byte events to it, ``--publish-conns`` (4) requests in flight,
    for ``--sat-s`` (4) s: events received per second, all subscribers
    summed, and per server CPU-second.  The load client is ``sseload``
    (``bench/client/``, or ``--client-src``), which opens every stream with
    one path, so all N subscribers here carry the token of ``user0``.

storm (Redis only)
    A reconnect storm of ``--storm-n`` (10,000) subscribers on
    ``--storm-n``/10 channels, as in *setup*, and what Redis runs, read
    with ``MONITOR``: the commands the hub sends (round trips, or parts of
    a pipeline) and the calls its scripts make, by name.  They are counted
    while the subscribers first open, over ``--idle-s`` (10) s while they
    stay open (lease renewals), and while all of them close and open again
    at once (the storm), each until 1 s after the server went idle, with
    Redis's CPU time over each (``INFO cpu``, its work for ``MONITOR``
    included).  Reading ``MONITOR`` loads Redis and the client's CPU, so
    the set-up rates and CPU of these runs are shown but not held to the
    target: *setup* measures those (``--n 10000`` for the storm's shape).

Redis is a ``redis-server`` this script starts on a free port, pinned to
the client's CPU (as is this script, which reads ``MONITOR``), and the hub
uses its database ``--redis-db`` (11), flushed before every run.
``MONITOR`` sees every client of the server, so none other may share it
(``--redis redis://HOST:PORT`` uses another server; the counts then
include whatever else it runs).

The target: presence costs at most 10 % of the set-up rate and of the
deliveries per second, so on/off >= 0.90.  For set-ups it is given for the
rate the client saw and for the server's CPU per set-up (off/on, the rate
the server alone allows), which varies less.  Every server is a new
``twistd`` pinned to ``--server-cpu`` (0), published one event to ``x``
first (again while a Redis broker is still connecting), and for *setup*
and *storm* warmed up by ``--warm`` (200) subscribers of other identities
that open and close.  Runs alternate between presence on and off over
``--repeat`` (3) rounds, on first in even rounds, and the tables show
medians.  One JSON line per run on stdout, then the tables; both also go
to ``<out>/<stamp>-presence.{jsonl,md}``.  The exit status is 1 if a run failed
or lost a subscriber or an event, or if presence did not count what it
should; a missed target is reported, not an error.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import secrets
import selectors
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from auth import cpu_ns, rss_kb, settle  # noqa: E402
from run import machine_facts, raise_nofile, start_redis, stop, taskset  # noqa: E402
from subscriptions import (  # noqa: E402
    DEFAULT_CLIENT_SRC,
    TOKEN,
    build,
    publish,
    server,
)

#: The target: with presence, at least this much of the rate without.
TARGET = 0.9
#: The channel of the one-channel runs and of the deliveries.
ONE = "x"
#: The listen backlog: Twisted's 50 would drop SYNs of 256 in flight.
LISTEN = "tcp:0:interface=127.0.0.1:backlog=1024"
#: The longest request the harness's sseload can send (its buffer, 256).
SSELOAD_REQUEST_MAX = 255
#: Seconds to wait after the server went idle before reading Redis's
#: counters: presence writes what changed every 0.2 s.
FLUSH_WAIT = 1.0


@dataclass(frozen=True)
class Case:
    """One measurement, made twice: with presence and without."""

    part: str
    broker: str
    #: Subscribers.
    n: int
    #: Channels they are spread over (1: all on ``x``).
    channels: int

    @property
    def key(self) -> str:
        """The name of the pair in the tables."""
        shape = "1 channel" if self.channels == 1 else f"{self.channels} channels"
        return f"{self.part} {self.broker} {self.n} on {shape}"


def cases(args: argparse.Namespace) -> list[Case]:
    """The cases of the parts and brokers asked for."""
    out = []
    for broker in args.brokers:
        if "setup" in args.parts:
            out.append(Case("setup", broker, args.n, 1))
            out.append(Case("setup", broker, args.n, max(1, args.n // 10)))
        if "deliveries" in args.parts:
            out.append(Case("deliveries", broker, args.n, 1))
        if "storm" in args.parts and broker == "redis":
            out.append(Case("storm", broker, args.storm_n, max(1, args.storm_n // 10)))
    return out


def channel_of(i: int, channels: int) -> str:
    """The channel of subscriber ``i`` among ``channels``."""
    return ONE if channels == 1 else f"c{i % channels}"


def sign(secret: str, subjects: Sequence[str]) -> list[str]:
    """An HS256 token per subject that may read every channel (no ``exp``)."""
    import jwt

    return [
        jwt.encode({"sub": sub, "sse": {"subscribe": ["*"]}}, secret, "HS256")
        for sub in subjects
    ]


def write_paths(folder: Path, name: str, tokens: Sequence[str], channels: int) -> Path:
    """The request paths of ``tokens`` on ``channels``, one a line."""
    path = folder / f"{name}.txt"
    path.write_text(
        "".join(
            f"/channels/{channel_of(i, channels)}?access_token={token}\n"
            for i, token in enumerate(tokens)
        )
    )
    return path


# The client side: this script with --drive, in its own process.


def _request(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()


def _close(sock: socket.socket) -> None:
    # A reset, as when a network drops: no TIME_WAIT left on either side.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    sock.close()


def open_streams(
    port: int, paths: Sequence[str], in_flight: int, held: list[socket.socket]
) -> dict[str, Any]:
    """
    Open a stream per path, ``in_flight`` handshakes at a time, and keep
    those that got a 200 and their first frame in ``held``.
    """
    selector = selectors.DefaultSelector()
    pending: dict[socket.socket, tuple[float, bytearray]] = {}
    statuses: dict[str, int] = {}
    failures: dict[str, int] = {}
    waits: list[float] = []
    started = 0
    begun = time.monotonic()
    deadline = begun + 300

    def fail(sock: socket.socket | None, reason: str) -> None:
        failures[reason] = failures.get(reason, 0) + 1
        if sock is not None:
            selector.unregister(sock)
            del pending[sock]
            sock.close()

    while started < len(paths) or pending:
        while started < len(paths) and len(pending) < in_flight:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex(("127.0.0.1", port))
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                fail(None, errno.errorcode.get(code, str(code)))
            else:
                pending[sock] = (time.monotonic(), bytearray())
                selector.register(sock, selectors.EVENT_WRITE, _request(paths[started]))
            started += 1
        if time.monotonic() > deadline:
            for sock in list(pending):
                fail(sock, "timeout")
            break
        for key, events in selector.select(1.0):
            sock = key.fileobj  # type: ignore[assignment]
            if events & selectors.EVENT_WRITE:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    fail(sock, errno.errorcode.get(code, str(code)))
                    continue
                try:
                    sock.sendall(key.data)
                except OSError as error:
                    fail(sock, errno.errorcode.get(error.errno or 0, str(error)))
                    continue
                selector.modify(sock, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except OSError as error:
                fail(sock, errno.errorcode.get(error.errno or 0, str(error)))
                continue
            if not data:
                fail(sock, "closed early")
                continue
            since, buffer = pending[sock]
            buffer += data
            head, found, body = bytes(buffer).partition(b"\r\n\r\n")
            if not found:
                continue
            status = head[9:12].decode("ascii", "replace")
            if status == "200" and b"\n\n" not in body:
                continue  # The first frame is not all here yet.
            statuses[status] = statuses.get(status, 0) + 1
            selector.unregister(sock)
            del pending[sock]
            if status == "200":
                waits.append(time.monotonic() - since)
                held.append(sock)
            else:
                sock.close()
    selector.close()
    elapsed = time.monotonic() - begun
    waits.sort()
    return {
        "n": len(paths),
        "ok": statuses.get("200", 0),
        "statuses": statuses,
        "failures": failures,
        "setup_s": round(elapsed, 4),
        "rate": round(statuses.get("200", 0) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(1000 * waits[len(waits) // 2], 2) if waits else None,
        "p99_ms": round(1000 * waits[int(len(waits) * 0.99)], 2) if waits else None,
    }


def drive(port: int, in_flight: int, commands: IO[str]) -> None:
    """
    Answer the lines of ``commands`` with a JSON line each: ``open FILE``
    opens a stream per path of FILE and holds it; ``close`` resets every
    held one; ``storm FILE`` is ``close`` then ``open FILE`` at once.
    """
    held: list[socket.socket] = []
    for line in commands:
        word, _, argument = line.strip().partition(" ")
        answer: dict[str, Any] = {}
        if word in ("close", "storm"):
            answer["closed"] = len(held)
            for sock in held:
                _close(sock)
            held.clear()
        if word in ("open", "storm"):
            paths = Path(argument).read_text().splitlines()
            answer.update(open_streams(port, paths, in_flight, held))
        answer["held"] = len(held)
        print(json.dumps(answer), flush=True)
    for sock in held:
        _close(sock)


class Driver:
    """The client process, pinned to its CPU, told what to do line by line."""

    def __init__(self, cpu: str, port: int, in_flight: int) -> None:
        self.process = subprocess.Popen(
            [
                *taskset(cpu),
                sys.executable,
                str(Path(__file__).resolve()),
                *("--drive", "--port", str(port), "--in-flight", str(in_flight)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, command: str) -> dict[str, Any]:
        """Send one command; its answer."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the client ended on {command.split()[0]!r}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def end(self) -> None:
        """Close the held streams and end the process."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


# Redis: the private server and its counters.


def _address(url: str) -> tuple[str, int]:
    """The host and port of ``redis://host:port/db``."""
    host, _, port = url.split("://", 1)[1].split("/", 1)[0].rpartition(":")
    return host, int(port)


def redis_call(url: str, *words: str) -> bytes:
    """
    One command to the Redis server of ``url`` (``redis://host:port/db``,
    no password); the reply's bytes, for the simple and bulk replies this
    script needs.
    """
    host, port = _address(url)
    request = f"*{len(words)}\r\n" + "".join(
        f"${len(word.encode())}\r\n{word}\r\n" for word in words
    )
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request.encode())
        reply = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"redis {words[0]}: closed")
            reply += chunk
            head, found, rest = reply.partition(b"\r\n")
            if not found:
                continue
            if head[:1] in (b"+", b":"):
                return head[1:]
            if head[:1] == b"-":
                raise RuntimeError(f"redis {words[0]}: {head[1:]!r}")
            if head[:1] == b"$":
                size = int(head[1:])
                if len(rest) >= size + 2:
                    return rest[:size]
                continue
            raise RuntimeError(f"redis {words[0]}: unexpected {head[:40]!r}")


def redis_cpu_us(url: str) -> int:
    """The CPU time the Redis server has used (user + system), in µs."""
    fields = dict(
        line.split(":", 1)
        for line in redis_call(url, "INFO", "cpu").decode().splitlines()
        if ":" in line
    )
    seconds = float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])
    return int(seconds * 1e6)


def flush_db(url: str) -> None:
    """Empty the database of ``url``."""
    db = url.rsplit("/", 1)[1]
    with socket.create_connection(_address(url), timeout=10) as sock:
        sock.sendall(
            f"*2\r\n$6\r\nSELECT\r\n${len(db)}\r\n{db}\r\n"
            "*1\r\n$7\r\nFLUSHDB\r\n".encode()
        )
        reply = b""
        while reply.count(b"\r\n") < 2:
            chunk = sock.recv(1024)
            if not chunk:
                break
            reply += chunk
    if reply != b"+OK\r\n+OK\r\n":
        raise RuntimeError(f"redis FLUSHDB: {reply[:200]!r}")


class Monitor:
    """
    Redis's ``MONITOR``, read by a thread: the commands each client sends
    (a round trip each, or a part of a pipeline) and those its scripts run
    (shown as the client ``lua``), counted by name.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        host, port = _address(url)
        self._sock = socket.create_connection((host, port), timeout=10)
        self._sock.sendall(b"*1\r\n$7\r\nMONITOR\r\n")
        self._counts: dict[tuple[str, str], int] = {}
        self._marks: set[str] = set()
        self._seen = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self._next = 0

    def _read(self) -> None:
        buffer = bytearray()
        self._sock.settimeout(None)
        while True:
            try:
                chunk = self._sock.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            end = buffer.rfind(b"\r\n")
            if end < 0:
                continue
            lines = bytes(buffer[:end]).split(b"\r\n")
            del buffer[: end + 2]
            with self._seen:
                for line in lines:
                    self._count(line)
                self._seen.notify_all()

    def _count(self, line: bytes) -> None:
        # +1796682061.238613 [11 127.0.0.1:57112] "evalsha" "..." ...
        # +1796682061.238629 [11 lua] "get" "k"
        opened, closed = line.find(b"["), line.find(b'] "')
        if opened < 0 or closed < 0:
            return
        origin = "script" if line[opened:closed].endswith(b" lua") else "client"
        name_end = line.find(b'"', closed + 3)
        name = line[closed + 3 : name_end].decode("ascii", "replace").lower()
        if name == "info":
            return  # Ours (counts).
        if name == "echo":
            word = line[name_end + 1 :].strip().strip(b'"').decode("ascii", "replace")
            if word.startswith("bench-mark-"):
                self._marks.add(word)
                return
        key = (origin, name)
        self._counts[key] = self._counts.get(key, 0) + 1

    def counts(self) -> dict[tuple[str, str], int]:
        """
        The counts so far, once every command Redis ran before this call
        has been read (a marker sent through another connection came back),
        and Redis's CPU time in µs (``("cpu", "us")``: user + system, its
        work for ``MONITOR`` included).
        """
        self._next += 1
        mark = f"bench-mark-{self._next}"
        redis_call(self.url, "ECHO", mark)
        deadline = time.monotonic() + 30
        with self._seen:
            while mark not in self._marks:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    raise RuntimeError("MONITOR fell behind")
                self._seen.wait(left)
            counts = dict(self._counts)
        counts["cpu", "us"] = redis_cpu_us(self.url)
        return counts

    def close(self) -> None:
        """Stop monitoring."""
        self._sock.close()
        self._thread.join(timeout=10)


def commands_between(
    before: dict[tuple[str, str], int], after: dict[tuple[str, str], int]
) -> dict[str, Any]:
    """
    What Redis ran between two readings: ``client`` (commands sent) and
    ``script`` (run by scripts) totals, and each by name, largest first.
    """
    out: dict[str, Any] = {
        "cpu_s": round((after["cpu", "us"] - before["cpu", "us"]) / 1e6, 3)
    }
    for origin in ("client", "script"):
        diff = {
            name: count - before.get((kind, name), 0)
            for (kind, name), count in after.items()
            if kind == origin and count > before.get((kind, name), 0)
        }
        out[origin] = sum(diff.values())
        out[f"{origin}_by_name"] = dict(
            sorted(diff.items(), key=lambda item: (-item[1], item[0]))
        )
    return out


@contextmanager
def redis_server(
    wanted: bool, url: str | None, db: int, cpu: str, logdir: Path
) -> Iterator[str | None]:
    """
    The Redis URL the hub gets (database ``db`` of ``url`` if given, else of
    a ``redis-server`` started here on a free port, pinned to ``cpu``), or
    ``None`` if none is ``wanted`` or none can be started.
    """
    if not wanted:
        yield None
        return
    if url is not None:
        yield f"{url.rstrip('/')}/{db}"
        return
    if shutil.which("redis-server") is None:
        yield None
        return
    process, base = start_redis(logdir)
    try:
        if taskset(cpu):
            subprocess.run(
                ["taskset", "-pc", cpu, str(process.pid)],
                check=True,
                capture_output=True,
            )
        yield f"{base}/{db}"
    finally:
        stop(process)


def redis_presence() -> str | None:
    """Why the Redis broker cannot keep presence, or ``None`` if it can."""
    import twisted_sse

    broker = getattr(twisted_sse, "RedisBroker", None)
    if broker is None:
        return "twisted_sse has no RedisBroker"
    if not twisted_sse.IPresenceBroker.implementedBy(broker):
        return "the RedisBroker keeps no presence (no IPresenceBroker)"
    return None


# One run.


def server_args(broker_url: str, presence: bool) -> list[str]:
    """The ``twistd sse`` options of a run."""
    args = ["--port", LISTEN, "--publish-token", TOKEN, "--broker", broker_url]
    return args if presence else [*args, "--no-presence"]


def server_env(secret: str) -> dict[str, str]:
    """The server's environment: the JWT secret goes there."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TWISTED_SSE_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["TWISTED_SSE_JWT_SECRET"] = secret
    return env


def presence_count(port: int, channel: str, token: str) -> int | None:
    """What ``GET /presence/{channel}`` counts, or ``None`` if refused."""
    url = f"http://127.0.0.1:{port}/presence/{channel}?access_token={token}"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            count: int = json.load(answer)["count"]
            return count
    except urllib.error.HTTPError:
        return None


@dataclass
class Setting:
    """What every run of this invocation shares."""

    args: argparse.Namespace
    secret: str
    folder: Path
    logdir: Path
    redis_url: str | None
    load: Path | None = None
    pub: Path | None = None


def broker_url(setting: Setting, broker: str) -> str:
    """The ``--broker`` of ``broker``, its database emptied first."""
    if broker == "memory":
        return "memory"
    if setting.redis_url is None:
        raise RuntimeError("no redis-server to start (see --redis)")
    why = redis_presence()
    if why is not None:
        raise RuntimeError(why)
    flush_db(setting.redis_url)
    return setting.redis_url


def paths_for(setting: Setting, case: Case) -> tuple[Path, Path, str]:
    """
    The files of the subscribers' paths (warm-up and measured) of ``case``,
    and the token that reads presence.
    """
    name = f"{case.n}-{case.channels}"
    measured = setting.folder / f"{name}.txt"
    warm = setting.folder / f"{name}-warm.txt"
    if not measured.exists():
        args = setting.args
        tokens = sign(setting.secret, [f"user{i}" for i in range(case.n)])
        write_paths(setting.folder, name, tokens, case.channels)
        warm_tokens = sign(setting.secret, [f"warm{i}" for i in range(args.warm)])
        write_paths(setting.folder, f"{name}-warm", warm_tokens, case.channels)
    reader = sign(setting.secret, ["reader"])[0]
    return warm, measured, reader


def run_setup(
    setting: Setting, case: Case, presence: bool, round_: int
) -> dict[str, Any]:
    """
    One fresh server: N subscribers open and stay, then all reconnect at
    once; set-up rates, the server's CPU and RSS, Redis's command counts.
    """
    args = setting.args
    base: dict[str, Any] = {
        "part": case.part,
        "broker": case.broker,
        "n": case.n,
        "channels": case.channels,
        "presence": presence,
        "round": round_,
    }
    slug = f"{case.part}-{case.broker}-{case.n}-{case.channels}-{presence}-{round_}"
    result: dict[str, Any] = {**base}
    try:
        with ExitStack() as stack:
            url = broker_url(setting, case.broker)
            warm, measured, reader = paths_for(setting, case)
            proc, port = stack.enter_context(
                server(
                    args.server_cpu,
                    setting.logdir / f"{slug}.log",
                    server_args(url, presence),
                    server_env(setting.secret),
                )
            )
            # Ended before the server stops, which then has no stream to drain.
            driver = Driver(args.client_cpu, port, args.in_flight)
            stack.callback(driver.end)
            # Also waits for a Redis broker to be connected.
            warm_up(port)
            monitor = None
            if case.part == "storm":
                # Not in the runs that measure set-ups: reading MONITOR
                # loads the Redis server and the client's CPU.
                monitor = Monitor(url)
                stack.callback(monitor.close)
            settle(proc.pid)
            warmed = driver.ask(f"open {warm}")
            driver.ask("close")
            cpu0 = settle(proc.pid)
            rss0 = rss_kb(proc.pid)
            seen0 = monitor.counts() if monitor else {}
            cold = driver.ask(f"open {measured}")
            cpu1 = before_storm = settle(proc.pid)
            rss1 = rss_kb(proc.pid)
            counted = presence_count(port, channel_of(0, case.channels), reader)
            if monitor:
                # Presence writes what changed every 0.2 s.
                time.sleep(FLUSH_WAIT)
                seen1 = monitor.counts()
                result["open_redis"] = commands_between(seen0, seen1)
                if case.part == "storm":
                    time.sleep(args.idle_s)
                    seen2 = monitor.counts()
                    result["idle_s"] = args.idle_s
                    result["idle_redis"] = commands_between(seen1, seen2)
                    seen1 = seen2
                before_storm = cpu_ns(proc.pid)
            began = time.monotonic()
            again = driver.ask(f"storm {measured}")
            cpu2 = settle(proc.pid)
            if monitor:
                time.sleep(FLUSH_WAIT)
                result["storm_redis"] = commands_between(seen1, monitor.counts())
                result["storm_window_s"] = round(time.monotonic() - began, 3)
            recounted = presence_count(port, channel_of(0, case.channels), reader)
            alive = proc.poll() is None
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        return {**base, "error": str(error)[-300:]}
    # Subscriber 0's channel has every channels-th subscriber.
    expected = len(range(0, case.n, case.channels))
    result.update(
        {
            "warm_ok": warmed["ok"],
            "ok": cold["ok"],
            "reconnect_ok": again["ok"],
            "closed": again["closed"],
            "cold_rate": cold["rate"],
            "cold_p50_ms": cold["p50_ms"],
            "cold_p99_ms": cold["p99_ms"],
            "cold_cpu_us": round((cpu1 - cpu0) / 1000 / case.n, 1),
            "reconnect_rate": again["rate"],
            "reconnect_p50_ms": again["p50_ms"],
            "reconnect_p99_ms": again["p99_ms"],
            "reconnect_cpu_us": round((cpu2 - before_storm) / 1000 / case.n, 1),
            "rss_before_kb": rss0,
            "rss_after_kb": rss1,
            "rss_per_conn_kb": round((rss1 - rss0) / case.n, 2),
            "statuses": cold["statuses"],
            "failures": {**cold["failures"], **again["failures"]},
            "presence_expected": expected if presence else None,
            "presence_count": counted,
            "presence_count_after_reconnect": recounted,
            "server_alive": alive,
        }
    )
    result["lost_connections"] = (
        2 * case.n + args.warm - cold["ok"] - again["ok"] - warmed["ok"]
    )
    return result


def warm_up(port: int, timeout: float = 15.0) -> None:
    """
    Publish a first event to ``x``, again while the server answers 503 (a
    Redis broker still connecting).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            publish(port, ONE, "warm-up")
            return
        except RuntimeError as error:
            if " 503 " not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def run_deliveries(
    setting: Setting, case: Case, presence: bool, round_: int
) -> dict[str, Any]:
    """One fresh server, N subscribers of ``x`` reading a saturating publisher."""
    args = setting.args
    base: dict[str, Any] = {
        "part": case.part,
        "broker": case.broker,
        "n": case.n,
        "channels": 1,
        "presence": presence,
        "round": round_,
    }
    slug = f"{case.part}-{case.broker}-{case.n}-{presence}-{round_}"
    assert setting.load is not None and setting.pub is not None
    token = sign(setting.secret, ["user0"])[0]
    path = f"/channels/{ONE}?access_token={token}"
    try:
        url = broker_url(setting, case.broker)
        with server(
            args.server_cpu,
            setting.logdir / f"{slug}.log",
            server_args(url, presence),
            server_env(setting.secret),
        ) as (proc, port):
            longest = len(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
            )
            if longest > SSELOAD_REQUEST_MAX:
                raise RuntimeError(
                    f"the request is {longest} bytes, sseload sends at most "
                    f"{SSELOAD_REQUEST_MAX}"
                )
            # The channel exists before anyone subscribes.
            warm_up(port)
            time.sleep(0.3)
            publisher = [
                str(setting.pub),
                *("--kind", "twisted", "--port", str(port)),
                *("--path", f"/channels/{ONE}", "--token", TOKEN),
                *("--conns", str(args.publish_conns)),
            ]
            options: dict[str, Any] = {
                "--port": port,
                "--pid": proc.pid,
                "-n": case.n,
                "--label": slug,
                "--path": path,
                "--ready": "retry",
                "--size": args.size,
                "--rate": 0,
                "--paced-s": 0,
                "--settle": args.settle,
                "--sat-s": args.sat_s,
                "--pub-cmd": shlex.join(publisher),
                "--deadline": 180,
            }
            flags = [str(word) for pair in options.items() for word in pair]
            done = subprocess.run(
                [*taskset(args.client_cpu), str(setting.load), *flags],
                capture_output=True,
                text=True,
                timeout=240,
            )
            alive = proc.poll() is None
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        return {**base, "error": str(error)[-300:]}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {**base, "error": "sseload: " + done.stderr.strip()[-300:]}
    result: dict[str, Any] = {**base, **json.loads(lines[-1]), "server_alive": alive}
    # Several publish requests are in flight, so the server may publish in
    # another order than the sequence numbers: gaps and reordering are not
    # losses; an event missing on a connection, or arriving twice, is.
    result["lost_events"] = int(max(result["sat_missing"], 0) + result["sat_dups"])
    result["lost_connections"] = int(
        result["failed"] + result["dropped"] + result["sat_timed_out"]
    )
    return result


def run_case(
    setting: Setting, case: Case, presence: bool, round_: int
) -> dict[str, Any]:
    """One run of ``case``, with presence or without."""
    if case.part == "deliveries":
        return run_deliveries(setting, case, presence, round_)
    return run_setup(setting, case, presence, round_)


def failed(result: dict[str, Any]) -> bool:
    """Whether a run failed, lost something, or counted presence wrong."""
    if "error" in result:
        return True
    if result["lost_connections"] or result.get("lost_events"):
        return True
    if (
        not result["server_alive"]
        or result.get("connected", result["n"]) != result["n"]
    ):
        return True
    if result["part"] != "deliveries":
        want = result["presence_expected"]
        if result["presence_count"] != want:
            return True
        if result["presence_count_after_reconnect"] != want:
            return True
    return False


# The tables.


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(r[key]) for r in runs))


def _ratio(on: float, off: float) -> float | None:
    return on / off if off else None


def _verdict(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    if ratio >= TARGET:
        return f"{ratio:.2f}x met"
    return f"{ratio:.2f}x **missed** (by {100 * (TARGET - ratio):.0f} points)"


def _each(runs: list[dict[str, Any]], key: str, digits: int = 0) -> str:
    return " / ".join(f"{r[key]:,.{digits}f}" for r in runs)


def _pairs(
    results: list[dict[str, Any]], part: str
) -> list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]]:
    """The runs of each case of ``part``, with presence and without."""
    keyed: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for r in results:
        if r["part"] != part or "error" in r:
            continue
        broker = r["broker"] + (", storm (MONITOR on)" if part == "storm" else "")
        key = f"{broker} | {r['n']:,} | {r['channels']:,}"
        keyed.setdefault(key, ([], []))[0 if r["presence"] else 1].append(r)
    return [(key, on, off) for key, (on, off) in keyed.items()]


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown tables of medians, the on/off ratios and the target."""
    out = [
        f"error in {r['part']} {r['broker']} presence={r['presence']} "
        f"(round {r['round']}): {r['error']}"
        for r in results
        if "error" in r
    ]
    setup = _pairs(results, "setup") + _pairs(results, "storm")
    if setup:
        out += [
            "",
            f"setup: N subscribers open (head + first frame) with their own "
            f"HS256 token, {args.in_flight} in flight, then all reconnect at "
            f"once; medians of {args.repeat}; on/off >= {TARGET:.2f} is the target",
            "",
            "| broker | N | channels | presence | conn/s (runs) | median "
            "| µs CPU / set-up | reconnect conn/s | µs CPU / reconnect "
            "| RSS KB/conn | presence counted |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        verdicts = [
            "",
            "| broker | N | channels | conn/s on/off | server CPU off/on "
            "| reconnect conn/s on/off | reconnect CPU off/on |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, on, off in setup:
            med: dict[str, dict[str, float]] = {}
            for label, runs in (("on", on), ("off", off)):
                if not runs:
                    continue
                med[label] = {
                    k: _median(runs, k)
                    for k in (
                        "cold_rate",
                        "cold_cpu_us",
                        "reconnect_rate",
                        "reconnect_cpu_us",
                        "rss_per_conn_kb",
                    )
                }
                counted = ", ".join(
                    sorted({str(r["presence_count"]) for r in runs})
                ).replace("None", "-")
                m = med[label]
                out.append(
                    f"| {key} | {label} | {_each(runs, 'cold_rate')} "
                    f"| {m['cold_rate']:,.0f} | {m['cold_cpu_us']:.0f} "
                    f"| {m['reconnect_rate']:,.0f} | {m['reconnect_cpu_us']:.0f} "
                    f"| {m['rss_per_conn_kb']:.2f} | {counted} |"
                )
            if "on" in med and "off" in med:
                a, b = med["on"], med["off"]
                ratios = [
                    _ratio(a["cold_rate"], b["cold_rate"]),
                    _ratio(b["cold_cpu_us"], a["cold_cpu_us"]),
                    _ratio(a["reconnect_rate"], b["reconnect_rate"]),
                    _ratio(b["reconnect_cpu_us"], a["reconnect_cpu_us"]),
                ]
                shown = " | ".join(_verdict(ratio) for ratio in ratios)
                verdicts.append(f"| {key} | {shown} |")
        out += verdicts
    deliveries = _pairs(results, "deliveries")
    if deliveries:
        out += [
            "",
            f"deliveries: N subscribers of `{ONE}` (all with user0's token), "
            f"{args.size}-byte events POSTed, {args.publish_conns} in flight, "
            f"{args.sat_s:g} s; medians of {args.repeat}",
            "",
            "| broker | N | channels | presence | deliveries/s (runs) | median "
            "| on/off | per server CPU-s | on/off | srv CPU | cli CPU "
            "| lost conns / events |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, on, off in deliveries:
            rate = {
                label: _median(runs, "sat_deliveries_per_s")
                for label, runs in (("on", on), ("off", off))
                if runs
            }
            cost = {
                label: _median(runs, "sat_deliveries_per_server_cpu_s")
                for label, runs in (("on", on), ("off", off))
                if runs
            }
            for label, runs in (("on", on), ("off", off)):
                if not runs:
                    continue
                by_rate = by_cost = "-"
                if label == "on" and "off" in rate:
                    by_rate = _verdict(_ratio(rate["on"], rate["off"]))
                    by_cost = _verdict(_ratio(cost["on"], cost["off"]))
                cli = _median(runs, "sat_client_cpu_util")
                flag = " (!)" if cli > 0.9 else ""
                out.append(
                    f"| {key} | {label} | {_each(runs, 'sat_deliveries_per_s')} "
                    f"| {rate[label]:,.0f} | {by_rate} | {cost[label]:,.0f} "
                    f"| {by_cost} "
                    f"| {100 * _median(runs, 'sat_server_cpu_util'):.0f}% "
                    f"| {100 * cli:.0f}%{flag} "
                    f"| {sum(r['lost_connections'] for r in runs)} / "
                    f"{sum(r['lost_events'] for r in runs)} |"
                )
    redis_rows = _pairs(results, "storm")
    if redis_rows:
        out += [
            "",
            "Redis (MONITOR): commands sent to it, and in brackets the calls "
            "its scripts made, while N subscribers first open, per second while "
            f"they stay open (storm runs, over {args.idle_s:g} s), and while "
            "all of them close and open again (the storm); Redis's CPU time "
            f"(its work for MONITOR included); medians of {args.repeat}",
            "",
            "| broker | N | channels | presence | first open | idle /s "
            "| storm (runs) | storm median | storm per subscriber "
            "| Redis CPU s, first open / storm | RSS KB/conn |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, on, off in redis_rows:
            for label, runs in (("on", on), ("off", off)):
                if not runs:
                    continue

                def both(window: str, runs: list[dict[str, Any]] = runs) -> str:
                    sent = statistics.median(r[window]["client"] for r in runs)
                    calls = statistics.median(r[window]["script"] for r in runs)
                    return f"{sent:,.0f} ({calls:,.0f})"

                idle = "-"
                if all("idle_redis" in r for r in runs):
                    per_s = [r["idle_redis"]["client"] / r["idle_s"] for r in runs]
                    calls_s = [r["idle_redis"]["script"] / r["idle_s"] for r in runs]
                    idle = (
                        f"{statistics.median(per_s):,.1f} "
                        f"({statistics.median(calls_s):,.1f})"
                    )
                each = " / ".join(f"{r['storm_redis']['client']:,}" for r in runs)
                n = runs[0]["n"]
                sent = statistics.median(r["storm_redis"]["client"] for r in runs)
                calls = statistics.median(r["storm_redis"]["script"] for r in runs)
                cpu = [
                    statistics.median(r[window]["cpu_s"] for r in runs)
                    for window in ("open_redis", "storm_redis")
                ]
                out.append(
                    f"| {key} | {label} | {both('open_redis')} | {idle} "
                    f"| {each} | {both('storm_redis')} "
                    f"| {sent / n:.3f} ({calls / n:.1f}) "
                    f"| {cpu[0]:.2f} / {cpu[1]:.2f} "
                    f"| {_median(runs, 'rss_per_conn_kb'):.2f} |"
                )
    return "\n".join(out).lstrip("\n")


def main(argv: list[str] | None = None) -> int:
    """Measure presence on and off; print JSON lines and tables."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts", default="setup,deliveries,storm", help="setup, deliveries, storm"
    )
    parser.add_argument(
        "--brokers", default="memory,redis", help="memory, redis (if it can be had)"
    )
    parser.add_argument("--n", type=int, default=5000, help="subscribers")
    parser.add_argument(
        "--storm-n", type=int, default=10000, help="subscribers of the storm"
    )
    parser.add_argument("--warm", type=int, default=200, help="set-ups to warm up")
    parser.add_argument(
        "--in-flight", type=int, default=256, help="handshakes the client keeps going"
    )
    parser.add_argument("--idle-s", type=float, default=10, help="storm's idle window")
    parser.add_argument("--size", type=int, default=64, help="bytes of data: frame")
    parser.add_argument("--sat-s", type=float, default=4, help="seconds of publishing")
    parser.add_argument(
        "--publish-conns", type=int, default=4, help="publish requests in flight"
    )
    parser.add_argument(
        "--settle", type=float, default=1.0, help="deliveries: seconds before RSS"
    )
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--redis",
        metavar="redis://HOST:PORT",
        help="another Redis server instead of a private redis-server (its "
        "database --redis-db is flushed)",
    )
    parser.add_argument("--redis-db", type=int, default=11, help="its database")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: --n 40 --storm-n 40 --warm 10 --repeat 1 --sat-s 1 "
        "--idle-s 0.5",
    )
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
        help="the folder of sseload.c and pub.c, for the deliveries "
        "[default: bench/client]",
    )
    parser.add_argument("--out", default=str(HERE / "results"))
    # The client side, run by this script in another process.
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.drive:
        raise_nofile(max(args.n, args.storm_n) + args.in_flight + 64)
        drive(args.port, args.in_flight, sys.stdin)
        return 0

    if args.quick:
        args.n, args.storm_n, args.warm, args.repeat = 40, 40, 10, 1
        args.sat_s, args.idle_s, args.settle = 1, 0.5, 0.2
    args.parts = [p for p in args.parts.split(",") if p]
    if set(args.parts) - {"setup", "deliveries", "storm"}:
        parser.error("--parts: use setup, deliveries, storm")
    args.brokers = [b for b in args.brokers.split(",") if b]
    if set(args.brokers) - {"memory", "redis"}:
        parser.error("--brokers: use memory, redis")
    needed = max(args.n, args.storm_n) + args.in_flight + 200
    if raise_nofile(needed) < needed:
        parser.error(f"RLIMIT_NOFILE hard limit is below {needed}")
    setting_load = setting_pub = None
    if "deliveries" in args.parts:
        source = Path(args.client_src)
        if not (source / "sseload.c").exists() or not (source / "pub.c").exists():
            parser.error(f"no sseload.c and pub.c in {source}: see --client-src")
        setting_load = build(source / "sseload.c", "harness-sseload")
        setting_pub = build(source / "pub.c", "harness-pub")

    if args.client_cpu and taskset(args.client_cpu):
        # This process reads MONITOR, which can be busy: on the load's CPU.
        subprocess.run(
            ["taskset", "-pc", args.client_cpu, str(os.getpid())],
            check=True,
            capture_output=True,
        )
    out = Path(args.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logdir = out / f"{stamp}-presence-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    facts: dict[str, Any] = machine_facts(args.client_cpu, args.server_cpu)
    facts["loadavg"] = Path("/proc/loadavg").read_text().split()[0]
    print("# machine: " + json.dumps(facts), flush=True)
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="sse-bench-presence-") as scratch,
        redis_server(
            "redis" in args.brokers,
            args.redis,
            args.redis_db,
            args.client_cpu,
            logdir,
        ) as redis_url,
        open(out / f"{stamp}-presence.jsonl", "w") as jsonl,
    ):
        jsonl.write(json.dumps({"facts": facts, "argv": sys.argv[1:]}) + "\n")
        setting = Setting(
            args,
            secrets.token_hex(32),
            Path(scratch),
            logdir,
            redis_url or None,
            setting_load,
            setting_pub,
        )
        for round_ in range(args.repeat):
            for case in cases(args):
                # On first in one round, off first in the next.
                order = (True, False) if round_ % 2 == 0 else (False, True)
                for presence in order:
                    result = run_case(setting, case, presence, round_)
                    line = json.dumps(result)
                    print(line, flush=True)
                    jsonl.write(line + "\n")
                    jsonl.flush()
                    results.append(result)
    text = report(results, args)
    text += (
        f"\n\nserver cpu {args.server_cpu or '-'}, client cpu "
        f"{args.client_cpu or '-'}; {time.monotonic() - started:.0f} s"
    )
    print("\n" + text)
    (out / f"{stamp}-presence.md").write_text(f"{json.dumps(facts)}\n\n{text}\n")
    return 1 if any(failed(r) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
