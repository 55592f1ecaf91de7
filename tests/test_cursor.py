"""
Tests for L{twisted_sse._cursor}: the cursor of a subscription to several
channels round-trips every form of position, does not depend on the order
of its names, refuses (without raising) whatever it did not make, stays
small, and is a valid SSE id.
"""

from __future__ import annotations

import base64
import re
from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._cursor import (
    MAX_CURSOR_LENGTH,
    Cursor,
    CursorBuilder,
    decode_cursor,
    encode_cursor,
    name_key,
    positions_of,
)

from ._redis_tools import base36

#: What a cursor is made of: ``~`` and URL-safe base64, unpadded.
_CURSOR_TEXT = re.compile(r"~[A-Za-z0-9_-]*")
#: A realistic in-memory broker epoch: milliseconds since 1970.
_MEMORY_EPOCH = 1765000000000


def round_trip(positions: dict[str, str]) -> dict[str, str]:
    """The positions the cursor of ``positions`` gives back, by name."""
    cursor = decode_cursor(encode_cursor(positions))
    assert cursor is not None
    return positions_of(positions, cursor)


def packed(data: bytes) -> str:
    """A cursor text holding ``data``, whatever it is."""
    return "~" + base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class RoundTripTests(SynchronousTestCase):
    """Every form of position comes back as it went in."""

    def test_memory_ids(self) -> None:
        """In-memory broker ids (``<epoch>-<n>``) round-trip."""
        positions = {
            "a": f"{_MEMORY_EPOCH}-0",
            "b": f"{_MEMORY_EPOCH}-1",
            "c": f"{_MEMORY_EPOCH}-1000000",
            "d": "0-0",
            "e": "99999999999999999999-99999999999999999999",
        }
        self.assertEqual(round_trip(positions), positions)

    def test_redis_ids(self) -> None:
        """Redis broker ids (``<base36 epoch>:<ms>-<n>``) round-trip."""
        epoch = base36(_MEMORY_EPOCH * 1000 + 123456)
        other = base36(_MEMORY_EPOCH * 1000 + 99_000_001)
        positions = {
            "a": f"{epoch}:0-0",
            "b": f"{epoch}:{_MEMORY_EPOCH + 5}-0",
            "c": f"{epoch}:{_MEMORY_EPOCH + 86_400_000}-17",
            "d": f"{other}:{_MEMORY_EPOCH + 99_000}-3",
            "e": "z:1-1",
        }
        self.assertEqual(round_trip(positions), positions)

    def test_redis_ms_before_epoch(self) -> None:
        """
        A Redis id whose milliseconds are smaller than its epoch's (a
        stream entry id older than the epoch token) round-trips.
        """
        micros = _MEMORY_EPOCH * 1000
        epoch = base36(micros)
        positions = {
            "a": f"{epoch}:{micros // 1000 - 1}-0",
            "b": f"{epoch}:{micros // 1000 - 86_400_000}-4",
            "c": f"{epoch}:1-2",
        }
        self.assertEqual(round_trip(positions), positions)

    def test_text_positions(self) -> None:
        """Positions of no known form are kept as their text."""
        positions = {
            "a": "hello world",
            "b": "",
            "c": "01-5",
            "d": "1765000000000-",
            "e": "Kq3:1-1",
            "f": "é\u2028 unicode ✓",
            "g": "x" * 300,
        }
        self.assertEqual(round_trip(positions), positions)

    def test_pattern_markers(self) -> None:
        """The markers of patterns round-trip beside channels."""
        positions = {
            "news.*": f"{_MEMORY_EPOCH}-42",
            "news.eu": f"{_MEMORY_EPOCH}-7",
            "a.b.*": f"{_MEMORY_EPOCH}-0",
        }
        self.assertEqual(round_trip(positions), positions)

    def test_mixed_forms(self) -> None:
        """Every form in one cursor."""
        positions = {
            "m": f"{_MEMORY_EPOCH}-3",
            "r": f"{base36(_MEMORY_EPOCH * 1000)}:{_MEMORY_EPOCH}-0",
            "t": "something else",
            "p.*": f"{_MEMORY_EPOCH}-9",
        }
        self.assertEqual(round_trip(positions), positions)

    def test_empty(self) -> None:
        """A cursor of no positions decodes to no positions."""
        cursor = decode_cursor(encode_cursor({}))
        self.assertEqual(cursor, Cursor({}))

    def test_absent_name(self) -> None:
        """A name the cursor does not hold has no position."""
        cursor = decode_cursor(encode_cursor({"a": "1-1"}))
        assert cursor is not None
        self.assertIsNone(cursor.get("b"))
        self.assertEqual(positions_of(["a", "b"], cursor), {"a": "1-1"})

    def test_positions_of_none(self) -> None:
        """No cursor: no positions."""
        self.assertEqual(positions_of(["a"], None), {})

    def test_keys_by_name(self) -> None:
        """The cursor's keys are the names' keys."""
        cursor = decode_cursor(encode_cursor({"a": "1-1", "b.*": "1-2"}))
        assert cursor is not None
        self.assertEqual(
            dict(cursor.positions), {name_key("a"): "1-1", name_key("b.*"): "1-2"}
        )
        self.assertEqual(len(name_key("a")), 5)

    def test_order_independent(self) -> None:
        """
        The same positions given in another order make a cursor holding
        the same positions.
        """
        epoch = base36(_MEMORY_EPOCH * 1000)
        positions = {
            "a": f"{_MEMORY_EPOCH}-1",
            "b": f"{epoch}:{_MEMORY_EPOCH}-2",
            "c": "text",
            "d.*": f"{_MEMORY_EPOCH}-4",
            "e": f"{_MEMORY_EPOCH + 1}-5",
        }
        names = list(positions)
        for seed in range(10):
            Random(seed).shuffle(names)
            shuffled = {name: positions[name] for name in names}
            self.assertEqual(
                decode_cursor(encode_cursor(shuffled)),
                decode_cursor(encode_cursor(positions)),
            )
            self.assertEqual(round_trip(shuffled), positions)

    def test_colliding_names(self) -> None:
        """
        Two names whose keys collide are both left out (they resume as if
        new), whatever their order; the other names are kept.
        """
        first, second = "c172969", "c702257"
        self.assertEqual(name_key(first), name_key(second))
        for names in ([first, second, "a"], [second, "a", first]):
            positions = dict.fromkeys(names, "1-1")
            cursor = decode_cursor(encode_cursor(positions))
            self.assertEqual(positions_of(names, cursor), {"a": "1-1"})
        builder = CursorBuilder()
        builder.set(first, "1-1")
        builder.set("a", "1-2")
        builder.set(second, "1-3")
        builder.set(first, "1-4")
        cursor = decode_cursor(builder.text())
        self.assertEqual(positions_of([first, second, "a"], cursor), {"a": "1-2"})


