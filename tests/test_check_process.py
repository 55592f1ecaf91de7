"""
``twisted-sse check`` against real servers on 127.0.0.1.

Small servers of our own (Twisted protocols speaking raw HTTP/1.1), each
with one fault, must have that fault reported by name and exit 1; hostile
ones (an endless line, a redirect loop, a server that never answers,
endless headers) must end in a failed check within ``--duration`` and a few
seconds, without a traceback.  Then ``twistd sse`` itself passes, over
HTTP/1.1, TLS and HTTP/2, and nginx in front of it fails with
``proxy_buffering on`` and passes with the recommended block of
``docs/examples/nginx.conf``.

The servers of our own run under pytest only (pytest-twisted); the real
processes (marked slow) run under both pytest and trial.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IListeningPort,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse.__main__ import build_parser, check

from ._certs import self_signed
from ._helpers import Endless
from ._nginx import Nginx, nginx_binary
from ._process import Twistd
from ._tools import require_module

ROOT = Path(__file__).resolve().parent.parent
NGINX_EXAMPLE = ROOT / "docs" / "examples" / "nginx.conf"
TOKEN = "check-token"

#: Seconds a check may take beyond --duration: the settling of aborted
#: connections (at most 2 s) and the start of a process.
GRACE = 4.0

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Connection(Protocol):
    """One connection to a L{Server}: reads a request head, then behaves."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.request = b""
        self.method = ""
        self.headers: dict[str, str] = {}
        self.timers: list[LoopingCall | IDelayedCall] = []
        self.lost = False
        self.sent = 0

    def connectionMade(self) -> None:
        self.server.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        if self.method:
            return
        self.request += data
        if b"\r\n\r\n" not in self.request:
            return
        head = self.request.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        first, *lines = head.split("\r\n")
        self.method = first.split(" ", 1)[0]
        for line in lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.server.behave(self)

    def write(self, data: bytes) -> None:
        """Write ``data`` as it is."""
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def every(self, seconds: float, call: Callable[[], object]) -> None:
        """Call ``call`` every ``seconds`` while the connection lasts."""
        loop = LoopingCall(call)
        loop.clock = _reactor()
        self.timers.append(loop)
        loop.start(seconds, now=False)

    def endless(self, piece: bytes) -> None:
        """Write ``piece`` for as long as the client reads."""
        assert self.transport is not None
        IConsumer(self.transport).registerProducer(
            Endless(self, piece), streaming=False
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        for timer in self.timers:
            if isinstance(timer, LoopingCall):
                if timer.running:
                    timer.stop()
            elif timer.active():
                timer.cancel()


class Server(Factory):
    """A server on 127.0.0.1 that behaves as ``behave(connection)`` says."""

    def __init__(self, behave: Callable[[Connection], object]) -> None:
        self.behave = behave
        self.connections: list[Connection] = []
        self.port: IListeningPort | None = None

    def buildProtocol(self, addr: Any) -> Connection:
        return Connection(self)

    async def start(self) -> str:
        """Listen; return the URL of ``/events``."""
        endpoint = TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1")
        self.port = await endpoint.listen(self)
        port: int = self.port.getHost().port  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/events"

    async def stop(self) -> None:
        """Stop listening, and drop what the client left open."""
        for connection in self.connections:
            if not connection.lost and connection.transport is not None:
                connection.transport.loseConnection()
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)


# The behaviours: a healthy stream, then each with one fault.


def counter(
    connection: Connection,
    head: bytes = SSE_HEAD,
    every: float = 0.1,
    ids: bool = False,
    encode: Callable[[bytes], bytes] = lambda data: data,
) -> None:
    """``retry: 1000``, then ``data: <n>`` every ``every`` seconds (chunked)."""
    connection.write(head)
    if connection.method == "HEAD":
        return
    connection.write(chunk(encode(b"retry: 1000\n\n")))
    count = [0]

    def tick() -> None:
        count[0] += 1
        frame = b"data: %d\n\n" % count[0]
        if ids:
            frame = b"id: %d\n" % count[0] + frame
        connection.write(chunk(encode(frame)))

    connection.every(every, tick)


def gzipped(connection: Connection) -> None:
    """The counter, gzipped and flushed per event, as a gzip filter might."""
    compressor = zlib.compressobj(wbits=31)

    def encode(data: bytes) -> bytes:
        return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)

    head = SSE_HEAD.replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n")
    counter(connection, head, encode=encode)


def with_length(connection: Connection) -> None:
    """A Content-Length on the stream: the body ends at that length."""
    body = b"retry: 1000\n\ndata: 1\n\n"
    connection.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    if connection.method != "HEAD":
        connection.write(body)


