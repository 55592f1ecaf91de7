"""
Tests for L{twisted_sse._subscribe}: C{GET /subscribe?channel=...}, several
channels and C{.*} patterns on one stream with one cursor, over HTTP.

The first part runs without a socket, through a real C{twisted.web} Site
with L{twisted_sse.testing.SSETestClient} and a L{Clock}, over both of the
test client's transports: the frames, the envelope, resuming in any order,
the loss signal, the authoriser, admission and the drain, the methods, a
broker without C{watch}, what a client leaves behind, and the Python API
(C{Hub.subscribe}).  The second part runs C{twistd sse} as a real process
and reads it over real sockets: every refused request, and a whole
subscribe, leave, publish, resume round trip.
"""

from __future__ import annotations

import json
import re
import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface import implementer

from tests._transports import TransportCase, over_both_transports
from twisted_sse import Event, Published, Subscription
from twisted_sse._app import SSEApp
from twisted_sse._broker import IBroker
from twisted_sse._cursor import decode_cursor, encode_cursor
from twisted_sse._fanin import Fanin
from twisted_sse._hub import HISTORY_LOST_EVENT, bearer_token_authorizer
from twisted_sse._memory import MemoryBroker
from twisted_sse._subscribe import SubscribeResource
from twisted_sse.testing import SSETestClient, SSETestResponse

from ._helpers import EPOCH, TOKEN, ClientAddress, Collector, HubFixture, answer, data
from ._http import SocketClient, http_request
from ._process import Twistd
from .test_hub_process import post

#: A cursor as it goes out: ``~`` and URL-safe base64.
CURSOR = rb"~[A-Za-z0-9_-]+"


class SubscribeHub(HubFixture):
    """
    The hub fixture with the hub's ``/subscribe`` mounted beside its
    ``/channels``.
    """

    def __init__(self, testcase: SynchronousTestCase, **options: Any) -> None:
        super().__init__(testcase, **options)
        root = Resource()
        root.putChild(b"channels", self.hub.resource())
        root.putChild(b"subscribe", self.hub.subscribe_resource())
        self.client = SSETestClient(
            ClientAddress(root),
            self.clock,
            transport=getattr(testcase, "transport", "memory"),
        )

    def get(
        self,
        *names: str,
        last_event_id: str | None = None,
        query: str = "",
        headers: dict[str, str] | None = None,
    ) -> SSETestResponse:
        """``GET /subscribe`` naming ``names``, with ``query`` after them."""
        return self.client.get(
            target(*names) + query, headers, last_event_id=last_event_id
        )

    def watches(self) -> int:
        """The watches the memory broker still tells (it has no public count)."""
        return sum(len(watches) for watches in self.memory._watches.values())

    def subscribers(self) -> dict[str, int]:
        """The memory broker's channels that still have subscribers."""
        counts = {
            name: self.memory.subscriber_count(name)
            for name in self.memory.channel_names()
        }
        return {name: count for name, count in counts.items() if count}


def target(*names: str) -> str:
    """``/subscribe`` with a ``channel`` parameter for each of ``names``."""
    return "/subscribe?" + "&".join(f"channel={name}" for name in names)


def frames(response: SSETestResponse) -> list[bytes]:
    """The frames of the response's body, each without its blank line."""
    return response.raw.split(b"\n\n")[:-1]


def typed(response: SSETestResponse) -> list[tuple[str, str]]:
    """The type and data of the response's events."""
    return [(event.type, event.data) for event in response.events]


def position(cursor: str, name: str) -> str | None:
    """The position ``cursor`` holds for ``name``."""
    decoded = decode_cursor(cursor)
    assert decoded is not None, cursor
    return decoded.get(name)


# The stream


