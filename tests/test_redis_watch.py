"""
Tests for L{twisted_sse._redis._watch} and L{RedisBroker.watch}, the
patterns (C{news.*}) of the Redis broker: the publish log every publish
writes, what a process's reader tells its watches as it reads the log, the
markers, the scan of a watch resuming from a marker (and the markers it
cannot honour), and a L{Fanin} with a pattern resuming exactly.

Most run on the fake Redis (L{tests._redis_tools.FakeRedis}, which runs
the broker's scripts as the Lua does) and a L{Clock}; the scripts, two
brokers, a fan-in and C{twistd sse} also run against the real Redis
(skipped without one, failing with C{TWISTED_SSE_REQUIRE_REDIS=1}).  The
brokers and the fan-in on the real Redis need the real reactor: like
test_redis.py, those are pytest-twisted functions, run under pytest only.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_sse._broker import (
    HISTORY_LOST_EVENT,
    BrokerUnavailable,
    IPatternBroker,
    Published,
    Watch,
)
from twisted_sse._event import Event, MessageEvent
from twisted_sse._fanin import Fanin, parse_selection
from twisted_sse._redis import _scripts, _watch
from twisted_sse._redis._address import RedisAddress
from twisted_sse._redis._broker import RedisBroker
from twisted_sse._redis._entries import before, entry_id, format_id, text_id
from twisted_sse.testing import assert_no_leaks, parse_events

from . import _helpers
from . import _redis_tools as tools
from ._http import SocketClient, http_request
from ._process import Twistd
from ._redis_fakes import FakeRedisTestCase, Logs, entry_of, epoch_of, pages


class Told:
    """A watch's ``found``: what it was told, in order."""

    def __init__(self, order: list[Any] | None = None) -> None:
        self.calls: list[tuple[str, str, str | None]] = []
        self.order = order

    def __call__(self, channel: str, position: str, lost: str | None) -> None:
        self.calls.append((channel, position, lost))
        if self.order is not None:
            self.order.append(("found", channel))

    @property
    def channels(self) -> list[str]:
        return [channel for channel, _, _ in self.calls]


def later(watching: Watch | Deferred[Watch]) -> Deferred[Watch]:
    """The Deferred a watch was answered with (not at once)."""
    assert isinstance(watching, Deferred), watching
    return watching


def just_before(event_id: str) -> str:
    """The position just before one of the broker's event ids."""
    return text_id(epoch_of(event_id), before(entry_of(event_id)))


@contextmanager
def log_length(entries: int) -> Iterator[None]:
    """Brokers made meanwhile keep a publish log of about ``entries``."""
    with mock.patch.object(_watch, "LOG_LENGTH", entries):
        yield


@contextmanager
def scan_pages(entries: int) -> Iterator[None]:
    """Scans read ``entries`` log entries per script."""
    with mock.patch.object(_watch, "SCAN_PAGE", entries):
        yield


class WatchTestCase(FakeRedisTestCase):
    """Watches of brokers on the fake Redis."""

    def watch(
        self, broker: RedisBroker, prefix: str = "news.", since: str | None = None
    ) -> tuple[Told, Watch]:
        told = Told()
        watching = broker.watch(prefix, told, since)
        watch = (
            self.successResultOf(watching)
            if isinstance(watching, Deferred)
            else watching
        )
        self.addCleanup(watch.cancel)
        return told, watch

    def publish_lagging(self, broker: RedisBroker, channel: str, data: str) -> str:
        """Publish while replies lag: only the publish's own is given."""
        self.clock.advance(0.001)
        publishing = broker.publish(channel, Event(data=data))
        self.redis.answer(broker.commands.client)  # type: ignore[attr-defined]
        return self.successResultOf(publishing)

    def log(self, key: bytes = b"sse:#log") -> list[tuple[str, dict[bytes, bytes]]]:
        """The publish log's entries: id and fields."""
        stream = self.redis.streams.get(key)
        if stream is None:
            return []
        return [
            (format_id(entry), dict(zip(fields[::2], fields[1::2], strict=True)))
            for entry, fields in stream.entries
        ]

    def log_reads(self, broker: RedisBroker) -> list[tuple[Any, ...]]:
        """The reader's XREADs that name the publish log."""
        return [
            args
            for args in self.redis.commands
            if args[0] == "XREAD" and broker.watches.key in args
        ]

    def state_reads(self) -> list[tuple[Any, ...]]:
        """The log scripts run without a page (where the log ends)."""
        sha = _scripts.LOG.sha
        return [
            args
            for args in self.redis.commands
            if args[:2] == ("EVALSHA", sha) and args[-1] == 0
        ]


class InterfaceTests(SynchronousTestCase):
    """RedisBroker is an IPatternBroker."""

    def test_provides(self) -> None:
        """It provides IPatternBroker (and so IBroker)."""
        broker = RedisBroker(_helpers.global_reactor(), RedisAddress("127.0.0.1", 1))
        self.assertTrue(verifyObject(IPatternBroker, broker))


class PublishLogTests(WatchTestCase):
    """Every publish writes its entry of the publish log, in its script."""

    def test_entry_per_publish(self) -> None:
        """
        One log entry per publish, in publish order: the channel, its
        epoch and the entry id of the event; the publish is one command.
        """
        broker = self.broker()
        ids = [self.publish(broker, channel, "x") for channel in ["a", "news.eu", "a"]]
        self.assertEqual(
            [fields for _, fields in self.log()],
            [
                {
                    b"c": channel.encode(),
                    b"e": epoch_of(event_id).encode(),
                    b"i": event_id.partition(":")[2].encode(),
                }
                for channel, event_id in zip(["a", "news.eu", "a"], ids, strict=True)
            ],
        )
        sent = len(self.redis.commands)
        self.publish(broker, "b", "y")
        (command,) = self.redis.commands[sent:]
        self.assertEqual(
            command[5:11],
            (1000, 3_600_000, "#log", "sse:#log", "b", _watch.LOG_LENGTH),
        )

    def test_prefix(self) -> None:
        """The log is the broker's key prefix and ``#log``."""
        broker = self.broker(prefix="app:")
        self.publish(broker, "a", "x")
        self.assertEqual(broker.watches.key, "app:#log")
        self.assertEqual(len(self.log(b"app:#log")), 1)

    def test_bounded(self) -> None:
        """The log keeps about LOG_LENGTH entries."""
        with log_length(5):
            broker = self.broker()
        for n in range(20):
            self.publish(broker, f"c{n}", "x")
        self.assertEqual(len(self.log()), 5)


