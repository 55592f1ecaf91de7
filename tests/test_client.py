"""
Tests for L{twisted_sse._client}: the connection rules a client must follow,
driven by a fake agent whose responses and bodies the tests control, and a
L{Clock} for reconnect timing.  What the source sends and the redirects it
follows are tested in L{tests.test_redirects}, its default agent in
L{tests.test_agent}, and C{async for} in L{tests.test_iterator}.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import RequestTraversalAgent
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from twisted_sse import Event, EventStreamResource, MessageEvent, counter
from twisted_sse._client import (
    DEFAULT_IDLE_TIMEOUT,
    EventSource,
    EventSourceError,
    IdleTimeout,
    ReadyState,
)
from twisted_sse._parser import LimitExceeded

from ._client_fakes import (
    BOM,
    ORIGIN,
    SSE,
    URL,
    FakeAgent,
    FakeResponse,
    Harness,
    collect,
    error_of,
    limit_of,
    message,
)


class RequestTests(SynchronousTestCase):
    """What the client sends."""

    def test_connects_on_next_turn(self) -> None:
        """No request is made before the reactor turns: callbacks set now see all."""
        harness = Harness()
        self.assertEqual(harness.agent.requests, [])
        self.assertEqual(harness.source.ready_state, ReadyState.CONNECTING)
        harness.start()
        self.assertEqual(len(harness.agent.requests), 1)

    def test_uri_encoded(self) -> None:
        """A non-ASCII path and host are encoded for the wire."""
        request = Harness("http://bücher.example/é?q=ü v").start()
        self.assertEqual(
            request.uri, b"http://xn--bcher-kva.example/%C3%A9?q=%C3%BC%20v"
        )

    def test_bad_urls(self) -> None:
        """A URL that is not absolute http(s) with a host is refused at once."""
        for url in [
            "ftp://example.com/",
            "example.com/events",
            "/events",
            "http://",
            "http://h:99999/",
            "http://h:port/",
            "http://user:pw@example.com/",
        ]:
            with self.assertRaises(ValueError, msg=url):
                EventSource(url, agent=FakeAgent(), reactor=Clock())

    def test_https_and_ipv6(self) -> None:
        """An https URL and an IPv6 literal are accepted."""
        request = Harness("https://[::1]:8443/s").start()
        self.assertEqual(request.uri, b"https://[::1]:8443/s")

    def test_bad_headers(self) -> None:
        """A header name that is not a token, or a value with CR/LF, is refused."""
        for headers in [{"Bad Name": "x"}, {"X": "a\r\nInjected: 1"}, {"": "x"}]:
            with self.assertRaises(ValueError):
                EventSource(URL, headers=headers, agent=FakeAgent(), reactor=Clock())

    def test_bad_last_event_id(self) -> None:
        """A seeded last event id that no stream could set is refused."""
        for value in ["a\nb", "a\rb", "a\0b"]:
            with self.assertRaises(ValueError):
                EventSource(
                    URL, last_event_id=value, agent=FakeAgent(), reactor=Clock()
                )

    def test_negative_times(self) -> None:
        """Negative times are refused."""
        with self.assertRaises(ValueError):
            EventSource(URL, reconnection_time=-1, agent=FakeAgent(), reactor=Clock())


class StatusTests(SynchronousTestCase):
    """Only status 200 opens a stream; any other fails for good."""

    def test_200_opens(self) -> None:
        """Status 200 with the right type opens the stream and calls on_open."""
        harness = Harness()
        harness.start()
        harness.open()
        self.assertEqual(harness.source.ready_state, ReadyState.OPEN)
        self.assertEqual(harness.opened, 1)
        self.assertEqual(harness.errors, [])

    def test_204_stops(self) -> None:
        """204 closes for good: on_error gets a "stopped" error, no reconnect."""
        harness = Harness()
        response = harness.start().respond(204, None)
        self.assertEqual(harness.source.ready_state, ReadyState.CLOSED)
        [failure] = harness.errors
        self.assertIsInstance(failure.value, EventSourceError)
        self.assertTrue(error_of(failure).stopped)
        self.assertEqual(error_of(failure).status, 204)
        self.assertEqual(harness.requests_after(3600), 1)
        self.assertTrue(response.stopped)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_errors_fail_for_good(self) -> None:
        """201, 404, 500 and 503 fail for good with their status: no reconnect."""
        for code in [201, 404, 500, 503]:
            harness = Harness()
            response = harness.start().respond(code, SSE)
            response.send(b"data: ignored\n\n")
            self.assertEqual(harness.source.ready_state, ReadyState.CLOSED)
            [failure] = harness.errors
            self.assertEqual(error_of(failure).status, code)
            self.assertFalse(error_of(failure).stopped)
            self.assertEqual(harness.events, [])
            self.assertEqual(harness.opened, 0)
            self.assertEqual(harness.requests_after(3600), 1)

    def test_failed_body_discarded(self) -> None:
        """The body of a failed response is not read: its connection is dropped."""
        harness = Harness()
        response = harness.start().respond(404, "text/html")
        self.assertTrue(response.stopped)


class ContentTypeTests(SynchronousTestCase):
    """The Content-Type essence must be text/event-stream."""

    def check(self, content_type: str | None) -> Harness:
        """Answer 200 with C{content_type} and a one-event body."""
        harness = Harness()
        harness.start().respond(200, content_type).send(b"data: x\n\n")
        return harness

    def test_accepted(self) -> None:
        """Parameters, case and surrounding whitespace do not matter."""
        for content_type in [
            "text/event-stream",
            "text/event-stream; charset=utf-8",
            "TEXT/Event-Stream",
            "text/event-stream ;charset=UTF-8",
            " text/event-stream",
        ]:
            harness = self.check(content_type)
            self.assertEqual(harness.events, [message("x")], content_type)
            self.assertEqual(harness.source.ready_state, ReadyState.OPEN)

    def test_rejected(self) -> None:
        """Other types, lookalikes and a missing header fail for good."""
        for content_type in [
            "text/event-streamx",
            "text/event-stream-foo",
            "text/plain",
            "event-stream",
            "text/event-stream/x",
            "",
            None,
        ]:
            harness = self.check(content_type)
            self.assertEqual(harness.events, [], content_type)
            self.assertEqual(harness.source.ready_state, ReadyState.CLOSED)
            [failure] = harness.errors
            self.assertIsInstance(failure.value, EventSourceError)
            self.assertEqual(harness.requests_after(3600), 1)

    def test_quoted_comma(self) -> None:
        """A comma inside a quoted parameter does not start another type."""
        harness = self.check('text/event-stream; x="a,text/html"')
        self.assertEqual(harness.events, [message("x")])


class ReconnectTests(SynchronousTestCase):
    """When and how the client reconnects."""

    def test_default_time(self) -> None:
        """After the body ends, the next request is made after exactly 3000 ms."""
        harness = Harness()
        harness.start()
        harness.open(b"data: x\n\n").end()
        self.assertEqual(harness.source.ready_state, ReadyState.CONNECTING)
        self.assertEqual(harness.source.reconnect_delay, 3.0)
        self.assertEqual(harness.requests_after(2.999), 1)
        self.assertEqual(harness.requests_after(0.001), 2)

    def test_error_callback_on_reconnect(self) -> None:
        """on_error sees the reason while the state is CONNECTING."""
        harness = Harness()
        states: list[ReadyState] = []
        harness.source.on_error = lambda f: states.append(harness.source.ready_state)
        harness.start()
        harness.open().end(Failure(ConnectionLost()))
        self.assertEqual(states, [ReadyState.CONNECTING])

    def test_retry_field(self) -> None:
        """retry: changes the reconnection time."""
        harness = Harness()
        harness.start()
        harness.open(b"retry: 500\ndata: x\n\n").end()
        self.assertEqual(harness.source.reconnection_time, 500)
        self.assertEqual(harness.requests_after(0.499), 1)
        self.assertEqual(harness.requests_after(0.001), 2)

    def test_retry_without_dispatch(self) -> None:
        """retry: applies even in a block that never dispatches."""
        harness = Harness()
        harness.start()
        harness.open(b"data: 0\n\nretry: 1500\ndata: x\n").end()
        self.assertEqual(harness.events, [message("0")])
        self.assertEqual(harness.requests_after(1.5), 2)

    def test_retry_persists(self) -> None:
        """The reconnection time set on one connection holds for the next ones."""
        harness = Harness()
        harness.start()
        harness.open(b"retry: 700\ndata: x\n\n").end()
        harness.clock.advance(0.7)
        harness.open(b"data: no retry here\n\n").end()
        self.assertEqual(harness.requests_after(0.699), 2)
        self.assertEqual(harness.requests_after(0.001), 3)

    def test_initial_time(self) -> None:
        """The initial reconnection time can be given."""
        harness = Harness(reconnection_time=250)
        harness.start()
        harness.open(b"data: x\n\n").end()
        self.assertEqual(harness.requests_after(0.25), 2)

    def test_network_error_reconnects(self) -> None:
        """A failed request (network error) is retried, not fatal."""
        harness = Harness()
        harness.start().fail()
        self.assertEqual(harness.source.ready_state, ReadyState.CONNECTING)
        self.assertTrue(harness.errors[0].check(ConnectionRefusedError))
        self.assertEqual(harness.requests_after(60), 2)

    def test_dropped_stream_reconnects(self) -> None:
        """A stream that errors mid-body is reopened after the reconnection time."""
        harness = Harness()
        harness.start()
        harness.open(b"data: 1\n\n").end(Failure(ConnectionLost()))
        self.assertEqual(harness.requests_after(3), 2)

    def test_backoff_grows_and_caps(self) -> None:
        """Consecutive failed attempts double the wait, up to max_backoff."""
        harness = Harness()
        harness.start()
        delays = []
        for _ in range(7):
            harness.last.fail()
            delay = harness.source.reconnect_delay
            assert delay is not None
            delays.append(delay)
            harness.clock.advance(delay)
        self.assertEqual(delays, [6.0, 12.0, 24.0, 48.0, 60.0, 60.0, 60.0])

    def test_backoff_floor(self) -> None:
        """With retry: 0, failed attempts still back off instead of spinning."""
        harness = Harness()
        harness.start()
        harness.open(b"retry: 0\ndata: x\n\n").end()
        self.assertEqual(harness.source.reconnect_delay, 0.0)
        harness.clock.advance(0)
        harness.last.fail()
        self.assertEqual(harness.source.reconnect_delay, 2.0)

    def test_backoff_reset_by_event(self) -> None:
        """An event resets the backoff: the next drop waits the reconnection time."""
        harness = Harness()
        harness.start().fail()
        harness.clock.advance(6)
        harness.last.fail()
        harness.clock.advance(12)
        harness.open(b"data: x\n\n").end()
        self.assertEqual(harness.source.reconnect_delay, 3.0)
        harness.clock.advance(3)
        harness.last.fail()
        self.assertEqual(harness.source.reconnect_delay, 6.0)

    def test_open_without_event_is_a_failure(self) -> None:
        """A stream that ends before an event neither resets nor spares the count."""
        harness = Harness()
        harness.start().fail()
        harness.clock.advance(6)
        harness.open(b": hello\nretry: 3000\nid: 1\n\n").end()
        self.assertEqual(harness.source.reconnect_delay, 12.0)
        self.assertEqual(harness.source.last_event_id, "1")

    def test_heartbeats_do_not_reset(self) -> None:
        """Heartbeats (comments) on an open stream do not end a run of failures."""
        harness = Harness()
        harness.start().fail()
        harness.clock.advance(6)
        response = harness.open()
        for _ in range(10):
            harness.clock.advance(15)
            response.send(b":\n")
        response.end(Failure(ConnectionLost()))
        self.assertEqual(harness.source.reconnect_delay, 12.0)

    def test_retry_zero_and_close(self) -> None:
        """A server answering retry: 0 and hanging up gets 3 connects in 10 s."""
        # The most jitter: the shortest waits there can be.
        harness = Harness(jitter=1.0)
        harness.start()
        connects: list[float] = []
        delays: list[float] = []
        for _ in range(1000):
            if harness.clock.seconds() >= 10:
                break
            connects.append(harness.clock.seconds())
            harness.open(b"retry: 0\n\n").end()
            delay = harness.source.reconnect_delay
            assert delay is not None
            delays.append(delay)
            harness.clock.advance(delay)
        self.assertEqual(harness.source.reconnection_time, 0)
        self.assertEqual(delays, [1.5, 3.0, 6.0])
        self.assertEqual(connects, [0.0, 1.5, 4.5])

    def test_long_retry_beyond_cap(self) -> None:
        """A server retry: longer than max_backoff is honoured."""
        harness = Harness(max_backoff=10)
        harness.start()
        harness.open(b"retry: 30000\n\n").end()
        harness.clock.advance(30)
        harness.last.fail()
        self.assertEqual(harness.source.reconnect_delay, 30.0)

    def test_jitter_bounded(self) -> None:
        """Jitter takes at most 25% off the backoff, never below the retry time."""
        for jitter in [0.0, 0.5, 0.999999]:
            harness = Harness(jitter=jitter)
            harness.start()
            for backoff in [6.0, 12.0, 24.0, 48.0, 60.0]:
                harness.last.fail()
                delay = harness.source.reconnect_delay
                assert delay is not None
                self.assertTrue(0.75 * backoff <= delay <= backoff, (jitter, delay))
                self.assertGreaterEqual(delay, 3.0)
                harness.clock.advance(delay)
        harness = Harness(jitter=0.5)
        harness.start().fail()
        self.assertEqual(harness.source.reconnect_delay, 6.0 * 0.875)

    def test_no_jitter_after_event(self) -> None:
        """After a stream that delivered an event ends, the wait is exact."""
        harness = Harness(jitter=0.9)
        harness.start()
        harness.open(b"data: x\n\n").end()
        self.assertEqual(harness.source.reconnect_delay, 3.0)

    def test_new_parser_per_connection(self) -> None:
        """An unfinished block of one connection does not leak into the next."""
        harness = Harness()
        harness.start()
        harness.open(b"data: 1\n\nevent: a\ndata: half").end()
        harness.clock.advance(3)
        harness.open(b"data: whole\n\n")
        self.assertEqual(harness.events, [message("1"), message("whole")])


class LastEventIdTests(SynchronousTestCase):
    """Last-Event-ID across reconnects."""

    def test_sent_on_reconnect(self) -> None:
        """The last committed id is sent when reconnecting."""
        harness = Harness()
        harness.start()
        harness.open(b"id: 7\ndata: x\n\n").end()
        harness.clock.advance(3)
        self.assertEqual(harness.last.header("Last-Event-ID"), "7")
        self.assertEqual(harness.source.last_event_id, "7")

    def test_id_without_data(self) -> None:
        """An id is committed by a blank line even when no event fires."""
        harness = Harness()
        harness.start()
        harness.open(b"data: x\n\nid: 8\n\n").end()
        harness.clock.advance(3)
        self.assertEqual(harness.last.header("Last-Event-ID"), "8")
        self.assertEqual(harness.events, [message("x")])

    def test_uncommitted_id(self) -> None:
        """An id in a block cut off by the end of the body is not committed."""
        harness = Harness(last_event_id="1")
        harness.start()
        harness.open(b"id: 2\ndata: x\n").end()
        harness.clock.advance(3)
        self.assertEqual(harness.last.header("Last-Event-ID"), "1")

    def test_reset_by_empty_id(self) -> None:
        """An empty id resets it, and then no Last-Event-ID is sent."""
        harness = Harness(last_event_id="3")
        harness.start()
        harness.open(b"id\ndata: x\n\n").end()
        harness.clock.advance(3)
        self.assertIsNone(harness.last.header("Last-Event-ID"))

    def test_seed_kept(self) -> None:
        """A seeded id is resent if the stream sets none, and events carry it."""
        harness = Harness(last_event_id="s")
        harness.start()
        harness.open(b"data: x\n\n").end()
        harness.clock.advance(3)
        self.assertEqual(harness.last.header("Last-Event-ID"), "s")
        self.assertEqual(harness.events, [message("x", last_event_id="s")])

    def test_carries_over(self) -> None:
        """The next connection's events start from the committed id."""
        harness = Harness()
        harness.start()
        harness.open(b"id: 7\ndata: a\n\n").end()
        harness.clock.advance(3)
        harness.open(b"data: b\n\nid: 9\ndata: c\n\n")
        self.assertEqual(
            harness.events,
            [
                message("a", last_event_id="7"),
                message("b", last_event_id="7"),
                message("c", last_event_id="9"),
            ],
        )

    def test_after_failed_attempts(self) -> None:
        """Failed attempts keep the id for the one after."""
        harness = Harness()
        harness.start()
        harness.open(b"id: 4\ndata: x\n\n").end()
        harness.clock.advance(3)
        harness.last.fail()
        harness.clock.advance(6)
        self.assertEqual(harness.last.header("Last-Event-ID"), "4")