class BuilderTests(SynchronousTestCase):
    """CursorBuilder makes the cursor encode_cursor makes, as positions move."""

    def test_moves(self) -> None:
        """A position set again replaces the one before."""
        builder = CursorBuilder()
        builder.set("a", f"{_MEMORY_EPOCH}-1")
        first = builder.text()
        self.assertEqual(builder.text(), first)
        builder.set("b.*", f"{_MEMORY_EPOCH}-2")
        builder.set("a", f"{_MEMORY_EPOCH}-3")
        cursor = decode_cursor(builder.text())
        self.assertEqual(
            positions_of(["a", "b.*"], cursor),
            {"a": f"{_MEMORY_EPOCH}-3", "b.*": f"{_MEMORY_EPOCH}-2"},
        )
        self.assertNotEqual(builder.text(), first)

    @settings(max_examples=200, deadline=None)
    @given(
        moves=st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "c.d", "e.*", "f"]),
                st.sampled_from(
                    [
                        f"{_MEMORY_EPOCH}-1",
                        f"{_MEMORY_EPOCH}-250",
                        f"{_MEMORY_EPOCH + 1}-2",
                        f"{base36(_MEMORY_EPOCH * 1000)}:{_MEMORY_EPOCH}-0",
                        f"{base36(_MEMORY_EPOCH * 1000 + 1)}:{_MEMORY_EPOCH}-9",
                        "text",
                        "",
                    ]
                ),
            ),
            max_size=30,
        )
    )
    def test_any_moves(self, moves: list[tuple[str, str]]) -> None:
        """After any moves, the cursor holds the last position of each name."""
        builder = CursorBuilder()
        last: dict[str, str] = {}
        for name, position in moves:
            builder.set(name, position)
            last[name] = position
            text = builder.text()
            self.assertIsNotNone(_CURSOR_TEXT.fullmatch(text))
            self.assertEqual(positions_of(last, decode_cursor(text)), last)
        self.assertEqual(
            positions_of(last, decode_cursor(builder.text())),
            positions_of(last, decode_cursor(encode_cursor(last))),
        )


