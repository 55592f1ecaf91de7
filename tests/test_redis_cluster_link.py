"""
Tests for L{twisted_sse._redis._cluster}: hash slots as Redis computes
them, the key each command is routed by, C{CLUSTER SLOTS} replies, and
L{ClusterLink} on a L{Clock} with fake node links and fake nodes asked for
the map (routing, C{MOVED}, C{ASK}, C{TRYAGAIN}, C{CLUSTERDOWN}, readiness,
refreshes, stopping); then, under pytest (C{-m slow}), against a private
Redis Cluster of three primaries: routing, a slot migrated live, and
C{CLUSTER KEYSLOT}.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import BrokerUnavailable, RedisAddress, parse_redis_url
from twisted_sse._redis._cluster import (
    ASK_TIMEOUT,
    MAX_REDIRECTIONS,
    SLOTS,
    ClusterLink,
    SlotRange,
    ask_slots,
    command_key,
    group_by_slot,
    key_slot,
    parse_slots,
)
from twisted_sse._redis._protocol import RedisCommandError

from . import _helpers
from . import _redis_tools as tools
from ._names import ResolvingReactor
from ._redis_tools import ClosingTransport, commands_in


def reference_crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM) bit by bit, as the Redis Cluster spec gives it."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = (crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def reference_slot(key: bytes) -> int:
    """HASH_SLOT as the Redis Cluster spec writes it, loop for loop."""
    start = 0
    while start < len(key) and key[start] != ord("{"):
        start += 1
    if start < len(key):
        end = start + 1
        while end < len(key) and key[end] != ord("}"):
            end += 1
        if end < len(key) and end != start + 1:
            key = key[start + 1 : end]
    return reference_crc16(key) % 16384


class KeySlotTests(SynchronousTestCase):
    """key_slot: the hash slot Redis gives a key."""

    def test_known_values(self) -> None:
        """Values that Redis 7's CLUSTER KEYSLOT gives."""
        for key, slot in [
            ("123456789", 12739),
            ("", 0),
            ("foo", 12182),
            ("bar", 5061),
            ("hello", 866),
            ("é", 10180),
        ]:
            self.assertEqual(key_slot(key), slot, key)
            self.assertEqual(key_slot(key.encode()), slot, key)

    def test_hash_tags(self) -> None:
        """The first {...} that is not empty is hashed, as Redis does."""
        self.assertEqual(key_slot("{user1000}.following"), 3443)
        self.assertEqual(key_slot("{user1000}.followers"), 3443)
        self.assertEqual(key_slot("foo{bar}{zap}"), key_slot("bar"))
        # An empty tag: the whole key is hashed.
        self.assertEqual(key_slot("foo{}{bar}"), 8363)
        # The first { and the first } after it: "{bar" is hashed.
        self.assertEqual(key_slot("foo{{bar}}zap"), 4015)
        self.assertEqual(key_slot("foo{{bar}}zap"), key_slot("{bar"))
        # No } at all: the whole key.
        self.assertEqual(key_slot("a{b"), 13340)
        self.assertEqual(
            key_slot("sse:#presence:{news}:procs"), key_slot("sse:#presence:{news}:log")
        )

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=40) | st.text(alphabet="ab{}", max_size=12))
    def test_reference(self, key: bytes | str) -> None:
        """key_slot equals the spec's loops for any key, braces or not."""
        data = key.encode() if isinstance(key, str) else key
        self.assertEqual(key_slot(key), reference_slot(data))


class CommandKeyTests(SynchronousTestCase):
    """command_key: the key each command this package sends is routed by."""

    def test_scripts(self) -> None:
        """EVALSHA and EVAL: the first key, or none with no keys."""
        self.assertEqual(command_key(("EVALSHA", "abc", 2, "k1", "k2", "a")), "k1")
        self.assertEqual(command_key((b"eval", b"return 1", b"1", b"k")), b"k")
        self.assertIsNone(command_key(("EVALSHA", "abc", 0, "arg")))
        self.assertIsNone(command_key(("EVAL", "return 1", "x")))
        self.assertIsNone(command_key(("EVALSHA", "abc")))

    def test_xread(self) -> None:
        """XREAD: the first key after STREAMS, in any case."""
        self.assertEqual(
            command_key(("XREAD", "COUNT", 10, "BLOCK", 0, "STREAMS", "a", "b", 0, 0)),
            "a",
        )
        self.assertEqual(command_key(("xread", "streams", "s", "0")), "s")
        self.assertIsNone(command_key(("XREAD", "COUNT", 1)))

    def test_subcommands(self) -> None:
        """XINFO STREAM key (and OBJECT, XGROUP): the argument after it."""
        self.assertEqual(command_key(("XINFO", "STREAM", "s")), "s")
        self.assertEqual(command_key(("OBJECT", "ENCODING", "k")), "k")
        self.assertEqual(command_key(("XGROUP", "CREATE", "s", "g", "$")), "s")
        self.assertIsNone(command_key(("XINFO", "HELP")))

    def test_key_first(self) -> None:
        """Commands that take their key first."""
        for name in [
            "XADD",
            "XRANGE",
            "XREVRANGE",
            "XLEN",
            "TYPE",
            "DEL",
            "EXISTS",
            "GET",
            "SET",
            "HGET",
            "HMGET",
            "HSET",
            "HDEL",
            "HGETALL",
            "ZADD",
            "ZRANGE",
            "ZCARD",
            "LRANGE",
            "PEXPIRE",
            "PTTL",
            "PERSIST",
            "SPUBLISH",
            "ssubscribe",
        ]:
            self.assertEqual(command_key((name, "key", "x")), "key", name)

    def test_keyless(self) -> None:
        """Commands without a key give None."""
        for args in [
            ("PING",),
            ("INFO", "server"),
            ("CLIENT", "SETNAME", "x"),
            ("SCRIPT", "LOAD", "return 1"),
            ("ROLE",),
            ("WAIT", 1, 100),
            ("CLUSTER", "SLOTS"),
            ("TIME",),
            ("AUTH", "user", "password"),
            ("ASKING",),
        ]:
            self.assertIsNone(command_key(args), args)