class ChannelsTests(SynchronousTestCase):
    """C{channels=}: several channels of a hub in one stream."""

    HUB = "http://hub.example"
    SUBSCRIBE = "http://hub.example/subscribe?channel=orders&channel=news.*"

    def test_subscribe_url(self) -> None:
        """The source reads the hub's /subscribe for the channels given."""
        harness = Harness(self.HUB, channels=["orders", "news.*"])
        self.assertEqual(harness.start().uri, self.SUBSCRIBE.encode())
        self.assertEqual(harness.source.url, self.SUBSCRIBE)
        self.assertEqual(harness.source.origin, self.HUB)

    def test_own_query_and_path_kept(self) -> None:
        """The URL's path (other than /) and query stay; names are encoded."""
        harness = Harness("http://hub.example/sse/subscribe?k=v", channels=["a:b"])
        self.assertEqual(
            harness.start().uri,
            b"http://hub.example/sse/subscribe?k=v&channel=a%3Ab",
        )

    def test_channel_types(self) -> None:
        """An event typed with its channel reaches that channel's listeners."""
        harness = Harness(self.HUB, channels=["orders", "news.*"])
        orders: list[MessageEvent] = []
        news: list[MessageEvent] = []
        harness.source.add_listener("orders", orders.append)
        harness.source.add_listener("news.eu", news.append)
        harness.start()
        harness.open(
            b"retry: 1000\nid: ~c0\n\n"
            b"event: orders\nid: ~c1\ndata: o\n\n"
            b"event: news.eu\nid: ~c2\ndata: n\n\n"
        )
        self.assertEqual(orders, [message("o", "orders", "~c1", self.HUB)])
        self.assertEqual(news, [message("n", "news.eu", "~c2", self.HUB)])
        self.assertEqual(harness.events, [])

    def test_reconnect_sends_last_cursor(self) -> None:
        """
        A reconnection asks for the same channels with the last cursor as
        Last-Event-ID: the hub resumes every channel from it.
        """
        harness = Harness(self.HUB, channels=["orders", "news.*"])
        harness.start()
        self.assertIsNone(harness.last.header("Last-Event-ID"))
        harness.open(
            b"retry: 1000\nid: ~c0\n\nevent: orders\nid: ~c1\ndata: o\n\n"
        ).end()
        harness.clock.advance(1)
        self.assertEqual(len(harness.agent.requests), 2)
        self.assertEqual(harness.last.uri, self.SUBSCRIBE.encode())
        self.assertEqual(harness.last.header("Last-Event-ID"), "~c1")
        # The hub's first frame on the resumed stream moves the cursor too.
        harness.open(b"id: ~c5\n\n").end()
        harness.clock.advance(2)
        harness.last.fail()
        harness.clock.advance(4)
        self.assertEqual(harness.last.uri, self.SUBSCRIBE.encode())
        self.assertEqual(harness.last.header("Last-Event-ID"), "~c5")

    def test_seeded_cursor(self) -> None:
        """A last_event_id given resumes the first connection."""
        harness = Harness(self.HUB, channels=["orders"], last_event_id="~seed")
        self.assertEqual(harness.start().header("Last-Event-ID"), "~seed")

    def test_bad_channels(self) -> None:
        """A bad name, '*' alone or no channel is a ValueError naming it."""
        for channels, words in [
            (["orders", "*"], "'*'"),
            (["bad name"], "'bad name'"),
            (["-x.*"], "'-x.*'"),
            ([], "channels is empty"),
            ("orders", "not the string 'orders'"),
        ]:
            clock = Clock()
            with self.assertRaises(ValueError, msg=channels) as caught:
                EventSource(
                    self.HUB, channels=channels, agent=FakeAgent(), reactor=clock
                )
            self.assertIn(words, str(caught.exception))
            self.assertEqual(clock.getDelayedCalls(), [])

    def test_without_channels(self) -> None:
        """Without channels the URL is read as given, / included."""
        harness = Harness(self.HUB + "/")
        self.assertEqual(harness.start().uri, b"http://hub.example/")
        self.assertEqual(harness.source.url, self.HUB + "/")


