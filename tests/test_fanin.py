"""
Tests for L{twisted_sse._fanin}: what a subscription to several channels
names (L{parse_selection}), and how L{Fanin} brings their events together
over a real in-memory broker: exact resume per channel from one cursor,
per-channel losses, patterns, the channel named on each event, and
cancellation.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_sse._broker import (
    HISTORY_LOST_EVENT,
    Deliver,
    IBroker,
    Published,
    Subscription,
)
from twisted_sse._cursor import decode_cursor, encode_cursor
from twisted_sse._event import Event, MessageEvent
from twisted_sse._fanin import (
    DEFAULT_MAX_SUBSCRIPTIONS,
    Fanin,
    Selection,
    parse_selection,
)
from twisted_sse._memory import MemoryBroker
from twisted_sse.testing import assert_no_leaks, parse_events

from ._helpers import EPOCH


class ParseSelectionTests(SynchronousTestCase):
    """L{parse_selection} takes channels and patterns, each once, sorted."""

    def refused(self, names: list[str], **kwargs: Any) -> str:
        """The message of the ValueError ``names`` is refused with."""
        with self.assertRaises(ValueError) as caught:
            parse_selection(names, **kwargs)
        return str(caught.exception)

    def test_channels_and_patterns(self) -> None:
        """Channels and patterns, each sorted; names lists both."""
        selection = parse_selection(["c", "news.*", "a", "b.*", "b"])
        self.assertEqual(selection, Selection(("a", "b", "c"), ("b.*", "news.*")))
        self.assertEqual(selection.names, ("a", "b", "c", "b.*", "news.*"))

    def test_deduplicated(self) -> None:
        """A name given twice counts once."""
        selection = parse_selection(["a", "b", "a", "x.*", "x.*", "b"])
        self.assertEqual(selection, Selection(("a", "b"), ("x.*",)))

    def test_order_does_not_matter(self) -> None:
        """The same names in another order make the same selection."""
        self.assertEqual(
            parse_selection(["b", "a.*", "a"]), parse_selection(["a", "a.*", "b"])
        )

    def test_every_channel_refused(self) -> None:
        """``*`` alone (every channel) is refused, naming it."""
        message = self.refused(["a", "*"])
        self.assertIn("'*'", message)

    def test_invalid_patterns(self) -> None:
        """
        A ``*`` that does not follow a valid channel name and a dot, or a
        ``*`` elsewhere than at the end, is refused, naming the name.
        """
        for name in [
            "news*",
            "news.**",
            ".*",
            "-a.*",
            "a b.*",
            "*.*",
            "x" * 129 + ".*",
        ]:
            self.assertIn(repr(name), self.refused(["a", name]), name)
        for name in ["news.*.x", "*.news", "a*b"]:
            self.assertIn(repr(name), self.refused(["a", name]), name)

    def test_invalid_channels(self) -> None:
        """An invalid channel name is refused, naming it."""
        for name in ["a b", "-a", "_a", ".a", "a/b", "é", "a\n", "x" * 129]:
            self.assertIn(repr(name), self.refused(["ok", name]), name)

    def test_longest_names(self) -> None:
        """A 128-character channel, and a pattern of one, are taken."""
        channel = "x" * 128
        self.assertEqual(
            parse_selection([channel, channel + ".*"]),
            Selection((channel,), (channel + ".*",)),
        )

    def test_empty_name(self) -> None:
        """An empty name is refused as such."""
        self.assertIn("empty channel name", self.refused(["a", ""]))

    def test_no_names(self) -> None:
        """No name at all is refused."""
        self.assertIn("no channel", self.refused([]))

    def test_limit(self) -> None:
        """
        At most ``max_subscriptions`` different names (channels and
        patterns together); one more is refused, naming the count and the
        limit.  Duplicates count once.
        """
        self.assertEqual(DEFAULT_MAX_SUBSCRIPTIONS, 32)
        names = [f"c{index}" for index in range(30)] + ["p.*", "q.*"]
        self.assertEqual(len(parse_selection(names).names), 32)
        self.assertEqual(len(parse_selection([*names, "c0", "p.*"]).names), 32)
        message = self.refused([*names, "one-more"])
        self.assertIn("33", message)
        self.assertIn("32", message)
        self.assertIn("4", self.refused(["a", "b", "c", "d.*"], max_subscriptions=3))
        self.assertEqual(
            parse_selection(["a", "b", "c"], max_subscriptions=3).channels,
            ("a", "b", "c"),
        )


class Stream:
    """
    A fan-in delivering into a list, and what its client has been sent:
    the frames :meth:`write` encoded so far.
    """

    def __init__(
        self,
        broker: MemoryBroker,
        names: list[str] | Selection,
        last_event_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.delivered: list[Published] = []
        selection = names if isinstance(names, Selection) else parse_selection(names)
        self.fanin = Fanin(
            broker, selection, last_event_id, self.delivered.append, **kwargs
        )
        self.frames: list[bytes] = []
        self.keys: list[str] = []
        self.written = 0

    def open(self, testcase: SynchronousTestCase) -> Stream:
        """Open the fan-in (the memory broker answers at once)."""
        opened = testcase.successResultOf(self.fanin.open())
        testcase.assertIs(opened, self.fanin)
        self.frames.extend(self.fanin.opening_frames(1000))
        return self

    def write(self) -> list[MessageEvent]:
        """Encode what was delivered since last time; the client's events."""
        start = len(self.frames)
        for published in self.delivered[self.written :]:
            frame, key = self.fanin.encode(published)
            self.frames.append(frame)
            self.keys.append(key)
        self.written = len(self.delivered)
        return parse_events(b"".join(self.frames[start:]))

    def events(self) -> list[MessageEvent]:
        """Every event the client was sent."""
        return parse_events(b"".join(self.frames))


