"""
The Redis broker against a real Redis (pytest-twisted, real reactor).

Tests that need Redis use the one on 127.0.0.1:6379 (database 13, a key
prefix of their own, deleted afterwards), or start their own
``redis-server`` to kill, freeze and restart.  Without Redis they are
skipped, with the reason; with ``TWISTED_SSE_REQUIRE_REDIS=1`` (as in CI) a
missing Redis fails them instead.

These run under pytest only (trial does not collect plain functions).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.server import Site
from zope.interface import implementer

from twisted_sse import Event, RedisAddress, RedisBroker, parse_redis_url
from twisted_sse._app import SSEApp
from twisted_sse._broker import BrokerUnavailable, Published
from twisted_sse.testing import parse_events

from . import _helpers
from . import _redis_tools as tools
from ._helpers import sleep, until
from ._http import ReactorClient, connect, http_request

# Fixtures


@frozen
class SharedRedis:
    """The shared Redis of the tests, with this test's own key prefix."""

    address: RedisAddress
    prefix: str

    def command(self, *args: str | bytes | int) -> tools.Reply:
        return tools.command(
            self.address.port, *args, host=self.address.host, db=self.address.db
        )

    def key(self, channel: str) -> str:
        return self.prefix + channel

    def epoch(self, channel: str) -> str:
        """The channel's epoch, straight from Redis."""
        reply = self.command("HGET", self.key(channel) + "#epoch", "e")
        assert isinstance(reply, bytes)
        return reply.decode()

    def ids(self, channel: str, after: str = "-") -> list[str]:
        """The event ids of the channel's stream, straight from Redis."""
        start = after if after == "-" else "(" + after.partition(":")[2]
        reply = self.command("XRANGE", self.key(channel), start, "+")
        assert isinstance(reply, list)
        epoch = self.epoch(channel)
        ids = []
        for entry in reply:
            assert isinstance(entry, list) and isinstance(entry[0], bytes)
            ids.append(f"{epoch}:{entry[0].decode()}")
        return ids


@pytest.fixture
def redis() -> Iterator[SharedRedis]:
    """The shared Redis (skip or fail without one); our keys go afterwards."""
    tools.need(tools.unavailable_reason())
    shared = SharedRedis(
        RedisAddress(tools.REDIS_HOST, tools.REDIS_PORT, tools.REDIS_DB),
        tools.unique_prefix(),
    )
    yield shared
    tools.delete_prefix(
        shared.address.port, shared.address.db, shared.prefix, shared.address.host
    )


Make = Callable[..., RedisBroker]


@pytest_twisted.async_yield_fixture
async def brokers(redis: SharedRedis) -> AsyncIterator[Make]:
    """Makes started brokers on the shared Redis (stopped afterwards)."""
    made: list[RedisBroker] = []

    def make(address: RedisAddress | None = None, **options: Any) -> RedisBroker:
        options.setdefault("prefix", redis.prefix)
        broker = RedisBroker(
            _helpers.global_reactor(), address or redis.address, **options
        )
        broker.startService()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.stop()


async def ready(*brokers: RedisBroker) -> None:
    await until(lambda: all(b.available for b in brokers), "the brokers to connect")


class Collector(_helpers.Collector):
    """A subscriber that keeps what it is given, and can be waited on."""

    async def wait(self, count: int, timeout: float = 10.0) -> None:
        await until(lambda: len(self.got) >= count, f"{count} events", timeout)


