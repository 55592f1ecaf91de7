"""
Tests for L{twisted_sse._redis._entries}: events as stream fields and back,
entry ids and the broker's event ids, and what a stream's snapshot says
was lost, from replies as Redis gives them.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._broker import Published
from twisted_sse._event import MAX_RETRY, Event
from twisted_sse._redis._entries import (
    Snapshot,
    as_list,
    before,
    entries,
    entry_id,
    event_fields,
    field_value,
    format_id,
    newer,
    parse_position,
    published_from_fields,
    restart_point,
    snapshot,
    text,
    text_id,
)
from twisted_sse._redis._protocol import RedisCommandError, Reply


class FieldsTests(SynchronousTestCase):
    """event_fields and published_from_fields: events as stream fields."""

    def test_fields_round_trip(self) -> None:
        """An event stored as fields comes back as the same frame, with its id."""
        event = Event(data="line 1\nline 2", event="update", retry=2500, comment="c")
        fields = event_fields(event)
        self.assertEqual(
            fields,
            [
                "data",
                "line 1\nline 2",
                "event",
                "update",
                "retry",
                "2500",
                "comment",
                "c",
                "key",
                "update",
            ],
        )
        self.assertEqual(
            published_from_fields("news", "5-1", fields),
            Published(
                "news",
                "5-1",
                Event(
                    data="line 1\nline 2",
                    event="update",
                    retry=2500,
                    comment="c",
                    id="5-1",
                ).encode(),
                "update",
            ),
        )
        self.assertEqual(
            event_fields(Event(data="x"), key="price")[-2:], ["key", "price"]
        )
        self.assertEqual(event_fields(Event(data="x"))[-2:], ["key", "message"])

    def test_foreign_fields(self) -> None:
        """Fields from other programs: bytes, unknown names ignored, no key."""
        published = published_from_fields(
            "news", "7-0", [b"data", b"hello", b"source", b"cron", b"event", b"tick"]
        )
        self.assertEqual(published.frame, b"id: 7-0\nevent: tick\ndata: hello\n\n")
        self.assertEqual(published.key, "tick")

    def test_repeated_field(self) -> None:
        """A field given twice counts once, with its last value."""
        published = published_from_fields(
            "news", "7-0", [b"data", b"one", b"data", b"two"]
        )
        self.assertEqual(published.frame, b"id: 7-0\ndata: two\n\n")

    def test_foreign_fields_refused(self) -> None:
        """A field the wire format cannot carry is refused, not altered."""
        for fields in [
            [b"data", b"x", b"event", b"a\nb"],
            [b"data", b"x", b"event", b"a\rdata: forged"],
            [b"data", b"x", b"retry", b"soon"],
            [b"data", b"x", b"retry", b"-1"],
            [b"data", b"\xff\xfe"],
            [b"data", b"x", b"key", b"k" * 257],
            [b"comment", b"a\nb"],
        ]:
            with self.assertRaises(ValueError, msg=fields):
                published_from_fields("news", "7-0", fields)

    def test_retry_bounds(self) -> None:
        """
        A retry past MAX_RETRY cannot even be made into an event; one read
        from Redis is refused the same way.
        """
        with self.assertRaises(ValueError):
            Event(data="x", retry=10**15)
        with self.assertRaises(ValueError):
            Event(data="x", retry=MAX_RETRY + 1)
        for retry in (b"1" * 16, str(MAX_RETRY + 1).encode(), b"1" * 25):
            with self.assertRaises(ValueError):
                published_from_fields("a", "e:1-0", [b"retry", retry])
        published = published_from_fields(
            "a", "e:1-0", [b"retry", str(MAX_RETRY).encode()]
        )
        self.assertIn(b"retry: %d\n" % MAX_RETRY, published.frame)


class RepliesTests(SynchronousTestCase):
    """Replies as values: text, ids, arrays, entries, snapshots."""

    def test_text(self) -> None:
        """Bulk strings (not UTF-8 replaced), status lines and integers are text."""
        self.assertEqual(
            [text(b"caf\xc3\xa9"), text(b"\xff"), text("OK"), text(42)],
            ["café", "\ufffd", "OK", "42"],
        )
        self.assertEqual(field_value(7), "7")
        with self.assertRaises(ValueError):
            text([b"a"])

    def test_entry_ids(self) -> None:
        """A stream id reply is numbers and back; anything else is refused."""
        self.assertEqual(entry_id(b"1700000000123-4"), (1700000000123, 4))
        self.assertEqual(format_id((1700000000123, 4)), "1700000000123-4")
        for bad in [b"12", b"a-1", None]:
            with self.assertRaises(ValueError, msg=bad):
                entry_id(bad)

    def test_as_list(self) -> None:
        """An array is a list; an error in its place is raised; others refused."""
        self.assertEqual(as_list([1, b"x"]), [1, b"x"])
        with self.assertRaises(RedisCommandError):
            as_list(RedisCommandError("OOM"))
        with self.assertRaises(ValueError):
            as_list(b"x")

    def test_entries(self) -> None:
        """An XRANGE reply gives each entry's id as text and numbers, its fields."""
        self.assertEqual(
            entries([[b"5-1", [b"data", b"x"]], [b"6-0", None]]),
            [("5-1", (5, 1), [b"data", b"x"]), ("6-0", (6, 0), [])],
        )

    def test_snapshot(self) -> None:
        """The snapshot script's reply is read in its order."""
        reply: Reply = [b"ep", None, 1, b"9-0", b"4-0", 3, 7, b"2-0", 1, [[b"5-0", []]]]
        self.assertEqual(
            snapshot(reply),
            Snapshot(
                exists=True,
                last_generated=(9, 0),
                first=(4, 0),
                length=3,
                entries_added=7,
                max_deleted=(2, 0),
                entries=[("5-0", (5, 0), [])],
                epoch="ep",
                previous=None,
                more=True,
            ),
        )
        empty = snapshot([b"ep", b"old", 0, b"0-0", None, 0, 0, b"0-0", 0, []])
        self.assertEqual(
            (empty.exists, empty.first, empty.previous), (False, None, "old")
        )


