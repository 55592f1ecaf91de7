"""
Presence in one process: the tally (:class:`LocalPresence`), the memory
broker's answers and changes, and the hub's ``GET /presence/{channel}``,
``presence=1`` streams and authorization, over the testing client.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface.verify import verifyObject

from twisted_sse import (
    BrokerUnavailable,
    Hub,
    IPresenceBroker,
    LocalPresence,
    Member,
    MemoryBroker,
    NoPresence,
    PresenceChange,
    PresenceInfo,
)
from twisted_sse.testing import SSETestClient, SSETestResponse

from ._helpers import ClientAddress
from .test_hub_auth import AuthHub
from .test_subscribe import SubscribeHub


def answer_of(response: SSETestResponse) -> Any:
    """The JSON body of a finished response."""
    return json.loads(response.raw)


def told_as(told: list[PresenceInfo | PresenceChange]) -> list[Any]:
    """What a follower was told, as plain values."""
    return [
        ("presence", news.to_json())
        if isinstance(news, PresenceInfo)
        else (news.kind, news.sub)
        for news in told
    ]


def _presence(
    fixture: SubscribeHub,
    channel: str,
    query: str = "",
    headers: dict[str, str] | None = None,
) -> SSETestResponse:
    """``GET /presence/{channel}`` on the fixture's hub."""
    return fixture.client.get(f"/presence/{channel}{query}", headers)


def mount(fixture: SubscribeHub, testcase: SynchronousTestCase) -> None:
    """Serve the fixture's hub with ``/presence`` beside its other paths."""
    root = Resource()
    root.putChild(b"channels", fixture.hub.resource())
    root.putChild(b"subscribe", fixture.hub.subscribe_resource())
    root.putChild(b"presence", fixture.hub.presence_resource())
    fixture.client = SSETestClient(
        ClientAddress(root),
        fixture.clock,
        transport=getattr(testcase, "transport", "memory"),
    )


class PresenceHub(SubscribeHub):
    """The subscribe fixture with ``/presence`` mounted too."""

    def __init__(self, testcase: SynchronousTestCase, **options: Any) -> None:
        super().__init__(testcase, **options)
        mount(self, testcase)

    presence = _presence


class JWTPresenceHub(AuthHub):
    """The JWT fixture with ``/presence`` mounted too."""

    def __init__(self, testcase: SynchronousTestCase, **options: Any) -> None:
        super().__init__(testcase, **options)
        mount(self, testcase)

    presence = _presence


# The tally


class LocalPresenceTests(SynchronousTestCase):
    """Counting connections in and out, by identity."""

    def test_first_and_last(self) -> None:
        """
        ``enter`` says whether it is an identity's first connection on the
        channel, ``leave`` whether it was its last; anonymous ones count
        and never say so.
        """
        present = LocalPresence()
        self.assertTrue(present.enter("a", "alice"))
        self.assertFalse(present.enter("a", "alice"))
        self.assertTrue(present.enter("b", "alice"))
        self.assertFalse(present.enter("a", None))
        self.assertEqual(present.count("a"), 3)
        self.assertEqual(present.identities("a"), {"alice": 2})
        self.assertFalse(present.leave("a", "alice"))
        self.assertTrue(present.leave("a", "alice"))
        self.assertFalse(present.leave("a", None))
        self.assertEqual(present.count("a"), 0)
        self.assertEqual(present.channels(), ["b"])

    def test_leave_without_enter(self) -> None:
        """A leave never entered changes nothing, and never goes below 0."""
        present = LocalPresence()
        self.assertFalse(present.leave("a", "alice"))
        present.enter("a", None)
        self.assertFalse(present.leave("a", "bob"))
        self.assertEqual(present.count("a"), 1)
        self.assertFalse(present.leave("a", None))
        self.assertEqual(present.count("a"), 0)
        present.enter("a", "alice")
        self.assertFalse(present.leave("a", None))
        self.assertEqual(present.count("a"), 1)

    def test_info_order_and_limit(self) -> None:
        """
        Members come most connections first, then by name, and at most
        the limit asked for, with ``truncated`` when some are left out.
        """
        present = LocalPresence()
        for sub, times in [("carol", 1), ("bob", 2), ("alice", 1), ("dave", 2)]:
            for _ in range(times):
                present.enter("a", sub)
        present.enter("a", None)
        info = present.info("a", 3)
        self.assertEqual(info.count, 7)
        self.assertEqual(
            info.members,
            (Member("bob", 2), Member("dave", 2), Member("alice", 1)),
        )
        self.assertTrue(info.truncated)
        self.assertEqual(
            info.to_json(),
            {
                "channel": "a",
                "count": 7,
                "members": [
                    {"sub": "bob", "connections": 2},
                    {"sub": "dave", "connections": 2},
                    {"sub": "alice", "connections": 1},
                ],
                "truncated": True,
            },
        )
        self.assertEqual(present.info("a", 4).to_json().get("truncated"), None)
        self.assertEqual(present.info("a", 0).members, ())
        self.assertEqual(present.info("none", 5), PresenceInfo("none", 0))

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.booleans(),
                st.sampled_from(["a", "b"]),
                st.sampled_from([None, "alice", "bob", "carol"]),
            ),
            max_size=60,
        )
    )
    def test_matches_a_model(self, steps: list[tuple[bool, str, str | None]]) -> None:
        """
        Whatever the order of enters and leaves, the counts are those of
        the connections open, and the firsts and lasts told are exactly an
        identity's connections going from none to some and back.
        """
        present = LocalPresence()
        model: Counter[tuple[str, str | None]] = Counter()
        for entering, channel, identity in steps:
            before = model[(channel, identity)]
            if entering:
                said = present.enter(channel, identity)
                model[(channel, identity)] += 1
                self.assertEqual(said, identity is not None and before == 0)
            else:
                said = present.leave(channel, identity)
                if before:
                    model[(channel, identity)] -= 1
                self.assertEqual(said, identity is not None and before == 1)
        for channel in ("a", "b"):
            self.assertEqual(
                present.count(channel),
                sum(n for (c, _), n in model.items() if c == channel),
            )
            self.assertEqual(
                present.identities(channel),
                {
                    sub: n
                    for (c, sub), n in model.items()
                    if c == channel and sub is not None and n
                },
            )


