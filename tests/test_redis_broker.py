"""
Tests for L{twisted_sse._redis._broker.RedisBroker} on a fake Redis
(L{tests._redis_tools.FakeRedis}, which runs the broker's scripts as the Lua
does) and a L{Clock}: paced replays, epochs in the ids it gives and the
resumes it judges, what is checked at publish, its options and its life
cycle.  Its reader is L{tests.test_redis_reader}'s; the broker meets the
real Redis in test_redis.py and test_redis_epochs.py.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_sse._broker import (
    HISTORY_LOST_EVENT,
    MAX_KEY_LENGTH,
    BrokerUnavailable,
    IBroker,
    Published,
    Subscription,
    check_publish,
)
from twisted_sse._event import Event
from twisted_sse._redis import _entries, _scripts
from twisted_sse._redis._address import RedisAddress
from twisted_sse._redis._broker import RedisBroker

from ._helpers import Collector, Pacer
from ._redis_fakes import FakeRedisTestCase, entry_of, epoch_of, pages
from ._redis_tools import FakeRedis, fake_broker


class InterfaceTests(SynchronousTestCase):
    """RedisBroker is an IBroker."""

    def test_provides_ibroker(self) -> None:
        """RedisBroker provides IBroker; constructing it connects nothing."""
        reactor = MemoryReactorClock()
        broker = RedisBroker(reactor, RedisAddress("127.0.0.1", 1))
        self.assertTrue(verifyObject(IBroker, broker))
        self.assertFalse(broker.available)
        self.assertEqual((reactor.tcpClients, reactor.getDelayedCalls()), ([], []))


class PacedReplayTests(FakeRedisTestCase):
    """A replay goes only as fast as its subscriber takes it."""

    def test_paused_by_deliver(self) -> None:
        """The replay stops after the event for which deliver says no room."""
        broker = self.broker()
        start = self.position(broker, "a")
        for n in range(1, 11):
            self.publish(broker, "a", str(n))
        pacer = Pacer(3)
        with pages(4):
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
        with pages(5):
            _, subscription = self.subscribe(broker, "a", pacer, start)
            reads = len(self.page_reads())
            for n in range(50):
                self.publish(broker, "a", str(n))
            self.assertEqual(len(self.page_reads()), reads)
            pacer.take(subscription)
        after = self.page_reads()[reads][7]
        self.assertEqual(f"{epoch_of(ids[1])}:{after}", ids[1])
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
        with pages(10):
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
        with pages(1000, size=250):
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
        with pages(2):
            _, subscription = self.subscribe(broker, "a", pacer, start)
            ids += [self.publish(broker, "a", str(n)) for n in range(5, 25)]
            token = next(iter(broker.reader.channels["a"].joining))
            replay = broker.reader.channels["a"].joining[token]
            self.assertNotIn(token, broker.reader.channels["a"].subscribers)
            self.assertEqual(replay.cursor, entry_of(ids[0]))  # type: ignore[union-attr]
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

        with pages(2):
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

        with pages(1):
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
        self.assertEqual(entry_of(loss.id), _entries.before(entry_of(ids[5])))
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
        epoch = epoch_of(ids[0])
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

        with pages(batch, size=page_bytes):
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
                if epoch_of(event_id) == epoch_of(point) and entry_of(
                    event_id
                ) > entry_of(point):
                    return event_id
            return None

        point = resume_id
        if subscription.history_lost is not None:
            self.assertEqual(subscription.history_lost, "trimmed")
            point = subscription.position
        for got in pacer.got:
            if got.key == HISTORY_LOST_EVENT:
                if epoch_of(got.id) == epoch_of(point):
                    self.assertGreaterEqual(entry_of(got.id), entry_of(point))
                point = got.id
            else:
                self.assertEqual(got.id, successor(point), (pacer.ids, published))
                point = got.id
        self.assertIsNone(successor(point), (pacer.ids, published))
        subscription.cancel()
        broker.stop()


class EpochTests(FakeRedisTestCase):
    """Each channel's epoch tells a lost history from a short one."""

    def test_ids_carry_theepoch_of(self) -> None:
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
        self.assertGreater(entry_of(fresh), entry_of(held))
        for last_event_id in (held, empty):
            got, subscription = self.subscribe(broker, "a", None, last_event_id)
            self.assertEqual(
                (subscription.history_lost, subscription.position, got.got),
                ("unknown", fresh, []),
            )

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


class ScriptTests(FakeRedisTestCase):
    """Publishing is one script."""

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


class ChannelTTLTests(FakeRedisTestCase):
    """A process keeps the channels it follows alive, in batches."""

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