@implementer(ILogObserver)
class LogCapture:
    """Collects the log events of the test."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def texts(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(event) for event in self.events]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)


# Publishing and fan-out


@pytest_twisted.ensureDeferred
async def test_publish_id_and_frame(redis: SharedRedis, brokers: Make) -> None:
    """publish() fires with the epoch and stream entry id; the frame carries it."""
    broker = brokers()
    await ready(broker)
    got = Collector()
    await broker.subscribe("news", got)
    event_id = await broker.publish("news", Event(data="hello", event="greeting"))
    assert redis.ids("news") == [event_id]
    await got.wait(1)
    assert got.got == [
        Published(
            "news",
            event_id,
            f"id: {event_id}\nevent: greeting\ndata: hello\n\n".encode(),
            "greeting",
        )
    ]


@pytest_twisted.ensureDeferred
async def test_one_encoding_per_process(brokers: Make) -> None:
    """Every local subscriber gets the very same Published object."""
    broker = brokers()
    await ready(broker)
    collectors = [Collector() for _ in range(3)]
    for collector in collectors:
        await broker.subscribe("news", collector)
    await broker.publish("news", Event(data="once"))
    for collector in collectors:
        await collector.wait(1)
    first = collectors[0].got[0]
    assert all(collector.got[0] is first for collector in collectors)


@pytest_twisted.ensureDeferred
async def test_fan_out_across_processes(brokers: Make) -> None:
    """An event published on any broker reaches the subscribers of all."""
    a, b = brokers(), brokers()
    await ready(a, b)
    on_a, on_b = Collector(), Collector()
    await a.subscribe("news", on_a)
    await b.subscribe("news", on_b)
    published = [
        await a.publish("news", Event(data="from a")),
        await b.publish("news", Event(data="from b")),
        await a.publish("news", Event(data="from a again")),
    ]
    await on_a.wait(3)
    await on_b.wait(3)
    assert on_a.ids == on_b.ids == published
    assert on_a.data == ["from a", "from b", "from a again"]


@pytest_twisted.ensureDeferred
async def test_cancel(brokers: Make) -> None:
    """A cancelled subscription gets nothing more; the channel is forgotten."""
    broker = brokers()
    await ready(broker)
    got = Collector()
    subscription = await broker.subscribe("news", got)
    assert broker.subscriber_count("news") == 1
    subscription.cancel()
    subscription.cancel()
    assert broker.channel_names() == []
    other = Collector()
    await broker.subscribe("other", other)
    await broker.publish("news", Event(data="nobody"))
    await broker.publish("other", Event(data="someone"))
    await other.wait(1)
    assert got.got == []


@pytest_twisted.ensureDeferred
async def test_new_channel_wakes_reader(brokers: Make) -> None:
    """A new channel is read at once, not when the blocked XREAD times out."""
    broker = brokers(block_ms=60_000)
    await ready(broker)
    await broker.subscribe("first", Collector())
    await sleep(0.2)  # the reader is now blocked on "first" alone
    got = Collector()
    await broker.subscribe("second", got)
    await broker.publish("second", Event(data="now"))
    await got.wait(1, timeout=5)


@pytest_twisted.ensureDeferred
async def test_invalid_arguments(brokers: Make) -> None:
    """A bad channel name or key fails the Deferred with ValueError."""
    broker = brokers()
    await ready(broker)
    with pytest.raises(ValueError):
        await broker.publish("bad name", Event(data="x"))
    with pytest.raises(ValueError):
        await broker.publish("news", Event(data="x"), key="k" * 300)
    with pytest.raises(ValueError):
        await broker.subscribe("bad name", Collector())


@pytest_twisted.ensureDeferred
async def test_key_not_a_stream(
    redis: SharedRedis, brokers: Make, logs: LogCapture
) -> None:
    """A channel whose key another program made a string fails only itself."""
    broker = brokers()
    await ready(broker)
    redis.command("SET", redis.key("taken"), "not a stream")
    with pytest.raises(BrokerUnavailable):
        await broker.publish("taken", Event(data="x"))
    with pytest.raises(BrokerUnavailable):
        await broker.subscribe("taken", Collector())
    # Replaced while followed: the other channels go on.
    victim, bystander = Collector(), Collector()
    await broker.subscribe("victim", victim)
    await broker.subscribe("bystander", bystander)
    await broker.publish("victim", Event(data="before"))
    await victim.wait(1)
    redis.command("DEL", redis.key("victim"))
    redis.command("SET", redis.key("victim"), "oops")
    await broker.publish("bystander", Event(data="one"))
    await until(
        lambda: any("holds a string" in text for text in logs.texts()),
        "the reader to drop the channel",
    )
    await broker.publish("bystander", Event(data="two"))
    await bystander.wait(2)
    assert bystander.data == ["one", "two"]
    assert broker.available


# Resuming


@pytest_twisted.ensureDeferred
async def test_resume_on_another_process(brokers: Make) -> None:
    """A client resumes on any process: the events after its id, then live."""
    a, b = brokers(), brokers()
    await ready(a, b)
    ids = [await a.publish("news", Event(data=str(n))) for n in range(5)]
    got = Collector()
    subscription = await b.subscribe("news", got, ids[1])
    assert subscription.history_lost is None
    assert subscription.replayed == 3
    assert subscription.position == ids[-1]
    live = await a.publish("news", Event(data="5"))
    await got.wait(4)
    await sleep(0.1)
    assert got.ids == [*ids[2:], live]
    assert got.data == ["2", "3", "4", "5"]


@pytest_twisted.ensureDeferred
async def test_resume_at_the_end(brokers: Make) -> None:
    """Resuming from the last id replays nothing and loses nothing."""
    broker = brokers()
    await ready(broker)
    last = await broker.publish("news", Event(data="a"))
    got = Collector()
    subscription = await broker.subscribe("news", got, last)
    assert (subscription.history_lost, subscription.replayed) == (None, 0)
    assert subscription.position == last


@pytest_twisted.ensureDeferred
async def test_handoff_under_load(redis: SharedRedis, brokers: Make) -> None:
    """Subscribing while events pour in: no gap, no duplicate at the handoff."""
    a, b = brokers(history=100_000), brokers(history=100_000)
    await ready(a, b)
    first = await a.publish("news", Event(data="start"))

    async def publish() -> None:
        # Ten in flight at a time, so that entries land between the replay
        # and the reader's reads.
        for n in range(0, 3000, 10):
            await _burst(a, n)

    publishing = Deferred.fromCoroutine(publish())
    collectors = []
    for _ in range(5):
        await sleep(0.02)
        got = Collector()
        await b.subscribe("news", got, first)
        collectors.append(got)
    await publishing
    expected = redis.ids("news", after=first)
    for got in collectors:
        await got.wait(len(expected))
    await sleep(0.1)
    for got in collectors:
        assert got.ids == expected


def _xinfo_calls(redis: SharedRedis) -> int:
    """How many XINFO commands the shared Redis has run since it started."""
    info = redis.command("INFO", "commandstats")
    assert isinstance(info, bytes)
    found = re.search(rb"cmdstat_xinfo\|stream:calls=(\d+)", info)
    found = found or re.search(rb"cmdstat_xinfo:calls=(\d+)", info)
    return int(found.group(1)) if found else 0


@pytest_twisted.ensureDeferred
async def test_new_subscribers_share_a_snapshot(
    redis: SharedRedis, brokers: Make
) -> None:
    """
    New subscribers of a channel in one reactor turn share one read of its
    state, and each gets every event after the position it was given, with
    no gap, while events pour in from another process.
    """
    a, b = brokers(history=100_000), brokers(history=100_000)
    await ready(a, b)
    await a.publish("news", Event(data="start"))
    before = _xinfo_calls(redis)
    waves: list[list[tuple[Collector, Deferred[Any]]]] = []

    async def publish() -> None:
        for n in range(0, 1000, 10):
            await _burst(a, n)

    publishing = Deferred.fromCoroutine(publish())
    for _ in range(5):
        await sleep(0.01)
        wave = []
        for _ in range(20):
            got = Collector()
            wave.append((got, b.subscribe("news", got)))
        waves.append(wave)
    subscribed = [
        (got, await subscribing) for wave in waves for got, subscribing in wave
    ]
    await publishing
    # One read for each wave of twenty (another process may add its own).
    assert _xinfo_calls(redis) - before <= len(waves) + 1
    for got, subscription in subscribed:
        expected = redis.ids("news", after=subscription.position)
        await got.wait(len(expected))
    await sleep(0.1)
    for got, subscription in subscribed:
        assert got.ids == redis.ids("news", after=subscription.position)


async def _burst(broker: RedisBroker, n: int) -> None:
    from twisted.internet.defer import gatherResults

    await gatherResults(
        [broker.publish("news", Event(data=str(n + i))) for i in range(10)]
    )


@pytest_twisted.ensureDeferred
async def test_resume_new_subscriber_position(brokers: Make) -> None:
    """Resuming from a new subscriber's position misses nothing after it."""
    broker = brokers()
    await ready(broker)
    await broker.publish("news", Event(data="before"))
    subscription = await broker.subscribe("news", Collector())
    after = await broker.publish("news", Event(data="after"))
    got = Collector()
    again = await broker.subscribe("news", got, subscription.position)
    assert again.history_lost is None
    assert got.ids == [after]