def by_channel(events: list[MessageEvent]) -> dict[str, list[str]]:
    """The data of ``events`` (typed by their channel), by channel."""
    found: dict[str, list[str]] = {}
    for event in events:
        found.setdefault(event.type, []).append(event.data)
    return found


def losses_of(event: MessageEvent) -> dict[str, Any]:
    """The data of a ``history-lost`` event."""
    assert event.type == HISTORY_LOST_EVENT, event
    loaded: dict[str, Any] = json.loads(event.data)
    return loaded


class FaninTestCase(SynchronousTestCase):
    """A memory broker on a clock, and helpers."""

    def setUp(self) -> None:
        self.broker = MemoryBroker(clock=Clock(), epoch=EPOCH)

    def publish(
        self,
        channel: str,
        data: str,
        event: str | None = None,
        key: str | None = None,
        broker: MemoryBroker | None = None,
    ) -> str:
        broker = self.broker if broker is None else broker
        return self.successResultOf(
            broker.publish(channel, Event(data=data, event=event), key)
        )

    def stream(
        self, names: list[str] | Selection, last_event_id: str | None = None, **kw: Any
    ) -> Stream:
        stream = Stream(self.broker, names, last_event_id, **kw).open(self)
        self.addCleanup(stream.fanin.cancel)
        return stream


class ResumeTests(FaninTestCase):
    """One cursor resumes every channel exactly."""

    def interrupted(self, names: list[str]) -> str:
        """
        A stream over ``names`` that was sent some events, then was given
        one more (not written) when its client went away: its last cursor.
        """
        self.publish("a", "a1")
        self.publish("b", "b1")
        first = self.stream(names)
        self.publish("a", "a2")
        self.publish("b", "b2")
        self.publish("a", "a3")
        sent = {"a": ["a2", "a3"], "b": ["b2"]}
        self.assertEqual(
            by_channel(first.write()),
            {name: data for name, data in sent.items() if name in names},
        )
        cursor = first.fanin.cursor
        self.assertEqual(first.events()[-1].last_event_id, cursor)
        # Delivered by the broker, not written to the client.
        self.publish("b", "b3")
        self.assertEqual(len(first.delivered), first.written + ("b" in names))
        first.fanin.cancel()
        self.publish("a", "a4")
        self.publish("b", "b4")
        self.publish("a", "a5")
        return cursor

    def test_exact(self) -> None:
        """
        Resuming from the cursor of the last event written replays exactly
        what each channel missed, in order, then goes on live.
        """
        cursor = self.interrupted(["a", "b"])
        second = self.stream(["a", "b"], cursor)
        self.assertEqual(second.fanin.losses, {})
        self.assertEqual(
            by_channel(second.write()), {"a": ["a4", "a5"], "b": ["b3", "b4"]}
        )
        self.publish("b", "b5")
        self.publish("a", "a6")
        self.assertEqual(by_channel(second.write()), {"b": ["b5"], "a": ["a6"]})
        self.assertEqual(second.fanin.replayed, 4)
        second.fanin.cancel()
        self.assertEqual(second.fanin.replayed, 4)

    def test_other_order(self) -> None:
        """A list in another order resumes the same."""
        cursor = self.interrupted(["a", "b"])
        unsorted = Selection(("b", "a"), ())
        for selection in (parse_selection(["b", "a"]), unsorted):
            again = self.stream(selection, cursor)
            self.assertEqual(again.fanin.losses, {})
            self.assertEqual(
                by_channel(again.write()), {"a": ["a4", "a5"], "b": ["b3", "b4"]}
            )
            again.fanin.cancel()

    def test_every_cursor(self) -> None:
        """
        Every cursor the client was sent, the opening one included, resumes
        exactly after the event that carried it.
        """
        self.publish("a", "a0")
        first = self.stream(["a", "b"])
        for index in range(1, 4):
            self.publish("a", f"a{index}")
            self.publish("b", f"b{index}")
        sent = first.write()
        self.assertEqual(len(sent), 6)
        first.fanin.cancel()
        self.assertEqual(parse_events(first.frames[0]), [])
        [opening_cursor] = [
            line[len(b"id: ") :].decode("ascii")
            for line in first.frames[0].split(b"\n")
            if line.startswith(b"id: ")
        ]
        resumed = self.stream(["a", "b"], opening_cursor)
        self.assertEqual(by_channel(resumed.write()), by_channel(sent))
        resumed.fanin.cancel()
        for at, event in enumerate(sent):
            resumed = self.stream(["a", "b"], event.last_event_id)
            expected = by_channel(sent[at + 1 :])
            self.assertEqual(by_channel(resumed.write()), expected, at)
            resumed.fanin.cancel()

    def test_added_channel_starts_live(self) -> None:
        """
        A channel added to the list on reconnect starts live: none of its
        history, no loss, and its next event.
        """
        cursor = self.interrupted(["a"])
        self.publish("c", "c-old")
        second = self.stream(["a", "c"], cursor)
        self.assertEqual(second.fanin.losses, {})
        self.assertEqual(len(second.frames), 1)  # no history-lost
        self.assertEqual(by_channel(second.write()), {"a": ["a4", "a5"]})
        self.publish("c", "c-new")
        self.assertEqual(by_channel(second.write()), {"c": ["c-new"]})

    def test_dropped_channel(self) -> None:
        """A channel left out on reconnect is not followed."""
        cursor = self.interrupted(["a", "b"])
        second = self.stream(["a"], cursor)
        self.assertEqual(by_channel(second.write()), {"a": ["a4", "a5"]})
        self.assertEqual(self.broker.subscriber_count("b"), 0)


