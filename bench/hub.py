"""
Our hub side by side with the hubs a user would weigh it against, in one run,
on 127.0.0.1:

    python bench/hub.py                          # N = 1000, 10000; ~2 min
    python bench/hub.py --sizes 18000            # a large run
    python bench/hub.py --peers twisted_sse,nchan --repeat 3

The peers (``--peers``):

twisted_sse
    ``twistd -n sse`` on the memory broker, with ``--access-log off`` and
    ``--stream-log off`` (nginx runs with ``access_log off``, Pushpin with
    ``log_level=1``: no hub writes a line per request or per stream).
twisted_sse-redis
    the same with ``--broker`` ``--redis-url``
    (``redis://127.0.0.1:6379/14``), a Redis this script does not start.
nchan
    nginx with the nchan module (``hubs/nginx-nchan.conf.in``).
pushpin
    Pushpin (``hubs/pushpin.conf.in``), its own zurl (``hubs/zurl.conf.in``)
    and a GRIP origin (``hubs/grip_origin.py``) that holds every request as
    a stream on one channel.

For every round (``--repeat``), N (``--sizes``) and peer, a fresh hub is
started pinned to ``--server-cpu`` (0), and the C load client ``sseload``
with its publisher ``pub`` (``bench/client/``) pinned to ``--client-cpu``
(1); both are built with ``cc -O2`` from ``--client-src`` into ``bench/build/``.  One
run of the client gives three workloads, in this order:

idle
    N subscribers open one channel (at most ``--inflight`` set-ups at once,
    ``--pushpin-inflight`` for Pushpin) and stay idle: the set-up rate, and
    the hub's RSS growth per subscriber, all its processes summed, read
    ``--settle`` seconds after the last one is ready.
paced
    ``--paced-deliveries`` (10,000) deliveries per second in all, that is
    10,000/N events per second for ``--paced-s`` seconds, published over one
    keep-alive connection: latency from the publisher's clock just before it
    sends the event to the subscriber's ``recv()`` (same host, same clock).
saturation
    64-byte events POSTed as fast as the hub answers them, ``--publish-conns``
    (4) requests in flight, for ``--sat-s`` seconds: deliveries per second,
    all subscribers summed, and the latency meanwhile.

Every event on every subscriber is checked: ``lost`` counts events a
subscriber that stayed connected had not received ``--drain-timeout`` (20)
seconds after the last publish, ``duplicated`` events it received twice.
With several publishes in flight a hub may publish them out of order, so
reordering is not counted as a loss.

Output: one JSON object per line per (peer, N, workload), with ``peer``,
``n``, ``workload``, ``deliveries_per_s``, ``p50_ms``, ``p99_ms``,
``rss_per_conn_kb``, ``setup_conn_per_s``, ``lost`` and ``duplicated`` (null
where they do not apply) and more; the same lines go to ``--out``
(``bench/results/<stamp>-hub.jsonl``), the table (medians when ``--repeat``
is above 1) to the same name with ``.md``, and the hubs' logs to a folder
next to it.  A peer that cannot start gives rows with an ``error`` field.  The
exit status is 1 if any row has one.

``--profile`` samples our hub (``twisted_sse``, ``twisted_sse-redis``) with
py-spy while each workload runs, and writes ``<peer>-<N>-<workload>.svg``, a
flame graph, and ``.txt``, py-spy's collapsed stacks (``pyspy_top.py`` reads
them), to ``--profile-dir`` (``bench/flame``); ``--profile-native`` adds the
C frames (the garbage collector).  The sampler stops the hub for each sample
and shares the client's CPU, so keep the rows of a profiled run apart from
the others.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
#: The hubs' configuration templates and the GRIP origin.
HUBS = HERE / "hubs"
sys.path.insert(0, str(HERE))

from run import free_port, machine_facts, raise_nofile, taskset  # noqa: E402
from subscriptions import DEFAULT_CLIENT_SRC, build, twistd  # noqa: E402

PEERS = ("twisted_sse", "twisted_sse-redis", "nchan", "pushpin")
WORKLOADS = ("saturation", "paced", "idle")
#: The measurements every row carries, null where they do not apply.
FIELDS = (
    "deliveries_per_s",
    "p50_ms",
    "p99_ms",
    "rss_per_conn_kb",
    "setup_conn_per_s",
    "lost",
    "duplicated",
)
#: The channel every hub serves.
CHANNEL = "bench"
#: The publish token of ``twistd sse``.
TOKEN = "bench-token"
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
PUSHPIN_PROGRAMS = ("pushpin", "condure", "pushpin-proxy", "pushpin-handler", "zurl")
#: Descriptors a process needs beyond one per subscriber: the publisher's
#: connections, listening sockets, logs, twistd sse's --fd-reserve.
FD_MARGIN = 500
#: Seconds a hub has to answer its first subscriber.
START_TIMEOUT = 20.0
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")


class HubError(Exception):
    """A hub could not be started or measured; the message says why."""


# Processes


def _die_with_parent() -> None:
    # Run in the child before exec: SIGTERM when this script dies, even by
    # SIGKILL, so that no hub outlives it (prctl(PR_SET_PDEATHSIG)).
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """
    End ``process`` and everything it started: SIGTERM to its process group
    (it leads its own session), SIGKILL after ``grace`` seconds.
    """
    pgid = process.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if process.poll() is not None and not _group_alive(pgid):
                return
            time.sleep(0.05)
    process.poll()


def spawn(
    stack: ExitStack,
    argv: Sequence[str],
    log: Path,
    cpu: str,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """
    Start ``argv`` pinned to ``cpu``, output in ``log``, in a session of its
    own; ``stack`` terminates it and its children when it closes.
    """
    out = stack.enter_context(open(log, "ab"))  # noqa: SIM115 - the stack closes it
    try:
        process = subprocess.Popen(
            [*taskset(cpu), *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    except OSError as error:
        raise HubError(f"cannot run {argv[0]}: {error}") from error
    stack.callback(terminate, process)
    return process


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: parse after it.
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def tail(path: Path, size: int = 400) -> str:
    """The end of a log file, on one line."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " ".join(text[-size:].split())


