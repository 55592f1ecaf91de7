"""
Tests for presence on L{twisted_sse._redis._broker.RedisBroker} (its
L{twisted_sse._redis._presence.RedisPresence} and scripts): brokers of two
"processes" (two process ids) on the real Redis (the shared one, database
13, keys of each test's own), each over the broker's own connection on a
blocking socket, so that every script is answered before it returns; their
timers on one L{Clock}.

Redis's clock (``TIME``, which leases are measured by) cannot be moved by a
L{Clock}: a process's death is its entries' lease made to end now (as
Redis would see it once the lease passed), or, once, a lease of a fraction
of a second waited for.

Without Redis they are skipped; with C{TWISTED_SSE_REQUIRE_REDIS=1} (as in
CI) a missing Redis fails them.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_sse._broker import BrokerUnavailable
from twisted_sse._presence import (
    IPresenceBroker,
    Member,
    PresenceChange,
    PresenceInfo,
)
from twisted_sse._redis import _presence
from twisted_sse._redis._address import RedisAddress
from twisted_sse._redis._broker import RedisBroker
from twisted_sse._redis._scripts import (
    PRESENCE_CHANGES,
    PRESENCE_READ,
    PRESENCE_UPDATE,
    SCRIPTS,
    Script,
)

from . import _redis_tools as tools
from ._redis_fakes import Logs

CHANNEL = "room"
Told = PresenceInfo | PresenceChange


class BlockingLink:
    """
    A C{RedisLink} on L{tools.BlockingRedis}: each command is answered
    before C{execute} returns.  L{lose} and L{start} are Redis going away
    and coming back.

    @ivar sent: The commands sent, in order.
    """

    timeout = 5.0

    def __init__(
        self,
        on_ready: Callable[[], object] | None,
        on_lost: Callable[[], object] | None,
    ) -> None:
        self._on_ready = on_ready
        self._on_lost = on_lost
        self.ready = False
        self.redis: tools.BlockingRedis | None = None
        self.sent: list[tuple[Any, ...]] = []

    def start(self) -> None:
        if self.ready:
            return
        self.redis = tools.BlockingRedis()
        # As RedisLink does, the scripts are loaded first.
        for script in SCRIPTS:
            self.redis.run("SCRIPT", "LOAD", script.source)
        self.ready = True
        if self._on_ready is not None:
            self._on_ready()

    def stop(self) -> Deferred[None]:
        self.lose()
        return succeed(None)

    def lose(self) -> None:
        """The connection is lost (Redis went away)."""
        if not self.ready or self.redis is None:
            return
        self.ready = False
        self.redis.close()
        self.redis = None
        if self._on_lost is not None:
            self._on_lost()

    def drop(self) -> None:
        self.lose()
        self.start()

    def execute(self, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        if not self.ready or self.redis is None:
            return fail(BrokerUnavailable("Redis is not connected"))
        self.sent.append(args)
        return self.redis.execute(*args, timeout=timeout)

    def scripts(self, script: Script) -> list[tuple[Any, ...]]:
        """The runs of ``script`` sent (EVALSHA or EVAL)."""
        return [
            args
            for args in self.sent
            if args[0] in ("EVALSHA", "EVAL") and args[1] in (script.sha, script.source)
        ]


class IdleLink:
    """The reader's link, which presence does not use: never connects."""

    timeout = 5.0
    ready = False

    def start(self) -> None:
        pass

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def drop(self) -> None:
        pass

    def execute(self, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        return fail(BrokerUnavailable("Redis is not connected"))


def blocking_broker(
    clock: Clock, prefix: str, **options: Any
) -> tuple[RedisBroker, BlockingLink]:
    """A started broker whose commands go to the shared Redis, and its link."""
    links: list[BlockingLink] = []

    def make_link(
        name: str,
        on_ready: Callable[[], object] | None,
        on_lost: Callable[[], object] | None,
    ) -> Any:
        if name == "twisted_sse:commands":
            link = BlockingLink(on_ready, on_lost)
            links.append(link)
            return link
        return IdleLink()

    broker = RedisBroker.with_links(
        clock,
        RedisAddress(tools.REDIS_HOST, tools.REDIS_PORT, tools.REDIS_DB),
        make_link,
        prefix=prefix,
        **options,
    )
    broker.startService()
    return broker, links[0]


def apply(told: list[Told]) -> dict[str, int] | None:
    """
    The identities a follower knows from what it was told: each
    PresenceInfo starts again; a join adds an identity (1 connection, for
    want of more), a leave removes one.  ``None`` if a change contradicts
    what it knew (a join of one present, a leave of one absent), or the
    first thing told is no PresenceInfo.
    """
    known: dict[str, int] | None = None
    for each in told:
        if isinstance(each, PresenceInfo):
            known = {member.sub: member.connections for member in each.members}
        elif known is None:
            return None
        elif each.kind == "join":
            if each.sub in known:
                return None
            known[each.sub] = 1
        else:
            if each.sub not in known:
                return None
            del known[each.sub]
    return known


class PresenceTestCase(SynchronousTestCase):
    """Brokers on the shared Redis and a clock; keys of the test's own."""

    def setUp(self) -> None:
        tools.need(tools.unavailable_reason())
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.prefix = tools.unique_prefix()
        self.addCleanup(
            tools.delete_prefix,
            tools.REDIS_PORT,
            tools.REDIS_DB,
            self.prefix,
            tools.REDIS_HOST,
        )
        self.redis = tools.BlockingRedis()
        self.addCleanup(self.redis.close)

    def broker(self, **options: Any) -> tuple[RedisBroker, BlockingLink]:
        broker, link = blocking_broker(self.clock, self.prefix, **options)
        self.addCleanup(broker.stop)
        return broker, link

    def info(
        self, broker: RedisBroker, channel: str = CHANNEL, limit: int = 100
    ) -> PresenceInfo:
        return self.successResultOf(broker.presence(channel, limit))

    def follow(
        self, broker: RedisBroker, channel: str = CHANNEL, limit: int = 100
    ) -> list[Told]:
        """A follower's list of what it is told (its first PresenceInfo read)."""
        told: list[Told] = []
        follow = broker.follow_presence(channel, limit, told.append)
        self.addCleanup(follow.cancel)
        self.clock.advance(0)
        return told

    def flush(self) -> None:
        """Time for the writes and a poll of every broker."""
        self.clock.advance(_presence.PRESENCE_FLUSH)
        self.clock.advance(_presence.PRESENCE_POLL)

    def key(self, channel: str, which: str) -> str:
        return f"{self.prefix}#presence:{{{channel}}}:{which}"

    def procs(self, channel: str = CHANNEL) -> dict[str, str]:
        reply = self.redis.run("HGETALL", self.key(channel, "procs"))
        return {
            reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)
        }

    def end_lease(self, broker: RedisBroker, channel: str = CHANNEL) -> None:
        """
        End ``broker``'s lease on ``channel`` now, as it ends when the
        process stops renewing it: Redis thinks it died.
        """
        pid = broker.presence_state.process_id
        value = self.procs(channel)[pid]
        _, rest = value.split(" ", 1)
        self.redis.run("HSET", self.key(channel, "procs"), pid, "1 " + rest)

    def die(self, broker: RedisBroker, link: BlockingLink) -> None:
        """``broker``'s process dies: no goodbye, no renewal, ever."""
        link.lose()
        state = broker.presence_state
        link.start = lambda: None  # type: ignore[method-assign]
        for channel in state.local.channels():
            self.end_lease(broker, channel)


