"""
The Redis broker against real Redis servers that lose data: private
``redis-server`` processes that the tests kill and restart empty, flush,
or restart from an older snapshot (as a failover to a replica that missed
writes would), and the shared Redis for channel TTLs and paced replays.

Like test_redis.py, these skip without Redis (or fail with
``TWISTED_SSE_REQUIRE_REDIS=1``) and run under pytest only.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults

from twisted_sse import Event, RedisAddress, RedisBroker
from twisted_sse._broker import HISTORY_LOST_EVENT, Published
from twisted_sse.testing import parse_events

from . import _helpers
from . import _redis_tools as tools
from ._helpers import sleep, until


class Collector(_helpers.Collector):
    """A subscriber that keeps what it is given, and can be waited on."""

    async def wait(self, count: int, timeout: float = 10.0) -> None:
        await until(lambda: len(self.got) >= count, f"{count} events", timeout)

    def losses(self) -> list[Published]:
        return [p for p in self.got if p.key == HISTORY_LOST_EVENT]


class Pacer(Collector, _helpers.Pacer):
    """A paced subscriber (see ``_helpers.Pacer``) that can be waited on."""


Make = Callable[..., RedisBroker]


@pytest_twisted.async_yield_fixture
async def on_server(server: tools.RedisServer) -> AsyncIterator[Make]:
    """Makes started brokers on the private server (stopped afterwards)."""
    made: list[RedisBroker] = []

    def make(**options: Any) -> RedisBroker:
        broker = RedisBroker(
            _helpers.global_reactor(), RedisAddress("127.0.0.1", server.port), **options
        )
        broker.startService()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.stop()


@pytest.fixture
def shared() -> Iterator[tuple[RedisAddress, str]]:
    """The shared Redis and a key prefix of this test's (deleted after)."""
    tools.need(tools.unavailable_reason())
    address = RedisAddress(tools.REDIS_HOST, tools.REDIS_PORT, tools.REDIS_DB)
    prefix = tools.unique_prefix()
    yield address, prefix
    tools.delete_prefix(address.port, address.db, prefix, address.host)


@pytest_twisted.async_yield_fixture
async def on_shared(shared: tuple[RedisAddress, str]) -> AsyncIterator[Make]:
    """Makes started brokers on the shared Redis (stopped afterwards)."""
    address, prefix = shared
    made: list[RedisBroker] = []

    def make(**options: Any) -> RedisBroker:
        options.setdefault("prefix", prefix)
        broker = RedisBroker(_helpers.global_reactor(), address, **options)
        broker.startService()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.stop()


async def ready(*brokers: RedisBroker) -> None:
    await until(lambda: all(b.available for b in brokers), "the brokers to connect")


def _epoch(event_id: str) -> str:
    return event_id.partition(":")[0]


async def _restart(server: tools.RedisServer, *brokers: RedisBroker) -> None:
    """Kill the server, start it again; wait for the brokers to notice."""
    server.kill()
    await until(lambda: not any(b.available for b in brokers), "the brokers to notice")
    server.start()
    await ready(*brokers)


# Redis loses data


@pytest_twisted.ensureDeferred
async def test_restart_empty_resume(server: tools.RedisServer, on_server: Make) -> None:
    """
    Redis restarted empty: a client resuming with an id from before, or
    with an empty channel's position from before, is told history was lost
    (though the new ids are larger), and resumes exactly from then on.
    """
    broker = on_server()
    await ready(broker)
    empty = (await broker.subscribe("news", Collector())).position
    held = [await broker.publish("news", Event(data=str(n))) for n in range(3)]
    await _restart(server, broker)
    fresh = await broker.publish("news", Event(data="after"))
    assert _epoch(fresh) != _epoch(held[0])
    for last_event_id in (held[0], held[-1], empty):
        got = Collector()
        subscription = await broker.subscribe("news", got, last_event_id)
        assert (subscription.history_lost, subscription.position) == ("unknown", fresh)
        assert got.got == []
        subscription.cancel()
    got = Collector()
    subscription = await broker.subscribe("news", got, fresh)
    assert subscription.history_lost is None
    later = await broker.publish("news", Event(data="later"))
    await got.wait(1)
    assert got.ids == [later]