class PositionTests(SynchronousTestCase):
    """The broker's event ids: <epoch>:<stream id>, and epochs compared."""

    def test_parse_position(self) -> None:
        """An id splits into its epoch and stream id; others are not ids."""
        self.assertEqual(parse_position("kq3x9b1c0a:1765-0"), ("kq3x9b1c0a", (1765, 0)))
        self.assertEqual(text_id("kq3x9b1c0a", (1765, 0)), "kq3x9b1c0a:1765-0")
        for bad in [
            "1765-0",
            "KQ3:1-0",
            "a" * 17 + ":1-0",
            f"a:{2**64}-0",
            f"a:1-{2**64}",
            "a:1",
            "a:1-0 ",
        ]:
            self.assertIsNone(parse_position(bad), bad)

    def test_before(self) -> None:
        """The id just before another: the sequence back one, or the ms; 0-0 stays."""
        self.assertEqual(before((5, 3)), (5, 2))
        self.assertEqual(before((5, 0)), (4, 2**64 - 1))
        self.assertEqual(before((0, 0)), (0, 0))

    def test_old_mark_ignored(self) -> None:
        """
        An epoch is newer only if made later; garbage never is, and any
        epoch is newer than garbage (so the mark of an older epoch, read
        again, switches nothing).
        """
        self.assertTrue(newer("b", "a"))
        self.assertFalse(newer("a", "b"))
        self.assertFalse(newer("a", "a"))
        self.assertFalse(newer("NOT AN EPOCH", "a"))
        self.assertTrue(newer("a", ""))


class LossTests(SynchronousTestCase):
    """What a snapshot says was lost, and where to go on from."""

    def test_lost_after(self) -> None:
        """Trimming is seen from the first entry left and the entries added."""
        untrimmed = Snapshot(True, (9, 0), first=(1, 0), length=5, entries_added=5)
        self.assertFalse(untrimmed.lost_after((0, 0)))
        trimmed = Snapshot(True, (9, 0), first=(5, 3), length=5, entries_added=50)
        self.assertTrue(trimmed.lost_after((0, 0)))
        self.assertTrue(trimmed.lost_after((5, 1)))
        # The entry just before the first one left: nothing after it is gone.
        self.assertFalse(trimmed.lost_after((5, 2)))
        self.assertFalse(trimmed.lost_after((5, 3)))
        self.assertFalse(trimmed.lost_after((7, 0)))
        emptied = Snapshot(True, (9, 0), first=None, length=0, entries_added=3)
        self.assertTrue(emptied.lost_after((8, 0)))
        self.assertFalse(emptied.lost_after((9, 0)))
        deleted = Snapshot(
            True, (9, 0), first=(1, 0), length=4, entries_added=5, max_deleted=(6, 0)
        )
        self.assertTrue(deleted.lost_after((5, 0)))
        self.assertFalse(deleted.lost_after((6, 0)))
        self.assertFalse(Snapshot(False).lost_after((0, 0)))

    def test_lost_up_to(self) -> None:
        """
        Reading on from just before the first entry left (or from the last
        id, when none is left, or the last deleted) misses nothing more.
        """
        trimmed = Snapshot(True, (9, 0), first=(5, 3), length=5, entries_added=50)
        self.assertEqual(trimmed.lost_up_to(), (5, 2))
        emptied = Snapshot(True, (9, 0), first=None, length=0, entries_added=3)
        self.assertEqual(emptied.lost_up_to(), (9, 0))
        deleted = Snapshot(
            True, (9, 0), first=(1, 0), length=4, entries_added=5, max_deleted=(6, 0)
        )
        self.assertEqual(deleted.lost_up_to(), (6, 0))

    def test_restart_point(self) -> None:
        """
        After a new epoch, a reader goes on from where it was if the stream
        goes on past it or was rotated from its epoch, else from the start;
        never before what was trimmed.
        """
        grown = Snapshot(True, (9, 0), first=(1, 0), length=5, entries_added=5)
        self.assertEqual(restart_point(grown, (4, 0), "old"), (4, 0))
        remade = Snapshot(True, (3, 0), first=(1, 0), length=3, entries_added=3)
        self.assertEqual(restart_point(remade, (4, 0), "old"), (0, 0))
        rotated = Snapshot(
            True, (3, 0), first=(1, 0), length=3, entries_added=3, previous="old"
        )
        self.assertEqual(restart_point(rotated, (4, 0), "old"), (3, 0))
        trimmed = Snapshot(True, (3, 0), first=(2, 5), length=3, entries_added=9)
        self.assertEqual(restart_point(trimmed, (4, 0), "old"), (2, 4))
        self.assertEqual(restart_point(Snapshot(False), (4, 0), "old"), (0, 0))