class BOMTests(SynchronousTestCase):
    """One leading BOM is removed on each connection."""

    def test_each_connection(self) -> None:
        """Every connection's leading BOM is removed."""
        harness = Harness()
        harness.start()
        harness.open(BOM + b"data: 1\n\n").end()
        harness.clock.advance(3)
        harness.open(BOM + b"data: 2\n\n")
        self.assertEqual(harness.events, [message("1"), message("2")])

    def test_split(self) -> None:
        """A BOM split across chunks is still removed."""
        harness = Harness()
        harness.start()
        harness.open(BOM[:1], BOM[1:2], BOM[2:] + b"data: 1\n\n")
        self.assertEqual(harness.events, [message("1")])

    def test_second_bom_is_data(self) -> None:
        """Only one BOM is removed; a second one spoils the field name."""
        harness = Harness()
        harness.start()
        harness.open(BOM + BOM + b"data: 1\n\ndata: 2\n\n")
        self.assertEqual(harness.events, [message("2")])


class CloseTests(SynchronousTestCase):
    """close() is final and immediate."""

    def test_inside_handler(self) -> None:
        """close() in a handler stops the events already parsed from the same chunk."""
        harness = Harness()

        def handler(event: MessageEvent) -> None:
            harness.events.append(event)
            harness.source.close()

        harness.source.on_message = handler
        harness.start()
        response = harness.open(b"data: 1\n\ndata: 2\n\ndata: 3\n\n")
        self.assertEqual(harness.events, [message("1")])
        self.assertEqual(harness.source.ready_state, ReadyState.CLOSED)
        self.assertTrue(response.stopped)
        response.send(b"data: 4\n\n")
        response.end(Failure(ConnectionLost()))
        self.assertEqual(harness.events, [message("1")])
        self.assertEqual(harness.errors, [])
        self.assertEqual(harness.requests_after(3600), 1)

    def test_stops_other_listeners(self) -> None:
        """close() in one callback keeps the event from the listeners after it."""
        harness = Harness()
        later: list[MessageEvent] = []
        harness.source.on_message = lambda event: harness.source.close()
        harness.source.add_listener("message", later.append)
        seen, done = collect(harness.source)
        harness.start()
        harness.open(b"data: 1\n\n")
        self.assertEqual(later, [])
        self.assertEqual(seen, [])
        self.assertIsNone(self.successResultOf(done))

    def test_while_connecting(self) -> None:
        """close() while the request is pending cancels it, and nothing follows."""
        harness = Harness()
        request = harness.start()
        harness.source.close()
        self.assertTrue(request.cancelled)
        self.assertEqual(harness.errors, [])
        self.assertEqual(harness.requests_after(3600), 1)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_before_start(self) -> None:
        """close() before the first turn means no request at all."""
        harness = Harness()
        harness.source.close()
        self.assertEqual(harness.requests_after(3600), 0)

    def test_while_waiting(self) -> None:
        """close() during the reconnect wait cancels the reconnect."""
        harness = Harness()
        harness.start()
        harness.open().end()
        harness.source.close()
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        self.assertEqual(harness.requests_after(3600), 1)

    def test_in_on_open(self) -> None:
        """close() in on_open drops the body unread."""
        harness = Harness()
        harness.source.on_open = harness.source.close
        harness.start()
        response = harness.last.respond()
        response.send(b"data: x\n\n")
        self.assertTrue(response.stopped)
        self.assertEqual(harness.events, [])

    def test_in_on_error(self) -> None:
        """close() in on_error cancels the reconnect it announces."""
        harness = Harness()
        harness.source.on_error = lambda failure: harness.source.close()
        harness.start().fail()
        self.assertEqual(harness.source.ready_state, ReadyState.CLOSED)
        self.assertEqual(harness.requests_after(3600), 1)

    def test_response_after_close(self) -> None:
        """A response that arrives after close() anyway is dropped unread."""
        harness = Harness()
        request = harness.start()
        late = request.late_response = FakeResponse(
            200, Headers({"Content-Type": [SSE]})
        )
        late.send(b"data: x\n\n")
        harness.source.close()
        self.assertTrue(request.cancelled)
        self.assertTrue(late.stopped)
        self.assertEqual((harness.events, harness.opened, harness.errors), ([], 0, []))

    def test_idempotent(self) -> None:
        """close() twice is harmless and calls no callback."""
        harness = Harness()
        harness.start()
        harness.open()
        harness.source.close()
        harness.source.close()
        self.assertEqual((harness.errors, harness.source.ready_state), ([], 2))