def members(info: PresenceInfo) -> dict[str, int]:
    return {member.sub: member.connections for member in info.members}


class InterfaceTests(SynchronousTestCase):
    """RedisBroker is an IPresenceBroker with presence options."""

    def test_provides(self) -> None:
        """RedisBroker provides IPresenceBroker; constructing starts nothing."""
        reactor = MemoryReactorClock()
        broker = RedisBroker(reactor, RedisAddress("127.0.0.1", 1))
        self.assertTrue(verifyObject(IPresenceBroker, broker))
        self.assertEqual((reactor.tcpClients, reactor.getDelayedCalls()), ([], []))

    def test_defaults(self) -> None:
        """Leases of 15 s renewed every 5 s, writes every 0.2 s, polls 0.5 s."""
        broker = RedisBroker(MemoryReactorClock(), RedisAddress("127.0.0.1", 1))
        state = broker.presence_state
        self.assertEqual(
            (state.lease, state.renew, state.flush, state.poll), (15.0, 5.0, 0.2, 0.5)
        )

    def test_bounds(self) -> None:
        """Renewals more often than the lease ends; positive intervals."""
        address = RedisAddress("127.0.0.1", 1)
        cases: list[dict[str, Any]] = [
            {"presence_lease": 5.0, "presence_renew": 5.0},
            {"presence_renew": 0.0},
            {"presence_flush": 0.0},
            {"presence_poll": -1.0},
        ]
        for options in cases:
            with self.assertRaises(ValueError):
                RedisBroker(MemoryReactorClock(), address, **options)

    def test_keys(self) -> None:
        """A channel's keys share its hash tag and cannot be a channel's."""
        broker = RedisBroker(MemoryReactorClock(), RedisAddress("127.0.0.1", 1))
        state = broker.presence_state
        self.assertEqual(
            state.keys("news.eu"),
            (
                "sse:#presence:{news.eu}:procs",
                "sse:#presence:{news.eu}:subs",
                "sse:#presence:{news.eu}:log",
            ),
        )
        self.assertEqual(
            state.process_key("news.eu", "ab12"), "sse:#presence:{news.eu}:proc:ab12"
        )

    def test_nothing_without_presence(self) -> None:
        """A started broker with no presence sends no presence script."""
        clock = Clock()
        redis = tools.FakeRedis(clock)
        broker = tools.fake_broker(clock, redis)
        clock.advance(60)
        self.successResultOf(broker.stop())
        presence = {s.sha for s in (PRESENCE_UPDATE, PRESENCE_READ, PRESENCE_CHANGES)}
        self.assertEqual(
            [args for args in redis.commands if str(args[1]) in presence], []
        )
        self.assertEqual(clock.getDelayedCalls(), [])


