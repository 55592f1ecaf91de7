"""
The Redis broker on a fake Redis (L{tests._redis_tools.FakeRedis}, which
runs the broker's scripts as the Lua does) and a L{Clock}: a base test case
with brokers on them, replay pages bounded at will, event ids taken apart,
and the log captured.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from twisted_sse._broker import Subscription
from twisted_sse._event import Event
from twisted_sse._redis import _broker, _channels, _reader, _scripts
from twisted_sse._redis._broker import RedisBroker

from ._helpers import Collector
from ._redis_tools import FakeRedis, fake_broker


def epoch_of(event_id: str) -> str:
    """The epoch of one of the broker's event ids."""
    return event_id.partition(":")[0]


def entry_of(event_id: str) -> tuple[int, int]:
    """The stream entry id of one of the broker's event ids, as numbers."""
    ms, _, seq = event_id.partition(":")[2].partition("-")
    return int(ms), int(seq)


@contextmanager
def pages(entries: int, size: int = _broker.PAGE_BYTES) -> Iterator[None]:
    """Replay pages (and reader batches) of at most ``entries``, ``size`` bytes."""
    with (
        mock.patch.object(_broker, "BATCH", entries),
        mock.patch.object(_reader, "BATCH", entries),
        mock.patch.object(_channels, "PAGE_BYTES", size),
    ):
        yield


@implementer(ILogObserver)
class Logs:
    """The log events emitted while it is installed."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self)
        case.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def texts(self) -> list[str]:
        return [formatEvent(event) for event in self.events]


class FakeRedisTestCase(SynchronousTestCase):
    """A fake Redis and a clock; brokers on them, stopped afterwards."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.redis = FakeRedis(self.clock)

    def broker(self, **options: Any) -> RedisBroker:
        broker: RedisBroker = fake_broker(self.clock, self.redis, **options)
        self.addCleanup(broker.stop)
        return broker

    def publish(self, broker: RedisBroker, channel: str, data: str) -> str:
        # A millisecond apart, as events mostly are.
        self.clock.advance(0.001)
        return self.successResultOf(broker.publish(channel, Event(data=data)))

    def subscribe(
        self,
        broker: RedisBroker,
        channel: str,
        deliver: Any = None,
        last_event_id: str | None = None,
    ) -> tuple[Any, Subscription]:
        deliver = Collector() if deliver is None else deliver
        subscribing = broker.subscribe(channel, deliver, last_event_id)
        # New subscribers of a channel share a read at the end of the turn.
        self.clock.advance(0)
        subscription = self.successResultOf(subscribing)
        self.addCleanup(subscription.cancel)
        return deliver, subscription

    def position(self, broker: RedisBroker, channel: str) -> str:
        """The channel's position, as a new subscriber is given it."""
        _, subscription = self.subscribe(broker, channel)
        subscription.cancel()
        return subscription.position

    def page_reads(self) -> list[tuple[Any, ...]]:
        """The snapshot scripts run with a page (an id to read after)."""
        sha = _scripts.SNAPSHOT.sha
        return [
            args
            for args in self.redis.commands
            if args[0] == "EVALSHA" and args[1] == sha and args[7]
        ]

    def refreshes(self) -> list[tuple[Any, ...]]:
        """The refresh scripts run (the periodic check of followed channels)."""
        sha = _scripts.REFRESH.sha
        return [args for args in self.redis.commands if args[:2] == ("EVALSHA", sha)]