class IdleTests(SynchronousTestCase):
    """The watchdog reopens a stream that went silent."""

    def test_silent_stream(self) -> None:
        """45 s without a byte drops the stream and reconnects after the retry time."""
        harness = Harness()
        harness.start()
        response = harness.open(b"id: 1\ndata: x\n\n")
        harness.clock.advance(DEFAULT_IDLE_TIMEOUT - 0.001)
        self.assertFalse(response.stopped)
        harness.clock.advance(0.001)
        self.assertTrue(response.stopped)
        self.assertTrue(harness.errors[0].check(IdleTimeout))
        self.assertEqual(harness.source.ready_state, ReadyState.CONNECTING)
        self.assertEqual(harness.requests_after(3), 2)
        self.assertEqual(harness.last.header("Last-Event-ID"), "1")
        response.end(Failure(ConnectionLost()))
        self.assertEqual(len(harness.errors), 1)

    def test_heartbeats_keep_alive(self) -> None:
        """Any bytes, comments included, keep the stream alive."""
        harness = Harness()
        harness.start()
        response = harness.open()
        for _ in range(20):
            harness.clock.advance(30)
            response.send(b":\n")
        self.assertFalse(response.stopped)
        self.assertEqual(len(harness.agent.requests), 1)

    def test_custom_timeout(self) -> None:
        """The timeout can be chosen."""
        harness = Harness(idle_timeout=5)
        harness.start()
        response = harness.open()
        harness.clock.advance(5)
        self.assertTrue(response.stopped)

    def test_disabled(self) -> None:
        """An idle timeout of 0 disables the watchdog."""
        harness = Harness(idle_timeout=0)
        harness.start()
        response = harness.open()
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        harness.clock.advance(3600)
        self.assertFalse(response.stopped)

    def test_no_response(self) -> None:
        """A request with no response is cancelled and retried, backing off."""
        harness = Harness()
        request = harness.start()
        harness.clock.advance(DEFAULT_IDLE_TIMEOUT)
        self.assertTrue(request.cancelled)
        self.assertEqual(harness.source.reconnect_delay, 6.0)
        self.assertEqual(len(harness.errors), 1)
        self.assertEqual(harness.requests_after(6), 2)

    def test_no_timer_after_close(self) -> None:
        """close() leaves no timer behind."""
        harness = Harness()
        harness.start()
        harness.open()
        harness.source.close()
        self.assertEqual(harness.clock.getDelayedCalls(), [])