class LiveTests(WatchTestCase):
    """What a watch is told as the reader reads the log."""

    def test_once_per_channel_under_prefix(self) -> None:
        """
        Each channel under the prefix, at any depth, is told once, with the
        position just before its first event since the watch began; not
        the prefix's own name nor a name that only starts like it.
        """
        broker = self.broker()
        self.publish(broker, "news.old", "before the watch")
        told, _ = self.watch(broker)
        ids: dict[str, str] = {}
        for channel in ["news.eu", "news", "newsroom", "news.eu.fr", "news.eu"]:
            ids.setdefault(channel, self.publish(broker, channel, "x"))
        self.publish(broker, "news.old", "again")
        self.assertEqual(
            told.calls,
            [
                ("news.eu", just_before(ids["news.eu"]), None),
                ("news.eu.fr", just_before(ids["news.eu.fr"]), None),
                ("news.old", told.calls[2][1], None),
            ],
        )

    def test_position_resumes_exactly(self) -> None:
        """A subscription from the position told delivers the event, then live."""
        broker, publisher = self.broker(), self.broker()
        told, _ = self.watch(broker)
        first = self.publish(publisher, "news.eu", "one")
        ((_, position, _),) = told.calls
        got, subscription = self.subscribe(broker, "news.eu", None, position)
        second = self.publish(publisher, "news.eu", "two")
        self.assertIsNone(subscription.history_lost)
        self.assertEqual(got.ids, [first, second])

    def test_told_before_the_event(self) -> None:
        """
        The watch is told of a channel before the channel's first event
        reaches the process's subscribers, though they read it in the same
        read.
        """
        broker = self.broker()
        order: list[Any] = []

        def deliver(published: Published) -> None:
            order.append(("event", published.channel))

        self.subscribe(broker, "news.eu", deliver)
        broker.watch("news.", Told(order))
        self.publish(broker, "news.eu", "x")
        self.assertEqual(order, [("found", "news.eu"), ("event", "news.eu")])

    def test_told_before_the_event_behind_a_full_batch(self) -> None:
        """
        When the reader is behind the log by a full batch, the channels'
        entries of that read wait for the log's: still told first.
        """
        broker, publisher = self.broker(), self.broker()
        order: list[Any] = []

        def deliver(published: Published) -> None:
            order.append(("event", published.channel))

        self.subscribe(broker, "news.eu", deliver)
        self.successResultOf(later(broker.watch("news.", Told(order))))
        self.redis.lagging = True
        for channel in ["x", "y", "z", "news.eu"]:
            self.publish_lagging(publisher, channel, "x")
        with pages(2):
            self.redis.answer_all()
        self.assertEqual(order, [("found", "news.eu"), ("event", "news.eu")])

    def test_nested_prefixes(self) -> None:
        """Watches of ``news.`` and ``news.eu.`` each get their own channels."""
        broker = self.broker()
        news, _ = self.watch(broker, "news.")
        europe, _ = self.watch(broker, "news.eu.")
        for channel in ["news.eu", "news.eu.fr", "news.us", "news.eu.de.by"]:
            self.publish(broker, channel, "x")
        self.assertEqual(
            news.channels, ["news.eu", "news.eu.fr", "news.us", "news.eu.de.by"]
        )
        self.assertEqual(europe.channels, ["news.eu.fr", "news.eu.de.by"])

    def test_each_watch_told(self) -> None:
        """Two watches of one prefix are each told, once per channel."""
        broker = self.broker()
        first, _ = self.watch(broker)
        self.publish(broker, "news.a", "x")
        second, _ = self.watch(broker)
        self.publish(broker, "news.a", "y")
        self.publish(broker, "news.b", "z")
        self.assertEqual(first.channels, ["news.a", "news.b"])
        self.assertEqual(second.channels, ["news.a", "news.b"])

    def test_second_watch_at_once(self) -> None:
        """
        The first watch is given once the log's end is read; concurrent
        first watches share that read; a watch while the reader reads the
        log is given at once, at the reader's position.
        """
        broker = self.broker()
        self.publish(broker, "a", "x")
        self.redis.lagging = True
        first = broker.watch("news.", Told())
        second = broker.watch("sport.", Told())
        self.assertIsInstance(first, Deferred)
        self.assertNoResult(first)
        self.assertEqual(len(self.state_reads()), 1)
        self.redis.answer_all()
        watches = [
            self.successResultOf(later(first)),
            self.successResultOf(later(second)),
        ]
        (last_id, _), *_ = reversed(self.log())
        self.assertEqual([watch.marker for watch in watches], [last_id] * 2)
        third = broker.watch("weather.", Told())
        self.assertIsInstance(third, Watch)
        assert isinstance(third, Watch)
        self.assertEqual(third.marker, last_id)
        self.assertIsNone(third.history_lost)
        self.assertEqual(len(self.state_reads()), 1)
        for watch in [*watches, third]:
            watch.cancel()

    def test_marker_moves_after_telling(self) -> None:
        """
        The marker is how far the reader has read the log: it moves past
        a log entry only after the watches were told of its channel.
        """
        broker = self.broker()
        markers: list[str] = []
        watch: Watch | None = None

        def found(channel: str, position: str, lost: str | None) -> None:
            assert watch is not None
            markers.append(watch.marker)

        start = self.successResultOf(later(broker.watch("other.", Told())))
        self.addCleanup(start.cancel)
        self.publish(broker, "a", "x")
        watching = broker.watch("news.", found)
        assert isinstance(watching, Watch)
        watch = watching
        self.addCleanup(watch.cancel)
        before_it = watch.marker
        self.assertEqual(before_it, self.log()[-1][0])
        self.publish(broker, "news.eu", "x")
        self.publish(broker, "b", "y")
        self.assertEqual(markers, [before_it])
        self.assertEqual(watch.marker, self.log()[-1][0])
        self.assertEqual(start.marker, watch.marker)

    def test_marker_stops_at_cancel(self) -> None:
        """A cancelled watch is told nothing more: its marker stays."""
        broker = self.broker()
        _, keeper = self.watch(broker, "other.")
        _, watch = self.watch(broker)
        self.publish(broker, "news.a", "x")
        watch.cancel()
        kept = watch.marker
        self.publish(broker, "news.b", "x")
        self.assertEqual(watch.marker, kept)
        self.assertNotEqual(keeper.marker, kept)
        told, _ = self.watch(broker, since=kept)
        self.assertEqual(told.channels, ["news.b"])

    def test_found_that_fails(self) -> None:
        """A found that raises is logged; the other watches are told."""
        broker = self.broker()
        logs = Logs(self)

        def broken(channel: str, position: str, lost: str | None) -> None:
            raise RuntimeError("no")

        self.successResultOf(later(broker.watch("news.", broken)))
        told, _ = self.watch(broker)
        self.publish(broker, "news.a", "x")
        self.assertEqual(told.channels, ["news.a"])
        self.assertIn("A watch failed to take a channel", logs.texts())
        self.flushLoggedErrors(RuntimeError)

    def test_cancel_stops_reading_the_log(self) -> None:
        """
        Once the last watch is cancelled the reader no longer reads the
        log (the channels it follows go on); a later watch starts from the
        log's end then.
        """
        broker = self.broker()
        got, _ = self.subscribe(broker, "a")
        told, first = self.watch(broker)
        other, second = self.watch(broker, "sport.")
        first.cancel()
        self.assertIsNotNone(broker.watches.position)
        self.publish(broker, "sport.x", "x")
        second.cancel()
        self.assertIsNone(broker.watches.position)
        self.assertEqual(broker.watches.count, 0)
        reads = len(self.log_reads(broker))
        self.publish(broker, "news.a", "x")
        self.publish(broker, "a", "y")
        self.assertEqual(len(self.log_reads(broker)), reads)
        self.assertEqual((told.calls, other.channels), ([], ["sport.x"]))
        self.assertEqual(got.data, ["y"])
        later, watch = self.watch(broker)
        self.assertEqual(watch.marker, self.log()[-1][0])
        self.publish(broker, "news.b", "x")
        self.assertEqual(later.channels, ["news.b"])

    def test_no_watch_left(self) -> None:
        """
        ``watch_prefixes`` counts the watches of each prefix, so that
        ``assert_no_leaks`` finds one left behind.
        """
        broker = self.broker()
        _, first = self.watch(broker)
        _, second = self.watch(broker)
        _, third = self.watch(broker, "sport.")
        self.assertEqual(broker.watch_prefixes(), {"news.": 2, "sport.": 1})
        with self.assertRaises(AssertionError) as raised:
            assert_no_leaks(brokers=[broker])
        self.assertIn("2 watch(es) left on prefix 'news.'", str(raised.exception))
        for watch in [first, second, third]:
            watch.cancel()
        self.assertEqual(broker.watch_prefixes(), {})
        assert_no_leaks(brokers=[broker])

    def test_cancel_while_starting(self) -> None:
        """A watch cancelled while the log's end is read is never told."""
        broker = self.broker()
        self.redis.lagging = True
        told = Told()
        watching = broker.watch("news.", told)
        assert isinstance(watching, Deferred)
        watching.cancel()
        self.failureResultOf(watching, CancelledError)
        self.redis.answer_all()
        self.assertIsNone(broker.watches.position)
        self.publish(broker, "news.a", "x")
        self.assertEqual(told.calls, [])

    def test_refused(self) -> None:
        """An invalid prefix is a ValueError; no Redis, BrokerUnavailable."""
        broker = self.broker()
        for prefix in ["news", "news.*", ".", "-a.", "a b."]:
            with self.assertRaises(ValueError):
                broker.watch(prefix, Told())
        broker.commands.lose()  # type: ignore[attr-defined]
        self.failureResultOf(broker.watch("news.", Told()), BrokerUnavailable)

    def test_reconnect(self) -> None:
        """
        After its connection comes back, the reader goes on from the last
        log entry it read: channels published meanwhile are told.
        """
        broker, publisher = self.broker(), self.broker()
        told, watch = self.watch(broker)
        self.publish(publisher, "news.a", "x")
        link = broker.reader.link
        link.lose()  # type: ignore[attr-defined]
        missed = self.publish(publisher, "news.b", "x")
        link.start()
        self.assertEqual(told.channels, ["news.a", "news.b"])
        self.assertEqual(told.calls[1][1], just_before(missed))
        self.assertEqual(watch.marker, self.log()[-1][0])

    def test_reconnect_after_trimming(self) -> None:
        """
        Redis trimmed log entries the reader had not read while it was
        away: it says so, and goes on with what is left.
        """
        with log_length(3):
            broker, publisher = self.broker(), self.broker()
        told, _ = self.watch(broker)
        logs = Logs(self)
        link = broker.reader.link
        link.lose()  # type: ignore[attr-defined]
        for n in range(6):
            self.publish(publisher, f"news.c{n}", "x")
        link.start()
        self.assertTrue(any("are gone" in text for text in logs.texts()))
        self.assertEqual(told.channels, ["news.c3", "news.c4", "news.c5"])

    def test_log_not_a_stream(self) -> None:
        """
        Another program made the log's key something else: the reader
        stops reading it (and says so), the channels go on.
        """
        broker = self.broker()
        got, _ = self.subscribe(broker, "a")
        told, _ = self.watch(broker)
        logs = Logs(self)
        self.redis.strings[b"sse:#log"] = b"foreign"
        self.publish(broker, "news.a", "x")
        self.publish(broker, "a", "y")
        self.assertIsNone(broker.watches.position)
        self.assertEqual((told.calls, got.data), ([], ["y"]))
        self.assertTrue(any("no longer read" in text for text in logs.texts()))
        self.flushLoggedErrors()

    def test_reconnect_to_emptied_redis(self) -> None:
        """
        Redis restarted empty: the reader says so, and goes on from the
        log as it is now.
        """
        broker, publisher = self.broker(), self.broker()
        told, watch = self.watch(broker)
        self.publish(publisher, "news.a", "x")
        logs = Logs(self)
        link = broker.reader.link
        link.lose()  # type: ignore[attr-defined]
        self.redis.flush(skew_ms=-60_000)
        link.start()
        self.assertTrue(any("Redis lost it" in text for text in logs.texts()))
        self.assertEqual(watch.marker, "0-0")
        self.clock.advance(1)
        self.publish(publisher, "news.b", "x")
        self.assertEqual(told.channels, ["news.a", "news.b"])