class CountTests(PresenceTestCase):
    """Counts and members summed over the live processes."""

    def test_summed(self) -> None:
        """Every process reads the sum of every process's connections."""
        a, _ = self.broker()
        b, _ = self.broker()
        a.enter(CHANNEL, "alice")
        a.enter(CHANNEL, "alice")
        a.enter(CHANNEL, None)
        b.enter(CHANNEL, "alice")
        b.enter(CHANNEL, "bob")
        self.flush()
        expected = PresenceInfo(CHANNEL, 5, [Member("alice", 3), Member("bob", 1)])
        self.assertEqual(self.info(a), expected)
        self.assertEqual(self.info(b), expected)
        self.assertEqual(self.info(a, "elsewhere"), PresenceInfo("elsewhere", 0))

    def test_order_and_limit(self) -> None:
        """Most connections first, then by name; at most the limit, told so."""
        a, _ = self.broker()
        b, _ = self.broker()
        for broker, sub, times in [
            (a, "carol", 2),
            (b, "bob", 1),
            (a, "alice", 1),
            (b, "dave", 2),
            (a, "zoé", 3),
        ]:
            for _ in range(times):
                broker.enter(CHANNEL, sub)
        self.flush()
        self.assertEqual(
            self.info(b, limit=3),
            PresenceInfo(
                CHANNEL,
                9,
                [Member("zoé", 3), Member("carol", 2), Member("dave", 2)],
                truncated=True,
            ),
        )
        self.assertEqual(self.info(a, limit=0), PresenceInfo(CHANNEL, 9, [], True))
        self.assertEqual(
            self.info(a, limit=5).members,
            PresenceInfo.of(
                CHANNEL, 9, {"zoé": 3, "carol": 2, "dave": 2, "bob": 1, "alice": 1}, 5
            ).members,
        )

    def test_own_changes_at_once(self) -> None:
        """
        A process's own changes waiting for their write are sent first,
        with the read: what it answers has them.
        """
        a, link = self.broker()
        self.flush()
        a.enter(CHANNEL, "alice")
        sent = len(link.sent)
        self.assertEqual(self.info(a).count, 1)
        self.assertEqual(len(link.sent), sent + 2)
        self.assertEqual(len(link.scripts(PRESENCE_UPDATE)), 1)
        # Written: the next read is one script, one round trip.
        self.clock.advance(1)
        sent = len(link.sent)
        self.assertEqual(self.info(a).count, 1)
        self.assertEqual(len(link.sent), sent + 1)

    def test_leave_counted_out(self) -> None:
        """A connection that leaves is out of every count once written."""
        a, _ = self.broker()
        b, _ = self.broker()
        a.enter(CHANNEL, "alice")
        a.enter(CHANNEL, None)
        self.flush()
        a.leave(CHANNEL, "alice")
        self.assertEqual(self.info(b).count, 2)
        self.clock.advance(_presence.PRESENCE_FLUSH)
        self.assertEqual(self.info(b), PresenceInfo(CHANNEL, 1))

    def test_invalid_channel(self) -> None:
        """An invalid channel name is refused."""
        a, _ = self.broker()
        self.failureResultOf(a.presence("no spaces", 10), ValueError)
        with self.assertRaises(ValueError):
            a.follow_presence("no spaces", 10, lambda told: None)


class ChangeTests(PresenceTestCase):
    """Joins and leaves are transitions over every process."""

    def test_global_transitions(self) -> None:
        """
        An identity joins when its first connection anywhere opens, leaves
        when its last one anywhere closes; anonymous ones change nothing
        told.
        """
        a, _ = self.broker()
        b, _ = self.broker()
        on_a, on_b = self.follow(a), self.follow(b)
        a.enter(CHANNEL, "alice")
        self.flush()
        b.enter(CHANNEL, "alice")
        b.enter(CHANNEL, None)
        self.flush()
        a.leave(CHANNEL, "alice")
        self.flush()
        b.leave(CHANNEL, None)
        self.flush()
        b.leave(CHANNEL, "alice")
        self.flush()
        expected = [
            PresenceInfo(CHANNEL, 0),
            PresenceChange(CHANNEL, "join", "alice"),
            PresenceChange(CHANNEL, "leave", "alice"),
        ]
        self.assertEqual(on_a, expected)
        self.assertEqual(on_b, expected)

    def test_changes_in_one_write(self) -> None:
        """Connections that come and go between two writes tell nothing."""
        a, _ = self.broker()
        on_a = self.follow(a)
        a.enter(CHANNEL, "alice")
        a.enter(CHANNEL, "bob")
        a.leave(CHANNEL, "alice")
        self.flush()
        self.assertEqual(
            on_a, [PresenceInfo(CHANNEL, 0), PresenceChange(CHANNEL, "join", "bob")]
        )

    def test_first_info_has_own(self) -> None:
        """
        A follower that enters in the same turn starts from a PresenceInfo
        that has its own connection, not from a join of it.
        """
        a, _ = self.broker()
        told: list[Told] = []
        a.enter(CHANNEL, "alice")
        a.follow_presence(CHANNEL, 10, told.append)
        self.clock.advance(0)
        self.flush()
        self.assertEqual(told, [PresenceInfo(CHANNEL, 1, [Member("alice", 1)])])