def buffered(connection: Connection) -> None:
    """Events made every 0.1 s but written all at once every 0.8 s."""
    connection.write(SSE_HEAD)
    if connection.method == "HEAD":
        return
    held = [b"retry: 1000\n\n"]
    count = [0]

    def tick() -> None:
        count[0] += 1
        held.append(b"data: %d\n\n" % count[0])

    def flush() -> None:
        connection.write(chunk(b"".join(held)))
        held.clear()

    connection.every(0.1, tick)
    connection.every(0.8, flush)


def plain_text(connection: Connection) -> None:
    """The counter as text/plain."""
    counter(connection, SSE_HEAD.replace(b"text/event-stream", b"text/plain"))


def silent(connection: Connection) -> None:
    """The first frame, then silence: no heartbeat."""
    connection.write(SSE_HEAD)
    if connection.method != "HEAD":
        connection.write(chunk(b"retry: 1000\n\n"))


def head_hangs(connection: Connection) -> None:
    """The counter; HEAD is never answered."""
    if connection.method != "HEAD":
        counter(connection)


def head_with_body(connection: Connection) -> None:
    """The counter; HEAD is answered with the first frame as a body."""
    if connection.method != "HEAD":
        counter(connection)
        return
    connection.write(SSE_HEAD)
    connection.write(chunk(b"retry: 1000\n\n"))


def from_the_start(connection: Connection) -> None:
    """Events with ids 1, 2, ... on every connection, Last-Event-ID or not."""
    counter(connection, ids=True)


# The hostile ones.


def endless_line(connection: Connection) -> None:
    """A line that never ends."""
    connection.write(SSE_HEAD)
    if connection.method != "HEAD":
        connection.endless(chunk(b"x" * 65536))


def redirect_loop(connection: Connection) -> None:
    """A redirect to itself, for ever."""
    connection.write(
        b"HTTP/1.1 302 Found\r\nLocation: /events\r\nContent-Length: 0\r\n\r\n"
    )


def never_answers(connection: Connection) -> None:
    """Reads the request, says nothing."""


def endless_headers(connection: Connection) -> None:
    """Response headers without end."""
    connection.write(b"HTTP/1.1 200 OK\r\n")
    connection.endless(b"X-Filler: " + b"y" * 100 + b"\r\n")


class Output(io.StringIO):
    """Standard output or error, not a terminal."""

    def isatty(self) -> bool:
        return False


async def run_check(
    behave: Callable[[Connection], object], *argv: str, duration: float = 1.5
) -> tuple[int, dict[str, Any], float]:
    """
    Run ``check --json`` in this process against a L{Server}; return the
    exit status, the report and the seconds it took, once it and the
    server are done.
    """
    server = Server(behave)
    url = await server.start()
    options = build_parser().parse_args(
        ["check", url, "--json", "--duration", str(duration), *argv]
    )
    out, err = Output(), Output()
    began = time.monotonic()
    try:
        code = await check(_reactor(), options, out, err)
    finally:
        took = time.monotonic() - began
        await server.stop()
    assert err.getvalue() == ""
    assert took < duration + GRACE, took
    # Nothing of the check is left scheduled.
    await deferLater(_reactor(), 0)
    leftovers = [
        call
        for call in _reactor().getDelayedCalls()
        if getattr(call.func, "__module__", "").startswith("twisted_sse")
    ]
    assert leftovers == []
    if behave is endless_line:
        # The check stopped reading at the parser's cap (16 MiB): the
        # server could not push more than a few socket buffers past it.
        assert all(c.sent < 64 * 1024 * 1024 for c in server.connections)
    return code, json.loads(out.getvalue()), took


def statuses(report: dict[str, Any]) -> dict[str, str]:
    """Each check's status, by name."""
    return {check["name"]: check["status"] for check in report["checks"]}


def reason(report: dict[str, Any], name: str) -> str:
    """The reason of check ``name``."""
    (found,) = [check["reason"] for check in report["checks"] if check["name"] == name]
    return str(found)


def failed(report: dict[str, Any]) -> set[str]:
    """The names of the checks that failed."""
    return {name for name, status in statuses(report).items() if status == "fail"}


@pytest_twisted.ensureDeferred
async def test_healthy() -> None:
    """A stream without fault passes, exit 0."""
    code, report, _ = await run_check(counter)
    assert (code, failed(report)) == (0, set()), report
    assert statuses(report)["delivery"] == "pass"