class ResumeTests(WatchTestCase):
    """A watch from a marker: the channels with events after it, first."""

    def marker(self, broker: RedisBroker, *publish: str) -> str:
        """A watch's marker once ``publish`` were published; the watch gone."""
        _, watch = self.watch(broker)
        for channel in publish:
            self.publish(broker, channel, "x")
        marker = watch.marker
        watch.cancel()
        return marker

    def test_exactly_the_channels_after(self) -> None:
        """
        The channels under the prefix with events after the marker, each
        once, at the position just before its first event after it; then
        live.
        """
        broker = self.broker()
        marker = self.marker(broker, "news.a", "news.b", "news.c")
        ids: dict[str, str] = {}
        for channel in ["news.b", "other", "news.d.e", "news.b", "newsroom"]:
            ids.setdefault(channel, self.publish(broker, channel, "y"))
        with scan_pages(2):
            told, watch = self.watch(broker, since=marker)
        self.assertIsNone(watch.history_lost)
        self.assertEqual(
            told.calls,
            [
                ("news.b", just_before(ids["news.b"]), None),
                ("news.d.e", just_before(ids["news.d.e"]), None),
            ],
        )
        self.publish(broker, "news.a", "z")
        self.publish(broker, "news.b", "z")
        self.assertEqual(told.channels, ["news.b", "news.d.e", "news.a"])

    def test_nothing_after(self) -> None:
        """A marker at the log's end: nothing told, no loss."""
        broker = self.broker()
        marker = self.marker(broker, "news.a")
        told, watch = self.watch(broker, since=marker)
        self.assertEqual((told.calls, watch.history_lost), ([], None))
        self.assertEqual(watch.marker, marker)

    def test_empty_log(self) -> None:
        """A watch that began on an empty log resumes from ``0-0``."""
        broker = self.broker()
        marker = self.marker(broker)
        self.assertEqual(marker, "0-0")
        event_id = self.publish(broker, "news.a", "x")
        told, watch = self.watch(broker, since=marker)
        self.assertEqual(told.calls, [("news.a", just_before(event_id), None)])
        self.assertIsNone(watch.history_lost)

    def test_another_broker(self) -> None:
        """Published through one broker, found by another's watch."""
        broker, publisher = self.broker(), self.broker()
        marker = self.marker(broker, "news.a")
        event_id = self.publish(publisher, "news.b", "x")
        told, _ = self.watch(broker, since=marker)
        self.assertEqual(told.calls, [("news.b", just_before(event_id), None)])

    def test_scan_then_live(self) -> None:
        """
        What the reader finds while the scan runs is told after the scan's
        channels: a channel in both keeps the scan's (earlier) position.
        """
        broker, publisher = self.broker(), self.broker()
        _, keeper = self.watch(broker, "other.")
        marker = self.marker(broker, "news.a")
        early = self.publish(publisher, "news.b", "x")
        self.redis.lagging = True
        told = Told()
        watching = later(broker.watch("news.", told, marker))
        late = self.publish_lagging(publisher, "news.b", "y")
        new = self.publish_lagging(publisher, "news.c", "y")
        # The reader reads them while the scan's reply is on its way.
        self.redis.answer(broker.reader.link.client, 10)  # type: ignore[attr-defined]
        self.assertEqual(keeper.marker, self.log()[-1][0])
        self.assertEqual(told.calls, [])
        self.redis.answer_all()
        watch = self.successResultOf(watching)
        self.addCleanup(watch.cancel)
        self.assertEqual(
            told.calls,
            [
                ("news.b", just_before(early), None),
                ("news.c", just_before(new), None),
            ],
        )
        self.assertNotEqual(just_before(late), just_before(early))
        self.assertEqual(watch.marker, keeper.marker)

    def test_malformed(self) -> None:
        """A marker that is no log id: ``"malformed"``, from now."""
        broker = self.broker()
        self.marker(broker, "news.a")
        for since in ["", "x", "1-", "a:1-0", "1-0-0", "99999999999999999999-0"]:
            told, watch = self.watch(broker, since=since)
            self.assertEqual((told.calls, watch.history_lost), ([], "malformed"))

    def test_unknown(self) -> None:
        """
        A marker past the log's end, or one it never had (another Redis),
        is ``"unknown"``: nothing is told, the watch is live from now.
        """
        broker = self.broker()
        marker = self.marker(broker, "news.a", "news.b")
        self.publish(broker, "news.c", "x")
        ms, seq = entry_id(marker)
        for since in [
            f"{ms + 10**6}-0",
            f"{ms}-{seq + 5}",
            "18446744073709551615-18446744073709551615",
            f"{ms - 1}-7",
        ]:
            told, watch = self.watch(broker, since=since)
            self.assertEqual((told.calls, watch.history_lost), ([], "unknown"), since)
        self.publish(broker, "news.d", "x")
        self.assertEqual(told.channels, ["news.d"])

    def test_trimmed(self) -> None:
        """
        A marker older than the log: ``"trimmed"``, and the channels are
        found from what the log keeps.
        """
        with log_length(3):
            broker = self.broker()
        marker = self.marker(broker, "news.a")
        for channel in ["news.b", "news.c", "news.d", "news.e"]:
            self.publish(broker, channel, "x")
        told, watch = self.watch(broker, since=marker)
        self.assertEqual(watch.history_lost, "trimmed")
        self.assertEqual(told.channels, ["news.c", "news.d", "news.e"])

    def test_forgotten_channel(self) -> None:
        """
        A channel that Redis lost (or forgot) since its log entry: told
        ``"unknown"`` with no position.
        """
        broker = self.broker()
        marker = self.marker(broker)
        self.publish(broker, "news.a", "x")
        del self.redis.hashes[b"sse:news.a#epoch"]
        told, watch = self.watch(broker, since=marker)
        self.assertEqual(told.calls, [("news.a", "", "unknown")])
        self.assertIsNone(watch.history_lost)

    def test_marker_ahead_of_the_reader(self) -> None:
        """
        A marker of a process whose reader read further than this one's:
        nothing lost; this one's reader tells the channels after it.
        """
        broker, other = self.broker(), self.broker()
        _, keeper = self.watch(broker, "other.")
        _, ahead = self.watch(other)
        self.redis.lagging = True
        self.publish_lagging(other, "news.a", "x")
        self.redis.answer(other.reader.link.client, 10)  # type: ignore[attr-defined]
        marker = ahead.marker
        self.assertLess(entry_id(keeper.marker), entry_id(marker))
        told = Told()
        watching = later(broker.watch("news.", told, marker))
        self.redis.answer(broker.commands.client, 10)  # type: ignore[attr-defined]
        watch = self.successResultOf(watching)
        self.addCleanup(watch.cancel)
        self.assertIsNone(watch.history_lost)
        self.redis.answer_all()
        self.assertEqual(told.channels, ["news.a"])

    def test_cancelled_during_scan(self) -> None:
        """A watch cancelled while its scan runs is no longer told."""
        broker = self.broker()
        self.watch(broker, "other.")
        marker = self.marker(broker, "news.a")
        self.publish(broker, "news.b", "x")
        self.redis.lagging = True
        told = Told()
        watching = later(broker.watch("news.", told, marker))
        watching.cancel()
        self.failureResultOf(watching, CancelledError)
        self.redis.answer_all()
        self.publish(broker, "news.c", "x")
        self.assertEqual(told.calls, [])
        self.assertEqual(broker.watches.count, 1)

    @settings(max_examples=60, deadline=None)
    @given(
        before_marker=st.lists(st.sampled_from(["news.a", "news.b.c", "x", "news"])),
        after_marker=st.lists(
            st.sampled_from(["news.a", "news.b.c", "news.d", "x", "newsy", "news"])
        ),
        page=st.integers(1, 5),
    )
    def test_finds_exactly(
        self, before_marker: list[str], after_marker: list[str], page: int
    ) -> None:
        """
        Whatever was published before and after a marker, a watch from it
        is told of exactly the channels under the prefix published after
        it, each at the position just before its first event after it.
        """
        self.setUp()
        broker = fake_broker_for(self)
        try:
            _, watch = self.watch(broker)
            for channel in before_marker:
                self.publish(broker, channel, "x")
            marker = watch.marker
            watch.cancel()
            first: dict[str, str] = {}
            for channel in after_marker:
                event_id = self.publish(broker, channel, "y")
                if channel.startswith("news."):
                    first.setdefault(channel, just_before(event_id))
            with scan_pages(page):
                told, resumed = self.watch(broker, since=marker)
            self.assertIsNone(resumed.history_lost)
            self.assertEqual(
                told.calls, [(name, position, None) for name, position in first.items()]
            )
        finally:
            broker.stop()


