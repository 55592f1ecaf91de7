"""
Stream entries and stream state as the broker reads them from Redis replies:
entry ids, the snapshot of a stream and its epoch (and what it says was
lost), event ids of the broker (``<epoch>:<entry id>``), and events as
stream fields, both ways.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from attrs import field, frozen

from .._broker import MAX_KEY_LENGTH, Published, parse_event_id
from .._event import Event
from ._protocol import Reply

__all__ = [
    "EPOCH_FIELD",
    "LAST_ID",
    "ZERO",
    "Entry",
    "EventId",
    "Snapshot",
    "as_list",
    "before",
    "entries",
    "entry_id",
    "event_fields",
    "field_value",
    "format_id",
    "newer",
    "parse_position",
    "published_from_fields",
    "restart_point",
    "snapshot",
    "text",
    "text_id",
]

_RETRY = re.compile(r"[0-9]{1,20}")
#: An event id of this broker: ``<epoch>:<stream entry id>``.
_POSITION = re.compile(r"([0-9a-z]{1,16}):([0-9]{1,20})-([0-9]{1,20})")
#: An epoch token (see :mod:`twisted_sse._redis`).
_EPOCH = re.compile(r"[0-9a-z]{1,16}")
#: The field that marks the first entry of a new epoch (always first).
EPOCH_FIELD = b"sse-epoch"

#: A stream entry id as numbers: milliseconds and sequence.
EventId = tuple[int, int]
ZERO: EventId = (0, 0)


def text(reply: Reply) -> str:
    """A string (or integer) reply as text."""
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    if isinstance(reply, str):
        return reply
    if isinstance(reply, int):
        return str(reply)
    raise ValueError(f"expected a string reply, not {reply!r}")


def entry_id(reply: Reply) -> EventId:
    """A stream entry id reply as numbers."""
    parsed = parse_event_id(text(reply))
    if parsed is None:
        raise ValueError(f"not a stream id: {reply!r}")
    return parsed


def format_id(value: EventId) -> str:
    """A stream entry id as Redis writes it."""
    return f"{value[0]}-{value[1]}"


def as_list(reply: Reply) -> list[Reply]:
    """An array reply; an error in its place is raised."""
    if isinstance(reply, list):
        return reply
    if isinstance(reply, Exception):
        raise reply
    raise ValueError(f"expected an array reply, not {reply!r}")


#: A stream entry: its id as text and as numbers, and its field-value list.
Entry = tuple[str, EventId, list[Reply]]


def entries(reply: Reply) -> list[Entry]:
    """The entries of an ``XRANGE`` reply (or of one stream of ``XREAD``)."""
    result: list[Entry] = []
    for item in as_list(reply):
        raw_id, fields = as_list(item)
        id_text = text(raw_id)
        result.append(
            (id_text, entry_id(id_text), as_list(fields) if fields is not None else [])
        )
    return result


@frozen
class Snapshot:
    """
    A stream and its epoch as the snapshot script saw them, atomically.

    ``entries-added`` and the first entry tell what trimming removed:
    ``MAXLEN`` trimming does not move ``max-deleted-entry-id`` (only
    ``XDEL`` does; checked on Redis 7.0), so that field alone cannot tell.

    :ivar epoch: The channel's epoch.
    :ivar previous: The epoch it replaced when a process rotated it.
    :ivar more: Whether entries after the page's last were left for the
        next read.
    """

    exists: bool
    last_generated: EventId = ZERO
    first: EventId | None = None
    length: int = 0
    entries_added: int = 0
    max_deleted: EventId = ZERO
    entries: list[Entry] = field(factory=list)
    epoch: str = ""
    previous: str | None = None
    more: bool = False

    def lost_after(self, position: EventId) -> bool:
        """
        Whether an entry with an id greater than ``position`` was removed,
        so that reading on from ``position`` would silently miss it.

        Conservative: when ``position`` itself is gone, entries between it
        and the first one left are assumed to have existed, unless the two
        ids are adjacent or the stream never lost an entry.
        """
        if not self.exists:
            return False
        if self.max_deleted > position:
            return True
        if self.entries_added <= self.length:
            return False
        if self.first is None:
            return self.last_generated > position
        if position >= self.first:
            return False
        return position != before(self.first)

    def lost_up_to(self) -> EventId:
        """
        The id just before the first entry left (the last one if none is):
        reading on from it misses nothing more.
        """
        return max(
            self.max_deleted,
            before(self.first) if self.first else self.last_generated,
        )


def snapshot(reply: Reply) -> Snapshot:
    """The :class:`Snapshot` in a reply of the snapshot script."""
    (
        epoch,
        previous,
        exists,
        last_generated,
        first,
        length,
        entries_added,
        max_deleted,
        more,
        page,
    ) = as_list(reply)
    return Snapshot(
        exists=exists == 1,
        last_generated=entry_id(last_generated),
        first=entry_id(first) if first is not None else None,
        length=int(text(length)),
        entries_added=int(text(entries_added)),
        max_deleted=entry_id(max_deleted),
        entries=entries(page) if page else [],
        epoch=text(epoch),
        previous=text(previous) if previous is not None else None,
        more=more == 1,
    )


def restart_point(snapshot: Snapshot, after: EventId, epoch: str) -> EventId:
    """
    Where a reader at ``after`` in ``epoch`` goes on in the snapshot's new
    epoch: from ``after`` in the stream as it is (it was only given a new
    epoch, or made again with later ids), from the end of what is left if
    the epoch was rotated from ``epoch`` (Redis lost its tail), or from the
    start (made again with earlier ids); past what was trimmed.
    """
    if not snapshot.exists:
        return ZERO
    if snapshot.last_generated >= after or snapshot.previous == epoch:
        start = min(after, snapshot.last_generated)
    else:
        start = ZERO
    if snapshot.lost_after(start):
        start = max(start, snapshot.lost_up_to())
    return start


def parse_position(value: str) -> tuple[str, EventId] | None:
    """Split an id of this broker into its epoch and stream id."""
    match = _POSITION.fullmatch(value)
    if match is None:
        return None
    ms, seq = int(match.group(2)), int(match.group(3))
    if ms >= 2**64 or seq >= 2**64:
        return None
    return match.group(1), (ms, seq)


def event_fields(event: Event, key: str | None = None) -> list[str]:
    """
    The stream fields that carry ``event``, as a flat field-value list for
    ``XADD``: ``data``, ``event``, ``retry``, ``comment`` when set, and
    always ``key`` (the conflation key: ``key``, else the event type, else
    ``message``).  The event's own ``id`` is not stored: the broker gives
    the id (the channel's epoch and the stream entry id).
    """
    fields: list[str] = []
    if event.data is not None:
        fields += ["data", event.data]
    if event.event is not None:
        fields += ["event", event.event]
    if event.retry is not None:
        fields += ["retry", str(event.retry)]
    if event.comment is not None:
        fields += ["comment", event.comment]
    fields += ["key", key if key is not None else (event.event or "message")]
    return fields


_KNOWN_FIELDS = frozenset(("data", "event", "retry", "comment", "key"))


def published_from_fields(
    channel: str, event_id: str, fields: Sequence[bytes | str]
) -> Published:
    """
    Make the event a stream entry describes, from its field-value list, as
    written by :func:`event_fields` or by any other program.

    Unknown fields are ignored (room for later additions, and the epoch
    mark); a repeated field counts once, the last value.

    :raises ValueError: if a known field's value cannot be sent (a newline
        in ``event``, a ``retry`` that is not digits or is past
        :data:`~twisted_sse.MAX_RETRY`, a ``key`` longer than
        :data:`~twisted_sse.MAX_KEY_LENGTH`, text that is not UTF-8, ...):
        the same bounds as a publish.
    """
    values: dict[str, str] = {}
    for index in range(0, len(fields) - 1, 2):
        name = fields[index]
        value = fields[index + 1]
        name_text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        if name_text not in _KNOWN_FIELDS:
            continue
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{name_text} is not UTF-8") from None
        values[name_text] = value
    retry = values.get("retry")
    if retry is not None and not _RETRY.fullmatch(retry):
        raise ValueError(f"retry must be digits, not {retry!r}")
    key = values.get("key")
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ValueError(f"key must be 1 to {MAX_KEY_LENGTH} characters")
    event = Event(
        data=values.get("data"),
        event=values.get("event") or None,
        id=event_id,
        # Event refuses a retry past MAX_RETRY, as it did at publish.
        retry=int(retry) if retry is not None else None,
        comment=values.get("comment"),
    )
    return Published(channel, event_id, event.encode(), key or event.event or "message")


#: The largest stream id: there is nothing after it to read.
LAST_ID: EventId = (2**64 - 1, 2**64 - 1)


def before(value: EventId) -> EventId:
    """The stream entry id just before ``value`` (``0-0`` stays)."""
    ms, seq = value
    return (ms, seq - 1) if seq else (ms - 1, 2**64 - 1) if ms else ZERO


def newer(epoch: str, than: str) -> bool:
    """
    Whether epoch token ``epoch`` was made after ``than``: they are Redis's
    clock in microseconds, in base 36.
    """
    if not _EPOCH.fullmatch(epoch):
        return False
    if not _EPOCH.fullmatch(than):
        return True
    return int(epoch, 36) > int(than, 36)


def text_id(epoch: str, position: EventId) -> str:
    """The broker's event id of ``position`` in ``epoch``."""
    return f"{epoch}:{position[0]}-{position[1]}"


def field_value(value: Reply) -> bytes | str:
    """A stream field's name or value as bytes or text."""
    if isinstance(value, bytes | str):
        return value
    return text(value)
