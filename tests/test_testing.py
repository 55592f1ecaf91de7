"""
Tests for L{twisted_sse.testing}: the in-memory client, proven against
L{twisted_sse.EventStreamResource} served by a real C{twisted.web} Site.
"""

from __future__ import annotations

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from tests._transports import TransportCase, over_both_transports
from twisted_sse import (
    Event,
    EventStream,
    EventStreamResource,
    MessageEvent,
    StreamRegistry,
    counter,
)
from twisted_sse._broker import Published
from twisted_sse._memory import MemoryBroker
from twisted_sse.testing import (
    SSETestClient,
    assert_no_leaks,
    parse_events,
)

from ._helpers import CounterCase, Keeper, data, silent


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


@over_both_transports
class StreamTests(CounterCase):
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
            self.assertEqual(data(response), expected)
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
        self.assertEqual(data(stepped), ["1", "2", "3"])
        jumped = self.client.get("/")
        self.clock.advance(3)
        self.assertEqual(data(jumped), ["1"])
        self.client.disconnect_all()

    def test_events_arrive_when_the_clock_moves_directly(self) -> None:
        """Writes reach the response without any call to the client."""
        response = self.client.get("/")
        self.clock.advance(1)
        self.assertEqual(data(response), ["1"])
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
            silent, retry=1000, clock=self.clock, heartbeat=15
        )
        client = self.client_for(resource, clock=self.clock)
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
        client = self.client_for(
            EventStreamResource(silent, clock=self.clock, heartbeat=15), self.clock
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
        keeper = Keeper()
        client = self.client_for(
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
        keeper = Keeper()
        resource = EventStreamResource(keeper, clock=self.clock, retry=1000)
        client = self.client_for(resource, clock=self.clock)
        response = client.get("/")
        waiting = response.next_event()
        keeper.streams[0].send(Event(data="last"))
        keeper.streams[0].close()
        client.flush()
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
        keeper = Keeper()
        client = self.client_for(
            EventStreamResource(keeper, clock=self.clock), clock=self.clock
        )
        response = client.get("/")
        keeper.streams[0].abort()
        client.flush()
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
        self.assertEqual(data(response), ["1", "2", "3"])
        self.client.advance(1)
        self.assertEqual(data(response), ["1", "2", "3", "4"])
        response.disconnect()
        self.client.assert_clean(testcase=self)

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


class MemoryTransportTests(CounterCase):
    """What only the ``"memory"`` transport does (``"tcp"``: test_writer.py)."""

    def test_pause_reading_pauses_the_producer(self) -> None:
        """pause_reading reaches the request's producer through the channel."""
        resource = _ProducerResource()
        client = self.client_for(resource, clock=self.clock)
        response = client.get("/")
        response.pause_reading()
        response.resume_reading()
        self.assertEqual(resource.producer.calls, ["pause", "resume"])
        self.assertEqual(data(response), ["open"])
        response.disconnect()


@over_both_transports
class TreeTests(TransportCase):
    """The resource served inside a larger tree."""

    def test_klein_route(self) -> None:
        """A Klein route returning the resource streams."""
        clock = Clock()
        resource = EventStreamResource(counter(1), clock=clock, retry=1000)
        app = Klein()

        @app.route("/events")
        def events(request: IRequest) -> EventStreamResource:
            return resource

        client = self.client_for(app.resource(), clock)
        response = client.get("/events")
        client.advance(2)
        self.assertEqual(response.code, 200)
        self.assertEqual(data(response), ["1", "2"])
        self.assertEqual(client.get("/nothing").code, 404)
        response.disconnect()
        client.assert_clean(resource, testcase=self)

    def test_put_child(self) -> None:
        """A resource mounted with putChild streams."""
        clock = Clock()
        resource = EventStreamResource(counter(1), clock=clock)
        root = Resource()
        root.putChild(b"events", resource)
        client = self.client_for(root, clock)
        response = client.get("/events")
        client.advance(1)
        self.assertEqual(
            response.header("Content-Type"), "text/event-stream; charset=utf-8"
        )
        self.assertEqual(data(response), ["1"])
        response.disconnect()
        client.assert_clean(resource, testcase=self)


@over_both_transports
class LeakCheckTests(CounterCase):
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
        resource = EventStreamResource(silent, clock=self.clock, registry=registry)
        client = self.client_for(resource, clock=self.clock)
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

        client = self.client_for(
            EventStreamResource(subscribe, clock=self.clock), clock=self.clock
        )
        response = client.get("/")
        broker.publish("news", Event(data="hi"))
        self.assertEqual(data(response), ["hi"])
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
        client = self.client_for(_RawResource(b"HTTP/1.1 200 OK\r\nbad\r\n\r\n"))
        response = client.get("/")
        self.assertIn("bad header line", response.protocol_error or "")
        self.assertIsNone(response.code)
        response.disconnect()
        error = self.assertRaises(
            self.failureException, client.assert_clean, testcase=self
        )
        self.assertIn("malformed response", str(error))


@over_both_transports
class ParseEventsTests(TransportCase):
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


class TransportOptionTests(SynchronousTestCase):
    """The client's transport is chosen by its argument, and checked."""

    def test_unknown_transport(self) -> None:
        """A transport other than memory or tcp is a ValueError naming it."""
        error = self.assertRaises(
            ValueError, SSETestClient, Resource(), transport="udp"
        )
        self.assertIn("'udp'", str(error))
