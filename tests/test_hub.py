"""
Tests for L{twisted_sse._hub}: channels over HTTP on a broker, through a real
C{twisted.web} Site with L{twisted_sse.testing.SSETestClient} and a
L{Clock}.

Publishing from a real thread is in test_hub_live.py; the whole server as a
process in test_hub_process.py.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource, Resource
from zope.interface import implementer

from twisted_sse import Event, EventParser
from twisted_sse._app import SSEApp
from twisted_sse._broker import BrokerUnavailable, IBroker, Subscription
from twisted_sse._hub import (
    HISTORY_LOST_EVENT,
    MAX_JSON_DEPTH,
    Hub,
    bearer_token_authorizer,
)
from twisted_sse._memory import MemoryBroker
from twisted_sse._stream import SlowClientPolicy
from twisted_sse._tap import LINGER, Options, _CappedBody, _Site
from twisted_sse.testing import SSETestClient, SSETestResponse

from ._helpers import EPOCH, TOKEN, HubFixture, data, ids


def first_frame_id(response: SSETestResponse) -> str:
    """The last event id that the response's first frame commits."""
    parser = EventParser()
    parser.feed(response.raw.split(b"\n\n", 1)[0] + b"\n\n")
    return parser.last_event_id


def answer(response: SSETestResponse) -> dict[str, Any]:
    """The JSON body of a non-stream response."""
    body: dict[str, Any] = json.loads(response.raw)
    return body


# Subscribing


class SubscribeTests(SynchronousTestCase):
    """GET /channels/{name} opens a stream of the channel's events."""

    def test_stream_headers(self) -> None:
        """A subscription is a 200 event stream, never with a length."""
        hub = HubFixture(self)
        response = hub.subscribe()
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.header("Content-Type"), "text/event-stream; charset=utf-8"
        )
        self.assertEqual(response.header("Cache-Control"), "no-cache")
        self.assertEqual(response.header("X-Accel-Buffering"), "no")
        self.assertIsNone(response.header("Content-Length"))
        self.assertTrue(response.connected)

    def test_first_frame_position(self) -> None:
        """The first frame sends retry and the channel's position as id."""
        hub = HubFixture(self)
        empty = hub.subscribe()
        self.assertEqual(empty.raw, f"retry: 1000\nid: {EPOCH}-0\n\n".encode())
        hub.publish("a")
        later = hub.subscribe()
        self.assertEqual(later.raw, f"retry: 1000\nid: {EPOCH}-1\n\n".encode())
        self.assertEqual(later.events, [])

    def test_live(self) -> None:
        """Events published after subscribing arrive in order with their ids."""
        hub = HubFixture(self)
        response = hub.subscribe()
        hub.publish("one")
        hub.post_json(data="two", event="update")
        self.assertEqual(data(response), ["one", "two"])
        self.assertEqual(ids(response), [f"{EPOCH}-1", f"{EPOCH}-2"])
        self.assertEqual(
            [event.type for event in response.events], ["message", "update"]
        )

    def test_new_subscriber_gets_no_history(self) -> None:
        """Without Last-Event-ID a subscriber starts live, without history."""
        hub = HubFixture(self)
        hub.publish("old")
        response = hub.subscribe()
        hub.publish("new")
        self.assertEqual(data(response), ["new"])

    def test_channels_separate(self) -> None:
        """A subscriber gets its channel's events only."""
        hub = HubFixture(self)
        news, sport = hub.subscribe("news"), hub.subscribe("sport")
        hub.publish("n", "news")
        hub.publish("s", "sport")
        self.assertEqual((data(news), data(sport)), (["n"], ["s"]))

    def test_reconnect_before_first_event(self) -> None:
        """A client that leaves before its first event misses nothing."""
        hub = HubFixture(self)
        hub.publish("before")
        first = hub.subscribe()
        first.disconnect()
        hub.publish("while away 1")
        hub.publish("while away 2")
        again = hub.subscribe(last_event_id=first.last_event_id)
        hub.publish("live")
        self.assertEqual(data(again), ["while away 1", "while away 2", "live"])

    def test_invalid_channel(self) -> None:
        """An invalid channel name gets 400 saying so."""
        hub = HubFixture(self)
        response = hub.subscribe("bad%20name")
        self.assertEqual(response.code, 400)
        self.assertEqual(
            answer(response), {"error": "invalid channel name: 'bad name'"}
        )
        self.assertEqual(hub.subscribe("-dash").code, 400)
        self.assertEqual(hub.subscribe("x" * 129).code, 400)

    def test_deeper_path(self) -> None:
        """A path below a channel is 404, not that channel."""
        hub = HubFixture(self)
        self.assertEqual(hub.subscribe("news/more").code, 404)
        self.assertEqual(hub.memory.subscriber_count("news"), 0)

    def test_head(self) -> None:
        """HEAD answers the stream headers and finishes; 400 for a bad name."""
        hub = HubFixture(self)
        response = hub.client.request("HEAD", "/channels/news")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.finished)
        self.assertEqual(hub.client.request("HEAD", "/channels/bad%20name").code, 400)

    def test_other_methods(self) -> None:
        """Other methods get 405 with Allow."""
        hub = HubFixture(self)
        response = hub.client.request("PUT", "/channels/news")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.header("Allow"), "GET, HEAD, OPTIONS, POST")

    def test_preflight(self) -> None:
        """With CORS on, the preflight allows Authorization and Last-Event-ID."""
        hub = HubFixture(self, allow_origin="*")
        response = hub.client.request("OPTIONS", "/channels/news")
        self.assertEqual(response.code, 204)
        allowed = response.header("Access-Control-Allow-Headers") or ""
        self.assertIn("Authorization", allowed)
        self.assertIn("Last-Event-ID", allowed)

    def test_disconnect_unsubscribes(self) -> None:
        """A client that goes away leaves no subscription behind."""
        hub = HubFixture(self)
        response = hub.subscribe()
        self.assertEqual(hub.memory.subscriber_count("news"), 1)
        response.disconnect()
        self.assertEqual(hub.memory.subscriber_count("news"), 0)
        self.assertEqual(hub.registry.streams, set())

    def test_broker_unavailable(self) -> None:
        """If the broker cannot subscribe, the client is told to come back."""
        hub = HubFixture(self, broker=_BrokenBroker())
        response = hub.subscribe()
        self.assertEqual(response.code, 200)
        self.assertTrue(response.finished)
        self.assertEqual(response.events, [])
        self.assertIn("redis is down", response.comments)
        assert response.retry is not None
        self.assertTrue(5000 <= response.retry <= 10000)