@over_both_transports
class FramesTests(TransportCase):
    """What a /subscribe stream sends: the cursor first, then each event."""

    def test_first_frame(self) -> None:
        """
        The first frame is the retry time and a cursor holding the position
        of every channel named; nothing else comes before an event.
        """
        hub = SubscribeHub(self)
        hub.publish("old", "a")
        response = hub.get("a", "b")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.header("Content-Type"), "text/event-stream; charset=utf-8"
        )
        self.assertRegex(response.raw, rb"\Aretry: 1000\nid: " + CURSOR + rb"\n\n\Z")
        self.assertEqual(response.events, [])
        cursor = response.last_event_id
        self.assertEqual(position(cursor, "a"), f"{EPOCH}-1")
        self.assertEqual(position(cursor, "b"), f"{EPOCH}-0")

    def test_two_channels(self) -> None:
        """
        Each event of either channel comes with the cursor as its id and,
        when it was published without a type, its channel as its type; a
        typed event keeps its type; other channels' events never come.
        """
        hub = SubscribeHub(self)
        response = hub.get("a", "b")
        hub.publish("x", "a")
        hub.publish("y", "b", event="update")
        hub.publish("not mine", "c")
        hub.publish("z", "b")
        events = frames(response)[1:]
        self.assertEqual(len(events), 3)
        self.assertRegex(events[0], rb"\Aid: " + CURSOR + rb"\nevent: a\ndata: x\Z")
        self.assertRegex(
            events[1], rb"\Aid: " + CURSOR + rb"\nevent: update\ndata: y\Z"
        )
        self.assertRegex(events[2], rb"\Aid: " + CURSOR + rb"\nevent: b\ndata: z\Z")
        self.assertEqual(typed(response), [("a", "x"), ("update", "y"), ("b", "z")])
        cursors = [event.last_event_id for event in response.events]
        self.assertEqual(len(set(cursors)), 3)
        # Each cursor holds where the client is in every channel.
        self.assertEqual(
            [(position(c, "a"), position(c, "b")) for c in cursors],
            [
                (f"{EPOCH}-1", f"{EPOCH}-0"),
                (f"{EPOCH}-1", f"{EPOCH}-1"),
                (f"{EPOCH}-1", f"{EPOCH}-2"),
            ],
        )
        self.assertIsNone(position(cursors[-1], "c"))

    def test_pattern(self) -> None:
        """
        ``news.*`` carries every channel under ``news.``, at any depth and
        first published after the stream opened, never ``news`` nor
        ``newsroom``.
        """
        hub = SubscribeHub(self)
        response = hub.get("news.*")
        for channel in ("news.eu", "news", "newsroom", "news.eu.fr", "news.eu"):
            hub.publish(f"on {channel}", channel)
        self.assertEqual(
            typed(response),
            [
                ("news.eu", "on news.eu"),
                ("news.eu.fr", "on news.eu.fr"),
                ("news.eu", "on news.eu"),
            ],
        )

    def test_duplicates_once(self) -> None:
        """A channel named twice is carried once."""
        hub = SubscribeHub(self)
        response = hub.get("a", "a", "news.*", "news.*")
        hub.publish("x", "a")
        hub.publish("y", "news.eu")
        self.assertEqual(data(response), ["x", "y"])

    def test_envelope(self) -> None:
        """
        With ``envelope=1`` no event has a type (all reach ``onmessage``),
        and each one's data is a JSON envelope naming its channel, its
        type and its data.
        """
        hub = SubscribeHub(self)
        response = hub.get("a", "news.*", query="&envelope=1")
        self.assertEqual(response.events.pop(0).type, "cursor")
        hub.publish("x", "a")
        hub.publish("line 1\nline 2", "news.eu", event="update")
        self.assertEqual([event.type for event in response.events], ["message"] * 2)
        self.assertNotIn(b"\nevent: message", response.raw)
        self.assertEqual(
            [json.loads(event.data) for event in response.events],
            [
                {"channel": "a", "event": None, "data": "x"},
                {"channel": "news.eu", "event": "update", "data": "line 1\nline 2"},
            ],
        )
        for event in response.events:
            self.assertRegex(event.last_event_id.encode(), CURSOR)

    def test_envelope_opens_with_the_cursor(self) -> None:
        """
        An envelope stream's first frames end with a ``cursor`` event whose
        id is the cursor, so that an EventSource learns it before any event.
        """
        hub = SubscribeHub(self)
        response = hub.get("a", query="&envelope=1")
        [opened] = response.events
        self.assertEqual((opened.type, opened.data), ("cursor", "{}"))
        self.assertEqual(opened.last_event_id, response.last_event_id)
        self.assertRegex(opened.last_event_id.encode(), CURSOR)
        plain = hub.get("a")
        self.assertEqual(plain.events, [])

    def test_envelope_keeps_history_lost(self) -> None:
        """In the envelope, the loss signal is still a history-lost event."""
        hub = SubscribeHub(self)
        response = hub.get("a", query="&envelope=1", last_event_id="nonsense")
        hub.publish("x", "a")
        self.assertEqual(
            [event.type for event in response.events],
            [HISTORY_LOST_EVENT, "cursor", "message"],
        )
        self.assertEqual(
            json.loads(response.events[0].data),
            {"reason": "malformed", "channels": {"a": "malformed"}},
        )


# Resuming


