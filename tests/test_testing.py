"""
Tests for L{twisted_sse.testing}: the in-memory client, proven against
L{twisted_sse.EventStreamResource} served by a real C{twisted.web} Site.
"""

from __future__ import annotations

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from twisted_sse import (
    Event,
    EventStream,
    EventStreamResource,
    MessageEvent,
    StreamRegistry,
    counter,
)
from twisted_sse._broker import MemoryBroker, Published
from twisted_sse.testing import (
    SSETestClient,
    SSETestResponse,
    assert_no_leaks,
    parse_events,
)


def _silent(stream: EventStream) -> None:
    """A handler that sends nothing."""


class _Keeper:
    """A handler that keeps its streams for the test to drive."""

    def __init__(self) -> None:
        self.streams: list[EventStream] = []

    def __call__(self, stream: EventStream) -> None:
        self.streams.append(stream)


class _RawResource(Resource):
    """A resource that writes bytes straight to the connection."""

    isLeaf = True

    def __init__(self, wire: bytes) -> None:
        super().__init__()
        self.wire = wire

    def render_GET(self, request: IRequest) -> int:
        request.channel.transport.write(self.wire)  # type: ignore[attr-defined]
        return NOT_DONE_YET


@implementer(IPushProducer)
class _Producer:
    """A push producer that records what its consumer asks of it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class _ProducerResource(Resource):
    """A resource that registers a push producer on each request."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.producer = _Producer()

    def render_GET(self, request: IRequest) -> int:
        request.registerProducer(self.producer, True)  # type: ignore[attr-defined]
        request.write(b"data: open\n\n")
        return NOT_DONE_YET


def _data(response: SSETestResponse) -> list[str]:
    return [event.data for event in response.events]