def first_answer(port: int, path: str, timeout: float = 5.0) -> bytes:
    """The response head a subscriber of ``path`` gets; it then leaves."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        received = b""
        while b"\r\n\r\n" not in received and len(received) < 65536:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return received.partition(b"\r\n\r\n")[0]


def wait_ready(
    port: int,
    path: str,
    problem: Callable[[], str | None],
    timeout: float = START_TIMEOUT,
) -> None:
    """
    Return once a subscriber of ``path`` gets a 200; ``problem()`` says
    whether the hub died meanwhile.

    :raises HubError: when it died, or gave no 200 within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        trouble = problem()
        if trouble is not None:
            raise HubError(trouble)
        try:
            head = first_answer(port, path)
            if head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                return
            last = head.split(b"\r\n", 1)[0].decode("latin-1") or "empty answer"
        except OSError as error:
            last = str(error)
        if time.monotonic() > deadline:
            raise HubError(f"no 200 for GET {path} within {timeout:g} s: {last}")
        time.sleep(0.1)


def exited(
    processes: dict[str, subprocess.Popen[bytes]], log: Path
) -> Callable[[], str | None]:
    """A ``problem`` for :func:`wait_ready`: which of ``processes`` exited."""

    def check() -> str | None:
        for name, process in processes.items():
            code = process.poll()
            if code is not None:
                return f"{name} exited with status {code}: {tail(log)}"
        return None

    return check


def render(template: str, values: dict[str, object]) -> str:
    """``template`` with every ``@NAME@`` replaced by ``values[NAME]``."""
    text = (HUBS / template).read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", str(value))
    leftover = _PLACEHOLDER.search(text)
    if leftover:
        raise HubError(f"{template}: no value for {leftover.group()}")
    return text


# The hubs


@dataclass(frozen=True)
class Hub:
    """A hub that is up: where subscribers go and how to publish to it."""

    #: Where subscribers connect, and their path.
    port: int
    path: str
    #: ``pub``'s arguments for this hub (kind, port, path...).
    publisher: tuple[str, ...]
    #: Every process of the hub, whose RSS and CPU are summed.
    pids: tuple[int, ...]
    #: Subscriber set-ups in flight at once.
    inflight: int


def installed(peer: str, args: argparse.Namespace) -> str | None:
    """Why ``peer`` cannot run here, or None when it can."""
    if peer == "nchan":
        if shutil.which("nginx") is None:
            return "nginx is not installed (apt-get install nginx-light)"
        if not Path(args.nchan_module).exists():
            return (
                f"no nchan module at {args.nchan_module} "
                "(apt-get install libnginx-mod-nchan)"
            )
    elif peer == "pushpin":
        missing = [name for name in PUSHPIN_PROGRAMS if shutil.which(name) is None]
        if missing:
            return f"{', '.join(missing)} not installed (apt-get install pushpin)"
    elif peer == "twisted_sse-redis":
        return redis_problem(args.redis_url)
    return None


def redis_problem(url: str) -> str | None:
    """Why nothing answers at a ``redis://`` URL, or None."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        return None  # TLS or Sentinel: left to twistd sse to reach
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            answer = sock.recv(64)
    except OSError as error:
        return f"no Redis at {host}:{port} ({error}); see --redis-url"
    if not answer.startswith((b"+PONG", b"-NOAUTH")):
        return f"{host}:{port} does not answer as Redis: {answer[:40]!r}"
    return None


def twistd_env() -> dict[str, str]:
    """This environment, without twistd sse's settings but the publish token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWISTED_SSE_")}
    env["TWISTED_SSE_PUBLISH_TOKEN"] = TOKEN
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextmanager
def twisted_hub(args: argparse.Namespace, broker: str, logdir: Path) -> Iterator[Hub]:
    """
    ``twistd -n sse`` on ``broker``, without its access log and stream
    lines: its log keeps start-up, warnings and errors, and slow clients
    cut off.
    """
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hub-")))
        port = free_port()
        log = logdir / "twistd.log"
        argv = [
            *twistd(),
            *("-n", "--pidfile=", "sse"),
            *("--port", f"tcp:{port}:interface=127.0.0.1:backlog=1024"),
            *("--broker", broker),
            # No line per request nor per stream, as the other hubs.
            *("--access-log", "off", "--stream-log", "off"),
            # Silent between events, as the other hubs are.
            *("--heartbeat", "0"),
        ]
        process = spawn(
            stack, argv, log, args.server_cpu, cwd=scratch, env=twistd_env()
        )
        path = f"/channels/{CHANNEL}"
        wait_ready(port, path, exited({"twistd": process}, log))
        yield Hub(
            port=port,
            path=path,
            publisher=(
                *("--kind", "twisted", "--port", str(port)),
                *("--path", path, "--token", TOKEN),
            ),
            pids=(process.pid,),
            inflight=args.inflight,
        )


