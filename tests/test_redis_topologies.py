"""
The same behaviour on every Redis topology: a single server, Sentinel (a
primary, a replica, three sentinels) and Cluster (three primaries), each
private processes on free ports, started once for the module and torn
down.  On each: exact resume across brokers and the history bound,
channel expiry, idempotency (repeats at once on two brokers, and the
key's TTL), presence across brokers, and a process SIGKILLed leaving the
presence when its lease ends (``-m slow``).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList

from twisted_sse import Event, RedisBroker, parse_redis_url
from twisted_sse._presence import PresenceChange, PresenceInfo
from twisted_sse._redis._cluster import key_slot

from . import _helpers
from . import _redis_tools as tools
from ._helpers import sleep, until
from .test_redis import Collector
from .test_redis_presence_process import read_line

pytestmark = pytest.mark.slow

_prefixes = itertools.count()


class Topology:
    """A running topology: its URL and a way to run a command on a key."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._stop: Any = None
        #: The cluster, when the topology is one.
        self.cluster: tools.ClusterTopology | None = None
        if kind == "single":
            server = tools.RedisServer().start()
            self._stop = server.kill
            self.url = f"redis://127.0.0.1:{server.port}/0"
            self._port = lambda key: server.port
        elif kind == "sentinel":
            sentinel = tools.SentinelTopology().start()
            self._stop = sentinel.stop
            self.url = sentinel.url()
            self._port = lambda key: sentinel.primary.port
        else:
            cluster = tools.ClusterTopology().start()
            self.cluster = cluster
            self._stop = cluster.stop
            self.url = cluster.url()
            self._port = lambda key: cluster.owner(key_slot(key))

    def command(self, key: str, *args: Any) -> Any:
        """A command about ``key``, on the primary that holds it."""
        return tools.command(self._port(key), *args)

    def stop(self) -> None:
        self._stop()


@pytest.fixture(scope="module", params=["single", "sentinel", "cluster"])
def topology(request: Any) -> Iterator[Topology]:
    tools.need(tools.server_unavailable_reason())
    running = Topology(request.param)
    try:
        yield running
    finally:
        running.stop()


@pytest_twisted.async_yield_fixture
async def brokers(topology: Topology) -> AsyncIterator[Any]:
    """Makes started brokers on the topology, with this test's prefix."""
    prefix = f"t{next(_prefixes)}:"
    made: list[RedisBroker] = []

    def make(**options: Any) -> RedisBroker:
        options.setdefault("prefix", prefix)
        broker = RedisBroker(
            _helpers.global_reactor(), parse_redis_url(topology.url), **options
        )
        broker.startService()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.stop()


async def ready(*brokers: RedisBroker) -> None:
    await until(lambda: all(b.available for b in brokers), "the brokers", 20)


@pytest_twisted.ensureDeferred
async def test_resume_and_history_bound(topology: Topology, brokers: Any) -> None:
    """
    A resume on another broker gets exactly what followed its id; one
    from before what the history keeps is told ``trimmed``.
    """
    a, b = brokers(history=5), brokers(history=5)
    await ready(a, b)
    ids = [await a.publish("news", Event(data=str(n))) for n in range(300)]
    recent = Collector()
    subscription = await b.subscribe("news", recent, last_event_id=ids[-4])
    assert subscription.history_lost is None
    await recent.wait(3)
    assert recent.ids == ids[-3:]
    old = Collector()
    subscription = await b.subscribe("news", old, last_event_id=ids[0])
    assert subscription.history_lost == "trimmed"
    later = await a.publish("news", Event(data="later"))
    await old.wait(1)
    await recent.wait(4)
    assert old.ids == [later]
    assert recent.ids == [*ids[-3:], later]
    key = a.key("news")
    length = topology.command(key, "XLEN", key)
    assert isinstance(length, int) and length < 300


@pytest_twisted.ensureDeferred
async def test_channel_expiry(topology: Topology, brokers: Any) -> None:
    """A channel nobody follows or publishes on goes after its TTL."""
    a = brokers(channel_ttl=0.3)
    await ready(a)
    await a.publish("brief", Event(data="x"))
    keys = (a.key("brief"), a.epoch_key("brief"))
    assert topology.command(keys[0], "EXISTS", *keys) == 2
    await until(
        lambda: topology.command(keys[0], "EXISTS", *keys) == 0,
        "the channel to expire",
        5,
    )