# Resuming


class ResumeTests(SynchronousTestCase):
    """Last-Event-ID resumes exactly; anything else gets the loss signal."""

    def setUp(self) -> None:
        self.hub = HubFixture(self, history=5)
        self.published = [self.hub.publish(str(n)) for n in range(1, 8)]

    def assert_lost(self, response: SSETestResponse, reason: str) -> None:
        """The response carries the loss header and starts with the event."""
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("SSE-History-Lost"), reason)
        self.assertEqual(len(response.events), 1)
        lost = response.events[0]
        self.assertEqual(lost.type, HISTORY_LOST_EVENT)
        self.assertEqual(json.loads(lost.data), {"reason": reason})
        # The client resumes from the channel's position next time.
        self.assertEqual(lost.last_event_id, f"{EPOCH}-7")

    def test_header(self) -> None:
        """Last-Event-ID replays every event strictly after it, then live."""
        response = self.hub.subscribe(last_event_id=f"{EPOCH}-4")
        self.hub.publish("8")
        self.assertEqual(data(response), ["5", "6", "7", "8"])
        self.assertEqual(ids(response), [f"{EPOCH}-{n}" for n in (5, 6, 7, 8)])
        self.assertIsNone(response.header("SSE-History-Lost"))

    def test_query_parameter(self) -> None:
        """The polyfills' lastEventId query parameter resumes the same way."""
        response = self.hub.subscribe(query=f"?lastEventId={EPOCH}-6")
        self.assertEqual(data(response), ["7"])

    def test_header_first(self) -> None:
        """The header wins over the query parameter."""
        response = self.hub.subscribe(
            last_event_id=f"{EPOCH}-6", query=f"?lastEventId={EPOCH}-3"
        )
        self.assertEqual(data(response), ["7"])

    def test_latest(self) -> None:
        """Resuming from the latest id replays nothing and loses nothing."""
        response = self.hub.subscribe(last_event_id=f"{EPOCH}-7")
        self.assertEqual(response.events, [])
        self.assertIsNone(response.header("SSE-History-Lost"))
        self.assertEqual(response.raw, b"retry: 1000\n\n")

    def test_oldest_kept(self) -> None:
        """The id just before the oldest kept event still resumes exactly."""
        response = self.hub.subscribe(last_event_id=f"{EPOCH}-2")
        self.assertEqual(data(response), ["3", "4", "5", "6", "7"])

    def test_trimmed(self) -> None:
        """An id older than the history gets the 'trimmed' loss signal."""
        response = self.hub.subscribe(last_event_id=f"{EPOCH}-1")
        self.assert_lost(response, "trimmed")

    def test_trimmed_by_bytes(self) -> None:
        """History is bounded in bytes too: beyond it, 'trimmed'."""
        hub = HubFixture(self, history_bytes=100)
        for _ in range(5):
            hub.publish("x" * 40)
        response = hub.subscribe(last_event_id=f"{EPOCH}-2")
        self.assertEqual(response.header("SSE-History-Lost"), "trimmed")

    def test_malformed(self) -> None:
        """A malformed id gets the 'malformed' loss signal."""
        self.assert_lost(self.hub.subscribe(last_event_id="nonsense"), "malformed")

    def test_unknown_future(self) -> None:
        """An id the channel never reached gets the 'unknown' loss signal."""
        self.assert_lost(self.hub.subscribe(last_event_id=f"{EPOCH}-99"), "unknown")

    def test_unknown_earlier_run(self) -> None:
        """An id of an earlier run (another epoch) gets 'unknown'."""
        self.assert_lost(self.hub.subscribe(last_event_id=f"{EPOCH - 1}-3"), "unknown")

    def test_live_after_loss(self) -> None:
        """After the loss signal the stream goes live."""
        response = self.hub.subscribe(last_event_id="nonsense")
        self.hub.publish("8")
        self.assertEqual(data(response)[1:], ["8"])

    def test_resume_after_loss(self) -> None:
        """A client that resumes from the loss event's id misses nothing more."""
        lost = self.hub.subscribe(last_event_id="nonsense")
        lost.disconnect()
        self.hub.publish("8")
        again = self.hub.subscribe(last_event_id=lost.last_event_id)
        self.assertEqual(data(again), ["8"])
        self.assertIsNone(again.header("SSE-History-Lost"))

    def test_empty_id_is_fresh(self) -> None:
        """An empty Last-Event-ID is a fresh subscription, not a loss."""
        response = self.hub.subscribe(last_event_id="")
        self.assertIsNone(response.header("SSE-History-Lost"))
        self.assertEqual(first_frame_id(response), f"{EPOCH}-7")

    def test_client_id_never_echoed(self) -> None:
        """Whatever id a client sends, the server never writes it back."""
        for sent in (
            "evil<script>",
            f"{EPOCH}-3 injected",
            "id: forged",
            f"{EPOCH}-99999",
            f"{EPOCH - 5}-4",
            "\u2028x",
        ):
            response = self.hub.subscribe(last_event_id=sent)
            self.assertNotIn(sent.encode("utf-8"), response.wire)
            response.disconnect()
        query = self.hub.subscribe(query="?lastEventId=%3Cscript%3E")
        self.assertNotIn(b"<script>", query.wire)


@implementer(IBroker)
class _SlowBroker:
    """
    A broker whose subscribe goes live at once but answers later (as a
    networked broker would): events meanwhile reach the hub's handoff
    before its stream exists.
    """

    available = True

    def __init__(self, inner: MemoryBroker) -> None:
        self.inner = inner
        self.waiting: list[Callable[[], None]] = []

    def publish(self, channel: str, event: Event, key: str | None = None) -> Any:
        return self.inner.publish(channel, event, key)

    def subscribe(self, channel: str, deliver: Any, last_event_id: Any = None) -> Any:
        made: list[Subscription] = []
        self.inner.subscribe(channel, deliver, last_event_id).addCallback(made.append)
        later: Deferred[Subscription] = Deferred()
        self.waiting.append(lambda: later.callback(made[0]))
        return later

    def subscribe_now(
        self, channel: str, deliver: Any, last_event_id: Any = None
    ) -> Subscription | None:
        return None

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def answer(self) -> None:
        self.waiting.pop(0)()


