"""
Tests for L{twisted_sse._stream}: a stream's bounded queue and the
slow-client policies, through a hub's streams; what send takes; and
last_event_id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests._transports import TransportCase, over_both_transports
from twisted_sse import MAX_LAST_EVENT_ID, Event, EventStream, EventStreamResource
from twisted_sse import _stream as _stream_module
from twisted_sse._event import as_event
from twisted_sse._stream import SlowClientPolicy

from ._helpers import EPOCH, HubFixture, Keeper, data, ids


class FlowControlTests(SynchronousTestCase):
    """
    A client that stops reading never costs unbounded memory nor delays.

    The queue and its policies are the same over both writers; these tests
    pause the stream the moment its client stops reading (the ``"memory"``
    transport).  How the direct writer gets paused over TCP is in
    ``test_writer.py``.
    """

    def test_disconnect_slow_only(self) -> None:
        """Under disconnect, the slow client is cut; the others get everything."""
        hub = HubFixture(self, max_queue_events=10)
        slow, fast = hub.subscribe(), hub.subscribe()
        slow.pause_reading()
        for n in range(10):
            hub.publish(str(n))
        self.assertTrue(slow.connected)
        hub.publish("10")
        self.assertFalse(slow.connected)
        self.assertFalse(slow.finished)  # cut, not ended: it reconnects
        self.assertEqual(data(fast), [str(n) for n in range(11)])
        self.assertEqual(hub.memory.subscriber_count("news"), 1)
        self.assertEqual(len(hub.registry.streams), 1)

    def test_disconnect_by_bytes(self) -> None:
        """The queue's byte bound cuts a slow client too."""
        hub = HubFixture(self, max_queue_bytes=1000)
        slow = hub.subscribe()
        slow.pause_reading()
        hub.publish("x" * 600)
        self.assertTrue(slow.connected)
        hub.publish("x" * 600)
        self.assertFalse(slow.connected)

    def test_slow_resumes(self) -> None:
        """A client that reads again before the queue fills gets all, in order."""
        hub = HubFixture(self, max_queue_events=10)
        client = hub.subscribe()
        client.pause_reading()
        for n in range(10):
            hub.publish(str(n))
        self.assertEqual(client.events, [])
        client.resume_reading()
        self.assertEqual(data(client), [str(n) for n in range(10)])

    def test_disconnected_client_resumes(self) -> None:
        """A client cut for not reading resumes with Last-Event-ID, losing nothing."""
        hub = HubFixture(self, max_queue_events=3)
        slow = hub.subscribe()
        hub.publish("0")
        slow.pause_reading()
        for n in range(1, 6):
            hub.publish(str(n))
        self.assertFalse(slow.connected)
        again = hub.subscribe(last_event_id=slow.last_event_id)
        self.assertEqual(data(slow) + data(again), [str(n) for n in range(6)])

    def test_drop_oldest(self) -> None:
        """Under drop-oldest, the newest events wait; older ones are dropped."""
        hub = HubFixture(self, policy=SlowClientPolicy.DROP_OLDEST, max_queue_events=3)
        slow, fast = hub.subscribe(), hub.subscribe()
        slow.pause_reading()
        for n in range(10):
            hub.publish(str(n))
        self.assertTrue(slow.connected)
        slow.resume_reading()
        self.assertEqual(data(slow), ["7", "8", "9"])
        self.assertEqual(ids(slow), [f"{EPOCH}-{n}" for n in (8, 9, 10)])
        self.assertEqual(len(data(fast)), 10)
        hub.publish("10")
        self.assertEqual(data(slow)[-1], "10")

    def test_latest_by_key(self) -> None:
        """Under latest, the newest queued event per publish key is kept."""
        hub = HubFixture(self, policy=SlowClientPolicy.LATEST, max_queue_events=10)
        slow = hub.subscribe()
        slow.pause_reading()
        for n, key in enumerate(["EUR", "USD", "EUR", "JPY", "USD", "EUR"]):
            response = hub.post_json(data=f"{key} {n}", event="price", key=key)
            self.assertEqual(response.code, 200)
        slow.resume_reading()
        # Ids still increase: a newer value takes the place at the end.
        self.assertEqual(data(slow), ["JPY 3", "USD 4", "EUR 5"])
        self.assertEqual(ids(slow), [f"{EPOCH}-{n}" for n in (4, 5, 6)])

    def test_latest_by_type(self) -> None:
        """Without a key, latest conflates by event type."""
        hub = HubFixture(self, policy=SlowClientPolicy.LATEST)
        slow = hub.subscribe()
        slow.pause_reading()
        for n in range(5):
            hub.publish(f"a{n}", event="a")
            hub.publish(f"b{n}", event="b")
        hub.publish("m")
        slow.resume_reading()
        self.assertEqual(data(slow), ["a4", "b4", "m"])

    def test_latest_bounded(self) -> None:
        """Under latest, many distinct keys still fit in the bound."""
        hub = HubFixture(self, policy=SlowClientPolicy.LATEST, max_queue_events=5)
        slow = hub.subscribe()
        slow.pause_reading()
        for n in range(20):
            hub.publish(str(n), event=f"type{n}")
        self.assertTrue(slow.connected)
        slow.resume_reading()
        self.assertEqual(data(slow), ["15", "16", "17", "18", "19"])

    def test_memory_bounded(self) -> None:
        """However much is published, a slow client's queue stays in bounds."""
        hub = HubFixture(
            self,
            policy=SlowClientPolicy.DROP_OLDEST,
            max_queue_events=100,
            max_queue_bytes=20_000,
            history=10,
        )
        slow = hub.subscribe()
        slow.pause_reading()
        (stream,) = hub.registry.streams
        worst = 0
        for n in range(3000):
            hub.publish(f"{n:04d}" + "z" * 1000)
            worst = max(worst, stream.queued_bytes)
            self.assertLessEqual(stream.queued, 100)
        self.assertLessEqual(worst, 20_000)
        self.assertGreater(stream.dropped, 2900)
        # Nothing reached the transport while it was paused.
        self.assertEqual(slow.raw, f"retry: 1000\nid: {EPOCH}-0\n\n".encode())