class APITests(SynchronousTestCase):
    """Callbacks, listeners, iteration and state."""

    def test_ready_state_values(self) -> None:
        """The ready states are numbered as in the browser."""
        self.assertEqual(
            (EventSource.CONNECTING, EventSource.OPEN, EventSource.CLOSED), (0, 1, 2)
        )

    def test_event_fields(self) -> None:
        """Events carry type, data, last event id and origin."""
        harness = Harness()
        seen: list[MessageEvent] = []
        harness.source.add_listener("update", seen.append)
        harness.start()
        harness.open(b"event: update\nid: 3\ndata: a\ndata: b\n\n")
        self.assertEqual(seen, [message("a\nb", type="update", last_event_id="3")])

    def test_on_message_only_messages(self) -> None:
        """on_message gets only events of type message; listeners get their type."""
        harness = Harness()
        updates: list[MessageEvent] = []
        messages: list[MessageEvent] = []
        harness.source.add_listener("update", updates.append)
        harness.source.add_listener("message", messages.append)
        harness.start()
        harness.open(b"event: update\ndata: u\n\ndata: m\n\nevent: other\ndata: o\n\n")
        self.assertEqual(harness.events, [message("m")])
        self.assertEqual(messages, [message("m")])
        self.assertEqual(updates, [message("u", type="update")])

    def test_remove_listener(self) -> None:
        """A removed listener is not called; removing an unknown one is harmless."""
        harness = Harness()
        seen: list[MessageEvent] = []
        harness.source.add_listener("update", seen.append)
        harness.source.remove_listener("update", seen.append)
        harness.source.remove_listener("nothing", seen.append)
        harness.start()
        harness.open(b"event: update\ndata: u\n\n")
        self.assertEqual(seen, [])

    def test_callback_error_logged(self) -> None:
        """A callback that raises is logged and delivery goes on."""
        harness = Harness()
        later: list[MessageEvent] = []

        def broken(event: MessageEvent) -> None:
            raise ZeroDivisionError()

        harness.source.on_message = broken
        harness.source.add_listener("message", later.append)
        harness.start()
        harness.open(b"data: 1\n\ndata: 2\n\n")
        self.assertEqual([event.data for event in later], ["1", "2"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)

    def test_unusable_urls_refused(self) -> None:
        """
        A URL that could never be connected to is a ValueError naming the
        problem when the EventSource is made, not a retry loop.
        """
        for url, problem in [
            ("http://exa mple/", "a space or control character"),
            ("http://[::1/", "an unclosed '['"),
            ("http://example.com:99999/", "not between 1 and 65535"),
            ("http://example.com:0/", "not between 1 and 65535"),
            ("ftp://example.com/", "is not http or https"),
            ("example.com/events", "not an absolute URL"),
        ]:
            with self.assertRaises(ValueError) as caught:
                EventSource(url, agent=FakeAgent(), reactor=Clock())
            self.assertIn(problem, str(caught.exception))

    def test_state_properties(self) -> None:
        """url, origin, last_event_id and reconnection_time are exposed."""
        harness = Harness(last_event_id="9")
        source = harness.source
        self.assertEqual(
            (source.url, source.origin, source.last_event_id, source.reconnection_time),
            (URL, ORIGIN, "9", 3000),
        )


class LimitTests(SynchronousTestCase):
    """A line or an event too long drops the connection as a failed attempt."""

    def test_endless_line(self) -> None:
        """A line that never ends is dropped as soon as it passes max_line_bytes."""
        harness = Harness(max_line_bytes=1000)
        harness.start()
        response = harness.open(b"data: 1\n\n")
        for _ in range(10):
            response.send(b"x" * 100)
        self.assertFalse(response.stopped)
        response.send(b"x")
        self.assertTrue(response.stopped)
        [failure] = harness.errors
        self.assertEqual(
            str(limit_of(failure)), "a line longer than max_line_bytes (1000 bytes)"
        )
        self.assertEqual(harness.source.ready_state, ReadyState.CONNECTING)
        # More bytes, and the end of the dropped body, change nothing.
        response.send(b"x" * 10**6)
        response.end(Failure(ConnectionLost()))
        self.assertEqual(len(harness.errors), 1)
        self.assertEqual(harness.events, [message("1")])

    def test_huge_event(self) -> None:
        """An event whose data passes max_event_bytes is dropped with its stream."""
        harness = Harness(max_event_bytes=1000)
        harness.start()
        response = harness.open()
        for _ in range(10):
            response.send(b"data: " + b"x" * 99 + b"\n")
        self.assertFalse(response.stopped)
        response.send(b"data: x\n")
        self.assertTrue(response.stopped)
        self.assertEqual(limit_of(harness.errors[0]).option, "max_event_bytes")
        self.assertIn("1000 bytes", harness.errors[0].getErrorMessage())
        self.assertEqual(harness.events, [])

    def test_events_before_delivered(self) -> None:
        """Events of the chunk before the offending line are delivered first."""
        harness = Harness(max_line_bytes=100)
        harness.start()
        harness.open(b"id: 1\ndata: a\n\ndata: b\n\n" + b"x" * 200 + b"\n\n")
        self.assertEqual(
            harness.events,
            [message("a", last_event_id="1"), message("b", last_event_id="1")],
        )
        self.assertIsInstance(harness.errors[0].value, LimitExceeded)
        self.assertEqual(harness.source.last_event_id, "1")

    def test_close_in_callback_before_cap(self) -> None:
        """close() in a callback for an event before the cap: no error is reported."""
        harness = Harness(max_line_bytes=100)
        harness.source.on_message = lambda event: harness.source.close()
        harness.start()
        harness.open(b"data: a\n\n" + b"x" * 200)
        self.assertEqual((harness.errors, harness.source.ready_state), ([], 2))

    def test_cap_is_a_failure(self) -> None:
        """A dropped stream counts as a failed attempt, even after events."""
        harness = Harness(max_line_bytes=100)
        harness.start()
        harness.open(b"data: a\n\n" + b"x" * 200)
        self.assertEqual(harness.source.reconnect_delay, 6.0)
        harness.clock.advance(6)
        harness.open(b"x" * 200)
        self.assertEqual(harness.source.reconnect_delay, 12.0)

    def test_event_then_cap_not_a_storm(self) -> None:
        """retry: 0, an event, then a line too long: at most one connect a second."""
        harness = Harness(jitter=1.0, max_line_bytes=100)
        harness.start()
        harness.open(b"retry: 0\ndata: a\n\n" + b"x" * 200)
        for _ in range(20):
            delay = harness.source.reconnect_delay
            assert delay is not None
            self.assertGreaterEqual(delay, 1.5)
            harness.clock.advance(delay)
            harness.open(b"data: a\n\n" + b"x" * 200)
        self.assertEqual(len(harness.events), 21)

    def test_default_caps(self) -> None:
        """By default the caps are 16 MiB: a 1 MiB event is ordinary."""
        harness = Harness()
        harness.start()
        big = "é" * (1024 * 1024)
        response = harness.open(f"data: {big}\n\n".encode())
        self.assertEqual(harness.events, [message(big)])
        self.assertFalse(response.stopped)

    def test_bad_caps(self) -> None:
        """A cap below 1 byte is refused."""
        with self.assertRaises(ValueError):
            EventSource(URL, max_line_bytes=0, agent=FakeAgent(), reactor=Clock())
        with self.assertRaises(ValueError):
            EventSource(URL, max_event_bytes=0, agent=FakeAgent(), reactor=Clock())


# Random valid streams, as a server would emit them.
_line_text = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n\0"),
    max_size=8,
)
_events = st.builds(
    Event,
    data=st.none() | st.text(st.characters(codec="utf-8"), max_size=12),
    event=st.none() | _line_text,
    id=st.none() | _line_text,
    retry=st.none() | st.integers(0, 10**6),
    comment=st.none() | _line_text,
)


