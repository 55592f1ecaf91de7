"""
Tests for L{twisted_sse._check._fetch}: a request of C{twisted-sse check}
that follows redirects as a browser does, on fake connections driven by a
L{Clock}.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._check import Connector
from twisted_sse._check._fetch import Fetch
from twisted_sse._client import MAX_REDIRECTS
from twisted_sse._url import URL

from ._check_fakes import URL as EVENTS
from ._check_fakes import Net, TellingRecorder

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def redirect(status: int, location: str) -> bytes:
    """A redirect response with a body."""
    return b"HTTP/1.1 %d Moved\r\nLocation: %s\r\nContent-Length: 5\r\n\r\nmoved" % (
        status,
        location.encode(),
    )


class FetchTests(SynchronousTestCase):
    """Fetch: redirects followed, or not, and what the recorder is told."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.net = Net(self.clock)
        self.connector = Connector(self.clock, endpoint_for=self.net.endpoint)
        self.recorder = TellingRecorder()

    def fetch(
        self,
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
        own: Sequence[tuple[str, str]] = (),
        follow: bool = True,
    ) -> Fetch:
        return Fetch(
            self.connector,
            method,
            URL.parse(EVENTS),
            headers,
            self.recorder,
            own=own,
            follow=follow,
        )

    def answer(self, data: bytes) -> None:
        """The latest connection answers ``data``; a turn of the clock."""
        _, protocol, _ = self.net.connections[-1]
        protocol.dataReceived(data)
        self.clock.advance(0)

    def requested(self) -> list[bytes]:
        """The request line and headers of each connection, in order."""
        return [
            transport.value().partition(b"\r\n\r\n")[0]
            for _, _, transport in self.net.connections
        ]

    def test_no_redirect(self) -> None:
        """A response that is not a redirect is the recorder's; then done fires."""
        fetch = self.fetch()
        self.assertNoResult(fetch.done)
        self.answer(OK)
        self.assertEqual(
            self.recorder.told, [("head", 200), ("body", b"ok"), ("end", None)]
        )
        self.successResultOf(fetch.done)
        self.assertEqual((fetch.redirects, fetch.url.text), ([], EVENTS))

    def test_redirect_extra_not_passed(self) -> None:
        """A HEAD's redirect with a body in its head's read: no extra is told."""
        self.fetch("HEAD")
        self.answer(redirect(302, "/a"))
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertNotIn(("extra", 5), self.recorder.told)
        self.assertEqual(self.recorder.told[0], ("head", 200))

    def test_head_extra_passed(self) -> None:
        """Bytes after a HEAD's final response are told as extra."""
        self.fetch("HEAD")
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
        self.assertEqual(self.recorder.told[:2], [("head", 200), ("extra", 3)])

    def test_follows(self) -> None:
        """
        301, 302, 303, 307 and 308 are followed to their Location, relative
        to the URL; the recorder is told only of the final response.
        """
        fetch = self.fetch()
        hops = [(301, "/a"), (302, "b"), (303, "/c?x=1"), (307, "/d"), (308, "/e")]
        for status, location in hops:
            self.answer(redirect(status, location))
        self.assertEqual(self.recorder.told, [])
        self.answer(OK)
        self.assertEqual(self.recorder.told[0], ("head", 200))
        self.assertEqual(fetch.redirects, hops)
        self.assertEqual(fetch.url.text, "http://example.com/e")
        targets = [request.split(b" ")[1] for request in self.requested()]
        self.assertEqual(targets, [b"/events", b"/a", b"/b", b"/c?x=1", b"/d", b"/e"])
        self.successResultOf(fetch.done)

    def test_not_redirects(self) -> None:
        """A 3xx without Location, a 300 or a 304 is the response itself."""
        for response in [
            b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n",
            redirect(300, "/a"),
            b"HTTP/1.1 304 Not Modified\r\nLocation: /a\r\n\r\n",
        ]:
            self.recorder = TellingRecorder()
            fetch = self.fetch()
            self.answer(response)
            self.assertEqual(fetch.redirects, [])
            self.assertEqual(self.recorder.told[-1], ("end", None), response)

    def test_not_followed(self) -> None:
        """With follow=False, a redirect is the response itself."""
        fetch = self.fetch(follow=False)
        self.answer(redirect(302, "/a"))
        self.assertEqual(self.recorder.told[0], ("head", 302))
        self.assertEqual(self.recorder.told[-1], ("end", None))
        self.assertEqual((fetch.redirects, len(self.net.connections)), ([], 1))

    def test_headers_across_origins(self) -> None:
        """
        The caller's headers go on a redirect to the same origin and are
        dropped on a change of origin; the checker's own go everywhere.
        """
        self.fetch(headers=[("Authorization", "Bearer x")], own=[("Accept", "a/b")])
        self.answer(redirect(302, "/same"))
        self.answer(redirect(302, "https://other.example/"))
        self.answer(redirect(302, "http://example.com/back"))
        first, same, other, back = self.requested()
        for request in (first, same):
            self.assertIn(b"\r\nAccept: a/b\r\nAuthorization: Bearer x", request)
        for request in (other, back):
            self.assertIn(b"\r\nAccept: a/b", request)
            self.assertNotIn(b"Authorization", request)

    def test_too_many(self) -> None:
        """A redirect loop ends after MAX_REDIRECTS redirects followed, saying so."""
        fetch = self.fetch()
        for _ in range(MAX_REDIRECTS + 5):
            _, _, transport = self.net.connections[-1]
            if not transport.closed:
                self.answer(redirect(302, "/events"))
        self.assertEqual(len(self.net.connections), MAX_REDIRECTS + 1)
        self.assertEqual(
            self.recorder.told, [("end", f"more than {MAX_REDIRECTS} redirects")]
        )
        self.successResultOf(fetch.done)

    def test_bad_location(self) -> None:
        """A Location that is not an http(s) URL ends the request, saying so."""
        fetch = self.fetch()
        self.answer(redirect(302, "ftp://example.com/"))
        self.assertEqual(
            self.recorder.told,
            [("end", "a bad redirect: not an http or https URL: 'ftp://example.com/'")],
        )
        self.assertEqual(len(self.net.connections), 1)
        self.successResultOf(fetch.done)

    def test_abort(self) -> None:
        """An abort ends the exchange under way, with its reason."""
        fetch = self.fetch()
        fetch.abort("the watch of 2 s ended")
        self.clock.advance(0)
        self.assertEqual(self.recorder.told, [("end", "the watch of 2 s ended")])
        self.successResultOf(fetch.done)

    def test_abort_while_redirected(self) -> None:
        """
        An abort while a redirect is being followed ends the request with
        its reason; nothing more is asked for.
        """
        fetch = self.fetch()
        _, protocol, _ = self.net.connections[-1]
        protocol.dataReceived(redirect(302, "/a"))
        fetch.abort("the watch of 2 s ended")
        self.clock.advance(0)
        self.assertEqual(self.recorder.told, [("end", "the watch of 2 s ended")])
        self.assertEqual(len(self.net.connections), 1)
        self.successResultOf(fetch.done)

    def test_head_extra(self) -> None:
        """Bytes after a complete HEAD response reach the recorder as extra."""
        self.fetch("HEAD")
        _, protocol, _ = self.net.connections[-1]
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
        protocol.dataReceived(b"data: x\n\n")
        self.assertEqual(self.recorder.told, [("head", 200), ("extra", 9)])
