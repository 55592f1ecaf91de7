"""
Tests for the logic of L{twisted_sse.RedisBroker} on a fake Redis
(L{tests._redis_tools.FakeRedis}, which runs the broker's scripts as the Lua
does) and a L{Clock}: paced replays, epochs, what is checked at publish and
when, and the periodic check of followed channels.  The scripts themselves
meet a real Redis in test_redis.py and test_redis_epochs.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from twisted_sse._broker import (
    HISTORY_LOST_EVENT,
    MAX_KEY_LENGTH,
    BrokerUnavailable,
    Published,
    Subscription,
    check_publish,
)
from twisted_sse._event import MAX_RETRY, Event
from twisted_sse._redis import _broker, _channels, _entries, _reader, _scripts
from twisted_sse._redis._address import RedisAddress
from twisted_sse._redis._broker import RedisBroker
from twisted_sse._redis._entries import Snapshot, published_from_fields, restart_point

from ._helpers import Collector, Pacer
from ._redis_tools import FakeRedis, fake_broker


def _epoch(event_id: str) -> str:
    return event_id.partition(":")[0]


def _entry(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition(":")[2].partition("-")
    return int(ms), int(seq)


@contextmanager
def _pages(entries: int, size: int = _broker.PAGE_BYTES) -> Iterator[None]:
    """Replay pages (and reader batches) of at most ``entries``, ``size`` bytes."""
    with (
        mock.patch.object(_broker, "BATCH", entries),
        mock.patch.object(_reader, "BATCH", entries),
        mock.patch.object(_channels, "PAGE_BYTES", size),
    ):
        yield


class FakeRedisTestCase(SynchronousTestCase):
    """A fake Redis and a clock; brokers on them, stopped afterwards."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.redis = FakeRedis(self.clock)

    def broker(self, **options: Any) -> RedisBroker:
        broker: RedisBroker = fake_broker(self.clock, self.redis, **options)
        self.addCleanup(broker.stop)
        return broker

    def publish(self, broker: RedisBroker, channel: str, data: str) -> str:
        # A millisecond apart, as events mostly are.
        self.clock.advance(0.001)
        return self.successResultOf(broker.publish(channel, Event(data=data)))

    def subscribe(
        self,
        broker: RedisBroker,
        channel: str,
        deliver: Any = None,
        last_event_id: str | None = None,
    ) -> tuple[Any, Subscription]:
        deliver = Collector() if deliver is None else deliver
        subscribing = broker.subscribe(channel, deliver, last_event_id)
        # New subscribers of a channel share a read at the end of the turn.
        self.clock.advance(0)
        subscription = self.successResultOf(subscribing)
        self.addCleanup(subscription.cancel)
        return deliver, subscription

    def position(self, broker: RedisBroker, channel: str) -> str:
        """The channel's position, as a new subscriber is given it."""
        _, subscription = self.subscribe(broker, channel)
        subscription.cancel()
        return subscription.position

    def page_reads(self) -> list[tuple[Any, ...]]:
        """The snapshot scripts run with a page (an id to read after)."""
        sha = _scripts.SNAPSHOT.sha
        return [
            args
            for args in self.redis.commands
            if args[0] == "EVALSHA" and args[1] == sha and args[7]
        ]