@contextmanager
def nchan_hub(args: argparse.Namespace, logdir: Path) -> Iterator[Hub]:
    """nginx with nchan, one worker."""
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hub-")))
        # nginx's worker runs as another user when the master is root.
        scratch.chmod(0o755)
        (scratch / "tmp").mkdir(mode=0o755)
        port = free_port()
        nofile = raise_nofile(0)
        conf = scratch / "nginx.conf"
        conf.write_text(
            render(
                "nginx-nchan.conf.in",
                {
                    "DIR": scratch,
                    "LOGDIR": logdir,
                    "PORT": port,
                    "NCHAN_MODULE": args.nchan_module,
                    "NOFILE": nofile,
                    "WORKER_CONNECTIONS": nofile - 100,
                },
            )
        )
        log = logdir / "nginx.log"
        argv = [
            *("nginx", "-c", str(conf), "-p", f"{scratch}/"),
            *("-e", str(logdir / "nginx-error.log")),
        ]
        process = spawn(stack, argv, log, args.server_cpu)
        problem = exited({"nginx": process}, logdir / "nginx-error.log")
        path = f"/sub/{CHANNEL}"
        wait_ready(port, path, problem)
        workers = children(process.pid)
        if not workers:
            raise HubError("nginx has no worker process")
        yield Hub(
            port=port,
            path=path,
            publisher=(
                *("--kind", "nchan", "--port", str(port)),
                *("--path", f"/pub/{CHANNEL}"),
            ),
            pids=(process.pid, *workers),
            inflight=args.inflight,
        )


@contextmanager
def pushpin_hub(args: argparse.Namespace, logdir: Path) -> Iterator[Hub]:
    """Pushpin (runner, condure, proxy, handler), zurl and the GRIP origin."""
    with ExitStack() as stack:
        # Short: ZeroMQ's ipc:// paths live in it (at most 107 bytes).
        scratch = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="hub-", dir="/tmp"))
        )
        (scratch / "run").mkdir()
        ports = {
            name: free_port()
            for name in (
                "HTTP_PORT",
                "PUBLISH_PORT",
                "PUSH_PORT",
                "PUSH_SUB_PORT",
                "COMMAND_PORT",
                "ORIGIN_PORT",
            )
        }
        values: dict[str, object] = {"DIR": scratch, "LOGDIR": logdir, **ports}
        for name in ("pushpin.conf", "zurl.conf", "routes"):
            (scratch / name).write_text(render(f"{name}.in", values))
        log = logdir / "pushpin.log"
        origin = spawn(
            stack,
            [
                sys.executable,
                str(HUBS / "grip_origin.py"),
                *(str(ports["ORIGIN_PORT"]), CHANNEL),
            ],
            logdir / "grip-origin.log",
            args.server_cpu,
        )
        zurl = spawn(
            stack,
            ["zurl", f"--config={scratch / 'zurl.conf'}"],
            logdir / "zurl.log",
            args.server_cpu,
        )
        runner = spawn(
            stack,
            ["pushpin", "--config", str(scratch / "pushpin.conf")],
            log,
            args.server_cpu,
        )
        problem = exited({"grip origin": origin, "zurl": zurl, "pushpin": runner}, log)
        path = f"/sub/{CHANNEL}"
        wait_ready(ports["HTTP_PORT"], path, problem)
        # The publish API answers too (a GET there is a 404 or 405).
        with socket.create_connection(("127.0.0.1", ports["PUBLISH_PORT"]), 5):
            pass
        services = children(runner.pid)
        if len(services) < 3:
            raise HubError(f"pushpin runs {len(services)} services, not 3: {tail(log)}")
        yield Hub(
            port=ports["HTTP_PORT"],
            path=path,
            publisher=(
                *("--kind", "pushpin", "--port", str(ports["PUBLISH_PORT"])),
                *("--path", "/publish/", "--channel", CHANNEL),
            ),
            # The origin is the application's, not the hub's: not counted.
            pids=(runner.pid, *services, zurl.pid),
            inflight=min(args.inflight, args.pushpin_inflight),
        )


def start(peer: str, args: argparse.Namespace, logdir: Path) -> Any:
    """The context manager that runs ``peer``."""
    if peer == "twisted_sse":
        return twisted_hub(args, "memory", logdir)
    if peer == "twisted_sse-redis":
        return twisted_hub(args, args.redis_url, logdir)
    if peer == "nchan":
        return nchan_hub(args, logdir)
    return pushpin_hub(args, logdir)