@pytest_twisted.ensureDeferred
async def test_restart_empty_live(server: tools.RedisServer, on_server: Make) -> None:
    """
    A live subscriber of a Redis that restarted empty gets a history-lost
    event (reason unknown) with an id that resumes exactly, then the new
    events; on another process too.
    """
    a, b = on_server(), on_server()
    await ready(a, b)
    on_a, on_b = Collector(), Collector()
    await a.subscribe("news", on_a)
    await b.subscribe("news", on_b)
    before = await a.publish("news", Event(data="before"))
    await on_a.wait(1)
    await on_b.wait(1)
    await _restart(server, a, b)
    await until(lambda: len(on_a.got) > 1 and len(on_b.got) > 1, "the loss events")
    after = await b.publish("news", Event(data="after"))
    for got in (on_a, on_b):
        await got.wait(3)
        assert got.ids[0] == before
        (loss,) = got.losses()
        assert got.got[1] is loss
        assert json.loads(parse_events(loss.frame)[0].data) == {"reason": "unknown"}
        assert _epoch(loss.id) == _epoch(after) != _epoch(before)
        assert got.ids[2:] == [after]
    resumed = Collector()
    subscription = await a.subscribe("news", resumed, on_a.got[1].id)
    assert subscription.history_lost is None
    assert resumed.ids == [after]


@pytest_twisted.ensureDeferred
async def test_flushall(server: tools.RedisServer, on_server: Make) -> None:
    """
    FLUSHALL, the connections untouched: the next publish tells live
    subscribers at once (its entry carries the new epoch); an id held
    from before is unknown.
    """
    broker = on_server()
    await ready(broker)
    live = Collector()
    await broker.subscribe("news", live)
    held = await broker.publish("news", Event(data="before"))
    await live.wait(1)
    tools.command(server.port, "FLUSHALL")
    after = await broker.publish("news", Event(data="after"))
    await live.wait(3)
    assert [p.key for p in live.got] == ["message", HISTORY_LOST_EVENT, "message"]
    assert live.ids[2] == after
    assert _epoch(live.ids[1]) == _epoch(after)
    subscription = await broker.subscribe("news", Collector(), held)
    assert (subscription.history_lost, subscription.position) == ("unknown", after)


@pytest_twisted.ensureDeferred
async def test_flushall_no_publish(server: tools.RedisServer, on_server: Make) -> None:
    """
    FLUSHALL and nothing published since: the periodic check of the
    followed channels finds the epoch gone and tells the live subscribers.
    """
    broker = on_server(channel_ttl=0.9)
    assert broker.check_interval == pytest.approx(0.3)
    await ready(broker)
    live = Collector()
    await broker.subscribe("news", live)
    await broker.publish("news", Event(data="before"))
    await live.wait(1)
    tools.command(server.port, "FLUSHALL")
    await live.wait(2)
    loss = live.got[1]
    assert loss.key == HISTORY_LOST_EVENT
    after = await broker.publish("news", Event(data="after"))
    await live.wait(3)
    assert live.ids[2] == after
    assert _epoch(loss.id) == _epoch(after)


@pytest_twisted.ensureDeferred
async def test_lost_tail(server: tools.RedisServer, on_server: Make) -> None:
    """
    Redis comes back with less than was read, under the same epoch (here
    from an older snapshot, as after a failover to a replica that missed
    writes): the epoch is rotated, live subscribers are told, ids given out
    before are refused, and what follows is delivered once.
    """
    broker = on_server()
    await ready(broker)
    live = Collector()
    await broker.subscribe("news", live)
    ids = [await broker.publish("news", Event(data=str(n))) for n in range(3)]
    tools.command(server.port, "SAVE")
    ids += [await broker.publish("news", Event(data=str(n))) for n in range(3, 5)]
    await live.wait(5)
    await _restart(server, broker)  # from the snapshot: three events
    await live.wait(6)
    loss = live.got[5]
    assert loss.key == HISTORY_LOST_EVENT
    assert _epoch(loss.id) != _epoch(ids[0])
    assert loss.id.partition(":")[2] == ids[2].partition(":")[2]
    for held in (ids[4], ids[1]):
        subscription = await broker.subscribe("news", Collector(), held)
        assert subscription.history_lost == "unknown"
    after = await broker.publish("news", Event(data="after"))
    await live.wait(7)
    assert live.ids[6:] == [after]
    resumed = Collector()
    subscription = await broker.subscribe("news", resumed, loss.id)
    assert subscription.history_lost is None
    assert resumed.ids == [after]


