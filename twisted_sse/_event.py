"""
The event value and its wire encoding.

This is where the rules against frame injection live: a field that the wire
format cannot carry is refused with a :class:`ValueError` naming the field,
never silently altered.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeAlias

from attrs import field, frozen

__all__ = [
    "MAX_RETRY",
    "Event",
    "MessageEvent",
    "Sendable",
    "as_event",
    "encode_comment",
    "encode_retry",
]

#: The largest ``retry`` an event may carry, in milliseconds (about 24.8
#: days): browsers keep the reconnection time in a 32-bit timer, and a larger
#: value wraps round to an immediate reconnect.
MAX_RETRY = 2**31 - 1

# The only line terminators of text/event-stream (WHATWG HTML, "Parsing an
# event stream"): CRLF, a lone LF, a lone CR.  Nothing else, so
# str.splitlines(), which also splits on U+2028, VT, FF and friends, is wrong.
_LINE_BREAK = re.compile("\r\n|\r|\n")


def _check_utf8(name: str, value: str) -> None:
    # A lone surrogate cannot be encoded as UTF-8; refuse it here, naming the
    # field, rather than fail later inside encode().
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{name} must not contain a lone surrogate: {value!r}"
        ) from None


def _check_single_line(name: str, value: str | None) -> None:
    if value is not None and ("\r" in value or "\n" in value):
        raise ValueError(f"{name} must not contain a CR or LF: {value!r}")
    if value is not None:
        _check_utf8(name, value)


def _check_id(instance: object, attribute: object, value: str | None) -> None:
    _check_single_line("id", value)
    if value is not None and "\0" in value:
        raise ValueError(f"id must not contain NUL: {value!r}")


def _check_event(instance: object, attribute: object, value: str | None) -> None:
    _check_single_line("event", value)


def _check_comment(instance: object, attribute: object, value: str | None) -> None:
    _check_single_line("comment", value)


def _check_retry(instance: object, attribute: object, value: int | None) -> None:
    if value is None:
        return
    # bool is an int subclass; True is not a reconnection time.
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not 0 <= value <= MAX_RETRY
    ):
        raise ValueError(
            f"retry must be an integer from 0 to {MAX_RETRY} (ms), not {value!r}"
        )


def _check_data(instance: object, attribute: object, value: str | None) -> None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"data must be a str, not {type(value).__name__}")
    if value is not None:
        _check_utf8("data", value)


@frozen
class Event:
    """
    One frame to send on a ``text/event-stream``.

    Every field is optional; a frame with nothing set encodes to a lone blank
    line.  Values that the wire format cannot carry raise :class:`ValueError`
    naming the field when the event is created.

    :ivar data: The payload.  Split into one ``data:`` line per line of text
        (on CR, LF and CRLF only); the empty string is one empty ``data:``
        line, which browsers dispatch as an empty message.  ``None`` sends no
        ``data`` field, so the frame dispatches nothing (useful to send only
        an ``id`` or a ``retry``).
    :ivar event: The event type (``addEventListener(type, ...)`` in a
        browser); ``None`` or ``""`` means ``message``.  Single line.
    :ivar id: The event id the client will send back as ``Last-Event-ID``.
        Single line, no NUL.  ``""`` resets the client's last event id.
    :ivar retry: The client's reconnection time in milliseconds, an
        integer from 0 to :data:`MAX_RETRY`.
    :ivar comment: A comment line, ignored by clients; used for heartbeats.
        Single line.
    """

    data: str | None = field(default=None, validator=_check_data)
    event: str | None = field(default=None, validator=_check_event)
    id: str | None = field(default=None, validator=_check_id)
    retry: int | None = field(default=None, validator=_check_retry)
    comment: str | None = field(default=None, validator=_check_comment)

    def encode(self) -> bytes:
        """
        Encode this event as UTF-8 wire bytes, ending with the blank line that
        dispatches it.

        :returns: The frame, with LF line endings.
        """
        lines: list[str] = []
        if self.comment is not None:
            lines.append(f": {self.comment}" if self.comment else ":")
        if self.retry is not None:
            lines.append(f"retry: {self.retry}")
        if self.id is not None:
            lines.append(f"id: {self.id}" if self.id else "id:")
        if self.event is not None:
            lines.append(f"event: {self.event}")
        if self.data is not None:
            for piece in _LINE_BREAK.split(self.data):
                lines.append("data: " + piece)
        lines.append("\n")
        return "\n".join(lines).encode("utf-8")


#: What :meth:`EventStream.send <twisted_sse.EventStream.send>` takes, and
#: what a generator handler may yield: an :class:`Event`, or data that
#: :func:`as_event` makes into one.
Sendable: TypeAlias = Event | str | bytes | bytearray | dict[str, Any] | list[Any]


def as_event(value: Sendable) -> Event:
    """
    The event that sends ``value``: an :class:`Event` as it is; a ``str``
    as its data; ``bytes`` as their UTF-8 text, each invalid sequence
    replaced by U+FFFD (what a browser's ``EventSource`` would show for the
    same bytes on the wire); a ``dict`` or ``list`` as its compact JSON text
    (``NaN`` and the infinities refused: ``JSON.parse`` rejects them).

    :raises TypeError: for anything else, naming its type; for a ``dict``
        or ``list`` holding what JSON cannot encode.
    :raises ValueError: for data the wire cannot carry (a lone surrogate),
        or a float JSON cannot hold.
    """
    if isinstance(value, Event):
        return value
    if isinstance(value, str):
        return Event(data=value)
    if isinstance(value, (bytes, bytearray)):
        return Event(data=value.decode("utf-8", "replace"))
    if isinstance(value, (dict, list)):
        return Event(
            data=json.dumps(
                value, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            )
        )
    raise TypeError(
        f"cannot send a {type(value).__name__}: send an Event, a str, bytes, "
        "or a dict or list (sent as JSON)"
    )


def encode_comment(text: str = "") -> bytes:
    """
    Encode a comment frame (``: text``), as used for heartbeats.

    A comment is ignored by every client but keeps proxies from cutting an
    idle stream, and its write fails when the peer is gone.

    :raises ValueError: if ``text`` contains a CR or LF.
    """
    return Event(comment=text).encode()


def encode_retry(milliseconds: int) -> bytes:
    """
    Encode a frame that only sets the client's reconnection time.

    :raises ValueError: if ``milliseconds`` is not an integer from 0 to
        :data:`MAX_RETRY`.
    """
    return Event(retry=milliseconds).encode()


@frozen
class MessageEvent:
    """
    An event as a client receives it (the ``MessageEvent`` of the browser).

    :ivar type: The event type; ``message`` when the stream named none.
    :ivar data: The data, lines joined with LF.
    :ivar last_event_id: The last event id committed when it was dispatched.
    :ivar origin: The origin of the URL the stream was finally read from
        (``scheme://host[:port]``), or ``""`` when parsed without a connection.
    """

    type: str
    data: str
    last_event_id: str = ""
    origin: str = ""