# The load


@dataclass(frozen=True)
class Tools:
    """The built load client and publisher."""

    sseload: Path
    pub: Path


def paced_rate(args: argparse.Namespace, n: int) -> float:
    """Events per second of the paced workload at ``n`` subscribers."""
    return float(args.paced_deliveries) / n


def load_argv(
    hub: Hub, peer: str, n: int, args: argparse.Namespace, tools: Tools
) -> list[str]:
    """The ``sseload`` command for one run against ``hub``."""
    publisher = [
        str(tools.pub),
        *hub.publisher,
        *("--conns", str(args.publish_conns)),
    ]
    deadline = min(
        600.0,
        args.connect_timeout
        + args.settle
        + args.paced_s
        + args.sat_s
        + 2 * args.drain_timeout
        + 30,
    )
    options: dict[str, object] = {
        "--port": hub.port,
        "--pids": ",".join(str(pid) for pid in hub.pids),
        "-n": n,
        "--label": peer,
        "--path": hub.path,
        # Ready at the response head: nchan sends no first frame.
        "--ready": "headers",
        "--size": args.size,
        "--inflight": hub.inflight,
        "--rate": f"{paced_rate(args, n):g}",
        "--paced-s": args.paced_s,
        "--sat-s": args.sat_s,
        "--settle": args.settle,
        "--connect-timeout": args.connect_timeout,
        "--drain-timeout": args.drain_timeout,
        "--deadline": deadline,
        "--pub-cmd": shlex.join(publisher),
    }
    flags = [str(word) for pair in options.items() for word in pair]
    return [*taskset(args.client_cpu), str(tools.sseload), *flags]


def run_load(
    argv: list[str], timeout: float, log: Path, profiler: Profiler | None = None
) -> dict[str, Any]:
    """
    Run ``sseload``; its JSON line.  Its stderr goes to ``log``.  A
    ``profiler`` records the hub meanwhile, a file per workload.
    """
    with open(log, "ab") as err:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            if profiler is not None:
                # sseload prints one short line at its end: no pipe fills.
                started = time.monotonic()
                profiler.follow(process, log, timeout)
                timeout = max(1.0, timeout - (time.monotonic() - started))
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HubError(f"the load client ran over {timeout:g} s") from None
        finally:
            terminate(process, grace=2.0)
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if not lines:
        raise HubError(f"the load client failed ({process.returncode}): {tail(log)}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# Profiles (--profile)

#: The peers --profile samples: the Python hubs.
PROFILED = ("twisted_sse", "twisted_sse-redis")
#: How ``sseload`` announces a publishing phase on its standard error.
_PUBLISHER = re.compile(rb"sseload: publisher: .* --rate (\S+) ")
#: Flame graph geometry: pixels.
_WIDTH, _ROW = 1200, 16


class Profiler:
    """
    ``py-spy record`` on a hub process, one recording per workload: from
    the start of the load to the paced phase (``idle``, the set-ups), then
    ``paced``, then ``saturation`` until the load client exits.  Each gives
    ``<stem>-<workload>.txt`` (py-spy's collapsed stacks, paths shortened
    as ``pyspy_top.py`` shortens them, so that no folder of this machine is
    named) and ``<stem>-<workload>.svg`` (a flame graph of them) in
    ``folder``.  py-spy samples blocking (it stops the hub for each sample),
    pinned to ``cpu``; idle samples (the hub waiting in ``epoll_wait``) are
    not recorded.
    """

    def __init__(
        self, pid: int, folder: Path, stem: str, args: argparse.Namespace
    ) -> None:
        self.pid = pid
        self.folder = folder
        self.stem = stem
        self.rate = args.profile_rate
        self.cpu = args.client_cpu
        self.py_spy = args.py_spy
        self.native = args.profile_native
        self.recording: tuple[str, subprocess.Popen[bytes], Path] | None = None
        #: What was written: (workload, samples, svg path).
        self.written: list[tuple[str, int, Path]] = []

    def start(self, workload: str) -> None:
        """Stop the recording under way, if any, and record ``workload``."""
        self.stop()
        raw = self.folder / f"{self.stem}-{workload}.txt"
        log = self.folder / f".{self.stem}-{workload}.log"
        argv = [
            *taskset(self.cpu),
            *(self.py_spy, "record", "-p", str(self.pid), "-r", str(self.rate)),
            *("-f", "raw", "-o", str(raw)),
            *(("--native",) if self.native else ()),
        ]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.recording = (workload, process, raw)
        # Samples begin once py-spy says so (it attaches in a few tenths).
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and process.poll() is None:
            if b"Sampling process" in log.read_bytes():
                break
            time.sleep(0.02)

    def stop(self) -> None:
        """End the recording under way: py-spy writes its file on SIGINT."""
        if self.recording is None:
            return
        workload, process, raw = self.recording
        self.recording = None
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            terminate(process, grace=2.0)
        log = raw.with_name(f".{raw.stem}.log")
        if not raw.exists():
            print(
                f"# profile {raw.name}: py-spy wrote nothing: {tail(log)}", flush=True
            )
            return
        log.unlink(missing_ok=True)
        stacks = shorten(raw)
        svg = raw.with_suffix(".svg")
        samples = flame_graph(stacks, svg, f"{self.stem} {workload}")
        self.written.append((workload, samples, svg))

    def follow(
        self, process: subprocess.Popen[bytes], log: Path, timeout: float
    ) -> None:
        """
        Record each workload of the load client ``process``, telling its
        phases by the publisher lines of its standard error (``log``),
        until it exits or ``timeout`` seconds have passed.
        """
        self.start("idle")
        deadline = time.monotonic() + timeout
        seen = 0
        try:
            while process.poll() is None and time.monotonic() < deadline:
                starts = _PUBLISHER.findall(log.read_bytes())
                for rate in starts[seen:]:
                    self.start("saturation" if float(rate) == 0 else "paced")
                seen = len(starts)
                time.sleep(0.05)
        finally:
            self.stop()


_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*)\)$")