class KnownTests(WatchTestCase):
    """
    A resuming watch is also told of the channels under its prefix that
    its subscription's cursor holds (``known``), whatever their events:
    from the index of the names patterns found.
    """

    def index(self) -> set[bytes]:
        return self.redis.names.get(b"sse:#names", set())

    def test_index(self) -> None:
        """
        The channels watches are told of, live or by a scan, are in the
        index; others are not (publishing alone adds none).
        """
        broker = self.broker()
        self.publish(broker, "news.old", "x")
        self.assertEqual(self.index(), set())
        _, watch = self.watch(broker)
        self.publish(broker, "news.a", "x")
        self.publish(broker, "sport.a", "x")
        marker = watch.marker
        watch.cancel()
        self.publish(broker, "news.b", "x")
        self.watch(broker, since=marker)
        self.assertEqual(self.index(), {b"news.a", b"news.b"})

    def test_known_channels_told(self) -> None:
        """
        The indexed channels ``known`` accepts are told at their heads,
        after those with events after ``since``, each once; those it
        refuses, and channels under other prefixes, are not.
        """
        broker = self.broker()
        _, watch = self.watch(broker)
        heads = {
            channel: self.publish(broker, channel, "x")
            for channel in ["news.a", "news.b", "news.c"]
        }
        marker = watch.marker
        watch.cancel()
        self.watch(broker, "sport.")
        self.publish(broker, "sport.a", "x")
        after = self.publish(broker, "news.c", "y")
        told = Told()
        asked: list[str] = []

        def known(name: str) -> bool:
            asked.append(name)
            return name != "news.b"

        watching = broker.watch("news.", told, marker, known)
        self.addCleanup(self.successResultOf(later(watching)).cancel)
        self.assertEqual(
            told.calls,
            [("news.c", just_before(after), None), ("news.a", heads["news.a"], None)],
        )
        self.assertEqual(asked, ["news.a", "news.b"])

    def test_known_without_since(self) -> None:
        """``known`` alone (a pattern new to a cursor) is honoured too."""
        broker = self.broker()
        _, watch = self.watch(broker)
        head = self.publish(broker, "news.a", "x")
        told = Told()
        watching = broker.watch("news.", told, None, lambda name: True)
        self.assertIsInstance(watching, Deferred)
        self.addCleanup(self.successResultOf(later(watching)).cancel)
        self.assertEqual(told.calls, [("news.a", head, None)])
        watch.cancel()

    def test_forgotten(self) -> None:
        """A known channel Redis forgot is told with no position."""
        broker = self.broker()
        _, watch = self.watch(broker)
        self.publish(broker, "news.a", "x")
        marker = watch.marker
        watch.cancel()
        del self.redis.hashes[b"sse:news.a#epoch"]
        del self.redis.streams[b"sse:news.a"]
        told, _ = self.watch(broker, since=marker)
        self.assertEqual(told.calls, [])
        watching = broker.watch("news.", told, marker, lambda name: True)
        self.addCleanup(self.successResultOf(later(watching)).cancel)
        self.assertEqual(told.calls, [("news.a", "", None)])

    def test_pages_and_pruning(self) -> None:
        """
        The index is read in pages; while it holds more names than it
        keeps, those of forgotten channels leave it as they are read.
        """
        broker = self.broker()
        _, watch = self.watch(broker)
        for n in range(7):
            self.publish(broker, f"news.c{n}", "x")
        marker = watch.marker
        watch.cancel()
        for n in range(3):
            del self.redis.hashes[f"sse:news.c{n}#epoch".encode()]
        told = Told()
        with (
            mock.patch.object(_watch, "NAMES_PAGE", 2),
            mock.patch.object(_watch, "NAMES_KEPT", 5),
        ):
            watching = broker.watch("news.", told, marker, lambda name: True)
        self.addCleanup(self.successResultOf(later(watching)).cancel)
        self.assertEqual(sorted(told.channels), [f"news.c{n}" for n in range(7)])
        # Two pages of two forgotten names read beyond the 5 kept; the
        # third forgotten one was read with 5 left.
        self.assertEqual(self.index(), {f"news.c{n}".encode() for n in range(2, 7)})