def _channel_names() -> st.SearchStrategy[str]:
    return st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}", fullmatch=True)


def _names() -> st.SearchStrategy[str]:
    return _channel_names() | _channel_names().map(lambda name: name + ".*")


_NUMBER = st.integers(min_value=0, max_value=10**20 - 1)


def _positions() -> st.SearchStrategy[str]:
    memory = st.builds(lambda e, n: f"{e}-{n}", _NUMBER, _NUMBER)
    redis = st.builds(
        lambda e, ms, n: f"{base36(e)}:{ms}-{n}",
        st.integers(min_value=1, max_value=36**14 - 1),
        _NUMBER,
        _NUMBER,
    )
    text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
    return memory | redis | text


class PropertyTests(SynchronousTestCase):
    """Invariants over any positions."""

    @settings(max_examples=300, deadline=None)
    @given(positions=st.dictionaries(_names(), _positions(), max_size=40))
    def test_round_trip(self, positions: dict[str, str]) -> None:
        """Any positions of valid names round-trip, as a valid SSE id."""
        text = encode_cursor(positions)
        self.assertIsNotNone(_CURSOR_TEXT.fullmatch(text), text)
        self.assertEqual(round_trip(positions), positions)

    @settings(max_examples=300, deadline=None)
    @given(data=st.binary(max_size=80))
    def test_any_bytes(self, data: bytes) -> None:
        """Whatever a cursor text holds, decoding it does not raise."""
        for candidate in (data, b"\x01" + data):
            decoded = decode_cursor(packed(candidate))
            self.assertIsInstance(decoded, (Cursor, type(None)))

    @settings(max_examples=300, deadline=None)
    @given(text=st.text(max_size=60))
    def test_any_text(self, text: str) -> None:
        """Whatever text is given, decoding it does not raise."""
        for candidate in (text, "~" + text):
            decoded = decode_cursor(candidate)
            self.assertIsInstance(decoded, (Cursor, type(None)))