@pytest_twisted.ensureDeferred
async def test_scripts_flushed(server: tools.RedisServer, on_server: Make) -> None:
    """A Redis that lost its scripts (SCRIPT FLUSH) is sent them again."""
    broker = on_server()
    await ready(broker)
    got = Collector()
    await broker.subscribe("news", got)
    first = await broker.publish("news", Event(data="1"))
    tools.command(server.port, "SCRIPT", "FLUSH")
    second = await broker.publish("news", Event(data="2"))
    await got.wait(2)
    assert got.ids == [first, second]


# Channel TTL


def _pttl(address: RedisAddress, key: str) -> int:
    reply = tools.command(address.port, "PTTL", key, host=address.host, db=address.db)
    assert isinstance(reply, int)
    return reply


@pytest_twisted.ensureDeferred
async def test_channel_ttl(shared: tuple[RedisAddress, str], on_shared: Make) -> None:
    """
    A publish sets the TTL of the stream and its epoch; a process that
    follows the channel keeps them; with no subscriber and no publish for
    the TTL, Redis forgets the channel, and an id from before is unknown.
    """
    address, prefix = shared
    broker = on_shared(channel_ttl=1.5)
    await ready(broker)
    held = await broker.publish("news", Event(data="x"))
    stream, epoch = prefix + "news", prefix + "news#epoch"
    for key in (stream, epoch):
        assert 1000 < _pttl(address, key) <= 1500
    subscription = await broker.subscribe("news", Collector())
    await sleep(2.0)
    for key in (stream, epoch):
        assert _pttl(address, key) > 0
    subscription.cancel()
    await until(lambda: _pttl(address, stream) == -2, "the stream to expire", 5)
    assert _pttl(address, epoch) == -2
    resumed = await broker.subscribe("news", Collector(), held)
    assert resumed.history_lost == "unknown"


@pytest_twisted.ensureDeferred
async def test_no_channel_ttl(
    shared: tuple[RedisAddress, str], on_shared: Make
) -> None:
    """channel_ttl=0: a publish leaves the keys without a TTL, even one set before."""
    address, prefix = shared
    await ready(on_shared(channel_ttl=60))
    broker = on_shared(channel_ttl=0)
    await ready(broker)
    await broker.publish("news", Event(data="x"))
    for key in (prefix + "news", prefix + "news#epoch"):
        assert _pttl(address, key) == -1


# Paced replays


async def _fill(broker: RedisBroker, count: int, data: str) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 200):
        ids += await gatherResults(
            [
                broker.publish("news", Event(data=data))
                for _ in range(start, min(count, start + 200))
            ]
        )
    return ids


@pytest_twisted.ensureDeferred
async def test_paced_replay(on_shared: Make) -> None:
    """
    A replay over real Redis stops when deliver says no room, waits with
    live events left in Redis, and goes on, then live, with no gap and no
    duplicate.
    """
    broker = on_shared(history=100_000)
    await ready(broker)
    start = (await broker.subscribe("news", Collector())).position
    ids = await _fill(broker, 3000, "x")
    pacer = Pacer(700)
    subscription = await broker.subscribe("news", pacer, start)
    assert subscription.replayed == 700
    ids += await _fill(broker, 500, "y")
    await sleep(0.1)
    assert len(pacer.got) == 700
    while len(pacer.got) < len(ids):
        pacer.take(subscription, 1000)
        await until(lambda: pacer.left <= 0 or len(pacer.got) == len(ids), "a page")
    ids.append(await broker.publish("news", Event(data="live")))
    await pacer.wait(len(ids))
    await sleep(0.1)
    assert pacer.ids == ids


