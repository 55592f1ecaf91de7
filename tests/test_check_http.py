"""
Tests for L{twisted_sse._check._http}: the request as it goes out over
HTTP/1.1, the response head's headers, and what a L{Recorder} does unless
told otherwise.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._check._http import Head, Recorder, Request
from twisted_sse._url import URL


class RequestTests(SynchronousTestCase):
    """Request: the authority, and the request as HTTP/1.1 bytes."""

    def test_authority(self) -> None:
        """The authority names the port only when it is not the scheme's."""
        for url, authority in [
            ("http://example.com/events", "example.com"),
            ("https://example.com:443/events", "example.com"),
            ("http://example.com:8080/events", "example.com:8080"),
            ("https://[::1]:8443/", "[::1]:8443"),
        ]:
            request = Request("GET", URL.parse(url), ())
            self.assertEqual(request.authority, authority, url)

    def test_http1(self) -> None:
        """The request line has the target; Host comes first, then the headers."""
        request = Request(
            "GET",
            URL.parse("http://example.com:8080/events?topic=a"),
            (("Accept", "text/event-stream"), ("X-B", "2"), ("X-A", "1")),
        )
        self.assertEqual(
            request.http1(),
            b"GET /events?topic=a HTTP/1.1\r\nHost: example.com:8080\r\n"
            b"Accept: text/event-stream\r\nX-B: 2\r\nX-A: 1\r\n\r\n",
        )

    def test_body_has_a_length(self) -> None:
        """A body is sent after the head with its Content-Length."""
        body = '{"data": "é"}'.encode()
        request = Request("POST", URL.parse("http://h/publish"), (), body)
        head, _, sent = request.http1().partition(b"\r\n\r\n")
        self.assertIn(b"\r\nContent-Length: %d" % len(body), head)
        self.assertEqual(sent, body)

    def test_empty_post_has_a_length(self) -> None:
        """A POST without a body says Content-Length: 0; a GET says nothing."""
        post = Request("POST", URL.parse("http://h/"), ()).http1()
        self.assertTrue(post.endswith(b"\r\nContent-Length: 0\r\n\r\n"), post)
        self.assertNotIn(
            b"Content-Length", Request("GET", URL.parse("http://h/"), ()).http1()
        )

    def test_utf8_header_values(self) -> None:
        """Header values go out as UTF-8."""
        request = Request("GET", URL.parse("http://h/"), (("X-Name", "Zoë"),))
        self.assertIn("X-Name: Zoë\r\n".encode(), request.http1())


class HeadTests(SynchronousTestCase):
    """Head.get: a header's values."""

    def test_get(self) -> None:
        """A header is found in any case, each value in order; none is []."""
        head = Head(
            200,
            headers=(
                ("cache-control", "no-cache"),
                ("vary", "origin"),
                ("cache-control", "no-transform"),
            ),
        )
        self.assertEqual(head.get("Cache-Control"), ["no-cache", "no-transform"])
        self.assertEqual(head.get("VARY"), ["origin"])
        self.assertEqual(head.get("content-type"), [])


class RecorderTests(SynchronousTestCase):
    """Recorder: the base a recorder overrides."""

    def test_reads_everything(self) -> None:
        """The base recorder never asks to stop: head and body return None."""
        recorder = Recorder()
        self.assertIsNone(recorder.head(Head(200)))
        self.assertIsNone(recorder.body(b"data: x\n\n"))
