"""
The connection guard of ``twistd sse`` (:mod:`twisted_sse._guard`): the
request-head deadline, closing connections without a request head when
descriptors run short, and the start-up halves (descriptor limit, listen
backlog), driven through the site with Twisted's fakes.
"""

from __future__ import annotations

import json
import types
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, Logger, LogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from twisted_sse import _twisted
from twisted_sse._guard import (
    ABORT_GRACE,
    DEFAULT_BACKLOG,
    ConnectionGuard,
    backlog_of,
    check_backlog,
    raise_fd_limit,
)
from twisted_sse._site import CappedSite
from twisted_sse._tap import Options, endpoint_description

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
STREAM = b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"


class _Stream(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        request.write(b"")
        return NOT_DONE_YET


class _Ok(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"ok"


class _Upload(Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        return b"got %d" % len(request.content.read())


def _tree() -> Resource:
    root = Resource()
    root.putChild(b"healthz", _Ok())
    root.putChild(b"stream", _Stream())
    root.putChild(b"upload", _Upload())
    return root


class _Transport(StringTransport):
    """A transport that notes, in a shared list, when it is aborted."""

    def __init__(self, name: str, aborts: list[str]) -> None:
        super().__init__()
        self.name = name
        self.aborts = aborts

    def abortConnection(self) -> None:
        self.aborts.append(self.name)
        super().abortConnection()


def _logger(events: list[LogEvent]) -> Logger:
    """A logger whose events go to ``events``."""
    return Logger(observer=cast(ILogObserver, events.append))


class Connection:
    """One client of the site: its protocol and its transport."""

    def __init__(self, protocol: Any, transport: _Transport) -> None:
        self.protocol = protocol
        self.transport = transport
        self.gone = False

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def lose(self) -> None:
        """The connection ends (as the reactor reports it)."""
        self.gone = True
        self.protocol.connectionLost(Failure(ConnectionDone()))

    @property
    def closing(self) -> bool:
        """Whether the server closed (or began to close) the connection."""
        return bool(self.transport.disconnecting)

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnected)

    @property
    def output(self) -> bytes:
        value: bytes = self.transport.value()
        return value


class Harness:
    """A ``twistd sse`` site with a guard, on a fake clock."""

    def __init__(self, **options: Any) -> None:
        self.clock = MemoryReactorClock()
        self.events: list[LogEvent] = []
        self.aborts: list[str] = []
        options.setdefault("count_fds", lambda: None)
        self.guard = ConnectionGuard(self.clock, log=_logger(self.events), **options)
        self.site = CappedSite(
            _tree(), max_body=1000, guard=self.guard, reactor=self.clock, timeout=None
        )

    def connect(self, name: str = "") -> Connection | None:
        """A new connection, or ``None`` if the site refuses it."""
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        if protocol is None:
            return None
        transport = _Transport(name, self.aborts)
        protocol.makeConnection(transport)
        return Connection(protocol, transport)

    def open(self, name: str = "") -> Connection:
        connection = self.connect(name)
        assert connection is not None
        return connection

    def warnings(self) -> list[LogEvent]:
        return [e for e in self.events if e["log_level"].name == "warn"]


class DeadlineTests(SynchronousTestCase):
    """A connection must deliver a complete request head in time."""

    def test_first_request(self) -> None:
        """A connection that sends nothing is closed at the deadline, silently."""
        harness = Harness(header_timeout=10)
        client = harness.open()
        harness.clock.advance(9.5)
        self.assertFalse(client.closing)
        harness.clock.advance(0.5)
        self.assertTrue(client.closing)
        self.assertEqual(client.output, b"")

    def test_slow_head(self) -> None:
        """A head sent a line a second is cut at the deadline with a 408."""
        harness = Harness(header_timeout=10)
        client = harness.open()
        client.send(b"GET /healthz HTTP/1.1\r\n")
        for second in range(9):
            harness.clock.advance(1)
            client.send(b"X-Slow-%d: yes\r\n" % second)
            self.assertFalse(client.closing)
        harness.clock.advance(1)
        self.assertTrue(client.closing)
        self.assertTrue(client.output.startswith(b"HTTP/1.1 408 Request Timeout\r\n"))
        self.assertIn(b"\r\nConnection: close\r\n", client.output)

    def test_head_in_time(self) -> None:
        """A head completed before the deadline is served, and not cut then."""
        harness = Harness(header_timeout=10)
        client = harness.open()
        harness.clock.advance(9)
        client.send(STREAM)
        harness.clock.advance(100)
        self.assertFalse(client.closing)
        self.assertTrue(client.output.startswith(b"HTTP/1.1 200 OK\r\n"))

    def test_keep_alive(self) -> None:
        """On a kept-alive connection the next head's deadline starts at the end
        of the previous response."""
        harness = Harness(header_timeout=10)
        client = harness.open()
        harness.clock.advance(4)
        client.send(HEALTHZ)
        self.assertIn(b"\r\n\r\nok", client.output)
        harness.clock.advance(9.5)
        self.assertFalse(client.closing)
        client.send(HEALTHZ)
        self.assertEqual(client.output.count(b"HTTP/1.1 200 OK"), 2)
        harness.clock.advance(9.5)
        self.assertFalse(client.closing)
        harness.clock.advance(0.5)
        self.assertTrue(client.closing)
        self.assertNotIn(b"408", client.output)

    def test_pipelined(self) -> None:
        """Pipelined requests are all served; the deadline runs after the last."""
        harness = Harness(header_timeout=10)
        client = harness.open()
        client.send(HEALTHZ * 3)
        self.assertEqual(client.output.count(b"HTTP/1.1 200 OK"), 3)
        self.assertEqual(len(harness.guard.waiting), 1)
        harness.clock.advance(10)
        self.assertTrue(client.closing)

    def test_open_stream(self) -> None:
        """An open event stream is never cut by the deadline."""
        harness = Harness(header_timeout=10)
        client = harness.open()
        client.send(STREAM)
        harness.clock.pump([10] * 100)
        self.assertFalse(client.closing)
        self.assertEqual(harness.guard.waiting, [])

    def test_body_upload(self) -> None:
        """A request body that takes longer than the deadline is not cut."""
        harness = Harness(header_timeout=10)
        client = harness.open()
        client.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n")
        for _ in range(19):
            harness.clock.advance(5)
            client.send(b"x")
        self.assertFalse(client.closing)
        client.send(b"x")
        self.assertIn(b"got 20", client.output)

    def test_http10(self) -> None:
        """After an HTTP/1.0 response the connection closes; no deadline is due."""
        harness = Harness(header_timeout=10)
        client = harness.open()
        client.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        self.assertTrue(client.closing)
        self.assertEqual(harness.guard.waiting, [])

    def test_disabled(self) -> None:
        """With header_timeout 0 a connection may wait for ever."""
        harness = Harness(header_timeout=0)
        client = harness.open()
        client.send(b"GET / HTTP/1.1\r\n")
        harness.clock.pump([100] * 10)
        self.assertFalse(client.closing)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_lingering_client_aborted(self) -> None:
        """A connection closed at its deadline that does not go is aborted."""
        harness = Harness(header_timeout=10)
        client = harness.open()
        harness.clock.advance(10)
        self.assertTrue(client.closing)
        self.assertFalse(client.aborted)
        harness.clock.advance(ABORT_GRACE)
        self.assertTrue(client.aborted)

    def test_gone_forgotten(self) -> None:
        """A connection that ends is forgotten, with its timers."""
        harness = Harness(header_timeout=10)
        client = harness.open()
        harness.clock.advance(10)
        client.lose()
        self.assertEqual(harness.guard.open_connections, 0)
        harness.clock.advance(ABORT_GRACE)
        self.assertFalse(client.aborted)

    def test_one_timer(self) -> None:
        """However many connections wait, one timer serves their deadlines."""
        harness = Harness(header_timeout=10)
        clients = []
        for _ in range(40):
            clients.append(harness.open())
            harness.clock.advance(0.125)
        self.assertEqual(len(harness.clock.getDelayedCalls()), 1)
        harness.clock.advance(5.25)
        self.assertEqual([c.closing for c in clients], [True] * 3 + [False] * 37)


class EvictionTests(SynchronousTestCase):
    """When descriptors run short, connections without a head make room."""

    def harness(self, refuse: bool = True) -> Harness:
        # Ten descriptors, two in reserve, none besides the connections.
        return Harness(
            header_timeout=0,
            fd_limit=10,
            fd_reserve=2,
            eviction_batch=1,
            refuse=refuse,
        )

    def test_oldest_waiting_first(self) -> None:
        """
        Connections are closed in the order they began to wait for a head
        (a kept-alive one from the end of its response); streams never.
        """
        harness = self.harness()
        clock = harness.clock
        a = harness.open("a")
        clock.advance(1)
        d = harness.open("d")
        clock.advance(1)
        stream = harness.open("stream")
        stream.send(STREAM)
        clock.advance(1)
        b = harness.open("b")
        clock.advance(1)
        d.send(HEALTHZ)  # d waits again, from now
        clock.advance(1)
        for name in "efgh":
            harness.open(name)
        self.assertEqual(harness.aborts, [])
        # The ninth connection leaves one descriptor free, under the reserve
        # of two: the two that have waited longest make room (one to get
        # back to the reserve, one batch beyond it).
        newest = [harness.open("i")]
        self.assertEqual(harness.aborts, ["a", "b"])
        a.lose()
        b.lose()
        newest.append(harness.open("j"))
        self.assertEqual(harness.aborts, ["a", "b"])
        newest.append(harness.open("k"))
        self.assertEqual(harness.aborts, ["a", "b", "d", "e"])
        self.assertFalse(stream.closing)
        self.assertFalse(any(connection.closing for connection in newest))

    def test_streams_never(self) -> None:
        """
        With only streams left, nothing is closed; the newest connection is
        refused when it took the last descriptor.
        """
        harness = self.harness()
        streams = []
        for _ in range(9):
            connection = harness.open("stream")
            connection.send(STREAM)
            streams.append(connection)
        self.assertIsNone(harness.connect("late"))
        self.assertEqual(harness.aborts, [])
        self.assertEqual(harness.guard.refused, 1)
        self.assertFalse(any(s.closing for s in streams))

    def test_no_refusal_when_wrapped(self) -> None:
        """Without ``refuse`` (TLS), a connection is always built."""
        harness = self.harness(refuse=False)
        for _ in range(9):
            harness.open("stream").send(STREAM)
        self.assertIsNotNone(harness.connect("late"))

    def test_one_line_per_episode(self) -> None:
        """
        One warning per shortage, not per accept nor per closed connection;
        a new shortage after recovery gets its own line.
        """
        harness = Harness(header_timeout=0, fd_limit=20, fd_reserve=2, eviction_batch=1)
        clients = [harness.open(str(n)) for n in range(18)]
        self.assertEqual(harness.warnings(), [])
        for n in range(10):
            clients.append(harness.open(f"more{n}"))
            for client in clients:
                if client.closing and not client.gone:
                    client.lose()
        self.assertGreaterEqual(len(harness.aborts), 10)
        (line,) = harness.warnings()
        self.assertEqual(line["fd_limit"], 20)
        self.assertEqual(line["fd_reserve"], 2)
        self.assertEqual(line["trigger"], "reserve")
        # Recovery: the reserve plus two batches free.
        for client in clients:
            if not client.gone and harness.guard.open_connections > 14:
                client.lose()
        for n in range(4):
            harness.open(f"again{n}")
        self.assertEqual(len(harness.warnings()), 1)
        harness.open("again4")
        self.assertEqual(len(harness.warnings()), 2)

    def test_remeasured(self) -> None:
        """
        A shortage takes the count of open descriptors again, so that those
        opened by others since start-up count.
        """
        open_fds = [3]
        harness = Harness(
            header_timeout=0,
            fd_limit=40,
            fd_reserve=12,
            eviction_batch=1,
            count_fds=lambda: open_fds[0],
        )
        harness.guard.start(LogPublisher())
        self.addCleanup(harness.guard.stop)
        for n in range(25):
            harness.open(str(n))
        self.assertEqual(harness.aborts, [])
        # Ten descriptors more than at start-up, besides the 26 connections.
        open_fds[0] = 3 + 10 + 26
        harness.open("26th")
        self.assertEqual(harness.warnings()[0]["open_fds"], 39)
        # One free where twelve should be: 11 to get them back, one batch.
        self.assertEqual(harness.aborts, [str(n) for n in range(12)])


class AcceptFailureTests(SynchronousTestCase):
    """Twisted's log of a failed ``accept`` makes room too."""

    def test_emfile(self) -> None:
        """
        ``accept`` failing with EMFILE (as ``tcp.Port`` logs it) closes the
        oldest connections without a head; repeated failures, one line.
        """
        harness = Harness(header_timeout=0, fd_limit=1000, eviction_batch=2)
        publisher = LogPublisher()
        harness.guard.start(publisher)
        self.addCleanup(harness.guard.stop)
        harness.open("stream").send(STREAM)
        for name in "abcdef":
            harness.open(name)
        for _ in range(3):
            publisher(
                {
                    "log_format": "Could not accept new connection ({acceptError})",
                    "acceptError": "EMFILE",
                }
            )
        # At the limit: closed until the reserve (64) is back, so all six.
        self.assertEqual(harness.aborts, list("abcdef"))
        (line,) = harness.warnings()
        self.assertEqual(line["trigger"], "EMFILE")

    def test_reserved_descriptor_released(self) -> None:
        """
        Twisted releasing its reserved descriptor on EMFILE counts too; with
        no known limit, one batch is closed.
        """
        harness = Harness(header_timeout=0, eviction_batch=1)
        publisher = LogPublisher()
        harness.guard.start(publisher)
        harness.open("a")
        harness.open("b")
        publisher(
            {"log_format": "EMFILE encountered; releasing reserved file descriptor."}
        )
        self.assertEqual(harness.aborts, ["a"])
        harness.guard.stop()
        publisher({"acceptError": "ENFILE"})
        self.assertEqual(harness.aborts, ["a"])

    def test_other_errors(self) -> None:
        """Other accept errors and other log events are ignored."""
        harness = Harness(header_timeout=0, fd_limit=1000, eviction_batch=1)
        harness.open("a")
        harness.guard({"acceptError": "ECONNABORTED"})
        harness.guard({"log_format": "hello"})
        self.assertEqual(harness.aborts, [])


class UnavailableTests(SynchronousTestCase):
    """A Twisted that builds its channels differently gets no guard."""

    def test_fallback(self) -> None:
        """
        Without Twisted's HTTP/1.1-or-h2 proxy class, the guard says so and
        the site keeps Twisted's own channels.
        """
        self.patch(_twisted, "_PROXY_CHECKED", False)
        self.patch(_twisted, "_PROXY", None)
        self.patch(_twisted, "http", types.SimpleNamespace())
        events: list[LogEvent] = []
        self.patch(_twisted, "_log", _logger(events))
        guard = ConnectionGuard(MemoryReactorClock(), count_fds=lambda: None)
        self.assertFalse(guard.available)
        self.assertIn("builds its HTTP channels differently", events[0]["log_format"])
        site = CappedSite(
            _tree(), max_body=10, guard=guard, reactor=MemoryReactorClock()
        )
        self.assertIsNone(site.guard)
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(HEALTHZ)
        self.assertIn(b"\r\n\r\nok", transport.value())

    def test_no_guard(self) -> None:
        """A site without a guard has no head deadline, as before."""
        clock = MemoryReactorClock()
        site = CappedSite(_tree(), max_body=10, reactor=clock, timeout=None)
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        protocol.makeConnection(transport)
        clock.pump([100] * 10)
        self.assertFalse(transport.disconnecting)


class FDLimitTests(SynchronousTestCase):
    """At start-up the soft descriptor limit is raised to the hard one."""

    def raise_(
        self, soft: int, hard: int, cap: int | None = None, fails: bool = False
    ) -> tuple[int | None, list[tuple[int, int]], list[LogEvent]]:
        calls: list[tuple[int, int]] = []
        events: list[LogEvent] = []

        def setrlimit(which: int, limits: tuple[int, int]) -> None:
            if fails:
                raise ValueError("not allowed")
            calls.append(limits)

        limit = raise_fd_limit(
            cap,
            getrlimit=lambda which: (soft, hard),
            setrlimit=setrlimit,
            log=_logger(events),
        )
        return limit, calls, events

    def test_raised(self) -> None:
        """256 of 4096 becomes 4096, logged with structured fields."""
        limit, calls, events = self.raise_(256, 4096)
        self.assertEqual(limit, 4096)
        self.assertEqual(calls, [(4096, 4096)])
        (event,) = events
        self.assertEqual(
            (event["fd_limit"], event["fd_previous_limit"], event["fd_hard_limit"]),
            (4096, 256, 4096),
        )

    def test_already(self) -> None:
        """A soft limit at the hard one is left alone (and still logged)."""
        limit, calls, events = self.raise_(256, 256)
        self.assertEqual((limit, calls, len(events)), (256, [], 1))

    def test_capped(self) -> None:
        """The select reactor's cap is not exceeded."""
        limit, calls, _ = self.raise_(256, 4096, cap=1024)
        self.assertEqual((limit, calls), (1024, [(1024, 4096)]))

    def test_refused(self) -> None:
        """When the kernel refuses, the old limit stands and a warning says so."""
        limit, _, events = self.raise_(256, 4096, fails=True)
        self.assertEqual(limit, 256)
        self.assertEqual(
            [e["log_level"].name for e in events], ["warn", "info"], events
        )


class BacklogTests(SynchronousTestCase):
    """A bare ``--port`` listens with a long backlog; a description keeps its own."""

    def test_bare_port(self) -> None:
        """A port number becomes TCP on all interfaces with backlog 1024."""
        self.assertEqual(DEFAULT_BACKLOG, 1024)
        self.assertEqual(endpoint_description("3000"), "tcp:3000:backlog=1024")
        self.assertEqual(endpoint_description(" 8080 "), "tcp:8080:backlog=1024")

    def test_description_kept(self) -> None:
        """An endpoint description is used as given, backlog or none."""
        for description in (
            "tcp:3000:interface=127.0.0.1",
            "tcp:3000:backlog=10",
            "ssl:8443:privateKey=key.pem",
            "unix:/run/sse.sock",
        ):
            self.assertEqual(endpoint_description(description), description)

    def test_options(self) -> None:
        """``--port 3000`` reaches makeService as the long-backlog description."""
        options = Options()
        options.parseOptions(["--port", "3000"])
        self.assertEqual(options["endpoint"], "tcp:3000:backlog=1024")

    def test_backlog_of(self) -> None:
        """The backlog a description names, wherever it is among its fields."""
        self.assertEqual(backlog_of("tcp:3000:backlog=1024"), 1024)
        self.assertEqual(backlog_of("tcp:3000:backlog=7:interface=::1"), 7)
        self.assertIsNone(backlog_of("tcp:3000"))
        self.assertIsNone(backlog_of("unix:/tmp/nobacklog=5"))

    def test_capped_logged(self) -> None:
        """A backlog over net.core.somaxconn is logged as capped to it."""
        events: list[LogEvent] = []
        log = _logger(events)
        self.assertEqual(
            check_backlog("tcp:3000:backlog=1024", read_somaxconn=lambda: 128, log=log),
            128,
        )
        (event,) = events
        self.assertEqual((event["backlog"], event["somaxconn"]), (1024, 128))
        self.assertEqual(
            check_backlog(
                "tcp:3000:backlog=1024", read_somaxconn=lambda: 4096, log=log
            ),
            1024,
        )
        self.assertIsNone(check_backlog("tcp:3000", read_somaxconn=lambda: 1, log=log))
        self.assertEqual(len(events), 1)


class OptionTests(SynchronousTestCase):
    """``--header-timeout`` and ``--fd-reserve``."""

    def parse(self, *arguments: str) -> Options:
        options = Options()
        options.parseOptions(list(arguments))
        return options

    def test_defaults(self) -> None:
        """10 s for a request head, 64 descriptors in reserve."""
        options = self.parse()
        self.assertEqual(options["header-timeout"], 10.0)
        self.assertEqual(options["fd-reserve"], 64)

    def test_values(self) -> None:
        """Both take their numbers; 0 is allowed."""
        options = self.parse("--header-timeout", "2.5", "--fd-reserve", "0")
        self.assertEqual((options["header-timeout"], options["fd-reserve"]), (2.5, 0))

    def test_bad(self) -> None:
        """Negative or non-numeric values are usage errors naming the option."""
        for arguments in (
            ("--header-timeout", "-1"),
            ("--header-timeout", "soon"),
            ("--fd-reserve", "1.5"),
        ):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(*arguments)
            self.assertIn(arguments[0], str(caught.exception))


class LongLineTests(SynchronousTestCase):
    """
    A request head line longer than Twisted reads (16 KiB) is answered in
    JSON before the connection closes, where Twisted closes without a word.
    """

    def answer(self, data: bytes) -> tuple[bytes, dict[str, Any], Connection]:
        connection = Harness().open()
        connection.send(data)
        head, _, body = connection.output.partition(b"\r\n\r\n")
        return head, json.loads(body), connection

    def test_request_line(self) -> None:
        """A URL that long: 414, naming the limit."""
        target = b"/subscribe?channel=" + b"a" * 20000
        head, body, connection = self.answer(b"GET " + target + b" HTTP/1.1\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 414 URI Too Long\r\n"), head)
        self.assertIn(b"Content-Type: application/json", head)
        self.assertEqual(body, {"error": "the request line is longer than 16384 bytes"})
        self.assertTrue(connection.closing)

    def test_request_line_in_pieces(self) -> None:
        """The same when the line arrives in small pieces."""
        connection = Harness().open()
        connection.send(b"GET /" + b"a" * 1000)
        for _ in range(20):
            connection.send(b"b" * 1000)
        self.assertTrue(connection.output.startswith(b"HTTP/1.1 414 "))
        self.assertTrue(connection.closing)

    def test_header_line(self) -> None:
        """A header line that long: 431."""
        head, body, connection = self.answer(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n"
        )
        self.assertTrue(
            head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), head
        )
        self.assertEqual(body, {"error": "a header line is longer than 16384 bytes"})
        self.assertTrue(connection.closing)

    def test_short_lines_untouched(self) -> None:
        """A request of ordinary lines is answered by its resource."""
        connection = Harness().open()
        connection.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(connection.output.startswith(b"HTTP/1.1 200 "))
