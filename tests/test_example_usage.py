"""
How to test your own event stream with L{twisted_sse.testing}: copy this file.

The application under test is a small Klein app, defined here so the file is
complete on its own; in your project it is imported from your code.  Its
streams take their clock as a parameter, so the test gives them a
L{Clock} and moves time itself: nothing waits, nothing touches the network,
and the same tests run under C{trial} and C{pytest}.
"""

from __future__ import annotations

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest

from twisted_sse import Event, EventStream, EventStreamResource
from twisted_sse.testing import SSETestClient

# The application (in your project: from myapp import Notifier).


class Notifier:
    """
    C{GET /events} streams notices; C{POST /notify} sends its body to every
    open stream as a C{notice} event with a numbered id.
    """

    app = Klein()

    def __init__(self, clock: IReactorTime) -> None:
        self.listeners: set[EventStream] = set()
        self.sent = 0
        self.events = EventStreamResource(
            self._listen, clock=clock, retry=2000, heartbeat=15
        )

    def _listen(self, stream: EventStream) -> None:
        self.listeners.add(stream)
        stream.on_close(lambda: self.listeners.discard(stream))

    @app.route("/events", methods=["GET", "HEAD", "OPTIONS"])
    def stream(self, request: IRequest) -> EventStreamResource:
        return self.events

    @app.route("/notify", methods=["POST"])
    def notify(self, request: IRequest) -> bytes:
        self.sent += 1
        text = request.content.read().decode("utf-8")
        event = Event(event="notice", id=str(self.sent), data=text)
        for stream in list(self.listeners):
            stream.send(event)
        return b"sent\n"


# The tests.


class NotifierTests(SynchronousTestCase):
    """Tests for the notifier's event stream."""

    def setUp(self) -> None:
        # One clock for the application and the client.
        self.clock = Clock()
        self.notifier = Notifier(self.clock)
        self.client = SSETestClient.for_klein(self.notifier.app, self.clock)

    def tearDown(self) -> None:
        # Whatever a test left open, leave nothing behind for the next one.
        self.client.disconnect_all()

    def test_stream_opens(self) -> None:
        """A GET opens an event stream that sets the retry time at once."""
        response = self.client.get("/events")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.header("Content-Type"), "text/event-stream; charset=utf-8"
        )
        self.assertEqual(response.retry, 2000)
        self.assertEqual(response.events, [])

    def test_notice_reaches_every_listener(self) -> None:
        """A POSTed notice is an event on every open stream."""
        alice = self.client.get("/events")
        bob = self.client.get("/events")
        waiting = alice.next_event()

        posted = self.client.request("POST", "/notify", body=b"hello")

        self.assertEqual(posted.code, 200)
        event = self.successResultOf(waiting)
        self.assertEqual(
            (event.type, event.data, event.last_event_id), ("notice", "hello", "1")
        )
        self.assertEqual(bob.events, alice.events)
        self.assertEqual(bob.last_event_id, "1")

    def test_idle_stream_gets_heartbeats(self) -> None:
        """A stream with nothing to say gets a comment in every 15 s."""
        response = self.client.get("/events")
        for _ in range(4):
            before = len(response.comments)
            self.client.advance(15)
            self.assertGreater(len(response.comments), before)
        self.assertEqual(response.events, [])

    def test_reconnect_sends_last_event_id(self) -> None:
        """A reconnecting client sends the last id it saw."""
        first = self.client.get("/events")
        self.client.request("POST", "/notify", body=b"one")
        first.disconnect()

        second = self.client.get("/events", last_event_id=first.last_event_id)

        (listener,) = self.notifier.listeners
        self.assertEqual(listener.request.getHeader(b"last-event-id"), b"1")
        self.assertEqual(second.last_event_id, "1")

    def test_nothing_outlives_a_client(self) -> None:
        """A client that goes away leaves no listener, stream or timer."""
        response = self.client.get("/events")
        self.client.advance(20)
        response.disconnect()
        self.assertEqual(self.notifier.listeners, set())
        self.client.assert_clean(self.notifier.events, testcase=self)

    def test_leak_is_caught(self) -> None:
        """The leak check fails while a stream is still open."""
        self.client.get("/events")
        self.assertRaises(
            self.failureException,
            self.client.assert_clean,
            self.notifier.events,
            testcase=self,
        )
