"""
Tests for L{MemoryBroker.watch}: the channels under a prefix, told before
their first event reaches anyone (live) or found again from a marker, with
the position from which a subscription misses none of their events, or the
reason some are lost.
"""

from __future__ import annotations

from attrs import define, field
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_sse._broker import (
    HISTORY_LOST_EVENT,
    Found,
    IPatternBroker,
    Subscription,
    Watch,
)
from twisted_sse._event import Event
from twisted_sse._memory import MemoryBroker
from twisted_sse.testing import assert_no_leaks

from ._helpers import EPOCH, Collector


class Told:
    """A ``found`` callback that records what it is told."""

    def __init__(self) -> None:
        self.told: list[tuple[str, str, str | None]] = []

    def __call__(self, channel: str, position: str, lost: str | None) -> None:
        self.told.append((channel, position, lost))

    @property
    def channels(self) -> list[str]:
        return [channel for channel, _, _ in self.told]


class WatchTestCase(SynchronousTestCase):
    """A memory broker on a clock, and helpers."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = MemoryBroker(clock=self.clock, epoch=EPOCH)

    def publish(self, channel: str, data: str = "x") -> str:
        return self.successResultOf(self.broker.publish(channel, Event(data=data)))

    def watch(self, prefix: str = "a.", since: str | None = None) -> tuple[Told, Watch]:
        """A watch recording what it is told, cancelled after the test."""
        told = Told()
        return told, self.watch_with(told, prefix, since)

    def watch_with(
        self, found: Found, prefix: str = "a.", since: str | None = None
    ) -> Watch:
        """A watch telling ``found``, cancelled after the test."""
        watching = self.broker.watch(prefix, found, since)
        self.addCleanup(watching.cancel)
        return watching

    def subscribe(self, channel: str, last_event_id: str | None = None) -> Collector:
        collector = Collector()
        subscription = self.successResultOf(
            self.broker.subscribe(channel, collector, last_event_id)
        )
        self.addCleanup(subscription.cancel)
        return collector


class LiveTests(WatchTestCase):
    """A watch tells of each channel under its prefix as it gets an event."""

    def test_provides(self) -> None:
        """MemoryBroker provides IPatternBroker."""
        self.assertTrue(verifyObject(IPatternBroker, self.broker))

    def test_found_before_subscribers(self) -> None:
        """
        ``found`` is called before the event reaches any subscriber, with
        the id of the event before it; subscribing from there, in
        ``found``, gets that event, once.
        """
        first = self.publish("a.x", "1")
        early = self.subscribe("a.x")
        seen: list[tuple[str, str, str | None, int]] = []
        late: list[Collector] = []

        def found(channel: str, position: str, lost: str | None) -> None:
            seen.append((channel, position, lost, len(early.got)))
            late.append(self.subscribe(channel, position))

        watching = self.watch_with(found)
        self.assertEqual(watching.prefix, "a.")
        self.assertIsNone(watching.history_lost)
        second = self.publish("a.x", "2")
        self.assertEqual(seen, [("a.x", first, None, 0)])
        self.assertEqual(early.ids, [second])
        [collector] = late
        self.assertEqual(collector.ids, [second])
        third = self.publish("a.x", "3")
        self.assertEqual(collector.ids, [second, third])

    def test_new_channel(self) -> None:
        """A channel's first event: found with the channel's zero position."""
        told, _ = self.watch()
        event_id = self.publish("a.new")
        self.assertEqual(told.told, [("a.new", f"{EPOCH}-0", None)])
        self.assertEqual(event_id, f"{EPOCH}-1")

    def test_once_per_channel(self) -> None:
        """Each channel is told once per watch, however many events it gets."""
        told, _ = self.watch()
        other, _ = self.watch()
        for channel in ["a.x", "a.y", "a.x", "a.x", "a.y.z", "a.y"]:
            self.publish(channel)
        self.assertEqual(told.channels, ["a.x", "a.y", "a.y.z"])
        self.assertEqual(other.channels, ["a.x", "a.y", "a.y.z"])

    def test_depth(self) -> None:
        """
        A prefix matches names that start with it, at any depth: ``a.``
        matches ``a.b`` and ``a.b.c``, not ``a`` nor ``ab.c``.
        """
        under_a, _ = self.watch("a.")
        under_ab, _ = self.watch("a.b.")
        for channel in ["a", "ab", "ab.c", "a.b", "a.b.c", "a.b.c.d", "b.a.x"]:
            self.publish(channel)
        self.assertEqual(under_a.channels, ["a.b", "a.b.c", "a.b.c.d"])
        self.assertEqual(under_ab.channels, ["a.b.c", "a.b.c.d"])

    def test_marker(self) -> None:
        """
        The marker is how far the watch has got: it moves with every
        publish, of any channel, and a later watch goes on from it.
        """
        _, first = self.watch()
        self.assertEqual(first.marker, f"{EPOCH}-0")
        self.publish("b.x")
        self.assertEqual(first.marker, f"{EPOCH}-1")
        self.publish("a.x")
        _, second = self.watch()
        self.assertEqual(first.marker, f"{EPOCH}-2")
        self.assertEqual(second.marker, first.marker)
        told, third = self.watch(since=first.marker)
        self.assertEqual(told.told, [])
        self.assertIsNone(third.history_lost)

    def test_cancel(self) -> None:
        """A cancelled watch is told nothing more; cancel twice is fine."""
        told, watching = self.watch()
        other, _ = self.watch()
        self.publish("a.x")
        watching.cancel()
        watching.cancel()
        self.publish("a.y")
        self.publish("a.x")
        self.assertEqual(told.channels, ["a.x"])
        self.assertEqual(other.channels, ["a.x", "a.y"])

    def test_cancel_last(self) -> None:
        """With every watch cancelled, a publish tells nothing."""
        told, watching = self.watch()
        watching.cancel()
        self.publish("a.x")
        self.assertEqual(told.told, [])

    def test_untouched(self) -> None:
        """
        A publish on a channel with no dot, or under no watched prefix,
        does not call any watch's ``found``.
        """
        calls: list[str] = []

        def counting(channel: str, position: str, lost: str | None) -> None:
            calls.append(channel)

        self.watch_with(counting, "a.")
        self.watch_with(counting, "a.b.")
        self.watch_with(counting, "x.y.")
        for channel in ["a", "ab", "abc", "b", "b.a", "x", "x.z", "xy.a", "z.a.b"]:
            self.publish(channel)
        self.assertEqual(calls, [])
        self.publish("a.c")
        self.assertEqual(calls, ["a.c"])

    def test_invalid_prefix(self) -> None:
        """A prefix that is not a channel name and a dot is refused."""
        for prefix in ["", ".", "a", "a.*", "a.*.", "-a.", " a.", "a b.", "é.", "*."]:
            with self.assertRaises(ValueError, msg=prefix):
                self.broker.watch(prefix, Told())
        with self.assertRaises(ValueError):
            self.broker.watch("x" * 129 + ".", Told())
        self.broker.watch("x" * 128 + ".", Told()).cancel()

    def test_failing_found(self) -> None:
        """
        A ``found`` that raises is logged; the event still reaches its
        subscribers and the other watches.
        """

        def failing(channel: str, position: str, lost: str | None) -> None:
            raise RuntimeError("boom")

        self.watch_with(failing)
        told, _ = self.watch()
        collector = self.subscribe("a.x")
        event_id = self.publish("a.x")
        self.assertEqual(collector.ids, [event_id])
        self.assertEqual(told.channels, ["a.x"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class SinceTests(WatchTestCase):
    """A watch from a marker finds the channels with events after it."""

    def test_scan(self) -> None:
        """
        Exactly the channels under the prefix with events after the marker
        are found, before ``watch`` returns, each with the id just before
        its first such event.
        """
        for channel in ["a.x", "a.x", "a.y", "a.old", "b.x", "a"]:
            self.publish(channel)
        _, first = self.watch()
        since = first.marker
        first.cancel()
        x2 = self.publish("a.x")
        self.publish("a.x")
        y1 = self.publish("a.y")
        self.publish("b.x")
        self.publish("a")
        self.publish("a.new.deep")
        told, second = self.watch(since=since)
        self.assertIsNone(second.history_lost)
        self.assertEqual(
            sorted(told.told),
            [
                ("a.new.deep", f"{EPOCH}-0", None),
                ("a.x", f"{EPOCH}-2", None),
                ("a.y", f"{EPOCH}-1", None),
            ],
        )
        self.assertEqual((x2, y1), (f"{EPOCH}-3", f"{EPOCH}-2"))
        # Found ones are not told again; the others are, live.
        self.publish("a.x")
        self.publish("a.old")
        self.assertEqual(told.channels[-1:], ["a.old"])
        self.assertEqual(len(told.told), 4)

    def test_scan_positions_resume(self) -> None:
        """Subscribing from each position found gets exactly what followed."""
        self.publish("a.x", "before")
        since = self.watch()[1].marker
        self.publish("a.x", "x1")
        self.publish("a.y", "y1")
        self.publish("a.x", "x2")
        got: dict[str, Collector] = {}

        def found(channel: str, position: str, lost: str | None) -> None:
            self.assertIsNone(lost)
            got[channel] = self.subscribe(channel, position)

        self.watch_with(found, since=since)
        self.assertEqual(got["a.x"].data, ["x1", "x2"])
        self.assertEqual(got["a.y"].data, ["y1"])

    def test_current_marker(self) -> None:
        """From a marker with nothing after it: nothing found."""
        self.publish("a.x")
        _, first = self.watch()
        told, second = self.watch(since=first.marker)
        self.assertEqual(told.told, [])
        self.assertIsNone(second.history_lost)
        self.assertEqual(second.marker, first.marker)

    def test_malformed(self) -> None:
        """A marker that cannot be read: "malformed", and live from now."""
        self.publish("a.x")
        for since in ["", "garbage", "1-2-3", f"{EPOCH}", "~AQ", f"{EPOCH}-x"]:
            told, watching = self.watch(since=since)
            self.assertEqual(watching.history_lost, "malformed", since)
            self.assertEqual(told.told, [])
            watching.cancel()
        told, _ = self.watch(since="garbage")
        self.publish("a.x")
        self.assertEqual(told.channels, ["a.x"])

    def test_unknown(self) -> None:
        """
        A marker of another broker or run, or beyond this broker's order:
        "unknown", and live from now.
        """
        self.publish("a.x")
        self.publish("a.y")
        for since in [f"{EPOCH - 1}-0", f"{EPOCH + 1}-1", f"{EPOCH}-3", "0-0"]:
            told, watching = self.watch(since=since)
            self.assertEqual(watching.history_lost, "unknown", since)
            self.assertEqual(told.told, [])
            watching.cancel()
        _, known = self.watch(since=f"{EPOCH}-2")
        self.assertIsNone(known.history_lost)

    def test_trimmed(self) -> None:
        """
        A channel trimmed past the marker: "trimmed", with the position
        where what is kept begins (a subscription from it replays it).
        """
        self.broker = MemoryBroker(history=2, clock=self.clock, epoch=EPOCH)
        self.publish("a.x", "x0")
        self.publish("a.y", "y0")
        since = self.watch()[1].marker
        for index in range(1, 5):
            self.publish("a.x", f"x{index}")
        self.publish("a.y", "y1")
        self.publish("a.y", "y2")
        got: dict[str, Collector] = {}
        told = Told()

        def found(channel: str, position: str, lost: str | None) -> None:
            told(channel, position, lost)
            got[channel] = self.subscribe(channel, position)

        second = self.watch_with(found, since=since)
        self.assertIsNone(second.history_lost)
        self.assertEqual(
            sorted(told.told),
            [("a.x", f"{EPOCH}-3", "trimmed"), ("a.y", f"{EPOCH}-1", None)],
        )
        self.assertEqual(got["a.x"].data, ["x3", "x4"])
        self.assertEqual(got["a.y"].data, ["y1", "y2"])

    def test_forgotten_by_ttl(self) -> None:
        """A channel forgotten (its TTL passed) after the marker: "unknown"."""
        self.broker = MemoryBroker(channel_ttl=10, clock=self.clock, epoch=EPOCH)
        since = self.watch()[1].marker
        self.publish("a.x")
        self.publish("a.kept")
        self.clock.advance(20)
        self.publish("b")  # the broker is used: the idle channels go
        self.assertNotIn("a.x", self.broker.channel_names())
        told, second = self.watch(since=since)
        self.assertIsNone(second.history_lost)
        self.assertEqual(
            sorted(told.told), [("a.kept", "", "unknown"), ("a.x", "", "unknown")]
        )

    def test_forgotten_then_made_again(self) -> None:
        """
        A channel forgotten after the marker, then made again: "unknown",
        with the position from which its new events replay.
        """
        self.broker = MemoryBroker(channel_ttl=10, clock=self.clock, epoch=EPOCH)
        since = self.watch()[1].marker
        self.publish("a.x", "lost")
        self.clock.advance(20)
        new = self.publish("a.x", "new")
        self.assertFalse(new.startswith(f"{EPOCH}-"))
        got: list[Collector] = []
        told = Told()

        def found(channel: str, position: str, lost: str | None) -> None:
            told(channel, position, lost)
            got.append(self.subscribe(channel, position))

        self.watch_with(found, since=since)
        [(channel, position, lost)] = told.told
        self.assertEqual((channel, lost), ("a.x", "unknown"))
        self.assertEqual(position.split("-")[0], new.split("-")[0])
        self.assertEqual(got[0].data, ["new"])

    def test_forgotten_by_total(self) -> None:
        """
        A channel whose whole history went to keep ``history_total`` (and
        so was forgotten): "unknown".
        """
        frame = len(
            Event(data="x", id=f"{EPOCH}-1").encode()
        )  # about the size of each event kept
        self.broker = MemoryBroker(
            history_total=frame * 2, clock=self.clock, epoch=EPOCH
        )
        since = self.watch()[1].marker
        self.publish("a.x")
        for _ in range(3):
            self.publish("b.y")
        self.assertNotIn("a.x", self.broker.channel_names())
        told, _ = self.watch(since=since)
        self.assertEqual(told.told, [("a.x", "", "unknown")])

    def test_forgotten_before_marker(self) -> None:
        """A channel forgotten before the marker is not found."""
        self.broker = MemoryBroker(channel_ttl=10, clock=self.clock, epoch=EPOCH)
        self.publish("a.x")
        self.clock.advance(20)
        self.publish("b")
        _, first = self.watch()
        told, _ = self.watch(since=first.marker)
        self.assertEqual(told.told, [])

    def test_cancel_after_scan(self) -> None:
        """A watch from a marker, cancelled, is told nothing live."""
        since = self.watch()[1].marker
        self.publish("a.x")
        told, second = self.watch(since=since)
        second.cancel()
        self.publish("a.y")
        self.assertEqual(told.channels, ["a.x"])


# The state machine: any interleaving of publishes, watches (fresh, from a
# marker some watch gave earlier, or from a marker that cannot be read),
# cancels, trims and forgetting loses no event silently.

_CHANNELS = ["a.x", "a.y", "a.b", "a.b.z", "a", "ab.c", "b.x"]
_PREFIXES = ["a.", "a.b."]


@define(eq=False)
class _Found:
    position: str
    lost: str | None
    collector: Collector
    subscription: Subscription


@define(eq=False)
class _Watched:
    prefix: str
    #: Events published when it began, and those after which it must tell
    #: every channel with an event.
    began: int
    covers_from: int
    watch: Watch | None = None
    ended: int | None = None
    #: Its marker when it was cancelled.
    marker_at_end: str = ""
    found: dict[str, _Found] = field(factory=dict)


@define(frozen=True)
class _Marker:
    """A watch's marker, as a client keeps it, and how far the log was."""

    prefix: str
    marker: str
    published: int