class RefusalTests(SynchronousTestCase):
    """What this module did not make decodes to ``None``, never raises."""

    def setUp(self) -> None:
        self.valid = encode_cursor(
            {
                "a": f"{_MEMORY_EPOCH}-5",
                "b": f"{base36(_MEMORY_EPOCH * 1000)}:{_MEMORY_EPOCH}-1",
                "c": "text",
            }
        )
        self.assertIsNotNone(decode_cursor(self.valid))

    def test_garbage(self) -> None:
        """Text that is not a cursor."""
        for text in [
            "",
            "~",
            "~~",
            "~!!!!",
            "~AQ!A",
            "~ AQAA",
            "~AQAA\n",
            "~é",
            "~\x00",
            "1765000000000-5",
            "~" + "A" * 1000,
            "~////",
            "~++++",
        ]:
            self.assertIsNone(decode_cursor(text), text)

    def test_without_tilde(self) -> None:
        """The cursor's base64 without its ``~``."""
        self.assertIsNone(decode_cursor(self.valid[1:]))
        self.assertIsNone(decode_cursor("x" + self.valid[1:]))

    def test_truncated(self) -> None:
        """Every strict prefix of a cursor."""
        for end in range(len(self.valid)):
            self.assertIsNone(decode_cursor(self.valid[:end]), self.valid[:end])

    def test_extended(self) -> None:
        """A cursor with bytes after its last position."""
        text = self.valid[1:]
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        for extra in (b"\x00", b"\x01\x02\x03"):
            self.assertIsNone(decode_cursor(packed(data + extra)))

    def test_not_canonical(self) -> None:
        """
        Base64 that decodes, but not as this module writes it: padded,
        with unused bits set, with the standard alphabet's characters.
        """
        empty = encode_cursor({})
        self.assertIsNotNone(decode_cursor(empty))
        for text in [empty + "==", empty + "=", empty[:-1], empty[:-2], empty + "A"]:
            self.assertIsNone(decode_cursor(text), text)
        # A valid cursor whose text has both characters that differ
        # between the URL-safe alphabet and the standard one.
        text = next(
            text
            for text in (encode_cursor({"a": f"1-{n}"}) for n in range(10**6))
            if "-" in text and "_" in text
        )
        self.assertIsNotNone(decode_cursor(text))
        for standard in (
            text.replace("-", "+"),
            text.replace("_", "/"),
            text.replace("-", "+").replace("_", "/"),
        ):
            self.assertIsNone(decode_cursor(standard), standard)

    def test_wrong_version(self) -> None:
        """A cursor of another version."""
        self.assertIsNotNone(decode_cursor(packed(b"\x01\x02\x00\x00\x00\x00")))
        for version in (0, 2, 255):
            data = bytes([version]) + b"\x02\x00\x00\x00\x00"
            self.assertIsNone(decode_cursor(packed(data)))

    def test_huge_counts(self) -> None:
        """Counts (of epochs, positions, text bytes) beyond the data."""
        huge = b"\xff\xff\xff\xff\x0f"  # 2**32 - 1
        key = name_key("a")
        for data in [
            b"\x01" + huge + b"\x00",
            b"\x01\x00" + huge,
            b"\x01\x00\x02" + key + b"\x00\x00",
            b"\x01\x00\x01" + key + b"\x00" + huge + b"abc",
            b"\x01\x00\x01" + key + b"\x00\x04abc",
            # A varint that never ends.
            b"\x01\x01\x01" + b"\xff" * 40,
        ]:
            self.assertIsNone(decode_cursor(packed(data)), data)

    def test_bad_epochs(self) -> None:
        """An unknown epoch form, an index beyond the table, a form mismatch."""
        key = name_key("a")
        for data in [
            b"\x01\x01\x00\x05\x00",  # epoch of the text form
            b"\x01\x01\x07\x05\x00",  # epoch of no form
            b"\x01\x01\x01\x05\x01" + key + b"\x01\x01\x03",  # index 1 of 1
            b"\x01\x01\x01\x05\x01" + key + b"\x02\x00\x00\x03",  # memory as redis
            b"\x01\x00\x01" + key + b"\x03\x00",  # position of no form
        ]:
            self.assertIsNone(decode_cursor(packed(data)), data)

    def test_invalid_utf8_text(self) -> None:
        """A text position that is not UTF-8."""
        data = b"\x01\x00\x01" + name_key("a") + b"\x00\x02\xff\xfe"
        self.assertIsNone(decode_cursor(packed(data)))

    def test_length_limit(self) -> None:
        """
        A cursor is read up to MAX_CURSOR_LENGTH characters; a longer one,
        valid as it may be, is not.
        """
        base = len(encode_cursor({"a": ""}))
        size = (MAX_CURSOR_LENGTH - base) * 3 // 4 - 8
        while len(encode_cursor({"a": "x" * (size + 1)})) <= MAX_CURSOR_LENGTH:
            size += 1
        at_limit = encode_cursor({"a": "x" * size})
        # Entries are whole groups of base64: the longest cursor up to the
        # limit is within a group of it.
        self.assertGreater(len(at_limit), MAX_CURSOR_LENGTH - 4)
        self.assertLessEqual(len(at_limit), MAX_CURSOR_LENGTH)
        self.assertEqual(round_trip({"a": "x" * size}), {"a": "x" * size})
        beyond = encode_cursor({"a": "x" * (size + 1)})
        self.assertGreater(len(beyond), MAX_CURSOR_LENGTH)
        self.assertIsNone(decode_cursor(beyond))