class PacedReplayTests(FakeRedisTestCase):
    """A replay goes only as fast as its subscriber takes it."""

    def test_paused_by_deliver(self) -> None:
        """The replay stops after the event for which deliver says no room."""
        broker = self.broker()
        start = self.position(broker, "a")
        for n in range(1, 11):
            self.publish(broker, "a", str(n))
        pacer = Pacer(3)
        with _pages(4):
            _, subscription = self.subscribe(broker, "a", pacer, start)
            self.assertEqual(pacer.data, ["1", "2", "3"])
            self.assertEqual(subscription.replayed, 3)
            # Live events wait in Redis, not in the subscription.
            self.publish(broker, "a", "11")
            self.assertEqual(pacer.data, ["1", "2", "3"])
            pacer.take(subscription)
            self.assertEqual(pacer.data, [str(n) for n in range(1, 7)])
            for _ in range(3):
                pacer.take(subscription)
            self.assertEqual(pacer.data, [str(n) for n in range(1, 12)])
            # Caught up: live from here, whatever deliver answers.
            self.publish(broker, "a", "12")
            self.publish(broker, "a", "13")
        self.assertEqual(pacer.data, [str(n) for n in range(1, 14)])
        self.assertEqual(subscription.replayed, 11)

    def test_paused_keeps_a_cursor(self) -> None:
        """
        A paused replay reads nothing more however much is published, and
        goes on from just after the last entry it delivered.
        """
        broker = self.broker()
        start = self.position(broker, "a")
        ids = [self.publish(broker, "a", str(n)) for n in range(10)]
        pacer = Pacer(2)
        with _pages(5):
            _, subscription = self.subscribe(broker, "a", pacer, start)
            reads = len(self.page_reads())
            for n in range(50):
                self.publish(broker, "a", str(n))
            self.assertEqual(len(self.page_reads()), reads)
            pacer.take(subscription)
        after = self.page_reads()[reads][7]
        self.assertEqual(f"{_epoch(ids[1])}:{after}", ids[1])
        self.assertEqual(pacer.ids[:4], ids[:4])

    def test_subscription_after_first_page(self) -> None:
        """
        The subscription is given once the first page is delivered: a
        replay longer than a page goes on as its subscriber takes it.
        """
        broker = self.broker()
        start = self.position(broker, "a")
        for n in range(30):
            self.publish(broker, "a", str(n))
        pacer = Pacer(10)
        with _pages(10):
            _, subscription = self.subscribe(broker, "a", pacer, start)
            self.assertEqual(len(self.page_reads()), 1)
            self.assertEqual(subscription.replayed, 10)
            self.assertIsNone(subscription.history_lost)
            pacer.room = 100
            pacer.take(subscription)
        self.assertEqual(pacer.data, [str(n) for n in range(30)])

    def test_pages_bounded_in_bytes(self) -> None:
        """A page holds at most the page bytes (one entry more if larger)."""
        broker = self.broker()
        start = self.position(broker, "a")
        for _ in range(20):
            self.publish(broker, "a", "x" * 100)
        pacer = Pacer(1)
        with _pages(1000, size=250):
            _, subscription = self.subscribe(broker, "a", pacer, start)
            first = self.page_reads()
            pacer.room = 1000
            pacer.take(subscription)
        self.assertEqual(len(pacer.got), 20)
        # 114 bytes of fields an entry: three a page, for the 19 left.
        self.assertEqual(len(self.page_reads()) - len(first), 7)

    def test_live_not_held_for_a_paused_replay(self) -> None:
        """
        Live events published while a replay waits reach it from Redis,
        once, in order, after the history, and then it is live.
        """
        broker = self.broker()
        start = self.position(broker, "a")
        ids = [self.publish(broker, "a", str(n)) for n in range(5)]
        pacer = Pacer(1)
        with _pages(2):
            _, subscription = self.subscribe(broker, "a", pacer, start)
            ids += [self.publish(broker, "a", str(n)) for n in range(5, 25)]
            token = next(iter(broker.reader.channels["a"].joining))
            replay = broker.reader.channels["a"].joining[token]
            self.assertNotIn(token, broker.reader.channels["a"].subscribers)
            self.assertEqual(replay.cursor, _entry(ids[0]))  # type: ignore[union-attr]
            pacer.room = 1000
            pacer.take(subscription)
            self.assertIn(token, broker.reader.channels["a"].subscribers)
            ids.append(self.publish(broker, "a", "live"))
        self.assertEqual(pacer.ids, ids)

    def test_resume_during_deliver(self) -> None:
        """A deliver that asks for more before saying no room is not paused."""
        broker = self.broker()
        start = self.position(broker, "a")
        for n in range(6):
            self.publish(broker, "a", str(n))
        got: list[Published] = []
        holder: list[Subscription] = []

        def deliver(published: Published) -> bool:
            got.append(published)
            if holder:
                holder[0].resume_replay()
            return False

        with _pages(2):
            subscription = self.successResultOf(broker.subscribe("a", deliver, start))
            self.addCleanup(subscription.cancel)
            holder.append(subscription)
            self.assertEqual(len(got), 1)
            subscription.resume_replay()
        self.assertEqual(len(got), 6)

    def test_cancel_while_paused(self) -> None:
        """A paused replay that is cancelled leaves nothing behind."""
        broker = self.broker()
        start = self.position(broker, "a")
        self.publish(broker, "a", "1")
        self.publish(broker, "a", "2")
        pacer = Pacer(1)
        _, subscription = self.subscribe(broker, "a", pacer, start)
        self.assertEqual(broker.subscriber_count("a"), 1)
        subscription.cancel()
        subscription.resume_replay()
        self.assertEqual(broker.subscriber_count("a"), 0)
        self.assertEqual(broker.channel_names(), [])
        self.publish(broker, "a", "3")
        self.assertEqual(pacer.data, ["1"])

    def test_cancelled_by_its_deliver(self) -> None:
        """A replay whose deliver cancels it stops there."""
        broker = self.broker()
        start = self.position(broker, "a")
        for n in range(5):
            self.publish(broker, "a", str(n))
        got: list[Published] = []
        holder: list[Subscription] = []

        def deliver(published: Published) -> bool:
            got.append(published)
            if len(got) == 2:
                holder[0].cancel()
            return False

        with _pages(1):
            holder.append(self.successResultOf(broker.subscribe("a", deliver, start)))
            holder[0].resume_replay()
            holder[0].resume_replay()
        self.assertEqual(len(got), 2)
        self.assertEqual(broker.channel_names(), [])

    def test_trimmed_while_paused(self) -> None:
        """
        History trimmed past a paused cursor: when the subscriber reads, a
        loss event (reason trimmed) whose id is just before the first entry
        kept, then everything kept.
        """
        broker = self.broker(history=5)
        start = self.position(broker, "a")
        ids = [self.publish(broker, "a", str(n)) for n in range(1, 6)]
        pacer = Pacer(2)
        _, subscription = self.subscribe(broker, "a", pacer, start)
        self.assertEqual(pacer.ids, ids[:2])
        ids += [self.publish(broker, "a", str(n)) for n in range(6, 11)]
        pacer.room = 100
        pacer.take(subscription)
        loss = pacer.got[2]
        self.assertEqual(loss.key, HISTORY_LOST_EVENT)
        self.assertIn(b'"reason": "trimmed"', loss.frame)
        # Just before 6, the oldest kept: resuming from it is exact.
        self.assertEqual(_entry(loss.id), _entries.before(_entry(ids[5])))
        self.assertEqual(pacer.ids[3:], ids[5:])
        resumed, again = self.subscribe(broker, "a", None, loss.id)
        self.assertIsNone(again.history_lost)
        self.assertEqual(resumed.ids, ids[5:])

    def test_resume_point_judged(self) -> None:
        """
        A trimmed id, an id of the future and garbage are told as lost, with
        the channel's position, and nothing is replayed.
        """
        broker = self.broker(history=3)
        start = self.position(broker, "a")
        ids = [self.publish(broker, "a", str(n)) for n in range(10)]
        epoch = _epoch(ids[0])
        for last_event_id, reason in [
            (start, "trimmed"),
            (ids[0], "trimmed"),
            (f"{epoch}:{2**63}-0", "unknown"),
            (ids[-1].partition(":")[2], "unknown"),
            ("other:1-0", "unknown"),
            ("12-x", "malformed"),
        ]:
            got, subscription = self.subscribe(broker, "a", None, last_event_id)
            self.assertEqual(
                (subscription.history_lost, subscription.position, got.got),
                (reason, ids[-1], []),
            )
        got, subscription = self.subscribe(broker, "a", None, ids[-3])
        self.assertIsNone(subscription.history_lost)
        self.assertEqual(got.ids, ids[-2:])

    @settings(max_examples=1000, deadline=None)
    # A replay that reads past the reader: it joins with a floor.
    @example(
        3, 0, 12, 5, 10_000, [(5, 2, ["publish", "read", "commands", "reader"], None)]
    )
    # A reader ahead of a replay's last page: it reads on.
    @example(
        3, 0, 12, 5, 10_000, [(5, 2, ["read", "publish", "reader", "commands"], None)]
    )
    @given(
        before=st.integers(min_value=0, max_value=15),
        resume=st.integers(min_value=0, max_value=15),
        history=st.integers(min_value=1, max_value=12),
        batch=st.integers(min_value=1, max_value=5),
        page_bytes=st.sampled_from([30, 10_000]),
        rounds=st.lists(
            st.tuples(
                st.integers(1, 4),
                st.integers(0, 4),
                st.permutations(["read", "publish", "reader", "commands"]),
                st.sampled_from(
                    [None, None, None, "flush", "restart behind", "reconnect", "check"]
                ),
            ),
            max_size=10,
        ),
    )
    def test_exact_whatever_the_pace(
        self,
        before: int,
        resume: int,
        history: int,
        batch: int,
        page_bytes: int,
        rounds: list[tuple[int, int, list[str], str | None]],
    ) -> None:
        """
        However the subscriber paces itself, however much is published,
        trimmed or lost by Redis meanwhile (a flush, a restart on a clock
        behind), however late Redis's replies come to each connection, and
        however the reader is cut off, it gets every event after its resume
        point exactly once and in order, or a loss event before any gap,
        and then every live one.
        """
        clock = Clock()
        clock.advance(1_700_000_000)
        redis = FakeRedis(clock)
        broker: RedisBroker = fake_broker(clock, redis, history=history, channel_ttl=30)
        commands = broker.commands.client  # type: ignore[attr-defined]
        reader = broker.reader.link.client  # type: ignore[attr-defined]

        def publish(n: int) -> None:
            for _ in range(n):
                clock.advance(0.001)
                publishing = broker.publish("a", Event(data="x"))
                # Lost with the connection, yet maybe stored.
                publishing.addErrback(lambda failure: failure.trap(BrokerUnavailable))

        with _pages(batch, size=page_bytes):
            subscribing = broker.subscribe("a", Collector())
            clock.advance(0)
            first = self.successResultOf(subscribing)
            first.cancel()
            publish(before)
            resume_id = [first.position, *redis.published][min(resume, before)]
            pacer = Pacer(1)
            subscription = self.successResultOf(broker.subscribe("a", pacer, resume_id))
            # Replies come when the round says: the reader and the replay
            # each may be behind the other.
            redis.lagging = True
            for room, publishes, order, trouble in rounds:
                if trouble == "flush":
                    clock.advance(1)
                    redis.flush()
                elif trouble == "restart behind":
                    # A restart (or failover) on a host whose clock is
                    # behind the last ids: the connections drop, too.
                    redis.flush(skew_ms=-5)
                    broker.reader.link.drop()
                    broker.commands.drop()
                elif trouble == "reconnect":
                    broker.reader.link.drop()
                elif trouble == "check":
                    clock.advance(broker.check_interval)
                for action in order:
                    if action == "read":
                        pacer.room = room
                        pacer.take(subscription)
                    elif action == "publish":
                        publish(publishes)
                    else:
                        redis.answer(reader if action == "reader" else commands, 3)
            redis.answer_all()
            # A Redis that came back with ids behind the reader's position
            # is noticed by the periodic check, at the latest.
            clock.advance(broker.check_interval)
            redis.answer_all()
            pacer.room = 10_000
            pacer.take(subscription)
            redis.answer_all()
        published = redis.published

        def successor(point: str) -> str | None:
            for event_id in published:
                if _epoch(event_id) == _epoch(point) and _entry(event_id) > _entry(
                    point
                ):
                    return event_id
            return None

        point = resume_id
        if subscription.history_lost is not None:
            self.assertEqual(subscription.history_lost, "trimmed")
            point = subscription.position
        for got in pacer.got:
            if got.key == HISTORY_LOST_EVENT:
                if _epoch(got.id) == _epoch(point):
                    self.assertGreaterEqual(_entry(got.id), _entry(point))
                point = got.id
            else:
                self.assertEqual(got.id, successor(point), (pacer.ids, published))
                point = got.id
        self.assertIsNone(successor(point), (pacer.ids, published))
        subscription.cancel()
        broker.stop()


