"""
The line linter of ``twisted-sse check``: :class:`LintParser` parses a
stream as a browser does and notes what is wrong with each line (field
names, ids, ``retry``, UTF-8, byte order marks, lone CRs, an unfinished
event), and which events carried an ``id`` field of their own.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from .._event import MessageEvent
from .._parser import (
    DEFAULT_MAX_EVENT_DATA_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    EventParser,
)
from ._observations import Issue, Level

__all__ = ["MAX_ISSUES", "LintParser"]

#: Kinds of issue noted one by one in a stream's lines; the rest are
#: counted together.
MAX_ISSUES: Final = 20

_KNOWN_FIELDS = {b"data", b"event", b"id", b"retry"}
_BOM = b"\xef\xbb\xbf"


class LintParser(EventParser):
    """
    An :class:`~twisted_sse._parser.EventParser` that also notes what is
    wrong with each line, and which events carried an ``id`` field.
    """

    def __init__(self, last_event_id: str, origin: str) -> None:
        super().__init__(
            last_event_id,
            origin,
            max_line_bytes=DEFAULT_MAX_LINE_BYTES,
            max_event_bytes=DEFAULT_MAX_EVENT_DATA_BYTES,
        )
        self.lines = 0
        self.issues: dict[str, Issue] = {}
        # The own id of each event dispatched, in order.
        self.own_ids: deque[str | None] = deque()
        self.in_block = False
        self.lone_crs = 0
        self._block_id: str | None = None
        self._ended_in_cr = False

    def note(self, key: str, level: Level, message: str) -> None:
        """Note an issue; a repeat only counts, and so do kinds past the
        first :data:`MAX_ISSUES` (a server may make up field names)."""
        if key not in self.issues and len(self.issues) >= MAX_ISSUES:
            key, message = "more", "and issues of other kinds"
        known = self.issues.get(key)
        if known is None:
            self.issues[key] = Issue(level, message)
        else:
            worst: Level = "fail" if "fail" in (level, known.level) else "warn"
            self.issues[key] = Issue(worst, known.message, known.count + 1)

    def feed(self, chunk: bytes) -> list[MessageEvent]:
        crs = chunk.count(b"\r") - chunk.count(b"\r\n")
        if self._ended_in_cr and chunk[:1] == b"\n":
            crs -= 1
        self.lone_crs += crs
        if chunk:
            self._ended_in_cr = chunk[-1:] == b"\r"
        return super().feed(chunk)

    def process_line(self, line: bytes) -> MessageEvent | None:
        self.lines += 1
        number = self.lines
        if not line:
            event = super().process_line(line)
            if event is not None:
                self.own_ids.append(self._block_id)
            self._block_id = None
            self.in_block = False
            return event
        self.in_block = True
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            self.note(
                "utf-8", "fail", f"line {number} is not UTF-8 (clients see U+FFFD)"
            )
        if line.startswith(_BOM):
            self.note(
                "bom",
                "fail",
                f"line {number} starts with a byte order mark: only one, at the "
                "very start of the stream, is removed",
            )
        if line[:1] != b":" and not line.startswith(_BOM):
            self._lint_field(line, number)
        return super().process_line(line)

    def _lint_field(self, line: bytes, number: int) -> None:
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"id":
            if b"\0" in value:
                self.note(
                    "id-nul",
                    "fail",
                    f"line {number}: an id with a NUL, which clients ignore",
                )
            else:
                self._block_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if not value:
                self.note("retry-empty", "warn", f"line {number}: an empty retry")
            elif not (value.isdigit() and value.isascii()):
                self.note(
                    "retry",
                    "fail",
                    f"line {number}: retry {value[:20].decode('utf-8', 'replace')!r} "
                    "is not all ASCII digits, so clients ignore it",
                )
            elif int(value) > 2**31 - 1:
                self.note(
                    "retry-big",
                    "warn",
                    f"line {number}: retry {int(value)} is longer than a browser's "
                    "timer holds",
                )
        elif name not in _KNOWN_FIELDS:
            shown = name[:40].decode("utf-8", "replace")
            if name.strip().lower().lstrip(_BOM) in _KNOWN_FIELDS:
                self.note(
                    f"field {shown}",
                    "fail",
                    f"line {number}: field {shown!r} is not "
                    f"{name.strip().lower().decode('ascii', 'replace')!r} "
                    "(names are exact), so clients ignore the line",
                )
            else:
                self.note(
                    f"field {shown}",
                    "warn",
                    f"line {number}: unknown field {shown!r}, which clients ignore",
                )

    def end(self) -> None:
        if self.in_block:
            self.note(
                "unfinished",
                "warn",
                "the stream ended inside an event (no blank line after it), "
                "which clients drop",
            )
        super().end()
