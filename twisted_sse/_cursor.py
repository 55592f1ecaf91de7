"""
The cursor of a subscription to several channels: one ``id:`` that holds
the position in every channel the subscription carries (and, for a
pattern, the point from which channels it has not met yet are looked
for), so that one ``Last-Event-ID`` resumes them all.

The format is opaque to clients and may change between versions (a cursor
this version cannot read is treated as malformed: every channel is told
its history was lost, and starts from its current position).  As it is
today: ``~`` followed by the URL-safe base64 (unpadded) of

- a head: a version byte (``1``), the count of zero bytes padding the
  head, the table of the epochs the positions use, each once (a broker's
  ids share few epochs: the in-memory broker's all share one), the count
  of entries, and that padding;
- one entry per channel or pattern: its length, 5 bytes of a BLAKE2b
  hash of its name (names themselves would make a 32-channel cursor
  kilobytes long), then the position, packed by its form: ``<epoch>-<n>``
  (the in-memory broker) and ``<epoch>:<ms>-<n>`` (Redis) as numbers,
  anything else as its text; then zero bytes.

The head and every entry are padded to a multiple of three bytes, so that
each encodes to base64 on its own: a subscription keeps each entry's text
and joins them, and subscribers of a channel share the text of its
entries (a cursor is written with every event sent).

A 32-channel cursor of the in-memory broker is about 520 characters, of
the Redis broker about 900.  Two names of one subscription whose hashes
collide (a chance of one in 10^11 for 32 names) are both left out of the
cursor: they resume as if new.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping

from attrs import frozen

__all__ = [
    "MAX_CURSOR_LENGTH",
    "Cursor",
    "CursorBuilder",
    "decode_cursor",
    "encode_cursor",
    "name_key",
    "positions_of",
]

#: The longest cursor text read; a longer one is malformed.
MAX_CURSOR_LENGTH = 16 * 1024

_PREFIX = "~"
_VERSION = 1
_KEY_BYTES = 5
#: Forms of a position in a cursor.
_TEXT, _MEMORY, _REDIS = 0, 1, 2
_MEMORY_ID = re.compile(r"(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,19})")
_REDIS_ID = re.compile(
    r"([1-9a-z][0-9a-z]{0,13}):(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,19})"
)
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def name_key(name: str) -> bytes:
    """The 5-byte key that stands for a channel or pattern in a cursor."""
    key = _KEYS.get(name)
    if key is None:
        key = hashlib.blake2b(name.encode("utf-8"), digest_size=_KEY_BYTES).digest()
        if len(_KEYS) >= _KEYS_MAX:
            _KEYS.clear()
        _KEYS[name] = key
    return key


#: Keys of names used lately, shared by every subscription.  Emptied when
#: full.
_KEYS: dict[str, bytes] = {}
_KEYS_MAX = 8192


@frozen
class Cursor:
    """
    A decoded cursor: positions by name key (see :func:`name_key`).
    """

    positions: Mapping[bytes, str]

    def get(self, name: str) -> str | None:
        """The position of ``name`` (a channel or a pattern), or ``None``."""
        return self.positions.get(name_key(name))


def encode_cursor(positions: Mapping[str, str]) -> str:
    """
    The cursor text for ``positions``: the position of each channel (and
    the marker of each pattern), by name.
    """
    builder = CursorBuilder()
    for name, position in positions.items():
        builder.set(name, position)
    return builder.text()


class CursorBuilder:
    """
    A cursor kept up to date as positions move: the entry that moved is
    found ready-encoded (subscribers of a channel write the same
    positions) or encoded once, and the text is the joined entries.

    :ivar positions: The position of each name, as set.
    """

    __slots__ = ("_collided", "_epochs", "_head", "_text", "_texts", "positions")

    def __init__(self) -> None:
        self.positions: dict[str, str] = {}
        #: Each entry's base64 text, by name.
        self._texts: dict[str, str] = {}
        #: Names left out, their keys colliding with another's.
        self._collided: set[str] | None = None
        self._epochs: dict[tuple[int, int], int] = {}
        #: The head's base64 text (it changes only when an entry or an
        #: epoch is added).
        self._head: str | None = None
        self._text: str | None = None

    def set(self, name: str, position: str) -> None:
        """Set the position of ``name``."""
        positions = self.positions
        if name not in positions:
            self._head = None
            if self._collides(name):
                positions[name] = position
                self._text = None
                return
        elif self._collided is not None and name in self._collided:
            positions[name] = position
            return
        positions[name] = position
        form, epoch, _ = parsed = _parsed(position)
        index = 0
        if form != _TEXT:
            epochs = self._epochs
            found = epochs.get((form, epoch))
            if found is None:
                if len(epochs) >= 2 * len(positions) + 4:
                    self._renumber()
                    epochs = self._epochs
                found = epochs.get((form, epoch))
                if found is None:
                    found = epochs[(form, epoch)] = len(epochs)
                self._head = None
            index = found
        self._texts[name] = _entry_text(name, position, parsed, index)
        self._text = None

    def _collides(self, name: str) -> bool:
        """Whether ``name``'s key is another's: then both are left out."""
        key = name_key(name)
        for other in self._texts:
            if name_key(other) == key:
                del self._texts[other]
                collided = self._collided = self._collided or set()
                collided.update((name, other))
                return True
        return self._collided is not None and any(
            name_key(other) == key for other in self._collided
        )

    def _renumber(self) -> None:
        """
        Start the table of epochs afresh: most of it is epochs no entry
        uses any more (channels forgotten and made again).
        """
        epochs = self._epochs = {}
        for name in list(self._texts):
            position = self.positions[name]
            parsed = _parsed(position)
            form, epoch, _ = parsed
            index = 0
            if form != _TEXT:
                index = epochs.setdefault((form, epoch), len(epochs))
            self._texts[name] = _entry_text(name, position, parsed, index)

    @property
    def head_known(self) -> bool:
        """
        Whether the head is as it was at the last :meth:`text`: no name
        and no epoch was added since.
        """
        return self._head is not None

    def entry(self, name: str) -> str | None:
        """The encoded entry of ``name`` (``None`` if it is left out)."""
        return self._texts.get(name)

    def adopt(self, moves: tuple[tuple[str, str, str | None], ...], text: str) -> None:
        """
        Take the moves another builder made from the very state this one
        is in (its same text), and the text they gave, rather than making
        them again: each move is a name, its position and its encoded
        entry.  Only for moves of names already here under epochs already
        here (:attr:`head_known` was true after them).
        """
        positions = self.positions
        texts = self._texts
        for name, position, entry in moves:
            positions[name] = position
            if entry is not None:
                texts[name] = entry
        self._text = text

    def text(self) -> str:
        """The cursor, as text."""
        text = self._text
        if text is None:
            head = self._head
            if head is None:
                head = self._head = _head_text(self._epochs, len(self._texts))
            text = self._text = "".join([_PREFIX, head, *self._texts.values()])
        return text


def _head_text(epochs: dict[tuple[int, int], int], count: int) -> str:
    body = bytearray()
    _varint(body, len(epochs))
    for form, epoch in epochs:
        body.append(form)
        _varint(body, epoch)
    _varint(body, count)
    pad = -(len(body) + 2) % 3
    packed = bytes([_VERSION, pad]) + bytes(body) + bytes(pad)
    return base64.urlsafe_b64encode(packed).decode("ascii")


#: Entries encoded lately, shared by every subscription: every subscriber
#: of a channel writes the same ones.  Emptied when full.
_ENTRIES: dict[tuple[str, str, int], str] = {}
_ENTRIES_MAX = 8192


def _entry_text(
    name: str, position: str, parsed: tuple[int, int, bytes], index: int
) -> str:
    """The base64 text of the entry of ``name`` at ``position``."""
    cache_key = (name, position, index)
    found = _ENTRIES.get(cache_key)
    if found is not None:
        return found
    form, _, tail = parsed
    body = bytearray(name_key(name))
    if form == _TEXT:
        body += tail
    elif index < 0x3F:
        body.append(form << 6 | index)
        body += tail
    else:
        body.append(form << 6 | 0x3F)
        _varint(body, index)
        body += tail
    # The length counts itself and the zero bytes that pad the entry to a
    # multiple of three.
    size = len(body) + 1
    size += -size % 3
    if size > 0x7F:
        size = len(body) + 2
        size += -size % 3
    prefix = bytearray()
    _varint(prefix, size)
    packed = bytes(prefix) + bytes(body) + bytes(size - len(prefix) - len(body))
    text = base64.urlsafe_b64encode(packed).decode("ascii")
    if len(_ENTRIES) >= _ENTRIES_MAX:
        _ENTRIES.clear()
    _ENTRIES[cache_key] = text
    return text


#: Positions parsed lately (shared, as entries are).  Emptied when full.
_PARSED: dict[str, tuple[int, int, bytes]] = {}
_PARSED_MAX = 4096


def _parsed(position: str) -> tuple[int, int, bytes]:
    """
    ``position`` as its form, its epoch and its packed rest (without the
    epoch's index); the rest of a text position includes its form byte.
    """
    found = _PARSED.get(position)
    if found is not None:
        return found
    out = bytearray()
    memory = _MEMORY_ID.fullmatch(position)
    redis = _REDIS_ID.fullmatch(position) if memory is None else None
    if memory is not None:
        form, epoch = _MEMORY, int(memory.group(1))
        _varint(out, int(memory.group(2)))
    elif redis is not None:
        form, epoch = _REDIS, int(redis.group(1), 36)
        _varint(out, _zigzag(int(redis.group(2)) - epoch // 1000))
        _varint(out, int(redis.group(3)))
    else:
        raw = position.encode("utf-8")
        form, epoch = _TEXT, 0
        out.append(_TEXT)
        _varint(out, len(raw))
        out += raw
    found = (form, epoch, bytes(out))
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[position] = found
    return found


def decode_cursor(text: str) -> Cursor | None:
    """The cursor ``text`` holds, or ``None`` if it is not one of ours."""
    if not text.startswith(_PREFIX) or len(text) > MAX_CURSOR_LENGTH:
        return None
    packed = text[len(_PREFIX) :]
    if len(packed) % 4:
        return None
    try:
        data = base64.urlsafe_b64decode(packed)
        if base64.urlsafe_b64encode(data).decode("ascii") != packed:
            return None  # not canonical: not a cursor this module made
        return _read(data)
    except (binascii.Error, ValueError, IndexError):
        return None


def _read(data: bytes) -> Cursor | None:
    reader = _Reader(data)
    if reader.byte() != _VERSION:
        return None
    pad = reader.byte()
    epochs: list[tuple[int, int]] = []
    for _ in range(reader.count()):
        form = reader.byte()
        if form not in (_MEMORY, _REDIS):
            return None
        epochs.append((form, reader.varint()))
    count = reader.count()
    if any(reader.take(pad)) or reader.at % 3:
        return None
    positions: dict[bytes, str] = {}
    for _ in range(count):
        start = reader.at
        size = reader.varint()
        end = start + size
        if size % 3 or end > len(data):
            return None
        key = reader.take(_KEY_BYTES)
        first = reader.byte()
        if first == _TEXT:
            value = reader.take(reader.count()).decode("utf-8")
        else:
            form, index = first >> 6, first & 0x3F
            if index == 0x3F:
                index = reader.varint()
            epoch_form, epoch = epochs[index]
            if epoch_form != form:
                return None
            if form == _MEMORY:
                value = f"{epoch}-{reader.varint()}"
            elif form == _REDIS:
                ms = epoch // 1000 + _unzigzag(reader.varint())
                if ms < 0:
                    return None
                value = f"{_base36(epoch)}:{ms}-{reader.varint()}"
            else:
                return None
        if reader.at > end or any(reader.take(end - reader.at)):
            return None
        positions[key] = value
    if not reader.done():
        return None
    return Cursor(positions)


def _varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _unzigzag(value: int) -> int:
    return value // 2 if not value & 1 else -(value + 1) // 2


def _base36(value: int) -> str:
    text = ""
    while True:
        value, digit = divmod(value, 36)
        text = _DIGITS[digit] + text
        if not value:
            return text


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def byte(self) -> int:
        value = self.data[self.at]
        self.at += 1
        return value

    def take(self, size: int) -> bytes:
        end = self.at + size
        if end > len(self.data):
            raise ValueError("truncated")
        chunk = self.data[self.at : end]
        self.at = end
        return chunk

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 140:
                raise ValueError("varint too long")

    def count(self) -> int:
        value = self.varint()
        if value > len(self.data):
            raise ValueError("count beyond the data")
        return value

    def done(self) -> bool:
        return self.at == len(self.data)


def positions_of(names: Iterable[str], cursor: Cursor | None) -> dict[str, str]:
    """The positions ``cursor`` holds for ``names``, by name."""
    if cursor is None:
        return {}
    found = {}
    for name in names:
        position = cursor.get(name)
        if position is not None:
            found[name] = position
    return found