@over_both_transports
class ResumeTests(TransportCase):
    """The last cursor resumes every channel exactly, in any list order."""

    def setUp(self) -> None:
        self.hub = SubscribeHub(self)
        self.first = self.hub.get("a", "b", "news.*")
        self.hub.publish("a1", "a")
        self.hub.publish("n1", "news.eu")
        self.hub.publish("b1", "b")
        self.assertEqual(data(self.first), ["a1", "n1", "b1"])
        self.first.disconnect()
        # While away: a new channel under the pattern, and one not under it.
        self.hub.publish("a2", "a")
        self.hub.publish("x1", "news.x")
        self.hub.publish("a3", "a")
        self.hub.publish("n2", "news.eu")
        self.hub.publish("r1", "newsroom")
        self.missed = {"a": ["a2", "a3"], "news.x": ["x1"], "news.eu": ["n2"]}

    def by_channel(self, response: SSETestResponse) -> dict[str, list[str]]:
        """The data of each channel's events, in the order they came."""
        found: dict[str, list[str]] = {}
        for event in response.events:
            found.setdefault(event.type, []).append(event.data)
        return found

    def assert_exact(self, response: SSETestResponse) -> None:
        """Every missed event, once, in order per channel, then live."""
        self.assertEqual(response.code, 200)
        self.assertIsNone(response.header("SSE-History-Lost"))
        self.assertEqual(self.by_channel(response), self.missed)
        self.hub.publish("b2", "b")
        self.hub.publish("y1", "news.y")
        self.assertEqual([event.data for event in response.events][-2:], ["b2", "y1"])

    def test_header(self) -> None:
        """Last-Event-ID resumes every channel and every pattern."""
        self.assert_exact(
            self.hub.get("a", "b", "news.*", last_event_id=self.first.last_event_id)
        )

    def test_query_parameter(self) -> None:
        """The polyfills' ``lastEventId`` query parameter resumes the same."""
        self.assert_exact(
            self.hub.get(
                "a", "b", "news.*", query=f"&lastEventId={self.first.last_event_id}"
            )
        )

    def test_other_order(self) -> None:
        """The same names in another order resume the same."""
        self.assert_exact(
            self.hub.get("news.*", "b", "a", last_event_id=self.first.last_event_id)
        )

    def test_channel_added(self) -> None:
        """
        A channel added on reconnect starts live (what it had before is
        not replayed, and is no loss); the others resume exactly.
        """
        self.hub.publish("c1", "c")
        again = self.hub.get(
            "c", "b", "news.*", "a", last_event_id=self.first.last_event_id
        )
        self.hub.publish("c2", "c")
        self.missed["c"] = ["c2"]
        self.assert_exact(again)
        self.assertEqual(position(again.last_event_id, "c"), f"{EPOCH}-2")

    def test_channel_dropped(self) -> None:
        """A channel left out on reconnect is no longer carried."""
        again = self.hub.get("news.*", "a", last_event_id=self.first.last_event_id)
        self.assertEqual(self.by_channel(again), self.missed)
        self.hub.publish("b2", "b")
        self.hub.publish("a4", "a")
        self.assertEqual(data(again)[-1], "a4")
        self.assertNotIn("b", self.by_channel(again))

    def test_twice(self) -> None:
        """Resuming from a resumed stream's cursor misses nothing more."""
        again = self.hub.get("a", "b", "news.*", last_event_id=self.first.last_event_id)
        self.hub.publish("a4", "a")
        again.disconnect()
        self.hub.publish("a5", "a")
        self.hub.publish("x2", "news.x")
        third = self.hub.get("b", "news.*", "a", last_event_id=again.last_event_id)
        self.assertIsNone(third.header("SSE-History-Lost"))
        self.assertEqual(self.by_channel(third), {"a": ["a5"], "news.x": ["x2"]})

    def test_latest(self) -> None:
        """Resuming from the latest cursor replays nothing and loses nothing."""
        caught_up = self.hub.get(
            "a", "b", "news.*", last_event_id=self.first.last_event_id
        )
        caught_up.disconnect()
        again = self.hub.get("a", "b", "news.*", last_event_id=caught_up.last_event_id)
        self.assertEqual(again.events, [])
        self.assertIsNone(again.header("SSE-History-Lost"))


# Losing history


@over_both_transports
class LossTests(TransportCase):
    """
    What cannot be resumed is said once, per channel: the header, and one
    history-lost event before any other; the rest resumes exactly.
    """

    def setUp(self) -> None:
        self.hub = SubscribeHub(self, history=3)

    def assert_lost(
        self, response: SSETestResponse, header: str, channels: dict[str, str]
    ) -> None:
        """The header, and the stream's first event, naming ``channels``."""
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("SSE-History-Lost"), header)
        lost = [e for e in response.events if e.type == HISTORY_LOST_EVENT]
        self.assertEqual(len(lost), 1, response.events)
        self.assertIs(response.events[0], lost[0])
        self.assertEqual(
            json.loads(lost[0].data),
            {"reason": next(iter(channels.values())), "channels": channels},
        )
        self.assertRegex(lost[0].last_event_id.encode(), CURSOR)
        # Nothing echoed: the id is the cursor the stream opened with.
        first_id = re.match(rb"retry: 1000\nid: (" + CURSOR + rb")\n\n", response.raw)
        assert first_id is not None, response.raw
        self.assertEqual(lost[0].last_event_id, first_id.group(1).decode())

    def test_malformed(self) -> None:
        """An id that is no cursor: every name is lost as malformed."""
        self.hub.publish("a1", "a")
        response = self.hub.get("b", "news.*", "a", last_event_id="nonsense")
        self.assert_lost(
            response,
            "malformed",
            {"a": "malformed", "b": "malformed", "news.*": "malformed"},
        )
        self.hub.publish("a2", "a")
        self.hub.publish("n1", "news.eu")
        self.assertEqual(data(response)[1:], ["a2", "n1"])

    def test_unknown(self) -> None:
        """
        A position the channel never reached is lost as unknown; another
        channel of the same cursor resumes exactly.
        """
        self.hub.publish("a1", "a")
        self.hub.publish("b1", "b")
        self.hub.publish("b2", "b")
        cursor = encode_cursor({"a": f"{EPOCH}-99", "b": f"{EPOCH}-1"})
        response = self.hub.get("a", "b", last_event_id=cursor)
        self.assert_lost(response, "unknown", {"a": "unknown"})
        self.assertEqual(typed(response)[1:], [("b", "b2")])
        self.assertEqual(position(response.last_event_id, "a"), f"{EPOCH}-1")

    def test_trimmed(self) -> None:
        """
        A channel whose history moved past the cursor is lost as trimmed,
        and starts from its position; the others resume exactly.
        """
        first = self.hub.get("a", "b")
        first.disconnect()
        for n in range(5):
            self.hub.publish(f"a{n}", "a")
        self.hub.publish("b0", "b")
        response = self.hub.get("b", "a", last_event_id=first.last_event_id)
        self.assert_lost(response, "trimmed", {"a": "trimmed"})
        self.assertEqual(typed(response)[1:], [("b", "b0")])
        self.assertEqual(position(response.last_event_id, "a"), f"{EPOCH}-5")
        self.hub.publish("a5", "a")
        self.assertEqual(typed(response)[-1], ("a", "a5"))

    def test_several_reasons(self) -> None:
        """Each reason once in the header; the event names each channel's."""
        first = self.hub.get("a", "b", "c")
        first.disconnect()
        for n in range(5):
            self.hub.publish(f"a{n}", "a")
        self.hub.publish("c0", "c")
        cursor = encode_cursor(
            {
                "a": position(first.last_event_id, "a") or "",
                "b": f"{EPOCH - 1}-0",
                "c": f"{EPOCH}-0",
                "d": "scrambled",
            }
        )
        response = self.hub.get("d", "c", "b", "a", last_event_id=cursor)
        self.assert_lost(
            response,
            "trimmed, unknown, malformed",
            {"a": "trimmed", "b": "unknown", "d": "malformed"},
        )
        self.assertEqual(typed(response)[1:], [("c", "c0")])

    def test_pattern_marker(self) -> None:
        """A pattern whose marker is of another run is lost as unknown."""
        self.hub.publish("n1", "news.eu")
        cursor = encode_cursor({"news.*": f"{EPOCH - 1}-4", "a": f"{EPOCH}-0"})
        response = self.hub.get("a", "news.*", last_event_id=cursor)
        self.assert_lost(response, "unknown", {"news.*": "unknown"})
        self.hub.publish("n2", "news.eu")
        self.assertEqual(typed(response)[1:], [("news.eu", "n2")])

    def test_resume_after_loss(self) -> None:
        """Resuming from the loss event's id is exact, with no loss."""
        lost = self.hub.get("a", "news.*", last_event_id="nonsense")
        lost.disconnect()
        self.hub.publish("a1", "a")
        self.hub.publish("n1", "news.eu")
        again = self.hub.get("news.*", "a", last_event_id=lost.last_event_id)
        self.assertIsNone(again.header("SSE-History-Lost"))
        self.assertEqual(typed(again), [("a", "a1"), ("news.eu", "n1")])

    def test_never_echoed(self) -> None:
        """Whatever id a client sends that is no cursor, it is never written back."""
        for sent in (
            "evil<script>",
            "~evil<script>",
            "~AAAA",
            "~" + "A" * 40,
            f"{EPOCH}-0",
            "id: forged",
        ):
            response = self.hub.get("a", "b", last_event_id=sent)
            self.assertEqual(response.header("SSE-History-Lost"), "malformed", sent)
            self.assertNotIn(sent.encode("utf-8"), response.wire)
            response.disconnect()
        query = self.hub.get("a", query="&lastEventId=%3Cscript%3Eforged")
        self.assertEqual(query.header("SSE-History-Lost"), "malformed")
        self.assertNotIn(b"<script>", query.wire)
        self.assertNotIn(b"forged", query.wire)

    def test_empty_id_is_fresh(self) -> None:
        """An empty Last-Event-ID is a fresh subscription, not a loss."""
        response = self.hub.get("a", last_event_id="")
        self.assertIsNone(response.header("SSE-History-Lost"))
        self.assertEqual(response.events, [])