def _short_frame(frame: str) -> str:
    """
    ``function (file:line)`` with the file as its package names it
    (``twisted/web/http.py``, ``twisted_sse/_stream.py``), or its bare
    name: py-spy shortens most paths itself, and this makes sure that no
    folder of the machine is left.
    """
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["path"]
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            path = path.rsplit(marker, 1)[1]
            break
    else:
        if "/twisted_sse/" in path:
            path = "twisted_sse/" + path.rsplit("/twisted_sse/", 1)[1]
        elif re.search(r"/lib/python3\.\d+/", path):
            path = re.split(r"/lib/python3\.\d+/", path)[-1]
        elif path.startswith("/"):
            path = path.rsplit("/", 1)[1]
    path = path.removeprefix("site-packages/")
    return f"{match['function']} ({path})"


def shorten(raw: Path) -> list[tuple[list[str], int]]:
    """
    Rewrite py-spy's collapsed stacks in ``raw`` with the paths shortened
    (:func:`_short_frame`); the stacks, root first, with their samples.
    """
    from pyspy_top import read

    stacks = [([_short_frame(f) for f in frames], n) for frames, n in read(str(raw))]
    merged: dict[tuple[str, ...], int] = {}
    for frames, count in stacks:
        merged[tuple(frames)] = merged.get(tuple(frames), 0) + count
    raw.write_text(
        "".join(f"{';'.join(frames)} {count}\n" for frames, count in merged.items())
    )
    return [(list(frames), count) for frames, count in merged.items()]


def _colour(name: str) -> str:
    # Our library in blue, Twisted in orange, the rest (CPython, the
    # standard library) in red: hue by package, shade by name.
    shade = sum(name.encode()) % 40
    if "twisted_sse/" in name:
        return f"rgb({60 + shade},{130 + shade},{215})"
    if "twisted/" in name:
        return f"rgb(235,{140 + shade},{40 + shade})"
    return f"rgb(225,{80 + shade},{60 + shade})"


def flame_graph(stacks: list[tuple[list[str], int]], svg: Path, title: str) -> int:
    """
    Write ``stacks`` (frames root first, samples) as a flame graph to
    ``svg``: a frame's width is its share of the samples, its callers below
    it; hover for the name and the share.  Frames under half a pixel wide
    are left out, to keep the file small.  Returns the samples.
    """
    tree: dict[str, Any] = {}
    total = 0
    for frames, count in stacks:
        total += count
        level = tree
        for frame in frames:
            node = level.setdefault(frame, [0, {}])
            node[0] += count
            level = node[1]
    depth = 0
    boxes: list[str] = []
    scale = _WIDTH / max(total, 1)

    def lay(level: dict[str, Any], x: float, row: int) -> None:
        nonlocal depth
        for name, (count, children) in sorted(level.items()):
            width = count * scale
            if width >= 0.5:
                depth = max(depth, row + 1)
                boxes.append(_box(name, count, total, x, row, width))
                lay(children, x, row + 1)
            x += width

    lay(tree, 0.0, 0)
    height = (depth + 2) * _ROW
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" '
        f'height="{height}" font-family="monospace" font-size="11">\n'
        f'<rect width="{_WIDTH}" height="{height}" fill="#fdfdf8"/>\n'
        f'<text x="4" y="12">{_escape(title)}: {total} samples (py-spy); '
        "width = share of the samples, callers below; hover for names</text>\n"
    )
    # Rows were counted from the root: placed now, root at the bottom.
    svg.write_text(head + _flip("".join(boxes), height) + "</svg>\n")
    return total


def _box(name: str, count: int, total: int, x: float, row: int, width: float) -> str:
    fits = int((width - 4) / 6.6)
    label = name if len(name) <= fits else name[: max(0, fits - 2)] + ".."
    text = (
        f'<text x="{x + 2:.1f}" y="ROW{row}T">{_escape(label)}</text>'
        if width > 20
        else ""
    )
    return (
        f"<g><title>{_escape(name)}: {count} samples, {100 * count / total:.1f} %"
        f'</title><rect x="{x:.1f}" y="ROW{row}R" width="{width:.1f}" '
        f'height="{_ROW - 1}" fill="{_colour(name)}"/>{text}</g>\n'
    )