@pytest_twisted.ensureDeferred
async def test_resume_trimmed(brokers: Make) -> None:
    """An id older than what Redis kept gets the loss signal, not a gap."""
    broker = brokers(history=10)
    await ready(broker)
    ids = [await broker.publish("news", Event(data=str(n))) for n in range(350)]
    got = Collector()
    subscription = await broker.subscribe("news", got, ids[0])
    assert subscription.history_lost == "trimmed"
    assert subscription.replayed == 0
    assert subscription.position == ids[-1]
    assert got.got == []
    recent = Collector()
    exact = await broker.subscribe("news", recent, ids[-4])
    assert exact.history_lost is None
    assert recent.ids == ids[-3:]


@pytest_twisted.ensureDeferred
async def test_resume_unknown_and_malformed(brokers: Make) -> None:
    """An id from the future is unknown, garbage is malformed."""
    broker = brokers()
    await ready(broker)
    last = await broker.publish("news", Event(data="a"))
    epoch = last.partition(":")[0]
    for unknown_id in (
        f"{epoch}:99999999999999-0",  # from the future
        "zz:1-0",  # another epoch
        last.partition(":")[2],  # a stream id without an epoch
    ):
        unknown = await broker.subscribe("news", Collector(), unknown_id)
        assert (unknown.history_lost, unknown.position) == ("unknown", last)
    for garbage in ("junk\x00", f"{epoch}:1-{2**64}", "ABC:1-0"):
        malformed = await broker.subscribe("news", Collector(), garbage)
        assert (malformed.history_lost, malformed.position) == ("malformed", last)
    never = await broker.subscribe("never", Collector(), "5-0")
    # An empty channel has an epoch, and its position carries it.
    assert never.history_lost == "unknown"
    assert re.fullmatch(r"[0-9a-z]+:0-0", never.position)
    empty = Collector()
    fresh = await broker.subscribe("never", empty, never.position)
    assert fresh.history_lost is None
    event_id = await broker.publish("never", Event(data="first"))
    await empty.wait(1)
    assert empty.ids == [event_id]


