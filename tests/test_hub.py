"""
Tests for L{twisted_sse._hub}: subscribing to channels over HTTP on a
broker (the position, resuming with the loss signal, authorisers, fan-out,
the shared channel resources, streams opened while the request renders),
through a real C{twisted.web} Site with L{twisted_sse.testing.SSETestClient}
and a L{Clock}.

Publishing over HTTP is in test_hub_publish.py, the handoff of a replay to
its stream in test_handoff.py; publishing from a real thread is in
test_hub_live.py, the whole server as a process in test_hub_process.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from tests._transports import TransportCase, over_both_transports
from twisted_sse import Event
from twisted_sse._broker import Subscription
from twisted_sse._hub import HISTORY_LOST_EVENT, Hub, bearer_token_authorizer
from twisted_sse._memory import MemoryBroker
from twisted_sse._stream import SlowClientPolicy
from twisted_sse.testing import SSETestResponse

from ._helpers import (
    EPOCH,
    TOKEN,
    BrokenBroker,
    HubFixture,
    answer,
    data,
    first_frame_id,
    ids,
)

# Subscribing


@over_both_transports
class SubscribeTests(TransportCase):
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
        """A path below a channel is a JSON 404, not that channel."""
        hub = HubFixture(self)
        response = hub.subscribe("news/more")
        self.assertEqual(response.code, 404)
        self.assertEqual(response.header("Content-Type"), "application/json")
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
        """With CORS on, the preflight allows Authorization, Last-Event-ID and
        Idempotency-Key."""
        hub = HubFixture(self, allow_origin="*")
        response = hub.client.request("OPTIONS", "/channels/news")
        self.assertEqual(response.code, 204)
        allowed = response.header("Access-Control-Allow-Headers") or ""
        self.assertIn("Authorization", allowed)
        self.assertIn("Last-Event-ID", allowed)
        # A page may publish with an idempotency key from another origin.
        self.assertIn("Idempotency-Key", allowed)

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
        hub = HubFixture(self, broker=BrokenBroker())
        response = hub.subscribe()
        self.assertEqual(response.code, 200)
        self.assertTrue(response.finished)
        self.assertEqual(response.events, [])
        self.assertIn("redis is down", response.comments)
        assert response.retry is not None
        self.assertTrue(5000 <= response.retry <= 10000)


# Resuming


@over_both_transports
class ResumeTests(TransportCase):
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


# Authorising subscribers


@over_both_transports
class AuthorizerTests(TransportCase):
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
        hub.client.flush()
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


@over_both_transports
class FanOutTests(TransportCase):
    """
    A channel's own slow-client policy, and one encoding of each event
    shared by every subscriber.
    """

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


class FanOutMemoryTests(SynchronousTestCase):
    """
    Fan-out seen through the plain writer: a stream paused the moment its
    client stops reading, and every frame through ``request.write``.  The
    direct writer's pause and writes are in test_writer.py.
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


@over_both_transports
class ChannelResourceSharingTests(TransportCase):
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


NO_CHANNEL = "no channel here: a channel is /channels/{name}, one path segment"


@over_both_transports
class NotServedTests(TransportCase):
    """What the hub does not serve is refused in JSON, never an HTML page."""

    def assert_error(self, response: SSETestResponse, code: int, reason: str) -> None:
        self.assertEqual(response.code, code)
        self.assertEqual(response.header("Content-Type"), "application/json")
        self.assertEqual(answer(response), {"error": reason})

    def test_paths_without_a_channel(self) -> None:
        """The hub's own path, an empty name and deeper paths: 404 saying why."""
        hub = HubFixture(self)
        paths = ["/channels", "/channels/", "/channels/news/", "/channels/a/b/c"]
        for path in paths:
            self.assert_error(hub.client.get(path), 404, NO_CHANNEL)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            posted = hub.client.request("POST", path, headers, b"data")
            self.assert_error(posted, 404, NO_CHANNEL)
            self.assert_error(hub.client.request("DELETE", path), 404, NO_CHANNEL)
        self.assertEqual(hub.memory.history_of("news"), [])

    def test_head_without_a_channel(self) -> None:
        """HEAD of a path without a channel: 404 with the JSON type, no body."""
        hub = HubFixture(self)
        response = hub.client.request("HEAD", "/channels/")
        self.assertEqual(response.code, 404)
        self.assertEqual(response.header("Content-Type"), "application/json")
        self.assertEqual(response.raw, b"")

    def test_mounted_elsewhere(self) -> None:
        """The reason names the path where the user mounted the hub."""
        clock = Clock()
        hub = Hub(MemoryBroker(), clock=clock)
        root, api = Resource(), Resource()
        root.putChild(b"api", api)
        api.putChild(b"hub", hub.resource())
        client = self.client_for(root, clock)
        for path in ("/api/hub", "/api/hub/", "/api/hub/a/b"):
            self.assert_error(
                client.get(path),
                404,
                "no channel here: a channel is /api/hub/{name}, one path segment",
            )
        self.assertEqual(client.get("/api/hub/news").code, 200)
        client.disconnect_all()
        client.assert_clean(hub.registry, hub.heartbeat, testcase=self)

    def test_hub_as_root(self) -> None:
        """A hub that is the site's root names / as its path."""
        clock = Clock()
        hub = Hub(MemoryBroker(), clock=clock)
        client = self.client_for(hub.resource(), clock)
        self.assert_error(
            client.get("/"),
            404,
            "no channel here: a channel is /{name}, one path segment",
        )
        client.assert_clean(hub.registry, hub.heartbeat, testcase=self)

    def test_method_not_allowed(self) -> None:
        """A method a channel does not answer: 405 with Allow, in JSON."""
        hub = HubFixture(self)
        for method in ("PUT", "DELETE", "PATCH"):
            response = hub.client.request(method, "/channels/news")
            self.assert_error(
                response,
                405,
                f"method {method} not allowed here: use GET, HEAD, OPTIONS, POST",
            )
            self.assertEqual(response.header("Allow"), "GET, HEAD, OPTIONS, POST")
        self.assertEqual(hub.hub.live_channels, [])


class _DeferringMemoryBroker(MemoryBroker):
    """
    An in-memory broker whose subscribe answers only when told to (and
    overrides nothing else: the memory broker then answers ``None`` to
    ``subscribe_now``).
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

    def answer(self) -> None:
        self.waiting.pop(0)()


@over_both_transports
class SynchronousSubscribeTests(TransportCase):
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
        hub.client.flush()
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
