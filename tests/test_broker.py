"""
Tests for L{twisted_sse._broker}: the contract every broker keeps (channel
names, ids, the check of a publish, the loss event, L{Subscription}), and a
broker written against L{IBroker} alone, with nothing of ours but the
values, serving the hub for subscribe, resume and publish.

The in-memory broker is tested in test_memory.py, the Redis one in
test_redis*.py; publishing from another thread needs a running reactor, and
is proven in test_hub_live.py.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_sse._broker import (
    HISTORY_LOST_EVENT,
    Deliver,
    IBroker,
    Published,
    Subscription,
    check_publish,
    loss_event,
    parse_event_id,
    valid_channel,
)
from twisted_sse._event import Event
from twisted_sse._memory import MemoryBroker
from twisted_sse.testing import parse_events

from ._helpers import HubFixture, data, ids


class ValueTests(SynchronousTestCase):
    """What every broker shares: channel names and the memory broker's ids."""

    def test_channel_names(self) -> None:
        """Channel names are 1-128 of [A-Za-z0-9_.:@-], starting alphanumeric."""
        for good in ("a", "news", "room:42", "a.b-c_d@e", "x" * 128):
            self.assertTrue(valid_channel(good), good)
        for bad in ("", "-a", "_a", "a b", "a/b", "é", "x" * 129, "a\n"):
            self.assertFalse(valid_channel(bad), bad)

    def test_parse_event_id(self) -> None:
        """Ids are <epoch>-<seq> digits; anything else is malformed."""
        self.assertEqual(parse_event_id("17-4"), (17, 4))
        for bad in ("", "17", "17-", "-4", "a-4", "17-4-1", " 17-4", "1" * 21 + "-1"):
            self.assertIsNone(parse_event_id(bad), bad)


class CheckPublishTests(SynchronousTestCase):
    """One check of what a publish names, before any broker sees it."""

    def test_refused(self) -> None:
        """A bad channel, key or event is a ValueError naming the field."""
        event = Event(data="x")
        for channel, published, key, message in [
            ("", event, None, "invalid channel name"),
            ("-a", event, None, "invalid channel name"),
            ("a" * 129, event, None, "invalid channel name"),
            ("a", event, "", "key must be a string"),
            ("a", event, "k" * 257, "key must be a string"),
            ("a", event, 5, "key must be a string"),
            ("a", "x", None, "event must be an Event"),
        ]:
            with self.assertRaises(ValueError) as caught:
                check_publish(channel, published, key)  # type: ignore[arg-type]
            self.assertIn(message, str(caught.exception))
            broker = MemoryBroker()
            failure = self.failureResultOf(
                broker.publish(channel, published, key),  # type: ignore[arg-type]
                ValueError,
            )
            self.assertIn(message, str(failure.value))
            self.assertEqual(broker.channel_names(), [])

    def test_accepted(self) -> None:
        """A good publish passes."""
        check_publish("a.b:c@d-e_f", Event(data="x"), "k" * 256)


class ContractValueTests(SynchronousTestCase):
    """The values a broker of one's own builds its answers from."""

    def test_loss_event(self) -> None:
        """loss_event is a history-lost event with the position as its id."""
        published = loss_event("news", "7-3", "trimmed")
        self.assertEqual((published.channel, published.id), ("news", "7-3"))
        self.assertEqual(published.key, HISTORY_LOST_EVENT)
        (event,) = parse_events(published.frame)
        self.assertEqual(event.type, HISTORY_LOST_EVENT)
        self.assertEqual(event.last_event_id, "7-3")
        self.assertEqual(json.loads(event.data), {"reason": "trimmed"})

    def test_subscription_cancel_once(self) -> None:
        """A Subscription calls its broker's cancel once, however often cancelled."""
        calls: list[None] = []
        subscription = Subscription("news", cancel=lambda: calls.append(None))
        subscription.cancel()
        subscription.cancel()
        self.assertEqual(calls, [None])
        subscription.resume_replay()


@implementer(IBroker)
class ListBroker:
    """
    A broker as a user might write one, over a store of their own: it
    provides IBroker and inherits nothing of ours.  Ids are sequence
    numbers, the history is every event (in memory, for the example), and
    replays are not paced (the hub then holds what the client has not
    taken yet).  With ``at_once``, it answers subscribe_now.
    """

    available = True

    def __init__(self, at_once: bool) -> None:
        self.at_once = at_once
        self.events: dict[str, list[Published]] = {}
        self.subscribers: dict[str, list[Deliver]] = {}

    def publish(
        self, channel: str, event: Event, key: str | None = None
    ) -> Deferred[str]:
        try:
            check_publish(channel, event, key)
        except ValueError as error:
            return fail(error)
        history = self.events.setdefault(channel, [])
        event_id = str(len(history) + 1)
        # Encoded once, with its id: the same bytes go to every subscriber.
        frame = evolve(event, id=event_id).encode()
        key = key if key is not None else (event.event or "message")
        published = Published(channel, event_id, frame, key)
        history.append(published)
        for deliver in list(self.subscribers.get(channel, ())):
            deliver(published)
        return succeed(event_id)

    def subscribe(
        self, channel: str, deliver: Deliver, last_event_id: str | None = None
    ) -> Deferred[Subscription]:
        try:
            return succeed(self.subscription(channel, deliver, last_event_id))
        except ValueError as error:
            return fail(error)

    def subscribe_now(
        self, channel: str, deliver: Deliver, last_event_id: str | None = None
    ) -> Subscription | None:
        if not self.at_once:
            return None
        return self.subscription(channel, deliver, last_event_id)

    def subscription(
        self, channel: str, deliver: Deliver, last_event_id: str | None
    ) -> Subscription:
        if not valid_channel(channel):
            raise ValueError(f"invalid channel name: {channel!r}")
        history = self.events.setdefault(channel, [])
        start, lost = len(history), None
        if last_event_id:
            if last_event_id.isdigit() and int(last_event_id) <= len(history):
                start = int(last_event_id)
            else:
                lost = "unknown"
        for published in history[start:]:
            deliver(published)
        subscribers = self.subscribers.setdefault(channel, [])
        subscribers.append(deliver)
        return Subscription(
            channel,
            replayed=len(history) - start,
            history_lost=lost,
            position=str(len(history)),
            cancel=lambda: subscribers.remove(deliver),
        )

    def stop(self) -> Deferred[None]:
        return succeed(None)


