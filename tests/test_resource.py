"""
Tests for L{twisted_sse._resource}: L{twisted_sse.EventStreamResource}'s
response head (CORS included), its handler, and HEAD, OPTIONS and other
methods, through L{twisted_sse.testing.SSETestClient}.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests._transports import TransportCase, over_both_transports
from twisted_sse import (
    FAILURE_RETRY,
    MAX_RETRY,
    Event,
    EventStream,
    EventStreamResource,
)
from twisted_sse.testing import SSETestResponse

from ._helpers import CounterCase, Keeper, data, silent


@over_both_transports
class HeaderTests(CounterCase):
    """The response head, as the client reads it off the wire."""

    def test_stream_headers(self) -> None:
        """A GET answers 200 with the event-stream headers, chunked, unsized."""
        response = self.client.get("/")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.version, b"HTTP/1.1")
        self.assertEqual(
            response.header("content-type"), "text/event-stream; charset=utf-8"
        )
        self.assertEqual(response.header("Cache-Control"), "no-cache")
        self.assertEqual(response.header("X-Accel-Buffering"), "no")
        self.assertEqual(response.header("Connection"), "keep-alive")
        self.assertEqual(response.header("Transfer-Encoding"), "chunked")
        self.assertIsNone(response.header("Content-Length"))
        self.assertIsNone(response.header("Access-Control-Allow-Origin"))
        self.assertFalse(response.finished)
        self.assertTrue(response.connected)

    def test_allow_origin(self) -> None:
        """A configured origin is sent as Access-Control-Allow-Origin."""
        resource = EventStreamResource(
            silent, clock=self.clock, allow_origin="https://app.example"
        )
        client = self.client_for(resource, clock=self.clock)
        response = client.get("/", {"Origin": "https://app.example"})
        self.assertEqual(
            response.header("Access-Control-Allow-Origin"), "https://app.example"
        )
        response.disconnect()
        client.assert_clean(testcase=self)

    def test_request_headers_reach_the_server(self) -> None:
        """The request carries EventSource's headers and Last-Event-ID."""
        keeper = Keeper()
        client = self.client_for(
            EventStreamResource(keeper, clock=self.clock), clock=self.clock
        )
        response = client.get("/", {"X-Token": "t"}, last_event_id="41")
        request = keeper.streams[0].request
        self.assertEqual(request.getHeader(b"accept"), b"text/event-stream")
        self.assertEqual(request.getHeader(b"last-event-id"), b"41")
        self.assertEqual(request.getHeader(b"x-token"), b"t")
        self.assertEqual(request.getHeader(b"host"), b"localhost")
        self.assertEqual(response.last_event_id, "41")
        response.disconnect()

    def test_http10_is_not_chunked(self) -> None:
        """Over HTTP/1.0 the body is sent raw and ends with the connection."""
        keeper = Keeper()
        client = self.client_for(
            EventStreamResource(keeper, clock=self.clock, retry=5), clock=self.clock
        )
        response = client.request("GET", "/", http_version="HTTP/1.0")
        keeper.streams[0].send(Event(data="x"))
        self.assertIsNone(response.header("Transfer-Encoding"))
        self.assertFalse(response.finished)
        keeper.streams[0].close()
        client.flush()
        self.assertTrue(response.finished)
        self.assertFalse(response.connected)
        self.assertEqual(response.wire.split(b"\r\n\r\n", 1)[1], response.raw)
        self.assertEqual(data(response), ["x"])
        client.assert_clean(testcase=self)