class EpochTests(FakeRedisTestCase):
    """Each channel's epoch tells a lost history from a short one."""

    def test_ids_carry_the_epoch(self) -> None:
        """
        Ids are <epoch>:<stream entry id>, an empty channel's position too;
        the epoch is kept beside the stream.
        """
        broker = self.broker()
        empty = self.position(broker, "a")
        epoch = self.redis.epoch(b"sse:a")
        assert epoch is not None
        self.assertEqual(empty, f"{epoch.decode()}:0-0")
        event_id = self.publish(broker, "a", "x")
        stream_id = self.redis.streams[b"sse:a"].entries[0][0]
        self.assertEqual(event_id, f"{epoch.decode()}:{stream_id[0]}-{stream_id[1]}")
        self.assertEqual(self.position(broker, "a"), event_id)

    def test_resume_after_redis_lost_everything(self) -> None:
        """
        An id from before Redis lost the channel is unknown, even though the
        new events' ids are larger; so is an empty channel's position.
        """
        broker = self.broker()
        empty = self.position(broker, "a")
        held = self.publish(broker, "a", "acknowledged")
        self.redis.flush()
        self.clock.advance(1)
        fresh = self.publish(broker, "a", "after")
        self.assertGreater(_entry(fresh), _entry(held))
        for last_event_id in (held, empty):
            got, subscription = self.subscribe(broker, "a", None, last_event_id)
            self.assertEqual(
                (subscription.history_lost, subscription.position, got.got),
                ("unknown", fresh, []),
            )

    def test_live_loss_on_first_publish(self) -> None:
        """
        Redis flushed, then a publish: the live subscribers are told at once
        (the publish marks the first entry of the new epoch), with an id
        that resumes exactly, then get the event.
        """
        broker = self.broker()
        got, _ = self.subscribe(broker, "a")
        old = self.publish(broker, "a", "before")
        self.redis.flush()
        self.clock.advance(1)
        new = self.publish(broker, "a", "after")
        self.assertEqual(got.ids[0], old)
        self.assertEqual([p.key for p in got.got[1:]], [HISTORY_LOST_EVENT, "message"])
        loss = got.got[1]
        self.assertIn(b'"reason": "unknown"', loss.frame)
        self.assertEqual(_epoch(loss.id), _epoch(new))
        self.assertEqual(got.ids[2], new)
        resumed, subscription = self.subscribe(broker, "a", None, loss.id)
        self.assertIsNone(subscription.history_lost)
        self.assertEqual(resumed.ids, [new])

    def test_live_loss_epoch_made_elsewhere(self) -> None:
        """
        When another process made the new epoch (a subscriber's read after
        the flush), the first publish in it still tells this one's readers.
        """
        broker, other = self.broker(), self.broker()
        got, _ = self.subscribe(broker, "a")
        self.publish(broker, "a", "before")
        self.redis.flush()
        self.clock.advance(1)
        self.subscribe(other, "a", None, "x:1-0")  # makes the new epoch
        new = self.publish(other, "a", "after")
        self.assertEqual([p.key for p in got.got[1:]], [HISTORY_LOST_EVENT, "message"])
        self.assertEqual(got.ids[2], new)

    def test_live_loss_on_reconnect(self) -> None:
        """A reader that reconnects to an emptied Redis tells its subscribers."""
        broker = self.broker()
        got, _ = self.subscribe(broker, "a")
        self.publish(broker, "a", "before")
        self.redis.flush()
        broker.reader.link.drop()
        self.assertEqual(got.got[-1].key, HISTORY_LOST_EVENT)
        new = self.publish(broker, "a", "after")
        self.assertEqual(got.ids[-1], new)
        self.assertEqual(_epoch(got.ids[-2]), _epoch(new))

    def test_live_loss_found_by_check(self) -> None:
        """
        A flush with no publish since is found by the periodic check of
        the followed channels.
        """
        broker = self.broker(channel_ttl=30)
        got, _ = self.subscribe(broker, "a")
        self.publish(broker, "a", "before")
        self.redis.flush()
        self.clock.advance(broker.check_interval - 0.5)
        self.assertEqual(len(got.got), 1)
        self.clock.advance(0.5)
        self.assertEqual(got.got[-1].key, HISTORY_LOST_EVENT)
        loss = got.got[-1]
        new = self.publish(broker, "a", "after")
        resumed, subscription = self.subscribe(broker, "a", None, loss.id)
        self.assertIsNone(subscription.history_lost)
        self.assertEqual(resumed.ids, [new])

    def test_lost_tail_rotates_the_epoch(self) -> None:
        """
        Redis holds less of a stream than the reader read, under the same
        epoch (a failover to a replica that missed writes): the epoch is
        rotated, the subscribers are told, and the ids given out before are
        refused; what is left and what follows is delivered once.
        """
        broker, other = self.broker(), self.broker()
        got, _ = self.subscribe(broker, "a")
        on_other, _ = self.subscribe(other, "a")
        ids = [self.publish(broker, "a", str(n)) for n in range(5)]
        stream = self.redis.streams[b"sse:a"]
        # The replica had only the first three.
        del stream.entries[3:]
        stream.last_generated = stream.entries[-1][0]
        stream.entries_added = 3
        broker.reader.link.drop()
        other.reader.link.drop()
        for collector in (got, on_other):
            self.assertEqual(collector.ids[:5], ids)
            loss = collector.got[5]
            self.assertEqual(loss.key, HISTORY_LOST_EVENT)
            self.assertNotEqual(_epoch(loss.id), _epoch(ids[0]))
            self.assertEqual(_entry(loss.id), _entry(ids[2]))
        _, held = self.subscribe(broker, "a", None, ids[4])
        self.assertEqual(held.history_lost, "unknown")
        new = self.publish(broker, "a", "after")
        self.assertEqual(got.ids[6:], [new])
        self.assertEqual(on_other.ids[6:], [new])
        resumed, subscription = self.subscribe(other, "a", None, got.got[5].id)
        self.assertIsNone(subscription.history_lost)
        self.assertEqual(resumed.ids, [new])

    def test_paused_replay_across_a_loss(self) -> None:
        """
        Redis loses the channel while a replay waits: when the subscriber
        reads, a loss event (reason unknown), then the new epoch's events.
        """
        broker = self.broker()
        start = self.position(broker, "a")
        for n in range(5):
            self.publish(broker, "a", str(n))
        pacer = Pacer(2)
        _, subscription = self.subscribe(broker, "a", pacer, start)
        self.redis.flush()
        self.clock.advance(1)
        new = [self.publish(broker, "a", f"new {n}") for n in range(3)]
        pacer.room = 100
        pacer.take(subscription)
        self.assertEqual(pacer.data[:2], ["0", "1"])
        loss = pacer.got[2]
        self.assertEqual(loss.key, HISTORY_LOST_EVENT)
        self.assertIn(b'"reason": "unknown"', loss.frame)
        self.assertEqual(pacer.ids[3:], new)
        self.publish(broker, "a", "live")
        self.assertEqual(pacer.data[-1], "live")

    def test_old_mark_ignored(self) -> None:
        """The mark of an older epoch, read again, switches nothing."""
        self.assertTrue(_entries.newer("b", "a"))
        self.assertFalse(_entries.newer("a", "b"))
        self.assertFalse(_entries.newer("a", "a"))
        self.assertFalse(_entries.newer("NOT AN EPOCH", "a"))
        self.assertTrue(_entries.newer("a", ""))

    def test_restart_point(self) -> None:
        """
        After a new epoch, a reader goes on from where it was if the stream
        goes on past it or was rotated from its epoch, else from the start;
        never before what was trimmed.
        """
        grown = Snapshot(True, (9, 0), first=(1, 0), length=5, entries_added=5)
        self.assertEqual(restart_point(grown, (4, 0), "old"), (4, 0))
        remade = Snapshot(True, (3, 0), first=(1, 0), length=3, entries_added=3)
        self.assertEqual(restart_point(remade, (4, 0), "old"), (0, 0))
        rotated = Snapshot(
            True, (3, 0), first=(1, 0), length=3, entries_added=3, previous="old"
        )
        self.assertEqual(restart_point(rotated, (4, 0), "old"), (3, 0))
        trimmed = Snapshot(True, (3, 0), first=(2, 5), length=3, entries_added=9)
        self.assertEqual(restart_point(trimmed, (4, 0), "old"), (2, 4))
        self.assertEqual(restart_point(Snapshot(False), (4, 0), "old"), (0, 0))


