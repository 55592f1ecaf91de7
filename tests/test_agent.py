"""
Tests for L{twisted_sse._agent}: the default agent caps the response head
(an L{EventSource} on it over a L{MemoryReactorClock}, the test playing the
server), the counter and its endpoint wrappers on their own, and what the
client does with an agent's answers (L{discard}, L{limit_exceeded}).
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI, ResponseFailed, ResponseNeverReceived
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from zope.interface import implementer

from twisted_sse import MessageEvent
from twisted_sse._agent import (
    MAX_RESPONSE_HEADER_BYTES,
    MAX_RESPONSE_HEADERS,
    HeadLimit,
    HeadLimitEndpoint,
    HeadLimitEndpoints,
    HeadLimitFactory,
    discard,
    limit_exceeded,
)
from twisted_sse._client import EventSource, ReadyState
from twisted_sse._parser import LimitExceeded

from ._client_fakes import FakeResponse, limit_of
from ._names import ResolvingReactor


class DefaultAgent:
    """
    An L{EventSource} on its default agent over a L{MemoryReactorClock}: the
    test plays the server's side of each connection.
    """

    def __init__(self, url: str = "http://127.0.0.1:8080/events") -> None:
        self.reactor = ResolvingReactor()
        self.source = EventSource(url, reactor=self.reactor, random=lambda: 0.0)
        self.errors: list[Failure] = []
        self.events: list[MessageEvent] = []
        self.source.on_error = self.errors.append
        self.source.on_message = self.events.append

    def connect(self) -> tuple[IProtocol, StringTransport]:
        """Accept the latest connection; return its protocol and transport."""
        self.reactor.advance(0)
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def lose(self, protocol: IProtocol) -> None:
        """Deliver the end of a connection that the client aborted."""
        protocol.connectionLost(Failure(ConnectionAborted()))


OK_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


class HeadLimitTests(SynchronousTestCase):
    """The default agent caps the response head as Twisted's server does a request's."""

    def test_endless_headers(self) -> None:
        """Header lines without end: dropped after the 500th, a failed attempt."""
        client = DefaultAgent()
        protocol, transport = client.connect()
        self.assertIn(b"GET /events HTTP/1.1", transport.value())
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")
        for n in range(MAX_RESPONSE_HEADERS):
            protocol.dataReceived(b"X: %d\r\n" % n)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"X: more\r\n")
        self.assertTrue(transport.disconnecting)
        client.lose(protocol)
        [failure] = client.errors
        self.assertEqual(str(limit_of(failure)), "more than 500 response header lines")
        self.assertEqual(client.source.ready_state, ReadyState.CONNECTING)
        self.assertEqual(client.source.reconnect_delay, 6.0)
        client.reactor.advance(6)
        self.assertEqual(len(client.reactor.tcpClients), 2)

    def test_long_headers(self) -> None:
        """A head longer than 16 KiB is dropped as soon as it is, fed in any pieces."""
        for piece in [1, 100, 4096]:
            client = DefaultAgent()
            protocol, transport = client.connect()
            head = b"HTTP/1.1 200 OK\r\n" + (b"X: " + b"y" * 995 + b"\r\n") * 20
            head = head[:MAX_RESPONSE_HEADER_BYTES]
            for i in range(0, len(head), piece):
                protocol.dataReceived(head[i : i + piece])
            self.assertFalse(transport.disconnecting, piece)
            protocol.dataReceived(b"y")
            self.assertTrue(transport.disconnecting, piece)
            client.lose(protocol)
            self.assertEqual(
                client.errors[0].getErrorMessage(),
                "response headers longer than 16384 bytes",
            )

    def test_one_long_header_line(self) -> None:
        """A single header line of 20 KiB trips our cap, with our message."""
        client = DefaultAgent()
        protocol, transport = client.connect()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 20000)
        self.assertTrue(transport.disconnecting)
        client.lose(protocol)
        self.assertIsInstance(client.errors[0].value, LimitExceeded)

    def test_interim_heads_count(self) -> None:
        """1xx heads without end count toward the cap."""
        client = DefaultAgent()
        protocol, transport = client.connect()
        for _ in range(1000):
            protocol.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        client.lose(protocol)
        self.assertIsInstance(client.errors[0].value, LimitExceeded)

    def test_head_at_cap_then_body(self) -> None:
        """A head of 16 KiB opens the stream; the body after it is not counted."""
        client = DefaultAgent()
        protocol, transport = client.connect()
        filler = MAX_RESPONSE_HEADER_BYTES - len(OK_HEAD) - len(b"X: \r\n")
        head = OK_HEAD[:-2] + b"X: " + b"y" * filler + b"\r\n\r\n"
        self.assertEqual(len(head), MAX_RESPONSE_HEADER_BYTES)
        event = b"data: " + b"z" * 1000 + b"\n\n"
        chunk = b"%x\r\n%s\r\n" % (len(event), event)
        protocol.dataReceived(head + chunk)
        for _ in range(100):
            protocol.dataReceived(chunk)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(client.source.ready_state, ReadyState.OPEN)
        self.assertEqual(len(client.events), 101)
        self.assertEqual(client.errors, [])

    def test_interim_then_response(self) -> None:
        """A 100 Continue before the response is skipped, as Twisted does."""
        client = DefaultAgent()
        protocol, _ = client.connect()
        protocol.dataReceived(b"HTTP/1.1 100 Continue\n\n" + OK_HEAD)
        protocol.dataReceived(b"9\r\ndata: x\n\n\r\n")
        self.assertEqual([event.data for event in client.events], ["x"])

    def test_lf_line_ends(self) -> None:
        """A head with bare LF line ends is read as Twisted reads it."""
        client = DefaultAgent()
        protocol, _ = client.connect()
        protocol.dataReceived(OK_HEAD.replace(b"\r\n", b"\n"))
        protocol.dataReceived(b"9\r\ndata: x\n\n\r\n")
        self.assertEqual([event.data for event in client.events], ["x"])

    def test_https(self) -> None:
        """An https URL connects with TLS through the same cap."""
        client = DefaultAgent("https://127.0.0.1:8443/events")
        client.reactor.advance(0)
        [(host, port, factory, _, _)] = client.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 8443))
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.assertIsNotNone(protocol)


class Recorder(Protocol):
    """A protocol that records what reaches it."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