@over_both_transports
class HandlerTests(TransportCase):
    """What a stream's handler may return, and what happens when it fails."""

    def serve(self, handler: object) -> SSETestResponse:
        self.clock = Clock()
        resource = EventStreamResource(handler, clock=self.clock)  # type: ignore[arg-type]
        self.client = self.client_for(resource, clock=self.clock)
        return self.client.get("/")

    def setUp(self) -> None:
        self.logged: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if "log_failure" in event:
                self.logged.append(event)

        globalLogPublisher.addObserver(cast(ILogObserver, observe))
        self.addCleanup(globalLogPublisher.removeObserver, cast(ILogObserver, observe))

    def assert_ended_and_logged(self, response: SSETestResponse) -> None:
        """Logged once with the path; the stream ended with the back-off retry."""
        self.client.flush()
        self.assertTrue(response.finished)
        self.assertEqual(response.retry, FAILURE_RETRY)
        (event,) = self.logged
        self.assertEqual(event["path"], "/")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.client.assert_clean(testcase=self)

    def test_raises(self) -> None:
        """A handler that raises: logged, and the stream ends cleanly."""

        def handler(stream: EventStream) -> None:
            raise ZeroDivisionError()

        self.assert_ended_and_logged(self.serve(handler))

    def test_deferred_fails(self) -> None:
        """A handler whose Deferred fails later: logged, the stream ends."""
        later: Deferred[None] = Deferred()
        response = self.serve(lambda stream: later)
        self.assertFalse(response.finished)
        later.errback(ZeroDivisionError())
        self.assert_ended_and_logged(response)

    def test_coroutine(self) -> None:
        """A coroutine function runs; its failure is logged, the stream ends."""
        later: Deferred[None] = Deferred()

        async def handler(stream: EventStream) -> None:
            stream.send(Event(data="before"))
            await later
            raise ZeroDivisionError()

        response = self.serve(handler)
        self.assertEqual(data(response), ["before"])
        self.assertFalse(response.finished)
        later.callback(None)
        self.assert_ended_and_logged(response)

    def test_other_results_ignored(self) -> None:
        """Whatever else a handler returns is ignored."""
        response = self.serve(lambda stream: 42)
        self.assertFalse(response.finished)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_failure_after_client_left(self) -> None:
        """A handler failing once its client left is still logged, with the path."""
        later: Deferred[None] = Deferred()
        response = self.serve(lambda stream: later)
        response.disconnect()
        later.errback(ZeroDivisionError())
        (event,) = self.logged
        self.assertEqual(event["path"], "/")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.client.assert_clean(testcase=self)

    def test_path_not_query(self) -> None:
        """The log names the path, never the query (it may hold a token)."""

        def handler(stream: EventStream) -> None:
            raise ZeroDivisionError()

        self.clock = Clock()
        resource = EventStreamResource(handler, clock=self.clock)
        self.client = self.client_for(resource, clock=self.clock)
        self.client.get("/feed?token=s3cret")
        (event,) = self.logged
        self.assertEqual(event["path"], "/feed")
        self.assertNotIn("s3cret", repr(event))
        self.flushLoggedErrors(ZeroDivisionError)


class FailureRetryTests(SynchronousTestCase):
    """The back-off a failed handler's client is told to wait."""

    def test_default(self) -> None:
        """Without a retry of its own, a resource backs off FAILURE_RETRY ms."""
        resource = EventStreamResource(silent, clock=Clock())
        self.assertEqual(resource.failure_retry, FAILURE_RETRY)
        self.assertGreaterEqual(FAILURE_RETRY, 1000)

    def test_longer_than_retry(self) -> None:
        """The back-off is always longer than the resource's own retry."""
        for retry in (0, 1000, 5000, FAILURE_RETRY, 3 * FAILURE_RETRY):
            resource = EventStreamResource(silent, clock=Clock(), retry=retry)
            self.assertGreater(resource.failure_retry, retry)
            self.assertGreaterEqual(resource.failure_retry, FAILURE_RETRY)

    def test_bounded(self) -> None:
        """Twice a very long retry is capped at MAX_RETRY."""
        resource = EventStreamResource(silent, clock=Clock(), retry=MAX_RETRY - 1)
        self.assertEqual(resource.failure_retry, MAX_RETRY)


@over_both_transports
class MethodTests(CounterCase):
    """HEAD, OPTIONS and other methods."""

    def test_head(self) -> None:
        """HEAD gets the stream's headers, no body, and opens no stream."""
        response = self.client.request("HEAD", "/")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.header("Content-Type"), "text/event-stream; charset=utf-8"
        )
        self.assertTrue(response.finished)
        self.assertEqual(response.raw, b"")
        self.assertTrue(response.wire.endswith(b"\r\n\r\n"))
        self.assertEqual(self.resource.streams, set())
        self.client.assert_clean(testcase=self)

    def test_post(self) -> None:
        """POST gets 405 with Allow."""
        response = self.client.request("POST", "/", body=b"x=1")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.header("Allow"), "GET, HEAD, OPTIONS")
        self.assertTrue(response.finished)
        self.client.assert_clean(testcase=self)

    def test_options_preflight(self) -> None:
        """A CORS preflight allows the Last-Event-ID header."""
        resource = EventStreamResource(silent, clock=self.clock, allow_origin="*")
        client = self.client_for(resource, clock=self.clock)
        response = client.request(
            "OPTIONS",
            "/",
            {
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "last-event-id",
            },
        )
        self.assertEqual(response.code, 204)
        self.assertEqual(response.header("Access-Control-Allow-Origin"), "*")
        allowed = response.header("Access-Control-Allow-Headers") or ""
        self.assertIn("last-event-id", allowed.lower().replace(" ", "").split(","))
        self.assertTrue(response.finished)
        client.assert_clean(testcase=self)