@implementer(IBroker)
class _BrokenBroker:
    """A broker that is down."""

    available = False

    def publish(self, channel: str, event: Event, key: str | None = None) -> Any:
        return Deferred.fromCoroutine(self._fail())

    def subscribe(self, channel: str, deliver: Any, last_event_id: Any = None) -> Any:
        return Deferred.fromCoroutine(self._fail())

    async def _fail(self) -> Any:
        raise BrokerUnavailable("redis is down")

    def subscribe_now(
        self, channel: str, deliver: Any, last_event_id: Any = None
    ) -> Subscription | None:
        return None

    def stop(self) -> Deferred[None]:
        return succeed(None)


class HandoffTests(SynchronousTestCase):
    """The replay-to-live handoff has no gap and no duplicate."""

    def test_publishing_during_authorizer(self) -> None:
        """Events published while the authoriser decides are replayed once."""
        decisions: list[Deferred[bool]] = []

        def later(request: Any, channel: str) -> Deferred[bool]:
            decisions.append(Deferred())
            return decisions[-1]

        hub = HubFixture(self, authorizer=later)
        for n in range(1, 4):
            hub.publish(str(n))
        response = hub.subscribe(last_event_id=f"{EPOCH}-1")
        hub.publish("4")
        hub.publish("5")
        self.assertEqual(response.code, None)
        decisions[0].callback(True)
        hub.publish("6")
        self.assertEqual(data(response), ["2", "3", "4", "5", "6"])
        self.assertEqual(ids(response), [f"{EPOCH}-{n}" for n in range(2, 7)])

    def test_publishing_during_subscribe(self) -> None:
        """Events that go live before the broker answers arrive once, in order."""
        memory = MemoryBroker(epoch=EPOCH)
        slow = _SlowBroker(memory)
        hub = HubFixture(self, broker=slow)
        hub.memory = memory
        for n in range(1, 4):
            hub.publish(str(n))
        response = hub.subscribe(last_event_id=f"{EPOCH}-1")
        hub.publish("4")
        hub.publish("5")
        self.assertEqual(response.events, [])
        slow.answer()
        hub.publish("6")
        self.assertEqual(data(response), ["2", "3", "4", "5", "6"])

    def catching_up(
        self, **options: Any
    ) -> tuple[HubFixture, _SlowBroker, SSETestResponse, list[int]]:
        """
        A client resuming from the start of 50 events that reads one event
        at a time: it stops reading as each event arrives, until resumed.
        """
        memory = MemoryBroker(epoch=EPOCH, history=options.pop("history", 1000))
        slow = _SlowBroker(memory)
        hub = HubFixture(self, broker=slow, **options)
        hub.memory = memory
        for n in range(1, 51):
            hub.publish(str(n))
        response = hub.subscribe(last_event_id=f"{EPOCH}-0")
        pauses: list[int] = []

        def pause(event: object) -> None:
            pauses.append(len(response.events))
            response.pause_reading()
            wait()

        def wait() -> None:
            # Once the connection is cut, no next event: that is expected.
            response.next_event().addCallbacks(pause, lambda failure: None)

        wait()
        slow.answer()
        return hub, slow, response, pauses

    def test_catch_up_paced(self) -> None:
        """A backlog larger than the queue is fed as fast as the client reads."""
        hub, _, response, pauses = self.catching_up(max_queue_events=5)
        self.assertEqual(data(response), ["1"])
        for _ in range(49):
            response.resume_reading()
        self.assertTrue(response.connected)
        self.assertEqual(data(response), [str(n) for n in range(1, 51)])
        self.assertEqual(pauses, list(range(1, 51)))
        (stream,) = hub.registry.streams
        self.assertEqual(stream.dropped, 0)
        hub.publish("51")
        response.resume_reading()
        self.assertEqual(data(response)[-1], "51")

    def test_catch_up_drop_oldest(self) -> None:
        """Under drop-oldest too, a client catching up loses nothing."""
        _, _, response, _ = self.catching_up(
            max_queue_events=5, policy=SlowClientPolicy.DROP_OLDEST
        )
        for _ in range(49):
            response.resume_reading()
        self.assertEqual(data(response), [str(n) for n in range(1, 51)])

    def test_live_during_catch_up(self) -> None:
        """Live events published during the catch-up follow it, in order."""
        hub, _, response, _ = self.catching_up(max_queue_events=5)
        for n in range(51, 55):
            hub.publish(str(n))
        for _ in range(60):
            response.resume_reading()
        self.assertEqual(data(response), [str(n) for n in range(1, 55)])

    def test_catch_up_holds_a_cursor(self) -> None:
        """A resumer that does not read holds its queue bound, not the history."""
        hub, _, response, _ = self.catching_up(max_queue_events=5)
        (stream,) = hub.registry.streams
        # One event was taken and the client stopped reading: what waits for
        # it is bounded by its queue, the rest of the replay is a cursor.
        self.assertLessEqual(stream.queued, 5)
        for n in range(51, 57):
            hub.publish(str(n))
        self.assertTrue(response.connected)
        self.assertLessEqual(stream.queued, 5)
        for _ in range(60):
            response.resume_reading()
        self.assertEqual(data(response), [str(n) for n in range(1, 57)])

    def test_not_keeping_up(self) -> None:
        """A stalled resumer that the history moves past meets its policy."""
        hub, _, response, _ = self.catching_up(max_queue_events=5, history=60)
        # 50 events, then 10 more: the oldest kept is still after its cursor.
        for n in range(51, 61):
            hub.publish(str(n))
        self.assertTrue(response.connected)
        for n in range(61, 71):
            hub.publish(str(n))
        self.assertFalse(response.connected)
        self.assertEqual(hub.memory.subscriber_count("news"), 0)

    def test_not_keeping_up_drop_oldest(self) -> None:
        """Under drop-oldest, a stalled resumer is told of the loss in-band."""
        hub, _, response, _ = self.catching_up(
            max_queue_events=5, policy=SlowClientPolicy.DROP_OLDEST, history=60
        )
        for n in range(51, 71):
            hub.publish(str(n))
        self.assertTrue(response.connected)
        for _ in range(100):
            response.resume_reading()
        received = [(event.type, event.data) for event in response.events]
        losses = [n for n, (kind, _) in enumerate(received) if kind != "message"]
        first, lost = losses[0], losses[-1]
        self.assertEqual(received[lost], ("history-lost", '{"reason": "trimmed"}'))
        before = [int(text) for _, text in received[:first]]
        after = [int(text) for _, text in received[lost + 1 :]]
        # In order before the signal; after the last one, whose id is
        # exact, everything still kept.
        self.assertEqual(before, sorted(before))
        self.assertEqual(after, list(range(after[0], 71)))
        self.assertLessEqual(after[0], 71 - 60 + 1)
        self.assertEqual(response.events[lost].last_event_id, f"{EPOCH}-{after[0] - 1}")

    def test_gone_during_subscribe(self) -> None:
        """A client that leaves before the broker answers leaves nothing."""
        memory = MemoryBroker(epoch=EPOCH)
        slow = _SlowBroker(memory)
        hub = HubFixture(self, broker=slow)
        hub.memory = memory
        response = hub.subscribe()
        response.disconnect()
        slow.answer()
        self.assertEqual(memory.subscriber_count("news"), 0)
        self.assertEqual(hub.registry.streams, set())
        # The request's finish Deferred failed with the disconnect: it must
        # not be reported as an unhandled error once collected.
        del response
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_publishing_interleaved_with_resumes(self) -> None:
        """Clients resuming between publishes each see every event once."""
        hub = HubFixture(self)
        responses = [hub.subscribe()]
        for n in range(1, 31):
            hub.publish(str(n))
            if n % 3 == 0:
                last = responses[-1]
                last.disconnect()
                hub.publish(f"{n}b")
                responses.append(hub.subscribe(last_event_id=last.last_event_id))
        got = [event for response in responses for event in response.events]
        seqs = [int(event.last_event_id.split("-")[1]) for event in got]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        self.assertEqual(len(seqs), 40)


