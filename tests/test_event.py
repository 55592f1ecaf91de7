"""
Tests for L{twisted_sse._event}: the event value and its wire encoding.
"""

from __future__ import annotations

import json
import re
from itertools import pairwise
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import Event, EventParser, MessageEvent, encode_comment, encode_retry
from twisted_sse._event import MAX_RETRY, as_event

# Text that may appear on a single line: anything UTF-8 can carry but CR/LF.
# The sampled characters are the ones most likely to break an encoder or a
# parser (line separators that are not SSE line ends, NUL, a BOM, multi-byte
# sequences of every length).
_TRICKY = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x00", "\ufeff"]
_TRICKY += ["é", "☃", "𝄞", " ", ":"]
_LINE_CHAR = st.one_of(
    st.characters(codec="utf-8", exclude_characters="\r\n"), st.sampled_from(_TRICKY)
)
_LINE_TEXT = st.text(_LINE_CHAR, max_size=12)
_ID_TEXT = st.text(_LINE_CHAR.filter(lambda c: c != "\x00"), max_size=12)
# Data may hold line breaks of every kind.
_DATA_TEXT = st.lists(
    st.one_of(_LINE_CHAR, st.sampled_from(["\r", "\n", "\r\n"])), max_size=20
).map("".join)

_PROPERTY = settings(deadline=None, max_examples=200)


def _normalise(data: str) -> str:
    """
    The data a client reads back: CRLF and CR become LF (CR cannot be sent).
    """
    return re.sub("\r\n|\r", "\n", data)


def _chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    """
    Split C{stream} at the offsets C{cuts} (repeated offsets give empty
    chunks).
    """
    edges = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in pairwise(edges)]


