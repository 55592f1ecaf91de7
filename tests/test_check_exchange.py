"""
Tests for L{twisted_sse._check._exchange}: one request on a connection of
its own, the L{Exchange} a caller holds and the L{Connection} that speaks
HTTP/1.1 (or HTTP/2 when ALPN chose it), on L{StringTransport}s.
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Error as SSLError
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import (
    IProtocolFactory,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides, implementer

from twisted_sse._check._exchange import Connection, Exchange, describe
from twisted_sse._check._http import Request
from twisted_sse._url import URL

from ._check_fakes import TellingRecorder

REQUEST = Request("GET", URL.parse("http://example.com/events"), ())
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


class _TLSTransport(StringTransport):
    """A TLS connection's transport, with the protocol ALPN chose."""

    negotiatedProtocol: bytes | None = None


class _TCPTransport(StringTransport):
    """A TCP connection's transport, which can be aborted."""

    aborted = False

    def __init__(self) -> None:
        super().__init__()
        alsoProvides(self, ITCPTransport)

    def abortConnection(self) -> None:
        self.aborted = True


@implementer(IStreamClientEndpoint)
class _Endpoint:
    """A connection attempt that the test ends."""

    def __init__(self) -> None:
        self.cancelled = False
        self.attempt: Deferred[Protocol] = Deferred(self._cancel)
        self.factory: IProtocolFactory | None = None

    def _cancel(self, attempt: Deferred[Protocol]) -> None:
        self.cancelled = True

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        self.factory = factory
        return self.attempt

    def accept(self, transport: StringTransport) -> Connection:
        """The attempt succeeds, on ``transport``."""
        assert self.factory is not None
        protocol = self.factory.buildProtocol(None)  # type: ignore[arg-type]
        assert isinstance(protocol, Connection)
        protocol.makeConnection(transport)
        self.attempt.callback(protocol)
        return protocol


def _lost(connection: Connection) -> None:
    connection.connectionLost(Failure(ConnectionDone()))


class ExchangeTests(SynchronousTestCase):
    """Exchange: its end, told once, and its abort at any stage."""

    def setUp(self) -> None:
        self.recorder = TellingRecorder()
        self.exchange = Exchange(self.recorder)

    def test_finish_once(self) -> None:
        """An exchange ends once: the recorder is told and done fires, once."""
        self.exchange.finish("first")
        self.exchange.finish(None)
        self.assertEqual(self.recorder.told, [("end", "first")])
        self.assertIsNone(self.successResultOf(self.exchange.done))
        self.assertTrue(self.exchange.ended)

    def test_abort_before_connecting(self) -> None:
        """An abort before any connection ends the exchange with its reason."""
        self.exchange.abort("the watch ended")
        self.exchange.abort("again")
        self.assertEqual(self.recorder.told, [("end", "the watch ended")])

    def test_abort_while_connecting(self) -> None:
        """An abort while connecting cancels the attempt; the reason is the end."""
        endpoint = _Endpoint()
        self.exchange.connect(endpoint, REQUEST, tls=False)
        self.exchange.abort("no answer in 5.0 s")
        self.assertTrue(endpoint.cancelled)
        self.assertEqual(self.recorder.told, [("end", "no answer in 5.0 s")])

    def test_connect_failed(self) -> None:
        """A failed connection attempt ends the exchange, described."""
        endpoint = _Endpoint()
        self.exchange.connect(endpoint, REQUEST, tls=False)
        endpoint.attempt.errback(ConnectionRefusedError())
        self.assertEqual(
            self.recorder.told, [("end", "Connection was refused by other side")]
        )

    def test_abort_when_connected(self) -> None:
        """
        An abort of an open connection drops it; the exchange ends with the
        reason once the connection is gone, whatever it was reading.
        """
        endpoint = _Endpoint()
        self.exchange.connect(endpoint, REQUEST, tls=False)
        transport = StringTransport()
        connection = endpoint.accept(transport)
        connection.dataReceived(CHUNKED + b"5\r\nhel")
        self.exchange.abort("the watch of 2 s ended")
        self.assertTrue(transport.disconnecting)
        self.assertFalse(self.exchange.ended)
        _lost(connection)
        self.assertEqual(self.recorder.told[-1], ("end", "the watch of 2 s ended"))

    def test_connection_after_abort(self) -> None:
        """A connection made after an abort is dropped at once, with no request."""
        self.exchange.abort("gone")
        transport = StringTransport()
        Connection(self.exchange, REQUEST, tls=False).makeConnection(transport)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")