def fake_broker_for(case: FakeRedisTestCase) -> RedisBroker:
    """A broker on ``case``'s fake Redis, stopped by the caller."""
    broker: RedisBroker = tools.fake_broker(case.clock, case.redis)
    return broker


class Client:
    """
    A fan-in and what its client was sent: each event written (encoded)
    as it is delivered, once the fan-in is open (before, kept, as a stream
    keeps them).
    """

    def __init__(
        self, broker: RedisBroker, names: list[str], last_event_id: str | None = None
    ) -> None:
        self.fanin = Fanin(broker, parse_selection(names), last_event_id, self.deliver)
        self.frames: list[bytes] = []
        self.waiting: list[Published] | None = []

    def deliver(self, published: Published) -> None:
        if self.waiting is not None:
            self.waiting.append(published)
        else:
            self.frames.append(self.fanin.encode(published)[0])

    def opened(self, fanin: Fanin) -> Client:
        self.frames.extend(fanin.opening_frames(1000))
        waiting, self.waiting = self.waiting or [], None
        for published in waiting:
            self.deliver(published)
        return self

    def open(self) -> Deferred[Client]:
        return self.fanin.open().addCallback(self.opened)

    @property
    def events(self) -> list[MessageEvent]:
        return parse_events(b"".join(self.frames))

    @property
    def cursor(self) -> str:
        return self.events[-1].last_event_id

    def seen(self) -> list[tuple[str, str]]:
        """The channel and data of each event but the loss."""
        return [
            (event.type, event.data)
            for event in self.events
            if event.type != HISTORY_LOST_EVENT
        ]


