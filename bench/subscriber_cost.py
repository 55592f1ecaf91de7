"""
What one subscriber of ``twistd sse`` costs, object by object and call by
call, against the same service ``twistd sse`` runs (the memory broker,
``--access-log off --stream-log off --heartbeat 0``), built in a child
process of this script and reached over real sockets on 127.0.0.1:

    python bench/subscriber_cost.py                   # N = 5000; ~2 min
    python bench/subscriber_cost.py --n 10000 --what-if none,direct+noklein
    python bench/subscriber_cost.py --parts rss --json

The child serves; this process opens the subscribers (``GET
/channels/bench``, the headers ``sseload`` sends) and reads what they get.
Four measurements (``--parts``), each in a fresh child, between 10 warm
subscribers and ``--n`` more:

rss
    The child's RSS growth per subscriber, the objects the cyclic garbage
    collector tracks per subscriber, and the child's CPU time per set-up
    with the collector's share (by generation, timed with
    ``gc.callbacks``).
types
    The Python objects kept per subscriber by type: count and
    ``sys.getsizeof`` bytes, over every object the collector tracks and
    those they refer to.
lines
    The Python heap per subscriber under ``tracemalloc``, by the function
    that allocated (one frame of traceback): which code makes up the bytes.
calls
    Python and builtin calls (``cProfile``) per set-up, over ``--setup-n``
    subscribers opened while the profiler runs, and per delivery: events
    published with ``Hub.publish`` one per reactor turn to every
    subscriber, until every byte is written (the socket writes of the next
    turns included), divided by the deliveries.

``--what-if`` measures a change before it is made, by patching the child
at start-up (comma-separated cases, each one change or several joined
with ``+``): ``direct`` removes the ``connectionLost`` override of
``twistd sse``'s request class, so that its streams take the direct path;
``noklein`` serves ``/channels/<name>`` from a plain ``twisted.web`` tree
(the hub's own resource) instead of the Klein app, and nothing else;
``freeze`` calls ``gc.freeze()`` once the service is up.  The output is a
Markdown report, or JSON lines with ``--json``.  The child is pinned to
``--server-cpu`` and this process to ``--client-cpu``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHANNEL = "bench"
TOKEN = "bench-token"
#: The request ``sseload`` sends (bench/hub.py's load client).
REQUEST = (
    "GET /channels/{channel} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
)
WARM = 10
#: What --parts may name: the child's modes.
PARTS = ("rss", "types", "lines", "calls")
#: The cases of --what-if.
WHAT_IF = ("none", "direct", "freeze", "noklein")
INFLIGHT = 256


# The child: twistd sse's service, driven by commands on its standard input


def serve(what_if: str, mode: str) -> None:
    """
    Run the service; answer the parent's commands, a JSON line each.
    ``mode`` says what ``snap`` and ``diff`` measure: ``rss``, ``types``
    or ``lines`` (under ``tracemalloc``); each disturbs the others.
    """
    import gc

    if mode == "lines":
        import tracemalloc

        tracemalloc.start(1)
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from twisted_sse import _app, _site
    from twisted_sse._tap import Options, makeService

    changes = set(what_if.split("+"))
    if "direct" in changes:
        # The override only stops a refused request's lingering close; the
        # stream's direct path needs Twisted's own connectionLost.
        del _site._Request.connectionLost

    apps: list[Any] = []
    made = _app.SSEApp.__init__

    def keep(self: Any, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        apps.append(self)

    _app.SSEApp.__init__ = keep  # type: ignore[method-assign]
    sites: list[Any] = []
    built = _site.CappedSite.__init__

    def keep_site(self: Any, *args: Any, **kwargs: Any) -> None:
        built(self, *args, **kwargs)
        sites.append(self)

    _site.CappedSite.__init__ = keep_site  # type: ignore[method-assign]
    port = _free_port()
    options = Options()
    options.parseOptions(
        [
            *("--port", f"tcp:{port}:interface=127.0.0.1:backlog=1024"),
            *("--access-log", "off", "--stream-log", "off", "--heartbeat", "0"),
            *("--publish-token", TOKEN),
        ]
    )
    service = makeService(options)
    service.startService()
    if "noklein" in changes:
        # /channels/<name> straight to the hub, as in a plain twisted.web
        # tree: no Klein route, no werkzeug map (nothing else is served).
        from twisted.web.resource import Resource

        root = Resource()
        root.putChild(b"channels", apps[0].hub.resource())
        sites[0].resource = root
    if "freeze" in changes:
        # Everything made so far (modules, the service) out of the
        # collector's sight: it then scans the connections' objects only.
        gc.collect()
        gc.freeze()
    hub = apps[0].hub
    state: dict[str, Any] = {}

    class Commands(LineReceiver):
        delimiter = b"\n"

        def connectionMade(self) -> None:
            self.answer({"port": port, "pid": os.getpid()})

        def answer(self, value: object) -> None:
            self.sendLine(json.dumps(value).encode())

        def lineReceived(self, line: bytes) -> None:
            words = line.decode().split()
            command, args = words[0], words[1:]
            if command == "snap":
                gc.collect()
                if mode == "rss":
                    state["rss"] = _rss_kb()
                    state["cpu"] = time.process_time()
                    state["tracked"] = len(gc.get_objects())
                    state["gc"] = _GcTimer()
                elif mode == "types":
                    state["types"] = _types()
                else:
                    state["trace"] = _trace()
                self.answer({})
            elif command == "diff":
                gc.collect()
                n = int(args[0])
                if mode == "rss":
                    result: object = {
                        "rss_kb": _rss_kb() - state["rss"],
                        "cpu_s": time.process_time() - state["cpu"],
                        **state.pop("gc").stop(),
                        "tracked": len(gc.get_objects()) - state["tracked"],
                    }
                elif mode == "types":
                    result = _type_diff(state["types"], _types(), n)
                else:
                    result = _line_diff(state["trace"], _trace(), n)
                self.answer(result)
            elif command == "profile":
                import cProfile

                state["profile"] = cProfile.Profile()
                state["profile"].enable()
                self.answer({})
            elif command == "publish":
                self.publish(int(args[0]))
            elif command == "stop":
                state["profile"].disable()
                self.answer(_calls(state.pop("profile"), int(args[0])))

        def publish(self, count: int) -> None:
            from twisted_sse import Event

            pad = "x" * 30

            def one(left: int) -> None:
                if left:
                    hub.publish(CHANNEL, Event(data=f"{left} {pad}"))
                    reactor.callLater(0, one, left - 1)
                else:
                    # The writes Twisted buffered go out on the next turns.
                    reactor.callLater(0.5, self.answer, {})

            one(count)

    stdio.StandardIO(Commands())
    reactor.run()


class _GcTimer:
    """The cyclic collector's runs by generation, and their time."""

    def __init__(self) -> None:
        import gc

        self.runs = [0, 0, 0]
        self.by_generation = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.by_generation[generation] += time.perf_counter() - self._started
            self.runs[generation] += 1

    def stop(self) -> dict[str, object]:
        import gc

        gc.callbacks.remove(self)
        return {
            "gc_s": sum(self.by_generation),
            "gc_s_by_generation": [round(t, 4) for t in self.by_generation],
            "gc_runs": self.runs,
        }