@pytest_twisted.ensureDeferred
async def test_replay_pages(brokers: Make) -> None:
    """A replay longer than one read comes in pages, whole and in order."""
    broker = brokers(history=5000)
    await ready(broker)
    from twisted.internet.defer import gatherResults

    ids: list[str] = []
    for start in range(0, 2500, 250):
        ids += await gatherResults(
            [
                broker.publish("news", Event(data=str(n)))
                for n in range(start, start + 250)
            ]
        )
    got = Collector()
    subscription = await broker.subscribe("news", got, ids[0])
    assert subscription.history_lost is None
    # The subscription is given once the first page is delivered.
    assert 0 < subscription.replayed < 2499
    await got.wait(2499)
    assert subscription.replayed == 2499
    assert got.ids == ids[1:]


# Other programs publishing


@pytest_twisted.ensureDeferred
async def test_foreign_publisher(
    redis: SharedRedis, brokers: Make, logs: LogCapture
) -> None:
    """A program without twisted_sse XADDs fields; every process sends them."""
    a, b = brokers(), brokers()
    await ready(a, b)
    on_a, on_b = Collector(), Collector()
    await a.subscribe("jobs", on_a)
    await b.subscribe("jobs", on_b)
    key = redis.key("jobs")
    job = '{"job": 1, "state": "done"}'
    good = redis.command(
        "XADD", key, "MAXLEN", "~", "1000", "*",
        "data", job, "event", "job", "key", "job-1",
    )  # fmt: skip
    bad = redis.command("XADD", key, "*", "data", "x", "event", "job\ndata: forged")
    plain = redis.command("XADD", key, "*", "data", "plain")
    assert isinstance(good, bytes) and isinstance(bad, bytes)
    assert isinstance(plain, bytes)
    epoch = redis.epoch("jobs")
    good_id, plain_id = f"{epoch}:{good.decode()}", f"{epoch}:{plain.decode()}"
    for got in (on_a, on_b):
        await got.wait(2)
        assert got.ids == [good_id, plain_id]
        frame = f"id: {good_id}\nevent: job\ndata: {job}\n\n"
        assert got.got[0].frame == frame.encode()
        assert got.got[0].key == "job-1"
        assert got.data == [job, "plain"]
    warnings = [text for text in logs.texts() if bad.decode() in text]
    assert warnings and "event must not contain a CR or LF" in warnings[0]
    # A replay skips it too.
    replayed = Collector()
    subscription = await a.subscribe("jobs", replayed, f"{epoch}:0-0")
    assert subscription.history_lost is None
    assert replayed.ids == [good_id, plain_id]


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="no redis-cli")
@pytest_twisted.ensureDeferred
async def test_redis_cli_publisher(redis: SharedRedis, brokers: Make) -> None:
    """The documented redis-cli command publishes an event."""
    broker = brokers()
    await ready(broker)
    got = Collector()
    await broker.subscribe("alerts", got)
    address = redis.address
    completed = subprocess.run(
        [
            "redis-cli", "-h", address.host, "-p", str(address.port),
            "-n", str(address.db),
            "XADD", redis.key("alerts"), "MAXLEN", "~", "1000", "*",
            "event", "alert", "data", "disk almost full",
        ],
        capture_output=True,
        check=True,
        timeout=10,
    )  # fmt: skip
    event_id = f"{redis.epoch('alerts')}:{completed.stdout.decode().strip()}"
    await got.wait(1)
    assert got.got[0].frame == (
        f"id: {event_id}\nevent: alert\ndata: disk almost full\n\n".encode()
    )