# Who may subscribe


@over_both_transports
class AuthorizerTests(TransportCase):
    """The authoriser is asked for each name, and all must be allowed."""

    def test_asked_per_name(self) -> None:
        """Each channel and pattern is asked once, the pattern as it is."""
        asked: list[str] = []

        def everyone(request: Any, name: str) -> bool:
            asked.append(name)
            return True

        hub = SubscribeHub(self, authorizer=everyone)
        response = hub.get("news.*", "b", "a", "b")
        self.assertEqual(sorted(asked), ["a", "b", "news.*"])
        hub.publish("x", "news.eu")
        self.assertEqual(data(response), ["x"])

    def test_one_refused(self) -> None:
        """One name refused: 403 naming it, and nothing subscribed."""
        hub = SubscribeHub(self, authorizer=lambda request, name: name != "b")
        response = hub.get("a", "news.*", "b")
        self.assertEqual(response.code, 403)
        self.assertEqual(response.header("Content-Type"), "application/json")
        self.assertEqual(answer(response), {"error": "not allowed to subscribe to 'b'"})
        self.assertEqual((hub.subscribers(), hub.watches()), ({}, 0))
        self.assertEqual(hub.registry.streams, set())

    def test_pattern_refused(self) -> None:
        """A pattern is authorised by its own name."""
        hub = SubscribeHub(self, authorizer=lambda request, name: name == "a")
        response = hub.get("a", "news.*")
        self.assertEqual(response.code, 403)
        self.assertEqual(
            answer(response), {"error": "not allowed to subscribe to 'news.*'"}
        )

    def test_deferred(self) -> None:
        """An authoriser may answer later; the stream opens then."""
        decided: list[Deferred[bool]] = []

        def later(request: Any, name: str) -> Deferred[bool]:
            decided.append(Deferred())
            return decided[-1]

        hub = SubscribeHub(self, authorizer=later)
        response = hub.get("a", "b")
        self.assertIsNone(response.code)
        self.assertEqual(len(decided), 2)
        for answer_ in decided:
            answer_.callback(True)
        hub.client.flush()
        self.assertEqual(response.code, 200)
        hub.publish("x", "b")
        self.assertEqual(typed(response), [("b", "x")])

    def test_gone_while_deciding(self) -> None:
        """A client that leaves while the authoriser decides is not subscribed."""
        decided: Deferred[bool] = Deferred()
        hub = SubscribeHub(self, authorizer=lambda request, name: decided)
        hub.get("a", "news.*").disconnect()
        decided.callback(True)
        self.assertEqual((hub.subscribers(), hub.watches()), ({}, 0))

    def test_bearer_query(self) -> None:
        """twistd's --subscribe-token authoriser takes ?access_token= here too."""
        hub = SubscribeHub(self, authorizer=bearer_token_authorizer("reader"))
        self.assertEqual(hub.get("a", "b").code, 403)
        self.assertTrue(hub.get("a", "b", query="&access_token=reader").connected)