class OwnBrokerTests(SynchronousTestCase):
    """A broker written against IBroker alone serves the hub as ours do."""

    at_once = False

    def setUp(self) -> None:
        self.broker = ListBroker(self.at_once)
        self.hub = HubFixture(self, broker=self.broker, max_queue_events=3)

    def test_provides_ibroker(self) -> None:
        """The test's broker is an IBroker and none of ours."""
        self.assertTrue(verifyObject(IBroker, self.broker))
        self.assertNotIsInstance(self.broker, MemoryBroker)

    def test_subscribe(self) -> None:
        """A subscriber learns the position, then gets what is published."""
        self.hub.publish("before")
        response = self.hub.subscribe()
        self.assertEqual(response.code, 200)
        self.assertIn(b"id: 1\n", response.raw)
        self.hub.publish("a")
        self.hub.publish("b")
        self.assertEqual(data(response), ["a", "b"])
        self.assertEqual(ids(response), ["2", "3"])

    def test_resume(self) -> None:
        """A resume replays the events after the id, in order, then live."""
        for n in range(1, 11):
            self.hub.publish(str(n))
        response = self.hub.subscribe(last_event_id="4")
        self.hub.publish("11")
        self.assertEqual(data(response), [str(n) for n in range(5, 12)])
        self.assertIsNone(response.header("SSE-History-Lost"))
        self.assertEqual(self.hub.hub.resumes["exact"], 1)
        self.assertEqual(self.hub.hub.replayed, 6)

    def test_resume_lost(self) -> None:
        """A resume the broker cannot make is told, with the position."""
        self.hub.publish("a")
        response = self.hub.subscribe(last_event_id="x-9")
        self.assertEqual(response.header("SSE-History-Lost"), "unknown")
        self.assertEqual([event.type for event in response.events], ["history-lost"])
        self.assertEqual(response.last_event_id, "1")

    def test_publish(self) -> None:
        """POST publishes through the broker and answers its id."""
        response = self.hub.subscribe()
        posted = self.hub.post_json(data="hello")
        self.assertEqual(posted.code, 200)
        self.assertEqual(json.loads(posted.raw), {"id": "1"})
        self.assertEqual(data(response), ["hello"])

    def test_disconnect_cancels(self) -> None:
        """A client that leaves is unsubscribed."""
        response = self.hub.subscribe()
        self.assertEqual(len(self.broker.subscribers["news"]), 1)
        response.disconnect()
        self.assertEqual(self.broker.subscribers["news"], [])


class OwnBrokerAtOnceTests(OwnBrokerTests):
    """One that answers subscribe_now opens its streams while rendering."""

    at_once = True

    def test_opened_while_rendering(self) -> None:
        """The stream is open before render returns: no Deferred on the way."""

        def deferred(*args: Any) -> Any:
            self.fail("subscribed through the Deferred")

        self.patch(self.broker, "subscribe", deferred)
        response = self.hub.subscribe()
        self.assertEqual(response.code, 200)
        self.hub.publish("a")
        self.assertEqual(data(response), ["a"])


class _OlderBroker(ListBroker):
    """A broker written before subscribe_now: it has no such method."""

    subscribe_now = None  # type: ignore[assignment]


class OwnOlderBrokerTests(OwnBrokerTests):
    """One without subscribe_now is asked subscribe, and serves as well."""

    def setUp(self) -> None:
        self.broker = _OlderBroker(False)
        self.hub = HubFixture(self, broker=self.broker, max_queue_events=3)

    def test_provides_ibroker(self) -> None:
        """The hub asks its subscribe for every subscriber, and nothing else."""
        asked: list[str] = []
        subscribe = self.broker.subscribe

        def counted(channel: str, *args: Any) -> Any:
            asked.append(channel)
            return subscribe(channel, *args)

        self.patch(self.broker, "subscribe", counted)
        self.assertEqual(self.hub.subscribe().code, 200)
        self.assertEqual(self.hub.subscribe("other").code, 200)
        self.assertEqual(asked, ["news", "other"])