def _flip(body: str, height: int) -> str:
    def place(match: re.Match[str]) -> str:
        row, kind = int(match[1]), match[2]
        top = height - (row + 1) * _ROW
        return str(top if kind == "R" else top + _ROW - 4)

    return re.sub(r"ROW(\d+)([RT])", place, body)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def rows_of(
    peer: str, n: int, round_: int, result: dict[str, Any]
) -> list[dict[str, Any]]:
    """The three rows of one ``sseload`` run."""
    common: dict[str, Any] = {
        "connected": result["connected"],
        "failed": result["failed"],
        "dropped": result["dropped"],
    }
    rows = []
    for workload, phase in (("saturation", "sat"), ("paced", "paced")):
        row = blank(peer, n, round_, workload)
        if f"{phase}_delivered" not in result:
            row["error"] = "no subscriber connected, nothing published"
            rows.append({**row, **common})
            continue
        pub = result.get(f"{phase}_pub") or {}
        if not result[f"{phase}_published"]:
            errors = pub.get("errors", "?")
            row["error"] = f"no publish was accepted ({errors} errors): see sseload.log"
            rows.append({**row, **common})
            continue
        row.update(
            deliveries_per_s=_number(result[f"{phase}_deliveries_per_s"]),
            p50_ms=_number(result[f"{phase}_lat_p50_ms"]),
            p99_ms=_number(result[f"{phase}_lat_p99_ms"]),
            lost=max(int(result[f"{phase}_missing"]), 0),
            duplicated=int(result[f"{phase}_dups"]),
            **common,
            published=int(result[f"{phase}_published"]),
            events_per_s=_number(result[f"{phase}_events_per_s"]),
            expected=int(result[f"{phase}_expected"]),
            delivered=int(result[f"{phase}_delivered"]),
            reordered=int(result[f"{phase}_reordered"]),
            dropped_during=int(result[f"{phase}_dropped_conns"]),
            timed_out=bool(result[f"{phase}_timed_out"]),
            publish_errors=pub.get("errors"),
            hub_cpu_util=_number(result[f"{phase}_server_cpu_util"]),
            client_cpu_util=_number(result[f"{phase}_client_cpu_util"]),
            deliveries_per_hub_cpu_s=_number(
                result[f"{phase}_deliveries_per_server_cpu_s"]
            ),
        )
        if phase == "paced":
            # The rate is set, not measured: over a window of a few events
            # (two at 10,000 subscribers) deliveries/s says nothing more.
            row["deliveries_per_s"] = None
            row["paced_events_per_s"] = _number(result["paced_rate"])
        rows.append(row)
    idle = blank(peer, n, round_, "idle")
    idle.update(
        rss_per_conn_kb=result["rss_per_conn_kb"],
        setup_conn_per_s=_number(result["setup_rate"]),
        **common,
        setup_p50_ms=_number(result["setup_p50_ms"]),
        setup_p99_ms=_number(result["setup_p99_ms"]),
        rss_before_kb=result["rss_before_kb"],
        rss_after_kb=result["rss_after_kb"],
    )
    rows.append(idle)
    return rows


def blank(peer: str, n: int, round_: int, workload: str) -> dict[str, Any]:
    """A row with no measurement yet."""
    return {
        "peer": peer,
        "n": n,
        "workload": workload,
        "round": round_,
        **dict.fromkeys(FIELDS),
    }


def measure(
    peer: str,
    n: int,
    round_: int,
    args: argparse.Namespace,
    tools: Tools,
    logroot: Path,
) -> list[dict[str, Any]]:
    """A fresh ``peer`` and one load run against it: three rows."""
    logdir = logroot / f"{peer}-{n}-{round_}"
    logdir.mkdir(parents=True, exist_ok=True)
    reason = installed(peer, args)
    try:
        if reason is not None:
            raise HubError(reason)
        with start(peer, args, logdir) as hub:
            time.sleep(0.2)
            argv = load_argv(hub, peer, n, args, tools)
            (logdir / "sseload.cmd").write_text(shlex.join(argv) + "\n")
            deadline = float(argv[argv.index("--deadline") + 1])
            profiler = None
            if args.profile and peer in PROFILED:
                stem = f"{peer}-{n}" + (f"-{round_}" if round_ else "")
                profiler = Profiler(hub.pids[0], Path(args.profile_dir), stem, args)
            result = run_load(argv, deadline + 60, logdir / "sseload.log", profiler)
            for workload, samples, svg in profiler.written if profiler else ():
                print(
                    f"# profile {peer} N={n:,} {workload}: {samples} samples, {svg}",
                    flush=True,
                )
            # A hub that died during the run is no measurement.
            gone = [pid for pid in hub.pids if not Path(f"/proc/{pid}").exists()]
            if gone:
                raise HubError(f"hub processes {gone} died during the run")
    except (HubError, OSError, ValueError, KeyError) as error:
        message = str(error) or type(error).__name__
        return [
            {**blank(peer, n, round_, workload), "error": message}
            for workload in WORKLOADS
        ]
    return rows_of(peer, n, round_, result)


# The table


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
    return float(statistics.median(values)) if values else None