# Admission and the drain


@over_both_transports
class AdmissionTests(TransportCase):
    """/subscribe streams count, and are sent away and drained, as others."""

    def assert_sent_away(self, response: SSETestResponse, reason: str) -> None:
        self.assertEqual(response.code, 200)
        self.assertTrue(response.finished)
        self.assertEqual(response.events, [])
        self.assertIn(reason, response.comments)
        self.assertIsNotNone(response.retry)

    def test_limit(self) -> None:
        """Over the registry's limit a /subscribe is sent away, subscribing nothing."""
        hub = SubscribeHub(self)
        hub.registry.max_connections = 2
        kept = [hub.get("a", "news.*"), hub.subscribe("b")]
        refused = hub.get("c", "a", "news.*")
        self.assert_sent_away(refused, "too many connections")
        self.assertEqual(hub.subscribers(), {"a": 1, "b": 1})
        self.assertEqual(hub.watches(), 1)
        self.assertEqual(hub.registry.refused["total"], 1)
        hub.publish("x", "a")
        self.assertEqual(data(kept[0]), ["x"])

    def test_limit_after_authorizer(self) -> None:
        """Admission is judged again once a slow authoriser has answered."""
        decided: Deferred[bool] = Deferred()
        hub = SubscribeHub(self, authorizer=lambda request, name: decided)
        hub.registry.max_connections = 1
        waiting = hub.get("a")
        hub.hub.authorizer = None
        hub.get("b")
        decided.callback(True)
        hub.client.flush()
        self.assert_sent_away(waiting, "too many connections")
        self.assertEqual(hub.subscribers(), {"b": 1})

    def test_drain(self) -> None:
        """The drain ends /subscribe streams cleanly, and sends new ones away."""
        hub = SubscribeHub(self)
        responses = [hub.get("a", "news.*") for _ in range(3)]
        responses.append(hub.subscribe("a"))
        fired: list[None] = []
        hub.registry.drain(1.0, retry=1000).addCallback(fired.append)
        late = hub.get("a", "b")
        self.assert_sent_away(late, "the server is shutting down")
        for _ in range(100):
            if fired:
                break
            hub.client.advance(0.05)
        self.assertEqual(fired, [None])
        for response in responses:
            self.assertTrue(response.finished)
            self.assertFalse(response.connected)
            assert response.retry is not None
            self.assertTrue(1000 <= response.retry <= 2000, response.retry)
        self.assertEqual((hub.subscribers(), hub.watches()), ({}, 0))
        self.assertEqual(hub.registry.streams, set())


# Methods


