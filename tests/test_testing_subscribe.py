"""
Tests for L{twisted_sse.testing.SSETestClient.subscribe}: a hub's
C{/subscribe} stream of several channels and patterns, driven in virtual
time over both of the test client's transports.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from tests._transports import TransportCase, over_both_transports
from twisted_sse import Event, Hub, StreamResource
from twisted_sse._fanin import parse_selection
from twisted_sse._memory import MemoryBroker
from twisted_sse.testing import SSETestClient, SSETestResponse

from ._helpers import EPOCH, answer, data


class _Served:
    """
    A hub on a memory broker and a clock, its ``/subscribe`` mounted in a
    plain ``twisted.web`` tree, and a test client for the tree.
    """

    def __init__(self, transport: str, **hub_options: Any) -> None:
        self.clock = Clock()
        self.broker = MemoryBroker(clock=self.clock, epoch=EPOCH)
        self.hub = Hub(self.broker, clock=self.clock, **hub_options)
        root = Resource()
        root.putChild(b"subscribe", self.hub.subscribe_resource())
        self.client = SSETestClient(root, self.clock, transport=transport)

    def publish(self, channel: str, text: str, **fields: Any) -> str:
        """Publish from Python; the event's id in its channel."""
        ids: list[str] = []
        self.hub.publish(channel, Event(data=text, **fields)).addCallback(ids.append)
        # The reactor's next turn: what the publish left buffered.
        self.client.flush()
        return ids[0]

    def watches(self) -> int:
        """The pattern watches the broker still has."""
        return sum(len(found) for found in self.broker._watches.values())

    def assert_clean(self, testcase: SynchronousTestCase) -> None:
        """Nothing outlived the clients: streams, timers, subscribers, watches."""
        resource = self.hub.subscribe_resource()
        assert isinstance(resource, StreamResource)
        self.client.assert_clean(
            self.hub.registry,
            self.hub.heartbeat,
            resource,
            brokers=[self.broker],
            testcase=testcase,
        )
        testcase.assertEqual(self.watches(), 0)


def _by_channel(response: SSETestResponse) -> dict[str, list[str]]:
    """The data of the response's events by their type (their channel)."""
    found: dict[str, list[str]] = defaultdict(list)
    for event in response.events:
        found[event.type].append(event.data)
    return dict(found)


class SubscribeRequestTests(SynchronousTestCase):
    """The request subscribe sends, and the names it refuses to send."""

    def setUp(self) -> None:
        self.served = _Served("memory")
        self.client = self.served.client
        self.addCleanup(self.served.assert_clean, self)
        self.addCleanup(self.client.disconnect_all)

    def test_query(self) -> None:
        """Each name is one channel parameter, in the order given."""
        response = self.client.subscribe(["b", "news.*", "a:1@x"])
        self.assertEqual(
            response.path, "/subscribe?channel=b&channel=news.*&channel=a:1@x"
        )
        self.assertEqual(response.code, 200)

    def test_envelope_and_path(self) -> None:
        """envelope=True asks for envelope=1; a query in the path is kept."""
        response = self.client.subscribe(["a"], envelope=True, path="/subscribe?x=1")
        self.assertEqual(response.path, "/subscribe?x=1&channel=a&envelope=1")

    def test_last_event_id_and_headers(self) -> None:
        """The cursor is sent as Last-Event-ID, beside the headers given."""
        response = self.client.subscribe(
            ["a"], last_event_id="~x", headers={"X-Trace": "1"}
        )
        headers = response.request_headers
        self.assertEqual(headers.getRawHeaders(b"Last-Event-ID"), [b"~x"])
        self.assertEqual(headers.getRawHeaders(b"X-Trace"), [b"1"])

    def test_refused_names(self) -> None:
        """
        A name the hub answers 400 is a ValueError carrying the hub's own
        reason, and nothing is sent.
        """
        for names, query in [
            ([], ""),
            ([""], "channel="),
            (["*"], "channel=*"),
            (["news*"], "channel=news*"),
            (["a", "bad name"], "channel=a&channel=bad%20name"),
            (["-a"], "channel=-a"),
            (["a" * 129], "channel=" + "a" * 129),
        ]:
            error = self.assertRaises(ValueError, self.client.subscribe, names)
            refused = self.client.get("/subscribe?" + query)
            self.assertEqual(refused.code, 400, names)
            self.assertEqual(answer(refused), {"error": str(error)}, names)
        self.assertEqual(len(self.client.responses), 7)

    def test_one_string(self) -> None:
        """One string rather than a list of names is a TypeError."""
        error = self.assertRaises(TypeError, self.client.subscribe, "news")
        self.assertIn("['news']", str(error))
        self.assertEqual(self.client.responses, [])

    def test_count_left_to_the_hub(self) -> None:
        """How many names a connection may have is the hub's to judge."""
        served = _Served("memory", max_subscriptions=2)
        self.addCleanup(served.assert_clean, self)
        response = served.client.subscribe(["a", "b", "c"])
        self.assertEqual(response.code, 400)
        with self.assertRaises(ValueError) as raised:
            parse_selection(["a", "b", "c"], 2)
        self.assertEqual(answer(response), {"error": str(raised.exception)})