def _show(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _runs(rows: list[dict[str, Any]], key: str) -> str:
    values = [r.get(key) for r in rows]
    return " / ".join("-" if v is None else f"{v:,}" for v in values)


def table(rows: list[dict[str, Any]], repeat: int) -> str:
    """One line per (N, peer), the workloads side by side; medians."""
    out = [
        "| N | peer | deliveries/s | hub CPU | client CPU | saturation p50 / p99 ms "
        "| paced p50 / p99 ms | RSS KB/sub | set-up conn/s | connected "
        "| lost paced; saturation | duplicated paced; saturation |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[int, str], dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        key = (row["n"], row["peer"])
        groups.setdefault(key, {}).setdefault(row["workload"], []).append(row)
    for (n, peer), by_workload in groups.items():
        errors = sorted(
            {r["error"] for rs in by_workload.values() for r in rs if "error" in r}
        )
        sat = [r for r in by_workload.get("saturation", []) if "error" not in r]
        paced = [r for r in by_workload.get("paced", []) if "error" not in r]
        idle = [r for r in by_workload.get("idle", []) if "error" not in r]
        if not (sat or paced or idle):
            out.append(f"| {n:,} | {peer} | error: {errors[0][:120]} |")
            continue
        client = _median(sat, "client_cpu_util")
        flag = " (!)" if client is not None and client > 0.9 else ""
        late = " (late)" if any(r["timed_out"] for r in sat) else ""
        hub_cpu = _median(sat, "hub_cpu_util")
        out.append(
            f"| {n:,} | {peer} | {_show(_median(sat, 'deliveries_per_s'))}{late} "
            f"| {_show(None if hub_cpu is None else 100 * hub_cpu)}% "
            f"| {_show(None if client is None else 100 * client)}%{flag} "
            f"| {_show(_median(sat, 'p50_ms'), 1)} / "
            f"{_show(_median(sat, 'p99_ms'), 1)} "
            f"| {_show(_median(paced, 'p50_ms'), 1)} / "
            f"{_show(_median(paced, 'p99_ms'), 1)} "
            f"| {_show(_median(idle, 'rss_per_conn_kb'), 1)} "
            f"| {_show(_median(idle, 'setup_conn_per_s'))} "
            f"| {_runs(idle, 'connected')} "
            f"| {_runs(paced, 'lost')}; {_runs(sat, 'lost')} "
            f"| {_runs(paced, 'duplicated')}; {_runs(sat, 'duplicated')} |"
        )
        for error in errors:
            out.append(f"| {n:,} | {peer} | error (a round): {error[:120]} |")
    medians = f"medians of {repeat} rounds" if repeat > 1 else "one round"
    return "\n".join(out) + (
        f"\n\n{medians}; lost and duplicated: events over all subscribers, "
        "each round; (!): the client was over 90 % busy, it may be the limit; "
        "(late): some subscribers still lacked events when the drain timed out"
    )


# The command


def positive_sizes(text: str) -> list[int]:
    """``--sizes``: comma-separated subscriber counts, each at least 1."""
    try:
        sizes = [int(word) for word in text.split(",") if word.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes takes whole numbers, like 1000,10000: {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sizes must be at least 1: {text!r}")
    return sizes


def peer_list(text: str) -> list[str]:
    """``--peers``: comma-separated names from :data:`PEERS`."""
    peers = [word.strip() for word in text.split(",") if word.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown or not peers:
        raise argparse.ArgumentTypeError(
            f"unknown peer {(unknown or [text])[0]!r}: use {', '.join(PEERS)}"
        )
    return list(dict.fromkeys(peers))


def at_least(minimum: float, kind: type[int] | type[float] = float) -> Any:
    """An argparse type: a number not below ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}: {text}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sizes",
        type=positive_sizes,
        default=[1000, 10000],
        help="subscriber counts (1000,10000)",
    )
    p.add_argument(
        "--peers",
        type=peer_list,
        default=list(PEERS),
        help=f"which hubs ({','.join(PEERS)})",
    )
    p.add_argument(
        "--repeat", type=at_least(1, int), default=1, help="interleaved rounds (1)"
    )
    p.add_argument(
        "--out",
        help="the results file (bench/results/<stamp>-hub.jsonl); the table "
        "goes next to it with .md, the hubs' logs into <name>-logs/",
    )
    p.add_argument(
        "--publish-conns",
        type=at_least(1, int),
        default=4,
        help="publish requests in flight at saturation (4)",
    )
    p.add_argument(
        "--paced-deliveries",
        type=at_least(1),
        default=10000,
        help="deliveries per second of the paced workload, all subscribers (10000)",
    )
    p.add_argument("--paced-s", type=at_least(0.1), default=2.0, help="seconds (2)")
    p.add_argument("--sat-s", type=at_least(0.1), default=4.0, help="seconds (4)")
    p.add_argument(
        "--settle",
        type=at_least(0),
        default=0.5,
        help="seconds between the last set-up and reading the RSS (0.5)",
    )
    p.add_argument(
        "--drain-timeout",
        type=at_least(0.5),
        default=20.0,
        help="seconds a phase waits for its last deliveries (20)",
    )
    p.add_argument(
        "--connect-timeout",
        type=at_least(1),
        default=60.0,
        help="seconds to open every subscriber (60)",
    )
    p.add_argument(
        "--inflight", type=at_least(1, int), default=256, help="set-ups at once (256)"
    )
    p.add_argument(
        "--pushpin-inflight",
        type=at_least(1, int),
        default=100,
        help="set-ups at once for Pushpin, whose proxy answers 502 to many more (100)",
    )
    p.add_argument("--size", type=at_least(48, int), default=64, help="frame bytes")
    p.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/14",
        help="twisted_sse-redis's --broker (redis://127.0.0.1:6379/14)",
    )
    p.add_argument("--nchan-module", default=str(NCHAN_MODULE), help="nginx module")
    two_cores = (os.cpu_count() or 1) >= 2
    p.add_argument(
        "--server-cpu",
        default="0" if two_cores else "",
        help="the hubs' CPU ('' = not pinned; default 0, none on one core)",
    )
    p.add_argument(
        "--client-cpu",
        default="1" if two_cores else "",
        help="the load client's and publisher's CPU ('' = not pinned; default 1)",
    )
    p.add_argument(
        "--client-src",
        default=str(DEFAULT_CLIENT_SRC),
        help="the folder of sseload.c (with --path, --pids and --pub-cmd) and "
        "pub.c [default: bench/client]",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample twisted_sse with py-spy during each workload: collapsed "
        "stacks and a flame graph per workload in --profile-dir (use a long "
        "--sat-s, such as 15)",
    )
    p.add_argument(
        "--profile-dir",
        default=str(HERE / "flame"),
        help="where --profile writes <peer>-<N>-<workload>.{txt,svg} (bench/flame)",
    )
    p.add_argument(
        "--profile-rate",
        type=at_least(1, int),
        default=200,
        help="py-spy samples per second (200)",
    )
    p.add_argument(
        "--profile-native",
        action="store_true",
        help="--profile with py-spy's --native: C frames too (the garbage "
        "collector, the socket calls), at a lower rate of samples",
    )
    p.add_argument(
        "--py-spy",
        default="py-spy",
        help="the py-spy program for --profile (py-spy; pip install py-spy)",
    )
    return p


def check_descriptors(p: argparse.ArgumentParser, sizes: list[int]) -> None:
    """Stop with a message when the biggest N cannot fit in one process."""
    needed = max(sizes) + FD_MARGIN
    hard = raise_nofile(needed)
    if hard < needed:
        p.error(
            f"N={max(sizes):,} needs {needed:,} descriptors in the hub and in "
            f"the load client, and a process may hold {hard:,} here "
            "(RLIMIT_NOFILE hard limit).  Every hub here but nchan is one "
            "process, and sseload opens every subscriber from one process and "
            "one source address, so the load cannot be spread: use N <= "
            f"{hard - FD_MARGIN:,}, or raise the limit (ulimit -Hn, as root)."
        )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    check_descriptors(p, args.sizes)
    if args.profile:
        if shutil.which(args.py_spy) is None:
            p.error(f"--profile needs py-spy (no {args.py_spy!r}: pip install py-spy)")
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    source = Path(args.client_src)
    if not (source / "sseload.c").is_file() or not (source / "pub.c").is_file():
        p.error(f"no sseload.c and pub.c in {source}: see --client-src")
    if shutil.which(os.environ.get("CC", "cc")) is None:
        p.error("no C compiler (cc, or CC=...) to build the load client")
    tools = Tools(
        sseload=build(source / "sseload.c", "harness-sseload"),
        pub=build(source / "pub.c", "harness-pub"),
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else HERE / "results" / f"{stamp}-hub.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    logroot = out.with_name(out.stem + "-logs")
    # SIGINT and SIGTERM unwind, so that every hub is torn down, even when
    # the script was started with SIGINT ignored (in the background).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)

    facts: dict[str, Any] = machine_facts(args.client_cpu, args.server_cpu)
    facts["loadavg"] = Path("/proc/loadavg").read_text().split()[0]
    print("# machine: " + json.dumps(facts), flush=True)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    interrupted = False
    with open(out, "w") as results:
        try:
            for round_ in range(args.repeat):
                for n in args.sizes:
                    for peer in args.peers:
                        for row in measure(peer, n, round_, args, tools, logroot):
                            line = json.dumps(row)
                            print(line, flush=True)
                            results.write(line + "\n")
                            results.flush()
                            rows.append(row)
        except KeyboardInterrupt:
            interrupted = True
    late = " (interrupted)" if interrupted else ""
    report = table(rows, args.repeat) + (
        f"\n\n{args.size}-byte frames; paced {args.paced_deliveries:g} "
        f"deliveries/s for {args.paced_s:g} s; saturation {args.sat_s:g} s with "
        f"{args.publish_conns} publishes in flight; hub cpu "
        f"{args.server_cpu or '-'}, client cpu {args.client_cpu or '-'}; "
        f"{time.monotonic() - started:.0f} s{late}"
    )
    print("\n" + report, flush=True)
    out.with_suffix(".md").write_text(f"{json.dumps(facts)}\n\n{report}\n")
    if interrupted:
        return 130
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