def _trace() -> Any:
    """A ``tracemalloc`` snapshot without this script's own allocations."""
    import tracemalloc

    return tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, __file__),
        ]
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _type_name(kind: type) -> str:
    module = kind.__module__
    return (
        kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
    )


def _types() -> dict[str, tuple[int, int]]:
    """Count and bytes by type of every object the collector tracks, and
    of the objects they refer to directly (strings, bytes, untracked tuples
    and dictionaries)."""
    import gc

    seen: set[int] = set()
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    tracked = gc.get_objects()
    for obj in tracked:
        for item in (obj, *gc.get_referents(obj)):
            key = id(item)
            if key in seen:
                continue
            seen.add(key)
            name = _type_name(type(item))
            counts[name] += 1
            sizes[name] += sys.getsizeof(item)
    del tracked
    return {name: (counts[name], sizes[name]) for name in counts}


def _type_diff(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], n: int
) -> list[dict[str, Any]]:
    rows = []
    for name, (count, size) in after.items():
        count0, size0 = before.get(name, (0, 0))
        if count - count0 >= n // 2 or size - size0 >= 20 * n:
            rows.append(
                {
                    "type": name,
                    "per_sub": round((count - count0) / n, 2),
                    "bytes_per_sub": round((size - size0) / n, 1),
                }
            )
    return sorted(rows, key=lambda row: -row["bytes_per_sub"])