class LossTests(FaninTestCase):
    """What cannot be resumed is told, channel by channel."""

    def test_malformed(self) -> None:
        """
        A cursor that cannot be read: every name is "malformed", every
        channel starts live, and the cursor is never sent back.
        """
        self.publish("a", "a1")
        self.publish("news.eu", "n1")
        for garbage in [
            "not-a-cursor",
            "~AQ!!<script>",
            "~" + "A" * 50,
            f"{EPOCH}-1",
            encode_cursor({"a": f"{EPOCH}-1"})[:-3],
        ]:
            stream = self.stream(["a", "b", "news.*"], garbage)
            self.assertEqual(
                stream.fanin.losses,
                {"a": "malformed", "b": "malformed", "news.*": "malformed"},
            )
            self.assertEqual(stream.fanin.lost_header, "malformed")
            [lost] = stream.events()
            self.assertEqual(
                losses_of(lost),
                {
                    "reason": "malformed",
                    "channels": {
                        "a": "malformed",
                        "b": "malformed",
                        "news.*": "malformed",
                    },
                },
            )
            self.publish("a", "a2")
            self.publish("news.eu", "n2")
            self.assertEqual(
                by_channel(stream.write()), {"a": ["a2"], "news.eu": ["n2"]}
            )
            for frame in stream.frames:
                self.assertNotIn(garbage.encode("utf-8"), frame)
            stream.fanin.cancel()

    def test_unknown_epoch(self) -> None:
        """A channel whose position is of another epoch: "unknown", alone."""
        self.publish("a", "a1")
        self.publish("b", "b1")
        self.publish("a", "a2")
        self.publish("b", "b2")
        cursor = encode_cursor({"a": f"{EPOCH - 1}-1", "b": f"{EPOCH}-1"})
        stream = self.stream(["a", "b"], cursor)
        self.assertEqual(stream.fanin.losses, {"a": "unknown"})
        self.assertEqual(stream.fanin.lost_header, "unknown")
        events = stream.write()
        self.assertEqual(
            losses_of(stream.events()[0]),
            {"reason": "unknown", "channels": {"a": "unknown"}},
        )
        self.assertEqual(by_channel(events), {"b": ["b2"]})
        self.publish("a", "a3")
        self.assertEqual(by_channel(stream.write()), {"a": ["a3"]})

    def test_beyond_the_channel(self) -> None:
        """A position after the channel's last event: "unknown"."""
        self.publish("a", "a1")
        self.publish("b", "b1")
        cursor = encode_cursor({"a": f"{EPOCH}-9", "b": f"{EPOCH}-0"})
        stream = self.stream(["a", "b"], cursor)
        self.assertEqual(stream.fanin.losses, {"a": "unknown"})
        self.assertEqual(by_channel(stream.write()), {"b": ["b1"]})

    def test_trimmed(self) -> None:
        """A channel whose history was trimmed past its position: "trimmed"."""
        self.broker = MemoryBroker(history=2, clock=Clock(), epoch=EPOCH)
        self.publish("a", "a1")
        self.publish("b", "b1")
        first = self.stream(["a", "b"])
        self.publish("a", "a2")
        self.publish("b", "b2")
        first.write()
        cursor = first.fanin.cursor
        first.fanin.cancel()
        for index in range(3, 6):
            self.publish("a", f"a{index}")
        self.publish("b", "b3")
        second = self.stream(["a", "b"], cursor)
        self.assertEqual(second.fanin.losses, {"a": "trimmed"})
        self.assertEqual(second.fanin.lost_header, "trimmed")
        self.assertEqual(by_channel(second.write()), {"b": ["b3"]})
        self.assertEqual(
            losses_of(second.events()[0]),
            {"reason": "trimmed", "channels": {"a": "trimmed"}},
        )
        self.publish("a", "a6")
        self.assertEqual(by_channel(second.write()), {"a": ["a6"]})

    def test_several_reasons(self) -> None:
        """Each channel its own reason; the header names each reason once."""
        self.broker = MemoryBroker(history=1, clock=Clock(), epoch=EPOCH)
        for channel in ("a", "b", "c", "d"):
            self.publish(channel, "1")
            self.publish(channel, "2")
        cursor = encode_cursor(
            {"a": f"{EPOCH}-0", "b": "x", "c": f"{EPOCH}-1", "d": f"{EPOCH}-7"}
        )
        stream = self.stream(["a", "b", "c", "d"], cursor)
        self.assertEqual(
            stream.fanin.losses, {"a": "trimmed", "b": "malformed", "d": "unknown"}
        )
        self.assertEqual(
            sorted(stream.fanin.lost_header.split(", ")),
            ["malformed", "trimmed", "unknown"],
        )
        self.assertEqual(by_channel(stream.write()), {"c": ["2"]})

    def test_no_loss_without_cursor(self) -> None:
        """A first connection has no loss, whatever the history."""
        self.publish("a", "a1")
        stream = self.stream(["a", "p.*"])
        self.assertEqual(stream.fanin.losses, {})
        self.assertEqual(stream.fanin.lost_header, "")
        self.assertEqual(len(stream.frames), 1)
        self.assertTrue(stream.frames[0].startswith(b"retry: 1000\nid: ~"))