@over_both_transports
class SendTests(TransportCase):
    """send takes what a user has at hand: text, bytes, JSON-able data, events."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.keeper = Keeper()
        resource = EventStreamResource(self.keeper, clock=self.clock)
        self.client = self.client_for(resource, clock=self.clock)
        self.response = self.client.get("/")
        (self.stream,) = self.keeper.streams

    def tearDown(self) -> None:
        self.response.disconnect()
        self.client.assert_clean(testcase=self)

    def test_str(self) -> None:
        """send("hello") sends data: hello."""
        self.assertTrue(self.stream.send("hello"))
        self.assertTrue(self.response.raw.endswith(b"data: hello\n\n"))
        self.assertEqual(data(self.response), ["hello"])

    def test_multiline_str(self) -> None:
        """A str with line breaks is one message of several data lines."""
        self.stream.send("one\ntwo\r\nthree")
        self.assertTrue(
            self.response.raw.endswith(b"data: one\ndata: two\ndata: three\n\n")
        )
        self.assertEqual(data(self.response), ["one\ntwo\nthree"])

    def test_bytes(self) -> None:
        """bytes are sent as their UTF-8 text."""
        self.stream.send("café".encode())
        self.assertEqual(data(self.response), ["café"])

    def test_invalid_utf8(self) -> None:
        """Invalid UTF-8 becomes U+FFFD, as a browser shows those bytes."""
        self.stream.send(b"ok \xff\xfe end")
        self.assertEqual(data(self.response), ["ok \ufffd\ufffd end"])

    def test_dict_and_list(self) -> None:
        """A dict or list is sent as its JSON text."""
        self.stream.send({"user": "zoë", "n": [1, 2.5, None, True]})
        self.stream.send(["a", {"b": 1}])
        self.assertEqual(
            [json.loads(text) for text in data(self.response)],
            [{"user": "zoë", "n": [1, 2.5, None, True]}, ["a", {"b": 1}]],
        )
        self.assertIn('{"user":"zoë"', data(self.response)[0])

    def test_event(self) -> None:
        """An Event is sent as it is, its type and id with it."""
        self.stream.send(Event(data="x", event="ping", id="9"))
        self.assertTrue(self.response.raw.endswith(b"id: 9\nevent: ping\ndata: x\n\n"))

    def test_other_types_refused(self) -> None:
        """Anything else is a TypeError naming its type; the stream goes on."""
        for value in (42, None, 1.5, ("a",), object()):
            with self.assertRaises(TypeError) as caught:
                self.stream.send(value)  # type: ignore[arg-type]
            self.assertIn(type(value).__name__, str(caught.exception))
        self.assertEqual(self.response.events, [])
        self.assertFalse(self.stream.closed)
        self.stream.send("still open")
        self.assertEqual(data(self.response), ["still open"])

    def test_unencodable_json_refused(self) -> None:
        """A dict JSON cannot hold is refused, and nothing is sent."""
        with self.assertRaises(TypeError) as caught:
            self.stream.send({"when": Clock()})
        self.assertIn("Clock", str(caught.exception))
        with self.assertRaises(ValueError):
            self.stream.send({"x": float("nan")})
        self.assertEqual(self.response.events, [])
        self.assertFalse(self.stream.closed)

    def test_closed(self) -> None:
        """On a closed stream, send returns False, whatever it is given."""
        self.stream.close()
        self.assertFalse(self.stream.send("late"))
        self.assertFalse(self.stream.send(Event(data="late")))


class SendSpeedTests(SynchronousTestCase):
    """send's Event path is what it was: the other kinds cost it nothing."""

    def test_event_path_does_not_coerce(self) -> None:
        """An Event is encoded and written without going through as_event."""
        stream = EventStream(_Request(), Clock())
        calls: list[object] = []
        original = as_event

        def spy(value: Any) -> Event:
            calls.append(value)
            return original(value)

        self.patch(_stream_module, "as_event", spy)
        stream.send(Event(data="fast"))
        self.assertEqual(calls, [])
        stream.send("coerced")
        self.assertEqual(calls, ["coerced"])