class _Fixture(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = EventStreamResource(
            counter(1), retry=1000, clock=self.clock, heartbeat=15
        )
        self.client = SSETestClient(self.resource, clock=self.clock)


class HeaderTests(_Fixture):
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
            _silent, clock=self.clock, allow_origin="https://app.example"
        )
        client = SSETestClient(resource, clock=self.clock)
        response = client.get("/", {"Origin": "https://app.example"})
        self.assertEqual(
            response.header("Access-Control-Allow-Origin"), "https://app.example"
        )
        response.disconnect()
        client.assert_clean(testcase=self)

    def test_request_headers_reach_the_server(self) -> None:
        """The request carries EventSource's headers and Last-Event-ID."""
        keeper = _Keeper()
        client = SSETestClient(
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
        keeper = _Keeper()
        client = SSETestClient(
            EventStreamResource(keeper, clock=self.clock, retry=5), clock=self.clock
        )
        response = client.request("GET", "/", http_version="HTTP/1.0")
        keeper.streams[0].send(Event(data="x"))
        self.assertIsNone(response.header("Transfer-Encoding"))
        self.assertFalse(response.finished)
        keeper.streams[0].close()
        self.assertTrue(response.finished)
        self.assertFalse(response.connected)
        self.assertEqual(response.wire.split(b"\r\n\r\n", 1)[1], response.raw)
        self.assertEqual(_data(response), ["x"])
        client.assert_clean(testcase=self)


class StreamTests(_Fixture):
    """Events, heartbeats and the end of a stream."""

    def test_first_frame_at_once(self) -> None:
        """The retry frame arrives before any time passes."""
        response = self.client.get("/")
        self.assertEqual(response.raw, b"retry: 1000\n\n")
        self.assertEqual(response.retry, 1000)
        self.assertEqual(response.events, [])
        response.disconnect()

    def test_counter_events(self) -> None:
        """The counter sends 1, 2, 3, one event per second."""
        response = self.client.get("/")
        for expected in (["1"], ["1", "2"], ["1", "2", "3"]):
            self.client.advance(1)
            self.assertEqual(_data(response), expected)
        self.assertEqual(
            response.events[0],
            MessageEvent(type="message", data="1", origin="http://localhost"),
        )
        self.assertEqual(
            response.raw, b"retry: 1000\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n"
        )
        response.disconnect()

    def test_advance_runs_each_due_timer(self) -> None:
        """advance(3) fires a 1 s timer three times; clock.advance(3) once."""
        stepped = self.client.get("/")
        self.client.advance(3)
        self.assertEqual(_data(stepped), ["1", "2", "3"])
        jumped = self.client.get("/")
        self.clock.advance(3)
        self.assertEqual(_data(jumped), ["1"])
        self.client.disconnect_all()

    def test_events_arrive_when_the_clock_moves_directly(self) -> None:
        """Writes reach the response without any call to the client."""
        response = self.client.get("/")
        self.clock.advance(1)
        self.assertEqual(_data(response), ["1"])
        response.disconnect()

    def test_next_event_waits(self) -> None:
        """next_event fires when the event arrives."""
        response = self.client.get("/")
        waiting = response.next_event()
        self.assertNoResult(waiting)
        self.client.advance(1)
        self.assertEqual(self.successResultOf(waiting).data, "1")
        response.disconnect()

    def test_next_event_takes_queued_events_in_order(self) -> None:
        """next_event returns fired Deferreds for events already received."""
        response = self.client.get("/")
        self.client.advance(2)
        first, second = response.next_event(), response.next_event()
        self.assertEqual(self.successResultOf(first).data, "1")
        self.assertEqual(self.successResultOf(second).data, "2")
        self.assertNoResult(response.next_event())
        response.disconnect()

    def test_next_event_cancel(self) -> None:
        """A cancelled next_event takes no event."""
        response = self.client.get("/")
        cancelled = response.next_event()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.client.advance(1)
        self.assertEqual(self.successResultOf(response.next_event()).data, "1")
        response.disconnect()

    def test_heartbeat_after_silence(self) -> None:
        """A silent stream gets a comment after 15 s, not before."""
        resource = EventStreamResource(
            _silent, retry=1000, clock=self.clock, heartbeat=15
        )
        client = SSETestClient(resource, clock=self.clock)
        response = client.get("/")
        client.advance(14.9)
        self.assertEqual(response.comments, [])
        client.advance(0.1)
        self.assertEqual(response.comments, [""])
        self.assertEqual(response.raw, b"retry: 1000\n\n:\n\n")
        self.assertEqual(response.events, [])
        response.disconnect()
        client.assert_clean(testcase=self)

    def test_heartbeat_repeats_while_silent(self) -> None:
        """A silent stream never goes 15 s without a comment."""
        client = SSETestClient(
            EventStreamResource(_silent, clock=self.clock, heartbeat=15), self.clock
        )
        response = client.get("/")
        for _ in range(8):
            before = len(response.comments)
            client.advance(15)
            self.assertGreater(len(response.comments), before)
        response.disconnect()
        client.assert_clean(testcase=self)

    def test_busy_stream_gets_no_heartbeat(self) -> None:
        """A stream that sends every second gets no heartbeat."""
        response = self.client.get("/")
        self.client.advance(45)
        self.assertEqual(response.comments, [])
        self.assertEqual(len(response.events), 45)
        response.disconnect()

    def test_disconnect_releases_stream_and_timers(self) -> None:
        """A client that goes away leaves no stream, timer or heartbeat."""
        response = self.client.get("/")
        self.client.advance(1)
        self.assertEqual(len(self.resource.streams), 1)
        self.assertTrue(self.resource.heartbeat.running)
        response.disconnect()
        self.assertFalse(response.connected)
        self.assertEqual(self.resource.streams, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.resource.heartbeat.running)
        self.assertEqual(self.successResultOf(response.next_event()).data, "1")
        self.failureResultOf(response.next_event(), ConnectionDone)
        self.client.assert_clean(testcase=self)

    def test_disconnect_fails_notify_finish(self) -> None:
        """The server's notifyFinish Deferred fails with the given reason."""
        keeper = _Keeper()
        client = SSETestClient(
            EventStreamResource(keeper, clock=self.clock), clock=self.clock
        )
        response = client.get("/")
        finished = keeper.streams[0].request.notifyFinish()
        waiting = response.next_event()
        response.disconnect(ConnectionLost("gone"))
        self.failureResultOf(finished, ConnectionLost)
        self.assertNoResult(waiting)
        self.failureResultOf(response.next_event(), ConnectionLost)
        self.assertTrue(keeper.streams[0].closed)

    def test_server_close_sends_terminating_chunk(self) -> None:
        """close() ends the chunked body cleanly; the client then hangs up."""
        keeper = _Keeper()
        resource = EventStreamResource(keeper, clock=self.clock, retry=1000)
        client = SSETestClient(resource, clock=self.clock)
        response = client.get("/")
        waiting = response.next_event()
        keeper.streams[0].send(Event(data="last"))
        keeper.streams[0].close()
        self.assertEqual(self.successResultOf(waiting).data, "last")
        self.assertTrue(response.finished)
        self.assertTrue(response.wire.endswith(b"\r\n0\r\n\r\n"))
        self.failureResultOf(response.next_event(), ResponseDone)
        self.assertEqual(resource.streams, set())
        client.flush()
        self.assertFalse(response.connected)
        client.assert_clean(testcase=self)

    def test_server_abort_cuts_the_body(self) -> None:
        """abort() closes the connection without the terminating chunk."""
        keeper = _Keeper()
        client = SSETestClient(
            EventStreamResource(keeper, clock=self.clock), clock=self.clock
        )
        response = client.get("/")
        keeper.streams[0].abort()
        self.assertFalse(response.finished)
        self.assertFalse(response.connected)
        self.assertFalse(response.wire.endswith(b"0\r\n\r\n"))
        self.failureResultOf(response.next_event(), ConnectionAborted)
        client.assert_clean(testcase=self)

    def test_pause_reading_holds_frames(self) -> None:
        """A client that stops reading gets nothing until it reads again."""
        response = self.client.get("/")
        response.pause_reading()
        self.client.advance(3)
        self.assertEqual(response.events, [])
        response.resume_reading()
        self.assertEqual(_data(response), ["1", "2", "3"])
        self.client.advance(1)
        self.assertEqual(_data(response), ["1", "2", "3", "4"])
        response.disconnect()
        self.client.assert_clean(testcase=self)

    def test_pause_reading_pauses_the_producer(self) -> None:
        """pause_reading reaches the request's producer through the channel."""
        resource = _ProducerResource()
        client = SSETestClient(resource, clock=self.clock)
        response = client.get("/")
        response.pause_reading()
        response.resume_reading()
        self.assertEqual(resource.producer.calls, ["pause", "resume"])
        self.assertEqual(_data(response), ["open"])
        response.disconnect()

    def test_hundred_clients_vanish(self) -> None:
        """100 clients cut off abruptly leave no timer or subscription."""
        responses = [self.client.get("/") for _ in range(100)]
        self.client.advance(2)
        self.assertEqual(len(self.resource.streams), 100)
        self.assertEqual({len(r.events) for r in responses}, {2})
        for response in responses:
            response.disconnect(ConnectionLost("network gone"))
        self.assertEqual(self.resource.streams, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.resource.heartbeat.running)
        self.client.assert_clean(testcase=self)


class HandlerTests(SynchronousTestCase):
    """What a stream's handler may return, and what happens when it fails."""

    def serve(self, handler: object) -> SSETestResponse:
        self.clock = Clock()
        resource = EventStreamResource(handler, clock=self.clock)  # type: ignore[arg-type]
        self.client = SSETestClient(resource, clock=self.clock)
        return self.client.get("/")

    def assert_ended_and_logged(self, response: SSETestResponse) -> None:
        self.assertTrue(response.finished)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

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
        self.assertEqual(_data(response), ["before"])
        self.assertFalse(response.finished)
        later.callback(None)
        self.assert_ended_and_logged(response)

    def test_other_results_ignored(self) -> None:
        """Whatever else a handler returns is ignored."""
        response = self.serve(lambda stream: 42)
        self.assertFalse(response.finished)
        self.assertEqual(self.flushLoggedErrors(), [])


class MethodTests(_Fixture):
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
        resource = EventStreamResource(_silent, clock=self.clock, allow_origin="*")
        client = SSETestClient(resource, clock=self.clock)
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


class TreeTests(SynchronousTestCase):
    """The resource served inside a larger tree."""

    def test_klein_route(self) -> None:
        """A Klein route returning the resource streams."""
        clock = Clock()
        resource = EventStreamResource(counter(1), clock=clock, retry=1000)
        app = Klein()

        @app.route("/events")
        def events(request: IRequest) -> EventStreamResource:
            return resource

        client = SSETestClient.for_klein(app, clock)
        response = client.get("/events")
        client.advance(2)
        self.assertEqual(response.code, 200)
        self.assertEqual(_data(response), ["1", "2"])
        self.assertEqual(client.get("/nothing").code, 404)
        response.disconnect()
        client.assert_clean(resource, testcase=self)

    def test_put_child(self) -> None:
        """A resource mounted with putChild streams."""
        clock = Clock()
        resource = EventStreamResource(counter(1), clock=clock)
        root = Resource()
        root.putChild(b"events", resource)
        client = SSETestClient(root, clock)
        response = client.get("/events")
        client.advance(1)
        self.assertEqual(
            response.header("Content-Type"), "text/event-stream; charset=utf-8"
        )
        self.assertEqual(_data(response), ["1"])
        response.disconnect()
        client.assert_clean(resource, testcase=self)


class LeakCheckTests(_Fixture):
    """The leak check fails when something outlived the test."""

    def test_open_stream(self) -> None:
        """A stream left open fails the check, naming all it keeps alive."""
        response = self.client.get("/")
        error = self.assertRaises(
            self.failureException, self.client.assert_clean, testcase=self
        )
        message = str(error)
        self.assertIn("1 stream(s) still open", message)
        self.assertIn("heartbeat timer still running", message)
        self.assertIn("pending delayed call", message)
        self.assertIn("connection still open", message)
        response.disconnect()
        self.client.assert_clean(testcase=self)

    def test_open_stream_without_client(self) -> None:
        """assert_no_leaks checks a resource alone, with AssertionError."""
        response = self.client.get("/")
        self.assertRaises(AssertionError, assert_no_leaks, resources=[self.resource])
        response.disconnect()
        assert_no_leaks(resources=[self.resource], clock=self.clock)

    def test_pending_call(self) -> None:
        """A timer left on the clock fails the check."""
        self.clock.callLater(5, lambda: None)
        self.assertRaises(
            self.failureException, assert_no_leaks, self, clock=self.clock
        )

    def test_registry(self) -> None:
        """A stream still counted by a StreamRegistry fails the check."""
        registry = StreamRegistry(self.clock)
        resource = EventStreamResource(_silent, clock=self.clock, registry=registry)
        client = SSETestClient(resource, clock=self.clock)
        response = client.get("/")
        error = self.assertRaises(
            self.failureException, assert_no_leaks, self, resources=[registry]
        )
        self.assertIn("StreamRegistry", str(error))
        response.disconnect()
        client.assert_clean(registry, testcase=self)

    def test_broker_subscription(self) -> None:
        """A subscriber left on a broker fails the check; a released one not."""
        broker = MemoryBroker()

        def subscribe(stream: EventStream) -> None:
            def deliver(published: Published) -> None:
                stream.write(published.frame)

            subscribed = broker.subscribe("news", deliver)
            subscribed.addCallback(lambda s: stream.on_close(s.cancel))

        client = SSETestClient(
            EventStreamResource(subscribe, clock=self.clock), clock=self.clock
        )
        response = client.get("/")
        broker.publish("news", Event(data="hi"))
        self.assertEqual(_data(response), ["hi"])
        error = self.assertRaises(
            self.failureException,
            assert_no_leaks,
            self,
            brokers=[broker],
        )
        self.assertIn("1 subscriber(s) left on channel 'news'", str(error))
        response.disconnect()
        client.assert_clean(brokers=[broker], testcase=self)

    def test_malformed_response(self) -> None:
        """Bytes that are not HTTP are reported, not smoothed over."""
        client = SSETestClient(_RawResource(b"HTTP/1.1 200 OK\r\nbad\r\n\r\n"))
        response = client.get("/")
        self.assertIn("bad header line", response.protocol_error or "")
        self.assertIsNone(response.code)
        response.disconnect()
        error = self.assertRaises(
            self.failureException, client.assert_clean, testcase=self
        )
        self.assertIn("malformed response", str(error))


class ParseEventsTests(SynchronousTestCase):
    """parse_events reads a whole body."""

    def test_parse_events(self) -> None:
        """Complete blocks are events; an unfinished last block is dropped."""
        self.assertEqual(
            parse_events(b"id: 7\nevent: x\ndata: a\ndata: b\n\ndata: lost"),
            [MessageEvent(type="x", data="a\nb", last_event_id="7")],
        )

    def test_last_event_id(self) -> None:
        """The given last event id is carried by events without an id."""
        self.assertEqual(parse_events(b"data: a\n\n", "3")[0].last_event_id, "3")
