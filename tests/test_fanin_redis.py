"""
Exact resume of a subscription to several channels (L{Fanin}) on the Redis
broker, against a real Redis (pytest-twisted, real reactor): the runs of
test_fanin_props.py (publishes on several channels, a client that writes
when it likes, drops and comes back with its last cursor naming its
channels in another order and sometimes one more), with bursts that make
Redis trim (C{MAXLEN ~} trims whole stream nodes, of 100 entries by
default) and waits that let what is on its way arrive: with channels
named, and with a pattern (C{news.*}) whose channels are made during the
run.

They use the shared Redis on 127.0.0.1:6379 (database 13, a key prefix of
each run's own, deleted afterwards); without one they are skipped, and with
``TWISTED_SSE_REQUIRE_REDIS=1`` (as in CI) a missing Redis fails them.
These run under pytest only (trial does not collect plain functions).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import pytest
import pytest_twisted
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import gatherResults

from twisted_sse import Event, RedisAddress, RedisBroker

from . import _redis_tools as tools
from ._helpers import global_reactor, sleep, until
from .test_fanin_props import (
    Log,
    Publish,
    Reconnect,
    Run,
    Settle,
    Subscriber,
    Write,
    play,
    publishes,
    runs,
)

#: Channels a client starts with some of, and those it may add.
FIRST = ("a", "b", "c")
MORE = ("d",)
CHANNELS = ("a", "b", "c", "d")
#: The same with a pattern, and channels under it made during the run.
PATTERN_FIRST = ("a", "news.*")
PATTERN_MORE = ("b", "c")
UNDER = ("news.eu", "news.us", "news.eu.fr")
PATTERN_CHANNELS = ("a", "b", "c", *UNDER, "news", "newsroom")
#: Events a channel keeps (``MAXLEN ~``), and a burst that makes Redis trim
#: a channel's oldest stream node however few events it had before.
HISTORY = 10
BURST = 120

#: Few examples (each publishes hundreds of events), the same every run.
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def address() -> RedisAddress:
    """The shared Redis (skip or fail without one)."""
    tools.need(tools.unavailable_reason())
    return RedisAddress(tools.REDIS_HOST, tools.REDIS_PORT, tools.REDIS_DB)


@pytest_twisted.async_yield_fixture
async def started(address: RedisAddress) -> AsyncIterator[Callable[[], RedisBroker]]:
    """Makes started brokers, each on a key prefix of its own (deleted after)."""
    made: list[tuple[RedisBroker, str]] = []

    def make() -> RedisBroker:
        prefix = tools.unique_prefix()
        broker = RedisBroker(global_reactor(), address, prefix=prefix, history=HISTORY)
        broker.startService()
        made.append((broker, prefix))
        return broker

    yield make
    for broker, prefix in made:
        await broker.stop()
        tools.delete_prefix(address.port, address.db, prefix, address.host)


async def play_redis(
    broker: RedisBroker, run: Run, channels: Sequence[str] = CHANNELS
) -> Subscriber:
    """Play ``run`` on ``broker``; the client, once it has checked all."""
    await until(lambda: broker.available, "the broker to connect")
    subscriber = Subscriber(broker, Log(), channels)

    async def publish(channel: str, data: list[str]) -> list[str]:
        # Sent at once, in order, on the broker's one command connection.
        ids: list[str] = await gatherResults(
            [broker.publish(channel, Event(data=each)) for each in data]
        )
        return ids

    async def settle() -> None:
        await sleep(0.01)

    async def drained(done: Callable[[], bool], what: str) -> None:
        await until(done, what, timeout=20)

    try:
        await play(run, subscriber, publish, settle, drained)
    finally:
        subscriber.disconnect()
    return subscriber


@SETTINGS
@given(
    run=runs(
        FIRST,
        MORE,
        publishes(CHANNELS, st.integers(1, 3) | st.just(BURST)),
        settle=True,
    )
)
@example(
    # Trimmed while away, while the replay waits for room, and a channel
    # added on reconnect.
    run=Run(
        ("a", "b"),
        2,
        (
            Publish("a", 3),
            Publish("b", 1),
            Settle(),
            Write(1),
            Reconnect(1, None, False, 2),
            Publish("a", BURST),
            Reconnect(0, "d", True, 3),
            Publish("d", 1),
            Publish("b", BURST),
            Settle(),
            Write(2),
        ),
    )
)
@pytest_twisted.ensureDeferred
async def test_exact_resume(started: Callable[[], RedisBroker], run: Run) -> None:
    """
    Over any interleaving of publishes, writes, waits, reconnections
    (channels in another order, sometimes one more) and trims, each
    channel's events are sent once each, in order, with gaps only where a
    ``history-lost`` event announced them (exact from the position it
    announced), channels added start live, and every event comes in the end.
    """
    await play_redis(started(), run)


@SETTINGS
@given(
    run=runs(
        PATTERN_FIRST,
        PATTERN_MORE,
        publishes(PATTERN_CHANNELS, st.integers(1, 3) | st.just(BURST)),
        settle=True,
    )
)
@example(
    # A channel found while events of another wait to be written, trimmed
    # before its subscription is answered: its loss is announced when
    # written, and no cursor written before skips its events.
    run=Run(
        ("a", "news.*"),
        1,
        (
            Publish("a", BURST),
            Write(1),
            Publish("news.eu", BURST),
            Settle(),
            Write(1),
            Reconnect(0, None, False, 1),
        ),
    )
)
@pytest_twisted.ensureDeferred
async def test_exact_resume_pattern(
    started: Callable[[], RedisBroker], run: Run
) -> None:
    """
    The same with ``news.*``, its channels made during the run: found
    live, resumed from the pattern's marker, each event once and in order.
    """
    await play_redis(started(), run, PATTERN_CHANNELS)


@pytest_twisted.ensureDeferred
async def test_paths(started: Callable[[], RedisBroker]) -> None:
    """
    The runs reach what they check on Redis: a loss announced on resume
    (trimmed while the client was away), an exact resume of the others in
    another order, a channel added that starts live.
    """
    subscriber = await play_redis(
        started(),
        Run(
            ("a", "b", "c"),
            1000,
            (
                Publish("a", 2),
                Publish("b", 2),
                Settle(),
                Write(1000),
                Publish("d", 2),
                Reconnect(5, None, False, 1000),
                Publish("a", BURST),
                Publish("c", 1),
                Reconnect(3, "d", False, 1000),
                Publish("d", 1),
            ),
        ),
    )
    assert subscriber.got == {"a": BURST + 2, "b": 2, "c": 1, "d": 3}
    assert subscriber.losses == [("a", "trimmed")]
    assert subscriber.connections == 3