@pytest_twisted.ensureDeferred
async def test_idempotency(topology: Topology, brokers: Any) -> None:
    """
    Repeats of a key at once on two brokers publish once; after the key's
    TTL the same key publishes anew.
    """
    a, b = brokers(idempotency_ttl=1.0), brokers(idempotency_ttl=1.0)
    await ready(a, b)
    got = Collector()
    await b.subscribe("orders", got)
    first_ids = []
    for round_ in range(10):
        key = f"order-{round_}"
        sent = [
            broker.publish("orders", Event(data=key), idempotency_key=key)
            for _ in range(4)
            for broker in (a, b)
        ]
        results = await DeferredList(sent, fireOnOneErrback=True, consumeErrors=True)
        answered = {event_id for _, event_id in results}
        assert len(answered) == 1
        first_ids.append(answered.pop())
    await got.wait(10)
    await sleep(0.2)
    assert got.ids == first_ids
    idem = a.idempotency_key("orders", "order-0")
    ttl = topology.command(idem, "PTTL", idem)
    assert isinstance(ttl, int) and 0 < ttl <= 1000
    await until(lambda: topology.command(idem, "EXISTS", idem) == 0, "the key TTL")
    again = await a.publish("orders", Event(data="order-0"), idempotency_key="order-0")
    assert again not in first_ids


@pytest_twisted.ensureDeferred
async def test_presence_across_brokers(brokers: Any) -> None:
    """Connections counted on one broker are told on another, joins and leaves."""
    options = {"presence_flush": 0.05, "presence_poll": 0.1}
    a, b = brokers(**options), brokers(**options)
    await ready(a, b)
    channels = [f"lobby{n}" for n in range(12)]
    told: list[PresenceInfo | PresenceChange] = []
    follow = b.follow_presence("lobby0", 10, told.append)
    await until(lambda: told, "the first presence")
    for channel in channels:
        a.enter(channel, "alice")
        a.enter(channel, None)

    async def counted() -> bool:
        infos = [await b.presence(channel, 10) for channel in channels]
        return all(info.count == 2 for info in infos)

    reactor = _helpers.global_reactor()
    deadline = reactor.seconds() + 10
    while not await counted():
        assert reactor.seconds() < deadline, "presence not seen"
        await sleep(0.05)
    info = await b.presence("lobby5", 10)
    assert [member.sub for member in info.members] == ["alice"]
    await until(lambda: PresenceChange("lobby0", "join", "alice") in told, "the join")
    a.leave("lobby0", "alice")
    await until(lambda: PresenceChange("lobby0", "leave", "alice") in told, "leave")
    follow.cancel()
    for channel in channels:
        if channel != "lobby0":
            a.leave(channel, "alice")
        a.leave(channel, None)


#: A broker in a child process with a lease of 1 s (renewed every 0.3 s)
#: that enters one connection of the identity on the channel and prints
#: "ready" once its presence reads it.
CHILD = """
import sys

from twisted.internet import reactor

from twisted_sse import RedisBroker, parse_redis_url

url, prefix, channel, sub = sys.argv[1:]
broker = RedisBroker(
    reactor,
    parse_redis_url(url),
    prefix=prefix,
    presence_lease=1.0,
    presence_renew=0.3,
    presence_flush=0.05,
)
broker.startService()
broker.enter(channel, sub)


def check():
    if not broker.available:
        reactor.callLater(0.05, check)
        return

    def answer(info):
        if info.count == 1:
            print("ready", flush=True)
        else:
            reactor.callLater(0.05, check)

    broker.presence(channel, 100).addCallbacks(
        answer, lambda failure: reactor.callLater(0.05, check)
    )


reactor.callWhenRunning(check)
reactor.run()
"""


@pytest_twisted.ensureDeferred
async def test_presence_lease(topology: Topology, brokers: Any) -> None:
    """A process SIGKILLed leaves the presence once its lease ends."""
    a = brokers(presence_poll=0.1)
    await ready(a)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, topology.url, a.prefix, "room", "bob"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        line = read_line(child, 20)
        assert line.startswith(b"ready"), line
        info = await a.presence("room", 10)
        assert info.count == 1
        told: list[PresenceInfo | PresenceChange] = []
        follow = a.follow_presence("room", 10, told.append)
        await until(lambda: told, "the first presence")
        child.kill()
        child.wait()

        async def gone() -> bool:
            now: PresenceInfo = await a.presence("room", 10)
            return now.count == 0

        reactor = _helpers.global_reactor()
        deadline = reactor.seconds() + 10
        while not await gone():
            assert reactor.seconds() < deadline, "the dead process stayed present"
            await sleep(0.1)
        await until(lambda: PresenceChange("room", "leave", "bob") in told, "leave")
        follow.cancel()
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