class FaninTests(WatchTestCase):
    """A fan-in with a pattern on the Redis broker."""

    def client(
        self, broker: RedisBroker, names: list[str], last_event_id: str | None = None
    ) -> Client:
        opening = Client(broker, names, last_event_id).open()
        # New subscribers of a channel share a read at the end of the turn.
        self.clock.advance(0)
        client = self.successResultOf(opening)
        self.addCleanup(client.fanin.cancel)
        return client

    def test_resume_exactly(self) -> None:
        """
        ``news.*`` carries the channels under it published through another
        broker; resumed from its cursor after more was published (on a new
        channel too) it gets exactly what it missed, once.
        """
        broker, publisher = self.broker(), self.broker()
        client = self.client(broker, ["news.*", "a"])
        self.publish(publisher, "news.eu", "1")
        self.publish(publisher, "news.eu.fr", "2")
        self.publish(publisher, "a", "3")
        self.publish(publisher, "newsroom", "no")
        self.publish(publisher, "news.eu", "4")
        self.assertEqual(
            client.seen(),
            [("news.eu", "1"), ("news.eu.fr", "2"), ("a", "3"), ("news.eu", "4")],
        )
        cursor = client.cursor
        client.fanin.cancel()
        assert_no_leaks(brokers=[broker])
        for channel, data in [("news.eu.fr", "5"), ("news.x", "6"), ("news.eu", "7")]:
            self.publish(publisher, channel, data)
        resumed = self.client(broker, ["a", "news.*"], cursor)
        self.assertEqual(resumed.fanin.losses, {})
        self.publish(publisher, "news.y", "8")
        self.assertEqual(
            resumed.seen(),
            [("news.eu.fr", "5"), ("news.x", "6"), ("news.eu", "7"), ("news.y", "8")],
        )

    def test_delivered_not_written(self) -> None:
        """
        An event of a channel the pattern found, delivered but not yet
        written when the client left (the marker passed it), is sent on
        resume, once; and again if the client leaves before it is sent.
        """
        broker, publisher = self.broker(), self.broker()
        client = self.client(broker, ["a", "news.*"])
        client.waiting = []  # the client stops reading
        self.publish(publisher, "a", "a1")
        self.publish(publisher, "news.eu", "e1")
        client.frames.append(client.fanin.encode(client.waiting[0])[0])
        self.assertEqual(client.seen(), [("a", "a1")])
        cursor = client.cursor
        client.fanin.cancel()
        self.publish(publisher, "sport", "moves the log on")
        second = self.client(broker, ["a", "news.*"], cursor)
        self.assertEqual(second.seen(), [("news.eu", "e1")])
        second.fanin.cancel()
        third = self.client(broker, ["a", "news.*"], cursor)
        self.publish(publisher, "news.eu", "e2")
        self.assertEqual(third.seen(), [("news.eu", "e1"), ("news.eu", "e2")])
        fourth = self.client(broker, ["news.*", "a"], third.cursor)
        self.publish(publisher, "news.eu", "e3")
        self.assertEqual(fourth.seen(), [("news.eu", "e3")])


# Against the real Redis