def counted(max_bytes: int = 100, max_lines: int = 3) -> tuple[HeadLimit, Recorder]:
    """A L{HeadLimit} in front of a L{Recorder}, connected to a transport."""
    recorder = Recorder()
    limit = HeadLimit(recorder, max_bytes, max_lines)
    limit.makeConnection(StringTransport())
    return limit, recorder


class HeadLimitUnitTests(SynchronousTestCase):
    """The counter between a connection and the HTTP client protocol."""

    def test_passes_through(self) -> None:
        """Bytes under the caps reach the protocol untouched, with the transport."""
        limit, recorder = counted()
        self.assertIs(recorder.transport, limit.transport)
        limit.dataReceived(b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\nbody")
        limit.dataReceived(b"x" * 1000)
        self.assertEqual(
            recorder.received, [b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\nbody", b"x" * 1000]
        )
        self.assertIsNone(limit.exceeded)

    def test_lines_cap(self) -> None:
        """One header line more than the cap drops the connection."""
        limit, recorder = counted(max_lines=2)
        limit.dataReceived(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n")
        self.assertIsNone(limit.exceeded)
        limit.dataReceived(b"C: 3\r\n")
        assert limit.exceeded is not None
        self.assertEqual(str(limit.exceeded), "more than 2 response header lines")
        assert isinstance(limit.transport, StringTransport)
        self.assertTrue(limit.transport.disconnecting)
        self.assertEqual(len(recorder.received), 1)

    def test_bytes_cap(self) -> None:
        """A head one byte over the cap drops the connection; nothing more passes."""
        limit, recorder = counted(max_bytes=20)
        limit.dataReceived(b"HTTP/1.1 200 OK\r\nA: ")
        self.assertIsNone(limit.exceeded)
        limit.dataReceived(b"x")
        self.assertEqual(str(limit.exceeded), "response headers longer than 20 bytes")
        limit.dataReceived(b"\r\n\r\n")
        self.assertEqual(recorder.received, [b"HTTP/1.1 200 OK\r\nA: "])

    def test_lost_with_the_cap(self) -> None:
        """Once a cap is passed, the protocol is told the connection ended for it."""
        limit, recorder = counted(max_lines=0)
        limit.dataReceived(b"HTTP/1.1 200 OK\r\nA: 1\r\n")
        limit.connectionLost(Failure(ConnectionDone()))
        assert recorder.lost is not None
        self.assertIs(recorder.lost.value, limit.exceeded)

    def test_lost_as_is(self) -> None:
        """Without a cap passed, the protocol gets the real reason."""
        limit, recorder = counted()
        reason = Failure(ConnectionDone())
        limit.connectionLost(reason)
        self.assertIs(recorder.lost, reason)

    def test_interim_then_final(self) -> None:
        """A 1xx head is followed by another; the body after the last is not counted."""
        limit, recorder = counted(max_bytes=60)
        limit.dataReceived(b"HTTP/1.1 103 Early\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")
        limit.dataReceived(b"y" * 1000)
        self.assertIsNone(limit.exceeded)
        self.assertEqual(recorder.received[-1], b"y" * 1000)

    def test_bad_status_ends_head(self) -> None:
        """A status line without a number ends the head at its empty line."""
        limit, recorder = counted(max_bytes=40)
        limit.dataReceived(b"HTTP/1.1 OK\r\n\r\n")
        limit.dataReceived(b"z" * 100)
        self.assertIsNone(limit.exceeded)
        self.assertEqual(recorder.received[-1], b"z" * 100)


@implementer(IStreamClientEndpoint)
class Endpoint:
    """An endpoint that connects at once, to a L{StringTransport}."""

    def __init__(self) -> None:
        self.factory: IProtocolFactory | None = None

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self.factory = protocolFactory
        protocol = protocolFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 80))
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        return succeed(protocol)


class HeadLimitEndpointTests(SynchronousTestCase):
    """The endpoints and factory that put the counter on every connection."""

    def test_factory(self) -> None:
        """The factory builds the wrapped factory's protocol behind default caps."""
        factory = HeadLimitFactory(Factory.forProtocol(Recorder))
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 80))
        assert isinstance(protocol, HeadLimit)
        self.assertIsInstance(protocol.wrapped, Recorder)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * MAX_RESPONSE_HEADERS
        )
        self.assertIsNone(protocol.exceeded)
        protocol.dataReceived(b"X: y\r\n")
        assert protocol.exceeded is not None
        self.assertEqual(protocol.exceeded.limit, MAX_RESPONSE_HEADERS)

    def test_factory_refusal(self) -> None:
        """A wrapped factory that builds no protocol gets no counter either."""

        class Refusing(Factory):
            def buildProtocol(self, addr: IAddress | None) -> None:
                return None

        factory = HeadLimitFactory(Refusing())
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "h", 1)))

    def test_endpoint_unwraps(self) -> None:
        """The endpoint's caller gets its own protocol, not the counter."""
        endpoint = Endpoint()
        connected = HeadLimitEndpoint(endpoint).connect(Factory.forProtocol(Recorder))
        self.assertIsInstance(self.successResultOf(connected), Recorder)
        self.assertIsInstance(endpoint.factory, HeadLimitFactory)

    def test_unsupported_scheme(self) -> None:
        """A scheme other than http and https is refused."""
        endpoints = HeadLimitEndpoints(MemoryReactorClock())
        with self.assertRaises(SchemeNotSupported):
            endpoints.endpointForURI(URI.fromBytes(b"ftp://example.com/"))


class AnswerTests(SynchronousTestCase):
    """What the client does with an agent's answers."""

    def test_discard(self) -> None:
        """A discarded response's connection is dropped at once."""
        response = FakeResponse(302, Headers())
        discard(response)
        self.assertTrue(response.stopped)

    def test_limit_exceeded(self) -> None:
        """The cap is found as the failure itself or inside the HTTP client's."""
        exceeded = LimitExceeded("too long", 5)
        for failure in [
            Failure(exceeded),
            Failure(ResponseFailed([Failure(ConnectionAborted()), Failure(exceeded)])),
            Failure(ResponseNeverReceived([Failure(exceeded)])),
        ]:
            self.assertIs(limit_exceeded(failure), exceeded)

    def test_no_limit_exceeded(self) -> None:
        """Any other failure has no cap behind it."""
        for failure in [
            Failure(ConnectionAborted()),
            Failure(ResponseFailed([Failure(ConnectionAborted())])),
        ]:
            self.assertIsNone(limit_exceeded(failure))
