"""
Tests for L{twisted_sse._site}: the request bodies C{twistd sse}'s site
keeps, and the publishes it judges on their head.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource, Resource

from twisted_sse._site import LINGER, CappedBody, CappedSite
from twisted_sse.testing import SSETestClient

from ._helpers import TOKEN, HubFixture, answer, data


class _BodySizes(Resource):
    """In front of ``child``: keeps the size of each request body it passes."""

    def __init__(self, child: IResource) -> None:
        super().__init__()
        self.child = child
        self.sizes: list[int] = []

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        self.sizes.append(len(request.content.getvalue()))
        request.prepath.pop()
        request.postpath.insert(0, path)
        return self.child


class BodyCapTests(SynchronousTestCase):
    """
    twistd sse keeps a request's body only up to one byte more than the
    largest publish: enough for the hub's 413, and nothing spooled to disk
    for whoever sends gigabytes.
    """

    def test_capped_body(self) -> None:
        """A capped body keeps its first bytes and drops the rest."""
        body = CappedBody(5)
        self.assertEqual(body.write(b"abc"), 3)
        self.assertEqual(body.write(memoryview(b"defgh")), 5)
        self.assertEqual(body.write(b"ijk"), 3)
        self.assertEqual(body.getvalue(), b"abcde")
        body.seek(0)
        self.assertEqual(body.read(), b"abcde")

    def test_site_hands_out_capped_bodies(self) -> None:
        """The site gives every request a body capped one byte past the limit."""
        site = CappedSite(Resource(), max_body=10)
        for length in (None, 0, 5, 10**9):
            content = site.getContentFile(length)
            content.write(b"x" * 100)
            self.assertEqual(content.getvalue(), b"x" * 11)

    def test_over_limit_through_the_site(self) -> None:
        """A large body gets the hub's 413; one at the limit is published."""
        hub = HubFixture(self, max_event_bytes=64)
        # What the hub is given of each body.
        bodies = _BodySizes(hub.client.resource)
        client = SSETestClient(bodies, hub.clock)
        client.site = CappedSite(bodies, max_body=64, reactor=hub.clock)
        reader = hub.subscribe()
        self.assertEqual(reader.code, 200)
        at_limit = json.dumps({"data": "x" * 52}).encode()
        self.assertEqual(len(at_limit), 64)
        headers = {
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json",
        }
        self.assertEqual(
            client.request("POST", "/channels/news", headers, at_limit).code, 200
        )
        huge = client.request("POST", "/channels/news", headers, b"x" * 1_000_000)
        self.assertEqual(huge.code, 413)
        self.assertIn("larger than 64 bytes", answer(huge)["error"])
        self.assertEqual(bodies.sizes, [64, 65])
        self.assertEqual(data(reader), ["x" * 52])
        client.disconnect_all()


class HeadRefusalTests(SynchronousTestCase):
    """
    twistd sse judges a request with a body on its head: a publisher
    without the token, or declaring a body over the limit, is answered at
    once, before 100 Continue, and cut off once what it had sent is
    dropped (up to the body limit, for LINGER seconds at most).
    """

    def connect(self, **hub_options: Any) -> tuple[HubFixture, StringTransport, Any]:
        hub_options.setdefault("max_event_bytes", 64)
        hub = HubFixture(self, **hub_options)
        self.reactor = MemoryReactorClock()
        site = CappedSite(
            hub.client.resource, max_body=64, hub=hub.hub, reactor=self.reactor
        )
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        return hub, transport, protocol

    def head(self, *lines: str) -> bytes:
        request = ("POST /channels/news HTTP/1.1", "Host: x", *lines)
        return "\r\n".join(request).encode("ascii") + b"\r\n\r\n"

    def assert_answered(
        self, transport: StringTransport, code: int, reason: str
    ) -> None:
        response = transport.value()
        status, _, rest = response.partition(b"\r\n")
        self.assertEqual(status.split(b" ")[1], str(code).encode())
        head, _, body = rest.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Type: application/json", head)
        self.assertIn(b"Connection: close", head)
        self.assertIn(reason, json.loads(body)["error"])
        self.assertNotIn(b"100 Continue", response)

    def test_no_token_chunked(self) -> None:
        """An endless chunked body without the token: 401 on its head, then cut."""
        hub, transport, protocol = self.connect()
        reader = hub.subscribe()
        protocol.dataReceived(
            self.head("Transfer-Encoding: chunked", "Expect: 100-continue")
        )
        self.assert_answered(transport, 401, "Bearer token is required")
        self.assertIn(
            b'WWW-Authenticate: Bearer realm="twisted_sse"', transport.value()
        )
        answered = len(transport.value())
        self.assertFalse(transport.disconnecting)
        # What the client sends is dropped, and past the body limit (64
        # bytes here) the connection is closed.
        protocol.dataReceived(b"20\r\n" + b"x" * 32 + b"\r\n")
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"40\r\n" + b"x" * 64 + b"\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(transport.value()), answered)
        self.assertEqual(reader.events, [])
        # The lingering timer went with it (the channel's idle timer stays).
        lingering = [
            call
            for call in self.reactor.getDelayedCalls()
            if getattr(getattr(call, "func", None), "__name__", "") == "_close"
        ]
        self.assertEqual(lingering, [])

    def test_wrong_token_with_body(self) -> None:
        """A wrong token: 401, and the body that came with it is dropped."""
        hub, transport, protocol = self.connect()
        reader = hub.subscribe()
        protocol.dataReceived(
            self.head(
                "Authorization: Bearer wrong",
                "Content-Type: application/json",
                "Content-Length: 13",
            )
            + b'{"data": "x"}'
        )
        self.assert_answered(transport, 401, "Bearer token is required")
        # All of it was read: the close is clean, at once.
        self.assertTrue(transport.disconnecting)
        self.assertEqual(reader.events, [])

    def test_publishing_off(self) -> None:
        """Without a publish token configured: 403 on the head."""
        _, transport, protocol = self.connect(publish_token=None)
        protocol.dataReceived(self.head("Content-Length: 5"))
        self.assert_answered(transport, 403, "publishing over HTTP is disabled")

    def test_declared_too_long(self) -> None:
        """A Content-Length over the limit: 413 on the head; closed after LINGER."""
        _, transport, protocol = self.connect()
        protocol.dataReceived(
            self.head(f"Authorization: Bearer {TOKEN}", "Content-Length: 65")
        )
        self.assert_answered(transport, 413, "larger than 64 bytes")
        self.reactor.advance(LINGER - 0.1)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_good_publish_goes_through(self) -> None:
        """With the token and a body within the limit, the publish is served."""
        hub, transport, protocol = self.connect()
        reader = hub.subscribe()
        body = b'{"data": "hello"}'
        protocol.dataReceived(
            self.head(
                f"Authorization: Bearer {TOKEN}",
                "Content-Type: application/json",
                "Expect: 100-continue",
                f"Content-Length: {len(body)}",
            )
        )
        self.assertIn(b"100 Continue", transport.value())
        protocol.dataReceived(body)
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        self.assertFalse(transport.disconnecting)
        self.assertEqual(data(reader), ["hello"])

    def test_requests_without_body_untouched(self) -> None:
        """A GET (no body) is not judged on its head."""
        _, transport, protocol = self.connect(publish_token=None)
        protocol.dataReceived(b"GET /channels/nope%20x HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"400 Bad Request", transport.value())
        self.assertFalse(transport.disconnecting)