class RealScriptTests(SynchronousTestCase):
    """The publish log's scripts on the real Redis."""

    def setUp(self) -> None:
        tools.need(tools.unavailable_reason())
        self.redis = tools.BlockingRedis()
        self.addCleanup(self.redis.close)
        self.prefix = tools.unique_prefix()
        self.log = self.prefix + "#log"
        self.addCleanup(
            tools.delete_prefix,
            tools.REDIS_PORT,
            tools.REDIS_DB,
            self.prefix,
            tools.REDIS_HOST,
        )

    def script(self, which: _scripts.Script, keys: Any, *args: Any) -> Any:
        return self.successResultOf(_scripts.run_script(self.redis, which, keys, args))

    def publish(self, channel: str, length: int = 1000) -> str:
        reply = self.script(
            _scripts.PUBLISH,
            (self.prefix + channel, self.prefix + channel + "#epoch"),
            1000,
            0,
            "#log",
            self.log,
            channel,
            length,
            "data",
            "x",
        )
        return str(reply.decode())

    def state(
        self, after: str = "", upto: str = "+", names: str = "news.", count: int = 1000
    ) -> _watch.LogState:
        reply = self.script(
            _scripts.LOG,
            (self.log, self.prefix + "#names"),
            self.prefix,
            names,
            after,
            upto,
            count,
        )
        return _watch.log_state(reply)

    def test_publish_writes_the_log(self) -> None:
        """The channel's entry and its log entry, written together."""
        event_id = self.publish("news.a")
        ((log_id, fields),) = self.redis.run("XRANGE", self.log, "-", "+")
        epoch, _, entry = event_id.partition(":")
        self.assertEqual(
            fields, [b"c", b"news.a", b"e", epoch.encode(), b"i", entry.encode()]
        )
        ((channel_id, channel_fields),) = self.redis.run(
            "XRANGE", self.prefix + "news.a", "-", "+"
        )
        self.assertEqual(channel_id.decode(), entry)
        self.assertEqual(channel_fields[-2:], [b"data", b"x"])
        self.assertEqual(self.redis.run("PTTL", self.log), -1)
        self.assertEqual(self.state().last, entry_id(log_id))

    def test_log_bounded(self) -> None:
        """The log is trimmed to about its MAXLEN, never below."""
        for n in range(300):
            self.publish(f"c{n % 7}", length=20)
        length = self.redis.run("XLEN", self.log)
        self.assertTrue(20 <= length < 300, length)
        self.assertTrue(self.state().trimmed)

    def test_log_not_a_stream(self) -> None:
        """A log key that holds no stream does not fail the publish."""
        self.redis.run("SET", self.log, "foreign")
        event_id = self.publish("news.a")
        self.assertEqual(self.redis.run("XLEN", self.prefix + "news.a"), 1)
        self.assertIn(":", event_id)

    def test_state(self) -> None:
        """No log: ``0-0``; then its last and first ids, whether an id is in it."""
        self.assertEqual(
            self.state(), _watch.LogState((0, 0), None, False, False, None, False, [])
        )
        ids = [self.publish("a") for _ in range(3)]
        log_ids = [e[0].decode() for e in self.redis.run("XRANGE", self.log, "-", "+")]
        state = self.state(after=log_ids[1], count=0)
        self.assertEqual(
            (state.last, state.first, state.trimmed, state.present, state.found),
            (entry_id(log_ids[2]), entry_id(log_ids[0]), False, True, []),
        )
        self.assertFalse(self.state(after="1-1", count=0).present)
        self.assertEqual(len(ids), 3)

    def test_page(self) -> None:
        """
        A page after an id, up to another: each channel under the prefix
        once, at its first entry, with its epoch now; at most ``count``
        entries read.
        """
        start = self.state().last
        ids: dict[str, str] = {}
        for channel in ["news.a", "x", "news.b.c", "news.a", "newsroom", "news.d"]:
            ids.setdefault(channel, self.publish(channel))
        log_ids = [e[0].decode() for e in self.redis.run("XRANGE", self.log, "-", "+")]
        page = self.state(after=format_id(start), upto=log_ids[4])
        epoch_a, _, entry_a = ids["news.a"].partition(":")
        epoch_b, _, entry_b = ids["news.b.c"].partition(":")
        self.assertEqual(
            page.found,
            [
                ("news.a", epoch_a, entry_id(entry_a), epoch_a),
                ("news.b.c", epoch_b, entry_id(entry_b), epoch_b),
            ],
        )
        self.assertEqual((page.page_end, page.more), (entry_id(log_ids[4]), False))
        short = self.state(after=format_id(start), count=2)
        self.assertEqual((short.page_end, short.more), (entry_id(log_ids[1]), True))
        self.assertEqual([f[0] for f in short.found], ["news.a"])
        self.redis.run("DEL", self.prefix + "news.d#epoch")
        rest = self.state(after=log_ids[4])
        self.assertEqual(rest.found, [("news.d", *rest.found[0][1:3], None)])


@pytest.fixture
def shared() -> Iterator[tuple[RedisAddress, str]]:
    """The shared Redis and a key prefix of this test's (deleted after)."""
    tools.need(tools.unavailable_reason())
    address = RedisAddress(tools.REDIS_HOST, tools.REDIS_PORT, tools.REDIS_DB)
    prefix = tools.unique_prefix()
    yield address, prefix
    tools.delete_prefix(address.port, address.db, prefix, address.host)


Make = Callable[[], Awaitable[RedisBroker]]


@pytest_twisted.async_yield_fixture
async def brokers(shared: tuple[RedisAddress, str]) -> AsyncIterator[Make]:
    """Makes connected brokers on the shared Redis (stopped afterwards)."""
    address, prefix = shared
    made: list[RedisBroker] = []

    async def make() -> RedisBroker:
        broker = RedisBroker(_helpers.global_reactor(), address, prefix=prefix)
        broker.startService()
        made.append(broker)
        await _helpers.until(lambda: broker.available, "the broker to connect")
        return broker

    yield make
    for broker in made:
        await broker.stop()


async def real_watch(
    broker: RedisBroker, since: str | None = None
) -> tuple[Told, Watch]:
    told = Told()
    watching = broker.watch("news.", told, since)
    watch = await watching if isinstance(watching, Deferred) else watching
    return told, watch


@pytest_twisted.ensureDeferred
async def test_live_and_resume_across_brokers(brokers: Make) -> None:
    """
    Against the real Redis: published through one broker, told on
    another's watch once per channel; resumed there from the marker after
    more was published, exactly the channels published since.
    """
    publisher, broker = await brokers(), await brokers()
    told, watch = await real_watch(broker)
    events = [
        (channel, await publisher.publish(channel, Event(data="x")))
        for channel in ["news.eu", "news.eu", "sport", "news.eu.fr"]
    ]
    await _helpers.until(lambda: len(told.calls) == 2, "two channels told")
    assert told.calls == [
        ("news.eu", just_before(events[0][1]), None),
        ("news.eu.fr", just_before(events[3][1]), None),
    ]
    marker = watch.marker
    watch.cancel()
    assert broker.watches.position is None
    first = await publisher.publish("news.x", Event(data="y"))
    await publisher.publish("news.x", Event(data="z"))
    eu = await publisher.publish("news.eu", Event(data="y"))
    resumed, again = await real_watch(broker, marker)
    assert again.history_lost is None
    assert resumed.calls == [
        ("news.x", just_before(first), None),
        ("news.eu", just_before(eu), None),
    ]
    for since, lost in [("nonsense", "malformed"), ("99999999999999-0", "unknown")]:
        nothing, other = await real_watch(broker, since)
        assert (nothing.calls, other.history_lost) == ([], lost)
        other.cancel()
    again.cancel()


