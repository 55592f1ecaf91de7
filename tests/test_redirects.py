"""
Tests for L{twisted_sse._redirects}: the request a source makes for a stream
(its headers) and the redirects it follows, through an L{EventSource} on a
fake agent and by calling L{fetch} directly.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._client import EventSourceError, ReadyState
from twisted_sse._redirects import (
    MAX_REDIRECTS,
    Fetched,
    RedirectRefused,
    fetch,
    request_headers,
)
from twisted_sse._url import URL as ParsedURL

from ._client_fakes import SSE, URL, FakeAgent, Harness, error_of, message


def fetching(
    agent: FakeAgent,
    url: str = URL,
    extra: Sequence[tuple[str, str]] = (),
    last_event_id: str = "",
) -> Deferred[Fetched]:
    """Start L{fetch} of C{url} through C{agent}."""
    return Deferred.fromCoroutine(
        fetch(agent, ParsedURL.parse(url), extra, last_event_id)
    )


class RequestTests(SynchronousTestCase):
    """What the source sends."""

    def test_method_and_uri(self) -> None:
        """The request is a GET of the URL."""
        request = Harness(URL + "?a=1").start()
        self.assertEqual(
            (request.method, request.uri), (b"GET", URL.encode() + b"?a=1")
        )

    def test_headers(self) -> None:
        """Accept and Cache-Control are sent, and no Last-Event-ID when it is empty."""
        request = Harness().start()
        self.assertEqual(request.header("Accept"), SSE)
        self.assertEqual(request.header("Cache-Control"), "no-cache")
        self.assertIsNone(request.header("Last-Event-ID"))

    def test_seeded_last_event_id(self) -> None:
        """A caller-given last event id is sent on the first request, in UTF-8."""
        request = Harness(last_event_id="é7").start()
        self.assertEqual(
            request.headers.getRawHeaders(b"Last-Event-ID"), ["é7".encode()]
        )

    def test_extra_headers(self) -> None:
        """Extra headers are sent, as a mapping or as pairs."""
        request = Harness(headers={"Authorization": "Bearer t"}).start()
        self.assertEqual(request.header("Authorization"), "Bearer t")
        request = Harness(headers=[("X-A", "1"), ("X-A", "2")]).start()
        self.assertEqual(request.headers.getRawHeaders(b"X-A"), [b"1", b"2"])

    def test_protocol_headers_win(self) -> None:
        """Extra headers cannot replace Accept or Cache-Control."""
        request = Harness(headers={"Accept": "text/html"}).start()
        self.assertEqual(request.header("Accept"), SSE)


class RequestHeadersTests(SynchronousTestCase):
    """L{request_headers}: the caller's headers, then the protocol's."""

    def test_protocol_headers_replace(self) -> None:
        """Accept and Cache-Control replace the caller's values of the same name."""
        headers = request_headers([("accept", "text/html"), ("X-A", "1")], "7")
        self.assertEqual(headers.getRawHeaders(b"Accept"), [b"text/event-stream"])
        self.assertEqual(headers.getRawHeaders(b"Cache-Control"), [b"no-cache"])
        self.assertEqual(headers.getRawHeaders(b"Last-Event-ID"), [b"7"])
        self.assertEqual(headers.getRawHeaders(b"X-A"), [b"1"])

    def test_no_last_event_id_when_empty(self) -> None:
        """With no last event id, no Last-Event-ID is sent, not even the caller's."""
        headers = request_headers([("Last-Event-ID", "forged")], "")
        self.assertFalse(headers.hasHeader(b"Last-Event-ID"))

    def test_values_utf8(self) -> None:
        """Header values and the last event id go out in UTF-8."""
        headers = request_headers([("X-Name", "é")], "ü")
        self.assertEqual(headers.getRawHeaders(b"X-Name"), ["é".encode()])
        self.assertEqual(headers.getRawHeaders(b"Last-Event-ID"), ["ü".encode()])


