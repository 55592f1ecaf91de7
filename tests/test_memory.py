"""
Tests for L{twisted_sse._memory}: the in-memory broker's ids, fan-out,
history and resume, paced replays, and the bounds that hold whatever
publishers do (total bytes, channel TTL).
"""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_sse._broker import (
    DEFAULT_HISTORY,
    HISTORY_LOST_EVENT,
    Deliver,
    IBroker,
    Published,
    Subscription,
)
from twisted_sse._event import Event
from twisted_sse._memory import MemoryBroker

from ._helpers import Collector, Pacer


class BrokerTestCase(SynchronousTestCase):
    """Helpers shared by the memory broker tests."""

    def publish(self, broker: MemoryBroker, channel: str, data: str) -> str:
        return self.successResultOf(broker.publish(channel, Event(data=data)))

    def subscribe(
        self,
        broker: MemoryBroker,
        channel: str,
        last_event_id: str | None = None,
    ) -> tuple[Collector, Subscription]:
        collector = Collector()
        subscription = self.successResultOf(
            broker.subscribe(channel, collector, last_event_id)
        )
        self.addCleanup(subscription.cancel)
        return collector, subscription

    def subscribe_now(
        self,
        broker: MemoryBroker,
        channel: str,
        deliver: Deliver,
        last_event_id: str | None = None,
    ) -> Subscription:
        """``broker.subscribe_now``, which the memory broker always answers."""
        subscription = broker.subscribe_now(channel, deliver, last_event_id)
        if subscription is None:
            self.fail("the memory broker did not answer at once")
        return subscription


class InterfaceTests(SynchronousTestCase):
    """MemoryBroker is an IBroker with sane defaults."""

    def test_provides_ibroker(self) -> None:
        """MemoryBroker provides IBroker."""
        self.assertTrue(verifyObject(IBroker, MemoryBroker()))

    def test_default_history(self) -> None:
        """History defaults to 1000 events per channel."""
        self.assertEqual(DEFAULT_HISTORY, 1000)
        self.assertEqual(MemoryBroker().history, 1000)

    def test_negative_bounds_refused(self) -> None:
        """Negative history bounds raise ValueError."""
        self.assertRaises(ValueError, MemoryBroker, history=-1)
        self.assertRaises(ValueError, MemoryBroker, history_bytes=-1)

    def test_stop(self) -> None:
        """stop() fires at once: nothing to release."""
        self.assertIsNone(self.successResultOf(MemoryBroker().stop()))


class IdTests(BrokerTestCase):
    """Ids increase within a channel and carry the broker's epoch."""

    def test_publish_fires_with_id(self) -> None:
        """publish() returns a Deferred that fires with <epoch>-<n>."""
        broker = MemoryBroker(epoch=42)
        self.assertEqual(self.publish(broker, "news", "a"), "42-1")
        self.assertEqual(self.publish(broker, "news", "b"), "42-2")

    def test_ids_per_channel(self) -> None:
        """Each channel counts its own ids, increasing."""
        broker = MemoryBroker(epoch=1)
        ids = [self.publish(broker, c, "x") for c in ("a", "b", "a", "a", "b")]
        self.assertEqual(ids, ["1-1", "1-1", "1-2", "1-3", "1-2"])

    def test_default_epoch_is_start_time(self) -> None:
        """The default epoch is the start time in milliseconds."""
        before = int(time.time() * 1000)
        broker = MemoryBroker()
        after = int(time.time() * 1000)
        self.assertGreaterEqual(broker.epoch, before)
        self.assertLessEqual(broker.epoch, after)

    def test_restart_not_confused(self) -> None:
        """An id from an earlier run (another epoch) is unknown, not replayed."""
        earlier = MemoryBroker(epoch=1000)
        old_id = self.publish(earlier, "news", "old")
        restarted = MemoryBroker(epoch=2000)
        self.publish(restarted, "news", "new 1")
        self.publish(restarted, "news", "new 2")
        got, subscription = self.subscribe(restarted, "news", old_id)
        self.assertEqual(subscription.history_lost, "unknown")
        self.assertEqual(got.got, [])
        self.assertEqual(subscription.position, "2000-2")

    def test_ids_survive_idle(self) -> None:
        """A channel whose subscribers all left keeps counting from where it was."""
        broker = MemoryBroker(epoch=1, history=0)
        self.publish(broker, "news", "a")
        _, subscription = self.subscribe(broker, "news")
        subscription.cancel()
        self.assertEqual(self.publish(broker, "news", "b"), "1-2")

    def test_publisher_id_replaced(self) -> None:
        """An id set on the published event is replaced by the broker's."""
        broker = MemoryBroker(epoch=3)
        got, _ = self.subscribe(broker, "news")
        event_id = self.successResultOf(
            broker.publish("news", Event(data="x", id="forged"))
        )
        self.assertEqual(event_id, "3-1")
        self.assertEqual(got.got[0].frame, b"id: 3-1\ndata: x\n\n")

    def test_invalid_channel(self) -> None:
        """publish() and subscribe() on an invalid channel fail with ValueError."""
        broker = MemoryBroker()
        self.failureResultOf(broker.publish("a b", Event(data="x")), ValueError)
        self.failureResultOf(broker.subscribe("a b", Collector()), ValueError)