class PatternTests(FaninTestCase):
    """Patterns follow the channels under them, as they appear."""

    def test_matches(self) -> None:
        """
        ``news.*`` follows news.eu and news.eu.fr (first published after
        the subscription opened), not news nor newsroom.
        """
        for channel in ("news", "newsroom", "news.eu", "other.x"):
            self.publish(channel, "before")
        stream = self.stream(["news.*"])
        self.assertEqual(stream.fanin.followed, [])
        for channel in ("news", "newsroom", "news.eu", "news.eu.fr", "other.x"):
            self.publish(channel, f"{channel} 1")
        for channel in ("news.eu.fr", "news", "news.eu"):
            self.publish(channel, f"{channel} 2")
        self.assertEqual(
            by_channel(stream.write()),
            {
                "news.eu": ["news.eu 1", "news.eu 2"],
                "news.eu.fr": ["news.eu.fr 1", "news.eu.fr 2"],
            },
        )
        self.assertEqual(sorted(stream.fanin.followed), ["news.eu", "news.eu.fr"])
        for channel in ("news", "newsroom", "other.x"):
            self.assertEqual(self.broker.subscriber_count(channel), 0)

    def test_explicit_and_pattern(self) -> None:
        """A channel named and matched by a pattern is followed once."""
        stream = self.stream(["news.eu", "news.*", "news.eu.*"])
        self.publish("news.eu", "1")
        self.publish("news.eu", "2")
        self.publish("news.eu.fr", "3")
        self.assertEqual(
            by_channel(stream.write()), {"news.eu": ["1", "2"], "news.eu.fr": ["3"]}
        )
        self.assertEqual(sorted(stream.fanin.followed), ["news.eu", "news.eu.fr"])
        self.assertEqual(self.broker.subscriber_count("news.eu"), 1)
        self.assertEqual(self.broker.subscriber_count("news.eu.fr"), 1)

    def test_resume(self) -> None:
        """
        Resuming a pattern replays what the channels it followed missed,
        and every event of the channels that appeared meanwhile.
        """
        self.publish("news.eu", "old")
        first = self.stream(["news.*"])
        self.publish("news.eu", "e1")
        self.publish("news.us", "u1")
        first.write()
        cursor = first.fanin.cursor
        self.publish("news.us", "u2")  # delivered, never written
        first.fanin.cancel()
        self.publish("news.eu", "e2")
        self.publish("news.asia", "a1")
        self.publish("news.asia", "a2")
        self.publish("newsroom", "no")
        second = self.stream(["news.*"], cursor)
        self.assertEqual(second.fanin.losses, {})
        self.assertEqual(
            by_channel(second.write()),
            {"news.eu": ["e2"], "news.us": ["u2"], "news.asia": ["a1", "a2"]},
        )
        self.publish("news.asia", "a3")
        self.publish("news.new", "n1")
        self.assertEqual(
            by_channel(second.write()), {"news.asia": ["a3"], "news.new": ["n1"]}
        )

    def test_found_channel_in_cursor(self) -> None:
        """
        A channel a pattern finds is in the cursor from the moment it is
        found, at the position before its first event; the pattern's
        marker moves as events are written.
        """
        stream = self.stream(["news.*"])
        opening = decode_cursor(stream.fanin.cursor)
        assert opening is not None
        self.publish("other", "x")
        before = self.publish("news.eu", "e1")
        self.publish("news.eu", "e2")
        cursor = decode_cursor(stream.fanin.cursor)
        assert cursor is not None
        self.assertEqual(cursor.get("news.eu"), f"{EPOCH}-0")
        stream.write()
        written = decode_cursor(stream.fanin.cursor)
        assert written is not None
        self.assertEqual(written.get("news.eu"), f"{EPOCH}-2")
        self.assertEqual(before, f"{EPOCH}-1")
        self.assertNotEqual(written.get("news.*"), opening.get("news.*"))

    def test_resume_found_channel_trimmed(self) -> None:
        """
        A channel that appeared under a pattern while the client was away,
        and whose first events since are trimmed, is told "trimmed", then
        replayed from what is kept.
        """
        self.broker = MemoryBroker(history=2, clock=Clock(), epoch=EPOCH)
        first = self.stream(["news.*"])
        cursor = first.fanin.cursor
        first.fanin.cancel()
        for index in range(1, 5):
            self.publish("news.eu", f"e{index}")
        second = self.stream(["news.*"], cursor)
        self.assertEqual(second.fanin.losses, {"news.eu": "trimmed"})
        self.assertEqual(by_channel(second.write()), {"news.eu": ["e3", "e4"]})

    def test_malformed_marker(self) -> None:
        """A pattern whose marker cannot be read: "malformed", then live."""
        self.publish("news.eu", "old")
        cursor = encode_cursor({"news.*": "garbage"})
        stream = self.stream(["news.*"], cursor)
        self.assertEqual(stream.fanin.losses, {"news.*": "malformed"})
        self.publish("news.eu", "new")
        self.assertEqual(by_channel(stream.write()), {"news.eu": ["new"]})

    def test_unknown_marker(self) -> None:
        """A marker of another run: "unknown"."""
        cursor = encode_cursor({"news.*": f"{EPOCH - 1}-0", "a": f"{EPOCH}-0"})
        stream = self.stream(["a", "news.*"], cursor)
        self.assertEqual(stream.fanin.losses, {"news.*": "unknown"})

    def test_broker_without_watch(self) -> None:
        """
        On a broker that cannot watch, a pattern fails the opening, naming
        it, and leaves no subscription behind.
        """

        @implementer(IBroker)
        class Plain:
            """The memory broker, without its watch."""

            available = True

            def __init__(self, broker: MemoryBroker) -> None:
                self.broker = broker

            def publish(
                self, channel: str, event: Event, key: str | None = None
            ) -> Deferred[str]:
                return self.broker.publish(channel, event, key)

            def subscribe(
                self, channel: str, deliver: Deliver, last_event_id: str | None = None
            ) -> Deferred[Subscription]:
                return self.broker.subscribe(channel, deliver, last_event_id)

            def subscribe_now(
                self, channel: str, deliver: Deliver, last_event_id: str | None = None
            ) -> Subscription | None:
                return None

            def stop(self) -> Deferred[None]:
                return self.broker.stop()

        plain = Plain(self.broker)
        verifyObject(IBroker, plain)
        got: list[Published] = []
        fanin = Fanin(plain, parse_selection(["a", "news.*"]), None, got.append)
        failure = self.failureResultOf(fanin.open(), ValueError)
        self.assertIn("news.*", str(failure.value))
        assert_no_leaks(self, brokers=[self.broker])
        self.publish("a", "1")
        self.assertEqual(got, [])

    def test_limit(self) -> None:
        """
        A channel found beyond ``max_followed`` is told lost ("limit") once,
        and not followed.
        """
        stream = self.stream(["x", "a.*", "a.b.*"], max_followed=2)
        self.publish("a.b.one", "1")
        self.publish("a.b.two", "2")
        self.publish("a.b.two", "3")
        self.publish("a.b.one", "4")
        self.publish("a.three", "5")
        events = stream.write()
        self.assertEqual(
            [(event.type, event.data) for event in events if event.type != "a.b.one"],
            [
                (
                    HISTORY_LOST_EVENT,
                    json.dumps({"reason": "limit", "channels": {"a.b.two": "limit"}}),
                ),
                (
                    HISTORY_LOST_EVENT,
                    json.dumps({"reason": "limit", "channels": {"a.three": "limit"}}),
                ),
            ],
        )
        self.assertEqual(by_channel(events)["a.b.one"], ["1", "4"])
        self.assertEqual(sorted(stream.fanin.followed), ["a.b.one", "x"])
        self.assertEqual(self.broker.subscriber_count("a.b.two"), 0)
        self.assertEqual(self.broker.subscriber_count("a.three"), 0)