class EncodeTests(SynchronousTestCase):
    """
    L{Event.encode} produces exactly the bytes the wire format requires.
    """

    def test_empty(self) -> None:
        """
        An event with no field set encodes to a lone blank line.
        """
        self.assertEqual(Event().encode(), b"\n")

    def test_data(self) -> None:
        """
        Data is one C{data: } line followed by the blank line that dispatches.
        """
        self.assertEqual(Event(data="hello").encode(), b"data: hello\n\n")

    def test_all_fields(self) -> None:
        """
        Every field appears once, in a fixed order, with LF line endings.
        """
        event = Event(data="a\nb", event="update", id="42", retry=1000, comment="c")
        self.assertEqual(
            event.encode(),
            b": c\nretry: 1000\nid: 42\nevent: update\ndata: a\ndata: b\n\n",
        )

    def test_utf8(self) -> None:
        """
        Text is encoded as UTF-8, whatever the characters.
        """
        event = Event(data="café ☃ 𝄞", event="é", id="☃")
        self.assertEqual(
            event.encode(),
            "id: ☃\nevent: é\ndata: café ☃ 𝄞\n\n".encode(),
        )

    def test_empty_data(self) -> None:
        """
        Empty data is one empty C{data: } line, so the event still dispatches.
        """
        self.assertEqual(Event(data="").encode(), b"data: \n\n")

    def test_no_data(self) -> None:
        """
        Without data no C{data} line is written.
        """
        self.assertEqual(Event(id="1").encode(), b"id: 1\n\n")

    def test_data_split_on_lf(self) -> None:
        """
        Data is split on LF, one C{data: } line per piece.
        """
        self.assertEqual(Event(data="a\nb").encode(), b"data: a\ndata: b\n\n")

    def test_data_split_on_cr(self) -> None:
        """
        Data is split on a lone CR, which is never written to the wire.
        """
        self.assertEqual(Event(data="a\rb").encode(), b"data: a\ndata: b\n\n")

    def test_data_split_on_crlf(self) -> None:
        """
        CRLF in data is one line break, not two.
        """
        self.assertEqual(Event(data="a\r\nb").encode(), b"data: a\ndata: b\n\n")

    def test_data_lf_cr_is_two_breaks(self) -> None:
        """
        LF followed by CR is two line breaks, so an empty piece between them.
        """
        self.assertEqual(Event(data="a\n\rb").encode(), b"data: a\ndata: \ndata: b\n\n")

    def test_data_trailing_break(self) -> None:
        """
        A trailing line break in data gives a trailing empty C{data: } line.
        """
        self.assertEqual(Event(data="a\n").encode(), b"data: a\ndata: \n\n")
        self.assertEqual(Event(data="\n").encode(), b"data: \ndata: \n\n")

    def test_data_not_split_on_other_separators(self) -> None:
        """
        U+2028, U+2029, U+0085, VT, FF and FS are data, not line breaks.
        """
        for separator in ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"]:
            data = f"a{separator}b"
            self.assertEqual(
                Event(data=data).encode(),
                f"data: {data}\n\n".encode(),
                repr(separator),
            )

    def test_output_has_no_cr(self) -> None:
        """
        The encoder writes LF line endings only, whatever the data held.
        """
        self.assertNotIn(b"\r", Event(data="a\r\nb\rc\n", id="1").encode())

    def test_leading_space_kept(self) -> None:
        """
        A leading space in a value is doubled, so one stripped leaves it.
        """
        self.assertEqual(
            Event(data=" d", event=" e", id=" i").encode(),
            b"id:  i\nevent:  e\ndata:  d\n\n",
        )

    def test_empty_id(self) -> None:
        """
        An empty id is sent as a bare C{id} line, which resets the client's id.
        """
        self.assertEqual(Event(id="").encode(), b"id:\n\n")

    def test_retry(self) -> None:
        """
        Retry is written in decimal digits.
        """
        self.assertEqual(Event(retry=3000).encode(), b"retry: 3000\n\n")
        self.assertEqual(Event(retry=0).encode(), b"retry: 0\n\n")

    def test_comment(self) -> None:
        """
        A comment is a line starting with a colon.
        """
        self.assertEqual(Event(comment="hi").encode(), b": hi\n\n")
        self.assertEqual(Event(comment="").encode(), b":\n\n")

    def test_encode_comment(self) -> None:
        """
        L{encode_comment} encodes a comment-only frame; bare by default.
        """
        self.assertEqual(encode_comment(), b":\n\n")
        self.assertEqual(encode_comment("ping"), b": ping\n\n")

    def test_encode_retry(self) -> None:
        """
        L{encode_retry} encodes a retry-only frame.
        """
        self.assertEqual(encode_retry(1500), b"retry: 1500\n\n")


