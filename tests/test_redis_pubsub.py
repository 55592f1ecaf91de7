"""
The sharded subscriptions of a process on Redis Cluster
(:class:`~twisted_sse._redis._pubsub.ShardWatch`), on fakes: a slot map
that the test moves, node links whose connections are real
``RedisProtocol``\\ s on ``StringTransport``\\ s, and a ``Clock``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hiredis
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._redis._address import RedisAddress
from twisted_sse._redis._protocol import RedisProtocol
from twisted_sse._redis._pubsub import ShardWatch

A = ("10.0.0.1", 7000)
B = ("10.0.0.2", 7000)


def resp(*items: bytes | int) -> bytes:
    """A RESP2 array of bulk strings and integers."""
    out = b"*%d\r\n" % len(items)
    for item in items:
        if isinstance(item, int):
            out += b":%d\r\n" % item
        else:
            out += b"$%d\r\n%s\r\n" % (len(item), item)
    return out


class _Map:
    """A slot map: the owner of each key, as the test says."""

    def __init__(self) -> None:
        self.owners: dict[str, tuple[str, int]] = {}
        self.primaries = [A, B]
        self.listeners: list[Callable[[], object]] = []
        self.refreshed = 0

    def on_map(self, listener: Callable[[], object]) -> None:
        self.listeners.append(listener)

    def owner(self, key: str | bytes) -> tuple[str, int] | None:
        text = key.decode() if isinstance(key, bytes) else key
        return self.owners.get(text, A)

    def nodes(self) -> dict[tuple[str, int], Any]:
        return dict.fromkeys(self.primaries)

    def refresh(self) -> Deferred[None]:
        self.refreshed += 1
        return succeed(None)

    def changed(self) -> None:
        for listener in self.listeners:
            listener()


class _NodeLink:
    """A node link: connected when the test says, over a StringTransport."""

    def __init__(
        self,
        clock: Clock,
        address: RedisAddress,
        on_ready: Callable[[], object] | None,
        on_lost: Callable[[], object] | None,
    ) -> None:
        self.clock = clock
        self.address = address
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.protocol: RedisProtocol | None = None
        self.transport: StringTransport | None = None
        self.started = self.stopped = False

    @property
    def ready(self) -> bool:
        return self.protocol is not None

    def start(self) -> None:
        self.started = True

    def stop(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)

    def connect(self) -> None:
        protocol = RedisProtocol(self.clock)
        self.transport = StringTransport()
        protocol.makeConnection(self.transport)
        self.protocol = protocol
        assert self.on_ready is not None
        self.on_ready()

    def lose(self) -> None:
        self.protocol = None
        assert self.on_lost is not None
        self.on_lost()

    def sent(self) -> list[list[bytes]]:
        """The commands written since the last call."""
        assert self.transport is not None
        reader = hiredis.Reader()
        reader.feed(self.transport.value())
        self.transport.clear()
        commands = []
        while (command := reader.gets()) is not False:
            commands.append(command)
        return commands

    def receive(self, data: bytes) -> None:
        assert self.protocol is not None
        self.protocol.dataReceived(data)


class ShardWatchTests(SynchronousTestCase):
    """Subscribing where the keys are, and following them when they move."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.map = _Map()
        self.links: dict[tuple[str, int], _NodeLink] = {}
        self.notified: list[str] = []

        def make_node(
            address: RedisAddress,
            name: str,
            on_ready: Callable[[], object] | None,
            on_lost: Callable[[], object] | None,
        ) -> Any:
            self.assertEqual(name, "twisted_sse:pubsub")
            self.assertEqual(address.password, "secret")
            self.assertEqual(address.cluster, ())
            link = _NodeLink(self.clock, address, on_ready, on_lost)
            self.links[(address.host, address.port)] = link
            return link

        self.watch = ShardWatch(
            self.clock,
            self.map,  # type: ignore[arg-type]
            RedisAddress("10.0.0.1", 7000, password="secret", cluster=(A,)),
            make_node,
            self.notified.append,
        )
        self.watch.start()
        self.addCleanup(self.watch.stop)

    def test_a_link_per_primary(self) -> None:
        """Starting makes a started link to every primary, before any key."""
        self.assertEqual(set(self.links), {A, B})
        self.assertTrue(all(link.started for link in self.links.values()))
        self.assertFalse(self.watch.ready)
        for link in self.links.values():
            link.connect()
        self.assertTrue(self.watch.ready)

    def test_subscribes_on_the_owner(self) -> None:
        """A key is subscribed to on its node once connected; again after a loss."""
        self.map.owners["sse:{b}"] = B
        self.watch.add("sse:{a}")
        self.watch.add("sse:{b}")
        self.links[A].connect()
        self.links[B].connect()
        self.assertEqual(self.links[A].sent(), [[b"SSUBSCRIBE", b"sse:{a}"]])
        self.assertEqual(self.links[B].sent(), [[b"SSUBSCRIBE", b"sse:{b}"]])
        self.links[A].lose()
        self.links[A].connect()
        self.assertEqual(self.links[A].sent(), [[b"SSUBSCRIBE", b"sse:{a}"]])

    def test_notifies(self) -> None:
        """A confirmation and each message mark the key; others' keys do not."""
        self.links[A].connect()
        self.watch.add("sse:{a}")
        self.links[A].receive(resp(b"ssubscribe", b"sse:{a}", 1))
        self.links[A].receive(resp(b"smessage", b"sse:{a}", b"1-0"))
        self.links[A].receive(resp(b"smessage", b"sse:{other}", b"1-0"))
        self.assertEqual(self.notified, ["sse:{a}", "sse:{a}"])

    def test_remove(self) -> None:
        """Removing a key unsubscribes it; its messages are ignored."""
        self.links[A].connect()
        self.watch.add("sse:{a}")
        self.links[A].sent()
        self.watch.remove("sse:{a}")
        self.assertEqual(self.links[A].sent(), [[b"SUNSUBSCRIBE", b"sse:{a}"]])
        self.links[A].receive(resp(b"sunsubscribe", b"sse:{a}", 0))
        self.links[A].receive(resp(b"smessage", b"sse:{a}", b"1-0"))
        self.assertEqual(self.notified, [])
        self.assertEqual(self.map.refreshed, 0)

    def test_slot_moved(self) -> None:
        """
        An unasked sunsubscribe (the slot moved away) refreshes the map;
        the key is subscribed on its new owner once the map says so.
        """
        for link in self.links.values():
            link.connect()
        self.watch.add("sse:{a}")
        self.links[A].sent()
        self.map.owners["sse:{a}"] = B
        self.links[A].receive(resp(b"sunsubscribe", b"sse:{a}", 0))
        self.assertEqual(self.map.refreshed, 1)
        self.assertEqual(self.links[B].sent(), [[b"SSUBSCRIBE", b"sse:{a}"]])
        self.links[B].receive(resp(b"ssubscribe", b"sse:{a}", 1))
        self.assertEqual(self.notified, ["sse:{a}"])

    def test_ended_by_its_owner(self) -> None:
        """
        An unasked sunsubscribe from the node that still owns the key (the
        slot left and came back) subscribes there again.
        """
        self.links[A].connect()
        self.watch.add("sse:{a}")
        self.links[A].sent()
        self.links[A].receive(resp(b"sunsubscribe", b"sse:{a}", 0))
        self.assertEqual(self.map.refreshed, 1)
        self.assertEqual(self.links[A].sent(), [[b"SSUBSCRIBE", b"sse:{a}"]])

    def test_map_change_moves_keys(self) -> None:
        """A new map moves a key: unsubscribed on the old node, on the new one."""
        for link in self.links.values():
            link.connect()
        self.watch.add("sse:{a}")
        self.links[A].sent()
        self.map.owners["sse:{a}"] = B
        self.map.changed()
        self.assertEqual(self.links[A].sent(), [[b"SUNSUBSCRIBE", b"sse:{a}"]])
        self.assertEqual(self.links[B].sent(), [[b"SSUBSCRIBE", b"sse:{a}"]])

    def test_a_primary_gone(self) -> None:
        """A primary that leaves the map, holding no key, is closed."""
        for link in self.links.values():
            link.connect()
        self.map.primaries = [A]
        self.map.changed()
        self.assertTrue(self.links[B].stopped)
        self.assertFalse(self.links[A].stopped)
        self.assertTrue(self.watch.ready)

    def test_refused_then_placed_again(self) -> None:
        """
        A subscription refused (MOVED on a stale map) and not confirmed by
        the next ping is asked again on the owner the map names then.
        """
        for link in self.links.values():
            link.connect()
        self.watch.add("sse:{a}")
        self.links[A].sent()
        self.links[A].receive(b"-MOVED 15495 10.0.0.2:7000\r\n")
        self.assertEqual(self.map.refreshed, 1)
        self.map.owners["sse:{a}"] = B  # the refresh came back
        self.clock.advance(self.watch.ping_interval)  # noted late
        self.links[A].receive(resp(b"pong", b""))
        self.assertEqual(self.links[B].sent(), [[b"PING"]])
        self.links[B].receive(b"+PONG\r\n")
        self.clock.advance(self.watch.ping_interval)  # asked again
        self.assertEqual(self.links[B].sent(), [[b"SSUBSCRIBE", b"sse:{a}"], [b"PING"]])
        self.links[B].receive(resp(b"ssubscribe", b"sse:{a}", 1))
        self.assertEqual(self.notified, ["sse:{a}"])

    def test_ping(self) -> None:
        """A ping unanswered at the next drops the connection; PONG answers too."""
        for link in self.links.values():
            link.connect()
        self.clock.advance(self.watch.ping_interval)
        self.assertEqual(self.links[A].sent(), [[b"PING"]])
        self.links[A].receive(b"+PONG\r\n")
        self.clock.advance(self.watch.ping_interval)
        self.assertEqual(self.links[A].sent(), [[b"PING"]])
        transport = self.links[A].transport
        assert transport is not None
        self.assertFalse(transport.disconnecting)
        self.clock.advance(self.watch.ping_interval)
        self.assertTrue(transport.disconnecting)

    def test_stop(self) -> None:
        """Stopping closes every link and leaves no timer."""
        stopping = self.watch.stop()
        self.assertEqual(len(stopping), 2)
        self.assertTrue(all(link.stopped for link in self.links.values()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.watch.ready)


class ListenTests(SynchronousTestCase):
    """A connection handed to a message handler."""

    def test_listen(self) -> None:
        """Pending replies are answered first; then every message is pushed."""
        clock = Clock()
        protocol = RedisProtocol(clock)
        transport = StringTransport()
        protocol.makeConnection(transport)
        answered = protocol.execute("PING")
        pushed: list[Any] = []
        protocol.listen(pushed.append)
        protocol.send("SSUBSCRIBE", "k")
        self.assertEqual(
            transport.value(),
            b"*1\r\n$4\r\nPING\r\n*2\r\n$10\r\nSSUBSCRIBE\r\n$1\r\nk\r\n",
        )
        protocol.dataReceived(b"+PONG\r\n" + resp(b"ssubscribe", b"k", 1))
        self.assertEqual(self.successResultOf(answered), b"PONG")
        self.assertEqual(pushed, [[b"ssubscribe", b"k", 1]])

    def test_handler_failure_logged(self) -> None:
        """A handler that raises is logged; the next message still arrives."""
        protocol = RedisProtocol(Clock())
        protocol.makeConnection(StringTransport())
        got: list[Any] = []

        def handler(message: Any) -> None:
            got.append(message)
            if len(got) == 1:
                raise RuntimeError("boom")

        protocol.listen(handler)
        protocol.dataReceived(resp(b"smessage", b"k", b"1") * 2)
        self.assertEqual(len(got), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class _Server:
    """
    What the primaries do with the subscriptions: a node confirms a key it
    owns and refuses (``MOVED``) one it does not; the slot map the watch
    sees (``case.map``) is a view, brought up to date by ``refresh`` (which
    tells the listeners only when it changed, as ``ClusterLink`` does);
    a node tells a subscriber ``sunsubscribe`` when the key's slot leaves
    it (``tell``) or for no reason the watch can see (``kick``: a slot
    moved away and back).
    """

    def __init__(self, case: ShardWatchTests) -> None:
        self.case = case
        self.truth: dict[str, tuple[str, int]] = {}
        self.subscribed: dict[tuple[str, int], set[str]] = {A: set(), B: set()}
        case.map.refresh = self.refresh  # type: ignore[method-assign]

    def owner(self, key: str) -> tuple[str, int]:
        return self.truth.get(key, A)

    def refresh(self) -> Deferred[None]:
        view = self.case.map
        view.refreshed += 1
        if view.owners != self.truth:
            view.owners = dict(self.truth)
            view.changed()
        return succeed(None)

    def answer(self) -> None:
        """Answer every command sent, until none is left."""
        busy = True
        while busy:
            busy = False
            for where, link in self.case.links.items():
                if link.protocol is None:
                    continue
                for command in link.sent():
                    busy = True
                    verb, *rest = command
                    if verb == b"PING":
                        link.receive(b"+PONG\r\n")
                        continue
                    key = rest[0].decode()
                    if verb == b"SSUBSCRIBE":
                        if self.owner(key) == where:
                            self.subscribed[where].add(key)
                            link.receive(resp(b"ssubscribe", rest[0], 1))
                        else:
                            link.receive(b"-MOVED 1 10.0.0.9:7000\r\n")
                    elif verb == b"SUNSUBSCRIBE":
                        self.subscribed[where].discard(key)
                        link.receive(resp(b"sunsubscribe", rest[0], 0))

    def move(self, key: str, where: tuple[str, int]) -> None:
        """The slot of ``key`` moves to ``where`` (the view lags)."""
        self.truth[key] = where

    def tell(self, key: str) -> None:
        """Nodes that no longer own ``key`` end its subscriptions there."""
        for where in (A, B):
            if where != self.owner(key):
                self.kick(key, where)

    def kick(self, key: str, where: tuple[str, int]) -> None:
        """The node at ``where`` ends the subscription to ``key``, if any."""
        if key in self.subscribed[where]:
            self.subscribed[where].discard(key)
            link = self.case.links[where]
            if link.protocol is not None:
                link.receive(resp(b"sunsubscribe", key.encode(), 0))

    def lost(self, where: tuple[str, int]) -> None:
        self.subscribed[where] = set()


class ShardWatchPropertyTests(SynchronousTestCase):
    """Whatever happens, the watch ends up subscribed where the keys are."""

    @given(
        st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        "add",
                        "remove",
                        "move",
                        "tell",
                        "kick",
                        "map",
                        "lose",
                        "connect",
                        "ping",
                    ]
                ),
                st.sampled_from(["sse:{a}", "sse:{b}"]),
                st.sampled_from([A, B]),
            ),
            max_size=30,
        )
    )
    @settings(max_examples=500, deadline=None)
    def test_settles(self, steps: list[tuple[str, str, tuple[str, int]]]) -> None:
        """
        After any sequence of keys added and removed, slots moved (told or
        not), subscriptions ended by a node, map reads, connections lost
        and made, and pings, once every node is connected, the map read
        and a few pings passed: each key followed is subscribed on its
        owner and nowhere else, nothing else is subscribed, and each key's
        confirmation was notified.
        """
        case = ShardWatchTests("test_stop")
        case.setUp()
        try:
            server = _Server(case)
            followed: set[str] = set()
            for kind, key, where in steps:
                if kind == "add":
                    case.watch.add(key)
                    followed.add(key)
                elif kind == "remove":
                    case.watch.remove(key)
                    followed.discard(key)
                elif kind == "move":
                    server.move(key, where)
                elif kind == "tell":
                    server.tell(key)
                elif kind == "kick":
                    server.kick(key, where)
                elif kind == "map":
                    server.refresh()
                elif kind == "lose" and case.links[where].protocol is not None:
                    case.links[where].lose()
                    server.lost(where)
                elif kind == "connect" and case.links[where].protocol is None:
                    case.links[where].connect()
                elif kind == "ping":
                    case.clock.advance(case.watch.ping_interval)
                server.answer()
            for link in case.links.values():
                if link.protocol is None:
                    link.connect()
            server.answer()
            server.refresh()  # the periodic map read
            server.answer()
            for _ in range(3):
                case.clock.advance(case.watch.ping_interval)
                server.answer()
            self.assertTrue(case.watch.ready)
            self.assertEqual(case.watch.keys, followed)
            for where in (A, B):
                owned = {key for key in followed if server.owner(key) == where}
                self.assertEqual(server.subscribed[where], owned, where)
            for key in followed:
                self.assertIn(key, case.notified)
        finally:
            case.watch.stop()