class FanOutTests(BrokerTestCase):
    """Live events reach every subscriber, encoded once."""

    def test_every_subscriber(self) -> None:
        """Every subscriber of the channel, and only those, gets each event."""
        broker = MemoryBroker(epoch=1)
        first, _ = self.subscribe(broker, "news")
        second, _ = self.subscribe(broker, "news")
        other, _ = self.subscribe(broker, "sport")
        self.publish(broker, "news", "a")
        self.publish(broker, "news", "b")
        self.assertEqual(first.data, ["a", "b"])
        self.assertEqual(second.data, ["a", "b"])
        self.assertEqual(other.got, [])

    def test_same_bytes(self) -> None:
        """Every subscriber gets the very same frame bytes object."""
        broker = MemoryBroker()
        collectors = [self.subscribe(broker, "news")[0] for _ in range(5)]
        self.publish(broker, "news", "x" * 1000)
        frames = [collector.got[0].frame for collector in collectors]
        for frame in frames:
            self.assertIs(frame, frames[0])

    def test_encoded_once(self) -> None:
        """An event is encoded once per publish, however many subscribers."""
        calls = []
        original = Event.encode

        def counting(event: Event) -> bytes:
            calls.append(event)
            return original(event)

        self.patch(Event, "encode", counting)
        broker = MemoryBroker()
        for _ in range(10):
            self.subscribe(broker, "news")
        self.publish(broker, "news", "x")
        self.assertEqual(len(calls), 1)

    def test_frame(self) -> None:
        """The frame carries the id, type, retry and data."""
        broker = MemoryBroker(epoch=9)
        got, _ = self.subscribe(broker, "news")
        broker.publish("news", Event(data="a\nb", event="update", retry=500))
        self.assertEqual(
            got.got[0].frame,
            b"retry: 500\nid: 9-1\nevent: update\ndata: a\ndata: b\n\n",
        )
        self.assertEqual(got.got[0].channel, "news")
        self.assertEqual(got.got[0].id, "9-1")

    def test_key(self) -> None:
        """The conflation key is the one given, else the type, else message."""
        broker = MemoryBroker()
        got, _ = self.subscribe(broker, "news")
        broker.publish("news", Event(data="1"))
        broker.publish("news", Event(data="2", event="price"))
        broker.publish("news", Event(data="3", event="price"), key="EURUSD")
        self.assertEqual([p.key for p in got.got], ["message", "price", "EURUSD"])

    def test_cancel(self) -> None:
        """A cancelled subscription gets nothing more; cancel is idempotent."""
        broker = MemoryBroker()
        got, subscription = self.subscribe(broker, "news")
        self.publish(broker, "news", "a")
        subscription.cancel()
        subscription.cancel()
        self.publish(broker, "news", "b")
        self.assertEqual(got.data, ["a"])
        self.assertEqual(broker.subscriber_count("news"), 0)

    def test_idle_channel_forgotten(self) -> None:
        """A channel without events is forgotten when its last subscriber goes."""
        broker = MemoryBroker()
        _, subscription = self.subscribe(broker, "quiet")
        self.assertEqual(broker.channel_names(), ["quiet"])
        self.assertEqual(broker.subscriber_count("quiet"), 1)
        subscription.cancel()
        self.assertEqual(broker.channel_names(), [])

    def test_failing_subscriber(self) -> None:
        """A subscriber that raises is logged; the others still get the event."""
        broker = MemoryBroker()
        first, _ = self.subscribe(broker, "news")

        def broken(published: Published) -> None:
            raise ZeroDivisionError()

        self.successResultOf(broker.subscribe("news", broken))
        last, _ = self.subscribe(broker, "news")
        self.publish(broker, "news", "a")
        self.assertEqual(first.data, ["a"])
        self.assertEqual(last.data, ["a"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_publish_from_subscriber(self) -> None:
        """An event published from a subscriber's callback reaches all in order."""
        broker = MemoryBroker(epoch=1)

        def echo(published: Published) -> None:
            if published.id == "1-1":
                broker.publish("news", Event(data="reply"))

        first, _ = self.subscribe(broker, "news")
        self.successResultOf(broker.subscribe("news", echo))
        last, _ = self.subscribe(broker, "news")
        self.publish(broker, "news", "question")
        self.assertEqual(first.ids, ["1-1", "1-2"])
        self.assertEqual(last.ids, ["1-1", "1-2"])

    def test_subscribe_from_subscriber(self) -> None:
        """A subscription made during a fan-out gets each event exactly once."""
        broker = MemoryBroker(epoch=1)
        late: list[Collector] = []

        def join(published: Published) -> None:
            if not late:
                late.append(self.subscribe(broker, "news", "1-0")[0])
                broker.publish("news", Event(data="second"))

        self.successResultOf(broker.subscribe("news", join))
        self.publish(broker, "news", "first")
        self.publish(broker, "news", "third")
        self.assertEqual(late[0].ids, ["1-1", "1-2", "1-3"])

    def test_cancel_during_fan_out(self) -> None:
        """A subscriber cancelled by an earlier one's callback gets nothing."""
        broker = MemoryBroker()
        victim: list[Subscription] = []

        def cancel_next(published: Published) -> None:
            victim[0].cancel()

        self.successResultOf(broker.subscribe("news", cancel_next))
        got, subscription = self.subscribe(broker, "news")
        victim.append(subscription)
        self.publish(broker, "news", "a")
        self.assertEqual(got.got, [])


class HistoryTests(BrokerTestCase):
    """History is bounded by count and bytes, and resume replays from it."""

    def test_bounded_by_count(self) -> None:
        """Only the last `history` events are kept."""
        broker = MemoryBroker(epoch=1, history=3)
        for n in range(10):
            self.publish(broker, "news", str(n))
        got, subscription = self.subscribe(broker, "news", "1-0")
        self.assertEqual(subscription.history_lost, "trimmed")
        got, subscription = self.subscribe(broker, "news", "1-7")
        self.assertIsNone(subscription.history_lost)
        self.assertEqual(got.data, ["7", "8", "9"])

    def test_bounded_by_bytes(self) -> None:
        """Events are trimmed once their frames exceed history_bytes."""
        frame_size = len(Event(id="1-1", data="x" * 100).encode())
        broker = MemoryBroker(epoch=1, history_bytes=frame_size * 2)
        for _ in range(5):
            self.publish(broker, "news", "x" * 100)
        _, lost = self.subscribe(broker, "news", "1-2")
        self.assertEqual(lost.history_lost, "trimmed")
        got, kept = self.subscribe(broker, "news", "1-3")
        self.assertIsNone(kept.history_lost)
        self.assertEqual(got.ids, ["1-4", "1-5"])

    def test_memory_bounded(self) -> None:
        """However much is published, history stays within its byte bound."""
        broker = MemoryBroker(history=1000, history_bytes=10_000)
        for _ in range(2000):
            self.publish(broker, "news", "y" * 500)
        self.assertLessEqual(broker.total_bytes, 10_000)
        self.assertEqual(broker.total_bytes, _history_bytes(broker))

    def test_no_history(self) -> None:
        """history=0 keeps nothing, yet resuming from the latest id is exact."""
        broker = MemoryBroker(epoch=1, history=0)
        self.publish(broker, "news", "a")
        self.publish(broker, "news", "b")
        _, current = self.subscribe(broker, "news", "1-2")
        self.assertIsNone(current.history_lost)
        _, behind = self.subscribe(broker, "news", "1-1")
        self.assertEqual(behind.history_lost, "trimmed")

    def test_resume_strictly_after(self) -> None:
        """Resuming replays every event strictly after the id, then live."""
        broker = MemoryBroker(epoch=5)
        for n in range(5):
            self.publish(broker, "news", str(n))
        got, subscription = self.subscribe(broker, "news", "5-2")
        self.assertEqual(subscription.replayed, 3)
        self.assertIsNone(subscription.history_lost)
        self.publish(broker, "news", "5")
        self.assertEqual(got.ids, ["5-3", "5-4", "5-5", "5-6"])

    def test_resume_from_latest(self) -> None:
        """Resuming from the latest id replays nothing and signals no loss."""
        broker = MemoryBroker(epoch=5)
        self.publish(broker, "news", "a")
        got, subscription = self.subscribe(broker, "news", "5-1")
        self.assertEqual((got.got, subscription.history_lost), ([], None))

    def test_resume_from_zero(self) -> None:
        """<epoch>-0 (an empty channel's position) replays the whole history."""
        broker = MemoryBroker(epoch=5)
        _, empty = self.subscribe(broker, "news")
        self.assertEqual(empty.position, "5-0")
        self.publish(broker, "news", "a")
        self.publish(broker, "news", "b")
        got, subscription = self.subscribe(broker, "news", empty.position)
        self.assertEqual((got.data, subscription.history_lost), (["a", "b"], None))

    def test_resume_oldest_kept(self) -> None:
        """The id just before the oldest kept event still resumes exactly."""
        broker = MemoryBroker(epoch=1, history=3)
        for n in range(6):
            self.publish(broker, "news", str(n))
        got, subscription = self.subscribe(broker, "news", "1-3")
        self.assertIsNone(subscription.history_lost)
        self.assertEqual(got.ids, ["1-4", "1-5", "1-6"])

    def test_malformed(self) -> None:
        """A malformed id replays nothing and says 'malformed'."""
        broker = MemoryBroker(epoch=1)
        self.publish(broker, "news", "a")
        for bad in ("garbage", "1-", "1-1-1", "1-x", "<script>"):
            got, subscription = self.subscribe(broker, "news", bad)
            self.assertEqual(subscription.history_lost, "malformed")
            self.assertEqual(got.got, [])
            self.assertEqual(subscription.position, "1-1")

    def test_unknown_future(self) -> None:
        """An id past the channel's last one is 'unknown'."""
        broker = MemoryBroker(epoch=1)
        self.publish(broker, "news", "a")
        _, subscription = self.subscribe(broker, "news", "1-99")
        self.assertEqual(subscription.history_lost, "unknown")

    def test_live_after_loss(self) -> None:
        """After a loss the subscription still goes live."""
        broker = MemoryBroker(epoch=1)
        got, _ = self.subscribe(broker, "news", "junk")
        self.publish(broker, "news", "a")
        self.assertEqual(got.data, ["a"])

    def test_position(self) -> None:
        """position is the last id published before the subscription."""
        broker = MemoryBroker(epoch=8)
        self.publish(broker, "news", "a")
        self.publish(broker, "news", "b")
        _, subscription = self.subscribe(broker, "news")
        self.assertEqual(subscription.position, "8-2")
        self.assertEqual(subscription.replayed, 0)
        self.assertIsNone(subscription.history_lost)

    def test_history_per_channel(self) -> None:
        """Trimming one channel leaves the others' history alone."""
        broker = MemoryBroker(epoch=1, history=2)
        self.publish(broker, "quiet", "q")
        for n in range(5):
            self.publish(broker, "busy", str(n))
        got, subscription = self.subscribe(broker, "quiet", "1-0")
        self.assertEqual((got.data, subscription.history_lost), (["q"], None))


class SubscribeNowTests(BrokerTestCase):
    """MemoryBroker.subscribe_now: subscribe without a Deferred."""

    def test_same_as_subscribe(self) -> None:
        """It replays and goes live as subscribe does, and returns at once."""
        broker = MemoryBroker(epoch=7)
        for text in "abc":
            self.publish(broker, "news", text)
        collector = Collector()
        subscription = self.subscribe_now(broker, "news", collector, "7-1")
        self.addCleanup(subscription.cancel)
        self.publish(broker, "news", "d")
        self.assertEqual(collector.data, ["b", "c", "d"])
        self.assertEqual(subscription.replayed, 2)
        self.assertIsNone(subscription.history_lost)
        self.assertEqual(subscription.position, "7-3")

    def test_invalid_channel(self) -> None:
        """A bad name raises ValueError naming it; subscribe fails with it."""
        broker = MemoryBroker()
        with self.assertRaises(ValueError) as raised:
            broker.subscribe_now("bad name", Collector())
        self.assertIn("'bad name'", str(raised.exception))
        self.failureResultOf(broker.subscribe("bad name", Collector()), ValueError)
        self.assertEqual(broker.channel_names(), [])

    def test_position_shared(self) -> None:
        """Subscribers between two publishes share one position string."""
        broker = MemoryBroker(epoch=7)
        _, first = self.subscribe(broker, "news")
        _, second = self.subscribe(broker, "news")
        self.assertEqual(first.position, "7-0")
        self.assertIs(first.position, second.position)
        self.publish(broker, "news", "a")
        _, third = self.subscribe(broker, "news")
        self.assertEqual(third.position, "7-1")

    def test_subscription_cancels_itself(self) -> None:
        """The subscription is its own cancel handle, and is idempotent."""
        broker = MemoryBroker()
        collector = Collector()
        subscription = self.subscribe_now(broker, "news", collector)
        self.assertEqual(broker.subscriber_count("news"), 1)
        subscription.cancel()
        subscription.cancel()
        self.publish(broker, "news", "a")
        self.assertEqual(collector.data, [])
        self.assertEqual(broker.subscriber_count("news"), 0)


class PacedReplayTests(BrokerTestCase):
    """A replay goes only as fast as its subscriber takes it."""

    def test_paused_by_deliver(self) -> None:
        """The replay stops after the event for which deliver says no room."""
        broker = MemoryBroker(epoch=5)
        for n in range(1, 11):
            self.publish(broker, "a", str(n))
        pacer = Pacer(3)
        subscription = self.subscribe_now(broker, "a", pacer, "5-0")
        self.addCleanup(subscription.cancel)
        self.assertEqual(pacer.data, ["1", "2", "3"])
        self.assertEqual(subscription.replayed, 3)
        # Live events wait in the history, not in the subscription.
        self.publish(broker, "a", "11")
        self.assertEqual(pacer.data, ["1", "2", "3"])
        pacer.take(subscription)
        self.assertEqual(pacer.data, [str(n) for n in range(1, 7)])
        pacer.take(subscription)
        pacer.take(subscription)
        pacer.take(subscription)
        self.assertEqual(pacer.data, [str(n) for n in range(1, 12)])
        # Caught up: live from here, whatever deliver answers.
        self.publish(broker, "a", "12")
        self.publish(broker, "a", "13")
        self.assertEqual(pacer.data, [str(n) for n in range(1, 14)])
        self.assertEqual(subscription.replayed, 11)

    def test_resume_when_not_paused(self) -> None:
        """resume_replay on a live or plain subscription does nothing."""
        broker = MemoryBroker(epoch=5)
        collector, subscription = self.subscribe(broker, "a")
        subscription.resume_replay()
        self.publish(broker, "a", "1")
        subscription.resume_replay()
        self.assertEqual(collector.data, ["1"])

    def test_cancel_while_paused(self) -> None:
        """A paused replay that is cancelled leaves nothing behind."""
        broker = MemoryBroker(epoch=5, channel_ttl=0)
        self.publish(broker, "a", "1")
        self.publish(broker, "a", "2")
        pacer = Pacer(1)
        subscription = self.subscribe_now(broker, "a", pacer, "5-0")
        self.assertEqual(broker.subscriber_count("a"), 1)
        subscription.cancel()
        subscription.resume_replay()
        self.assertEqual(broker.subscriber_count("a"), 0)
        self.publish(broker, "a", "3")
        self.assertEqual(pacer.data, ["1"])

    def test_trimmed_while_paused(self) -> None:
        """History trimmed past a paused cursor: one exact loss, then the rest."""
        broker = MemoryBroker(epoch=5, history=5)
        for n in range(1, 6):
            self.publish(broker, "a", str(n))
        pacer = Pacer(2)
        subscription = self.subscribe_now(broker, "a", pacer, "5-0")
        self.addCleanup(subscription.cancel)
        self.assertEqual(pacer.ids, ["5-1", "5-2"])
        # Paused at 5-2; two more events trim 5-1 and 5-2, which it has.
        self.publish(broker, "a", "6")
        self.publish(broker, "a", "7")
        self.assertEqual(len(pacer.got), 2)
        # The next trims 5-3, which it has not: it is told at once (so its
        # policy may act), with the id to resume from.
        self.publish(broker, "a", "8")
        self.assertEqual(pacer.got[-1].key, HISTORY_LOST_EVENT)
        self.assertEqual(pacer.got[-1].id, "5-3")
        # More trimming while it has not read: no second event now...
        self.publish(broker, "a", "9")
        self.publish(broker, "a", "10")
        self.assertEqual(len(pacer.got), 3)
        # ...but an exact one when it reads, then everything kept.
        pacer.room = 100
        pacer.take(subscription)
        self.assertEqual(pacer.got[3].key, HISTORY_LOST_EVENT)
        self.assertEqual(pacer.ids[3:], ["5-5", "5-6", "5-7", "5-8", "5-9", "5-10"])

    @settings(max_examples=200, deadline=None)
    @given(
        before=st.integers(min_value=0, max_value=30),
        resume=st.integers(min_value=0, max_value=30),
        steps=st.lists(
            st.tuples(st.integers(min_value=1, max_value=4), st.integers(0, 3)),
            max_size=20,
        ),
        history=st.integers(min_value=1, max_value=40),
    )
    def test_exact_whatever_the_pace(
        self,
        before: int,
        resume: int,
        steps: list[tuple[int, int]],
        history: int,
    ) -> None:
        """At any pace, a replay is exact, or says where it lost events."""
        broker = MemoryBroker(epoch=5, history=history)
        for n in range(1, before + 1):
            self.publish(broker, "a", str(n))
        resume = min(resume, before)
        pacer = Pacer(1)
        subscription = self.subscribe_now(broker, "a", pacer, f"5-{resume}")
        published = before
        for room, publishes in steps:
            for _ in range(publishes):
                published += 1
                self.publish(broker, "a", str(published))
            pacer.room = room
            pacer.take(subscription)
        pacer.room = 10_000
        pacer.take(subscription)
        subscription.cancel()
        expected = resume
        if subscription.history_lost is not None:
            # Lost at the start: the hub says so, live from the position.
            self.assertEqual(subscription.history_lost, "trimmed")
            self.assertLess(resume, before - history)
            expected = before
        for got in pacer.got:
            seq = int(got.id.split("-")[1])
            if got.key == HISTORY_LOST_EVENT:
                # A loss names the id to resume from: the gap is before it.
                self.assertGreaterEqual(seq, expected)
                expected = seq
            else:
                self.assertEqual(seq, expected + 1)
                expected = seq
        self.assertEqual(expected, published)


class BoundTests(BrokerTestCase):
    """No publisher can make the broker grow without bound."""

    def test_total_history(self) -> None:
        """Past history_total, the least recently published channels go first."""
        frame = len(Event(data="x" * 90, id="5-1").encode())
        broker = MemoryBroker(epoch=5, history_total=10 * frame)
        for channel in ("a", "b", "c"):
            for _ in range(4):
                self.publish(broker, channel, "x" * 90)
        self.assertLessEqual(broker.total_bytes, 10 * frame)
        # a was published least recently: it lost its two oldest events.
        _, lost = self.subscribe(broker, "a", "5-1")
        self.assertEqual(lost.history_lost, "trimmed")
        for channel in ("b", "c"):
            collector, resumed = self.subscribe(broker, channel, "5-0")
            self.assertIsNone(resumed.history_lost)
            self.assertEqual(len(collector.got), 4)
        # Publishing on a moves it to the end: b is trimmed next.
        self.publish(broker, "a", "x" * 90)
        _, lost = self.subscribe(broker, "b", "5-0")
        self.assertEqual(lost.history_lost, "trimmed")

    def test_total_bounds_many_channels(self) -> None:
        """5,000 channels published once each keep at most history_total bytes."""
        broker = MemoryBroker(history_total=64 * 1024)
        _, _watched = self.subscribe(broker, "c0")
        for n in range(5000):
            self.publish(broker, f"c{n}", "x" * 100)
        self.assertLessEqual(broker.total_bytes, 64 * 1024)
        # A channel left with no history and no subscriber is forgotten; a
        # subscribed one is kept.
        kept = broker.channel_names()
        self.assertIn("c0", kept)
        self.assertLess(len(kept), 64 * 1024 // 100 + 1)
        self.assertEqual(
            broker.total_bytes,
            _history_bytes(broker),
        )

    def test_channel_ttl(self) -> None:
        """A channel with no subscriber and no publish for the TTL is forgotten."""
        clock = Clock()
        broker = MemoryBroker(epoch=5, channel_ttl=60, clock=clock)
        for n in range(5000):
            self.publish(broker, f"c{n}", "x")
        self.publish(broker, "kept", "x")
        _collector, subscription = self.subscribe(broker, "watched")
        self.publish(broker, "watched", "x")
        clock.advance(30)
        self.publish(broker, "kept", "y")
        clock.advance(31)
        self.publish(broker, "other", "x")
        self.assertEqual(sorted(broker.channel_names()), ["kept", "other", "watched"])
        self.assertEqual(
            broker.total_bytes,
            _history_bytes(broker),
        )
        # A subscriber keeps its channel; once it leaves, the TTL runs.
        subscription.cancel()
        clock.advance(59)
        self.publish(broker, "other", "y")
        self.assertIn("watched", broker.channel_names())
        clock.advance(61)
        self.publish(broker, "other", "z")
        self.assertNotIn("watched", broker.channel_names())

    def test_forgotten_ids_not_resumed(self) -> None:
        """Ids of a forgotten channel never resume into a new one of that name."""
        clock = Clock()
        clock.advance(1000)
        broker = MemoryBroker(epoch=5, channel_ttl=60, clock=clock)
        for n in range(1, 4):
            old = self.publish(broker, "a", str(n))
        clock.advance(120)
        self.publish(broker, "b", "x")
        self.assertNotIn("a", broker.channel_names())
        for n in range(1, 6):
            self.publish(broker, "a", str(n))
        collector, subscription = self.subscribe(broker, "a", old)
        self.assertEqual(subscription.history_lost, "unknown")
        self.assertEqual(collector.got, [])

    def test_no_ttl(self) -> None:
        """channel_ttl=0 keeps channels, as before."""
        clock = Clock()
        broker = MemoryBroker(epoch=5, channel_ttl=0, clock=clock)
        self.publish(broker, "a", "1")
        clock.advance(10**6)
        self.publish(broker, "b", "1")
        self.assertEqual(sorted(broker.channel_names()), ["a", "b"])


def _history_bytes(broker: MemoryBroker) -> int:
    """The bytes of every frame the broker keeps, counted afresh."""
    return sum(
        len(published.frame)
        for channel in broker.channel_names()
        for published in broker.history_of(channel)
    )