class WatchMachine(RuleBasedStateMachine):
    """Watches over a small, forgetful broker."""

    watches = Bundle("watches")
    markers = Bundle("markers")

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        # Two events per channel, about four over all, and channels idle
        # for ten seconds forgotten.
        self.broker = MemoryBroker(
            history=2, history_total=120, channel_ttl=10, clock=self.clock, epoch=EPOCH
        )
        #: Every event published: its channel and id, in order.
        self.log: list[tuple[str, str]] = []
        self.all: list[_Watched] = []

    def _start(self, prefix: str, since: str | None, covers_from: int) -> _Watched:
        watched = _Watched(prefix, len(self.log), covers_from)

        def found(channel: str, position: str, lost: str | None) -> None:
            assert channel.startswith(prefix), (channel, prefix)
            assert channel not in watched.found, f"{channel} told twice"
            collector = Collector()
            subscription = self.broker.subscribe_now(
                channel, collector, position or None
            )
            assert subscription is not None
            if lost is None:
                assert subscription.history_lost is None, (channel, position)
            watched.found[channel] = _Found(position, lost, collector, subscription)

        watching = self.broker.watch(prefix, found, since)
        watched.watch = watching
        if watching.history_lost is not None:
            # Nothing can be told from the marker: live from now.
            watched.covers_from = watched.began
        self.all.append(watched)
        return watched

    @rule(channel=st.sampled_from(_CHANNELS), data=st.sampled_from(["d", "dd" * 20]))
    def publish(self, channel: str, data: str) -> None:
        event_ids: list[str] = []
        self.broker.publish(channel, Event(data=data)).addCallback(event_ids.append)
        self.log.append((channel, event_ids[0]))

    @rule(channels=st.lists(st.sampled_from(_CHANNELS), min_size=2, max_size=8))
    def publish_several(self, channels: list[str]) -> None:
        for channel in channels:
            self.publish(channel, "d")

    @rule(target=watches, prefix=st.sampled_from(_PREFIXES))
    def watch(self, prefix: str) -> _Watched:
        return self._start(prefix, None, len(self.log))

    @rule(target=markers, watched=watches)
    def keep_marker(self, watched: _Watched) -> _Marker:
        """A client keeps the marker of a watch (not yet cancelled)."""
        assert watched.watch is not None
        ended = watched.ended
        if ended is not None:
            # Where it was when cancelled.
            return _Marker(watched.prefix, watched.marker_at_end, ended)
        return _Marker(watched.prefix, watched.watch.marker, len(self.log))

    @rule(target=watches, kept=markers)
    def rewatch(self, kept: _Marker) -> _Watched:
        """Watch again from a marker kept earlier, as a client resumes."""
        return self._start(kept.prefix, kept.marker, kept.published)

    @rule(
        target=watches,
        prefix=st.sampled_from(_PREFIXES),
        since=st.sampled_from(["nonsense", f"{EPOCH - 1}-0", f"{EPOCH}-999999"]),
    )
    def watch_unreadable(self, prefix: str, since: str) -> _Watched:
        watched = self._start(prefix, since, len(self.log))
        assert watched.watch is not None
        assert watched.watch.history_lost in ("malformed", "unknown")
        return watched

    @rule(watched=watches)
    def cancel(self, watched: _Watched) -> None:
        if watched.ended is not None:
            return
        assert watched.watch is not None
        watched.marker_at_end = watched.watch.marker
        watched.watch.cancel()
        watched.ended = len(self.log)
        for found in watched.found.values():
            found.subscription.cancel()

    @rule(seconds=st.sampled_from([1, 6, 20]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def nothing_lost_silently(self) -> None:
        """
        Every event of a channel under a watch's prefix published after
        where the watch tells from (and before it was cancelled) reached
        the subscription made from where it was found, once and in order;
        or a loss was reported for it, and what did arrive is exactly the
        rest.
        """
        for watched in self.all:
            end = len(self.log) if watched.ended is None else watched.ended
            window = self.log[watched.covers_from : end]
            for channel in _CHANNELS:
                if not channel.startswith(watched.prefix):
                    continue
                expected = [eid for name, eid in window if name == channel]
                found = watched.found.get(channel)
                if found is None:
                    assert not expected, (channel, expected, "never found")
                    continue
                got = found.collector.got
                assert all(p.key != HISTORY_LOST_EVENT for p in got), got
                ids = [published.id for published in got]
                if found.lost is None:
                    assert ids == expected, (channel, ids, expected)
                else:
                    assert ids == expected[len(expected) - len(ids) :], (
                        channel,
                        found.lost,
                        ids,
                        expected,
                    )

    def teardown(self) -> None:
        for watched in self.all:
            if watched.watch is not None:
                watched.watch.cancel()
            for found in watched.found.values():
                found.subscription.cancel()


class StateMachineTests(SynchronousTestCase):
    """Watches lose no event silently, whatever happens around them."""

    def test_machine(self) -> None:
        """The state machine above, run over many interleavings."""
        run_state_machine_as_test(
            WatchMachine,
            settings=settings(max_examples=150, stateful_step_count=40, deadline=None),
        )


class MarkerAfterCancel(WatchTestCase):
    def test_marker_stops_at_cancel(self) -> None:
        """A cancelled watch is told nothing more: its marker must not move."""
        _, watching = self.watch()
        self.publish("b.x")
        watching.cancel()
        kept = watching.marker
        self.publish("a.x")
        told, _ = self.watch(since=watching.marker)
        self.assertEqual(told.channels, ["a.x"])
        self.assertEqual(watching.marker, kept)


class LeakCheckTests(SynchronousTestCase):
    """assert_no_leaks names a watch left behind, and passes once it is cancelled."""

    def test_watch_left(self) -> None:
        broker = MemoryBroker(clock=Clock())
        watching = broker.watch("news.", lambda *_: None)
        self.assertEqual(broker.watch_prefixes(), {"news.": 1})
        with self.assertRaises(AssertionError) as raised:
            assert_no_leaks(brokers=[broker])
        self.assertIn("1 watch(es) left on prefix 'news.'", str(raised.exception))
        watching.cancel()
        self.assertEqual(broker.watch_prefixes(), {})
        assert_no_leaks(brokers=[broker])