_OPS = st.lists(
    st.tuples(
        st.sampled_from(
            # Publishing three times as often as anything else keeps events
            # flowing between the changes.
            ["publish"] * 3 + ["connect", "disconnect", "answer", "pause", "resume"]
        ),
        st.integers(min_value=0, max_value=2),
    ),
    max_size=80,
)


class ResumePropertyTests(SynchronousTestCase):
    """Exactly once, in order, for any interleaving."""

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(ops=_OPS, slow_broker=st.booleans(), slow_authorizer=st.booleans())
    def test_exactly_once(
        self,
        ops: list[tuple[str, int]],
        slow_broker: bool,
        slow_authorizer: bool,
    ) -> None:
        """
        Subscribers that connect, leave, stop reading (and are cut off) and
        resume with Last-Event-ID at any moment, while events are published
        and subscriptions are pending, each receive exactly the published
        sequence from their start.
        """
        clock = Clock()
        memory = MemoryBroker(epoch=EPOCH)
        slow = _SlowBroker(memory)
        waiting: list[Callable[[], None]] = slow.waiting

        def authorizer(request: Any, channel: str) -> Deferred[bool]:
            decided: Deferred[bool] = Deferred()
            waiting.append(lambda: decided.callback(True))
            return decided

        hub = Hub(
            slow if slow_broker else memory,
            clock=clock,
            authorizer=authorizer if slow_authorizer else None,
            max_queue_events=2,
        )
        client = SSETestClient(hub.resource(), clock)
        published: list[str] = []
        connections: list[list[SSETestResponse]] = [[], [], []]

        def connect(who: int) -> None:
            mine = connections[who]
            if mine and mine[-1].connected:
                return
            last_id = mine[-1].last_event_id if mine else ""
            mine.append(client.get("/news", last_event_id=last_id or None))

        def run(op: str, who: int) -> None:
            if op == "publish":
                published.append(str(len(published) + 1))
                hub.publish("news", Event(data=published[-1]))
            elif op == "connect":
                connect(who)
            elif op == "disconnect":
                if connections[who]:
                    connections[who][-1].disconnect()
            elif op == "pause":
                if connections[who]:
                    connections[who][-1].pause_reading()
            elif op == "resume":
                if connections[who]:
                    connections[who][-1].resume_reading()
            elif waiting:
                waiting.pop(who % len(waiting))()

        for who in range(3):
            connect(who)
        for op, who in ops:
            run(op, who)
        # Everyone reads again and comes back at the end (those cut off for
        # not reading too), and every pending answer arrives.
        for mine in connections:
            if mine:
                mine[-1].resume_reading()
        for who in range(3):
            connect(who)
        while waiting:
            waiting.pop(0)()
        published.append(str(len(published) + 1))
        hub.publish("news", Event(data=published[-1]))

        for who, mine in enumerate(connections):
            opened = [response for response in mine if response.raw]
            self.assertTrue(opened, f"subscriber {who} never got a stream")
            position = first_frame_id(opened[0])
            self.assertRegex(position, f"^{EPOCH}-[0-9]+$", "no position in frame 1")
            start = int(position.split("-")[1])
            got = [event for response in mine for event in response.events]
            self.assertEqual(
                [event.data for event in got],
                published[start:],
                f"subscriber {who}",
            )
            self.assertEqual(
                [event.last_event_id for event in got],
                [f"{EPOCH}-{n}" for n in range(start + 1, len(published) + 1)],
            )
            for response in mine:
                self.assertIsNone(response.header("SSE-History-Lost"))
        client.disconnect_all()
        client.assert_clean(hub.registry, brokers=[memory], testcase=self)


# Publishing