# Faults


class _Side(Protocol):
    """One side of a forwarded connection."""

    def __init__(self) -> None:
        self.peer: _Side | None = None
        self.pending = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.peer is not None and self.peer.pending:
            self.transport.write(self.peer.pending)
            self.peer.pending = b""

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class _Dial(ClientFactory):
    noisy = False

    def __init__(self, near: _Side, far: _Side) -> None:
        self.near = near
        self.far = far

    def buildProtocol(self, addr: object) -> _Side:
        return self.far

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        if self.near.transport is not None:
            self.near.transport.loseConnection()


class Partition(Factory):
    """
    A TCP forwarder to Redis that can cut the network: every connection
    through it dies and new ones are refused, while Redis stays up.
    """

    noisy = False

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.listening: Any = None
        self.sides: list[_Side] = []

    def buildProtocol(self, addr: object) -> _Side:
        near, far = _Side(), _Side()
        near.peer, far.peer = far, near
        self.sides += [near, far]
        _helpers.global_reactor().connectTCP("127.0.0.1", self.target, _Dial(near, far))
        return near

    def open(self) -> None:
        """Forward (again, on the same port)."""
        self.listening = _helpers.global_reactor().listenTCP(
            self.port, self, interface="127.0.0.1"
        )
        self.port = self.listening.getHost().port

    async def cut(self) -> None:
        """Refuse new connections and kill the open ones."""
        await self.listening.stopListening()
        for side in self.sides:
            transport: Any = side.transport
            if transport is not None:
                transport.abortConnection()
        self.sides = []