class GroupBySlotTests(SynchronousTestCase):
    """group_by_slot: items in groups a cluster runs in one command."""

    def test_groups(self) -> None:
        """By slot, groups in order of first item, items in order."""
        names = ["{a}1", "b", "{a}2", "{b}", "c", "{a}3"]
        self.assertEqual(
            group_by_slot(names, lambda name: name),
            [["{a}1", "{a}2", "{a}3"], ["b", "{b}"], ["c"]],
        )
        self.assertEqual(group_by_slot([], str), [])

    def test_key_function(self) -> None:
        """The key of each item is given by the function."""
        items = [(1, "x"), (2, "y"), (3, "x")]
        self.assertEqual(
            group_by_slot(items, lambda item: item[1]),
            [[(1, "x"), (3, "x")], [(2, "y")]],
        )


def slots_reply(*ranges: tuple[int, int, str, int]) -> list[Any]:
    """A CLUSTER SLOTS reply, each range with one replica."""
    return [
        [
            start,
            end,
            [host.encode(), port, b"id-%d" % port, []],
            [b"10.9.9.9", port + 100, b"replica-%d" % port, []],
        ]
        for start, end, host, port in ranges
    ]


class ParseSlotsTests(SynchronousTestCase):
    """parse_slots: a CLUSTER SLOTS reply as slot ranges of primaries."""

    def test_primaries(self) -> None:
        """Each range's primary, in slot order; replicas left out."""
        reply = slots_reply((5461, 16383, "10.0.0.2", 7002), (0, 5460, "h1", 7001))
        self.assertEqual(
            parse_slots(reply, "seed"),
            [SlotRange(0, 5460, "h1", 7001), SlotRange(5461, 16383, "10.0.0.2", 7002)],
        )

    def test_unknown_host(self) -> None:
        """An empty, "?" or nil host is the host asked."""
        reply: list[Any] = [
            [0, 1, [b"", 7001, b"a"]],
            [2, 3, [b"?", 7002, b"b"]],
            [4, 5, [None, 7003, b"c"]],
        ]
        self.assertEqual(
            [(each.host, each.port) for each in parse_slots(reply, "seed")],
            [("seed", 7001), ("seed", 7002), ("seed", 7003)],
        )

    def test_malformed(self) -> None:
        """What is not a CLUSTER SLOTS reply is a ValueError."""
        replies: list[Any] = [
            b"OK",
            [[0, 1]],
            [[0, SLOTS, [b"h", 1]]],
            [[5, 1, [b"h", 1]]],
            [[0, 1, [b"h"]]],
            [[0, 1, [b"h", 0]]],
            [[0, 1, b"h"]],
        ]
        for reply in replies:
            with self.assertRaises(ValueError, msg=repr(reply)):
                parse_slots(reply, "seed")


# ClusterLink on fakes