@over_both_transports
class MethodTests(TransportCase):
    """HEAD, OPTIONS, and the methods /subscribe does not answer."""

    def test_head(self) -> None:
        """HEAD: the stream's headers and no body, subscribing nothing."""
        hub = SubscribeHub(self)
        response = hub.client.request("HEAD", target("a", "news.*"))
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.header("Content-Type"), "text/event-stream; charset=utf-8"
        )
        self.assertTrue(response.finished)
        self.assertEqual(response.raw, b"")
        self.assertEqual((hub.subscribers(), hub.watches()), ({}, 0))

    def test_head_refused(self) -> None:
        """HEAD of what GET refuses: its status and JSON type, no body."""
        hub = SubscribeHub(self)
        for names, code in (((), 400), (("*",), 400), (("a" * 9000,), 414)):
            response = hub.client.request("HEAD", target(*names))
            self.assertEqual(response.code, code, names)
            self.assertEqual(response.header("Content-Type"), "application/json")
            self.assertEqual(response.raw, b"")

    def test_options(self) -> None:
        """OPTIONS: 204 with Allow; with CORS on, a preflight for Last-Event-ID."""
        hub = SubscribeHub(self, allow_origin="*")
        response = hub.client.request("OPTIONS", target("a"))
        self.assertEqual(response.code, 204)
        self.assertEqual(response.header("Allow"), "GET, HEAD, OPTIONS")
        allowed = response.header("Access-Control-Allow-Headers") or ""
        self.assertIn("Last-Event-ID", allowed)
        self.assertEqual(hub.subscribers(), {})

    def test_cors_on_stream(self) -> None:
        """With CORS on, the stream carries Access-Control-Allow-Origin."""
        hub = SubscribeHub(self, allow_origin="https://example.org")
        response = hub.get("a")
        self.assertEqual(
            response.header("Access-Control-Allow-Origin"), "https://example.org"
        )

    def test_post_in_app(self) -> None:
        """In twistd's app, POST (and others) get a JSON 405 with Allow."""
        clock = Clock()
        broker = MemoryBroker()
        app = SSEApp(clock, broker, heartbeat=0, publish_token=TOKEN)
        client = self.client_for(app.resource(), clock)
        for method in ("POST", "PUT", "DELETE"):
            response = client.request(
                method,
                target("a"),
                {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"},
                b"x",
            )
            self.assertEqual(response.code, 405)
            self.assertEqual(response.header("Allow"), "GET, HEAD, OPTIONS")
            self.assertEqual(response.header("Content-Type"), "application/json")
            self.assertEqual(
                answer(response),
                {"error": f"method {method} not allowed here: use GET, HEAD, OPTIONS"},
            )
        self.assertEqual(broker.channel_names(), [])
        client.disconnect_all()
        client.assert_clean(app.registry, app.heartbeat, testcase=self)


# A broker without watch


@implementer(IBroker)
class ChannelsOnly:
    """A broker of channels only: the memory broker's, without its ``watch``."""

    def __init__(self, memory: MemoryBroker) -> None:
        self.memory = memory

    @property
    def available(self) -> bool:
        return self.memory.available

    def publish(self, channel: str, event: Event, key: str | None = None) -> Any:
        return self.memory.publish(channel, event, key)

    def subscribe(
        self, channel: str, deliver: Any, last_event_id: str | None = None
    ) -> Deferred[Subscription]:
        return self.memory.subscribe(channel, deliver, last_event_id)

    def subscribe_now(
        self, channel: str, deliver: Any, last_event_id: str | None = None
    ) -> Subscription | None:
        return self.memory.subscribe_now(channel, deliver, last_event_id)

    def stop(self) -> Deferred[None]:
        return self.memory.stop()


@over_both_transports
class WithoutWatchTests(TransportCase):
    """On a broker without ``watch``, patterns are refused; channels work."""

    def setUp(self) -> None:
        self.hub = SubscribeHub(self)
        self.hub.hub.broker = ChannelsOnly(self.hub.memory)

    def test_pattern_refused(self) -> None:
        """A pattern: 400 in JSON naming it, and nothing left subscribed."""
        response = self.hub.get("a", "news.*", "b")
        self.assertEqual(response.code, 400)
        self.assertEqual(response.header("Content-Type"), "application/json")
        reason = answer(response)["error"]
        self.assertIn("'news.*'", reason)
        self.assertIn("cannot watch", reason)
        self.assertEqual(self.hub.subscribers(), {})
        self.assertEqual(self.hub.registry.streams, set())

    def test_channels(self) -> None:
        """A list of channels is served, and resumes, as on any broker."""
        first = self.hub.get("a", "b")
        self.hub.publish("a1", "a")
        first.disconnect()
        self.hub.publish("b1", "b")
        again = self.hub.get("b", "a", last_event_id=first.last_event_id)
        self.hub.publish("a2", "a")
        self.assertIsNone(again.header("SSE-History-Lost"))
        self.assertEqual(typed(again), [("b", "b1"), ("a", "a2")])

    def test_python_api(self) -> None:
        """Hub.subscribe fails with the same ValueError for a pattern."""
        failures: list[Any] = []
        self.hub.hub.subscribe(["a", "news.*"], Collector()).addErrback(failures.append)
        (failure,) = failures
        self.assertIsInstance(failure.value, ValueError)
        self.assertIn("'news.*'", str(failure.value))
        self.assertEqual(self.hub.subscribers(), {})


# What a client leaves behind


@over_both_transports
class CleanupTests(TransportCase):
    """A stream's subscriptions and watches end with it."""

    def test_client_leaves(self) -> None:
        """No subscriber and no watch is left once the client has gone."""
        hub = SubscribeHub(self)
        response = hub.get("a", "b", "news.*", "sport.*")
        hub.publish("x", "news.eu")
        hub.publish("y", "news.eu.fr")
        self.assertEqual(
            hub.subscribers(), {"a": 1, "b": 1, "news.eu": 1, "news.eu.fr": 1}
        )
        self.assertEqual(hub.watches(), 2)
        response.disconnect()
        self.assertEqual((hub.subscribers(), hub.watches()), ({}, 0))
        self.assertEqual(hub.registry.streams, set())
        self.assertEqual(dict(hub.registry.closed), {"lost": 1})
        # Channels found later subscribe nobody.
        hub.publish("z", "news.new")
        self.assertEqual(hub.subscribers(), {})

    def test_server_ends(self) -> None:
        """A stream the server ends (close_all) leaves nothing either."""
        hub = SubscribeHub(self)
        response = hub.get("a", "news.*")
        resource = hub.hub.subscribe_resource()
        assert isinstance(resource, SubscribeResource)
        resource.close_all()
        hub.client.flush()
        self.assertTrue(response.finished)
        self.assertEqual((hub.subscribers(), hub.watches()), ({}, 0))

    def test_many(self) -> None:
        """Many streams come and go: the broker ends as it began."""
        hub = SubscribeHub(self)
        responses = [hub.get(f"c{n % 5}", "a", "news.*") for n in range(30)]
        hub.publish("x", "news.eu")
        self.assertEqual(hub.subscribers()["news.eu"], 30)
        for response in responses:
            response.disconnect()
        self.assertEqual((hub.subscribers(), hub.watches()), ({}, 0))


# The Python API


class PythonAPITests(SynchronousTestCase):
    """Hub.subscribe: what /subscribe sends, to a Python callable."""

    def setUp(self) -> None:
        self.hub = SubscribeHub(self, history=3)

    def subscribe(
        self, names: list[str], last_event_id: str | None = None
    ) -> tuple[Fanin, Collector]:
        got = Collector()
        opened: list[Fanin] = []
        self.hub.hub.subscribe(names, got, last_event_id).addCallback(opened.append)
        (subscription,) = opened
        self.addCleanup(subscription.cancel)
        return subscription, got

    def test_events(self) -> None:
        """
        ``deliver`` gets each event with the cursor as its id and, as its
        frame, the very bytes /subscribe sends.
        """
        subscription, got = self.subscribe(["a", "news.*"])
        stream = self.hub.get("news.*", "a")
        self.assertEqual(subscription.losses, {})
        self.assertEqual(subscription.cursor, stream.last_event_id)
        self.hub.publish("x", "a")
        self.hub.publish("y", "news.eu", event="update")
        self.hub.publish("z", "newsroom")
        self.assertEqual([p.channel for p in got.got], ["a", "news.eu"])
        self.assertEqual([p.key for p in got.got], ["message", "update"])
        self.assertEqual(
            b"".join(p.frame for p in got.got),
            b"".join(frame + b"\n\n" for frame in frames(stream)[1:]),
        )
        self.assertEqual(got.ids, [event.last_event_id for event in stream.events])
        self.assertEqual(subscription.cursor, got.ids[-1])

    def test_resume(self) -> None:
        """A cursor given before resumes exactly, here or over HTTP."""
        subscription, got = self.subscribe(["a", "news.*"])
        self.hub.publish("a1", "a")
        subscription.cancel()
        self.hub.publish("a2", "a")
        self.hub.publish("n1", "news.x")
        again, missed = self.subscribe(["news.*", "a"], got.ids[-1])
        self.assertEqual(again.losses, {})
        self.assertEqual(missed.data, ["a2", "n1"])
        over_http = self.hub.get("a", "news.*", last_event_id=got.ids[-1])
        self.assertEqual(data(over_http), ["a2", "n1"])
        self.assertIsNone(over_http.header("SSE-History-Lost"))

    def test_losses(self) -> None:
        """A lost cursor: ``losses`` says so, and the first delivery too."""
        subscription, got = self.subscribe(["news.*", "a"], "nonsense")
        self.assertEqual(subscription.losses, {"a": "malformed", "news.*": "malformed"})
        (lost,) = got.got
        self.assertEqual(lost.key, HISTORY_LOST_EVENT)
        self.assertEqual(lost.id, subscription.cursor)
        self.assertIn(b"event: history-lost\n", lost.frame)

    def test_cancel(self) -> None:
        """cancel() ends every channel and watch; nothing is delivered after."""
        subscription, got = self.subscribe(["a", "news.*"])
        self.hub.publish("x", "news.eu")
        subscription.cancel()
        subscription.cancel()
        self.assertEqual((self.hub.subscribers(), self.hub.watches()), ({}, 0))
        self.hub.publish("y", "news.eu")
        self.hub.publish("z", "a")
        self.assertEqual(got.data, ["x"])

    def test_refused(self) -> None:
        """What /subscribe refuses with 400 is a ValueError."""
        for names in (
            [],
            ["*"],
            ["news*"],
            [""],
            ["a b"],
            [f"c{n}" for n in range(33)],
        ):
            self.assertRaises(ValueError, self.hub.hub.subscribe, names, Collector())
        self.assertEqual(self.hub.subscribers(), {})

    def test_published_type(self) -> None:
        """What ``deliver`` gets is a Published."""
        _, got = self.subscribe(["a"])
        self.hub.publish("x", "a")
        self.assertIsInstance(got.got[0], Published)


# A real twistd sse


#: A refused request target, its status, and what its error must say.
Refusal = tuple[str, int, str]


class SubscribeProcessTests(SynchronousTestCase):
    """/subscribe of a real ``twistd sse``, over real sockets."""

    def start(self, *args: str) -> Twistd:
        server = Twistd("--publish-token", TOKEN, *args).start()
        self.addCleanup(server.stop)
        return server

    def get(self, server: Twistd, path: str, *headers: str) -> SocketClient:
        client = SocketClient(
            server.port, http_request(path, "Accept: text/event-stream", *headers)
        )
        self.addCleanup(client.close)
        return client

    def publish(self, server: Twistd, channel: str, data: str) -> str:
        code, answer_ = post(
            server.port,
            data.encode(),
            channel=channel,
            content_type="text/plain",
            token=TOKEN,
        )
        self.assertEqual(code, 200, answer_)
        return answer_["id"]

    def assert_refused(self, server: Twistd, refusals: list[Refusal]) -> None:
        """Each target gets its status with a JSON error saying ``reason``."""
        for path, code, reason in refusals:
            response = self.get(server, path)
            response.wait_for(lambda response: response.complete)
            self.assertEqual(response.code, code, path[:80])
            self.assertEqual(response.header("Content-Type"), "application/json")
            error = json.loads(response.body)["error"]
            self.assertIn(reason, error, path[:80])
        # And the server goes on serving.
        ok = self.get(server, target("a"))
        self.assertEqual(ok.code, 200)
        self.assertRegex(ok.read_frame(), rb"\Aretry: 1000\nid: " + CURSOR + rb"\n\n")
        self.assertNotIn(b"Traceback", server.output)

    def test_bad_inputs(self) -> None:
        """
        Each bad /subscribe is refused with its status and a JSON error
        naming what is wrong: the channel, or the count, or the length.
        """
        server = self.start()
        long_name = "x" * 129
        many = [f"c{n}" for n in range(33)]
        self.assert_refused(
            server,
            [
                ("/subscribe", 400, "no channel"),
                ("/subscribe?other=a", 400, "no channel"),
                ("/subscribe?channel=", 400, "empty channel name"),
                ("/subscribe?channel=a&channel=", 400, "empty channel name"),
                ("/subscribe?channel=a%20b", 400, "invalid channel name: 'a b'"),
                ("/subscribe?channel=-a", 400, "invalid channel name: '-a'"),
                (target(long_name), 400, f"invalid channel name: {long_name!r}"),
                ("/subscribe?channel=*", 400, "channel '*' is refused"),
                ("/subscribe?channel=%2A", 400, "channel '*' is refused"),
                ("/subscribe?channel=news*", 400, "invalid pattern: 'news*'"),
                ("/subscribe?channel=a.*.b", 400, "'a.*.b'"),
                ("/subscribe?channel=%FF", 400, "not UTF-8"),
                (target(*many), 400, "33 named, at most 32"),
                (target("a" * 9000), 414, "longer than 8192 bytes"),
                # The longest target whose request line Twisted still reads.
                (target("a" * 16000), 414, "longer than 8192 bytes"),
            ],
        )
        # 32 names, and names repeated (counted once), are served.
        for names in ([f"c{n}" for n in range(32)], [f"c{n % 32}" for n in range(40)]):
            response = self.get(server, target(*names))
            self.assertEqual(response.code, 200)

    def test_max_subscriptions(self) -> None:
        """--max-subscriptions 2: three names are refused, two are served."""
        server = self.start("--max-subscriptions", "2")
        self.assert_refused(
            server, [(target("a", "b", "news.*"), 400, "3 named, at most 2")]
        )
        self.assertEqual(self.get(server, target("a", "news.*", "a")).code, 200)

    def test_round_trip(self) -> None:
        """
        Subscribe to ``a`` and ``news.*``, read, leave; what is published
        meanwhile arrives, exactly, on a stream resumed with the last id in
        another list order; then the live events.
        """
        server = self.start()
        first = self.get(server, target("a", "news.*"))
        self.assertEqual(first.code, 200)
        self.assertEqual(
            first.header("Content-Type"), "text/event-stream; charset=utf-8"
        )
        self.assertRegex(
            first.read_frame(), rb"\Aretry: 1000\nid: " + CURSOR + rb"\n\n\Z"
        )
        self.publish(server, "a", "one")
        self.publish(server, "news.eu.fr", "two")
        self.publish(server, "newsroom", "not mine")
        self.publish(server, "news", "not mine either")
        self.publish(server, "a", "three")
        first.wait_for(lambda response: len(response.events) == 3)
        self.assertEqual(
            [(e.type, e.data) for e in first.events],
            [("a", "one"), ("news.eu.fr", "two"), ("a", "three")],
        )
        for event in first.events:
            self.assertRegex(event.last_event_id.encode(), rb"\A" + CURSOR + rb"\Z")
        self.assertRegex(
            first.read_frame(), rb"\Aid: " + CURSOR + rb"\nevent: a\ndata: one\n\n"
        )
        last_id = first.parser.last_event_id
        first.close()

        self.publish(server, "news.x", "four")
        self.publish(server, "a", "five")
        self.publish(server, "newsroom", "still not mine")
        self.publish(server, "news.eu.fr", "six")
        self.publish(server, "news.x", "seven")
        again = self.get(
            server,
            "/subscribe?channel=news.*&channel=a",
            f"Last-Event-ID: {last_id}",
        )
        self.assertEqual(again.code, 200)
        self.assertIsNone(again.header("SSE-History-Lost"))
        self.publish(server, "a", "live")
        again.wait_for(
            lambda response: (
                bool(response.events) and response.events[-1].data == "live"
            )
        )
        got: dict[str, list[str]] = {}
        for event in again.events:
            got.setdefault(event.type, []).append(event.data)
        self.assertEqual(
            got,
            {"a": ["five", "live"], "news.x": ["four", "seven"], "news.eu.fr": ["six"]},
        )
        self.assertEqual(len(again.events), 5)
        # And once more, from the query parameter, in the envelope.
        resumed_id = again.parser.last_event_id
        again.close()
        self.publish(server, "news.eu", "eight")
        third = self.get(
            server,
            f"/subscribe?channel=a&channel=news.*&envelope=1&lastEventId={resumed_id}",
        )
        third.wait_for(lambda response: len(response.events) == 2)
        self.assertEqual(third.events[0].type, "cursor")
        self.assertEqual(
            json.loads(third.events[1].data),
            {"channel": "news.eu", "event": None, "data": "eight"},
        )
        self.assertNotIn(b"Traceback", server.output)


@over_both_transports
class PlainTreeMethodTests(TransportCase):
    """The resource of a plain twisted.web tree answers as the app does."""

    def test_post_plain_tree(self) -> None:
        """hub.subscribe_resource() in a plain tree: POST gets a JSON 405."""
        hub = SubscribeHub(self)
        response = hub.client.request(
            "POST", target("a"), {"Authorization": f"Bearer {TOKEN}"}, b"x"
        )
        self.assertEqual(response.code, 405)
        self.assertEqual(response.header("Allow"), "GET, HEAD, OPTIONS")
        self.assertEqual(response.header("Content-Type"), "application/json")
        self.assertEqual(
            answer(response),
            {"error": "method POST not allowed here: use GET, HEAD, OPTIONS"},
        )


class HugeTargetTests(SynchronousTestCase):
    """A target longer than Twisted reads is answered, not dropped."""

    def test_20000_byte_target(self) -> None:
        """A 20000-byte request target is answered with a 4xx, not dropped."""
        server = Twistd("--publish-token", TOKEN).start()
        self.addCleanup(server.stop)
        path = target("a" * (20000 - len(target(""))))
        self.assertEqual(len(path), 20000)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(http_request(path))
            answer_ = b""
            while chunk := sock.recv(65536):
                answer_ += chunk
                if b"\r\n\r\n" in answer_:
                    break
        self.assertRegex(answer_, rb"\AHTTP/1\.1 4[0-9][0-9] ")
        ok = SocketClient(server.port, http_request(target("a")))
        self.addCleanup(ok.close)
        self.assertEqual(ok.code, 200)
