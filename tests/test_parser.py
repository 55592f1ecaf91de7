"""
Tests for L{twisted_sse._parser}: the WHATWG "parse an event stream"
algorithm, one rule per test, then properties over random streams.
"""

from __future__ import annotations

import re
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import EventParser, MessageEvent
from twisted_sse._parser import (
    DEFAULT_MAX_EVENT_DATA_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    LimitExceeded,
)

BOM = b"\xef\xbb\xbf"


def parse(*chunks: bytes, parser: EventParser | None = None) -> list[MessageEvent]:
    """
    Feed C{chunks} to C{parser} (a new one by default), end the stream, and
    return every event dispatched.
    """
    if parser is None:
        parser = EventParser()
    events: list[MessageEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    parser.end()
    return events


def message(data: str, type: str = "message", last_event_id: str = "") -> MessageEvent:
    """
    The event a client sees, with no origin.
    """
    return MessageEvent(type=type, data=data, last_event_id=last_event_id)


class BOMTests(SynchronousTestCase):
    """
    Exactly one leading UTF-8 BOM is removed per stream.
    """

    def test_removed(self) -> None:
        """
        A leading BOM is removed, so the first field name is recognised.
        """
        self.assertEqual(parse(BOM + b"data: x\n\n"), [message("x")])

    def test_split_one_two(self) -> None:
        """
        A BOM split 1+2 bytes over chunks is still removed.
        """
        self.assertEqual(parse(BOM[:1], BOM[1:] + b"data: x\n\n"), [message("x")])

    def test_split_two_one(self) -> None:
        """
        A BOM split 2+1 bytes over chunks is still removed.
        """
        self.assertEqual(parse(BOM[:2], BOM[2:] + b"data: x\n\n"), [message("x")])

    def test_split_one_one_one(self) -> None:
        """
        A BOM fed one byte at a time, then the rest, is still removed.
        """
        self.assertEqual(
            parse(BOM[:1], BOM[1:2], BOM[2:], b"data: x\n\n"), [message("x")]
        )

    def test_empty_chunks_before(self) -> None:
        """
        Empty chunks before and inside the BOM do not disturb its removal.
        """
        self.assertEqual(
            parse(b"", BOM[:1], b"", BOM[1:], b"", b"data: x\n\n"), [message("x")]
        )

    def test_second_bom_kept(self) -> None:
        """
        A second BOM is text: it makes the first field name unknown.
        """
        self.assertEqual(parse(BOM + BOM + b"data: x\n\ndata: y\n\n"), [message("y")])

    def test_second_bom_in_data(self) -> None:
        """
        A BOM after the leading one is kept as U+FEFF in the data.
        """
        self.assertEqual(parse(BOM + b"data: " + BOM + b"x\n\n"), [message("\ufeffx")])

    def test_bom_in_later_chunk_kept(self) -> None:
        """
        A BOM at the start of a later chunk is text, not a stream start.
        """
        self.assertEqual(parse(b"data: a\n", BOM + b"data: b\n\n"), [message("a")])

    def test_partial_bom_released(self) -> None:
        """
        Bytes held back as a possible BOM are parsed as text, not dropped.
        """
        # If the two bytes were dropped, "data: x" would be a data field and
        # the first block would fire too.
        self.assertEqual(
            parse(BOM[:1], BOM[1:2], b"data: x\n\ndata: y\n\n"), [message("y")]
        )

    def test_partial_bom_then_line_end(self) -> None:
        """
        A partial BOM ended by a line end is a line of its own, not held on.
        """
        self.assertEqual(parse(BOM[:2], b"\ndata: y\n\n"), [message("y")])
        self.assertEqual(parse(BOM[:1], b"\rdata: y\r\r"), [message("y")])

    def test_utf16_bom_kept(self) -> None:
        """
        A UTF-16 BOM is not removed: the stream is always UTF-8.
        """
        self.assertEqual(parse(b"\xff\xfedata: x\n\ndata: y\n\n"), [message("y")])


class LineEndTests(SynchronousTestCase):
    """
    A line ends at CRLF, LF or CR, and nowhere else.
    """

    def test_lf(self) -> None:
        """
        LF ends a line.
        """
        self.assertEqual(parse(b"data: a\ndata: b\n\n"), [message("a\nb")])

    def test_cr(self) -> None:
        """
        A lone CR ends a line.
        """
        self.assertEqual(parse(b"data: a\rdata: b\r\r"), [message("a\nb")])

    def test_crlf(self) -> None:
        """
        CRLF is one line end, not two (which would dispatch early).
        """
        self.assertEqual(parse(b"data: a\r\ndata: b\r\n\r\n"), [message("a\nb")])

    def test_mixed(self) -> None:
        """
        The three line ends may be mixed in one stream.
        """
        self.assertEqual(
            parse(b"data: a\rdata: b\ndata: c\r\n\ndata: d\n\r"),
            [message("a\nb\nc"), message("d")],
        )

    def test_lf_cr_is_two(self) -> None:
        """
        LF then CR is two line ends: the second is a blank line.
        """
        self.assertEqual(parse(b"data: a\n\rdata: b\n\n"), [message("a"), message("b")])

    def test_other_separators_are_data(self) -> None:
        """
        U+2028, U+2029, U+0085, VT, FF, FS, GS and RS do not end a line.
        """
        for separator in "\u2028\u2029\x85\x0b\x0c\x1c\x1d\x1e":
            stream = f"data: a{separator}b\n\n".encode()
            self.assertEqual(
                parse(stream), [message(f"a{separator}b")], repr(separator)
            )

    def test_cr_at_chunk_end_dispatches_at_once(self) -> None:
        """
        A blank line ended by a chunk-final CR dispatches at once.
        """
        parser = EventParser()
        self.assertEqual(parser.feed(b"data: x\r"), [])
        self.assertEqual(parser.feed(b"\r"), [message("x")])

    def test_lf_after_cr_swallowed(self) -> None:
        """
        An LF opening the chunk after a final CR completes that CRLF.
        """
        self.assertEqual(parse(b"data: x\r", b"\ndata: y\n\n"), [message("x\ny")])

    def test_lf_after_cr_swallowed_across_empty_chunk(self) -> None:
        """
        An empty chunk between CR and LF does not make the LF a line end.
        """
        self.assertEqual(parse(b"data: x\r", b"", b"\ndata: y\n\n"), [message("x\ny")])

    def test_only_one_lf_swallowed(self) -> None:
        """
        Only the LF completing the CRLF is swallowed; a second is a blank line.
        """
        parser = EventParser()
        self.assertEqual(parser.feed(b"data: x\r"), [])
        self.assertEqual(parser.feed(b"\n\n"), [message("x")])

    def test_lf_swallowed_only_right_after_cr(self) -> None:
        """
        An LF opening a chunk not preceded by a final CR is a line end.
        """
        self.assertEqual(
            parse(b"data: x\r", b"data: y\n", b"\ndata: z\n\n"),
            [message("x\ny"), message("z")],
        )

    def test_cr_then_cr_chunk(self) -> None:
        """
        CR, then a chunk of CR LF, is two line ends: CR and CRLF.
        """
        parser = EventParser()
        self.assertEqual(parser.feed(b"data: x\r"), [])
        self.assertEqual(parser.feed(b"\r\n"), [message("x")])
        self.assertEqual(parser.feed(b"data: y\n\n"), [message("y")])

    def test_line_split_across_chunks(self) -> None:
        """
        A line split across chunks is joined before it is interpreted.
        """
        self.assertEqual(parse(b"da", b"ta: hel", b"lo\n", b"\n"), [message("hello")])

    def test_byte_at_a_time(self) -> None:
        """
        Feeding one byte per chunk gives the same events as feeding the whole.
        """
        stream = (
            BOM + b"id: 1\r\nevent: e\rdata: \xe2\x98\x83\n\r\n: c\r"
            b"data: a\r\ndata: \xf0\x9d\x84\x9e\r\rretry: 7\ndata\n\n"
        )
        expected = [
            message("☃", "e", "1"),
            message("a\n𝄞", last_event_id="1"),
            message("", last_event_id="1"),
        ]
        self.assertEqual(parse(stream), expected)
        self.assertEqual(
            parse(*[stream[i : i + 1] for i in range(len(stream))]), expected
        )

    def test_events_in_stream_order(self) -> None:
        """
        A chunk completing several events returns them all, in order.
        """
        parser = EventParser()
        self.assertEqual(
            parser.feed(b"data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4"),
            [message("1"), message("2"), message("3")],
        )
        self.assertEqual(parser.feed(b"\n\n"), [message("4")])


class DecodingTests(SynchronousTestCase):
    """
    The stream is UTF-8, decoded with replacement.
    """

    def test_multibyte_split(self) -> None:
        """
        A multi-byte sequence split across chunks decodes as one character.
        """
        for text in ["é", "☃", "𝄞"]:
            encoded = text.encode()
            for cut in range(1, len(encoded)):
                self.assertEqual(
                    parse(b"data: " + encoded[:cut], encoded[cut:] + b"\n\n"),
                    [message(text)],
                    (text, cut),
                )

    def test_multibyte_byte_at_a_time(self) -> None:
        """
        Multi-byte text fed one byte per chunk decodes correctly.
        """
        encoded = "data: é☃𝄞\n\n".encode()
        self.assertEqual(
            parse(*[encoded[i : i + 1] for i in range(len(encoded))]),
            [message("é☃𝄞")],
        )

    def test_invalid_byte(self) -> None:
        """
        An invalid byte becomes U+FFFD.
        """
        self.assertEqual(parse(b"data: a\xffb\n\n"), [message("a\ufffdb")])

    def test_truncated_sequence_at_line_end(self) -> None:
        """
        A sequence cut short by a line end is U+FFFD; the line end counts.
        """
        self.assertEqual(parse(b"data: \xe2\x98\n\n"), [message("\ufffd")])
        self.assertEqual(parse(b"data: \xf0\x9d\x84\r\r"), [message("\ufffd")])

    def test_encoded_surrogate(self) -> None:
        """
        An encoded surrogate is three U+FFFD, as the WHATWG decoder gives.
        """
        self.assertEqual(parse(b"data: \xed\xa0\x80\n\n"), [message("\ufffd" * 3)])

    def test_invalid_in_field_name(self) -> None:
        """
        Invalid bytes in a field name make it an unknown field.
        """
        self.assertEqual(parse(b"dat\xe1: x\n\ndata: y\n\n"), [message("y")])


class FieldTests(SynchronousTestCase):
    """
    How a line becomes a field name and a value.
    """

    def test_comment(self) -> None:
        """
        A line starting with a colon is a comment and fires nothing.
        """
        self.assertEqual(parse(b": hello\n\n", b":\n\n", b": data: x\n\n"), [])

    def test_comment_inside_block(self) -> None:
        """
        A comment inside a block neither ends nor changes it.
        """
        self.assertEqual(parse(b"data: a\n: c\ndata: b\n\n"), [message("a\nb")])

    def test_no_colon(self) -> None:
        """
        A line without a colon is a field with an empty value.
        """
        self.assertEqual(parse(b"data\n\n"), [message("")])
        self.assertEqual(parse(b"data\ndata\n\n"), [message("\n")])

    def test_one_space_removed(self) -> None:
        """
        Exactly one space after the colon is removed.
        """
        self.assertEqual(parse(b"data: x\n\n"), [message("x")])
        self.assertEqual(parse(b"data:x\n\n"), [message("x")])
        self.assertEqual(parse(b"data:  x\n\n"), [message(" x")])
        self.assertEqual(parse(b"data: \n\n"), [message("")])
        self.assertEqual(parse(b"data:  \n\n"), [message(" ")])

    def test_only_space_removed(self) -> None:
        """
        A tab after the colon is kept, and so are trailing spaces.
        """
        self.assertEqual(parse(b"data:\tx \n\n"), [message("\tx ")])

    def test_later_colons_in_value(self) -> None:
        """
        The name ends at the first colon; later colons are in the value.
        """
        self.assertEqual(parse(b"data: a:b: c\n\n"), [message("a:b: c")])
        self.assertEqual(parse(b"data::\n\n"), [message(":")])

    def test_exact_names(self) -> None:
        """
        Field names are exact: a different case or a space makes them unknown.
        """
        for line in [b"Data: x", b" data: x", b"data : x", b"DATA: x", b"data\t: x"]:
            self.assertEqual(parse(line + b"\n\ndata: y\n\n"), [message("y")], line)
        self.assertEqual(
            parse(b"Event: e\nID: 1\nRetry: 5\ndata: y\n\n"), [message("y")]
        )

    def test_unknown_field_ignored(self) -> None:
        """
        An unknown field changes nothing.
        """
        self.assertEqual(
            parse(b"data: a\nfoo: bar\nfoo\ndata: b\n\n"), [message("a\nb")]
        )

    def test_nul_in_data_kept(self) -> None:
        """
        NUL is ordinary data.
        """
        self.assertEqual(parse(b"data: a\x00b\n\n"), [message("a\x00b")])


class EventTypeTests(SynchronousTestCase):
    """
    The C{event} field sets the type of the next event.
    """

    def test_type(self) -> None:
        """
        The C{event} field's value is the event type.
        """
        self.assertEqual(parse(b"event: update\ndata: x\n\n"), [message("x", "update")])

    def test_default(self) -> None:
        """
        Without an C{event} field the type is C{message}.
        """
        self.assertEqual(parse(b"data: x\n\n"), [message("x", "message")])

    def test_empty_is_message(self) -> None:
        """
        An empty C{event} field gives the type C{message}, even after another.
        """
        self.assertEqual(parse(b"event:\ndata: x\n\n"), [message("x")])
        self.assertEqual(parse(b"event: a\nevent\ndata: x\n\n"), [message("x")])

    def test_last_wins(self) -> None:
        """
        The last C{event} field in a block wins.
        """
        self.assertEqual(parse(b"event: a\nevent: b\ndata: x\n\n"), [message("x", "b")])

    def test_after_data(self) -> None:
        """
        An C{event} field after the data still applies to that block.
        """
        self.assertEqual(parse(b"data: x\nevent: e\n\n"), [message("x", "e")])

    def test_value_kept(self) -> None:
        """
        The type keeps its case and all but the one leading space.
        """
        self.assertEqual(
            parse(b"event:  Up date \ndata: x\n\n"), [message("x", " Up date ")]
        )

    def test_reset_after_dispatch(self) -> None:
        """
        The type does not carry over to the next event.
        """
        self.assertEqual(
            parse(b"event: a\ndata: 1\n\ndata: 2\n\n"),
            [message("1", "a"), message("2")],
        )

    def test_reset_without_data(self) -> None:
        """
        A block with a type but no data fires nothing yet resets the type.
        """
        self.assertEqual(parse(b"event: a\n\ndata: 2\n\n"), [message("2")])


class DataTests(SynchronousTestCase):
    """
    The C{data} field builds the event's data.
    """

    def test_lines_joined(self) -> None:
        """
        Several C{data} lines are joined with LF.
        """
        self.assertEqual(parse(b"data: a\ndata: b\ndata: c\n\n"), [message("a\nb\nc")])

    def test_one_trailing_lf_removed(self) -> None:
        """
        Only the final LF is removed, so an empty last line leaves one.
        """
        self.assertEqual(parse(b"data: a\ndata:\n\n"), [message("a\n")])
        self.assertEqual(parse(b"data:\ndata:\n\n"), [message("\n")])

    def test_empty_data_fires(self) -> None:
        """
        One empty C{data} field fires an event with empty data.
        """
        self.assertEqual(parse(b"data:\n\n"), [message("")])

    def test_no_data_no_event(self) -> None:
        """
        Blank lines and blocks without data fire nothing.
        """
        self.assertEqual(parse(b"\n\n\n", b"event: e\n\n", b"id: 1\n\n"), [])

    def test_data_reset_after_dispatch(self) -> None:
        """
        Data does not carry over into the next event.
        """
        self.assertEqual(parse(b"data: a\n\ndata: b\n\n"), [message("a"), message("b")])


class RetryTests(SynchronousTestCase):
    """
    The C{retry} field sets the reconnection time when it is ASCII digits.
    """

    def assertRetry(self, stream: bytes, expected: int | None) -> None:
        """
        After parsing C{stream}, the parser's retry is C{expected}.
        """
        parser = EventParser()
        parse(stream, parser=parser)
        self.assertEqual(parser.retry, expected, stream)

    def test_default(self) -> None:
        """
        Without a C{retry} field the retry is L{None}.
        """
        self.assertRetry(b"data: x\n\n", None)

    def test_digits(self) -> None:
        """
        ASCII digits set the retry in milliseconds.
        """
        self.assertRetry(b"retry: 3000\n\n", 3000)
        self.assertRetry(b"retry:0\n\n", 0)
        self.assertRetry(b"retry: 99999999999999999999\n", 99999999999999999999)

    def test_leading_zeros(self) -> None:
        """
        Leading zeros are allowed: C{03000} is 3000.
        """
        self.assertRetry(b"retry: 03000\n\n", 3000)

    def test_invalid_ignored(self) -> None:
        """
        A value that is not only ASCII digits is ignored; the retry stays.
        """
        values = [
            "1.5",
            "-1",
            "+1",
            "1e3",
            "10ms",
            "0x10",
            "10 ",
            " 10",  # "retry:  10": one space removed, one left
            "1 0",
            "٣",  # ARABIC-INDIC DIGIT THREE
            "²",  # SUPERSCRIPT TWO
            "\uff11\uff10",  # FULLWIDTH DIGITS ONE ZERO
            "",
        ]
        for value in values:
            stream = f"retry: 1000\nretry: {value}\n\n".encode()
            self.assertRetry(stream, 1000)
            self.assertRetry(f"retry: {value}\n\n".encode(), None)

    def test_no_colon_ignored(self) -> None:
        """
        A bare C{retry} line is an empty value, which is ignored.
        """
        self.assertRetry(b"retry: 1000\nretry\n\n", 1000)

    def test_applied_without_dispatch(self) -> None:
        """
        Retry applies when its line is read, even if the block never fires.
        """
        parser = EventParser()
        self.assertEqual(parser.feed(b"data: x\nretry: 5000\n"), [])
        self.assertEqual(parser.retry, 5000)
        parser.end()
        self.assertEqual(parser.retry, 5000)

    def test_last_wins(self) -> None:
        """
        A later valid retry replaces an earlier one.
        """
        self.assertRetry(b"retry: 1\n\nretry: 2\n", 2)

    def test_unterminated_ignored(self) -> None:
        """
        A C{retry} line cut off by the end of the stream is discarded.
        """
        self.assertRetry(b"retry: 1\nretry: 2", 1)

    def test_no_event(self) -> None:
        """
        A retry-only block fires nothing.
        """
        self.assertEqual(parse(b"retry: 10\n\n"), [])


class IdTests(SynchronousTestCase):
    """
    The C{id} field sets the last event id, committed at dispatch.
    """

    def test_id(self) -> None:
        """
        The C{id} field's value is the event's last event id.
        """
        self.assertEqual(parse(b"id: 42\ndata: x\n\n"), [message("x", "message", "42")])

    def test_default(self) -> None:
        """
        Without any C{id} field the last event id is empty.
        """
        parser = EventParser()
        self.assertEqual(parse(b"data: x\n\n", parser=parser), [message("x")])
        self.assertEqual(parser.last_event_id, "")

    def test_value_kept(self) -> None:
        """
        The id keeps all but the one leading space, and may be any text.
        """
        self.assertEqual(
            parse("id:  a b ☃\ndata: x\n\n".encode()),
            [message("x", last_event_id=" a b ☃")],
        )

    def test_nul_ignored(self) -> None:
        """
        An C{id} containing NUL anywhere is ignored: the previous id stays.
        """
        for value in [b"\x00", b"a\x00", b"\x00b", b"a\x00b"]:
            self.assertEqual(
                parse(b"id: 1\n\nid: " + value + b"\ndata: x\n\n"),
                [message("x", last_event_id="1")],
                value,
            )

    def test_empty_resets(self) -> None:
        """
        An empty C{id}, with or without colon or space, resets the id.
        """
        for line in [b"id", b"id:", b"id: "]:
            self.assertEqual(
                parse(b"id: 1\ndata: a\n\n" + line + b"\ndata: b\n\n"),
                [message("a", last_event_id="1"), message("b")],
                line,
            )

    def test_last_wins(self) -> None:
        """
        The last valid C{id} in a block wins.
        """
        self.assertEqual(
            parse(b"id: 1\nid: 2\ndata: x\n\n"), [message("x", last_event_id="2")]
        )

    def test_after_data(self) -> None:
        """
        An C{id} after the data still applies to that event.
        """
        self.assertEqual(
            parse(b"data: x\nid: 5\n\n"), [message("x", last_event_id="5")]
        )

    def test_not_committed_before_dispatch(self) -> None:
        """
        The id is committed at the blank line, not when its line is read.
        """
        parser = EventParser()
        self.assertEqual(parser.feed(b"id: 7\n"), [])
        self.assertEqual(parser.last_event_id, "")
        self.assertEqual(parser.feed(b"\n"), [])
        self.assertEqual(parser.last_event_id, "7")

    def test_committed_without_data(self) -> None:
        """
        An id-only block commits the id, and later events carry it.
        """
        parser = EventParser()
        self.assertEqual(parser.feed(b"id: 7\n\n"), [])
        self.assertEqual(parser.last_event_id, "7")
        self.assertEqual(parser.feed(b"data: x\n\n"), [message("x", last_event_id="7")])

    def test_carried_over(self) -> None:
        """
        The id buffer is not cleared at dispatch: later events keep the id.
        """
        self.assertEqual(
            parse(b"id: 1\ndata: a\n\ndata: b\n\n"),
            [message("a", last_event_id="1"), message("b", last_event_id="1")],
        )

    def test_carried_over_block_without_id(self) -> None:
        """
        A blank line with no new id commits the id already buffered.
        """
        parser = EventParser()
        parse(b"id: 1\ndata: a\n\n\n\n", parser=parser)
        self.assertEqual(parser.last_event_id, "1")

    def test_dropped_block_not_committed(self) -> None:
        """
        The id of a block cut off by the end of the stream is not committed.
        """
        parser = EventParser()
        parse(b"id: 1\n\nid: 2\ndata: x\n", parser=parser)
        self.assertEqual(parser.last_event_id, "1")

    def test_seeded(self) -> None:
        """
        A parser seeded with a last event id starts from it, as on reconnect.
        """
        parser = EventParser(last_event_id="41")
        self.assertEqual(parser.last_event_id, "41")
        self.assertEqual(
            parse(b"data: x\n\n", parser=parser), [message("x", last_event_id="41")]
        )

    def test_seeded_then_reset(self) -> None:
        """
        An empty C{id} resets a seeded id.
        """
        parser = EventParser(last_event_id="41")
        self.assertEqual(parse(b"id\ndata: x\n\n", parser=parser), [message("x")])
        self.assertEqual(parser.last_event_id, "")

    def test_seeded_then_replaced(self) -> None:
        """
        A new id replaces a seeded one.
        """
        parser = EventParser(last_event_id="41")
        self.assertEqual(
            parse(b"id: 42\ndata: x\n\n", parser=parser),
            [message("x", last_event_id="42")],
        )


class EndTests(SynchronousTestCase):
    """
    At the end of the stream an unfinished block is discarded.
    """

    def test_block_without_blank_line(self) -> None:
        """
        A block lacking its blank line is dropped at end(), never dispatched.
        """
        parser = EventParser()
        self.assertEqual(parser.feed(b"data: x\n"), [])
        parser.end()
        self.assertEqual(parser.feed(b"\n"), [])

    def test_unterminated_line(self) -> None:
        """
        An unterminated last line is discarded, even after complete events.
        """
        parser = EventParser()
        self.assertEqual(parser.feed(b"data: x\n\ndata: y"), [message("x")])
        parser.end()
        self.assertEqual(parser.feed(b"\n\n"), [])

    def test_keeps_state(self) -> None:
        """
        The committed id and the retry survive the end of the stream.
        """
        parser = EventParser()
        parse(b"id: 1\nretry: 5\ndata: x\n\nid: 2\n", parser=parser)
        self.assertEqual((parser.last_event_id, parser.retry), ("1", 5))


class ProcessLineTests(SynchronousTestCase):
    """
    EventParser.process_line is the hook that sees every line.
    """

    def test_override_sees_each_line(self) -> None:
        """
        An override gets each line once, in order, without its line end or
        the leading BOM, however the chunks split, and its events are fed.
        """

        class Lines(EventParser):
            def __init__(self) -> None:
                super().__init__()
                self.seen: list[bytes] = []

            def process_line(self, line: bytes) -> MessageEvent | None:
                self.seen.append(line)
                return super().process_line(line)

        stream = BOM + b"id: 1\r\ndata: a\r\rdata: b\n\n: hi\n"
        for size in (1, 2, len(stream)):
            parser = Lines()
            chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
            self.assertEqual(
                parse(*chunks, parser=parser),
                [message("a", last_event_id="1"), message("b", last_event_id="1")],
            )
            self.assertEqual(
                parser.seen,
                [b"id: 1", b"data: a", b"", b"data: b", b"", b": hi"],
                size,
            )

    def test_direct_call(self) -> None:
        """
        Called directly, a field line returns nothing and a blank line
        dispatches what the lines before it gathered.
        """
        parser = EventParser()
        self.assertIsNone(parser.process_line(b"data: x"))
        self.assertEqual(parser.process_line(b""), message("x"))


class OriginTests(SynchronousTestCase):
    """
    Events carry the origin the parser was made with.
    """

    def test_origin(self) -> None:
        """
        Every event is stamped with the parser's origin.
        """
        parser = EventParser(origin="https://example.com")
        self.assertEqual(
            parse(b"data: a\n\nevent: e\ndata: b\n\n", parser=parser),
            [
                MessageEvent("message", "a", "", "https://example.com"),
                MessageEvent("e", "b", "", "https://example.com"),
            ],
        )

    def test_default(self) -> None:
        """
        Without an origin, events have an empty one.
        """
        self.assertEqual(parse(b"data: a\n\n")[0].origin, "")


MiB = 1024 * 1024


def feed_until_error(
    parser: EventParser, chunks: list[bytes]
) -> tuple[list[MessageEvent], LimitExceeded | None]:
    """
    Feed C{chunks} until the parser raises; return the events dispatched
    (those the error carries included) and the error.
    """
    events: list[MessageEvent] = []
    for chunk in chunks:
        try:
            events.extend(parser.feed(chunk))
        except LimitExceeded as error:
            return [*events, *error.events], error
    return events, None


class LimitTests(SynchronousTestCase):
    """
    A line and an event's data are capped; past a cap the parser stops
    buffering at once and raises L{LimitExceeded}.
    """

    def test_defaults(self) -> None:
        """
        Both caps are 16 MiB by default, and a line of 1 MiB is ordinary.
        """
        self.assertEqual(
            (DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_EVENT_DATA_BYTES), (16 * MiB, 16 * MiB)
        )
        big = "x" * MiB
        self.assertEqual(parse(f"data: {big}\n\n".encode()), [message(big)])

    def test_endless_line_in_small_chunks(self) -> None:
        """
        20 MiB without a line end, in 64 KiB chunks, raises once the line
        passes 16 MiB; the parser never holds more than the cap.
        """
        parser = EventParser()
        chunk = b"x" * 65536
        most = 0
        fed = 0
        with self.assertRaises(LimitExceeded) as raised:
            for _ in range(20 * 16):
                parser.feed(chunk)
                fed += len(chunk)
                most = max(most, parser.buffered)
        self.assertEqual(fed, 16 * MiB)
        self.assertEqual(most, 16 * MiB)
        self.assertEqual(parser.buffered, 0)
        error = raised.exception
        self.assertEqual((error.limit, error.option), (16 * MiB, "max_line_bytes"))
        self.assertEqual(
            str(error), "a line longer than max_line_bytes (16777216 bytes)"
        )

    def test_line_at_cap(self) -> None:
        """
        A line of exactly max_line_bytes is accepted; one byte more is not.
        """
        parser = EventParser(max_line_bytes=10)
        self.assertEqual(parser.feed(b"data: 1234\n\n"), [message("1234")])
        with self.assertRaises(LimitExceeded):
            parser.feed(b"data: 12345\n\n")

    def test_long_line_raises_before_its_end(self) -> None:
        """
        An unterminated line raises as soon as it is too long, not at its end.
        """
        parser = EventParser(max_line_bytes=10)
        parser.feed(b"data: 12")
        parser.feed(b"34")
        with self.assertRaises(LimitExceeded):
            parser.feed(b"5")

    def test_any_line_counts(self) -> None:
        """
        Comments and unknown fields are capped like data lines.
        """
        for line in [b":" + b"x" * 20, b"foo: " + b"x" * 20]:
            with self.assertRaises(LimitExceeded):
                EventParser(max_line_bytes=10).feed(line + b"\n")

    def test_line_end_not_counted(self) -> None:
        """
        The cap is on the line without its line end, even split from it.
        """
        for end in [b"\n", b"\r", b"\r\n"]:
            parser = EventParser(max_line_bytes=7)
            self.assertEqual(
                parse(b"data: x", end, b"\r\n", parser=parser), [message("x")]
            )

    def test_events_before_kept(self) -> None:
        """
        The events a chunk dispatched before the offending line come with the
        error; the id and retry read before it are applied.
        """
        parser = EventParser(max_line_bytes=10)
        with self.assertRaises(LimitExceeded) as raised:
            parser.feed(b"data: 1\n\nretry: 5\nid: 7\n\ndata: 12345678\n")
        self.assertEqual(raised.exception.events, [message("1")])
        self.assertEqual((parser.retry, parser.last_event_id), (5, "7"))

    def test_stays_broken(self) -> None:
        """
        After a cap is passed, every later feed raises and nothing is held.
        """
        parser = EventParser(max_line_bytes=4)
        with self.assertRaises(LimitExceeded):
            parser.feed(b"data: x\n")
        for chunk in [b"\n", b"", b"data\n\n"]:
            with self.assertRaises(LimitExceeded) as raised:
                parser.feed(chunk)
            self.assertEqual(raised.exception.events, [])
            self.assertEqual(parser.buffered, 0)

    def test_event_data_cap(self) -> None:
        """
        An event whose data passes max_event_bytes raises at the data line
        that passes it; data of exactly the cap is delivered.
        """
        parser = EventParser(max_event_bytes=9)
        self.assertEqual(
            parser.feed(b"data: 1234\ndata: 5678\n\n"), [message("1234\n5678")]
        )
        with self.assertRaises(LimitExceeded) as raised:
            parser.feed(b"data: 1234\ndata: 56789\n")
        self.assertEqual(raised.exception.limit, 9)
        self.assertEqual(raised.exception.option, "max_event_bytes")
        self.assertEqual(
            str(raised.exception),
            "an event's data longer than max_event_bytes (9 bytes)",
        )

    def test_event_data_in_bytes(self) -> None:
        """
        The data cap counts bytes as sent, not characters.
        """
        with self.assertRaises(LimitExceeded):
            EventParser(max_event_bytes=5).feed("data: ééé\n".encode())

    def test_empty_data_lines_count(self) -> None:
        """
        Empty data lines count by the line feeds they add.
        """
        parser = EventParser(max_event_bytes=10)
        self.assertEqual(parser.feed(b"data\n" * 11 + b"\n"), [message("\n" * 10)])
        with self.assertRaises(LimitExceeded):
            parser.feed(b"data\n" * 12)

    def test_huge_event_in_many_lines(self) -> None:
        """
        An event of 20 MiB in 1 KiB lines raises once its data passes 16 MiB,
        and the data held never exceeds the cap.
        """
        parser = EventParser()
        chunk = (b"data: " + b"x" * 1017 + b"\n") * 64
        most = 0
        with self.assertRaises(LimitExceeded) as raised:
            for _ in range(20 * 16):
                parser.feed(chunk)
                most = max(most, parser.buffered)
        self.assertLessEqual(most, 16 * MiB)
        self.assertEqual(raised.exception.option, "max_event_bytes")

    def test_dispatch_resets_data_count(self) -> None:
        """
        The data cap is per event: many events under it are all delivered.
        """
        parser = EventParser(max_event_bytes=4)
        self.assertEqual(parser.feed(b"data: 1234\n\n" * 3), [message("1234")] * 3)

    def test_bad_caps(self) -> None:
        """
        A cap below 1 byte is refused.
        """
        with self.assertRaises(ValueError):
            EventParser(max_line_bytes=0)
        with self.assertRaises(ValueError):
            EventParser(max_event_bytes=0)


# Random streams for the properties: lines of known and unknown fields,
# comments, blank lines and raw bytes, with every kind of line end.
_TEXT = st.text(
    st.one_of(
        st.characters(codec="utf-8", exclude_characters="\r\n"),
        st.sampled_from(["é", "☃", "𝄞", "\u2028", "\x85", "\x00", "\ufeff", " "]),
    ),
    max_size=8,
)
_NAMES = ["data", "event", "id", "retry", "Data", " data", "foo", ""]
_FIELD = st.builds(
    lambda name, sep, value: (name + sep + value).encode(),
    st.sampled_from(_NAMES),
    st.sampled_from(["", ":", ": ", ":  "]),
    st.one_of(_TEXT, st.integers(min_value=0, max_value=10**6).map(str)),
)
_LINE = st.one_of(
    _FIELD,
    st.just(b""),
    _TEXT.map(lambda text: b":" + text.encode()),
    st.binary(max_size=6).filter(lambda raw: b"\r" not in raw and b"\n" not in raw),
)
_EOL_BYTES = st.sampled_from([b"\r", b"\n", b"\r\n"])


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """
    A byte stream of random lines and line ends, sometimes starting with a
    BOM (or two), sometimes ending in an unterminated line.
    """
    head = draw(st.sampled_from([b"", b"", BOM, BOM + BOM]))
    lines = draw(st.lists(st.tuples(_LINE, _EOL_BYTES), max_size=25))
    tail = draw(st.sampled_from([b"", b"data: tail"]))
    return head + b"".join(line + eol for line, eol in lines) + tail


def _outcome(
    chunks: list[bytes], last_event_id: str = ""
) -> tuple[list[MessageEvent], str, int | None]:
    parser = EventParser(last_event_id=last_event_id)
    events = parse(*chunks, parser=parser)
    return events, parser.last_event_id, parser.retry


def _spec_parse(
    stream: bytes, last_event_id: str = ""
) -> tuple[list[MessageEvent], str, int | None]:
    """
    A direct transcription of the WHATWG algorithm over the whole stream at
    once: decode, strip one BOM, split into lines, interpret.
    """
    text = stream.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    # Everything after the last line end is an unfinished line: discarded.
    lines = re.split("\r\n|\r|\n", text)[:-1]
    events = []
    data, event_type, id_buffer, retry = "", "", last_event_id, None
    for line in lines:
        if line == "":
            last_event_id = id_buffer
            if data:
                events.append(
                    MessageEvent(event_type or "message", data[:-1], last_event_id)
                )
            data = event_type = ""
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            name, value = line, ""
        if name == "event":
            event_type = value
        elif name == "data":
            data += value + "\n"
        elif name == "id" and "\x00" not in value:
            id_buffer = value
        elif name == "retry" and re.fullmatch("[0-9]+", value):
            retry = int(value)
    return events, last_event_id, retry


def _chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    """
    Split C{stream} at the offsets C{cuts} (taken modulo its length + 1;
    repeated offsets give empty chunks).
    """
    edges = [0, *sorted(cut % (len(stream) + 1) for cut in cuts), len(stream)]
    return [stream[a:b] for a, b in pairwise(edges)]


class PropertyTests(SynchronousTestCase):
    """
    Invariants over random streams.
    """

    @settings(deadline=None, max_examples=200)
    @given(
        stream=streams(),
        cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    )
    def test_chunking_irrelevant(self, stream: bytes, cuts: list[int]) -> None:
        """
        Any split of a stream into chunks parses exactly as the whole stream.
        """
        self.assertEqual(_outcome(_chunked(stream, cuts)), _outcome([stream]))

    @settings(deadline=None, max_examples=200)
    @given(stream=streams())
    def test_byte_at_a_time(self, stream: bytes) -> None:
        """
        Feeding one byte at a time parses exactly as the whole stream.
        """
        bytewise = [stream[i : i + 1] for i in range(len(stream))]
        self.assertEqual(_outcome(bytewise), _outcome([stream]))

    @settings(deadline=None, max_examples=200)
    @given(stream=streams(), seed=st.sampled_from(["", "seed"]))
    def test_matches_spec(self, stream: bytes, seed: str) -> None:
        """
        The parser agrees with a direct transcription of the spec's algorithm.
        """
        self.assertEqual(
            _outcome([stream], last_event_id=seed), _spec_parse(stream, seed)
        )

    @settings(deadline=None, max_examples=200)
    @given(
        stream=streams(),
        cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    )
    def test_caps_met_change_nothing(self, stream: bytes, cuts: list[int]) -> None:
        """
        Caps that no line or event passes (the line cap met exactly) change
        nothing, however the stream is chunked.
        """
        body = stream.removeprefix(BOM)
        lines = re.split(b"\r\n|\r|\n", body)
        longest = max(len(line) for line in lines)
        data = sum(len(line) + 1 for line in lines if line.startswith(b"data"))
        parser = EventParser(max_line_bytes=max(longest, 1), max_event_bytes=data + 1)
        self.assertEqual(
            feed_until_error(parser, _chunked(stream, cuts)),
            (_outcome([stream])[0], None),
        )

    @settings(deadline=None, max_examples=200)
    @given(
        before=streams(),
        cap=st.integers(min_value=1, max_value=64),
        extra=st.integers(min_value=1, max_value=64),
        after=st.binary(max_size=20),
        cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    )
    def test_over_cap_line_raises(
        self, before: bytes, cap: int, extra: int, after: bytes, cuts: list[int]
    ) -> None:
        """
        A line over the cap raises however the stream is chunked, after the
        same events.
        """
        stream = before + b"\n:" + b"x" * (cap + extra - 1) + after
        # The events expected: those of the lines before the first one over
        # the cap (which may be in before).
        parts = re.split(b"(\r\n|\r|\n)", before.removeprefix(BOM) + b"\n")
        prefix = b""
        for line, end in zip(parts[0::2], parts[1::2], strict=False):
            if len(line) > cap:
                break
            prefix += line + end
        # The BOM removed above is put back: a second one would be text.
        expected = parse(BOM + prefix)
        events, error = feed_until_error(
            EventParser(max_line_bytes=cap), _chunked(stream, cuts)
        )
        self.assertIsNotNone(error)
        self.assertEqual(events, expected)
