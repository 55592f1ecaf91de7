"""
A strict reader of one HTTP/1.x response as it arrives: the test client's
(:class:`~twisted_sse.testing.SSETestClient`) and the test suite's real-socket
clients see a server's bytes through it, so a framing bug fails a test
instead of being smoothed over.
"""

from __future__ import annotations

from twisted.web.http_headers import Headers

__all__ = ["MalformedResponse", "ResponseReader"]


class MalformedResponse(ValueError):
    """The server wrote something that is not an HTTP/1.x response."""


# The states of ResponseReader.
_STATUS = "status line"
_HEADERS = "headers"
_CHUNK_SIZE = "chunk size"
_CHUNK_DATA = "chunk data"
_CHUNK_END = "chunk end"
_TRAILERS = "trailers"
_LENGTH = "body"
_UNTIL_CLOSE = "body until close"
_DONE = "done"

_NO_BODY_CODES = frozenset({204, 304})


class ResponseReader:
    """
    Read one HTTP/1.x response as it arrives, strictly: status line, headers,
    then a body delimited by chunked encoding, ``Content-Length`` or the end
    of the connection.  Anything else raises :class:`MalformedResponse`, so a
    framing bug in the server fails the test instead of being smoothed over.
    """

    def __init__(self, head_only: bool) -> None:
        self.head_only = head_only
        self.state = _STATUS
        self.version = b""
        self.code: int | None = None
        self.phrase = b""
        self.headers = Headers()
        self._buffer = bytearray()
        self._remaining = 0

    @property
    def head_done(self) -> bool:
        """Whether the whole response head (after any 1xx) has arrived."""
        return self.state not in (_STATUS, _HEADERS)

    @property
    def complete(self) -> bool:
        """Whether the response has ended as HTTP says it ends."""
        return self.state == _DONE

    def feed(self, data: bytes) -> bytes:
        """
        :returns: The body bytes (framing removed) completed by ``data``.
        """
        self._buffer += data
        body = bytearray()
        while self._buffer:
            if self.state == _DONE:
                raise MalformedResponse(
                    f"{len(self._buffer)} bytes after the end of the response: "
                    f"{bytes(self._buffer[:40])!r}"
                )
            if self.state in (_LENGTH, _CHUNK_DATA):
                piece = self._buffer[: self._remaining]
                del self._buffer[: self._remaining]
                body += piece
                self._remaining -= len(piece)
                if not self._remaining:
                    self.state = _DONE if self.state == _LENGTH else _CHUNK_END
                continue
            if self.state == _UNTIL_CLOSE:
                body += self._buffer
                self._buffer.clear()
                continue
            line = self._line()
            if line is None:
                break
            self._line_received(line)
        return bytes(body)

    def eof(self) -> None:
        """The connection ended; a body delimited by it is now complete."""
        if self.state == _UNTIL_CLOSE:
            self.state = _DONE

    def _line(self) -> bytes | None:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > 65536:
                raise MalformedResponse(f"no CRLF in 64 KiB of the {self.state}")
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _line_received(self, line: bytes) -> None:
        if self.state == _STATUS:
            parts = line.split(b" ", 2)
            if (
                len(parts) < 2
                or parts[0] not in (b"HTTP/1.0", b"HTTP/1.1")
                or not (parts[1].isdigit() and len(parts[1]) == 3)
            ):
                raise MalformedResponse(f"bad status line: {line!r}")
            self.version = parts[0]
            self.code = int(parts[1])
            self.phrase = parts[2] if len(parts) == 3 else b""
            self.headers = Headers()
            self.state = _HEADERS
        elif self.state == _HEADERS:
            if line:
                self.headers.addRawHeader(*self._header(line))
            elif self.code is not None and 100 <= self.code < 200:
                self.state = _STATUS  # an interim response; the real one follows
            else:
                self._start_body()
        elif self.state == _CHUNK_SIZE:
            size = line.split(b";", 1)[0].strip()
            if not size or size.strip(b"0123456789abcdefABCDEF"):
                raise MalformedResponse(f"bad chunk size line: {line!r}")
            self._remaining = int(size, 16)
            self.state = _CHUNK_DATA if self._remaining else _TRAILERS
        elif self.state == _CHUNK_END:
            if line:
                raise MalformedResponse(f"chunk longer than its size: {line!r}")
            self.state = _CHUNK_SIZE
        elif self.state == _TRAILERS:
            if line:
                self._header(line)
            else:
                self.state = _DONE

    @staticmethod
    def _header(line: bytes) -> tuple[bytes, bytes]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in b" \t":
            raise MalformedResponse(f"bad header line: {line!r}")
        return name, value.strip(b" \t")

    def _start_body(self) -> None:
        assert self.code is not None
        coding = self.headers.getRawHeaders(b"Transfer-Encoding")
        length = self.headers.getRawHeaders(b"Content-Length")
        if self.head_only or self.code in _NO_BODY_CODES:
            self.state = _DONE
        elif coding is not None:
            if length is not None:
                raise MalformedResponse("both Transfer-Encoding and Content-Length")
            if b",".join(coding).split(b",")[-1].strip().lower() != b"chunked":
                raise MalformedResponse(f"unsupported Transfer-Encoding: {coding!r}")
            self.state = _CHUNK_SIZE
        elif length is not None:
            if len(set(length)) != 1 or not length[0].isdigit():
                raise MalformedResponse(f"bad Content-Length: {length!r}")
            self._remaining = int(length[0])
            self.state = _LENGTH if self._remaining else _DONE
        else:
            self.state = _UNTIL_CLOSE
