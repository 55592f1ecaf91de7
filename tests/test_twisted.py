"""
What the package knows of Twisted's internals (:mod:`twisted_sse._twisted`):
each piece is checked before use, a failed check logs one line and takes
the road that needs nothing private, and no other module of the package
names one of Twisted's private attributes or classes.  Should a Twisted
move a private the direct write path reads, streams still deliver every
event, through ``request.write`` (a real-socket test, pytest-twisted).
"""

from __future__ import annotations

import ast
import types
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.internet.tcp import Connection
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, Logger
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

import twisted_sse
from twisted_sse import Event, EventStream, EventStreamResource, _twisted

from ._http import connect, http_request

#: Twisted's private names (and the undocumented ``notifications``) that
#: the package uses, all in ``_twisted``.  ``_channel`` (the protocol
#: proxy's channel, also read there) is left out: ``_broker`` has a method
#: of its own by that name.
TWISTED_PRIVATES = frozenset(
    {
        "_GenericHTTPChannelProtocol",
        "_genericHTTPChannelProtocolFactory",
        "_cleanup",
        "_conn",
        "_encoder",
        "_inFakeHead",
        "_rawHeaders",
        "_tempDataBuffer",
        "notifications",
    }
)

PACKAGE = Path(twisted_sse.__file__).parent


def _named(tree: ast.AST) -> set[str]:
    """The names ``tree``'s code uses: attributes, names, imports, strings."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.alias):
            found.update(node.name.split("."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
    return found & TWISTED_PRIVATES


def _requests() -> tuple[Request, Connection]:
    """A Twisted request on an HTTP/1.1 channel over an unconnected TCP transport."""
    channel = HTTPChannel()
    channel.makeConnection(StringTransport())
    # A site, as Site's channels have: a request reads its settings from it.
    cast(Any, channel).site = Site(Resource())
    request = Request(channel)
    transport = Connection.__new__(Connection)
    channel.transport = transport
    request.clientproto = b"HTTP/1.1"
    return request, transport


class OneModuleTests(SynchronousTestCase):
    """Twisted's private names are in one module."""

    def test_only_in_twisted(self) -> None:
        """No module but ``_twisted`` names one of Twisted's privates."""
        offenders = {}
        for path in sorted(PACKAGE.rglob("*.py")):
            if path.name == "_twisted.py" and path.parent == PACKAGE:
                continue
            names = _named(ast.parse(path.read_text(), str(path)))
            if names:
                offenders[str(path.relative_to(PACKAGE))] = sorted(names)
        self.assertEqual(offenders, {})

    def test_list_is_true(self) -> None:
        """Every name of the list is one ``_twisted`` uses (keep it current)."""
        text = (PACKAGE / "_twisted.py").read_text()
        self.assertEqual(
            {name for name in TWISTED_PRIVATES if name in text}, TWISTED_PRIVATES
        )