class RejectTests(SynchronousTestCase):
    """
    Values the wire format cannot carry raise L{ValueError} naming the field,
    when the event is made, so no frame can be injected.
    """

    def assertRejected(self, name: str, value: object) -> None:
        """
        Making an L{Event} with C{name} set to C{value} raises L{ValueError}
        whose message names the field.
        """
        with self.assertRaises(ValueError) as raised:
            Event(**{name: value})  # type: ignore[arg-type]
        self.assertRegex(str(raised.exception), rf"\b{name}\b")

    def test_event_line_break(self) -> None:
        """
        An event type containing CR, LF or CRLF is rejected.
        """
        for value in ["a\nb", "a\rb", "a\r\nb", "x\n\ndata: forged", "\n"]:
            self.assertRejected("event", value)

    def test_id_line_break(self) -> None:
        """
        An id containing CR, LF or CRLF is rejected.
        """
        for value in ["1\n", "1\r2", "1\r\n2", "1\n\ndata: forged", "\r"]:
            self.assertRejected("id", value)

    def test_id_nul(self) -> None:
        """
        An id containing NUL is rejected (clients would ignore it).
        """
        for value in ["\x00", "a\x00", "\x00b", "a\x00b"]:
            self.assertRejected("id", value)

    def test_comment_line_break(self) -> None:
        """
        A comment containing CR, LF or CRLF is rejected.
        """
        for value in ["a\nb", "a\rb", "a\r\nb", "x\ndata: forged"]:
            self.assertRejected("comment", value)

    def test_encode_comment_line_break(self) -> None:
        """
        L{encode_comment} refuses a multi-line comment.
        """
        self.assertRaises(ValueError, encode_comment, "a\nb")

    def test_retry_not_non_negative_integer(self) -> None:
        """
        Retry that is negative, past MAX_RETRY, a bool, a float or a str is
        rejected.
        """
        for value in [-1, MAX_RETRY + 1, 10**15, True, False, 1.5, 3000.0, "3000"]:
            self.assertRejected("retry", value)

    def test_encode_retry_negative(self) -> None:
        """
        L{encode_retry} refuses a negative time.
        """
        self.assertRaises(ValueError, encode_retry, -1)

    def test_data_not_str(self) -> None:
        """
        Data that is not a str (bytes, say) is rejected, not sent as repr.
        """
        self.assertRejected("data", b"bytes")

    @_PROPERTY
    @given(
        name=st.sampled_from(["event", "id", "comment"]),
        before=_LINE_TEXT,
        line_break=st.sampled_from(["\r", "\n", "\r\n"]),
        after=_LINE_TEXT,
    )
    def test_any_line_break_rejected(
        self, name: str, before: str, line_break: str, after: str
    ) -> None:
        """
        Any single-line field with a CR or LF anywhere in it is rejected.
        """
        self.assertRejected(name, before + line_break + after)

    def test_lone_surrogate(self) -> None:
        """
        A lone surrogate (not UTF-8) is rejected at creation in any text field.
        """
        for name in ["data", "event", "id", "comment"]:
            self.assertRejected(name, "a\udc80b")

    def test_evolve_validates(self) -> None:
        """
        A forbidden value cannot be smuggled in by L{attrs.evolve}.
        """
        event = Event(data="x", id="1")
        self.assertRaises(ValueError, attrs.evolve, event, id="1\ndata: forged")

    def test_frozen(self) -> None:
        """
        An event is immutable, so a validated event stays valid.
        """
        event = Event(id="1")
        self.assertRaises(
            attrs.exceptions.FrozenInstanceError,
            setattr,
            event,
            "id",
            "1\ndata: forged",
        )