@pytest_twisted.ensureDeferred
async def test_partition_loses_nothing(redis: SharedRedis, brokers: Make) -> None:
    """Cut off from Redis, a process delivers all it missed when back."""
    partition = Partition(redis.address.port)
    partition.open()
    cut_off = brokers(
        address=RedisAddress("127.0.0.1", partition.port, redis.address.db)
    )
    other = brokers()
    await ready(cut_off, other)
    got = Collector()
    await cut_off.subscribe("news", got)
    before = await other.publish("news", Event(data="before"))
    await got.wait(1)
    await partition.cut()
    await until(lambda: not cut_off.available, "the broker to notice")
    with pytest.raises(BrokerUnavailable):
        await cut_off.publish("news", Event(data="lost?"))
    with pytest.raises(BrokerUnavailable):
        await cut_off.subscribe("news", Collector())
    missed = [await other.publish("news", Event(data=str(n))) for n in range(5)]
    partition.open()
    await ready(cut_off)
    after = await cut_off.publish("news", Event(data="after"))
    await got.wait(7)
    await sleep(0.1)
    assert got.ids == [before, *missed, after]
    await partition.cut()


@pytest_twisted.ensureDeferred
async def test_partition_trimmed_signal(redis: SharedRedis, brokers: Make) -> None:
    """What Redis trimmed while a process was cut off is announced as lost."""
    partition = Partition(redis.address.port)
    partition.open()
    cut_off = brokers(
        address=RedisAddress("127.0.0.1", partition.port, redis.address.db),
        history=10,
    )
    other = brokers(history=10)
    await ready(cut_off, other)
    got = Collector()
    await cut_off.subscribe("news", got)
    await other.publish("news", Event(data="seen"))
    await got.wait(1)
    await partition.cut()
    await until(lambda: not cut_off.available, "the broker to notice")
    for n in range(0, 400, 50):
        from twisted.internet.defer import gatherResults

        await gatherResults(
            [other.publish("news", Event(data=str(n + i))) for i in range(50)]
        )
    kept = redis.ids("news")
    partition.open()
    await got.wait(2 + len(kept))
    await sleep(0.1)
    loss = got.got[1]
    assert loss.frame.startswith(b"id: ")
    events = parse_events(loss.frame)
    assert [(e.type, json.loads(e.data)) for e in events] == [
        ("history-lost", {"reason": "trimmed"})
    ]
    assert got.ids[2:] == kept
    # Resuming from the loss event's id is exact.
    resumed = await other.subscribe("news", Collector(), loss.id)
    assert resumed.history_lost is None
    await partition.cut()


async def _request(
    port: int, method: str, path: str, body: bytes = b"", *headers: str
) -> tuple[int, bytes]:
    """One HTTP/1.1 request with Connection: close; the status and body."""
    client = await connect(
        port,
        http_request(path, "Connection: close", *headers, method=method, body=body),
    )
    await client.ended()
    await client.lost
    assert client.code is not None
    return client.code, client.body