class PublishTests(SynchronousTestCase):
    """POST /channels/{name} publishes and answers the id."""

    def test_json(self) -> None:
        """A JSON body publishes data, event and retry; the answer is the id."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        response = hub.post_json(data="hello", event="greeting", retry=2500)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("Content-Type"), "application/json")
        self.assertEqual(answer(response), {"id": f"{EPOCH}-1"})
        self.assertEqual(
            subscriber.raw.split(b"\n\n", 1)[1],
            f"retry: 2500\nid: {EPOCH}-1\nevent: greeting\ndata: hello\n\n".encode(),
        )
        self.assertEqual(subscriber.retry, 2500)

    def test_json_values(self) -> None:
        """Data that is not a string is sent as its compact JSON text."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        values: list[Any] = [{"a": [1, 2]}, [1, "x"], 42, 1.5, True, None, "é"]
        for value in values:
            self.assertEqual(hub.post_json(data=value).code, 200)
        self.assertEqual(
            data(subscriber),
            ['{"a":[1,2]}', '[1,"x"]', "42", "1.5", "true", "null", "é"],
        )

    def test_multiline_data(self) -> None:
        """Data with line breaks arrives whole, one data line per line."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        hub.post_json(data="one\ntwo\r\nthree")
        self.assertIn(b"data: one\ndata: two\ndata: three\n\n", subscriber.raw)
        self.assertEqual(data(subscriber), ["one\ntwo\nthree"])

    def test_text_plain(self) -> None:
        """A text/plain body is the data of a message event."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        response = hub.post(b"plain text\nline 2", content_type="text/plain")
        self.assertEqual(answer(response), {"id": f"{EPOCH}-1"})
        self.assertEqual(data(subscriber), ["plain text\nline 2"])
        self.assertEqual(subscriber.events[0].type, "message")

    def test_no_content_type(self) -> None:
        """A body without a Content-Type is taken as text."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        self.assertEqual(hub.post(b"{not json", content_type=None).code, 200)
        self.assertEqual(data(subscriber), ["{not json"])

    def test_content_type_parameters(self) -> None:
        """Content-Type parameters and case do not matter."""
        hub = HubFixture(self)
        response = hub.post(
            b'{"data": "x"}', content_type="Application/JSON; charset=utf-8"
        )
        self.assertEqual(answer(response), {"id": f"{EPOCH}-1"})

    def test_ids_increase(self) -> None:
        """Each publish answers the next id of its channel."""
        hub = HubFixture(self)
        got = [answer(hub.post_json(data="x"))["id"] for _ in range(3)]
        self.assertEqual(got, [f"{EPOCH}-1", f"{EPOCH}-2", f"{EPOCH}-3"])

    def test_publish_kept_in_history(self) -> None:
        """Published events are in the history for resuming clients."""
        hub = HubFixture(self)
        hub.post_json(data="a")
        hub.post_json(data="b")
        self.assertEqual(data(hub.subscribe(last_event_id=f"{EPOCH}-0")), ["a", "b"])

    def test_klein_app(self) -> None:
        """The app twistd serves publishes and subscribes on /channels/..."""
        clock = Clock()
        broker = MemoryBroker(epoch=EPOCH)
        app = SSEApp(clock, broker=broker, publish_token=TOKEN)
        client = SSETestClient(app.resource(), clock)
        subscriber = client.get("/channels/news")
        posted = client.request(
            "POST",
            "/channels/news",
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"},
            b"via klein",
        )
        self.assertEqual(answer(posted), {"id": f"{EPOCH}-1"})
        self.assertEqual(data(subscriber), ["via klein"])
        counter = client.get("/events")
        client.advance(2)
        self.assertEqual(data(counter), ["1", "2"])
        client.disconnect_all()
        client.assert_clean(
            app.registry, app.heartbeat, brokers=[broker], testcase=self
        )


class PublishRefusedTests(SynchronousTestCase):
    """Every refused publish gets a 4xx and a JSON reason."""

    def assert_refused(self, response: SSETestResponse, code: int, reason: str) -> None:
        self.assertEqual(response.code, code)
        self.assertEqual(response.header("Content-Type"), "application/json")
        error = answer(response)["error"]
        self.assertIn(reason, error)

    def setUp(self) -> None:
        self.hub = HubFixture(self, max_event_bytes=100)
        self.subscriber = self.hub.subscribe()

    def tearDown(self) -> None:
        # Nothing refused was published.
        self.assertEqual(self.subscriber.events, [])

    def test_publishing_disabled(self) -> None:
        """Without a configured token, publishing is off: 403 saying so."""
        hub = HubFixture(self, publish_token=None)
        response = hub.post(b'{"data": "x"}')
        self.assert_refused(
            response, 403, "publishing over HTTP is disabled: start the server with "
        )
        self.assertIn("--publish-token", answer(response)["error"])

    def test_no_token(self) -> None:
        """No Authorization header: 401 with WWW-Authenticate."""
        response = self.hub.post(b'{"data": "x"}', token=None)
        self.assert_refused(
            response, 401, "a valid Authorization: Bearer token is required"
        )
        self.assertEqual(
            response.header("WWW-Authenticate"), 'Bearer realm="twisted_sse"'
        )

    def test_wrong_token(self) -> None:
        """A wrong token: 401."""
        self.assert_refused(
            self.hub.post(b'{"data": "x"}', token="guess"), 401, "Bearer token"
        )

    def test_wrong_scheme(self) -> None:
        """The token in another scheme (Basic) is not accepted: 401."""
        response = self.hub.post(b'{"data": "x"}', authorization=f"Basic {TOKEN}")
        self.assert_refused(response, 401, "Bearer token")

    def test_scheme_case(self) -> None:
        """The Bearer scheme is case-insensitive."""
        response = self.hub.post(b'{"data": "x"}', authorization=f"bearer {TOKEN}")
        self.assertEqual(response.code, 200)
        self.subscriber.events.clear()

    def test_token_checked_first(self) -> None:
        """Without the token, even a bad body only learns 401."""
        self.assertEqual(self.hub.post(b"x" * 1000, token=None).code, 401)

    def test_too_large(self) -> None:
        """A body over max_event_bytes: 413 naming the limit."""
        body = json.dumps({"data": "x" * 200}).encode()
        self.assert_refused(
            self.hub.post(body), 413, "the body is larger than 100 bytes"
        )

    def test_at_limit(self) -> None:
        """A body of exactly max_event_bytes is accepted."""
        self.assertEqual(self.hub.post(b"y" * 100, content_type="text/plain").code, 200)
        self.subscriber.events.clear()

    def test_bad_json(self) -> None:
        """Invalid JSON: 400 saying so."""
        self.assert_refused(
            self.hub.post(b'{"data": '), 400, "the body is not valid JSON"
        )

    def test_not_object(self) -> None:
        """JSON that is not an object: 400."""
        self.assert_refused(
            self.hub.post(b'["data"]'), 400, "the JSON body must be an object"
        )

    def test_missing_data(self) -> None:
        """An object without data: 400."""
        self.assert_refused(
            self.hub.post(b'{"event": "x"}'), 400, "the field 'data' is required"
        )

    def test_unknown_field(self) -> None:
        """An unknown field: 400 naming it."""
        self.assert_refused(
            self.hub.post(b'{"data": "x", "id": "1"}'), 400, "unknown field 'id'"
        )

    def test_newline_in_event(self) -> None:
        """A line break in the event type (frame injection): 400."""
        for event in ("a\nevent: forged", "a\rb"):
            body = json.dumps({"data": "x", "event": event}).encode()
            self.assert_refused(
                self.hub.post(body), 400, "event must not contain a CR or LF"
            )

    def test_event_not_string(self) -> None:
        """An event type that is not a string: 400."""
        self.assert_refused(
            self.hub.post(b'{"data": "x", "event": 5}'), 400, "event must be a string"
        )

    def test_bad_retry(self) -> None:
        """A retry that is not an integer from 0 to 2**31 - 1 ms: 400."""
        for retry in ("-1", '"5"', "1.5", "true", "[]", "2147483648", "9" * 16):
            body = b'{"data": "x", "retry": %s}' % retry.encode()
            self.assert_refused(
                self.hub.post(body),
                400,
                "retry must be an integer from 0 to 2147483647 (ms)",
            )

    def test_largest_retry(self) -> None:
        """The largest retry a browser's timer holds is accepted and sent."""
        hub = HubFixture(self)
        subscriber = hub.subscribe()
        response = hub.post(b'{"data": "x", "retry": 2147483647}')
        self.assertEqual(response.code, 200)
        self.assertEqual(subscriber.events[-1].data, "x")
        self.assertIn(b"retry: 2147483647\n", subscriber.raw)

    def test_deep_json(self) -> None:
        """A body nested past MAX_JSON_DEPTH: 400 naming the limit, no traceback."""
        hub = HubFixture(self, max_event_bytes=1_000_000)
        subscriber = hub.subscribe()
        for body in (
            b"[" * 60_000 + b"]" * 60_000,
            b'{"data": ' + b"[" * 60_000 + b"]" * 60_000 + b"}",
            b'{"data": ' + b"[" * (MAX_JSON_DEPTH) + b"]" * (MAX_JSON_DEPTH) + b"}",
            b'{"data": ' + b'{"a": ' * MAX_JSON_DEPTH + b"1" + b"}" * 65,
        ):
            self.assert_refused(
                hub.post(body, token=TOKEN),
                400,
                f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels",
            )
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(subscriber.events, [])
        # As deep as allowed: published.
        nested = b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1)
        response = hub.post(b'{"data": ' + nested + b"}")
        self.assertEqual(response.code, 200)
        self.assertEqual(subscriber.events[-1].data, nested.decode())

    def test_bad_key(self) -> None:
        """A key that is not a short string: 400."""
        hub = HubFixture(self)
        for key in ("5", json.dumps("k" * 257)):
            body = b'{"data": "x", "key": %s}' % key.encode()
            self.assert_refused(hub.post(body), 400, "key must be a string")

    def test_not_utf8(self) -> None:
        """A body that is not UTF-8: 400."""
        self.assert_refused(
            self.hub.post(b"\xff\xfe", content_type="text/plain"),
            400,
            "the body is not UTF-8",
        )

    def test_lone_surrogate(self) -> None:
        """Data that cannot be UTF-8 (a lone surrogate in JSON): 400."""
        self.assert_refused(
            self.hub.post(b'{"data": "\\ud800"}'),
            400,
            "data must not contain a lone surrogate",
        )

    def test_unsupported_type(self) -> None:
        """Another Content-Type: 415 naming the accepted ones."""
        self.assert_refused(
            self.hub.post(b"data=x", content_type="application/x-www-form-urlencoded"),
            415,
            "use application/json or text/plain",
        )

    def test_invalid_channel(self) -> None:
        """Publishing on an invalid channel name: 400."""
        self.assert_refused(
            self.hub.post(b'{"data": "x"}', channel="bad%20name"),
            400,
            "invalid channel name",
        )

    def test_broker_unavailable(self) -> None:
        """A broker that is down: 503 saying so."""
        hub = HubFixture(self, broker=_BrokenBroker())
        self.assert_refused(
            hub.post(b'{"data": "x"}'), 503, "broker unavailable: redis is down"
        )