def expected_events(events: Iterable[Event], origin: str) -> list[MessageEvent]:
    """What a client must deliver for C{events}, worked out from the rules."""
    out: list[MessageEvent] = []
    last_id = ""
    for event in events:
        if event.id is not None:
            last_id = event.id
        if event.data is not None:
            out.append(
                MessageEvent(
                    type=event.event or "message",
                    data=re.sub("\r\n|\r", "\n", event.data),
                    last_event_id=last_id,
                    origin=origin,
                )
            )
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """Cut C{data} at the given offsets."""
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


class ChunkingTests(SynchronousTestCase):
    """How the body is split into chunks never changes what is delivered."""

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(_events, max_size=8),
        st.lists(st.integers(0, 10**6), max_size=30),
        st.sampled_from(["\n", "\r\n", "\r"]),
        st.booleans(),
    )
    def test_random_chunking(
        self, events: list[Event], cuts: list[int], newline: str, bom: bool
    ) -> None:
        """Any chunking of any valid stream, any line ending: the same events."""
        body = b"".join(event.encode() for event in events)
        body = body.replace(b"\n", newline.encode())
        if bom:
            body = BOM + body
        harness = Harness("http://example.com:8000/s")
        seen, done = collect(harness.source)
        harness.start()
        response = harness.open(*split(body, cuts))
        expected = expected_events(events, "http://example.com:8000")
        self.assertEqual(seen, expected)
        retries = [event.retry for event in events if event.retry is not None]
        self.assertEqual(harness.source.reconnection_time, (retries or [3000])[-1])
        response.end()
        harness.source.close()
        self.successResultOf(done)