@over_both_transports
class SubscribeStreamTests(TransportCase):
    """One stream of two channels and a pattern, in virtual time."""

    def setUp(self) -> None:
        self.served = _Served(self.transport)
        self.client = self.served.client
        self.clock = self.served.clock
        self.addCleanup(self.served.assert_clean, self)
        self.addCleanup(self.client.disconnect_all)

    def test_channels_and_pattern(self) -> None:
        """
        Events of the channels and of every channel under the pattern
        arrive with their channel as their type; a typed event keeps its
        type; others do not arrive.
        """
        response = self.client.subscribe(["a", "b", "news.*"])
        self.assertEqual(response.code, 200)
        self.assertEqual(response.retry, 1000)
        self.assertTrue(response.last_event_id.startswith("~"))
        self.assertEqual(response.events, [])
        served = self.served
        served.publish("a", "a1")
        served.publish("news.eu", "eu1")
        served.publish("c", "not subscribed")
        served.publish("news", "not under news.")
        served.publish("newsroom", "not under news.")
        served.publish("b", "b1")
        served.publish("news.eu.fr", "fr1")
        served.publish("a", "typed", event="alert")
        self.assertEqual(
            [(event.type, event.data) for event in response.events],
            [
                ("a", "a1"),
                ("news.eu", "eu1"),
                ("b", "b1"),
                ("news.eu.fr", "fr1"),
                ("alert", "typed"),
            ],
        )
        ids = [event.last_event_id for event in response.events]
        self.assertTrue(all(i.startswith("~") for i in ids), ids)
        self.assertEqual(len(set(ids)), len(ids))
        self.assertEqual(response.last_event_id, ids[-1])

    def test_envelope(self) -> None:
        """
        With envelope=True the data names the channel and events are
        untyped, after the opening ``cursor`` event.
        """
        response = self.client.subscribe(["a", "news.*"], envelope=True)
        self.assertEqual([event.type for event in response.events], ["cursor"])
        response.events.clear()
        self.served.publish("news.eu", "eu1")
        self.served.publish("a", "a1", event="alert")
        self.assertEqual([event.type for event in response.events], ["message"] * 2)
        self.assertEqual(
            [json.loads(text) for text in data(response)],
            [
                {"channel": "news.eu", "event": None, "data": "eu1"},
                {"channel": "a", "event": "alert", "data": "a1"},
            ],
        )

    def test_heartbeats(self) -> None:
        """
        A silent stream gets heartbeat comments as the clock moves, and
        no event.
        """
        response = self.client.subscribe(["a", "news.*"])
        half = self.served.hub.heartbeat.interval / 2
        self.clock.advance(half)
        self.clock.advance(half)
        self.client.flush()
        self.assertEqual(len(response.comments), 1)
        for _ in range(4):
            self.clock.advance(half)
        self.client.flush()
        self.assertEqual(len(response.comments), 3)
        self.assertEqual(response.events, [])
        self.assertTrue(response.connected)

    def test_resume_exactly_the_missed(self) -> None:
        """
        Disconnect, publish, subscribe again with the last cursor (the
        names in another order): exactly the missed events of every
        channel, a channel first published meanwhile under the pattern
        included, then live ones.
        """
        served = self.served
        first = self.client.subscribe(["a", "b", "news.*"])
        served.publish("a", "a1")
        served.publish("news.eu", "eu1")
        first.disconnect()
        self.assertEqual(self.served.broker.subscriber_count("a"), 0)
        served.publish("a", "a2")
        served.publish("news.eu", "eu2")
        served.publish("b", "b1")
        served.publish("c", "c1")
        served.publish("news.new", "new1")
        served.publish("a", "a3")
        again = self.client.subscribe(
            ["news.*", "b", "a"], last_event_id=first.last_event_id
        )
        self.assertEqual(again.code, 200)
        self.assertIsNone(again.header("SSE-History-Lost"))
        self.assertEqual(
            _by_channel(again),
            {"a": ["a2", "a3"], "b": ["b1"], "news.eu": ["eu2"], "news.new": ["new1"]},
        )
        served.publish("news.eu", "eu3")
        self.assertEqual(again.events[-1].type, "news.eu")
        self.assertEqual(again.events[-1].data, "eu3")
        self.assertEqual(len(again.events), 6)

    def test_nothing_left(self) -> None:
        """
        While the stream is open the leak check names its subscribers;
        once the client leaves, no subscriber, watch or timer is left,
        and a channel first published under the pattern gets no subscriber.
        """
        served = self.served
        response = self.client.subscribe(["a", "news.*"])
        served.publish("news.eu", "eu1")
        self.assertEqual(served.watches(), 1)
        error = self.assertRaises(
            self.failureException,
            self.client.assert_clean,
            brokers=[served.broker],
            testcase=self,
        )
        self.assertIn("subscriber(s) left on channel 'a'", str(error))
        self.assertIn("subscriber(s) left on channel 'news.eu'", str(error))
        response.disconnect()
        served.assert_clean(self)
        served.publish("news.later", "x")
        self.assertEqual(served.broker.subscriber_count("news.later"), 0)
        served.assert_clean(self)