@pytest_twisted.ensureDeferred
async def test_redis_restart_over_http(server: tools.RedisServer) -> None:
    """
    Redis down: streams stay open with heartbeats, publish answers 503,
    /healthz says down; Redis back, empty: the same streams are told that
    history was lost (an id they resume from exactly), then get new events.
    """
    reactor = _helpers.global_reactor()
    broker = RedisBroker(reactor, RedisAddress("127.0.0.1", server.port), timeout=1)
    app = SSEApp(reactor, broker=broker, heartbeat=0.2, publish_token="T")
    port = reactor.listenTCP(0, Site(app.resource()), interface="127.0.0.1")
    web = port.getHost().port
    auth = ("Authorization: Bearer T", "Content-Type: text/plain")
    stream: ReactorClient | None = None
    try:
        broker.startService()
        await ready(broker)
        assert await _request(web, "GET", "/healthz") == (
            200,
            b'{"status":"ok","broker":"up"}\n',
        )
        stream = await connect(web, http_request("/channels/news"))
        # The stream is open.
        await stream.wait_for(lambda c: re.search(rb"id: [0-9a-z]+:0-0", c.body))
        code, body = await _request(web, "POST", "/channels/news", b"one", *auth)
        assert code == 200
        await stream.wait_for(lambda c: b"data: one" in c.body)

        server.kill()
        await until(lambda: not broker.available, "the broker to notice")
        assert await _request(web, "GET", "/healthz") == (
            503,
            b'{"status":"unavailable","broker":"down"}\n',
        )
        code, body = await _request(web, "POST", "/channels/news", b"two", *auth)
        assert code == 503
        assert "broker unavailable" in json.loads(body)["error"]
        # A new subscriber is told to come back later (200, retry, closed).
        code, body = await _request(web, "GET", "/channels/news")
        assert code == 200 and b"retry: " in body
        # The open stream gets heartbeats and stays open.
        heard = len(stream.body)
        await stream.wait_for(lambda c: c.body.count(b":\n\n") >= 2)
        assert not stream.closed and len(stream.body) > heard

        server.start()
        await until(lambda: broker.available, "the broker to reconnect", 15)
        assert (await _request(web, "GET", "/healthz"))[0] == 200
        code, body = await _request(web, "POST", "/channels/news", b"three", *auth)
        assert code == 200
        # An event after the restart.
        await stream.wait_for(lambda c: b"data: three" in c.body)
        assert b"data: two" not in stream.body
        assert not stream.closed
        events = stream.events
        assert [(e.type, e.data) for e in events] == [
            ("message", "one"),
            ("history-lost", '{"reason": "unknown"}'),
            ("message", "three"),
        ]
        # The loss names a position in the new epoch, just before "three".
        assert (
            events[1].last_event_id.split(":")[0]
            != events[0].last_event_id.split(":")[0]
        )
        resumed = Collector()
        subscription = await broker.subscribe("news", resumed, events[1].last_event_id)
        assert subscription.history_lost is None
        assert resumed.ids == [events[2].last_event_id]
        subscription.cancel()
    finally:
        if stream is not None:
            stream.hang_up()
        await port.stopListening()
        await broker.stop()


async def _stream(port: int, last_event_id: str) -> ReactorClient:
    """Open ``/channels/news`` with a Last-Event-ID; wait for the headers."""
    stream = await connect(
        port, http_request("/channels/news", f"Last-Event-ID: {last_event_id}")
    )
    await stream.wait_for(lambda c: c.head_done)
    return stream


@pytest_twisted.ensureDeferred
async def test_http_resume_over_redis(brokers: Make) -> None:
    """Over HTTP: a trimmed Last-Event-ID gets the loss signal, a kept one the rest."""
    reactor = _helpers.global_reactor()
    broker = brokers(history=10)
    await ready(broker)
    ids = [await broker.publish("news", Event(data=str(n))) for n in range(300)]
    port = reactor.listenTCP(
        0, Site(SSEApp(reactor, broker=broker).resource()), interface="127.0.0.1"
    )
    web = port.getHost().port
    streams: list[ReactorClient] = []
    try:
        trimmed = await _stream(web, ids[0])
        streams.append(trimmed)
        assert trimmed.header("SSE-History-Lost") == "trimmed"
        # The loss event.
        await trimmed.wait_for(lambda c: c.events)
        (loss,) = trimmed.events
        assert (loss.type, loss.last_event_id) == ("history-lost", ids[-1])

        kept = await _stream(web, ids[-3])
        streams.append(kept)
        assert kept.header("SSE-History-Lost") is None
        # The replay.
        await kept.wait_for(lambda c: len(c.events) == 2)
        assert [e.data for e in kept.events] == ["298", "299"]
    finally:
        for stream in streams:
            stream.hang_up()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_starts_before_redis(server: tools.RedisServer) -> None:
    """A broker started while Redis is down connects when it comes up."""
    reactor = _helpers.global_reactor()
    server.kill()
    broker = RedisBroker(reactor, RedisAddress("127.0.0.1", server.port))
    broker.startService()
    try:
        await sleep(0.3)
        assert not broker.available
        with pytest.raises(BrokerUnavailable):
            await broker.publish("news", Event(data="x"))
        with pytest.raises(BrokerUnavailable):
            await broker.subscribe("news", Collector())
        server.start()
        await until(lambda: broker.available, "the broker to connect", 15)
        got = Collector()
        await broker.subscribe("news", got)
        await broker.publish("news", Event(data="x"))
        await got.wait(1)
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_frozen_redis(server: tools.RedisServer) -> None:
    """A Redis that stops answering fails publishes after the timeout."""
    reactor = _helpers.global_reactor()
    broker = RedisBroker(
        reactor, RedisAddress("127.0.0.1", server.port), timeout=0.5, block_ms=200
    )
    broker.startService()
    try:
        await ready(broker)
        got = Collector()
        await broker.subscribe("news", got)
        server.freeze()
        with pytest.raises(BrokerUnavailable):
            await broker.publish("news", Event(data="x"))
        await until(lambda: not broker.available, "the broker to give up")
        server.thaw()
        await until(lambda: broker.available, "the broker to reconnect", 15)
        await broker.publish("news", Event(data="y"))
        await got.wait(1)
        # "x" may or may not have reached Redis: the publisher was told it
        # failed, and nothing is delivered twice.
        await sleep(0.1)
        assert got.data[-1] == "y"
        assert len(set(got.ids)) == len(got.ids)
    finally:
        await broker.stop()