def _parse(chunks: list[bytes], parser: EventParser) -> list[MessageEvent]:
    """
    Feed C{chunks} to C{parser}, end the stream, return the events fired.
    """
    events: list[MessageEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    parser.end()
    return events


class RoundTripTests(SynchronousTestCase):
    """
    What the encoder writes, the parser reads back unchanged.
    """

    @_PROPERTY
    @given(
        data=_DATA_TEXT,
        event=st.none() | _LINE_TEXT,
        event_id=st.none() | _ID_TEXT,
        retry=st.none() | st.integers(min_value=0, max_value=MAX_RETRY),
        comment=st.none() | _LINE_TEXT,
    )
    def test_round_trip(
        self,
        data: str,
        event: str | None,
        event_id: str | None,
        retry: int | None,
        comment: str | None,
    ) -> None:
        """
        One encoded event parses back as exactly one equal message event.
        """
        parser = EventParser(last_event_id="previous")
        frame = Event(data=data, event=event, id=event_id, retry=retry, comment=comment)
        events = _parse([frame.encode()], parser)
        expected_id = "previous" if event_id is None else event_id
        self.assertEqual(
            events,
            [
                MessageEvent(
                    type=event or "message",
                    data=_normalise(data),
                    last_event_id=expected_id,
                )
            ],
        )
        self.assertEqual(parser.last_event_id, expected_id)
        self.assertEqual(parser.retry, retry)

    @_PROPERTY
    @given(
        event_id=st.none() | _ID_TEXT,
        retry=st.none() | st.integers(min_value=0, max_value=MAX_RETRY),
    )
    def test_round_trip_no_data(self, event_id: str | None, retry: int | None) -> None:
        """
        An event without data fires nothing but still sets id and retry.
        """
        parser = EventParser(last_event_id="previous")
        frame = Event(id=event_id, retry=retry)
        self.assertEqual(_parse([frame.encode()], parser), [])
        expected_id = "previous" if event_id is None else event_id
        self.assertEqual(parser.last_event_id, expected_id)
        self.assertEqual(parser.retry, retry)

    @_PROPERTY
    @given(
        frames=st.lists(
            st.builds(
                Event,
                data=st.none() | _DATA_TEXT,
                event=st.none() | _LINE_TEXT,
                id=st.none() | _ID_TEXT,
                comment=st.none() | _LINE_TEXT,
            ),
            max_size=8,
        ),
        cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
    )
    def test_stream_round_trip(self, frames: list[Event], cuts: list[int]) -> None:
        """
        Encoded events, chunked anywhere, parse back in order with their ids.
        """
        stream = b"".join(frame.encode() for frame in frames)
        expected = []
        last_event_id = ""
        for frame in frames:
            if frame.id is not None:
                last_event_id = frame.id
            if frame.data is not None:
                expected.append(
                    MessageEvent(
                        type=frame.event or "message",
                        data=_normalise(frame.data),
                        last_event_id=last_event_id,
                    )
                )
        chunks = _chunked(stream, [cut % (len(stream) + 1) for cut in cuts])
        parser = EventParser()
        self.assertEqual(_parse(chunks, parser), expected)
        self.assertEqual(parser.last_event_id, last_event_id)


class AsEventTests(SynchronousTestCase):
    """as_event: the message that sends a value given to send or yielded."""

    def test_event_as_is(self) -> None:
        """An Event is returned as it is."""
        event = Event(data="x", event="y", id="1")
        self.assertIs(as_event(event), event)

    def test_str(self) -> None:
        """A str is the data."""
        self.assertEqual(as_event("hello"), Event(data="hello"))
        self.assertEqual(as_event(""), Event(data=""))

    def test_bytes(self) -> None:
        """bytes and bytearray are read as UTF-8; invalid sequences become U+FFFD."""
        self.assertEqual(as_event("☃".encode()), Event(data="☃"))
        self.assertEqual(as_event(bytearray(b"ab")), Event(data="ab"))
        self.assertEqual(as_event(b"a\xffb\xe2\x98"), Event(data="a\ufffdb\ufffd"))

    def test_json(self) -> None:
        """A dict or list is its compact JSON text, non-ASCII kept as it is."""
        self.assertEqual(as_event({"a": [1, "é"]}), Event(data='{"a":[1,"é"]}'))
        self.assertEqual(as_event([]), Event(data="[]"))

    def test_json_refusals(self) -> None:
        """What JSON.parse could not read is refused when the event is made."""
        with self.assertRaises(ValueError):
            as_event([float("inf")])
        with self.assertRaises(TypeError) as caught:
            as_event({"s": {1, 2}})
        self.assertIn("set", str(caught.exception))

    def test_other_types(self) -> None:
        """Anything else is a TypeError naming its type and what send takes."""
        for value, name in [(3, "int"), (None, "NoneType"), ((1,), "tuple")]:
            with self.assertRaises(TypeError) as caught:
                as_event(value)  # type: ignore[arg-type]
            self.assertIn(f"cannot send a {name}", str(caught.exception))
            self.assertIn("Event, a str, bytes", str(caught.exception))

    def test_lone_surrogate(self) -> None:
        """A str the wire cannot carry is refused as Event refuses it."""
        with self.assertRaises(ValueError):
            as_event("\ud800")

    @_PROPERTY
    @given(_DATA_TEXT)
    def test_str_round_trip(self, text: str) -> None:
        """A client reads back the str sent (line ends made LF)."""
        (message,) = EventParser().feed(as_event(text).encode())
        self.assertEqual(message.data, _normalise(text))

    @_PROPERTY
    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(st.characters(codec="utf-8")),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=4), inner, max_size=4)
            ),
            max_leaves=12,
        ).filter(lambda value: isinstance(value, (dict, list)))
    )
    def test_json_round_trip(self, value: Any) -> None:
        """A client reads back the JSON of what was sent, as one message."""
        (message,) = EventParser().feed(as_event(value).encode())
        self.assertEqual(json.loads(message.data), value)