@pytest_twisted.ensureDeferred
async def test_fanin_resumes_exactly(brokers: Make) -> None:
    """
    Against the real Redis: ``news.*`` on one broker, events of
    ``news.eu`` and ``news.eu.fr`` published through another arrive;
    cancelled, more published (on a new channel ``news.x`` too), a new
    fan-in from the cursor gets exactly the events missed, once each.
    """
    publisher, broker = await brokers(), await brokers()
    client = await Client(broker, ["news.*"]).open()
    for channel, data in [("news.eu", "1"), ("news.eu.fr", "2"), ("news.eu", "3")]:
        await publisher.publish(channel, Event(data=data))
    await _helpers.until(lambda: len(client.seen()) == 3, "three events")
    # In order per channel (a channel found later may come after).
    assert sorted(client.seen(), key=lambda seen: seen[0]) == [
        ("news.eu", "1"),
        ("news.eu", "3"),
        ("news.eu.fr", "2"),
    ]
    cursor = client.cursor
    client.fanin.cancel()
    assert broker.watches.position is None
    missed = [("news.eu.fr", "4"), ("news.x", "5"), ("newsroom", "no")]
    missed += [("news.eu", "6"), ("news.x", "7")]
    for channel, data in missed:
        await publisher.publish(channel, Event(data=data))
    resumed = await Client(broker, ["news.*"], cursor).open()
    assert resumed.fanin.losses == {}
    await publisher.publish("news.eu.fr", Event(data="8"))
    expected = [
        ("news.eu.fr", "4"),
        ("news.x", "5"),
        ("news.eu", "6"),
        ("news.x", "7"),
        ("news.eu.fr", "8"),
    ]
    await _helpers.until(lambda: len(resumed.seen()) >= 5, "the missed events")
    # Nothing more comes (no duplicate on its way).
    await _helpers.sleep(0.2)
    resumed.fanin.cancel()
    assert sorted(resumed.seen()) == sorted(expected)
    for channel in ["news.eu", "news.eu.fr", "news.x"]:
        assert [data for name, data in resumed.seen() if name == channel] == [
            data for name, data in expected if name == channel
        ]


class HubProcessTests(SynchronousTestCase):
    """``GET /subscribe?channel=news.*`` on ``twistd sse --broker redis://``."""

    def setUp(self) -> None:
        tools.need(tools.unavailable_reason())
        self.name = f"w{uuid.uuid4().hex[:12]}"
        broker = f"redis://{tools.REDIS_HOST}:{tools.REDIS_PORT}/{tools.REDIS_DB}"
        self.server = Twistd("--broker", broker, "--publish-token", "t", "--drain", "0")
        self.addCleanup(self.forget)
        self.server.start()
        self.addCleanup(self.server.stop)
        deadline = time.monotonic() + 15
        while not self.healthy():
            if time.monotonic() > deadline:
                self.fail(self.server.output.decode(errors="replace"))
            time.sleep(0.05)

    def forget(self) -> None:
        """Delete this test's channels, and their names from the index."""
        for channel in ["eu", "eu.fr", "x"]:
            name = f"{self.name}.{channel}"
            for command in [
                ("DEL", f"sse:{name}", f"sse:{name}#epoch"),
                ("ZREM", "sse:#names", name),
            ]:
                tools.command(
                    tools.REDIS_PORT, *command, host=tools.REDIS_HOST, db=tools.REDIS_DB
                )

    def healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.server.port}/healthz"
            with urllib.request.urlopen(url, timeout=5) as answer:
                return int(answer.status) == 200
        except OSError:
            return False

    def publish(self, channel: str, data: str) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.server.port}/channels/{self.name}.{channel}",
            data=data.encode(),
            headers={"Authorization": "Bearer t", "Content-Type": "text/plain"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def subscribe(self, *headers: str) -> SocketClient:
        response = SocketClient(
            self.server.port,
            http_request(f"/subscribe?channel={self.name}.*", *headers),
        )
        self.addCleanup(response.close)
        self.assertEqual(response.code, 200)
        response.read_frame()  # the first frame: subscribed
        return response

    def test_pattern_and_resume(self) -> None:
        """Patterns work on Redis; a resume gets exactly what was missed."""
        first = self.subscribe()
        self.publish("eu", "1")
        self.publish("eu.fr", "2")
        first.wait_for(lambda response: len(response.events) >= 2, 10)
        self.assertEqual(
            [(e.type, e.data) for e in first.events],
            [(f"{self.name}.eu", "1"), (f"{self.name}.eu.fr", "2")],
        )
        cursor = first.events[-1].last_event_id
        first.close()
        self.publish("x", "3")
        self.publish("eu", "4")
        again = self.subscribe(f"Last-Event-ID: {cursor}")
        again.wait_for(lambda response: len(response.events) >= 2, 10)
        self.assertEqual(
            [(e.type, e.data) for e in again.events],
            [(f"{self.name}.x", "3"), (f"{self.name}.eu", "4")],
        )
        self.assertIsNone(again.header("SSE-History-Lost"))


class LossCursorTests(WatchTestCase):
    """
    A channel found after opening whose replay is trimmed: a cursor written
    before its loss event still holds what the client holds.
    """

    def test_cursor_before_loss_written(self) -> None:
        """Resuming from it gets the events or a loss, never neither."""
        broker, publisher = self.broker(history=10), self.broker(history=10)
        opening = Client(broker, ["a", "news.*"]).open()
        self.clock.advance(0)
        client = self.successResultOf(opening)
        client.waiting = []  # the client stops reading: events queue
        self.redis.lagging = True
        self.publish_lagging(publisher, "a", "a1")
        for n in range(30):
            self.publish_lagging(publisher, "news.eu", str(n))
        self.redis.answer_all()
        self.clock.advance(0)
        self.redis.answer_all()
        keys = [p.key for p in client.waiting]
        first = client.waiting[0]
        self.assertEqual(first.channel, "a")
        client.frames.append(client.fanin.encode(first)[0])  # only a1 written
        cursor = client.cursor
        client.fanin.cancel()
        resumed = Client(broker, ["a", "news.*"], cursor).open()
        self.clock.advance(0)
        again = self.successResultOf(resumed)
        got = [(e.type, e.data) for e in again.events]
        # Either the news.eu events or a loss for news.eu must reach the client.
        self.assertTrue(
            any(name == "news.eu" for name, _ in again.seen())
            or "news.eu" in again.fanin.losses
            or any(
                e.type == "history-lost" and "news.eu" in e.data for e in again.events
            ),
            (got, again.fanin.losses, keys),
        )