# Authorising subscribers


class AuthorizerTests(SynchronousTestCase):
    """A pluggable authoriser decides who may subscribe."""

    def test_refused(self) -> None:
        """An authoriser saying no gets 403 and no subscription."""
        seen: list[tuple[Any, str]] = []

        def nobody(request: Any, channel: str) -> bool:
            seen.append((request, channel))
            return False

        hub = HubFixture(self, authorizer=nobody)
        response = hub.subscribe("secret")
        self.assertEqual(response.code, 403)
        self.assertEqual(answer(response), {"error": "not allowed to subscribe"})
        self.assertEqual(seen[0][1], "secret")
        self.assertEqual(hub.memory.subscriber_count("secret"), 0)

    def test_allowed(self) -> None:
        """An authoriser saying yes lets the stream open."""
        hub = HubFixture(self, authorizer=lambda request, channel: True)
        response = hub.subscribe()
        hub.publish("x")
        self.assertEqual(data(response), ["x"])

    def test_deferred(self) -> None:
        """An authoriser may answer later, with a Deferred."""
        decided: Deferred[bool] = Deferred()
        hub = HubFixture(self, authorizer=lambda request, channel: decided)
        response = hub.subscribe()
        self.assertIsNone(response.code)
        decided.callback(False)
        self.assertEqual(response.code, 403)

    def test_gone_while_deciding(self) -> None:
        """A client that leaves while the authoriser decides is not subscribed."""
        decided: Deferred[bool] = Deferred()
        hub = HubFixture(self, authorizer=lambda request, channel: decided)
        hub.subscribe().disconnect()
        decided.callback(True)
        self.assertEqual(hub.memory.subscriber_count("news"), 0)

    def test_failing(self) -> None:
        """An authoriser that fails gets 500 and is logged."""

        def broken(request: Any, channel: str) -> bool:
            raise ZeroDivisionError()

        hub = HubFixture(self, authorizer=broken)
        response = hub.subscribe()
        self.assertEqual(response.code, 500)
        self.assertEqual(answer(response), {"error": "internal error"})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_bearer_header(self) -> None:
        """bearer_token_authorizer accepts Authorization: Bearer <token>."""
        hub = HubFixture(self, authorizer=bearer_token_authorizer("reader"))
        self.assertEqual(hub.subscribe().code, 403)
        ok = hub.subscribe(headers={"Authorization": "Bearer reader"})
        self.assertTrue(ok.connected)
        wrong = hub.subscribe(headers={"Authorization": "Bearer writer"})
        self.assertEqual(wrong.code, 403)

    def test_bearer_query(self) -> None:
        """bearer_token_authorizer accepts ?access_token= for EventSource."""
        hub = HubFixture(self, authorizer=bearer_token_authorizer("reader"))
        self.assertTrue(hub.subscribe(query="?access_token=reader").connected)
        self.assertEqual(hub.subscribe(query="?access_token=nope").code, 403)

    def test_bearer_per_channel(self) -> None:
        """With a mapping, each channel has its token; others are refused."""
        hub = HubFixture(
            self, authorizer=bearer_token_authorizer({"a": "token-a", "b": "token-b"})
        )
        a = {"Authorization": "Bearer token-a"}
        self.assertTrue(hub.subscribe("a", headers=a).connected)
        self.assertEqual(hub.subscribe("b", headers=a).code, 403)
        self.assertEqual(hub.subscribe("c", headers=a).code, 403)