class FakeNode:
    """A node link: the test connects it, loses it and answers its commands."""

    def __init__(
        self,
        address: RedisAddress,
        name: str,
        on_ready: Callable[[], object] | None,
        on_lost: Callable[[], object] | None,
    ) -> None:
        self.address = address
        self.name = name
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.ready = False
        self.started = self.stopped = False
        self.starts = self.drops = 0
        #: Commands sent and their answers to come.
        self.sent: list[tuple[tuple[Any, ...], Deferred[Any]]] = []

    @property
    def commands(self) -> list[tuple[Any, ...]]:
        return [args for args, _ in self.sent]

    def start(self) -> None:
        self.started = True
        self.starts += 1

    def stop(self) -> Deferred[None]:
        self.stopped = True
        self.lose()
        return succeed(None)

    def drop(self) -> None:
        self.drops += 1

    def connect(self) -> None:
        self.ready = True
        if self.on_ready is not None:
            self.on_ready()

    def lose(self) -> None:
        if not self.ready:
            return
        self.ready = False
        pending = [answer for _, answer in self.sent if not answer.called]
        for answer in pending:
            answer.errback(BrokerUnavailable("lost the connection to Redis"))
        if self.on_lost is not None:
            self.on_lost()

    def execute(self, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        if not self.ready:
            return fail(BrokerUnavailable("Redis is not connected"))
        answer: Deferred[Any] = Deferred()
        self.sent.append((args, answer))
        return answer

    def answer(self, reply: Any, index: int = -1) -> None:
        """Answer a command (the last one by default)."""
        self.sent[index][1].callback(reply)

    def refuse(self, text: str, index: int = -1) -> None:
        """Answer a command with an error, as RedisProtocol words it."""
        name = self.sent[index][0][0]
        self.sent[index][1].errback(
            RedisCommandError(f"Redis refused {name!r}: {text}")
        )


class FakeAsk:
    """Nodes asked for CLUSTER SLOTS over their own connection."""

    def __init__(self) -> None:
        self.asked: list[tuple[RedisAddress, Deferred[Any]]] = []

    def __call__(self, address: RedisAddress) -> Deferred[Any]:
        answer: Deferred[Any] = Deferred()
        self.asked.append((address, answer))
        return answer

    @property
    def where(self) -> list[tuple[str, int]]:
        return [(address.host, address.port) for address, _ in self.asked]

    @property
    def waiting(self) -> int:
        return sum(1 for _, answer in self.asked if not answer.called)

    def answer(self, reply: Any) -> None:
        self.asked[-1][1].callback(reply)

    def refuse(self) -> None:
        self.asked[-1][1].errback(ConnectionRefusedError())


URL = "redis+cluster://user:secret@s1:7000,s2:7000,s3:7000"
#: Three primaries, as redis-cli --cluster create splits the slots.
THREE = slots_reply(
    (0, 5460, "10.0.0.1", 7001),
    (5461, 10922, "10.0.0.2", 7002),
    (10923, 16383, "10.0.0.3", 7003),
)
N1, N2, N3 = ("10.0.0.1", 7001), ("10.0.0.2", 7002), ("10.0.0.3", 7003)
#: A key of each node: slots 866 (N1), 7365 (N2), 12182 (N3).
K1, K2, K3 = "hello", "{c}2", "foo"


class ClusterCase(SynchronousTestCase):
    """A ClusterLink on a Clock, fake nodes and fake questions."""

    def setUp(self) -> None:
        self.assertEqual([key_slot(K1), key_slot(K2), key_slot(K3)], [866, 7365, 12182])
        self.clock = Clock()
        self.ask = FakeAsk()
        self.made: list[FakeNode] = []
        self.events: list[str] = []
        self.maps = 0
        self.link = ClusterLink(
            self.clock,
            parse_redis_url(URL),
            "twisted_sse:test",
            on_ready=lambda: self.events.append("ready"),
            on_lost=lambda: self.events.append("lost"),
            timeout=2.0,
            scripts=("return 1",),
            make_node=self.make_node,
            ask=self.ask,
            refresh_interval=10.0,
            jitter=lambda: 1.0,
        )
        self.link.on_map(self.count_map)

    def count_map(self) -> None:
        self.maps += 1

    def make_node(
        self,
        address: RedisAddress,
        name: str,
        on_ready: Callable[[], object] | None,
        on_lost: Callable[[], object] | None,
    ) -> Any:
        node = FakeNode(address, name, on_ready, on_lost)
        self.made.append(node)
        return node

    def node(self, where: tuple[str, int]) -> FakeNode:
        """The newest fake link made for ``where``."""
        for node in reversed(self.made):
            if (node.address.host, node.address.port) == where:
                return node
        raise AssertionError(f"no link to {where}")

    def start_ready(self, reply: Any = THREE) -> None:
        """Start, answer the first seed with ``reply``, connect every node."""
        self.link.start()
        self.ask.answer(reply)
        for node in list(self.made):
            node.connect()
        self.assertTrue(self.link.ready)

    def send(self, *args: Any) -> None:
        """Send a command whose outcome the test does not look at."""
        self.link.execute(*args).addErrback(lambda _: None)

    def tearDown(self) -> None:
        self.successResultOf(self.link.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class StartTests(ClusterCase):
    """start: the map from the seeds, a link per primary, readiness."""

    def test_seeds_in_turn(self) -> None:
        """
        A refused seed and a silent one (past 1 s) are skipped; the third's
        map makes a link per primary, with the login, the name, started.
        """
        self.link.start()
        self.ask.refuse()
        self.assertEqual(self.made, [])
        self.clock.advance(ASK_TIMEOUT)
        self.ask.answer(THREE)
        self.assertEqual(self.ask.where, [("s1", 7000), ("s2", 7000), ("s3", 7000)])
        for address, _ in self.ask.asked:
            self.assertEqual((address.username, address.password), ("user", "secret"))
            self.assertEqual(address.cluster, ())
        self.assertEqual(
            [(n.address.host, n.address.port) for n in self.made], [N1, N2, N3]
        )
        for node in self.made:
            self.assertTrue(node.started)
            self.assertEqual(node.name, "twisted_sse:test")
            where = (node.address.host, node.address.port)
            self.assertEqual(node.address, self.link.address.node(*where))
        self.assertEqual(self.link.refreshes, 1)
        self.assertEqual(self.maps, 1)
        self.assertEqual(self.link.owner(K1), N1)
        self.assertEqual(self.link.owner(K3), N3)
        self.assertFalse(self.link.ready)

    def test_ready_when_every_primary_is(self) -> None:
        """ready (and on_ready, once) only when every primary's link is."""
        self.link.start()
        self.ask.answer(THREE)
        self.made[0].connect()
        self.made[1].connect()
        self.assertFalse(self.link.ready)
        self.assertEqual(self.events, [])
        self.made[2].connect()
        self.assertTrue(self.link.ready)
        self.assertEqual(self.events, ["ready"])
        self.assertIsNone(self.link.local_address)

    def test_lost_and_back(self) -> None:
        """A primary's link lost: on_lost once, the map asked again; back: ready."""
        self.start_ready()
        self.node(N2).lose()
        self.assertFalse(self.link.ready)
        self.assertEqual(self.events, ["ready", "lost"])
        # The map is read again, on a ready node link (not a new connection).
        self.assertEqual(self.node(N1).commands, [("CLUSTER", "SLOTS")])
        self.node(N1).answer(THREE)
        self.node(N3).lose()
        self.assertEqual(self.events, ["ready", "lost"])
        self.node(N2).connect()
        self.node(N3).connect()
        self.assertEqual(self.events, ["ready", "lost", "ready"])

    def test_partial_map_not_ready(self) -> None:
        """A map that leaves slots unserved is never ready."""
        self.link.start()
        self.ask.answer(THREE[:2])
        for node in self.made:
            node.connect()
        self.assertFalse(self.link.ready)
        self.assertEqual(self.link.state()["slots_covered"], 10923)
        self.assertIsNone(self.link.owner(K3))
        failure = self.failureResultOf(self.link.execute("GET", K3), BrokerUnavailable)
        self.assertIn("slot 12182", str(failure.value))

    def test_retry_with_backoff(self) -> None:
        """While no node answers, the seeds are asked again, less and less often."""
        self.link.start()
        for _ in range(3):
            self.ask.refuse()
        self.assertEqual(len(self.ask.asked), 3)
        self.assertEqual(self.ask.waiting, 0)
        self.clock.advance(0.1)  # the first retry: 0.05-0.1 s
        self.assertEqual(len(self.ask.asked), 4)
        for _ in range(3):
            self.ask.refuse()
        self.clock.advance(0.1)
        self.assertEqual(len(self.ask.asked), 6)  # the second waits 0.1-0.2 s
        self.clock.advance(0.1)
        self.assertEqual(len(self.ask.asked), 7)
        self.ask.answer(THREE)
        self.assertEqual(self.link.refreshes, 1)
        self.assertEqual(self.ask.where[-1], ("s1", 7000))

    def test_known_nodes_asked(self) -> None:
        """Once a map is known, its primaries are asked too; who answers, first."""
        self.start_ready()
        for node in self.made:
            node.lose()
        for _ in range(3):
            self.ask.refuse()
        self.ask.answer(THREE)
        self.assertEqual(self.ask.where[-1], N1)
        self.link.refresh()
        self.assertEqual(self.ask.where[-1], N1)

    def test_periodic_refresh(self) -> None:
        """Every refresh_interval, one CLUSTER SLOTS on a ready node's link."""
        self.start_ready()
        self.clock.advance(10.0)
        self.assertEqual(len(self.ask.asked), 1)
        self.assertEqual(self.node(N1).commands, [("CLUSTER", "SLOTS")])
        self.node(N1).answer(THREE)
        self.assertEqual(self.link.refreshes, 2)
        self.assertEqual(self.maps, 1)  # unchanged: not told
        self.clock.advance(10.0)
        self.assertEqual(len(self.node(N1).commands), 2)

    def test_refresh_in_flight_once(self) -> None:
        """A refresh asked for during one is read once more after it, not twice."""
        self.start_ready()
        first = self.link.refresh()
        second = self.link.refresh()
        third = self.link.refresh()
        self.assertEqual(len(self.node(N1).commands), 1)
        self.node(N1).answer(THREE)
        self.successResultOf(first)
        self.assertNoResult(second)
        self.assertEqual(len(self.node(N1).commands), 2)
        self.node(N1).answer(THREE)
        self.successResultOf(second)
        self.successResultOf(third)
        self.assertEqual(self.link.refreshes, 3)

    def test_resharded_map(self) -> None:
        """
        A map with a new primary and without an old one: a link is made for
        the new, the old one is stopped after the timeout, listeners told.
        """
        self.start_ready()
        self.link.refresh()
        self.node(N1).answer(
            slots_reply(
                (0, 5460, "10.0.0.1", 7001),
                (5461, 10922, "10.0.0.4", 7004),
                (10923, 16383, "10.0.0.3", 7003),
            )
        )
        self.assertEqual(self.maps, 2)
        self.assertEqual(self.link.owner(K2), ("10.0.0.4", 7004))
        self.assertEqual(self.events, ["ready", "lost"])
        self.assertEqual(set(self.link.nodes()), {N1, ("10.0.0.4", 7004), N3})
        self.assertIsNone(self.link.node(*N2))
        old = self.node(N2)
        self.assertFalse(old.stopped)
        self.node(("10.0.0.4", 7004)).connect()
        self.assertEqual(self.events, ["ready", "lost", "ready"])
        self.clock.advance(2.0)
        self.assertTrue(old.stopped)

    def test_stop(self) -> None:
        """stop stops every node link and timer; start again works."""
        self.start_ready()
        self.successResultOf(self.link.stop())
        self.assertTrue(all(node.stopped for node in self.made))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.events, ["ready", "lost"])
        self.link.start()
        self.assertEqual([node.starts for node in self.made], [2, 2, 2])
        self.assertEqual(len(self.ask.asked), 2)
        self.ask.answer(THREE)
        for node in self.made:
            node.connect()
        self.assertEqual(self.events, ["ready", "lost", "ready"])

    def test_stop_while_asking(self) -> None:
        """stop while a seed is asked cancels the question and its timeout."""
        self.link.start()
        self.successResultOf(self.link.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.made, [])

    def test_drop(self) -> None:
        """drop drops every node's connection."""
        self.start_ready()
        self.link.drop()
        self.assertEqual([node.drops for node in self.made], [1, 1, 1])

    def test_state(self) -> None:
        """state: for /healthz, slots, each primary's slots and whether it is up."""
        self.start_ready()
        self.node(N3).lose()
        self.assertEqual(
            self.link.state(),
            {
                "mode": "cluster",
                "slots_covered": SLOTS,
                "nodes": [
                    {"address": "10.0.0.1:7001", "slots": 5461, "up": True},
                    {"address": "10.0.0.2:7002", "slots": 5462, "up": True},
                    {"address": "10.0.0.3:7003", "slots": 5461, "up": False},
                ],
                "redirections": 0,
                "refreshes": 1,
            },
        )

    def test_no_seeds(self) -> None:
        """A plain address has no seeds: refused."""
        with self.assertRaises(ValueError):
            ClusterLink(self.clock, RedisAddress("h"), "x")


class RouteTests(ClusterCase):
    """execute: each command to the primary that owns its key."""

    def test_by_key(self) -> None:
        """EVALSHA, XADD, XRANGE, XREAD go to the owner of their key."""
        self.start_ready()
        self.send("EVALSHA", "sha", 2, K1, K1 + "#e", "arg")
        self.send("XADD", K3, "*", "data", "x")
        self.send("XRANGE", K2.encode(), "-", "+")
        self.send("XREAD", "BLOCK", 0, "STREAMS", K3, "0-0")
        self.assertEqual(
            self.node(N1).commands, [("EVALSHA", "sha", 2, K1, K1 + "#e", "arg")]
        )
        self.assertEqual(
            self.node(N3).commands,
            [
                ("XADD", K3, "*", "data", "x"),
                ("XREAD", "BLOCK", 0, "STREAMS", K3, "0-0"),
            ],
        )
        self.assertEqual(self.node(N2).commands, [("XRANGE", K2.encode(), "-", "+")])
        self.assertIs(self.link.node_for(K3), self.node(N3))
        self.assertIs(self.link.node(*N2), self.node(N2))

    def test_reply(self) -> None:
        """The owner's reply is the command's."""
        self.start_ready()
        answer = self.link.execute("GET", K1)
        self.node(N1).answer(b"value")
        self.assertEqual(self.successResultOf(answer), b"value")

    def test_keyless(self) -> None:
        """A command without a key goes to a ready node."""
        self.start_ready()
        self.node(N1).lose()
        self.node(N1).on_ready = None
        self.send("PING")
        self.assertEqual(self.node(N2).commands[-1], ("PING",))

    def test_owner_down(self) -> None:
        """The owner's link not ready: BrokerUnavailable at once, others work."""
        self.start_ready()
        self.node(N3).lose()
        failure = self.failureResultOf(self.link.execute("GET", K3), BrokerUnavailable)
        self.assertIn("10.0.0.3:7003", str(failure.value))
        self.send("GET", K1)
        self.assertEqual(self.node(N1).commands[-1], ("GET", K1))

    def test_no_map(self) -> None:
        """Before a map: BrokerUnavailable at once."""
        self.link.start()
        self.failureResultOf(self.link.execute("GET", K1), BrokerUnavailable)
        self.failureResultOf(self.link.execute("PING"), BrokerUnavailable)

    def test_other_errors(self) -> None:
        """Other errors (NOSCRIPT) are the command's, and nothing is refreshed."""
        self.start_ready()
        answer = self.link.execute("EVALSHA", "sha", 1, K1)
        self.node(N1).refuse("NOSCRIPT No matching script.")
        failure = self.failureResultOf(answer, RedisCommandError)
        self.assertIn("NOSCRIPT", str(failure.value))
        self.assertEqual(self.node(N1).commands, [("EVALSHA", "sha", 1, K1)])
        self.assertEqual(self.link.redirections, 0)

    def test_lost_connection(self) -> None:
        """A connection lost under a command fails it with BrokerUnavailable."""
        self.start_ready()
        answer = self.link.execute("GET", K1)
        self.node(N1).lose()
        self.failureResultOf(answer, BrokerUnavailable)


class RedirectTests(ClusterCase):
    """MOVED, ASK, TRYAGAIN, CLUSTERDOWN."""

    def test_moved(self) -> None:
        """
        MOVED: the slot's owner recorded at once, the command sent there,
        one map refresh for two redirections, listeners told.
        """
        self.start_ready()
        slot = key_slot(K1)
        first = self.link.execute("EVALSHA", "sha", 1, K1)
        second = self.link.execute("GET", K1)
        self.node(N1).refuse(f"MOVED {slot} 10.0.0.2:7002", 0)
        self.assertEqual(self.link.owner(K1), N2)
        self.assertEqual(self.link.owner("bar"), N1)  # other slots stay
        self.assertEqual(self.maps, 2)
        self.assertEqual(self.node(N2).commands, [("EVALSHA", "sha", 1, K1)])
        self.node(N1).refuse(f"MOVED {slot} 10.0.0.2:7002", 1)
        self.assertEqual(
            self.node(N2).commands, [("EVALSHA", "sha", 1, K1), ("GET", K1)]
        )
        # One refresh for both, on a ready link (not a new connection).
        refreshes = [
            args for node in self.made for args in node.commands if args[0] == "CLUSTER"
        ]
        self.assertEqual(refreshes, [("CLUSTER", "SLOTS")])
        self.assertEqual(len(self.ask.asked), 1)
        self.node(N2).answer(1, 0)
        self.node(N2).answer(b"v", 1)
        self.assertEqual(self.successResultOf(first), 1)
        self.assertEqual(self.successResultOf(second), b"v")
        self.assertEqual(self.link.redirections, 2)

    def test_moved_burst(self) -> None:
        """
        MOVEDs for many slots while the map is read: each recorded, the
        listeners told once for them (after the map), one more read.
        """
        self.start_ready()
        keys = [K1, "bar"]  # slots 866 and 5061, both on N1
        answers = [self.link.execute("GET", key) for key in keys]
        self.node(N1).refuse(f"MOVED {key_slot(K1)} 10.0.0.2:7002", 0)
        self.assertEqual(self.maps, 2)
        self.node(N1).refuse(f"MOVED {key_slot('bar')} 10.0.0.2:7002", 1)
        self.assertEqual(self.link.owner("bar"), N2)
        self.assertEqual(self.maps, 2)
        reads = [n for n in self.made if ("CLUSTER", "SLOTS") in n.commands]
        self.assertEqual(len(reads), 1)
        # The node asked has not heard of the second move yet.
        index = reads[0].commands.index(("CLUSTER", "SLOTS"))
        moved = [
            [0, 865, [b"10.0.0.1", 7001]],
            [866, 866, [b"10.0.0.2", 7002]],
            [867, 5460, [b"10.0.0.1", 7001]],
            *THREE[1:],
        ]
        reads[0].answer(moved, index)
        self.assertEqual(self.maps, 3)
        self.assertEqual(self.link.owner("bar"), N2)
        self.assertEqual(self.link.state()["nodes"][1]["slots"], 5462 + 2)
        for answer in answers:
            self.node(N2).answer(b"v", 0 if answer is answers[0] else 1)
            self.assertEqual(self.successResultOf(answer), b"v")

    def test_moved_refresh_agrees(self) -> None:
        """The map read after a MOVED keeps the owner it told."""
        self.start_ready()
        slot = key_slot(K1)
        self.send("GET", K1)
        self.node(N1).refuse(f"MOVED {slot} 10.0.0.2:7002")
        (refresher,) = [n for n in self.made if ("CLUSTER", "SLOTS") in n.commands]
        moved = [
            [0, slot - 1, [b"10.0.0.1", 7001, b"a"]],
            [slot, slot, [b"10.0.0.2", 7002, b"b"]],
            [slot + 1, 5460, [b"10.0.0.1", 7001, b"a"]],
            *THREE[1:],
        ]
        index = refresher.commands.index(("CLUSTER", "SLOTS"))
        refresher.answer(moved, index)
        self.assertEqual(self.link.owner(K1), N2)
        self.assertEqual(self.link.refreshes, 2)
        # Nothing to read again: only the periodic refresh is due.
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_moved_stale_refresh(self) -> None:
        """A map that has not heard of a MOVED yet does not undo it, once."""
        self.start_ready()
        slot = key_slot(K1)
        self.send("GET", K1)
        self.node(N1).refuse(f"MOVED {slot} 10.0.0.2:7002")
        index = self.node(N1).commands.index(("CLUSTER", "SLOTS"))
        self.node(N1).answer(THREE, index)
        self.assertEqual(self.link.owner(K1), N2)
        # ... and the map is read again soon.
        self.clock.advance(0.1)
        self.assertEqual(self.node(N1).commands[-1], ("CLUSTER", "SLOTS"))
        self.node(N1).answer(THREE)
        self.assertEqual(self.link.owner(K1), N1)

    def test_moved_new_node(self) -> None:
        """MOVED to an unknown node: its link is made, the command waits for it."""
        self.start_ready()
        answer = self.link.execute("GET", K1)
        self.node(N1).refuse(f"MOVED {key_slot(K1)} 10.0.0.9:7009")
        new = self.node(("10.0.0.9", 7009))
        self.assertTrue(new.started)
        self.assertEqual(new.address.password, "secret")
        self.assertFalse(self.link.ready)
        self.assertNoResult(answer)
        new.connect()
        self.assertEqual(new.commands, [("GET", K1)])
        new.answer(b"v")
        self.assertEqual(self.successResultOf(answer), b"v")

    def test_moved_new_node_never_ready(self) -> None:
        """A new node that does not connect in `timeout`: BrokerUnavailable."""
        self.start_ready()
        answer = self.link.execute("GET", K1)
        self.node(N1).refuse(f"MOVED {key_slot(K1)} 10.0.0.9:7009")
        self.clock.advance(1.9)
        self.assertNoResult(answer)
        self.clock.advance(0.1)
        failure = self.failureResultOf(answer, BrokerUnavailable)
        self.assertIn("10.0.0.9:7009", str(failure.value))

    def test_moved_no_host(self) -> None:
        """MOVED with no host (":port"): the host of the node that answered."""
        self.start_ready()
        self.send("GET", K1)
        self.node(N1).refuse(f"MOVED {key_slot(K1)} :7009")
        self.assertEqual(self.link.owner(K1), ("10.0.0.1", 7009))

    def test_ask(self) -> None:
        """
        ASK: ASKING then the command, one after the other on the target's
        link; the map is not changed, nothing is refreshed.
        """
        self.start_ready()
        answer = self.link.execute("EVALSHA", "sha", 1, K1)
        self.node(N1).refuse(f"ASK {key_slot(K1)} 10.0.0.2:7002")
        self.assertEqual(
            self.node(N2).commands, [("ASKING",), ("EVALSHA", "sha", 1, K1)]
        )
        self.assertEqual(self.link.owner(K1), N1)
        self.assertEqual(self.maps, 1)
        self.assertEqual(self.node(N1).commands, [("EVALSHA", "sha", 1, K1)])
        self.node(N2).answer(b"OK", 0)
        self.node(N2).answer(b"done", 1)
        self.assertEqual(self.successResultOf(answer), b"done")
        self.assertEqual(self.link.redirections, 1)
        self.assertEqual(self.link.refreshes, 1)

    def test_ask_then_moved(self) -> None:
        """An ASK and then a MOVED from the target are both followed."""
        self.start_ready()
        answer = self.link.execute("GET", K1)
        self.node(N1).refuse(f"ASK {key_slot(K1)} 10.0.0.2:7002")
        self.node(N2).refuse(f"MOVED {key_slot(K1)} 10.0.0.3:7003")
        self.assertEqual(self.node(N3).commands[-1], ("GET", K1))
        self.node(N3).answer(b"v")
        self.assertEqual(self.successResultOf(answer), b"v")
        self.assertEqual(self.link.redirections, 2)

    def test_tryagain(self) -> None:
        """TRYAGAIN: the command is sent again 50 ms later, to its owner."""
        self.start_ready()
        answer = self.link.execute("EVALSHA", "sha", 2, "{a}1", "{a}2")
        owner = self.node(self.link.owner("a") or N1)
        owner.refuse("TRYAGAIN Multiple keys request during rehashing of slot")
        self.assertEqual(len(owner.commands), 1)
        self.clock.advance(0.049)
        self.assertEqual(len(owner.commands), 1)
        self.clock.advance(0.001)
        self.assertEqual(owner.commands[-1], ("EVALSHA", "sha", 2, "{a}1", "{a}2"))
        owner.answer(1)
        self.assertEqual(self.successResultOf(answer), 1)
        self.assertEqual(self.link.redirections, 0)

    def test_clusterdown(self) -> None:
        """CLUSTERDOWN: BrokerUnavailable (not a refusal), and the map is read."""
        self.start_ready()
        answer = self.link.execute("GET", K1)
        self.node(N1).refuse("CLUSTERDOWN Hash slot not served")
        failure = self.failureResultOf(answer, BrokerUnavailable)
        self.assertNotIsInstance(failure.value, RedisCommandError)
        self.assertIn("CLUSTERDOWN", str(failure.value))
        self.assertEqual(self.node(N1).commands[-1], ("CLUSTER", "SLOTS"))

    def test_too_many(self) -> None:
        """After five redirections, the sixth fails the command, named."""
        self.start_ready()
        answer = self.link.execute("GET", K1)
        slot = key_slot(K1)
        targets = [N2, N3, N1, N2, N3]
        self.node(N1).refuse(f"ASK {slot} 10.0.0.2:7002")
        for number, target in enumerate(targets):
            following = targets[number + 1] if number + 1 < len(targets) else N1
            self.node(target).refuse(f"ASK {slot} {following[0]}:{following[1]}")
        failure = self.failureResultOf(answer, RedisCommandError)
        self.assertIn(f"more than {MAX_REDIRECTIONS}", str(failure.value))
        self.assertIn(f"ASK {slot} 10.0.0.1:7001", str(failure.value))
        self.assertEqual(self.link.redirections, MAX_REDIRECTIONS)

    def test_stop_fails_waiting(self) -> None:
        """stop fails commands waiting for a node or for TRYAGAIN; no timers."""
        self.start_ready()
        waiting = self.link.execute("GET", K1)
        self.node(N1).refuse(f"MOVED {key_slot(K1)} 10.0.0.9:7009")
        sleeping = self.link.execute("GET", K3)
        self.node(N3).refuse("TRYAGAIN")
        self.successResultOf(self.link.stop())
        self.failureResultOf(waiting, BrokerUnavailable)
        self.failureResultOf(sleeping, BrokerUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AskSlotsTests(SynchronousTestCase):
    """ask_slots: CLUSTER SLOTS over a connection of its own."""

    def test_login_and_ask(self) -> None:
        """It logs in, asks CLUSTER SLOTS, and closes after the answer."""
        reactor = ResolvingReactor()
        address = parse_redis_url(URL).node("n1", 7001)
        answer = ask_slots(reactor, 1.0)(address)
        ((_, port, factory, timeout, _),) = reactor.tcpClients
        self.assertEqual((port, timeout), (7001, 1.0))
        protocol: Any = factory.buildProtocol(None)
        transport = ClosingTransport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.assertEqual(
            commands_in(transport.value()), [[b"AUTH", b"user", b"secret"]]
        )
        protocol.dataReceived(b"+OK\r\n")
        self.assertEqual(commands_in(transport.value())[1:], [[b"CLUSTER", b"SLOTS"]])
        protocol.dataReceived(
            b"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$2\r\nn1\r\n:7001\r\n"
        )
        self.assertEqual(self.successResultOf(answer), [[0, 16383, [b"n1", 7001]]])
        self.assertEqual(transport.closed, "aborted")


# Against a private Redis Cluster (pytest only)


@pytest.fixture(scope="module")
def cluster() -> Iterator[tools.ClusterTopology]:
    """A private cluster of three primaries, for this module's slow tests."""
    tools.need(tools.cluster_unavailable_reason())
    with tools.ClusterTopology() as topology:
        yield topology


@pytest_twisted.async_yield_fixture
async def link(cluster: tools.ClusterTopology) -> AsyncIterator[ClusterLink]:
    """A ClusterLink on the private cluster, ready; stopped after the test."""
    reactor = _helpers.global_reactor()
    before = set(reactor.getDelayedCalls())
    made = ClusterLink(reactor, parse_redis_url(cluster.url()), "twisted_sse:test")
    made.start()
    await _helpers.until(lambda: made.ready, "the cluster link ready")
    yield made
    await made.stop()
    await _helpers.sleep(0)
    left = [call for call in reactor.getDelayedCalls() if call not in before]
    assert left == [], "the stopped link left timers"


def _keys_over(cluster: tools.ClusterTopology, prefix: str) -> dict[int, str]:
    """A key on each primary, by port."""
    found: dict[int, str] = {}
    primaries = cluster.primaries()
    number = 0
    while len(found) < len(primaries):
        key = f"{prefix}{number}"
        found.setdefault(cluster.owner(key_slot(key)), key)
        number += 1
    return found


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_routes_over_primaries(
    cluster: tools.ClusterTopology, link: ClusterLink
) -> None:
    """EVAL, XADD and XRANGE reach, unredirected, the primary of each key."""
    prefix = tools.unique_prefix()
    keys = _keys_over(cluster, prefix)
    assert len(keys) == 3
    for port, key in keys.items():
        assert link.owner(key) == ("127.0.0.1", port)
        entry = await link.execute("XADD", key, "*", "data", f"on {port}")
        entries = await link.execute("XRANGE", key, "-", "+")
        assert entries == [[entry, [b"data", f"on {port}".encode()]]]
        assert (
            await link.execute("EVAL", "return redis.call('XLEN', KEYS[1])", 1, key)
            == 1
        )
        assert await link.execute("XLEN", key) == 1
        assert tools.command(port, "XLEN", key) == 1
        await link.execute("DEL", key)
    assert await link.execute("PING") == b"PONG"
    assert link.redirections == 0
    state = link.state()
    assert state["slots_covered"] == SLOTS
    assert sorted(node["address"] for node in state["nodes"]) == sorted(
        f"127.0.0.1:{port}" for port in cluster.primaries()
    )
    assert all(node["up"] for node in state["nodes"])


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_slot_migrated_live(
    cluster: tools.ClusterTopology, link: ClusterLink
) -> None:
    """
    A slot moved to another primary while its keys are written: every
    command succeeds, ASK while it moves, MOVED after; the map follows.
    """
    tag = "{" + tools.unique_prefix() + "}"
    slot = key_slot(tag)
    source = cluster.owner(slot)
    target = next(port for port in cluster.primaries() if port != source)
    keys = [f"{tag}:{number}" for number in range(30)]
    written: dict[str, int] = dict.fromkeys(keys, 0)

    async def write_all() -> None:
        """One XADD to each key and one script reading two, all at once."""
        sent = [link.execute("XADD", key, "*", "n", written[key]) for key in keys]
        sent.append(
            link.execute(
                "EVAL",
                "return redis.call('XLEN', KEYS[1]) + redis.call('XLEN', KEYS[2])",
                2,
                keys[0],
                keys[1],
            )
        )
        for answer in sent:
            await answer
        for key in keys:
            written[key] += 1

    await write_all()
    migration = cluster.migration(slot, target, batch=7)
    migration.begin()
    await write_all()
    assert migration.step() == 7
    before = link.redirections
    await write_all()  # the keys moved are ASKed for on the target
    assert link.redirections > before
    assert link.owner(tag) == ("127.0.0.1", source)
    while migration.step():
        await write_all()
    migration.finish()
    before = link.redirections
    await write_all()  # MOVED: the map follows
    assert link.redirections > before
    assert link.owner(tag) == ("127.0.0.1", target)
    await _helpers.until(lambda: link.refreshes >= 2, "the map read again")
    redirections = link.redirections
    await write_all()
    assert link.redirections == redirections
    for key in keys:
        assert tools.command(target, "XLEN", key) == written[key]
        await link.execute("DEL", key)


@pytest.mark.slow
def test_key_slot_matches_redis(cluster: tools.ClusterTopology) -> None:
    """key_slot gives what CLUSTER KEYSLOT gives, for random keys and tags."""
    chooser = random.Random(20251208)
    alphabet = "ab{}:#xé\x00"
    for _ in range(300):
        key = "".join(chooser.choice(alphabet) for _ in range(chooser.randint(0, 12)))
        assert key_slot(key) == cluster.key_slot(key), repr(key)