@implementer(ILogObserver)
class _Logs:
    """The log events emitted while it is installed."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self)
        case.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def texts(self) -> list[str]:
        return [formatEvent(event) for event in self.events]


class CheckedOnceTests(FakeRedisTestCase):
    """What one broker accepts, every broker delivers; what it cannot, none."""

    def test_publish_refused_as_every_broker_does(self) -> None:
        """publish() fails with check_publish's ValueError, sending nothing."""
        broker = self.broker()
        sent = len(self.redis.commands)
        for channel, event, key in [
            ("bad name", Event(data="x"), None),
            ("a", Event(data="x"), "k" * (MAX_KEY_LENGTH + 1)),
            ("a", Event(data="x"), ""),
            ("a", "not an event", None),
        ]:
            with self.assertRaises(ValueError) as expected:
                check_publish(channel, event, key)  # type: ignore[arg-type]
            failure = self.failureResultOf(
                broker.publish(channel, event, key),  # type: ignore[arg-type]
                ValueError,
            )
            self.assertEqual(str(failure.value), str(expected.exception))
        self.assertEqual(len(self.redis.commands), sent)

    def test_retry_bounds(self) -> None:
        """
        A retry past MAX_RETRY cannot even be made into an event; one read
        from Redis is refused the same way.
        """
        with self.assertRaises(ValueError):
            Event(data="x", retry=10**15)
        with self.assertRaises(ValueError):
            Event(data="x", retry=MAX_RETRY + 1)
        for retry in (b"1" * 16, str(MAX_RETRY + 1).encode(), b"1" * 25):
            with self.assertRaises(ValueError):
                published_from_fields("a", "e:1-0", [b"retry", retry])
        published = published_from_fields(
            "a", "e:1-0", [b"retry", str(MAX_RETRY).encode()]
        )
        self.assertIn(b"retry: %d\n" % MAX_RETRY, published.frame)

    def test_malformed_entries_skipped(self) -> None:
        """
        Entries another program wrote that cannot be sent are skipped, in
        replay pages and live reads alike, each logged once with its id.
        """
        logs = _Logs(self)
        broker = self.broker()
        start = self.position(broker, "a")
        key = b"sse:a"
        bad = [
            [b"data", b"x", b"event", b"a\nb"],
            [b"data", b"\xff"],
            [b"retry", b"9" * 16],
            [b"key", b""],
        ]
        good: list[str] = []
        for fields in bad:
            self.clock.advance(0.001)
            self.redis.xadd(key, fields)
            good.append(self.publish(broker, "a", f"good {len(good)}"))
        pacers = [Pacer(1) for _ in range(2)]
        with _pages(1):
            live, _ = self.subscribe(broker, "a")
            for pacer in pacers:
                _, subscription = self.subscribe(broker, "a", pacer, start)
                for _ in range(10):
                    pacer.take(subscription)
            for fields in bad:
                self.clock.advance(0.001)
                self.redis.xadd(key, fields)
                good.append(self.publish(broker, "a", f"good {len(good)}"))
        for pacer in pacers:
            self.assertEqual(pacer.ids, good)
        self.assertEqual(live.ids, good[4:])
        skipped = [text for text in self.texts(logs) if "Skipping stream entry" in text]
        self.assertEqual(len(skipped), 8)
        self.assertEqual(len(set(skipped)), 8)

    def texts(self, logs: _Logs) -> list[str]:
        return logs.texts()


