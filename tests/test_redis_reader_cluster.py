"""
The reader of a Redis broker on a cluster
(:class:`~twisted_sse._redis._reader.Reader` with a shard watch), on fakes
and a ``Clock``: it subscribes to the streams it follows, reads those it
is told of (one ``XREAD`` per slot, none blocking), and goes on after a
node failed a read instead of ending its loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import BrokerUnavailable
from twisted_sse._redis._channels import Channel, Local
from twisted_sse._redis._cluster import key_slot
from twisted_sse._redis._entries import Snapshot
from twisted_sse._redis._reader import _NODE_PAUSE, Reader
from twisted_sse._redis._scripts import SNAPSHOT

from ._helpers import Collector


class _Link:
    """A link whose commands wait for the test to answer them."""

    def __init__(self) -> None:
        self.ready = False
        self.timeout = 5.0
        self.sent: list[tuple[tuple[Any, ...], Deferred[Any]]] = []
        self.on_ready: Callable[[], object] | None = None

    def execute(self, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        answer: Deferred[Any] = Deferred()
        self.sent.append((args, answer))
        return answer

    def start(self) -> None:
        pass

    def stop(self) -> Deferred[None]:
        answer: Deferred[None] = Deferred()
        answer.callback(None)
        return answer

    def take(self) -> list[tuple[tuple[Any, ...], Deferred[Any]]]:
        sent, self.sent = self.sent, []
        return sent


class _Shards:
    """What the reader asks of its shard watch."""

    def __init__(self, notify: Callable[[str], object]) -> None:
        self.notify = notify
        self.keys: list[str] = []
        self.removed: list[str] = []
        self.ready = True

    def start(self) -> None:
        pass

    def stop(self) -> list[Any]:
        return []

    def add(self, key: str) -> None:
        self.keys.append(key)

    def remove(self, key: str) -> None:
        self.removed.append(key)


def xread_reply(key: str, *entries: tuple[str, str]) -> list[Any]:
    return [[key.encode(), [[i.encode(), [b"data", d.encode()]] for i, d in entries]]]


class ClusterReaderTests(SynchronousTestCase):
    """The reader's loop with a shard watch."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.commands = _Link()
        self.link = _Link()
        self.shards: _Shards | None = None

        def make_link(
            name: str,
            on_ready: Callable[[], object] | None,
            on_lost: Callable[[], object] | None,
        ) -> Any:
            self.link.on_ready = on_ready
            return self.link

        def watch_shards(link: Any, notify: Callable[[str], object]) -> Any:
            self.assertIs(link, self.link)
            self.shards = _Shards(notify)
            return self.shards

        self.reader = Reader(
            self.clock,
            self.commands,  # type: ignore[arg-type]
            make_link,
            block_ms=2000,
            maxlen=1000,
            ttl_ms=0,
            check_interval=60,
            on_checked=lambda state: None,
            watch_shards=watch_shards,
        )
        self.reader.start()
        self.addCleanup(self.reader.stop_checks)
        self.link.ready = True
        assert self.link.on_ready is not None
        self.link.on_ready()

    def follow(self, name: str) -> tuple[Channel, Collector]:
        key = "sse:{" + name + "}"
        state = self.reader.add(Channel(name, key, key + "#epoch"))
        got = Collector()
        state.subscribers[1] = Local(got)
        self.reader.follow(state, Snapshot(True, (1, 0), epoch="e1"))
        return state, got

    def test_reads_what_it_is_told(self) -> None:
        """
        A followed stream is subscribed to and read once; after that only
        when the watch says so, from the reader's position.
        """
        self.assertEqual(self.link.take(), [])  # idle: nothing blocks
        state, got = self.follow("news")
        assert self.shards is not None
        self.assertEqual(self.shards.keys, ["sse:{news}"])
        ((args, answer),) = self.link.take()
        self.assertEqual(args, ("XREAD", "COUNT", 1000, "STREAMS", "sse:{news}", "1-0"))
        answer.callback(None)
        self.assertEqual(self.link.take(), [])
        self.shards.notify("sse:{news}")
        ((args, answer),) = self.link.take()
        self.assertEqual(args[-1], "1-0")
        answer.callback(xread_reply("sse:{news}", ("2-0", "a"), ("3-0", "b")))
        self.assertEqual(got.ids, ["e1:2-0", "e1:3-0"])
        self.shards.notify("sse:{news}")
        ((args, answer),) = self.link.take()
        self.assertEqual(args[-1], "3-0")
        answer.callback(None)
        self.assertEqual(state.position, (3, 0))

    def test_one_read_per_slot(self) -> None:
        """Streams of different slots are read in one XREAD each, at once."""
        names = ["a", "b", "c"]
        self.assertEqual(
            len({key_slot("sse:{" + name + "}") for name in names}), len(names)
        )
        collected = {}
        for name in names:
            _, collected[name] = self.follow(name)
        # The first woke the idle loop at once; the others wait for it.
        ((args, answer),) = self.link.take()
        self.assertEqual(args[4], "sse:{a}")
        answer.callback(None)
        reads = self.link.take()
        self.assertEqual(sorted(args[4] for args, _ in reads), ["sse:{b}", "sse:{c}"])
        self.assertTrue(all(len(args) == 6 for args, _ in reads))
        for args, answer in reads:
            answer.callback(xread_reply(str(args[4]), ("5-0", str(args[4]))))
        self.assertEqual(collected["a"].ids, [])
        self.assertEqual(collected["b"].ids, ["e1:5-0"])
        self.assertEqual(collected["c"].ids, ["e1:5-0"])

    def test_a_node_failed(self) -> None:
        """
        A read that fails (a node's connection lost while the link stays
        ready) does not end the loop: after a pause every stream is read
        again with a check.
        """
        self.follow("news")
        ((_, answer),) = self.link.take()
        answer.errback(BrokerUnavailable("lost the connection to Redis"))
        self.assertEqual(self.link.take(), [])
        self.clock.advance(_NODE_PAUSE)
        ((args, answer),) = self.link.take()
        self.assertEqual(args[:2], ("EVALSHA", SNAPSHOT.sha))
        self.assertEqual(args[3:5], ("sse:{news}", "sse:{news}#epoch"))

    def test_forgotten(self) -> None:
        """A channel no longer followed is unsubscribed from."""
        state, _ = self.follow("news")
        state.subscribers.clear()
        self.reader.forget_if_idle(state)
        assert self.shards is not None
        self.assertEqual(self.shards.removed, ["sse:{news}"])