class RedirectTests(SynchronousTestCase):
    """Redirects are followed; the final URL is the origin; credentials stay home."""

    def test_codes_followed(self) -> None:
        """301, 302, 303, 307 and 308 are followed with a GET."""
        for code in [301, 302, 303, 307, 308]:
            harness = Harness()
            first = harness.start().redirect("http://example.com/next", code)
            self.assertTrue(first.stopped)
            self.assertEqual(len(harness.agent.requests), 2)
            self.assertEqual(harness.last.method, b"GET")
            self.assertEqual(harness.last.uri, b"http://example.com/next")

    def test_final_origin(self) -> None:
        """Events carry the origin of the URL the stream was finally read from."""
        harness = Harness()
        harness.start().redirect("http://other.example:8080/s")
        harness.open(b"data: x\n\n")
        self.assertEqual(
            harness.events, [message("x", origin="http://other.example:8080")]
        )
        self.assertEqual(harness.source.origin, "http://other.example:8080")

    def test_default_port_not_in_origin(self) -> None:
        """The origin names no port when it is the scheme's default."""
        harness = Harness("https://Example.COM:443/s")
        harness.start()
        harness.open(b"data: x\n\n")
        self.assertEqual(harness.events[0].origin, "https://example.com")

    def test_relative_location(self) -> None:
        """A relative Location is resolved against the URL that sent it."""
        harness = Harness("http://example.com/a/b")
        harness.start().redirect("c?d=1")
        self.assertEqual(harness.last.uri, b"http://example.com/a/c?d=1")
        harness.last.redirect("//other.example/x")
        self.assertEqual(harness.last.uri, b"http://other.example/x")

    def test_headers_dropped_cross_origin(self) -> None:
        """A redirect to another origin drops extra headers, not protocol ones."""
        harness = Harness(
            headers={"Authorization": "Bearer t", "X-Api-Key": "k"}, last_event_id="5"
        )
        harness.start().redirect("http://example.com:8080/s")
        request = harness.last
        self.assertIsNone(request.header("Authorization"))
        self.assertIsNone(request.header("X-Api-Key"))
        self.assertEqual(request.header("Last-Event-ID"), "5")
        self.assertEqual(request.header("Accept"), SSE)

    def test_headers_dropped_on_scheme_change(self) -> None:
        """https to http on the same host is another origin."""
        harness = Harness("https://example.com/s", headers={"Authorization": "t"})
        harness.start().redirect("http://example.com/s")
        self.assertIsNone(harness.last.header("Authorization"))

    def test_headers_kept_same_origin(self) -> None:
        """Extra headers follow a redirect within the same origin."""
        harness = Harness(headers={"Authorization": "Bearer t"})
        harness.start().redirect("/elsewhere")
        harness.last.redirect("http://EXAMPLE.com:80/again")
        self.assertEqual(harness.last.header("Authorization"), "Bearer t")

    def test_headers_stay_dropped(self) -> None:
        """Once dropped, extra headers are not sent even when a later hop comes back."""
        harness = Harness(headers={"Authorization": "Bearer t"})
        harness.start().redirect("http://other.example/")
        harness.last.redirect(URL)
        self.assertIsNone(harness.last.header("Authorization"))

    def test_headers_restored_on_reconnect(self) -> None:
        """A reconnect starts again from the original URL, with the extra headers."""
        harness = Harness(headers={"Authorization": "Bearer t"})
        harness.start().redirect("http://other.example/")
        harness.open(b"data: x\n\n").end()
        harness.clock.advance(3)
        self.assertEqual(harness.last.uri, URL.encode())
        self.assertEqual(harness.last.header("Authorization"), "Bearer t")

    def test_redirect_limit(self) -> None:
        """Twenty redirects are followed; the twenty-first fails for good."""
        harness = Harness()
        harness.start()
        for i in range(MAX_REDIRECTS):
            harness.last.redirect(f"/r{i}")
        self.assertEqual(len(harness.agent.requests), MAX_REDIRECTS + 1)
        harness.open(b"data: x\n\n")
        self.assertEqual(harness.events, [message("x")])

        harness = Harness()
        harness.start()
        for i in range(MAX_REDIRECTS + 1):
            harness.last.redirect(f"/r{i}")
        self.assertEqual(len(harness.agent.requests), MAX_REDIRECTS + 1)
        self.assertEqual(harness.source.ready_state, ReadyState.CLOSED)
        self.assertIsInstance(harness.errors[0].value, EventSourceError)
        self.assertEqual(harness.requests_after(3600), MAX_REDIRECTS + 1)

    def test_redirect_to_other_scheme(self) -> None:
        """A redirect to a non-http(s) URL fails for good."""
        harness = Harness()
        harness.start().redirect("ftp://example.com/")
        self.assertEqual(harness.source.ready_state, ReadyState.CLOSED)
        self.assertEqual(len(harness.agent.requests), 1)

    def test_redirect_without_location(self) -> None:
        """A 3xx without Location is an ordinary bad status."""
        harness = Harness()
        harness.start().respond(302, None)
        self.assertEqual(harness.source.ready_state, ReadyState.CLOSED)
        self.assertEqual(error_of(harness.errors[0]).status, 302)

    def test_refusal_names_status_and_url(self) -> None:
        """A refused redirect fails the source with the redirect's status and URL."""
        harness = Harness()
        harness.start().redirect("/next", 307)
        harness.last.redirect("ftp://example.com/", 308)
        error = error_of(harness.errors[0])
        self.assertEqual((error.status, error.url), (308, "http://example.com/next"))
        self.assertIn("bad redirect", str(error))
        self.assertFalse(error.stopped)


