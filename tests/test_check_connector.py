"""
Tests for L{twisted_sse._check._connector}: each request's connection of
its own, TCP or TLS offering HTTP/2 and HTTP/1.1 by ALPN, on a
L{MemoryReactorClock}, with TLS handshakes in memory.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.ssl import (
    Certificate,
    trustRootFromCertificates,
)
from twisted.internet.task import Clock
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransport,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._check._connector import CONNECT_TIMEOUT, Connector
from twisted_sse._check._exchange import Exchange
from twisted_sse._check._http import Recorder
from twisted_sse._url import URL

from ._certs import handshake, self_signed, tls_server
from ._check_fakes import Net
from ._names import Names, ResolvingReactor


class _Ends(Recorder):
    """Keeps how each exchange ended."""

    def __init__(self) -> None:
        self.ends: list[str | None] = []

    def end(self, error: str | None) -> None:
        self.ends.append(error)


_Names = Names


class GivenEndpointTests(SynchronousTestCase):
    """With endpoint_for, the tests' own connections."""

    def test_used_as_plain(self) -> None:
        """
        endpoint_for is asked for each URL, and speaks plain HTTP/1.1 even
        for https: the request is written at once, as given.
        """
        net = Net(Clock())
        connector = Connector(Clock(), endpoint_for=net.endpoint)
        url = URL.parse("https://example.com/publish")
        connector.request("POST", url, [("Authorization", "Bearer t")], _Ends(), b"{}")
        ((asked, _, transport),) = net.connections
        self.assertEqual(asked, url)
        self.assertEqual(
            transport.value(),
            b"POST /publish HTTP/1.1\r\nHost: example.com\r\n"
            b"Authorization: Bearer t\r\nContent-Length: 2\r\n\r\n{}",
        )

    def test_refused(self) -> None:
        """A URL that cannot be reached ends its exchange at once, saying why."""

        def endpoint_for(url: URL) -> Any:
            raise ValueError("no route to example.com")

        recorder = _Ends()
        connector = Connector(Clock(), endpoint_for=endpoint_for)
        exchange = connector.request(
            "GET", URL.parse("http://example.com/"), (), recorder
        )
        self.assertTrue(exchange.ended)
        self.assertEqual(recorder.ends, ["cannot connect: no route to example.com"])


class TCPTests(SynchronousTestCase):
    """Over http, TCP to the URL's host and port."""

    def connect(self, url: str) -> tuple[MemoryReactorClock, _Names]:
        names = _Names()
        reactor = ResolvingReactor(names)
        Connector(reactor).request("GET", URL.parse(url), (), _Ends())
        return reactor, names

    def test_host_and_port(self) -> None:
        """The URL's host and port (80 by default) are connected to, in 5 s."""
        for url, asked in [
            ("http://example.com/events", ("example.com", 80)),
            ("http://example.com:8080/events", ("example.com", 8080)),
            ("http://[::1]:8080/events", ("::1", 8080)),
        ]:
            reactor, names = self.connect(url)
            self.assertEqual(names.asked, [asked], url)
            ((_, port, _, timeout, _),) = reactor.tcpClients
            self.assertEqual((port, timeout), (asked[1], CONNECT_TIMEOUT))

    def test_request_written(self) -> None:
        """The connection made, the HTTP/1.1 request is written on it."""
        reactor, _ = self.connect("http://example.com/events")
        ((_, port, factory, _, _),) = reactor.tcpClients
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(
            transport.value(), b"GET /events HTTP/1.1\r\nHost: example.com\r\n\r\n"
        )


class TLSTests(SynchronousTestCase):
    """Over https, TLS that checks the server and offers h2 by ALPN."""

    def setUp(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="twisted-sse-check-"))
        self.addCleanup(shutil.rmtree, directory, True)
        key, cert = self_signed(directory)
        # A server that prefers h2.
        self.server = tls_server(key, cert, [b"h2", b"http/1.1"])
        self.trust = trustRootFromCertificates([Certificate.loadPEM(cert.read_bytes())])

    def handshake(
        self, url: str, **options: Any
    ) -> tuple[Exchange, _Ends, TLSMemoryBIOProtocol]:
        """
        Connect to ``url`` with a Connector of ``options``; the test's server
        answers, in memory.

        :returns: The exchange, its recorder and the server's TLS protocol.
        """
        reactor = ResolvingReactor()
        recorder = _Ends()
        exchange = Connector(reactor, **options).request(
            "GET", URL.parse(url), (), recorder
        )
        server, pump = handshake(reactor, self.server)

        def close() -> None:
            # The client's TLS buffers its writes on the global reactor:
            # closing cancels that.
            exchange.abort("the test ended")
            pump.flush()

        self.addCleanup(close)
        return exchange, recorder, server

    def test_alpn_offers_h2(self) -> None:
        """A trusted server that prefers h2 gets it by ALPN."""
        exchange, _, server = self.handshake(
            "https://localhost:8443/events", trust=self.trust
        )
        self.assertEqual(server.negotiatedProtocol, b"h2")
        self.assertFalse(exchange.ended)

    def test_http2_off(self) -> None:
        """With http2=False, only HTTP/1.1 is offered."""
        _, _, server = self.handshake(
            "https://localhost:8443/events", trust=self.trust, http2=False
        )
        self.assertEqual(server.negotiatedProtocol, b"http/1.1")

    def test_untrusted(self) -> None:
        """A certificate the trust root does not vouch for fails the handshake."""
        _, recorder, _ = self.handshake("https://localhost:8443/events")
        self.assertEqual(
            recorder.ends, ["the TLS handshake failed: certificate verify failed"]
        )

    def test_host_checked(self) -> None:
        """A trusted certificate for another host fails, naming the host."""
        for url, host in [
            ("https://example.com/events", "example.com"),
            ("https://[::1]:8443/events", "'::1'"),
        ]:
            _, recorder, _ = self.handshake(url, trust=self.trust)
            (end,) = recorder.ends
            assert end is not None
            self.assertIn("Mismatch", end)
            self.assertIn(host, end)