class ConnectionTests(SynchronousTestCase):
    """Connection: the request written, the response reported, the end."""

    def connect(
        self,
        request: Request = REQUEST,
        tls: bool = False,
        transport: StringTransport | None = None,
    ) -> tuple[Connection, StringTransport]:
        self.recorder = TellingRecorder()
        self.exchange = Exchange(self.recorder)
        connection = Connection(self.exchange, request, tls)
        transport = StringTransport() if transport is None else transport
        connection.makeConnection(transport)
        return connection, transport

    def test_request_at_once(self) -> None:
        """Over TCP, the request is written as soon as the connection is made."""
        _, transport = self.connect()
        self.assertEqual(transport.value(), REQUEST.http1())

    def test_tls_waits_for_the_handshake(self) -> None:
        """
        Over TLS, nothing is written before the handshake; then HTTP/1.1,
        when ALPN chose it or nothing.
        """
        for negotiated in [b"http/1.1", None]:
            transport = _TLSTransport()
            transport.negotiatedProtocol = negotiated
            connection, _ = self.connect(tls=True, transport=transport)
            self.assertEqual(transport.value(), b"")
            connection.handshakeCompleted()
            self.assertEqual(transport.value(), REQUEST.http1())

    def test_alpn_h2(self) -> None:
        """When ALPN chose h2, the request goes out over HTTP/2."""
        transport = _TLSTransport()
        transport.negotiatedProtocol = b"h2"
        connection, _ = self.connect(tls=True, transport=transport)
        connection.handshakeCompleted()
        self.assertTrue(
            transport.value().startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        )

    def test_response_reported(self) -> None:
        """
        The head and each piece of body are reported as they come; a
        complete response ends the exchange and closes the connection.
        """
        connection, transport = self.connect()
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe")
        self.assertEqual(self.recorder.told, [("head", 200), ("body", b"he")])
        self.assertFalse(transport.disconnecting)
        connection.dataReceived(b"llo")
        self.assertEqual(self.recorder.told[2:], [("body", b"llo"), ("end", None)])
        self.assertTrue(transport.disconnecting)

    def test_head_extra(self) -> None:
        """
        A HEAD's response stays open after its head: bytes that come after
        are counted as extra, and its close ends it well.
        """
        request = Request("HEAD", REQUEST.url, ())
        connection, transport = self.connect(request)
        connection.dataReceived(CHUNKED)
        connection.dataReceived(b"5\r\nhello\r\n")
        connection.dataReceived(b"0\r\n\r\n")
        self.assertEqual(
            self.recorder.told, [("head", 200), ("extra", 10), ("extra", 5)]
        )
        self.assertFalse(transport.disconnecting)
        _lost(connection)
        self.assertEqual(self.recorder.told[-1], ("end", None))

    def test_recorder_stops(self) -> None:
        """A recorder's reason to stop drops the connection, and is the end."""
        connection, transport = self.connect()
        self.recorder.stop_at_head = "not an event stream"
        connection.dataReceived(CHUNKED + b"5\r\nhello\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.recorder.told, [("head", 200)])
        _lost(connection)
        self.assertEqual(self.recorder.told[-1], ("end", "not an event stream"))

    def test_malformed(self) -> None:
        """A response that breaks HTTP drops the connection; the error is the end."""
        connection, transport = self.connect()
        connection.dataReceived(b"ICY 200 OK\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        _lost(connection)
        (end,) = self.recorder.told
        self.assertEqual(end, ("end", "not an HTTP/1 status line: b'ICY 200 OK'"))

    def test_cut_short(self) -> None:
        """A connection lost inside the response ends the exchange, saying where."""
        connection, _ = self.connect()
        connection.dataReceived(CHUNKED + b"5\r\nhel")
        _lost(connection)
        self.assertEqual(
            self.recorder.told[-1],
            ("end", "the connection closed inside the chunked body (no last chunk)"),
        )

    def test_data_after_the_end(self) -> None:
        """Bytes after the exchange ended are not reported."""
        connection, _ = self.connect()
        connection.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        told = list(self.recorder.told)
        connection.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(self.recorder.told, told)

    def test_lost_before_the_handshake(self) -> None:
        """A TLS connection lost in its handshake ends with the TLS reason."""
        connection, _ = self.connect(tls=True, transport=_TLSTransport())
        error = SSLError([("SSL routines", "", "certificate verify failed")])
        connection.connectionLost(Failure(error))
        self.assertEqual(
            self.recorder.told,
            [("end", "the TLS handshake failed: certificate verify failed")],
        )

    def test_drop_aborts_tcp(self) -> None:
        """A dropped TCP connection is aborted, not closed after its writes."""
        connection, transport = self.connect(transport=_TCPTransport())
        connection.fail("dropped: a line too long")
        assert isinstance(transport, _TCPTransport)
        self.assertTrue(transport.aborted)
        self.assertFalse(transport.disconnecting)


class DescribeTests(SynchronousTestCase):
    """describe: a failure in one line."""

    def test_message(self) -> None:
        """The error's message, without its full stop; or the error's name."""
        self.assertEqual(
            describe(Failure(ConnectionRefusedError())),
            "Connection was refused by other side",
        )
        self.assertEqual(describe(Failure(ValueError())), "ValueError")

    def test_tls(self) -> None:
        """A TLS error lists OpenSSL's reasons."""
        error = SSLError(
            [("SSL routines", "", "certificate verify failed"), ("x", "", "expired")]
        )
        self.assertEqual(
            describe(Failure(error)),
            "the TLS handshake failed: certificate verify failed; expired",
        )
        self.assertEqual(
            describe(Failure(SSLError())), "the TLS handshake failed: no reason"
        )