class WritingTests(FaninTestCase):
    """How each event is written: its channel named, the cursor its id."""

    def test_typed_by_channel(self) -> None:
        """
        Without an envelope, an event without a type is sent with its
        channel's name as its type; a typed one keeps its type.
        """
        stream = self.stream(["a", "b.*"])
        self.publish("a", "plain")
        self.publish("b.c", "typed", event="update")
        self.publish("b.c", "line 1\nline 2")
        frames_before = len(stream.frames)
        events = stream.write()
        self.assertEqual(
            [(event.type, event.data) for event in events],
            [("a", "plain"), ("update", "typed"), ("b.c", "line 1\nline 2")],
        )
        for frame in stream.frames[frames_before:]:
            self.assertEqual(frame.count(b"\nevent: "), 1)
        for event in events:
            cursor = decode_cursor(event.last_event_id)
            self.assertIsNotNone(cursor)

    def test_envelope(self) -> None:
        """
        With an envelope, no ``event:`` line: the data is JSON naming the
        channel and the type, with the original data exact.
        """
        stream = self.stream(["a", "b.*"], envelope=True)
        sent = [
            ("a", "plain", None),
            ("b.c", "typed", "update"),
            ("a", "line 1\nline 2\n\nline 4", None),
            ("b.c", "", None),
            ("a", " leading space\n", "t"),
            ("a", 'quotes " and \\ and é ✓', None),
            ("a", "crlf\r\nand cr\rend", None),
        ]
        for channel, data, event in sent:
            self.publish(channel, data, event=event)
        frames_before = len(stream.frames)
        events = stream.write()
        for frame in stream.frames[frames_before:]:
            self.assertNotIn(b"event:", frame)
        self.assertEqual([event.type for event in events], ["message"] * len(sent))
        self.assertEqual(
            [json.loads(event.data) for event in events],
            [
                {
                    "channel": channel,
                    "event": event,
                    "data": data.replace("\r\n", "\n").replace("\r", "\n"),
                }
                for channel, data, event in sent
            ],
        )

    @settings(max_examples=100, deadline=None)
    @given(
        data=st.text(st.characters(exclude_categories=["Cs"]), max_size=50),
        event=st.none() | st.from_regex(r"[a-z][a-z0-9.-]{0,10}", fullmatch=True),
    )
    def test_envelope_data_exact(self, data: str, event: str | None) -> None:
        """Any data comes out of the envelope as a client reads the original."""
        self.setUp()
        stream = Stream(self.broker, ["a"], envelope=True).open(self)
        try:
            self.publish("a", data, event=event)
            [original] = self.broker.history_of("a")[-1:]
            [expected] = parse_events(original.frame)
            [got] = stream.write()
            self.assertEqual(
                json.loads(got.data),
                {"channel": "a", "event": event, "data": expected.data},
            )
        finally:
            stream.fanin.cancel()

    def test_envelope_loss(self) -> None:
        """``history-lost`` keeps its type in an envelope stream."""
        cursor = encode_cursor({"a": f"{EPOCH - 1}-0"})
        stream = self.stream(["a", "b.*"], cursor, envelope=True, max_followed=1)
        self.publish("b.x", "beyond")
        stream.write()
        [opening, later] = stream.events()
        self.assertEqual(
            losses_of(opening), {"reason": "unknown", "channels": {"a": "unknown"}}
        )
        self.assertEqual(
            losses_of(later), {"reason": "limit", "channels": {"b.x": "limit"}}
        )

    def test_conflation_key(self) -> None:
        """The key an event is conflated by names its channel."""
        stream = self.stream(["a", "b"])
        self.publish("a", "1")
        self.publish("b", "2")
        self.publish("a", "3", event="t")
        self.publish("b", "4", event="t")
        self.publish("a", "5", key="k")
        self.publish("b", "6", key="k")
        stream.write()
        self.assertEqual(
            stream.keys, ["a message", "b message", "a t", "b t", "a k", "b k"]
        )
        self.assertEqual(len(set(stream.keys)), 6)

    def test_cursor_moves_when_written(self) -> None:
        """
        The cursor moves when an event is written, not when the broker
        delivers it; each frame's id is the cursor as of that frame.
        """
        stream = self.stream(["a"])
        opening = stream.fanin.cursor
        self.publish("a", "1")
        self.assertEqual(stream.fanin.cursor, opening)
        [event] = stream.write()
        self.assertNotEqual(event.last_event_id, opening)
        self.assertEqual(event.last_event_id, stream.fanin.cursor)
        cursor = decode_cursor(stream.fanin.cursor)
        assert cursor is not None
        self.assertEqual(cursor.get("a"), f"{EPOCH}-1")

    def test_cursor_holds_markers(self) -> None:
        """The opening cursor holds every channel's position and marker."""
        self.publish("a", "1")
        self.publish("p.x", "2")
        stream = self.stream(["a", "b", "p.*"])
        cursor = decode_cursor(stream.fanin.cursor)
        assert cursor is not None
        self.assertEqual(cursor.get("a"), f"{EPOCH}-1")
        self.assertEqual(cursor.get("b"), f"{EPOCH}-0")
        self.assertEqual(cursor.get("p.*"), f"{EPOCH}-2")
        self.assertIsNone(cursor.get("p.x"))