class _Request:
    """Just enough of a request for a stream that is never started."""

    def write(self, data: bytes) -> None:
        pass


@over_both_transports
class LastEventIdTests(TransportCase):
    """stream.last_event_id: where a client asks to resume, checked."""

    def last_event_id(
        self, path: str = "/", headers: dict[str, str] | None = None
    ) -> str | None:
        clock = Clock()
        keeper = Keeper()
        client = self.client_for(EventStreamResource(keeper, clock=clock), clock=clock)
        response = client.get(path, headers)
        (stream,) = keeper.streams
        found = stream.last_event_id
        response.disconnect()
        client.assert_clean(testcase=self)
        return found

    def test_none_on_first_connection(self) -> None:
        """A first connection has no last event id."""
        self.assertIsNone(self.last_event_id())

    def test_header(self) -> None:
        """A reconnecting browser's Last-Event-ID header."""
        self.assertEqual(self.last_event_id(headers={"Last-Event-ID": "41"}), "41")

    def test_utf8_header(self) -> None:
        """An id of any UTF-8 text."""
        self.assertEqual(
            self.last_event_id(headers={"Last-Event-ID": "épisode-☃"}), "épisode-☃"
        )

    def test_query_parameter(self) -> None:
        """Polyfills send lastEventId in the query instead."""
        self.assertEqual(self.last_event_id("/?lastEventId=a%20b&x=1"), "a b")

    def test_header_before_query(self) -> None:
        """The header wins over the query parameter."""
        self.assertEqual(
            self.last_event_id("/?lastEventId=q", {"Last-Event-ID": "h"}), "h"
        )

    def test_bounded(self) -> None:
        """An id of up to MAX_LAST_EVENT_ID bytes is read; a longer one is None."""
        longest = "x" * MAX_LAST_EVENT_ID
        self.assertEqual(
            self.last_event_id(headers={"Last-Event-ID": longest}), longest
        )
        self.assertIsNone(self.last_event_id(headers={"Last-Event-ID": longest + "x"}))
        self.assertIsNone(self.last_event_id(f"/?lastEventId={longest}x"))

    def test_no_line_breaks_or_nul(self) -> None:
        """An id with a CR, LF or NUL (possible in a query) is None."""
        for escaped in ("%0D", "%0A", "%00"):
            self.assertIsNone(self.last_event_id(f"/?lastEventId=1{escaped}2"))

    def test_not_utf8(self) -> None:
        """An id that is not UTF-8 is None."""
        self.assertIsNone(self.last_event_id("/?lastEventId=%FF"))

    def test_empty(self) -> None:
        """An empty id is no id."""
        self.assertIsNone(self.last_event_id("/?lastEventId="))
        self.assertIsNone(self.last_event_id(headers={"Last-Event-ID": ""}))

    def test_resume_in_a_handler(self) -> None:
        """A user's generator resumes after the id its client last saw."""
        entries = ["a", "b", "c", "d"]

        def handler(stream: EventStream) -> Iterator[Event]:
            seen = stream.last_event_id
            start = int(seen) + 1 if seen is not None and seen.isdecimal() else 0
            for number in range(start, len(entries)):
                yield Event(id=str(number), data=entries[number])

        clock = Clock()
        client = self.client_for(EventStreamResource(handler, clock=clock), clock=clock)
        first = client.get("/")
        again = client.get("/", last_event_id="1")
        strange = client.get("/", last_event_id="../etc")

        self.assertEqual(data(first), ["a", "b", "c", "d"])
        self.assertEqual(data(again), ["c", "d"])
        self.assertEqual(data(strange), ["a", "b", "c", "d"])
        client.assert_clean(testcase=self)