class FetchTests(SynchronousTestCase):
    """L{fetch} on its own."""

    def test_final_response_and_url(self) -> None:
        """The result is the last response and the URL that gave it."""
        agent = FakeAgent()
        fetched = fetching(agent)
        agent.requests[0].redirect("/next?a=1")
        response = agent.requests[1].respond()
        result = self.successResultOf(fetched)
        self.assertIs(result.response, response)
        self.assertEqual(result.url.text, "http://example.com/next?a=1")

    def test_no_redirect(self) -> None:
        """A response that is not a redirect is the result, its URL the one asked."""
        agent = FakeAgent()
        fetched = fetching(agent)
        response = agent.requests[0].respond(404, "text/html")
        result = self.successResultOf(fetched)
        self.assertEqual((result.response, result.url.text), (response, URL))

    def test_too_many_redirects(self) -> None:
        """The redirect after the last one allowed is refused, and discarded."""
        agent = FakeAgent()
        fetched = fetching(agent)
        for i in range(MAX_REDIRECTS):
            agent.requests[-1].redirect(f"/r{i}")
        last = agent.requests[-1].redirect("/one-more", 301)
        self.assertTrue(last.stopped)
        refused = self.failureResultOf(fetched, RedirectRefused).value
        assert isinstance(refused, RedirectRefused)
        self.assertEqual(str(refused), f"more than {MAX_REDIRECTS} redirects")
        self.assertEqual(
            (refused.status, refused.url),
            (301, f"http://example.com/r{MAX_REDIRECTS - 1}"),
        )
        self.assertEqual(len(agent.requests), MAX_REDIRECTS + 1)

    def test_bad_location(self) -> None:
        """A Location that is not an http(s) URL is refused, naming why."""
        agent = FakeAgent()
        fetched = fetching(agent)
        agent.requests[0].redirect("ftp://example.com/")
        refused = self.failureResultOf(fetched, RedirectRefused).value
        assert isinstance(refused, RedirectRefused)
        self.assertTrue(str(refused).startswith("bad redirect: "), str(refused))
        self.assertEqual((refused.status, refused.url), (302, URL))

    def test_extra_headers_follow_same_origin(self) -> None:
        """The caller's headers go to every hop until one leaves the origin."""
        agent = FakeAgent()
        fetching(agent, extra=[("Authorization", "t")], last_event_id="9")
        agent.requests[0].redirect("/same")
        agent.requests[1].redirect("https://example.com/other")
        sent = [request.header("Authorization") for request in agent.requests]
        self.assertEqual(sent, ["t", "t", None])
        self.assertEqual(agent.requests[2].header("Last-Event-ID"), "9")
        self.assertEqual(agent.requests[2].header("Accept"), SSE)

    def test_cancel(self) -> None:
        """Cancelling the fetch cancels the request in flight."""
        agent = FakeAgent()
        fetched = fetching(agent)
        agent.requests[0].redirect("/next")
        fetched.cancel()
        self.failureResultOf(fetched, CancelledError)
        self.assertEqual(
            [request.cancelled for request in agent.requests], [False, True]
        )
