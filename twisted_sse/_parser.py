"""
An incremental ``text/event-stream`` parser: bytes in, events out.

It implements the algorithm of the WHATWG HTML standard ("Server-sent
events", "Parsing an event stream" and "Interpreting an event stream")
exactly, for any split of the stream into chunks.
"""

from __future__ import annotations

import re

from ._event import MessageEvent

__all__ = ["EventParser"]

_BOM = b"\xef\xbb\xbf"
_EOL = re.compile(b"\r\n|\r|\n")


class EventParser:
    """
    Parse one connection's ``text/event-stream`` body.

    Feed it the body as it arrives with :meth:`feed`; it returns the events
    that the chunk completed.  Use a new parser for each connection, seeded
    with the last event id committed on the previous one, as browsers do.

    :ivar last_event_id: The last event id committed so far (set at each
        dispatch from the ``id`` field seen before it).
    :ivar retry: The reconnection time in milliseconds set by the most recent
        valid ``retry`` field, or ``None`` if the stream set none.  It is
        applied as soon as the line is read, even if its block never
        dispatches.
    """

    def __init__(self, last_event_id: str = "", origin: str = "") -> None:
        """
        :param last_event_id: The last event id to start from.
        :param origin: The origin to stamp on the events.
        """
        self.last_event_id = last_event_id
        self.retry: int | None = None
        self._origin = origin
        self._id_buffer = last_event_id
        self._type = ""
        self._data: list[str] = []
        self._line = bytearray()
        # A leading BOM is removed once per stream, even when split across
        # chunks: hold back up to two bytes that may still become one.
        self._head: bytes | None = b""
        # The previous chunk ended in a CR, which ended a line at once; an LF
        # starting the next chunk is the rest of that CRLF, not a new line.
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[MessageEvent]:
        """
        Parse the next chunk of the body.

        :param chunk: Any number of bytes, split anywhere.
        :returns: The events dispatched by lines that this chunk completed, in
            stream order.
        """
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
        start = 0
        for match in _EOL.finditer(chunk):
            if self._line:
                self._line += chunk[start : match.start()]
                line = bytes(self._line)
                self._line.clear()
            else:
                line = chunk[start : match.start()]
            start = match.end()
            event = self._process_line(line)
            if event is not None:
                events.append(event)
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
        self._line.clear()
        self._data = []
        self._type = ""
        self._head = None
        self._skip_lf = False

    def _process_line(self, raw: bytes) -> MessageEvent | None:
        # CR and LF never occur inside a multi-byte UTF-8 sequence, so each
        # line decodes on its own; invalid bytes become U+FFFD.
        line = raw.decode("utf-8", "replace")
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry":
            # ASCII digits only: str.isdigit() alone accepts other scripts'
            # digits and superscripts.
            if value.isascii() and value.isdigit():
                self.retry = int(value)
        return None

    def _dispatch(self) -> MessageEvent | None:
        self.last_event_id = self._id_buffer
        if not self._data:
            self._type = ""
            return None
        event = MessageEvent(
            type=self._type or "message",
            data="\n".join(self._data),
            last_event_id=self.last_event_id,
            origin=self._origin,
        )
        self._data = []
        self._type = ""
        return event