# The memory broker


class MemoryPresenceTests(SynchronousTestCase):
    """The memory broker's presence: the whole truth, at once."""

    def test_provides(self) -> None:
        """It provides IPresenceBroker."""
        self.assertTrue(verifyObject(IPresenceBroker, MemoryBroker()))

    def test_follow(self) -> None:
        """
        A follower is told who is there first, then each identity's first
        arrival and last departure, in order; anonymous connections and
        further connections of an identity present tell nothing.
        """
        broker = MemoryBroker()
        broker.enter("room", "alice")
        told: list[PresenceInfo | PresenceChange] = []
        following = broker.follow_presence("room", 10, told.append)
        broker.enter("room", "bob")
        broker.enter("room", "bob")
        broker.enter("room", None)
        broker.enter("other", "carol")
        broker.leave("room", "bob")
        broker.leave("room", "alice")
        broker.leave("room", "bob")
        following.cancel()
        following.cancel()
        broker.enter("room", "dave")
        self.assertEqual(
            told_as(told),
            [
                (
                    "presence",
                    {
                        "channel": "room",
                        "count": 1,
                        "members": [{"sub": "alice", "connections": 1}],
                    },
                ),
                ("join", "bob"),
                ("leave", "alice"),
                ("leave", "bob"),
            ],
        )

    def test_follower_raises(self) -> None:
        """A follower that raises is logged; the others are told all the same."""
        broker = MemoryBroker()
        told: list[PresenceInfo | PresenceChange] = []

        def broken(news: object) -> None:
            raise RuntimeError("broken follower")

        broker.follow_presence("room", 10, broken)
        broker.follow_presence("room", 10, told.append)
        broker.enter("room", "alice")
        self.assertEqual(told_as(told)[1:], [("join", "alice")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_presence(self) -> None:
        """``presence`` answers at once."""
        broker = MemoryBroker()
        broker.enter("room", "alice")
        info = self.successResultOf(broker.presence("room", 10))
        self.assertEqual(info, PresenceInfo("room", 1, [Member("alice", 1)]))


# The hub


class HubPresenceTests(SynchronousTestCase):
    """GET /presence/{channel} and presence=1, without authorization."""

    def test_nobody(self) -> None:
        """A channel nobody opened answers count 0, not 404."""
        hub = PresenceHub(self)
        response = hub.presence("news")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("Content-Type"), "application/json")
        self.assertEqual(response.header("Cache-Control"), "no-store")
        self.assertEqual(
            answer_of(response), {"channel": "news", "count": 0, "members": []}
        )

    def test_counts_connections(self) -> None:
        """
        Every open stream counts, on /channels and on each channel a
        /subscribe names (not its patterns); one that closes leaves at once.
        """
        hub = PresenceHub(self)
        one = hub.subscribe("news")
        two = hub.get("news", "sport", "weather.*")
        self.assertEqual(answer_of(hub.presence("news"))["count"], 2)
        self.assertEqual(answer_of(hub.presence("sport"))["count"], 1)
        self.assertEqual(answer_of(hub.presence("weather.eu"))["count"], 0)
        one.disconnect()
        self.assertEqual(answer_of(hub.presence("news"))["count"], 1)
        two.disconnect()
        self.assertEqual(answer_of(hub.presence("news"))["count"], 0)
        self.assertEqual(hub.memory.present.channels(), [])

    def test_follow_on_channel(self) -> None:
        """
        ``presence=1`` on /channels/{name}: the presence first, then join
        and leave, none with an id, so the resume cursor stays the
        channel's.
        """
        hub = AuthHub(self, public=["room"])
        mount(hub, self)
        alice = hub.bearer(hub.token(sub="alice", sse={"subscribe": ["room"]}))
        bob = hub.bearer(hub.token(sub="bob", sse={"subscribe": ["room"]}))
        watching = hub.subscribe("room", headers=alice, query="?presence=1")
        cursor = watching.last_event_id
        anonymous = hub.subscribe("room")
        joined = hub.subscribe("room", headers=bob)
        again = hub.subscribe("room", headers=bob)
        hub.publish("hello", "room")
        joined.disconnect()
        anonymous.disconnect()
        again.disconnect()
        self.assertEqual(
            [
                (
                    event.type,
                    event.data if event.type == "message" else json.loads(event.data),
                )
                for event in watching.events
            ],
            [
                (
                    "presence",
                    {
                        "channel": "room",
                        "count": 1,
                        "members": [{"sub": "alice", "connections": 1}],
                    },
                ),
                ("join", {"channel": "room", "sub": "bob"}),
                ("message", "hello"),
                ("leave", {"channel": "room", "sub": "bob"}),
            ],
        )
        presence_frames = [
            frame
            for frame in watching.raw.split(b"\n\n")
            if frame.startswith((b"event: presence", b"event: join", b"event: leave"))
        ]
        self.assertEqual(len(presence_frames), 3)
        for frame in presence_frames:
            self.assertNotIn(b"\nid:", frame)
        self.assertEqual(watching.events[0].last_event_id, cursor)
        self.assertEqual(watching.events[1].last_event_id, cursor)
        self.assertNotEqual(watching.events[2].last_event_id, cursor)
        published = watching.events[2].last_event_id
        self.assertEqual(watching.events[3].last_event_id, published)

    def test_follow_on_subscribe(self) -> None:
        """``presence=1`` on /subscribe follows each channel it names."""
        hub = AuthHub(self, public=["a", "b"])
        mount(hub, self)
        alice = hub.bearer(hub.token(sub="alice", sse={"subscribe": ["a", "b"]}))
        watching = hub.get("a", "b", query="&presence=1")
        self.assertEqual(watching.code, 200)
        hub.get("b", headers=alice).disconnect()
        self.assertEqual(
            [(event.type, json.loads(event.data)) for event in watching.events],
            [
                ("presence", {"channel": "a", "count": 1, "members": []}),
                ("presence", {"channel": "b", "count": 1, "members": []}),
                ("join", {"channel": "b", "sub": "alice"}),
                ("leave", {"channel": "b", "sub": "alice"}),
            ],
        )

    def test_limit(self) -> None:
        """
        ``presence_members`` bounds the members listed; ``limit`` lists
        fewer, never more; ``limit=0`` counts only.
        """
        hub = AuthHub(self, public=["room"], presence_members=2)
        mount(hub, self)
        for sub in ("a", "b", "c"):
            hub.subscribe("room", headers=hub.bearer(hub.token(sub=sub, sse={})))
        listed = answer_of(_presence(hub, "room"))
        self.assertEqual(
            listed,
            {
                "channel": "room",
                "count": 3,
                "members": [
                    {"sub": "a", "connections": 1},
                    {"sub": "b", "connections": 1},
                ],
                "truncated": True,
            },
        )
        many = answer_of(_presence(hub, "room", "?limit=50"))
        self.assertEqual(len(many["members"]), 2)
        none = answer_of(_presence(hub, "room", "?limit=0"))
        self.assertEqual(
            (none["count"], none["members"], none["truncated"]), (3, [], True)
        )

    def test_bad_requests(self) -> None:
        """Bad names and limits get a 400 with a JSON reason; other methods 405."""
        hub = PresenceHub(self)
        bad = hub.presence("-bad")
        self.assertEqual(bad.code, 400)
        self.assertEqual(answer_of(bad), {"error": "invalid channel name: '-bad'"})
        for query in ("?limit=-1", "?limit=x", "?limit=10000000"):
            response = hub.presence("news", query)
            self.assertEqual(response.code, 400, query)
            self.assertIn("limit", answer_of(response)["error"])
        post = hub.client.request("POST", "/presence/news", {}, b"")
        self.assertEqual(post.code, 405)
        self.assertEqual(hub.client.get("/presence/").code, 404)
        self.assertEqual(hub.client.get("/presence/a/b").code, 404)
        head = hub.client.request("HEAD", "/presence/news", {}, b"")
        self.assertEqual(head.code, 200)

    def test_off(self) -> None:
        """
        Without presence, GET /presence answers 404 and presence=1 a 400,
        each with a JSON reason; streams without it open as before.
        """
        hub = PresenceHub(self, presence=False)
        self.assertEqual(hub.presence("news").code, 404)
        refused = hub.subscribe("news", query="?presence=1")
        self.assertEqual(refused.code, 400)
        self.assertIn("presence", answer_of(refused)["error"])
        self.assertEqual(hub.get("news", query="&presence=1").code, 400)
        self.assertEqual(hub.subscribe("news").code, 200)
        self.assertEqual(hub.memory.present.channels(), [])
        self.assertIsInstance(
            self.failureResultOf(hub.hub.presence("news")).value, NoPresence
        )

    def test_broker_without_presence(self) -> None:
        """A broker that does not provide IPresenceBroker: no presence."""
        self.assertIsNone(Hub(_Plain(), clock=_NoClock()).presence_broker)  # type: ignore[arg-type]

    def test_python_api(self) -> None:
        """``hub.presence()`` answers the same data, and refuses bad names."""
        hub = PresenceHub(self, presence_members=1)
        hub.subscribe("news")
        info = self.successResultOf(hub.hub.presence("news"))
        self.assertEqual(info, PresenceInfo("news", 1))
        self.assertIsInstance(
            self.failureResultOf(hub.hub.presence("a b")).value, ValueError
        )
        self.assertIsInstance(
            self.failureResultOf(hub.hub.presence("news", -1)).value, ValueError
        )
        with self.assertRaises(ValueError):
            Hub(MemoryBroker(), clock=_NoClock(), presence_members=-1)  # type: ignore[arg-type]

    def test_broker_down(self) -> None:
        """A broker that cannot answer: 503 with Retry-After."""
        hub = PresenceHub(self)
        hub.memory.presence = lambda channel, limit: _failed()  # type: ignore[method-assign]
        response = hub.presence("news")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.header("Retry-After"), "1")
        self.assertIn("broker unavailable", answer_of(response)["error"])