# Fan-out


class FanOutTests(SynchronousTestCase):
    """
    A channel's own slow-client policy, and one encoding of each event
    shared by every subscriber.
    """

    def test_channel_policy(self) -> None:
        """A channel's own policy overrides the server-wide one."""
        hub = HubFixture(
            self,
            max_queue_events=2,
            channel_policies={"ticker": SlowClientPolicy.LATEST},
        )
        news, ticker = hub.subscribe("news"), hub.subscribe("ticker")
        news.pause_reading()
        ticker.pause_reading()
        for n in range(5):
            hub.publish(str(n), "news")
            hub.publish(str(n), "ticker")
        self.assertFalse(news.connected)
        self.assertTrue(ticker.connected)
        ticker.resume_reading()
        self.assertEqual(data(ticker), ["4"])

    def test_same_bytes_to_every_subscriber(self) -> None:
        """Each event is written as the very same bytes object to every stream."""
        hub = HubFixture(self)
        for _ in range(5):
            hub.subscribe()
        written: list[list[bytes]] = []
        for stream in hub.registry.streams:
            frames: list[bytes] = []
            written.append(frames)
            stream.request.write = _recording(stream.request.write, frames)
        hub.publish("shared")
        hub.post_json(data="shared too")
        for frames in written:
            self.assertEqual(len(frames), 2)
            for mine, first in zip(frames, written[0], strict=True):
                self.assertIs(mine, first)

    def test_encoded_once(self) -> None:
        """An event is encoded once per publish, however many subscribers."""
        hub = HubFixture(self)
        for _ in range(10):
            hub.subscribe()
        calls: list[Event] = []
        original = Event.encode

        def counting(event: Event) -> bytes:
            calls.append(event)
            return original(event)

        self.patch(Event, "encode", counting)
        hub.post_json(data="x")
        self.assertEqual([event.data for event in calls if event.data], ["x"])


def _recording(
    send: Callable[[bytes], object], frames: list[bytes]
) -> Callable[[bytes], object]:
    """Wrap a stream's way to the wire to keep the frames it sends."""

    def record(frame: bytes) -> object:
        frames.append(frame)
        return send(frame)

    return record


class ChannelResourceSharingTests(SynchronousTestCase):
    """Subscribers of one channel share its resource while any is open."""

    def test_shared_while_live(self) -> None:
        """One resource serves a channel's streams until the last one ends."""
        hub = HubFixture(self)
        before = hub.hub.channel_resource("news")
        first, second = hub.subscribe(), hub.subscribe()
        live = hub.hub.channel_resource("news")
        self.assertIsNot(live, before)
        self.assertIs(hub.hub.channel_resource("news"), live)
        self.assertEqual(len(live.streams), 2)
        self.assertIsNot(hub.hub.channel_resource("sport"), live)
        self.assertEqual(hub.hub.live_channels, ["news"])
        first.disconnect()
        self.assertIs(hub.hub.channel_resource("news"), live)
        second.disconnect()
        self.assertIsNot(hub.hub.channel_resource("news"), live)
        self.assertEqual(hub.hub.live_channels, [])

    def test_names_never_subscribed_are_not_kept(self) -> None:
        """Requests for many channel names leave nothing behind."""
        hub = HubFixture(self)
        for n in range(50):
            response = hub.post_json(channel=f"c{n}", data="x")
            self.assertEqual(response.code, 200)
            hub.client.request("HEAD", f"/channels/c{n}")
        self.assertEqual(hub.hub.live_channels, [])


class _DeferringMemoryBroker(MemoryBroker):
    """
    An in-memory broker whose subscribe answers only when told to, and
    that says so by answering ``None`` to ``subscribe_now``.
    """

    def __init__(self) -> None:
        super().__init__(epoch=EPOCH)
        self.waiting: list[Callable[[], None]] = []

    def subscribe(
        self, channel: str, deliver: Any, last_event_id: str | None = None
    ) -> Deferred[Subscription]:
        answer: Deferred[Subscription] = Deferred()

        def made(subscription: Subscription) -> None:
            self.waiting.append(lambda: answer.callback(subscription))

        super().subscribe(channel, deliver, last_event_id).addCallback(made)
        return answer

    def subscribe_now(
        self, channel: str, deliver: Any, last_event_id: str | None = None
    ) -> Subscription | None:
        return None

    def answer(self) -> None:
        self.waiting.pop(0)()