@pytest_twisted.ensureDeferred
async def test_password_and_database(server: tools.RedisServer) -> None:
    """AUTH and SELECT come from the URL; a wrong password never connects."""
    tools.command(server.port, "CONFIG", "SET", "requirepass", "s3cret")
    reactor = _helpers.global_reactor()
    base = f"127.0.0.1:{server.port}/5"
    good = RedisBroker(reactor, parse_redis_url(f"redis://:s3cret@{base}"))
    bad = RedisBroker(reactor, parse_redis_url(f"redis://:wrong@{base}"))
    good.startService()
    bad.startService()
    try:
        await ready(good)
        await good.publish("news", Event(data="x"))
        for db, exists in ((5, 1), (0, 0)):
            reply = tools.command(
                server.port, "EXISTS", "sse:news", db=db, password="s3cret"
            )
            assert reply == exists
        await sleep(0.3)
        assert not bad.available
    finally:
        await good.stop()
        await bad.stop()


@pytest_twisted.ensureDeferred
async def test_tls(tmp_path: Path) -> None:
    """rediss:// speaks TLS and checks the server's certificate."""
    tools.need(tools.server_unavailable_reason())
    from ._certs import self_signed

    key, certificate = self_signed(tmp_path)
    with tools.RedisServer(tls=(str(key), str(certificate))) as server:
        reactor = _helpers.global_reactor()
        url = f"rediss://localhost:{server.tls_port}/0"
        trusted = RedisBroker(
            reactor, parse_redis_url(f"{url}?ssl_ca_certs={certificate}")
        )
        untrusted = RedisBroker(reactor, parse_redis_url(url))
        trusted.startService()
        untrusted.startService()
        try:
            await ready(trusted)
            got = Collector()
            await trusted.subscribe("news", got)
            event_id = await trusted.publish("news", Event(data="secret"))
            await got.wait(1)
            assert got.ids == [event_id]
            # A certificate nobody vouches for: never connected.
            await sleep(0.3)
            assert not untrusted.available
        finally:
            await trusted.stop()
            await untrusted.stop()


@pytest_twisted.ensureDeferred
async def test_stop_leaves_nothing(redis: SharedRedis) -> None:
    """stop() closes both connections and leaves no timer behind."""
    reactor = _helpers.global_reactor()
    before = set(reactor.getDelayedCalls())
    broker = RedisBroker(reactor, redis.address, prefix=redis.prefix)
    broker.startService()
    await ready(broker)
    await broker.subscribe("news", Collector())
    await broker.publish("news", Event(data="x"))
    ports = [
        link.local_address.port  # type: ignore[union-attr]
        for link in (broker.commands, broker.reader.link)
    ]
    await broker.stop()
    await sleep(0.01)
    assert not broker.available
    left = [call for call in reactor.getDelayedCalls() if call not in before]
    assert left == []
    clients = redis.command("CLIENT", "LIST")
    assert isinstance(clients, bytes)
    for port in ports:
        assert f"addr=127.0.0.1:{port} " not in clients.decode()


def test_module_imports_no_reactor() -> None:
    """Importing twisted_sse, Redis broker included, installs no reactor."""
    code = (
        "import sys, twisted_sse; assert 'twisted.internet.reactor' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