class CancelTests(FaninTestCase):
    """Cancelling leaves nothing behind in the broker."""

    def test_cancel(self) -> None:
        """
        No subscriber and no watch is left: a publish afterwards, on a
        channel a pattern matched or would match, calls nothing.
        """
        self.publish("a", "1")
        stream = self.stream(["a", "b", "news.*", "news.eu.*"])
        self.publish("news.eu", "1")
        self.publish("news.eu.fr", "1")
        self.assertEqual(len(stream.delivered), 2)
        found: list[tuple[str, str, str | None]] = []

        def record(fanin: Fanin, channel: str, position: str, lost: str | None) -> None:
            if fanin is stream.fanin:
                found.append((channel, position, lost))

        self.patch(Fanin, "_found", record)
        self.publish("news.us", "1")
        self.assertEqual([channel for channel, _, _ in found], ["news.us"])
        del found[:]
        stream.fanin.cancel()
        stream.fanin.cancel()
        assert_no_leaks(self, brokers=[self.broker])
        for channel in ("a", "b", "news.eu", "news.eu.fr", "news.us"):
            self.assertEqual(self.broker.subscriber_count(channel), 0)
        for channel in ("a", "news.eu", "news.asia", "news.eu.x", "news.eu.fr"):
            self.publish(channel, "after")
        self.assertEqual(found, [])
        self.assertEqual(len(stream.delivered), 2)

    def test_cancel_before_found(self) -> None:
        """A fan-in cancelled at once follows nothing its pattern finds."""
        stream = self.stream(["news.*"])
        stream.fanin.cancel()
        self.publish("news.eu", "1")
        self.assertEqual(stream.delivered, [])
        self.assertEqual(self.broker.subscriber_count("news.eu"), 0)