_FUNCTIONS: dict[str, list[tuple[int, int, str]]] = {}


def _function_at(filename: str, lineno: int) -> str:
    """The qualified name of the function around ``filename:lineno``."""
    spans = _FUNCTIONS.get(filename)
    if spans is None:
        spans = []
        try:
            tree = ast.parse(Path(filename).read_text())
        except (OSError, SyntaxError, ValueError):
            tree = None

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    name = prefix + child.name
                    spans.append((child.lineno, child.end_lineno or 0, name))
                    visit(child, name + ".")
                elif isinstance(child, ast.ClassDef):
                    visit(child, prefix + child.name + ".")

        if tree is not None:
            visit(tree, "")
        _FUNCTIONS[filename] = spans
    inner = [s for s in spans if s[0] <= lineno <= s[1]]
    name = max(inner, key=lambda s: s[0])[2] if inner else "<module>"
    return f"{name} ({_short(filename)}:{lineno})"


def _short(filename: str) -> str:
    for marker in ("site-packages/", "twisted_sse/", "lib/python3"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            if marker == "twisted_sse/":
                return "twisted_sse/" + tail
            if marker == "lib/python3":
                return tail.split("/", 1)[1]
            return tail
    return Path(filename).name


def _line_diff(before: Any, after: Any, n: int) -> dict[str, Any]:
    rows = []
    stats = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in stats)
    for stat in stats:
        if stat.size_diff < 8 * n:
            continue
        frame = stat.traceback[0]
        rows.append(
            {
                "where": _function_at(frame.filename, frame.lineno),
                "bytes_per_sub": round(stat.size_diff / n, 1),
                "blocks_per_sub": round(stat.count_diff / n, 2),
            }
        )
    rows.sort(key=lambda row: -row["bytes_per_sub"])
    return {"bytes_per_sub": round(total / n, 1), "lines": rows}


def _calls(profile: Any, per: int) -> dict[str, Any]:
    import pstats

    stats = pstats.Stats(profile)
    rows = []
    total = python = 0
    for (filename, lineno, name), entry in stats.stats.items():  # type: ignore[attr-defined]
        calls = entry[1]  # every call, recursive ones included
        total += calls
        if filename != "~":
            python += calls
        where = name if filename == "~" else _function_at(filename, lineno)
        rows.append({"function": where, "calls": calls, "own_s": entry[2]})
    rows.sort(key=lambda row: -row["calls"])
    for row in rows:
        row["per"] = round(row.pop("calls") / per, 3)
    return {
        "calls_per": round(total / per, 2),
        "python_calls_per": round(python / per, 2),
        "top": rows[:40],
    }


# The parent: the subscribers