class InMemoryServerTests(SynchronousTestCase):
    """The client against our own EventStreamResource, over in-memory HTTP."""

    def test_counter_stream(self) -> None:
        """Events, retry and the disconnect on close() work over real HTTP parsing."""
        clock = Clock()
        resource = EventStreamResource(counter(1.0), clock=clock, retry=1234)
        root = Resource()
        root.putChild(b"events", resource)
        agent = RequestTraversalAgent(root)
        source = EventSource(
            "http://127.0.0.1/events", agent=agent, reactor=clock, idle_timeout=0
        )
        seen, done = collect(source)
        clock.advance(0)
        agent.flush()
        self.assertEqual(source.ready_state, ReadyState.OPEN)
        for _ in range(3):
            clock.advance(1)
            agent.flush()
        self.assertEqual([event.data for event in seen], ["1", "2", "3"])
        self.assertEqual(seen[0].origin, "http://127.0.0.1")
        self.assertEqual(source.reconnection_time, 1234)
        self.assertEqual(len(resource.streams), 1)
        source.close()
        agent.flush()
        self.assertEqual(resource.streams, set())
        self.successResultOf(done)

    def test_redirect_and_status(self) -> None:
        """Real redirect and 204 responses are handled as the fakes say."""

        class Redirect(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                request.redirect(b"/stop")
                return b""

        class Stop(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                request.setResponseCode(204)
                return b""

        root = Resource()
        root.putChild(b"go", Redirect())
        root.putChild(b"stop", Stop())
        agent = RequestTraversalAgent(root)
        clock = Clock()
        source = EventSource("http://127.0.0.1/go", agent=agent, reactor=clock)
        errors: list[Failure] = []
        source.on_error = errors.append
        clock.advance(0)
        agent.flush()
        agent.flush()
        self.assertEqual(source.ready_state, ReadyState.CLOSED)
        self.assertTrue(error_of(errors[0]).stopped)
        self.assertEqual(clock.getDelayedCalls(), [])