class FoundNotWritten(FaninTestCase):
    def test_resume(self) -> None:
        """
        An event of a channel a pattern found, delivered but not yet
        written when the client left, is replayed on resume.
        """
        first = self.stream(["a", "news.*"])
        self.publish("a", "a1")
        self.publish("news.eu", "e1")  # found; delivered, not written
        first.fanin.encode(first.delivered[0])  # a1 written
        cursor = first.fanin.cursor
        first.fanin.cancel()
        second = self.stream(["a", "news.*"], cursor)
        self.assertEqual(by_channel(second.write()), {"news.eu": ["e1"]})

    def test_resume_twice(self) -> None:
        """The same, reconnecting twice before news.eu's next event: each event once."""
        first = self.stream(["a", "news.*"])
        self.publish("a", "a1")
        self.publish("news.eu", "e1")
        first.fanin.encode(first.delivered[0])
        cursor = first.fanin.cursor
        first.fanin.cancel()
        second = self.stream(["a", "news.*"], cursor)
        self.assertEqual(by_channel(second.write()), {"news.eu": ["e1"]})
        cursor = second.fanin.cursor
        second.fanin.cancel()
        third = self.stream(["a", "news.*"], cursor)
        self.publish("news.eu", "e2")
        events = third.write()
        self.assertEqual(
            [(e.type, e.data) for e in third.events() if e.type != "news.eu"], []
        )
        self.assertEqual(by_channel(events), {"news.eu": ["e2"]})