class LeaseTests(PresenceTestCase):
    """A process that dies without a word leaves when its lease ends."""

    def test_dead_process_leaves(self) -> None:
        """
        Once its lease ended, a process is out of every count, and the
        identities only it had leave.
        """
        a, _ = self.broker()
        b, b_link = self.broker()
        a.enter(CHANNEL, "alice")
        b.enter(CHANNEL, "alice")
        b.enter(CHANNEL, "bob")
        b.enter(CHANNEL, None)
        self.flush()
        told = self.follow(a)
        self.die(b, b_link)
        self.assertEqual(self.info(a), PresenceInfo(CHANNEL, 1, [Member("alice", 1)]))
        self.flush()
        self.assertEqual(
            told,
            [
                PresenceInfo(CHANNEL, 4, [Member("alice", 2), Member("bob", 1)]),
                PresenceChange(CHANNEL, "leave", "bob"),
            ],
        )
        self.assertNotIn(b.presence_state.process_id, self.procs())
        self.assertEqual(
            self.redis.run("EXISTS", b.presence_state.process_key(CHANNEL)), 0
        )

    def test_followers_reap(self) -> None:
        """
        A follower's process finds the dead one gone at its next poll,
        with no read nor write of its own.
        """
        a, _ = self.broker()
        b, b_link = self.broker()
        b.enter(CHANNEL, "bob")
        self.flush()
        told = self.follow(a)
        self.die(b, b_link)
        self.flush()
        self.assertEqual(
            told,
            [
                PresenceInfo(CHANNEL, 1, [Member("bob", 1)]),
                PresenceChange(CHANNEL, "leave", "bob"),
            ],
        )

    def test_short_lease_waited(self) -> None:
        """With a lease of 0.3 s, waited for on Redis's clock, the same."""
        a, _ = self.broker()
        b, b_link = self.broker(presence_lease=0.3, presence_renew=0.1)
        b.enter(CHANNEL, "bob")
        self.flush()
        told = self.follow(a)
        b_link.lose()
        b_link.start = lambda: None  # type: ignore[method-assign]
        deadline = time.monotonic() + 10
        while self.info(a).count and time.monotonic() < deadline:
            time.sleep(0.05)
        self.flush()
        self.assertEqual(self.info(a), PresenceInfo(CHANNEL, 0))
        self.assertEqual(told[1:], [PresenceChange(CHANNEL, "leave", "bob")])

    def test_renewals_keep_it(self) -> None:
        """
        Every renewal moves the lease on by the lease from Redis's clock,
        one script for every channel, carrying no identities.
        """
        a, link = self.broker()
        for n in range(3):
            a.enter(f"c{n}", "alice")
        self.flush()
        before = [self.procs(f"c{n}") for n in range(3)]
        (now_s, now_us) = self.redis.run("TIME")
        now_ms = int(now_s) * 1000 + int(now_us) // 1000
        self.clock.advance(_presence.PRESENCE_RENEW)
        (renewal,) = link.scripts(PRESENCE_UPDATE)[1:]
        pid = a.presence_state.process_id
        for n in range(3):
            expiry, total, version = self.procs(f"c{n}")[pid].split()
            self.assertGreaterEqual(int(expiry), now_ms + 15_000)
            self.assertLessEqual(int(expiry), now_ms + 15_000 + 5_000)
            self.assertEqual(before[n][pid].split()[1:], [total, version])
        self.assertEqual(renewal.count(""), 3)
        self.assertNotIn('{"alice":1}', renewal)

    def test_keys_expire(self) -> None:
        """
        Every key of the channel has a TTL: twice the lease, one lease more
        for a process's own.
        """
        a, _ = self.broker()
        a.enter(CHANNEL, "alice")
        self.flush()
        for which in ("procs", "subs", "log"):
            ttl = self.redis.run("PTTL", self.key(CHANNEL, which))
            self.assertTrue(25_000 < ttl <= 30_000, (which, ttl))
        own = self.redis.run("PTTL", a.presence_state.process_key(CHANNEL))
        self.assertTrue(40_000 < own <= 45_000, own)

    def test_late_renewal_written_again(self) -> None:
        """
        A process whose entry was reaped (it renewed too late) finds it at
        its next renewal and writes it whole again: it is back, a join.
        """
        a, _ = self.broker()
        b, _ = self.broker()
        b.enter(CHANNEL, "bob")
        self.flush()
        told = self.follow(a)
        self.end_lease(b)
        self.flush()
        self.assertEqual(self.info(a).count, 0)
        self.clock.advance(_presence.PRESENCE_RENEW)
        self.flush()
        self.assertEqual(self.info(a), PresenceInfo(CHANNEL, 1, [Member("bob", 1)]))
        self.assertEqual(
            told[1:],
            [
                PresenceChange(CHANNEL, "leave", "bob"),
                PresenceChange(CHANNEL, "join", "bob"),
            ],
        )