@pytest.mark.parametrize(
    ("behave", "options", "faults", "words"),
    [
        (gzipped, [], {"content-encoding"}, "gzip"),
        (with_length, [], {"content-length", "framing"}, "Content-Length: 22"),
        (buffered, ["--duration", "2"], {"delivery"}, "buffer"),
        (plain_text, [], {"content-type"}, "text/plain"),
        (silent, ["--idle", "0.5"], {"heartbeat"}, "--idle 0.5 s"),
        (head_hangs, [], {"head"}, "no answer"),
        (head_with_body, [], {"head"}, "bytes of body"),
        (from_the_start, [], {"resume"}, "from the start"),
    ],
    ids=[
        "gzip",
        "length",
        "buffering",
        "type",
        "silence",
        "head",
        "head body",
        "resume",
    ],
)
@pytest_twisted.ensureDeferred
async def test_fault(
    behave: Callable[[Connection], object],
    options: list[str],
    faults: set[str],
    words: str,
) -> None:
    """Each fault fails its check, by name, and no other; exit 1."""
    duration = 1.5
    if options[:1] == ["--duration"]:
        duration, options = float(options[1]), options[2:]
    code, report, _ = await run_check(behave, *options, duration=duration)
    assert code == 1
    assert failed(report) == faults, report
    first = sorted(faults)[0] if len(faults) == 1 else "content-length"
    assert words in reason(report, first), report


@pytest.mark.parametrize(
    ("behave", "name", "words", "duration"),
    [
        (endless_line, "stream", "a line longer than max_line_bytes", 3.0),
        (redirect_loop, "status", "more than 20 redirects", 1.5),
        (never_answers, "status", "no response in 1.5 s", 1.5),
        (endless_headers, "status", "response headers longer than 16384 bytes", 1.5),
    ],
    ids=["endless line", "redirect loop", "never answers", "endless headers"],
)
@pytest_twisted.ensureDeferred
async def test_hostile(
    behave: Callable[[Connection], object], name: str, words: str, duration: float
) -> None:
    """A hostile server ends in a failed check in time, exit 1."""
    code, report, _ = await run_check(behave, duration=duration)
    assert code == 1
    assert statuses(report)[name] == "fail"
    assert words in reason(report, name), report


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.pop("NO_COLOR", None)
    return env