class SynchronousSubscribeTests(SynchronousTestCase):
    """
    On a broker that answers at once the stream opens while the request
    renders, with no Deferred on the way; a broker that answers later says
    so, and is waited for.
    """

    def test_open_while_rendering(self) -> None:
        """The in-memory broker's subscriber is live before render returns."""
        hub = HubFixture(self)

        def deferred(*args: Any) -> Any:
            self.fail("subscribed through the Deferred")

        self.patch(hub.memory, "subscribe", deferred)
        response = hub.subscribe()
        self.assertEqual(response.code, 200)
        self.assertEqual(first_frame_id(response), f"{EPOCH}-0")
        hub.publish("a")
        self.assertEqual(data(response), ["a"])
        (stream,) = hub.hub.channel_resource("news").streams
        response.disconnect()
        self.assertEqual(stream.close_reason, "lost")
        self.assertEqual(hub.memory.subscriber_count("news"), 0)

    def test_subclass_subscribe_honoured(self) -> None:
        """A broker that answers subscribe_now with None is waited for."""
        broker = _DeferringMemoryBroker()
        hub = HubFixture(self, broker=broker)
        hub.memory = broker
        response = hub.subscribe()
        self.assertIsNone(response.code)
        hub.publish("a")
        broker.answer()
        self.assertEqual(response.code, 200)
        hub.publish("b")
        self.assertEqual(data(response), ["a", "b"])

    def test_subclass_client_gone_before_answer(self) -> None:
        """A client gone before a late answer leaves no subscriber."""
        broker = _DeferringMemoryBroker()
        hub = HubFixture(self, broker=broker)
        hub.memory = broker
        response = hub.subscribe()
        self.assertIsNone(response.code)
        response.disconnect()
        broker.answer()
        self.assertEqual(broker.subscriber_count("news"), 0)
        self.assertEqual(hub.hub.channel_resource("news").streams, set())

    def test_open_failure_cancels(self) -> None:
        """A failure while opening the stream leaves no subscriber behind."""
        hub = HubFixture(self)
        resource = hub.hub.channel_resource("news")

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("broken")

        self.patch(resource, "open_stream", broken)
        self.patch(hub.hub, "channel_resource", lambda channel: resource)
        response = hub.subscribe()
        self.assertEqual(response.code, 500)
        self.assertEqual(hub.memory.subscriber_count("news"), 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


# twistd options


class TwistdOptionsTests(SynchronousTestCase):
    """twistd sse has an option for each hub setting."""

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        """Publishing is off, history is 1000, drain 5 s, no limits."""
        self.patch(os, "environ", {})
        options = self.parse()
        self.assertIsNone(options["publish-token"])
        self.assertEqual(options["history"], 1000)
        self.assertEqual(options["drain"], 5.0)
        self.assertEqual(options["max-connections"], 0)
        self.assertEqual(options["max-connections-per-ip"], 0)
        self.assertEqual(options["slow-client"], SlowClientPolicy.DISCONNECT)
        self.assertIsNone(options["subscribe-token"])
        self.assertEqual(options["busy-retry"], 5000)

    def test_all(self) -> None:
        """Every hub option is parsed into its value."""
        options = self.parse(
            "--publish-token",
            "T",
            "--history",
            "5",
            "--history-bytes",
            "1000",
            "--max-event-bytes",
            "2048",
            "--queue-events",
            "7",
            "--queue-bytes",
            "9000",
            "--slow-client",
            "drop-oldest",
            "--slow-client",
            "ticker=latest",
            "--max-connections",
            "100",
            "--max-connections-per-ip",
            "4",
            "--drain",
            "1.5",
        )
        self.assertEqual(options["publish-token"], "T")
        self.assertEqual(options["history"], 5)
        self.assertEqual(options["history-bytes"], 1000)
        self.assertEqual(options["max-event-bytes"], 2048)
        self.assertEqual(options["queue-events"], 7)
        self.assertEqual(options["queue-bytes"], 9000)
        self.assertEqual(options["slow-client"], SlowClientPolicy.DROP_OLDEST)
        self.assertEqual(
            options["channel-policies"], {"ticker": SlowClientPolicy.LATEST}
        )
        self.assertEqual(options["max-connections"], 100)
        self.assertEqual(options["max-connections-per-ip"], 4)
        self.assertEqual(options["drain"], 1.5)

    def test_bad_policy(self) -> None:
        """An unknown policy or channel is a usage error."""
        self.assertRaises(usage.UsageError, self.parse, "--slow-client", "ignore")
        self.assertRaises(usage.UsageError, self.parse, "--slow-client", "a b=latest")

    def test_bad_numbers(self) -> None:
        """Negative or non-numeric limits are usage errors."""
        for args in (
            ("--history", "-1"),
            ("--max-connections", "x"),
            ("--max-event-bytes", "0"),
            ("--drain", "-2"),
        ):
            self.assertRaises(usage.UsageError, self.parse, *args)


class TwistdSubscribeOptionsTests(SynchronousTestCase):
    """--subscribe-token, --busy-retry, and the counter's queue options."""

    def test_subscribe_token(self) -> None:
        self.patch(os, "environ", {})
        options = Options()
        options.parseOptions(["--subscribe-token", "R", "--busy-retry", "250"])
        self.assertEqual(options["subscribe-token"], "R")
        self.assertEqual(options["busy-retry"], 250)

    def test_subscribe_token_from_environment(self) -> None:
        self.patch(os, "environ", {"TWISTED_SSE_SUBSCRIBE_TOKEN": "E"})
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["subscribe-token"], "E")

    def test_busy_retry_refused(self) -> None:
        with self.assertRaises(usage.UsageError) as raised:
            Options().parseOptions(["--busy-retry", "-1"])
        self.assertIn("busy-retry", str(raised.exception))

    def test_counter_takes_queue_options(self) -> None:
        """The counter's streams get the hub's queue bounds and policy."""
        app = SSEApp(
            Clock(),
            max_queue_events=7,
            max_queue_bytes=700,
            policy=SlowClientPolicy.LATEST,
        )
        self.assertEqual(app.events.max_queue_events, 7)
        self.assertEqual(app.events.max_queue_bytes, 700)
        self.assertEqual(app.events.policy, SlowClientPolicy.LATEST)


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
        body = _CappedBody(5)
        self.assertEqual(body.write(b"abc"), 3)
        self.assertEqual(body.write(memoryview(b"defgh")), 5)
        self.assertEqual(body.write(b"ijk"), 3)
        self.assertEqual(body.getvalue(), b"abcde")
        body.seek(0)
        self.assertEqual(body.read(), b"abcde")

    def test_site_hands_out_capped_bodies(self) -> None:
        """The site gives every request a body capped one byte past the limit."""
        site = _Site(Resource(), max_body=10)
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
        client.site = _Site(bodies, max_body=64, reactor=hub.clock)
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
        site = _Site(
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


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


class AnyBodyTests(SynchronousTestCase):
    """No request body, however odd, gets a 500 or logs a traceback."""

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        body=st.binary(max_size=300)
        | _JSON.map(lambda value: json.dumps(value).encode())
        | st.fixed_dictionaries(
            {"data": _JSON},
            optional={
                "event": _JSON,
                "retry": _JSON | st.integers(),
                "key": _JSON,
                "id": _JSON,
            },
        ).map(lambda value: json.dumps(value).encode()),
        content_type=st.sampled_from(
            [None, "application/json", "text/plain", "text/plain; charset=utf-8", "x/y"]
        ),
    )
    def test_never_a_server_error(self, body: bytes, content_type: str | None) -> None:
        """Every body is published (200) or refused with a 4xx and a reason."""
        hub = HubFixture(self, max_event_bytes=200)
        response = hub.post(body, content_type=content_type)
        self.assertIn(response.code, (200, 400, 413, 415))
        if response.code != 200:
            self.assertIsInstance(answer(response)["error"], str)
        self.assertEqual(self.flushLoggedErrors(), [])
        hub.check(self)