class GoodbyeTests(PresenceTestCase):
    """A broker that stops removes its entries."""

    def test_stop(self) -> None:
        """Its connections leave every count; its identities leave."""
        a, _ = self.broker()
        b, _ = self.broker()
        a.enter(CHANNEL, "alice")
        b.enter(CHANNEL, "alice")
        b.enter(CHANNEL, "bob")
        b.enter("other", "bob")
        self.flush()
        told = self.follow(a)
        self.successResultOf(b.stop())
        self.assertEqual(self.info(a), PresenceInfo(CHANNEL, 1, [Member("alice", 1)]))
        self.assertEqual(self.info(a, "other"), PresenceInfo("other", 0))
        self.flush()
        self.assertEqual(told[1:], [PresenceChange(CHANNEL, "leave", "bob")])
        self.assertEqual(list(self.procs("other")), ["#e", "#n"])

    def test_stop_while_down(self) -> None:
        """Stopping while Redis is down leaves it to the lease."""
        a, link = self.broker()
        a.enter(CHANNEL, "alice")
        self.flush()
        link.lose()
        self.successResultOf(a.stop())
        self.assertIn(a.presence_state.process_id, self.procs())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BatchTests(PresenceTestCase):
    """enter and leave only count; writes are batched."""

    def test_storm_one_channel(self) -> None:
        """10,000 connections entering one channel: one script."""
        a, link = self.broker()
        for n in range(10_000):
            a.enter(CHANNEL, f"user{n % 1000}" if n % 10 else None)
        self.assertEqual(link.scripts(PRESENCE_UPDATE), [])
        self.clock.advance(_presence.PRESENCE_FLUSH)
        self.assertEqual(len(link.scripts(PRESENCE_UPDATE)), 1)
        info = self.info(a, limit=1000)
        self.assertEqual(info.count, 10_000)
        self.assertEqual(len(info.members), 900)
        self.assertEqual(info.members[:2], (Member("user1", 10), Member("user101", 10)))

    def test_storm_many_channels(self) -> None:
        """
        10,000 connections on 1,000 channels: one script per 200 channels;
        their leaving as many.
        """
        a, link = self.broker()
        channels = [f"c{n}" for n in range(1000)]
        for n in range(10_000):
            a.enter(channels[n % 1000], f"user{n % 7}")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        self.assertEqual(len(link.scripts(PRESENCE_UPDATE)), 5)
        self.assertEqual(self.info(a, "c999").count, 10)
        for n in range(10_000):
            a.leave(channels[n % 1000], f"user{n % 7}")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        self.assertEqual(len(link.scripts(PRESENCE_UPDATE)), 10)
        self.assertEqual(self.info(a, "c999").count, 0)
        self.assertEqual(list(self.procs("c999")), ["#e", "#n"])
        # Nothing left to renew.
        self.clock.advance(_presence.PRESENCE_RENEW)
        self.assertEqual(len(link.scripts(PRESENCE_UPDATE)), 10)

    def test_storm_distinct(self) -> None:
        """
        10,000 identities entering one channel: written in parts of 1,000,
        two a script; as many to leave.
        """
        a, link = self.broker()
        b, _ = self.broker()
        told = self.follow(b)
        for n in range(10_000):
            a.enter(CHANNEL, f"user{n:05}")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        writes = link.scripts(PRESENCE_UPDATE)
        self.assertEqual(len(writes), 5)
        info = self.info(b, limit=10_000)
        self.assertEqual(info.count, 10_000)
        self.assertEqual(len(info.members), 10_000)
        # More changes than the log keeps: the follower is told all anew.
        self.clock.advance(_presence.PRESENCE_POLL)
        self.assertEqual(
            told[1:], [PresenceInfo(CHANNEL, 10_000, info.members[:100], True)]
        )
        for n in range(10_000):
            a.leave(CHANNEL, f"user{n:05}")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        self.assertEqual(len(link.scripts(PRESENCE_UPDATE)), 10)
        self.assertEqual(self.info(b), PresenceInfo(CHANNEL, 0))
        self.assertEqual(list(self.procs()), ["#e", "#n"])
        self.clock.advance(_presence.PRESENCE_POLL)
        self.assertEqual(told[2:], [PresenceInfo(CHANNEL, 0)])

    def test_parts_on_a_lost_entry(self) -> None:
        """
        Parts of a write on an entry Redis lost are refused, every one, and
        the channel is written whole after.
        """
        a, link = self.broker()
        for n in range(1500):
            a.enter(CHANNEL, f"user{n}")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        self.redis.run("DEL", self.key(CHANNEL, "procs"))
        for n in range(1500):
            a.enter(CHANNEL, f"other{n}")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        self.clock.advance(_presence.PRESENCE_FLUSH)
        last = link.scripts(PRESENCE_UPDATE)[-1]
        self.assertEqual(last[-3:-1], ("*", 3000))
        info = self.info(a, limit=10_000)
        self.assertEqual((info.count, len(info.members)), (3000, 3000))

    def test_bytes_bound(self) -> None:
        """A batch carries about BATCH_BYTES of identities at most."""
        a, link = self.broker()
        with mock.patch.object(_presence, "BATCH_BYTES", 1000):
            for n in range(10):
                for m in range(20):
                    a.enter(f"c{n}", f"user-with-a-long-name-{m}")
            self.clock.advance(_presence.PRESENCE_FLUSH)
        # Each channel's identities are about 600 bytes: one a script.
        self.assertEqual(len(link.scripts(PRESENCE_UPDATE)), 10)
        self.assertEqual(self.info(a, "c9").count, 20)

    def test_changes_only(self) -> None:
        """
        After the first write of a channel, a write carries what changed
        since the one before, on the version it changes.
        """
        a, link = self.broker()
        for n in range(100):
            a.enter(CHANNEL, f"user{n}")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        a.enter(CHANNEL, "user1")
        a.leave(CHANNEL, "user2")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        first, second = link.scripts(PRESENCE_UPDATE)
        version = first[-4]
        self.assertEqual(first[-3], "")
        self.assertEqual(second[-4:-1], (version + 1, str(version), 100))
        self.assertEqual(json.loads(second[-1]), {"user1": 1, "user2": -1})
        info = self.info(a, limit=1000)
        self.assertEqual(info.count, 100)
        self.assertEqual(members(info)["user1"], 2)
        self.assertNotIn("user2", members(info))

    def test_nothing_changed(self) -> None:
        """A connection that comes and goes between writes writes nothing."""
        a, link = self.broker()
        a.enter(CHANNEL, "alice")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        a.enter(CHANNEL, "bob")
        a.leave(CHANNEL, "bob")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        self.assertEqual(len(link.scripts(PRESENCE_UPDATE)), 1)
        b, b_link = self.broker()
        b.enter(CHANNEL, "bob")
        b.leave(CHANNEL, "bob")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        self.assertEqual(b_link.scripts(PRESENCE_UPDATE), [])

    def test_big_channel_one_change(self) -> None:
        """
        A write after one connection came (or went) on a channel of 5,000
        identities carries that identity only, without a copy of the
        channel's identities.
        """
        a, link = self.broker()
        for n in range(5000):
            a.enter(CHANNEL, f"user{n}")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        written = len(link.scripts(PRESENCE_UPDATE))
        local = a.presence_state.local
        with mock.patch.object(local, "identities", side_effect=AssertionError):
            a.enter(CHANNEL, "user7")
            self.clock.advance(_presence.PRESENCE_FLUSH)
            a.leave(CHANNEL, "user8")
            a.enter(CHANNEL, "newcomer")
            self.clock.advance(_presence.PRESENCE_FLUSH)
        first, second = link.scripts(PRESENCE_UPDATE)[written:]
        self.assertEqual(first[-2], 5001)
        self.assertEqual(json.loads(first[-1]), {"user7": 1})
        self.assertEqual(second[-2], 5001)
        self.assertEqual(json.loads(second[-1]), {"user8": -1, "newcomer": 1})
        info = self.info(a, limit=10_000)
        self.assertEqual((info.count, len(info.members)), (5001, 5000))
        self.assertEqual(members(info)["user7"], 2)
        self.assertNotIn("user8", members(info))

    def test_changes_cancel_out(self) -> None:
        """
        Connections of one identity that came and went between two writes
        are not sent; the others are, once each, with their sum.
        """
        a, link = self.broker()
        for n in range(100):
            a.enter(CHANNEL, f"user{n}")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        a.enter(CHANNEL, "user1")
        a.leave(CHANNEL, "user1")
        a.enter(CHANNEL, "user2")
        a.enter(CHANNEL, "user2")
        a.leave(CHANNEL, "user3")
        a.enter(CHANNEL, None)
        self.clock.advance(_presence.PRESENCE_FLUSH)
        last = link.scripts(PRESENCE_UPDATE)[-1]
        self.assertEqual(last[-2], 102)
        self.assertEqual(json.loads(last[-1]), {"user2": 2, "user3": -1})
        # Only the anonymous connection changes: the count alone.
        a.leave(CHANNEL, None)
        self.clock.advance(_presence.PRESENCE_FLUSH)
        last = link.scripts(PRESENCE_UPDATE)[-1]
        self.assertEqual((last[-2], last[-1]), (101, "{}"))
        info = self.info(a, limit=1000)
        self.assertEqual(info.count, 101)
        self.assertEqual(members(info)["user2"], 3)

    def test_leave_never_entered(self) -> None:
        """A leave of a connection never entered writes nothing."""
        a, link = self.broker()
        a.enter(CHANNEL, "alice")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        a.leave(CHANNEL, "bob")
        a.leave(CHANNEL, None)
        a.leave("other", "alice")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        self.assertEqual(len(link.scripts(PRESENCE_UPDATE)), 1)
        self.assertEqual(self.info(a), PresenceInfo(CHANNEL, 1, [Member("alice", 1)]))

    def test_stop_with_changes_unwritten(self) -> None:
        """
        Stopping with changes not yet written removes what was written;
        started again, the process writes all it counts.
        """
        a, link = self.broker()
        b, _ = self.broker()
        b.enter(CHANNEL, "bob")
        a.enter(CHANNEL, "alice")
        a.enter(CHANNEL, "bob")
        self.flush()
        told = self.follow(b)
        a.leave(CHANNEL, "alice")
        a.enter(CHANNEL, "carol")
        state = a.presence_state
        self.successResultOf(state.stop())
        goodbye = link.scripts(PRESENCE_UPDATE)[-1]
        self.assertEqual(goodbye[-2], 0)
        self.assertEqual(json.loads(goodbye[-1]), {"alice": -1, "bob": -1})
        self.assertEqual(self.info(b), PresenceInfo(CHANNEL, 1, [Member("bob", 1)]))
        self.assertNotIn(state.process_id, self.procs())
        state.start()
        self.flush()
        again = link.scripts(PRESENCE_UPDATE)[-1]
        self.assertEqual(again[-3:-1], ("", 2))
        self.assertEqual(json.loads(again[-1]), {"bob": 1, "carol": 1})
        self.assertEqual(members(self.info(b)), {"bob": 2, "carol": 1})
        self.assertEqual(
            told[1:],
            [
                PresenceChange(CHANNEL, "leave", "alice"),
                PresenceChange(CHANNEL, "join", "carol"),
            ],
        )