class PatternThenExplicitTests(FaninTestCase):
    """A channel a resumed pattern carried, named on reconnect."""

    def missed_then_resumed(self, names: list[str]) -> Stream:
        """
        A ``news.*`` stream that ``news.eu`` was published on while it was
        open but before it was written (its client never got it), resumed
        with ``names`` from the cursor it had.
        """
        first = self.stream(["news.*"])
        cursor = first.fanin.cursor
        self.publish("news.eu", "missed")
        self.assertEqual(len(first.delivered), 1)
        first.fanin.cancel()
        return self.stream(names, cursor)

    def test_named_on_reconnect(self) -> None:
        """It gets what the client missed of it, as under the pattern."""
        second = self.missed_then_resumed(["news.*", "news.eu"])
        second.write()
        self.assertEqual(
            [(e.type, e.data) for e in second.events()], [("news.eu", "missed")]
        )

    def test_pattern_alone_replays(self) -> None:
        """The same resume without news.eu named gets the event."""
        second = self.missed_then_resumed(["news.*"])
        second.write()
        self.assertEqual(
            [(e.type, e.data) for e in second.events()], [("news.eu", "missed")]
        )


class LateBroker(MemoryBroker):
    """A memory broker whose subscribe answers when told (as Redis does)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.waiting: list[tuple[Deferred[Any], tuple[Any, ...]]] = []
        self.late = False

    def subscribe(
        self, channel: str, deliver: Any, last_event_id: str | None = None
    ) -> Deferred[Any]:
        if not self.late:
            return super().subscribe(channel, deliver, last_event_id)
        answer: Deferred[Any] = Deferred()
        self.waiting.append((answer, (channel, deliver, last_event_id)))
        return answer

    def answer(self) -> None:
        waiting, self.waiting = self.waiting, []
        for answer, args in waiting:
            super().subscribe(*args).chainDeferred(answer)


class PostOpenLossTests(SynchronousTestCase):
    """A loss found after opening moves the cursor when it is written."""

    def test_cursor_moves_only_when_the_loss_is_written(self) -> None:
        """A cursor written before it still holds the old position."""
        broker = LateBroker(history=3, epoch=1700000000000, clock=Clock())
        queue: list[Published] = []
        fanin = Fanin(broker, parse_selection(["a", "news.*"]), None, queue.append)
        self.successResultOf(fanin.open())
        broker.late = True
        broker.publish("a", Event(data="a1"))  # queued, not written yet
        for n in range(5):  # found; trimmed before
            broker.publish("news.eu", Event(data=f"eu{n}"))  # the broker answers
        broker.answer()
        self.assertEqual([p.channel for p in queue], ["a", "news.eu"])
        self.assertEqual(queue[1].key, "history-lost")
        frame, _ = fanin.encode(queue[0])  # the client gets a1 only
        cursor = frame.split(b"id: ")[1].split(b"\n")[0].decode()
        # The client holds no event of news.eu and was told of no loss: its
        # cursor must not skip news.eu's events (eu0..eu4).
        decoded = decode_cursor(cursor)
        assert decoded is not None
        position = decoded.get("news.eu")
        self.assertIn(position, (None, "1700000000000-0"))


class SharedWritingTests(FaninTestCase):
    """
    Subscribers in the same state, written the same event one after the
    other, share its cursor and bytes; one in another state never takes
    them.
    """

    def test_same_state_shares(self) -> None:
        """The second takes the first's frame, and its cursor moves as well."""
        first = self.stream(["a", "news.*"])
        second = self.stream(["a", "news.*"])
        self.publish("news.eu", "1")
        first.write()
        second.write()
        self.assertIs(first.frames[-1], second.frames[-1])
        self.assertEqual(first.fanin.cursor, second.fanin.cursor)
        cursor = decode_cursor(second.fanin.cursor)
        assert cursor is not None
        self.assertEqual(cursor.get("news.eu"), f"{EPOCH}-1")
        # The state taken is the second's own from then on.
        self.publish("a", "2")
        self.assertEqual(by_channel(second.write()), {"a": ["2"]})
        cursor = decode_cursor(second.fanin.cursor)
        assert cursor is not None
        self.assertEqual(cursor.get("a"), f"{EPOCH}-1")
        self.assertEqual(cursor.get("news.eu"), f"{EPOCH}-1")

    def test_other_state_not_shared(self) -> None:
        """One that was written another event first makes its own cursor."""
        first = self.stream(["a", "b"])
        second = self.stream(["a", "b"])
        self.publish("b", "1")
        second.write()  # only the second is written b's event
        self.publish("a", "2")
        first.fanin.encode(first.delivered[-1])  # a's event, not b's
        second.write()
        one = decode_cursor(first.fanin.cursor)
        two = decode_cursor(second.fanin.cursor)
        assert one is not None and two is not None
        self.assertEqual(one.get("a"), two.get("a"))
        self.assertNotEqual(one.get("b"), two.get("b"))
        self.assertEqual(two.get("b"), f"{EPOCH}-1")

    def test_other_selection_not_shared(self) -> None:
        """The same cursor text under other names is not the same state."""
        first = self.stream(["a"], envelope=True)
        second = self.stream(["a"])
        self.publish("a", "1")
        first.write()
        events = second.write()
        self.assertEqual([(e.type, e.data) for e in events], [("a", "1")])