@pytest_twisted.ensureDeferred
async def test_trimmed_while_paused(on_shared: Make) -> None:
    """
    Over real Redis, history trimmed past a paused replay: a loss event
    (reason trimmed) that resumes exactly, then every event kept.
    """
    broker = on_shared(history=100)
    await ready(broker)
    start = (await broker.subscribe("news", Collector())).position
    await _fill(broker, 100, "x")
    pacer = Pacer(10)
    subscription = await broker.subscribe("news", pacer, start)
    await _fill(broker, 1000, "y")
    pacer.take(subscription, 10_000)
    await until(lambda: pacer.losses(), "the loss event")
    (loss,) = pacer.losses()
    assert pacer.got[10] is loss
    assert json.loads(parse_events(loss.frame)[0].data) == {"reason": "trimmed"}
    await sleep(0.2)
    resumed = Collector()
    again = await broker.subscribe("news", resumed, loss.id)
    assert again.history_lost is None
    assert pacer.ids[11:] == resumed.ids
    assert len(resumed.ids) >= 100


@pytest_twisted.ensureDeferred
async def test_malformed_entries_in_pages(
    shared: tuple[RedisAddress, str], on_shared: Make
) -> None:
    """
    Entries another program wrote that cannot be sent are skipped in a
    paced replay's pages and in live reads, the stream going on.
    """
    address, prefix = shared
    broker = on_shared(history=100_000)
    await ready(broker)

    def foreign(event: str) -> str:
        reply = tools.command(
            address.port,
            "XADD",
            prefix + "news",
            "*",
            *("data", "x", "event", event),
            host=address.host,
            db=address.db,
        )
        assert isinstance(reply, bytes)
        return reply.decode()

    start = (await broker.subscribe("news", Collector())).position
    good: list[str] = []
    for n in range(30):
        entry = foreign("bad\nline" if n % 2 else "ok")
        if not n % 2:
            good.append(f"{_epoch(start)}:{entry}")
        good += await _fill(broker, 50, str(n))
    pacer = Pacer(100)
    subscription = await broker.subscribe("news", pacer, start)
    while len(pacer.got) < len(good):
        pacer.take(subscription)
        await until(lambda: pacer.left <= 0 or len(pacer.got) >= len(good), "a page")
    assert pacer.ids == good
    live = Collector()
    await broker.subscribe("news", live)
    foreign("bad\nline")
    foreign("ok")
    last = await broker.publish("news", Event(data="last"))
    await live.wait(2)
    await sleep(0.1)
    assert [parse_events(p.frame)[0].type for p in live.got] == ["ok", "message"]
    assert live.ids[-1] == last


class _Holder:
    """A subscriber that keeps what it takes, up to ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept: list[Published] = []
        self.size = 0

    def __call__(self, published: Published) -> bool:
        self.kept.append(published)
        self.size += len(published.frame)
        return self.size < self.limit


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_replay_memory_bounded(on_shared: Make) -> None:
    """
    Ten clients resume from the start of a channel holding 20 MB and then
    never read: the process holds about a page each plus what they took,
    not ten copies of the history.
    """
    from twisted_sse._redis import _broker

    broker = on_shared(history=100_000)
    await ready(broker)
    start = (await broker.subscribe("news", Collector())).position
    event = "x" * 10_000
    await _fill(broker, 2000, event)  # 20 MB of data
    history = 2000 * 10_000
    holders = [_Holder(256 * 1024) for _ in range(10)]
    tracemalloc.start()
    try:
        subscriptions = await gatherResults(
            [broker.subscribe("news", holder, start) for holder in holders]
        )
        await sleep(0.3)  # nothing more is read for them
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for holder, subscription in zip(holders, subscriptions, strict=True):
        assert 0 < len(holder.kept) == subscription.replayed < 2000
        subscription.cancel()
    taken = sum(holder.size for holder in holders)
    # A page each being read, and what each took: twice that, at most, and
    # less than one copy of the history (measured: 5.5 MB, for 20 MB).
    bound = 2 * (10 * _broker.PAGE_BYTES + taken)
    assert peak < bound < history