class FollowerTests(PresenceTestCase):
    """Each follower: a PresenceInfo, then every change after it, in order."""

    def test_late_follower(self) -> None:
        """A follower that starts later is told only what follows its start."""
        a, _ = self.broker()
        b, _ = self.broker()
        first = self.follow(a)
        a.enter(CHANNEL, "alice")
        self.flush()
        b.enter(CHANNEL, "bob")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        # bob's join is logged, not yet polled by a: a new follower of a
        # starts after it.
        second = self.follow(a)
        b.enter(CHANNEL, "carol")
        self.flush()
        self.assertEqual(
            first,
            [
                PresenceInfo(CHANNEL, 0),
                PresenceChange(CHANNEL, "join", "alice"),
                PresenceChange(CHANNEL, "join", "bob"),
                PresenceChange(CHANNEL, "join", "carol"),
            ],
        )
        self.assertEqual(
            second,
            [
                PresenceInfo(CHANNEL, 2, [Member("alice", 1), Member("bob", 1)]),
                PresenceChange(CHANNEL, "join", "carol"),
            ],
        )

    def test_shared_read_and_poll(self) -> None:
        """
        Followers of a channel that start in one turn share one read; every
        followed channel is polled in one script (per 200 channels).
        """
        a, link = self.broker()
        told: list[list[Told]] = [[] for _ in range(3)]
        for each in told:
            a.follow_presence(CHANNEL, 10, each.append)
        for n in range(250):
            a.follow_presence(f"c{n}", 10, lambda told: None)
        self.clock.advance(0)
        self.assertEqual(len(link.scripts(PRESENCE_READ)), 251)
        self.assertEqual(told, [[PresenceInfo(CHANNEL, 0)]] * 3)
        self.clock.advance(_presence.PRESENCE_POLL)
        self.assertEqual(len(link.scripts(PRESENCE_CHANGES)), 2)

    def test_limits(self) -> None:
        """Each follower's PresenceInfo lists at most its limit."""
        a, _ = self.broker()
        for sub in ("a", "b", "c"):
            a.enter(CHANNEL, sub)
        self.flush()
        told: dict[int, list[Told]] = {1: [], 5: []}
        for limit, each in told.items():
            a.follow_presence(CHANNEL, limit, each.append)
        self.clock.advance(0)
        self.assertEqual(told[1], [PresenceInfo(CHANNEL, 3, [Member("a", 1)], True)])
        self.assertEqual(
            told[5],
            [PresenceInfo(CHANNEL, 3, [Member(s, 1) for s in ("a", "b", "c")])],
        )

    def test_cancel(self) -> None:
        """A cancelled follower is told nothing more; the last stops polls."""
        a, link = self.broker()
        told: list[Told] = []
        follow = a.follow_presence(CHANNEL, 10, told.append)
        self.clock.advance(0)
        follow.cancel()
        follow.cancel()
        a.enter(CHANNEL, "alice")
        self.flush()
        self.assertEqual(told, [PresenceInfo(CHANNEL, 0)])
        polls = len(link.scripts(PRESENCE_CHANGES))
        self.clock.advance(10)
        self.assertEqual(len(link.scripts(PRESENCE_CHANGES)), polls)
        self.assertEqual(a.presence_state.followed(), {})

    def test_cancel_while_told(self) -> None:
        """A follower that cancels when told is told nothing after."""
        a, _ = self.broker()
        told: list[Told] = []

        def once(each: Told) -> None:
            told.append(each)
            if isinstance(each, PresenceChange):
                follow.cancel()

        follow = a.follow_presence(CHANNEL, 10, once)
        self.clock.advance(0)
        a.enter(CHANNEL, "alice")
        a.enter(CHANNEL, "bob")
        self.flush()
        self.assertEqual(len(told), 2)

    def test_failing_follower(self) -> None:
        """A follower that raises is logged; the others are told."""
        a, _ = self.broker()
        logs = Logs(self)

        def broken(each: Told) -> None:
            raise RuntimeError("no")

        a.follow_presence(CHANNEL, 10, broken)
        told = self.follow(a)
        a.enter(CHANNEL, "alice")
        self.flush()
        self.assertEqual(len(told), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertIn("A presence follower failed", logs.texts())

    def test_trimmed(self) -> None:
        """
        A follower that lacks changes the log no longer keeps is told a new
        PresenceInfo, then the changes after it.
        """
        a, _ = self.broker()
        b, _ = self.broker()
        told = self.follow(a)
        with mock.patch.object(_presence, "LOG_LENGTH", 3):
            for n in range(5):
                b.enter(CHANNEL, f"user{n}")
            self.clock.advance(_presence.PRESENCE_FLUSH)
            self.clock.advance(_presence.PRESENCE_POLL)
            self.clock.advance(0)
            b.leave(CHANNEL, "user0")
            self.flush()
        self.assertEqual(
            told,
            [
                PresenceInfo(CHANNEL, 0),
                PresenceInfo(CHANNEL, 5, [Member(f"user{n}", 1) for n in range(5)]),
                PresenceChange(CHANNEL, "leave", "user0"),
            ],
        )

    def test_many_changes_paged(self) -> None:
        """More changes than a poll's page are read on at once, in order."""
        a, _ = self.broker()
        b, _ = self.broker()
        told = self.follow(a)
        with mock.patch.object(_presence, "LOG_LENGTH", 40):
            for n in range(30):
                b.enter(CHANNEL, f"user{n:02}")
            self.clock.advance(_presence.PRESENCE_FLUSH)
            with mock.patch.object(_presence, "POLL_PAGE", 7):
                self.clock.advance(_presence.PRESENCE_POLL)
        joins = [each.sub for each in told[1:] if isinstance(each, PresenceChange)]
        self.assertEqual(sorted(joins), [f"user{n:02}" for n in range(30)])
        self.assertEqual(len(told), 31)


class RedisDownTests(PresenceTestCase):
    """Redis away: presence fails, counting goes on, and Redis is caught up."""

    def test_presence_fails(self) -> None:
        """presence() fails with BrokerUnavailable; enter and leave go on."""
        a, link = self.broker()
        a.enter(CHANNEL, "alice")
        self.flush()
        link.lose()
        self.failureResultOf(a.presence(CHANNEL, 10), BrokerUnavailable)
        a.enter(CHANNEL, "bob")
        a.leave(CHANNEL, "alice")
        self.clock.advance(10)
        link.start()
        self.assertEqual(self.info(a), PresenceInfo(CHANNEL, 1, [Member("bob", 1)]))

    def test_lost_state_written_again(self) -> None:
        """
        Redis lost everything (a restart, FLUSHALL): on reconnecting, the
        process writes all of it again, and followers that knew the old
        presence are told the new one.
        """
        a, _ = self.broker()
        b, b_link = self.broker()
        a.enter(CHANNEL, "alice")
        b.enter(CHANNEL, "bob")
        b.enter("other", "bob")
        self.flush()
        told = self.follow(a)
        b_link.lose()
        tools.delete_prefix(
            tools.REDIS_PORT, tools.REDIS_DB, self.prefix, tools.REDIS_HOST
        )
        b_link.start()
        self.clock.advance(_presence.PRESENCE_FLUSH)
        self.assertEqual(
            self.info(b, "other"), PresenceInfo("other", 1, [Member("bob", 1)])
        )
        # a learns at its renewal that it lost its entry.
        self.clock.advance(_presence.PRESENCE_RENEW)
        self.flush()
        expected = PresenceInfo(CHANNEL, 2, [Member("alice", 1), Member("bob", 1)])
        self.assertEqual(self.info(b), expected)
        # Told the presence made anew (bob's, perhaps alice's too), then
        # the changes after it.
        self.assertIsInstance(told[1], PresenceInfo)
        self.assertEqual(apply(told), {"alice": 1, "bob": 1})

    def test_write_fails(self) -> None:
        """
        A write that Redis refuses is logged once and tried again, whole,
        until it works.
        """
        a, link = self.broker()
        logs = Logs(self)
        a.enter(CHANNEL, "alice")
        self.redis.run("SET", self.key(CHANNEL, "subs"), "not a sorted set")
        self.redis.run("HSET", self.key(CHANNEL, "procs"), "#e", "x")
        for _ in range(3):
            self.clock.advance(_presence.PRESENCE_FLUSH)
        texts = [t for t in logs.texts() if "presence" in t]
        self.assertEqual(len(texts), 1, texts)
        self.assertIn("Writing presence to Redis failed", texts[0])
        self.redis.run("DEL", self.key(CHANNEL, "subs"))
        self.clock.advance(_presence.PRESENCE_FLUSH)
        self.assertEqual(self.info(a).count, 1)
        self.assertEqual(link.scripts(PRESENCE_UPDATE)[-1][-3:-1], ("*", 1))

    def test_follow_while_down(self) -> None:
        """A follower of a broker without Redis is told once it is back."""
        a, link = self.broker()
        link.lose()
        told: list[Told] = []
        a.follow_presence(CHANNEL, 10, told.append)
        a.enter(CHANNEL, "alice")
        self.clock.advance(5)
        self.assertEqual(told, [])
        link.start()
        self.clock.advance(0)
        self.flush()
        self.assertEqual(told, [PresenceInfo(CHANNEL, 1, [Member("alice", 1)])])

    def test_lost_while_writing(self) -> None:
        """
        A write whose reply is lost with the connection may have been done
        or not: the next one is whole.
        """
        a, link = self.broker()
        a.enter(CHANNEL, "alice")
        self.clock.advance(_presence.PRESENCE_FLUSH)
        a.enter(CHANNEL, "bob")
        real = link.execute

        def lost(*args: Any, timeout: float | None = None) -> Deferred[Any]:
            real(*args, timeout=timeout)
            return fail(Failure(BrokerUnavailable("lost the connection to Redis")))

        link.execute = lost  # type: ignore[method-assign]
        self.clock.advance(_presence.PRESENCE_FLUSH)
        link.execute = real  # type: ignore[method-assign]
        self.clock.advance(_presence.PRESENCE_FLUSH)
        last = link.scripts(PRESENCE_UPDATE)[-1]
        self.assertEqual(last[-3:-1], ("*", 2))
        self.assertEqual(json.loads(last[-1]), {"alice": 1, "bob": 1})
        self.assertEqual(members(self.info(a)), {"alice": 1, "bob": 1})


class InvariantTests(SynchronousTestCase):
    """
    Whatever two processes do, every follower's changes, applied to the
    PresenceInfo before them, give what Redis says at the end.
    """

    def setUp(self) -> None:
        tools.need(tools.unavailable_reason())

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["enter", "leave", "tick", "follow", "die"]),
                st.integers(0, 1),
                st.sampled_from(["a", "b", "c", None]),
            ),
            max_size=40,
        )
    )
    def test_followers_match_the_end(
        self, steps: list[tuple[str, int, str | None]]
    ) -> None:
        clock = Clock()
        clock.advance(1_700_000_000)
        prefix = tools.unique_prefix()
        made = [blocking_broker(clock, prefix), blocking_broker(clock, prefix)]
        brokers = [broker for broker, _ in made]
        entered: list[Counter[str | None]] = [Counter(), Counter()]
        #: Each follower's broker, and what it was told.
        followers: list[tuple[int, list[Told]]] = []
        dead: set[int] = set()
        try:
            for which, broker in enumerate(brokers):
                followers.append((which, []))
                broker.follow_presence(CHANNEL, 1000, followers[-1][1].append)
            clock.advance(0)
            for kind, which, sub in steps:
                if which in dead:
                    continue
                broker = brokers[which]
                if kind == "enter":
                    broker.enter(CHANNEL, sub)
                    entered[which][sub] += 1
                elif kind == "leave" and entered[which][sub]:
                    broker.leave(CHANNEL, sub)
                    entered[which][sub] -= 1
                elif kind == "tick":
                    clock.advance(0.1)
                elif kind == "follow":
                    followers.append((which, []))
                    broker.follow_presence(CHANNEL, 1000, followers[-1][1].append)
                elif kind == "die" and which == 1:
                    # No goodbye, no renewal, and its lease ends: as Redis
                    # sees a process that died.
                    dead.add(which)
                    made[which][1].lose()
                    broker.presence_state.stop()
                    tools.command(
                        tools.REDIS_PORT,
                        "EVAL",
                        "local v = redis.call('HGET', KEYS[1], ARGV[1]) "
                        "if v then redis.call('HSET', KEYS[1], ARGV[1], "
                        "'1' .. string.sub(v, string.find(v, ' '), -1)) end",
                        1,
                        f"{prefix}#presence:{{{CHANNEL}}}:procs",
                        broker.presence_state.process_id,
                        host=tools.REDIS_HOST,
                        db=tools.REDIS_DB,
                    )
            for _ in range(3):
                clock.advance(_presence.PRESENCE_FLUSH)
                clock.advance(_presence.PRESENCE_POLL)
            final = self.successResultOf(brokers[0].presence(CHANNEL, 1000))
            live = [entered[n] for n in range(2) if n not in dead]
            self.assertEqual(final.count, sum(sum(c.values()) for c in live))
            expected: Counter[str] = Counter()
            for counts in live:
                for sub, n in counts.items():
                    if sub is not None and n:
                        expected[sub] += n
            self.assertEqual(members(final), dict(expected))
            for which, told in followers:
                if which in dead:
                    continue
                known = apply(told)
                self.assertIsNotNone(known, told)
                assert known is not None
                self.assertEqual(set(known), set(expected), told)
        finally:
            for broker in brokers:
                broker.stop()
            tools.delete_prefix(
                tools.REDIS_PORT, tools.REDIS_DB, prefix, tools.REDIS_HOST
            )
