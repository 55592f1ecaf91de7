"""
HTTP/1.1 read by hand for ``twisted-sse check``: the checker must see what
Twisted's client hides (``Transfer-Encoding``, the raw head, each read of
the body), and bound all of it as the client does: 16384 bytes and 500
lines of head, 1024 bytes of chunk-size line.  The body is the recorder's
to bound.
"""

from __future__ import annotations

import re
from typing import Final

from .._client import MAX_RESPONSE_HEADER_BYTES, MAX_RESPONSE_HEADERS
from ._http import Head, HTTPError

__all__ = ["MAX_CHUNK_LINE", "H1Reader"]

#: The longest chunk-size line read (RFC 9112 sets no limit; only chunk
#: extensions could make one long).
MAX_CHUNK_LINE: Final = 1024

_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: (.*))?")


class H1Reader:
    """
    One HTTP/1.1 response, from the bytes of a connection: the head
    (interim 1xx heads skipped), then the body without its framing.

    :ivar head: The head, once read.
    :ivar done: Whether the response is complete.
    :ivar extra: Bytes that came after a complete response.
    """

    def __init__(
        self,
        method: str,
        *,
        max_head_bytes: int = MAX_RESPONSE_HEADER_BYTES,
        max_head_lines: int = MAX_RESPONSE_HEADERS,
    ) -> None:
        self.head: Head | None = None
        self.done = False
        self.extra = 0
        self._method = method
        self._max_bytes = max_head_bytes
        self._max_lines = max_head_lines
        self._head_bytes = 0
        self._head_lines = 0
        self._lines: list[bytes] = []
        self._buffer = b""
        self._state = "head"
        self._remaining = 0

    def feed(self, data: bytes) -> list[Head | bytes]:
        """
        Read the next bytes.

        :returns: The head (once) and the pieces of body they hold, in order.
        :raises HTTPError: if the response is malformed or too big.
        """
        out: list[Head | bytes] = []
        if self.done:
            self.extra += len(data)
            return out
        buffer = self._buffer + data
        self._buffer = b""
        while buffer and not self.done:
            state = self._state
            if state in ("close", "length", "data"):
                take = len(buffer) if state == "close" else self._remaining
                piece, buffer = buffer[:take], buffer[take:]
                out.append(piece)
                if state != "close":
                    self._remaining -= len(piece)
                    if not self._remaining:
                        self._state = "crlf" if state == "data" else "end"
                        self.done = state == "length"
                continue
            line, found, rest = buffer.partition(b"\n")
            if not found:
                self._check_line(len(line))
                self._buffer = line
                break
            buffer = rest
            self._check_line(len(line) + 1)
            if state in ("head", "trailer"):
                self._count_head_line(len(line) + 1)
            self._line(line[:-1] if line.endswith(b"\r") else line, out)
        if self.done:
            self.extra += len(buffer)
        return out

    def end(self) -> str | None:
        """
        The connection closed.

        :returns: ``None`` if the response was complete (or delimited by
            the close), else what was cut short.
        """
        if self.done or (self._state == "close"):
            return None
        if self.head is None:
            if not self._head_bytes and not self._buffer:
                return "the connection closed without a response"
            return "the connection closed inside the response head"
        if self._state == "length":
            return (
                f"the connection closed {self._remaining} bytes before the "
                "end that Content-Length announced"
            )
        return "the connection closed inside the chunked body (no last chunk)"

    def _check_line(self, size: int) -> None:
        if self._state in ("head", "trailer"):
            if self._head_bytes + size > self._max_bytes:
                raise HTTPError(f"response headers longer than {self._max_bytes} bytes")
        elif size > MAX_CHUNK_LINE:
            raise HTTPError(f"a chunk-size line longer than {MAX_CHUNK_LINE} bytes")

    def _count_head_line(self, size: int) -> None:
        self._head_bytes += size
        self._head_lines += 1
        # The status line is not a header line.
        if self._head_lines > self._max_lines + 1:
            raise HTTPError(f"more than {self._max_lines} response header lines")

    def _line(self, line: bytes, out: list[Head | bytes]) -> None:
        state = self._state
        if state == "head":
            if line:
                if self._lines and line[:1] in (b" ", b"\t"):
                    # obs-fold: a continuation of the previous header.
                    self._lines[-1] += b" " + line.strip()
                else:
                    self._lines.append(line)
                return
            if not self._lines:
                return  # blank lines before a status line are tolerated
            head = self._parse_head(self._lines)
            self._lines = []
            if 100 <= head.status < 200:
                if head.status == 101:
                    raise HTTPError("101 Switching Protocols to something else")
                return  # an interim response: the real one follows
            self.head = head
            out.append(head)
            self._state = {"chunked": "size", "length": "length", "close": "close"}.get(
                head.framing, "end"
            )
            self.done = self._state == "end" or (
                self._state == "length" and not self._remaining
            )
        elif state == "size":
            size_text = line.split(b";", 1)[0].strip()
            try:
                if not re.fullmatch(rb"[0-9a-fA-F]+", size_text):
                    raise ValueError
                size = int(size_text, 16)
            except ValueError:
                raise HTTPError(f"a bad chunk size {line[:40]!r}") from None
            self._remaining = size
            self._state = "data" if size else "trailer"
        elif state == "crlf":
            if line:
                raise HTTPError("a chunk not followed by CRLF")
            self._state = "size"
        elif state == "trailer" and not line:
            self.done = True

    def _parse_head(self, lines: list[bytes]) -> Head:
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            raise HTTPError(f"not an HTTP/1 status line: {lines[0][:60]!r}")
        major, minor, code, reason = match.groups()
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise HTTPError(f"a malformed header line {line[:60]!r}")
            headers.append(
                (name.decode("latin-1").lower(), value.strip(b" \t").decode("latin-1"))
            )
        status = int(code)
        framing = self._framing(status, headers)
        return Head(
            status=status,
            reason=(reason or b"").decode("latin-1"),
            version=f"HTTP/{major.decode()}.{minor.decode()}",
            headers=tuple(headers),
            framing=framing,
        )

    def _framing(self, status: int, headers: list[tuple[str, str]]) -> str:
        # RFC 9112, section 6.3.
        if self._method == "HEAD" or status in (204, 304) or status < 200:
            return "none"
        codings = [
            coding.strip().lower()
            for name, value in headers
            if name == "transfer-encoding"
            for coding in value.split(",")
        ]
        if codings:
            return "chunked" if codings[-1] == "chunked" else "close"
        lengths = {
            value.strip()
            for name, value in headers
            if name == "content-length"
            for value in value.split(",")
        }
        if lengths:
            (length, *others) = lengths
            if others or not length.isdigit() or not length.isascii():
                raise HTTPError(f"a bad Content-Length {sorted(lengths)!r}")
            self._remaining = int(length)
            return "length"
        return "close"