class ChecksTests(SynchronousTestCase):
    """Each piece is checked at first use, with a fallback and one log line."""

    def setUp(self) -> None:
        self.events: list[LogEvent] = []
        self.patch(
            _twisted, "_log", Logger(observer=cast(ILogObserver, self.events.append))
        )
        self.patch(_twisted, "_WARNED", set())
        self.patch(_twisted, "_DIRECT_CLASSES", {})

    def test_direct_path(self) -> None:
        """Twisted's own request, channel and TCP transport take the direct path."""
        request, transport = _requests()
        transport.socket = cast(Any, None)
        transport._tempDataBuffer = []
        transport.reactor = cast(Any, Clock())
        self.assertIs(_twisted.direct_transport(request), transport)
        self.assertEqual(self.events, [])

    def test_direct_path_unexpected(self) -> None:
        """A TCP transport without the buffer expected: one warning, the plain path."""
        request, transport = _requests()
        transport.socket = cast(Any, None)
        self.assertIsNone(_twisted.direct_transport(request))
        other, _ = _requests()
        other.clientproto = b"HTTP/1.0"
        self.assertIsNone(_twisted.direct_transport(other))
        self.assertEqual(len(self.events), 1)
        self.assertIn(
            "streams write through request.write", self.events[0]["log_format"]
        )

    def test_not_twisted_own(self) -> None:
        """Another transport takes the plain path without a warning."""
        request, _ = _requests()
        request.channel.transport = cast(Any, types.SimpleNamespace())
        self.assertIsNone(_twisted.direct_transport(request))
        self.assertEqual(self.events, [])

    def test_shared_between_streams(self) -> None:
        """
        Two open streams' requests keep one copy of equal header names and
        values, of the server's address, method and version.
        """
        self.patch(_twisted, "_SHARED", {})
        requests = [_requests()[0] for _ in range(2)]
        for request in requests:
            request.requestHeaders.addRawHeader(b"Accept", b"text/event-stream")
            request.method = b"GET"
            request.host = IPv4Address("TCP", "127.0.0.1", 8080)
            _twisted._slim_request(request)
        first, second = requests
        self.assertIs(
            first.requestHeaders.getRawHeaders(b"accept"),
            second.requestHeaders.getRawHeaders(b"accept"),
        )
        self.assertIs(first.host, second.host)
        self.assertIs(first.method, second.method)
        self.assertEqual(
            second.requestHeaders.getRawHeaders(b"accept"), (b"text/event-stream",)
        )

    def test_shared_bounded(self) -> None:
        """
        At most _SHARED_MAX values are shared, none longer than
        _SHARED_LONGEST bytes: a client's own values cost the table nothing.
        """
        self.patch(_twisted, "_SHARED", {})
        self.patch(_twisted, "_SHARED_MAX", 3)
        long = b"x" * (_twisted._SHARED_LONGEST + 1)
        self.assertIs(_twisted._shared(long), long)
        self.assertEqual(_twisted._SHARED, {})
        for n in range(5):
            _twisted._shared((b"%d" % n,))
        self.assertEqual(len(_twisted._SHARED), 3)
        late = b"4"
        self.assertIs(_twisted._shared((late,))[0], late)

    def test_kept_headers(self) -> None:
        """An open stream's request headers read as they did, kept in tuples."""
        self.patch(_twisted, "_KEEPABLE", None)
        request, _ = _requests()
        request.requestHeaders.addRawHeader(b"Accept", b"text/event-stream")
        _twisted._slim_request(request)
        self.assertEqual(
            request.requestHeaders.getRawHeaders(b"accept"), (b"text/event-stream",)
        )
        self.assertEqual(self.events, [])

    def test_kept_headers_unexpected(self) -> None:
        """Headers kept differently: one warning, the request headers as they were."""
        self.patch(_twisted, "_KEEPABLE", None)
        self.patch(_twisted, "_headers_keepable", lambda: False)
        request, _ = _requests()
        headers = request.requestHeaders
        _twisted._slim_request(request)
        _twisted._slim_request(_requests()[0])
        self.assertIs(request.requestHeaders, headers)
        self.assertIsInstance(headers, Headers)
        self.assertEqual(len(self.events), 1)
        self.assertIn("keeps Headers differently", self.events[0]["log_format"])

    def test_h2_unexpected(self) -> None:
        """An HTTP/2 stream without its connection: nothing to wait for, one warning."""
        channel: Any = types.SimpleNamespace(streamID=1)
        self.assertFalse(_twisted.h2_stream_pending(channel))
        self.assertIsNone(_twisted.h2_transport(channel))
        self.assertEqual(len(self.events), 1)
        self.assertIn("a drain does not wait", self.events[0]["log_format"])

    def test_h2(self) -> None:
        """An HTTP/2 stream's frames are pending while its connection holds it."""
        transport = object()
        connection = types.SimpleNamespace(streams={1: None}, transport=transport)
        channel: Any = types.SimpleNamespace(streamID=1, _conn=connection)
        self.assertTrue(_twisted.h2_stream_pending(channel))
        self.assertIs(_twisted.h2_transport(channel), transport)
        del connection.streams[1]
        self.assertFalse(_twisted.h2_stream_pending(channel))
        self.assertEqual(self.events, [])


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


#: Each private the direct write path reads of Twisted, with the constant of
#: ``_twisted`` that names it.
DIRECT_PRIVATES = [
    *(("_TRANSPORT_NAMES", name) for name in _twisted._TRANSPORT_NAMES),
    *(("_REQUEST_NAMES", name) for name in _twisted._REQUEST_NAMES),
    ("_CLEANUP", _twisted._CLEANUP),
]


@pytest.mark.parametrize(("constant", "private"), DIRECT_PRIVATES)
@pytest_twisted.ensureDeferred
async def test_direct_private_missing(
    monkeypatch: pytest.MonkeyPatch, constant: str, private: str
) -> None:
    """
    Without a private the direct path reads (as if Twisted had renamed it),
    streams write through ``request.write``, one line says so however many
    streams open, and every event arrives, in order, at a client that stopped
    reading for a while.
    """
    events: list[LogEvent] = []
    log = Logger(observer=cast(ILogObserver, events.append))
    monkeypatch.setattr(_twisted, "_log", log)
    monkeypatch.setattr(_twisted, "_WARNED", set())
    monkeypatch.setattr(_twisted, "_DIRECT_CLASSES", {})
    # The check now looks for the private by a name Twisted does not have.
    names = getattr(_twisted, constant)
    moved = f"{private}_moved"
    if isinstance(names, tuple):
        moved_names: object = tuple(moved if n == private else n for n in names)
    else:
        moved_names = moved
    monkeypatch.setattr(_twisted, constant, moved_names)

    streams: list[EventStream] = []
    resource = EventStreamResource(
        streams.append,
        clock=_reactor(),
        heartbeat=0,
        max_queue_events=100_000,
        max_queue_bytes=512 * 1024 * 1024,
    )
    port = await TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1").listen(
        Site(resource)
    )
    try:
        readers = [
            await connect(port.getHost().port, http_request("/")) for _ in range(2)
        ]
        while len(streams) < 2:
            await deferLater(_reactor(), 0.01)
        assert [stream._transport for stream in streams] == [None, None]
        stalled = readers[0].transport
        assert stalled is not None
        stalled.pauseProducing()  # type: ignore[attr-defined]
        payload = "x" * 8000
        count = 300  # 2.4 MB a stream: Twisted's buffer fills and pauses it
        for number in range(count):
            for stream in streams:
                stream.send(Event(data=f"{number} {payload}"))
        assert streams[0].paused
        stalled.resumeProducing()  # type: ignore[attr-defined]
        for stream in streams:
            stream.close()
        for reader in readers:
            await reader.ended(timeout=60)
            received = [event.data.split(" ", 1) for event in reader.events]
            assert received == [[str(n), payload] for n in range(count)]
    finally:
        await port.stopListening()
    assert len(events) == 1
    assert "streams write through request.write" in events[0]["log_format"]