def _failed() -> Deferred[PresenceInfo]:
    failed: Deferred[PresenceInfo] = Deferred()
    failed.errback(BrokerUnavailable("down"))
    return failed


class _Plain:
    available = True


class _NoClock:
    def seconds(self) -> float:
        return 0.0

    def callLater(self, *args: object) -> None:
        raise AssertionError("no timers here")


class PresenceAuthTests(SynchronousTestCase):
    """Who may read presence."""

    def test_as_subscribing(self) -> None:
        """
        By default, whoever may subscribe to a channel may read its
        presence: public channels, tokens covering it; others get 401 or
        403 as for subscribing.
        """
        hub = JWTPresenceHub(self, public=["lobby"])
        self.assertEqual(hub.presence("lobby").code, 200)
        missing = hub.presence("room")
        self.assertEqual(missing.code, 401)
        self.assertIn("Bearer", missing.header("WWW-Authenticate") or "")
        reader = hub.bearer(hub.token(sse={"subscribe": ["room"]}))
        self.assertEqual(hub.presence("room", headers=reader).code, 200)
        other = hub.bearer(hub.token(sse={"subscribe": ["other"]}))
        refused = hub.presence("room", headers=other)
        self.assertEqual(refused.code, 403)
        self.assertEqual(
            answer_of(refused),
            {"error": "the credentials do not allow to read the presence on 'room'"},
        )
        query = hub.token(sse={"subscribe": ["room"]})
        self.assertEqual(hub.presence("room", f"?access_token={query}").code, 200)

    def test_claim(self) -> None:
        """
        With ``presence_claim``, only a token whose ``sse.presence`` covers
        the channel reads its presence, public channels included, and
        ``presence=1`` needs it too.
        """
        hub = JWTPresenceHub(self, public=["lobby"], presence_claim=True)
        self.assertEqual(hub.presence("lobby").code, 401)
        reader = hub.bearer(hub.token(sse={"subscribe": ["room"]}))
        self.assertEqual(hub.presence("room", headers=reader).code, 403)
        both = hub.bearer(
            hub.token(sse={"subscribe": ["room"], "presence": ["room", "lobby"]})
        )
        self.assertEqual(hub.presence("room", headers=both).code, 200)
        self.assertEqual(hub.presence("lobby", headers=both).code, 200)
        self.assertEqual(hub.subscribe("room", headers=reader).code, 200)
        refused = hub.subscribe("room", headers=reader, query="?presence=1")
        self.assertEqual(refused.code, 403)
        anonymous = hub.subscribe("lobby", query="?presence=1")
        self.assertEqual(anonymous.code, 401)
        self.assertIn("reading the presence here needs a token", anonymous.raw.decode())
        following = hub.subscribe("room", headers=both, query="?presence=1")
        self.assertEqual(following.code, 200)
        self.assertEqual(following.events[0].type, "presence")
        self.assertEqual(hub.get("room", "lobby", headers=reader).code, 200)
        self.assertEqual(
            hub.get("room", "lobby", headers=reader, query="&presence=1").code, 403
        )
        self.assertEqual(
            hub.get("room", "lobby", headers=both, query="&presence=1").code, 200
        )
        with self.assertRaises(ValueError):
            Hub(MemoryBroker(), clock=_NoClock(), presence_claim=True)  # type: ignore[arg-type]

    def test_hook(self) -> None:
        """
        The application's hook is asked "subscribe" for a presence read,
        or "presence" where the hub asks for a claim of its own.
        """
        asked: list[str] = []

        def hook(request: Any) -> Any:
            from twisted_sse import Grant

            asked.append(request.action)
            return Grant(identity="x", subscribe=("room",), presence=("room",))

        hub = PresenceHub(self, auth_hook=hook)
        self.assertEqual(hub.presence("room").code, 200)
        claimed = PresenceHub(self, auth_hook=hook, presence_claim=True)
        self.assertEqual(claimed.presence("room").code, 200)
        self.assertEqual(asked, ["subscribe", "presence"])

    def test_hook_stream_with_claim(self) -> None:
        """
        Where the hub asks for a presence claim, a ``presence=1`` stream
        asks the hook about subscribing and names the channels whose
        presence it reads; the hook's grant must cover both.
        """
        from twisted_sse import AuthRequest, Grant

        asked: list[AuthRequest] = []

        def hook(request: AuthRequest) -> Grant:
            asked.append(request)
            presence = ("room",) if request.presence else ()
            return Grant(identity="x", subscribe=("room",), presence=presence)

        hub = PresenceHub(self, auth_hook=hook, presence_claim=True)
        self.assertEqual(hub.subscribe("room", query="?presence=1").code, 200)
        self.assertEqual(hub.subscribe("room").code, 200)
        self.assertEqual(
            [(a.action, a.channels, a.presence) for a in asked],
            [("subscribe", ("room",), ("room",)), ("subscribe", ("room",), ())],
        )

        def narrow(request: AuthRequest) -> Grant:
            return Grant(identity="x", subscribe=("room",))

        refused = PresenceHub(self, auth_hook=narrow, presence_claim=True)
        response = refused.subscribe("room", query="?presence=1")
        self.assertEqual(response.code, 403)
        self.assertEqual(
            answer_of(response),
            {"error": "the credentials do not allow to read the presence on 'room'"},
        )

    def test_identity_from_token(self) -> None:
        """Members are the tokens' ``sub``; anonymous readers only count."""
        hub = JWTPresenceHub(self, public=["lobby"])
        hub.subscribe("lobby")
        token = hub.bearer(hub.token(sub="alice", sse={"subscribe": ["lobby"]}))
        hub.subscribe("lobby", headers=token)
        hub.publish("x", "lobby")
        self.assertEqual(
            answer_of(hub.presence("lobby")),
            {
                "channel": "lobby",
                "count": 2,
                "members": [{"sub": "alice", "connections": 1}],
            },
        )