class ScriptTests(FakeRedisTestCase):
    """Publishing is one script; Redis that lost it gets it again."""

    def test_publish_one_command(self) -> None:
        """A publish is one EVALSHA: epoch, XADD MAXLEN ~, TTL, all at once."""
        broker = self.broker(history=50, channel_ttl=90)
        sent = len(self.redis.commands)
        self.publish(broker, "a", "x")
        (command,) = self.redis.commands[sent:]
        self.assertEqual(
            command[:5], ("EVALSHA", _scripts.PUBLISH.sha, 2, "sse:a", "sse:a#epoch")
        )
        self.assertEqual(command[5:7], (50, 90_000))

    def test_noscript(self) -> None:
        """When Redis lost its scripts, EVAL sends them whole, once."""
        broker = self.broker()
        self.publish(broker, "a", "x")
        self.redis.loaded.clear()
        sent = len(self.redis.commands)
        self.publish(broker, "a", "y")
        self.assertEqual(
            [command[0] for command in self.redis.commands[sent:]],
            ["EVALSHA", "EVAL"],
        )
        sent = len(self.redis.commands)
        self.publish(broker, "a", "z")
        self.assertEqual(
            [command[0] for command in self.redis.commands[sent:]], ["EVALSHA"]
        )


class ChannelTTLTests(FakeRedisTestCase):
    """A process keeps the channels it follows alive, in batches."""

    def refreshes(self) -> list[tuple[Any, ...]]:
        sha = _scripts.REFRESH.sha
        return [args for args in self.redis.commands if args[:2] == ("EVALSHA", sha)]

    def test_followed_channels_refreshed(self) -> None:
        """
        Every third of the TTL, one script per 500 followed channels sets
        their streams' and epochs' TTL; channels no longer followed are not.
        """
        broker = self.broker(channel_ttl=30)
        self.assertEqual(broker.check_interval, 10)
        subscriptions = [self.subscribe(broker, f"c{n}")[1] for n in range(1100)]
        for subscription in subscriptions[1000:]:
            subscription.cancel()
        self.clock.advance(10)
        batches = self.refreshes()
        self.assertEqual([len(args) for args in batches], [3 + 1000 + 1] * 2)
        keys = [key for args in batches for key in args[3:-1]]
        self.assertEqual(
            keys,
            [key for n in range(1000) for key in (f"sse:c{n}", f"sse:c{n}#epoch")],
        )
        self.assertEqual({args[-1] for args in batches}, {30_000})
        self.clock.advance(10)
        self.assertEqual(len(self.refreshes()), 4)

    def test_no_ttl(self) -> None:
        """channel_ttl=0: no TTL, yet the epochs are checked every minute."""
        broker = self.broker(channel_ttl=0)
        self.assertEqual(broker.check_interval, 60)
        self.subscribe(broker, "a")
        sent = len(self.redis.commands)
        self.publish(broker, "a", "x")
        self.assertEqual(self.redis.commands[sent][6], 0)
        self.clock.advance(60)
        (refresh,) = self.refreshes()
        self.assertEqual(refresh[-1], 0)

    def test_negative_ttl_refused(self) -> None:
        """A negative channel_ttl is refused."""
        with self.assertRaises(ValueError):
            RedisBroker(self.clock, RedisAddress("h"), channel_ttl=-1)

    def test_stop_leaves_no_timer(self) -> None:
        """stop() cancels the periodic check and any replay retry."""
        broker = fake_broker(self.clock, self.redis)
        start = self.position(broker, "a")
        self.publish(broker, "a", "x")
        self.publish(broker, "a", "y")
        pacer = Pacer(1)
        _, subscription = self.subscribe(broker, "a", pacer, start)
        broker.commands.lose()
        pacer.take(subscription)  # the page read fails: retried later
        self.assertEqual(len(self.clock.getDelayedCalls()), 3)
        self.successResultOf(broker.stop())
        self.assertEqual(
            [call for call in self.clock.getDelayedCalls() if call.active()], []
        )
