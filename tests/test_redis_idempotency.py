"""
Idempotent publish on the real Redis (database 13, a key prefix of the
test's own): a repeat is answered the first id and not delivered, the key
expires with its TTL, and brokers racing the same key publish once.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList

from twisted_sse import Event
from twisted_sse._broker import IdempotencyConflict, IdempotencyUnavailable, Replayed

from ._helpers import sleep
from .test_redis import Collector, Make, SharedRedis, brokers, ready, redis

__all__ = ["brokers", "redis"]


@pytest_twisted.ensureDeferred
async def test_repeat(redis: SharedRedis, brokers: Make) -> None:
    """A repeat gets the first id, as a Replayed, and adds nothing."""
    broker = brokers()
    await ready(broker)
    got = Collector()
    await broker.subscribe("news", got)
    first = await broker.publish("news", Event(data="x"), idempotency_key="k")
    again = await broker.publish("news", Event(data="x"), idempotency_key="k")
    assert again == first
    assert isinstance(again, Replayed) and not isinstance(first, Replayed)
    other = await broker.publish("news", Event(data="x"), idempotency_key="k2")
    plain = await broker.publish("news", Event(data="x"))
    assert redis.ids("news") == [first, other, plain]
    await got.wait(3)
    assert got.ids == [first, other, plain]
    key = broker.idempotency_key("news", "k")
    assert key.startswith(redis.prefix + "#idem:{news}:")
    ttl = redis.command("PTTL", key)
    assert isinstance(ttl, int) and 0 < ttl <= 300_000


@pytest_twisted.ensureDeferred
async def test_conflict(redis: SharedRedis, brokers: Make) -> None:
    """The same key with another event fails, naming the first id."""
    broker = brokers()
    await ready(broker)
    first = await broker.publish("news", Event(data="x"), idempotency_key="k")
    with pytest.raises(IdempotencyConflict) as raised:
        await broker.publish("news", Event(data="y"), idempotency_key="k")
    assert raised.value.event_id == first
    assert redis.ids("news") == [first]


@pytest_twisted.ensureDeferred
async def test_ttl(redis: SharedRedis, brokers: Make) -> None:
    """Past the TTL, the key publishes anew."""
    broker = brokers(idempotency_ttl=0.2)
    await ready(broker)
    first = await broker.publish("news", Event(data="x"), idempotency_key="k")
    await sleep(0.4)
    second = await broker.publish("news", Event(data="x"), idempotency_key="k")
    assert second != first
    assert redis.ids("news") == [first, second]


@pytest_twisted.ensureDeferred
async def test_turned_off(redis: SharedRedis, brokers: Make) -> None:
    """With a TTL of 0 a key is refused, and nothing is added."""
    broker = brokers(idempotency_ttl=0)
    await ready(broker)
    with pytest.raises(IdempotencyUnavailable):
        await broker.publish("news", Event(data="x"), idempotency_key="k")
    assert redis.command("EXISTS", redis.key("news")) == 0


@pytest_twisted.ensureDeferred
async def test_race(redis: SharedRedis, brokers: Make) -> None:
    """Two brokers sending the same key at once publish once, one id."""
    a, b = brokers(), brokers()
    await ready(a, b)
    on_a, on_b = Collector(), Collector()
    await a.subscribe("news", on_a)
    await b.subscribe("news", on_b)
    for round_ in range(20):
        key = f"race-{round_}"
        sent = [
            broker.publish("news", Event(data=key), idempotency_key=key)
            for _ in range(5)
            for broker in (a, b)
        ]
        results = await DeferredList(sent, fireOnOneErrback=True, consumeErrors=True)
        ids = {event_id for _, event_id in results}
        assert len(ids) == 1
    await on_a.wait(20)
    await on_b.wait(20)
    await sleep(0.2)
    assert on_a.data == on_b.data == [f"race-{n}" for n in range(20)]
    assert len(redis.ids("news")) == 20