class SizeTests(SynchronousTestCase):
    """A 32-channel cursor is small enough to be an id on every frame."""

    def test_memory(self) -> None:
        """
        32 channels of the in-memory broker (one epoch), sequences up to
        10**6: under 600 characters (about 530).
        """
        random = Random(17)
        positions = {
            f"channel.{index:02d}": f"{_MEMORY_EPOCH}-{random.randrange(10**6 + 1)}"
            for index in range(32)
        }
        text = encode_cursor(positions)
        self.assertLess(len(text), 600)
        self.assertIsNotNone(_CURSOR_TEXT.fullmatch(text))
        self.assertEqual(round_trip(positions), positions)

    def test_epochs_forgotten(self) -> None:
        """
        A channel made again under new epochs, time after time, does not
        grow its subscription's cursor: the table keeps what is used.
        """
        builder = CursorBuilder()
        builder.set("b", f"{_MEMORY_EPOCH}-1")
        for step in range(50):
            builder.set("a", f"{_MEMORY_EPOCH + step}-5")
        once = CursorBuilder()
        once.set("b", f"{_MEMORY_EPOCH}-1")
        once.set("a", f"{_MEMORY_EPOCH + 49}-5")
        self.assertLess(len(builder.text()), 2 * len(once.text()) + 40)
        cursor = decode_cursor(builder.text())
        assert cursor is not None
        self.assertEqual(cursor.get("a"), f"{_MEMORY_EPOCH + 49}-5")
        self.assertEqual(cursor.get("b"), f"{_MEMORY_EPOCH}-1")

    def test_redis(self) -> None:
        """
        32 channels of the Redis broker, each with its own epoch (a
        microsecond time, in base 36) and an id some hours after it:
        under 1000 characters (about 900).
        """
        random = Random(17)
        positions = {}
        for index in range(32):
            micros = _MEMORY_EPOCH * 1000 + random.randrange(10**12)
            ms = micros // 1000 + random.randrange(86_400_000)
            positions[f"channel.{index:02d}"] = (
                f"{base36(micros)}:{ms}-{random.randrange(4)}"
            )
        text = encode_cursor(positions)
        self.assertLess(len(text), 1000)
        self.assertIsNotNone(_CURSOR_TEXT.fullmatch(text))
        self.assertEqual(round_trip(positions), positions)


class RenumberTests(SynchronousTestCase):
    """The table of epochs started afresh keeps every entry readable."""

    def test_marker_moving_through_milliseconds(self) -> None:
        """A marker that is a new epoch each time (Redis log ids)."""
        builder = CursorBuilder()
        builder.set("a", "hov3kb2nyw:1796662948518-0")
        # A Redis pattern marker is a publish log id, <ms>-<n>: each new
        # millisecond is a new epoch of the table.
        for ms in range(1796662948518, 1796662948518 + 20):
            builder.set("news.*", f"{ms}-0")
            text = builder.text()
            decoded = decode_cursor(text)
            self.assertIsNotNone(decoded, f"malformed after marker {ms}-0: {text}")
            assert decoded is not None
            self.assertEqual(decoded.get("news.*"), f"{ms}-0")
            self.assertEqual(decoded.get("a"), "hov3kb2nyw:1796662948518-0")
