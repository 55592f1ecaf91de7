"""
An incremental ``text/event-stream`` parser: bytes in, events out.

It implements the algorithm of the WHATWG HTML standard ("Server-sent
events", "Parsing an event stream" and "Interpreting an event stream")
exactly, for any split of the stream into chunks, and holds at most a
bounded amount of the stream whatever a server sends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from ._event import MessageEvent

__all__ = [
    "DEFAULT_MAX_EVENT_DATA_BYTES",
    "DEFAULT_MAX_LINE_BYTES",
    "EventParser",
    "LimitExceeded",
]

#: The default ``max_line_bytes``: the longest line (in bytes, without its
#: line end) a parser accepts.  16 MiB, which no real stream comes near.
DEFAULT_MAX_LINE_BYTES: Final = 16 * 1024 * 1024

#: The default ``max_event_bytes``: the most data (in bytes, with the line
#: feeds between its ``data`` lines) one event may gather.  16 MiB.
DEFAULT_MAX_EVENT_DATA_BYTES: Final = 16 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"
_EOL = re.compile(b"\r\n|\r|\n")
_COLON = ord(":")
_SPACE = ord(" ")


class LimitExceeded(Exception):
    """
    A server sent more than a cap lets the client hold: a line longer than
    ``max_line_bytes``, an event whose data is longer than
    ``max_event_bytes``, or (read by :class:`~twisted_sse.EventSource`'s
    default agent) a response head too big.  The connection it came on is
    of no further use.

    :ivar limit: The cap that was passed (bytes, or header lines).
    :ivar option: The name of the setting that sets the cap, such as
        ``"max_line_bytes"``, or ``""`` for a fixed one.
    :ivar events: The events dispatched, in the chunk that passed the cap,
        before the offending line: a caller delivers them before giving up.
    """

    def __init__(
        self,
        message: str,
        limit: int,
        option: str = "",
        events: Iterable[MessageEvent] = (),
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.option = option
        self.events = list(events)


class EventParser:
    """
    Parse one connection's ``text/event-stream`` body.

    Feed it the body as it arrives with :meth:`feed`; it returns the events
    that the chunk completed.  Use a new parser for each connection, seeded
    with the last event id committed on the previous one, as browsers do.

    It never holds more than ``max_line_bytes`` of an unfinished line nor
    more than ``max_event_bytes`` of an unfinished event's data, however the
    bytes arrive: past a cap, :meth:`feed` raises ``LimitExceeded`` (from
    ``twisted_sse._parser``) at once, not when the line ends, drops what it
    held, and raises again on every later call.

    :ivar last_event_id: The last event id committed so far (set at each
        dispatch from the ``id`` field seen before it).
    :ivar retry: The reconnection time in milliseconds set by the most recent
        valid ``retry`` field, or ``None`` if the stream set none.  It is
        applied as soon as the line is read, even if its block never
        dispatches.
    """

    def __init__(
        self,
        last_event_id: str = "",
        origin: str = "",
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_DATA_BYTES,
    ) -> None:
        """
        :param last_event_id: The last event id to start from.
        :param origin: The origin to stamp on the events.
        :param max_line_bytes: The longest line accepted, in bytes without
            its line end.
        :param max_event_bytes: The most data one event may gather, in
            bytes of UTF-8 as sent (the line feeds that join its ``data``
            lines included).
        :raises ValueError: if a cap is less than 1.
        """
        if max_line_bytes < 1 or max_event_bytes < 1:
            raise ValueError("the caps must be at least 1 byte")
        self.last_event_id = last_event_id
        self.retry: int | None = None
        self._origin = origin
        self._max_line = max_line_bytes
        self._max_data = max_event_bytes
        self._id_buffer = last_event_id
        self._type = ""
        # The data buffer, as raw bytes without the spec's trailing LF, None
        # when empty: the first data line's value as it is, a bytearray from
        # the second one.  Bytes hold no more memory than was sent (a list
        # of lines would cost a pointer and an object per empty line), and
        # decoding them whole at dispatch equals decoding line by line, as
        # LF never occurs inside a multi-byte UTF-8 sequence.
        self._data: bytes | bytearray | None = None
        self._line = bytearray()
        # A leading BOM is removed once per stream, even when split across
        # chunks: hold back up to two bytes that may still become one.
        self._head: bytes | None = b""
        # The previous chunk ended in a CR, which ended a line at once; an LF
        # starting the next chunk is the rest of that CRLF, not a new line.
        self._skip_lf = False
        self._broken: LimitExceeded | None = None

    @property
    def buffered(self) -> int:
        """
        How many bytes of the stream the parser holds: the unfinished line
        and the data of the unfinished event.
        """
        return len(self._line) + len(self._data or b"") + len(self._head or b"")

    def feed(self, chunk: bytes) -> list[MessageEvent]:
        """
        Parse the next chunk of the body.

        :param chunk: Any number of bytes, split anywhere.
        :returns: The events dispatched by lines that this chunk completed, in
            stream order.
        :raises: ``LimitExceeded`` if the chunk takes a line or an event
            past its cap, or a cap was passed before; the events the chunk
            dispatched before that are in its ``events``.
        """
        if self._broken is not None:
            broken = self._broken
            raise LimitExceeded(str(broken), broken.limit, broken.option)
        if self._head is not None:
            head = self._head + chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._head = head
                return []
            self._head = None
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        events: list[MessageEvent] = []
        max_line = self._max_line
        process = self.process_line
        try:
            start = 0
            for match in _EOL.finditer(chunk):
                end = match.start()
                if self._line:
                    if len(self._line) + end - start > max_line:
                        raise self._line_too_long()
                    self._line += chunk[start:end]
                    line = bytes(self._line)
                    self._line.clear()
                elif end - start > max_line:
                    raise self._line_too_long()
                else:
                    line = chunk[start:end]
                start = match.end()
                event = process(line)
                if event is not None:
                    events.append(event)
            # Checked before buffering, so a line that never ends is dropped
            # as soon as it is too long, not when (if ever) it ends.
            if len(self._line) + len(chunk) - start > max_line:
                raise self._line_too_long()
        except LimitExceeded as error:
            self._broken = error
            error.events = events
            self._line = bytearray()
            self._data = None
            self._type = ""
            raise
        self._line += chunk[start:]
        # A lone CR at the very end has ended its line already (the regular
        # expression prefers CRLF only when the LF is in the same chunk).
        self._skip_lf = chunk[-1:] == b"\r"
        return events

    def end(self) -> None:
        """
        Tell the parser the body has ended: an unfinished block (an
        unterminated line, or lines not followed by a blank line) is
        discarded, never dispatched.
        """
        self._line = bytearray()
        self._data = None
        self._type = ""
        self._head = None
        self._skip_lf = False

    def _line_too_long(self) -> LimitExceeded:
        return LimitExceeded(
            f"a line longer than max_line_bytes ({self._max_line} bytes)",
            self._max_line,
            "max_line_bytes",
        )

    def process_line(self, line: bytes) -> MessageEvent | None:
        """
        Interpret one line: a field sets the event being gathered, a blank
        line dispatches it.  :meth:`feed` calls it for every line it
        completes, and a subclass that must see each line (a linter, a
        recorder) overrides it and calls the parent's; the plain parser pays
        nothing for the hook.

        :param line: The line, without its line end (nor the stream's
            leading BOM); :meth:`feed` has checked it against
            ``max_line_bytes``, a direct call skips that cap.
        :returns: The event a blank line dispatches, or ``None``.
        :raises: ``LimitExceeded`` if a ``data`` line takes the event's data
            past ``max_event_bytes``.
        """
        # Field names are ASCII and a colon never occurs inside a multi-byte
        # UTF-8 sequence, so the line is split before decoding; invalid bytes
        # in a value become U+FFFD when it is decoded.
        if not line:
            return self._dispatch()
        if line[0] == _COLON:
            return None
        name, colon, value = line.partition(b":")
        if colon and value and value[0] == _SPACE:
            value = value[1:]
        if name == b"data":
            data = self._data
            # The data with this line: the LF of the spec's buffer joins it.
            size = len(value) if data is None else len(data) + 1 + len(value)
            if size > self._max_data:
                raise LimitExceeded(
                    "an event's data longer than max_event_bytes "
                    f"({self._max_data} bytes)",
                    self._max_data,
                    "max_event_bytes",
                )
            if data is None:
                self._data = value
            else:
                if not isinstance(data, bytearray):
                    data = self._data = bytearray(data)
                data += b"\n"
                data += value
        elif name == b"event":
            self._type = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self._id_buffer = value.decode("utf-8", "replace")
        elif name == b"retry":
            # bytes.isdigit() accepts ASCII digits only.
            if value.isdigit():
                self.retry = int(value)
        return None

    def _dispatch(self) -> MessageEvent | None:
        self.last_event_id = self._id_buffer
        if self._data is None:
            self._type = ""
            return None
        event = MessageEvent(
            type=self._type or "message",
            data=self._data.decode("utf-8", "replace"),
            last_event_id=self.last_event_id,
            origin=self._origin,
        )
        self._data = None
        self._type = ""
        return event