def run_command(
    *argv: str, timeout: float = 60.0
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``python -m twisted_sse ARGV``; return it and the seconds it took."""
    began = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "twisted_sse", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=_environment(),
    )
    return run, time.monotonic() - began


@pytest.mark.parametrize(
    "behave", [never_answers, endless_line], ids=["never answers", "endless line"]
)
@pytest_twisted.ensureDeferred
async def test_hostile_process(behave: Callable[[Connection], object]) -> None:
    """As a process: exit 1 in time, a table on stdout, no traceback."""
    server = Server(behave)
    url = await server.start()
    try:
        run, took = await deferToThread(run_command, "check", url, "--duration", "1.5")
    finally:
        await server.stop()
    assert run.returncode == 1, run.stderr
    assert took < 1.5 + GRACE + 2
    assert (run.stderr, "Traceback" in run.stdout) == ("", False)
    assert re.search(r"(?m)^  FAIL  (status|stream) ", run.stdout), run.stdout
    assert run.stdout.rstrip().splitlines()[-1].startswith("FAILED: ")


def test_bad_url_process() -> None:
    """A URL it cannot use: one line on stderr, exit 2, at once."""
    run, took = run_command("check", "http://exa mple/events")
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr.splitlines() == [
        "twisted-sse: bad URL 'http://exa mple/events': a space or control "
        "character in the URL"
    ]
    assert took < 10


# twistd sse, and nginx in front of it: real processes.


def check_json(*argv: str) -> subprocess.Popen[str]:
    """Start ``twisted-sse check --json ARGV`` as a process."""
    return subprocess.Popen(
        [sys.executable, "-m", "twisted_sse", "check", "--json", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_environment(),
    )


def report_of(process: subprocess.Popen[str]) -> tuple[int, dict[str, Any]]:
    """Wait for a check started by L{check_json}: its exit status and report."""
    out, err = process.communicate(timeout=60)
    assert err == "", err
    return process.returncode, json.loads(out)


@pytest.mark.slow
class TwistdTests(SynchronousTestCase):
    """twistd sse passes its own check, over HTTP/1.1, TLS and HTTP/2."""

    def test_twistd(self) -> None:
        """
        The counter and a hub channel with test events published pass,
        over HTTP/1.1, over TLS with HTTP/1.1 and with HTTP/2; the checks
        run side by side.
        """
        require_module("OpenSSL", "Twisted[tls] (the tls extra)")
        require_module("h2", "Twisted[http2] (the http2 extra)")
        directory = Path(tempfile.mkdtemp(prefix="twisted-sse-check-"))
        self.addCleanup(shutil.rmtree, directory, True)
        key, cert = self_signed(directory)
        options = ["--publish-token", TOKEN, "--interval", "0.2", "--heartbeat", "0.5"]
        plain = Twistd(*options)
        tls = Twistd(
            *options,
            port=f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1",
        )
        for server in (plain, tls):
            self.addCleanup(server.stop)
            server.start()
        runs: dict[str, subprocess.Popen[str]] = {}
        for name, base, extra in [
            ("http", f"http://127.0.0.1:{plain.port}", []),
            ("https", f"https://127.0.0.1:{tls.port}", ["--http1.1"]),
            ("h2", f"https://127.0.0.1:{tls.port}", []),
        ]:
            common = ["--duration", "2", "--origin", "https://app.example"]
            if name != "http":
                common += ["--cacert", str(cert)]
            runs[f"{name} /events"] = check_json(f"{base}/events", *common, *extra)
            channel = f"{base}/channels/{name}"
            runs[f"{name} channel"] = check_json(
                channel, "--publish", channel, "--token", TOKEN, *common, *extra
            )
        for name, process in runs.items():
            code, report = report_of(process)
            self.assertEqual((code, failed(report)), (0, set()), (name, report))
            protocol = report["timings"]["protocol"]
            self.assertEqual(
                protocol, "HTTP/2" if name.startswith("h2") else "HTTP/1.1"
            )
            if name.endswith("channel"):
                # The test events make ids, so the resume is judged too.
                self.assertEqual(statuses(report)["resume"], "pass", name)
                self.assertEqual(statuses(report)["publish"], "pass", name)
            self.assertEqual(statuses(report)["cors"], "pass", name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def recommended_location() -> str:
    """The ``location / { ... }`` block of docs/examples/nginx.conf."""
    match = re.search(
        r"^    location / \{\n.*?^    \}", NGINX_EXAMPLE.read_text(), re.M | re.S
    )
    assert match is not None
    return match.group(0)


#: A location that buffers: nginx's defaults (HTTP/1.0 to the upstream,
#: buffering on), and the server's X-Accel-Buffering: no ignored, as when
#: a server does not send it.  (With HTTP/1.1 and chunked upstream
#: responses, nginx 1.22 passes each chunk on even when buffering.)
BUFFERING_LOCATION = """    location / {
        proxy_pass http://twisted_sse;
        proxy_buffering on;
        proxy_ignore_headers X-Accel-Buffering;
    }"""


def proxy_in_front(upstream: int, location: str) -> str:
    """An ``http`` block: a private port proxying ``location`` to ``upstream``."""
    return f"""    upstream twisted_sse {{
        server 127.0.0.1:{upstream};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{_free_port()};
{location}
    }}"""


@pytest.mark.slow
class NginxTests(SynchronousTestCase):
    """twisted-sse check through a real nginx (nginx-light)."""

    def test_buffering_and_recommended(self) -> None:
        """
        Behind a buffering nginx the check fails and names the buffering;
        behind the recommended block it passes.
        """
        binary = nginx_binary()
        # A counter fast enough to fill nginx's buffers (4 KiB) within the watch.
        server = Twistd("--publish-token", TOKEN, "--interval", "0.005")
        self.addCleanup(server.stop)
        server.start()
        proxies = {}
        for name, location in [
            ("buffering", BUFFERING_LOCATION),
            ("recommended", recommended_location()),
        ]:
            proxy = Nginx(binary, proxy_in_front(server.port, location))
            self.addCleanup(proxy.stop)
            proxies[name] = proxy.start()
        runs = {
            name: check_json(
                f"http://127.0.0.1:{proxy.ports[0]}/events", "--duration", "4"
            )
            for name, proxy in proxies.items()
        }
        channel = f"http://127.0.0.1:{proxies['recommended'].ports[0]}/channels/n"
        runs["recommended channel"] = check_json(
            channel, "--publish", channel, "--token", TOKEN, "--duration", "3"
        )
        code, report = report_of(runs.pop("buffering"))
        self.assertEqual(code, 1)
        # The stream is held until nginx's buffer fills: the events come in
        # bursts, or (on a slow machine) not even the head comes in time.
        faults = failed(report)
        self.assertTrue(faults & {"delivery", "status"}, report)
        self.assertIn("buffer", " ".join(reason(report, name) for name in faults))
        for name, process in runs.items():
            code, report = report_of(process)
            self.assertEqual((code, failed(report)), (0, set()), (name, report))
