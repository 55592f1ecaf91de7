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