class Child:
    """The serving child and its command pipe."""

    def __init__(self, what_if: str, mode: str, cpu: str) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve"]
        argv += ["--what-if", what_if, "--mode", mode]
        if cpu:
            argv = ["taskset", "-c", cpu, *argv]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        hello = self.read()
        self.port: int = hello["port"]

    def read(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the serving child exited ({self.process.wait()})")
        return json.loads(line)

    def ask(self, command: str, readers: Subscribers | None = None) -> Any:
        """Send ``command``; its answer (draining ``readers`` meanwhile)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()
        if readers is not None:
            readers.drain_until(self.process.stdout)
        return self.read()

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Subscribers:
    """Subscriber sockets: open them, wait for their heads, read on."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.request = REQUEST.format(channel=CHANNEL, port=port).encode()
        self.socks: list[socket.socket] = []
        self.selector = selectors.DefaultSelector()

    def open(self, n: int, timeout: float = 120.0) -> None:
        """Open ``n`` more, at most :data:`INFLIGHT` heads awaited at once."""
        pending: dict[socket.socket, bytes] = {}
        left = n
        deadline = time.monotonic() + timeout
        while left or pending:
            while left and len(pending) < INFLIGHT:
                sock = socket.create_connection(("127.0.0.1", self.port))
                sock.sendall(self.request)
                sock.setblocking(False)
                self.selector.register(sock, selectors.EVENT_READ)
                pending[sock] = b""
                left -= 1
            for key, _ in self.selector.select(1.0):
                sock = key.fileobj  # type: ignore[assignment]
                if sock not in pending:
                    self._read(sock)
                    continue
                data = self._read(sock)
                pending[sock] += data
                if b"\r\n\r\n" in pending[sock]:
                    if not pending[sock].startswith(b"HTTP/1.1 200"):
                        raise SystemExit(f"not a 200: {pending[sock][:80]!r}")
                    del pending[sock]
                    self.socks.append(sock)
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(pending) + left} subscribers not ready")

    def _read(self, sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except BlockingIOError:
            return b""

    def drain_until(self, pipe: Any) -> None:
        """Read every subscriber until ``pipe`` has a line to read."""
        self.selector.register(pipe, selectors.EVENT_READ)
        try:
            while True:
                ready = self.selector.select(1.0)
                if any(key.fileobj is pipe for key, _ in ready):
                    return
                for key, _ in ready:
                    self._read(key.fileobj)  # type: ignore[arg-type]
        finally:
            self.selector.unregister(pipe)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.selector.close()


def measure(args: argparse.Namespace, what_if: str) -> dict[str, Any]:
    """Memory, lines and calls, each in a fresh child."""
    result: dict[str, Any] = {"what_if": what_if, "n": args.n}
    for mode in [part for part in PARTS[:3] if part in args.parts]:
        child = Child(what_if, mode, args.server_cpu)
        subs = Subscribers(child.port)
        try:
            subs.open(WARM)
            child.ask("snap", subs)
            subs.open(args.n)
            time.sleep(args.settle)
            result[mode] = child.ask(f"diff {args.n}", subs)
        finally:
            subs.close()
            child.close()
    rss = result.pop("rss", None)
    if rss is not None:
        result["rss_kb_per_sub"] = round(rss["rss_kb"] / args.n, 2)
        # Opening the subscribers, and the settling: the server's CPU time.
        result["setup_cpu_us"] = round(1e6 * rss["cpu_s"] / args.n, 1)
        result["setup_gc_us"] = round(1e6 * rss["gc_s"] / args.n, 1)
        result["gc_runs"] = rss["gc_runs"]
        # What the cyclic collector scans, per subscriber.
        result["tracked_per_sub"] = round(rss["tracked"] / args.n, 2)
        result["gc_us_by_generation"] = [
            round(1e6 * t / args.n, 1) for t in rss["gc_s_by_generation"]
        ]
    if "calls" not in args.parts:
        return result
    child = Child(what_if, "calls", args.server_cpu)
    subs = Subscribers(child.port)
    try:
        subs.open(WARM)
        child.ask("profile", subs)
        subs.open(args.setup_n)
        result["setup"] = child.ask(f"stop {args.setup_n}", subs)
        subs.open(args.n - args.setup_n)
        child.ask(f"publish {args.events}", subs)  # warm
        child.ask("profile", subs)
        child.ask(f"publish {args.events}", subs)
        deliveries = args.events * (args.n + WARM)
        result["delivery"] = child.ask(f"stop {deliveries}", subs)
    finally:
        subs.close()
        child.close()
    return result


def report(results: list[dict[str, Any]], top: int) -> str:
    """The Markdown tables."""
    out = []
    for result in results:
        out.append(f"## {result['what_if']}: N = {result['n']:,}\n")
        if "rss_kb_per_sub" in result:
            out.append(
                f"RSS growth: {result['rss_kb_per_sub']} KB per subscriber; "
                f"objects the cyclic collector tracks: "
                f"{result['tracked_per_sub']} per subscriber\n\n"
                f"Server CPU per set-up: {result['setup_cpu_us']} µs, of which "
                f"the cyclic collector {result['setup_gc_us']} µs (collections "
                f"by generation: {result['gc_runs']}; µs per set-up by "
                f"generation: {result['gc_us_by_generation']})\n"
            )
        if "types" in result:
            out.extend(_types_table(result["types"], top))
        if "lines" in result:
            out.extend(_lines_table(result["lines"], top))
        for name, per in (("setup", "set-up"), ("delivery", "delivery")):
            if name in result:
                out.extend(_calls_table(result[name], per, top))
    return "\n".join(out)


def _types_table(types: list[dict[str, Any]], top: int) -> list[str]:
    out = [
        "| type | objects per subscriber | bytes per subscriber |",
        "|---|---|---|",
    ]
    for row in types[:top]:
        out.append(f"| `{row['type']}` | {row['per_sub']} | {row['bytes_per_sub']} |")
    total = sum(row["bytes_per_sub"] for row in types)
    out.append(f"| all types listed | | {total:.0f} |\n")
    return out


def _lines_table(lines: dict[str, Any], top: int) -> list[str]:
    out = [
        f"Python heap (tracemalloc): {lines['bytes_per_sub']} bytes per subscriber\n",
        "| allocated in | blocks per subscriber | bytes per subscriber |",
        "|---|---|---|",
    ]
    for row in lines["lines"][:top]:
        blocks, size = row["blocks_per_sub"], row["bytes_per_sub"]
        out.append(f"| `{row['where']}` | {blocks} | {size} |")
    total = sum(row["bytes_per_sub"] for row in lines["lines"])
    out.append(f"| all lines listed | | {total:.0f} |\n")
    return out


def _calls_table(calls: dict[str, Any], per: str, top: int) -> list[str]:
    out = [
        f"Calls per {per}: {calls['calls_per']}, of which Python functions "
        f"{calls['python_calls_per']} (the rest builtins)\n",
        f"| function | calls per {per} |",
        "|---|---|",
    ]
    for row in calls["top"][:top]:
        out.append(f"| `{row['function']}` | {row['per']} |")
    out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=5000, help="subscribers (5000)")
    p.add_argument("--setup-n", type=int, default=2000, help="set-ups profiled (2000)")
    p.add_argument("--events", type=int, default=20, help="events profiled (20)")
    p.add_argument("--settle", type=float, default=0.5, help="seconds (0.5)")
    p.add_argument(
        "--what-if",
        default="none",
        help="none, direct, freeze, or several (none,direct): see the description",
    )
    p.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"what to measure ({','.join(PARTS)})",
    )
    p.add_argument("--top", type=int, default=25, help="rows per table (25)")
    p.add_argument("--json", action="store_true", help="JSON lines, no tables")
    p.add_argument(
        "--server-cpu", default="0", help="the child's CPU ('' = not pinned; 0)"
    )
    p.add_argument(
        "--client-cpu", default="1", help="this process's CPU ('' = not pinned; 1)"
    )
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="rss", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.what_if, args.mode)
        return 0
    if args.n < 1 or not 1 <= args.setup_n <= args.n or args.events < 1:
        p.error("--n, --setup-n and --events must be at least 1, --setup-n <= --n")
    args.parts = [word.strip() for word in args.parts.split(",") if word.strip()]
    if not args.parts or any(part not in PARTS for part in args.parts):
        p.error(f"--parts takes {', '.join(PARTS)}, comma-separated")
    cases = [word.strip() for word in args.what_if.split(",") if word.strip()]
    if not cases or any(
        change not in WHAT_IF for case in cases for change in case.split("+")
    ):
        p.error(
            f"--what-if takes {', '.join(WHAT_IF)}, comma-separated, "
            "combined with + (direct+noklein)"
        )
    if args.client_cpu and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {int(args.client_cpu)})
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.n + WARM + 100:
        p.error(f"--n {args.n} needs {args.n + WARM + 100} descriptors ({hard})")
    results = [measure(args, case) for case in cases]
    if args.json:
        for result in results:
            print(json.dumps(result))
    else:
        print(report(results, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