_CHANNELS = ["a", "b", "news.x", "news.y.z", "c", "newsroom"]
_SUBSCRIBED = {"a", "b", "news.x", "news.y.z"}


@over_both_transports
class SubscribeResumeProperties(TransportCase):
    """Whatever was published around a disconnect, the resume is exact."""

    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        # The twin class over TCP runs the same test function.
        suppress_health_check=[HealthCheck.differing_executors],
    )
    @given(
        before=st.lists(st.sampled_from(_CHANNELS), max_size=12),
        missed=st.lists(st.sampled_from(_CHANNELS), max_size=12),
        after=st.lists(st.sampled_from(_CHANNELS), max_size=4),
        order=st.permutations(["a", "b", "news.*"]),
    )
    def test_exactly_once_in_order(
        self,
        before: list[str],
        missed: list[str],
        after: list[str],
        order: list[str],
    ) -> None:
        """
        Every event of a subscribed channel arrives exactly once over the
        two connections, in order per channel; no other event arrives.
        """
        served = _Served(self.transport)
        expected: dict[str, list[str]] = defaultdict(list)
        first = served.client.subscribe(["a", "b", "news.*"])
        for number, channel in enumerate(before):
            served.publish(channel, f"{channel}-{number}")
            if channel in _SUBSCRIBED:
                expected[channel].append(f"{channel}-{number}")
        first.disconnect()
        for number, channel in enumerate(missed, len(before)):
            served.publish(channel, f"{channel}-{number}")
            if channel in _SUBSCRIBED:
                expected[channel].append(f"{channel}-{number}")
        again = served.client.subscribe(order, last_event_id=first.last_event_id)
        for number, channel in enumerate(after, len(before) + len(missed)):
            served.publish(channel, f"{channel}-{number}")
            if channel in _SUBSCRIBED:
                expected[channel].append(f"{channel}-{number}")
        self.assertIsNone(again.header("SSE-History-Lost"))
        received: dict[str, list[str]] = defaultdict(list)
        for response in (first, again):
            for channel, texts in _by_channel(response).items():
                received[channel].extend(texts)
        self.assertEqual(dict(received), dict(expected))
        again.disconnect()
        served.assert_clean(self)
