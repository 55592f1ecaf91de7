"""
One HTTP request as ``twisted-sse check`` needs to see it: over HTTP/1.1,
or HTTP/2 when TLS's ALPN picks it (as a browser would), on a connection of
its own, reported raw (the exact head, the framing, each read of the body
as it comes) to a :class:`Recorder`.

Twisted's HTTP client hides what a checker must see (``Transfer-Encoding``,
the reads as they arrive) and speaks no HTTP/2, so HTTP/1.1 responses are
read here by :class:`H1Reader`, bounded as the client is: 16384 bytes and
500 lines of head, 1024 bytes of chunk-size line; the body is the
recorder's to bound.  HTTP/2 uses the ``h2`` package (``Twisted[http2]``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from attrs import define, frozen
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocol,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot

from ._client import MAX_REDIRECTS, MAX_RESPONSE_HEADER_BYTES, MAX_RESPONSE_HEADERS
from ._url import URL

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_CHUNK_LINE",
    "MAX_H2_PREHEAD",
    "Connector",
    "Fetch",
    "H1Reader",
    "HTTPError",
    "Head",
    "Recorder",
]

#: The longest chunk-size line read (RFC 9112 sets no limit; only chunk
#: extensions could make one long).
MAX_CHUNK_LINE: Final = 1024
#: The most HTTP/2 bytes read before the response head arrives.
MAX_H2_PREHEAD: Final = 256 * 1024
#: Seconds a TCP connection may take to open.
CONNECT_TIMEOUT: Final = 5.0

_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: (.*))?")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@frozen
class Head:
    """
    A response head.

    :ivar status: The status code.
    :ivar reason: The reason phrase (none over HTTP/2).
    :ivar version: ``HTTP/1.1``, ``HTTP/1.0`` or ``HTTP/2``.
    :ivar headers: ``(name, value)`` pairs in order, names in lower case,
        values decoded as Latin-1.
    :ivar framing: How the body is delimited: ``chunked``, ``length``
        (Content-Length), ``close`` (by closing the connection), ``h2``
        (HTTP/2 frames) or ``none`` (no body: HEAD, 204, 304).
    """

    status: int
    reason: str = ""
    version: str = "HTTP/1.1"
    headers: tuple[tuple[str, str], ...] = ()
    framing: str = "chunked"

    def get(self, name: str) -> list[str]:
        """The values of header ``name`` (any case), in order."""
        name = name.lower()
        return [value for key, value in self.headers if key == name]


# HTTP/1.1, read by hand: the checker must see what Twisted's client hides
# (Transfer-Encoding, the raw head), and bound all of it.


class HTTPError(Exception):
    """A response that breaks HTTP, or is bigger than the caps allow."""


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


# A request, over a connection of its own.


class Recorder:
    """What an exchange tells about its response; override what matters."""

    def head(self, head: Head) -> str | None:
        """
        The head came.

        :returns: A reason to stop reading, or ``None`` to read the body.
        """
        return None

    def body(self, data: bytes) -> str | None:
        """
        A piece of the body came.

        :returns: A reason to stop reading, or ``None`` to go on.
        """
        return None

    def extra(self, size: int) -> None:
        """``size`` bytes came after a response that was complete (a HEAD's)."""

    def end(self, error: str | None) -> None:
        """The exchange ended: ``error`` says why, ``None`` if it completed."""


@frozen
class _Request:
    method: str
    url: URL
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    @property
    def authority(self) -> str:
        return self.url.origin.split("://", 1)[1]

    def http1(self) -> bytes:
        lines = [f"{self.method} {self.url.target} HTTP/1.1", f"Host: {self.authority}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.body or self.method == "POST":
            lines.append(f"Content-Length: {len(self.body)}")
        text = "\r\n".join(lines) + "\r\n\r\n"
        return text.encode("utf-8") + self.body


class _Exchange:
    """One request on a connection of its own; :meth:`abort` ends it."""

    def __init__(self, recorder: Recorder) -> None:
        self.done: Deferred[None] = Deferred()
        self.recorder = recorder
        self.connecting: Deferred[IProtocol] | None = None
        self.connection: _Connection | None = None
        self.abort_reason: str | None = None
        self.ended = False

    def finish(self, error: str | None) -> None:
        if self.ended:
            return
        self.ended = True
        self.recorder.end(error)
        self.done.callback(None)

    def abort(self, reason: str) -> None:
        """End the exchange now, for ``reason``."""
        if self.ended or self.abort_reason is not None:
            return
        self.abort_reason = reason
        if self.connection is not None:
            self.connection.drop()
        elif self.connecting is not None:
            self.connecting.cancel()
        else:
            self.finish(reason)


@implementer(IHandshakeListener)
class _Connection(Protocol):
    """Speaks HTTP/1.1, or HTTP/2 when TLS's ALPN chose it, for one request."""

    def __init__(self, exchange: _Exchange, request: _Request, tls: bool) -> None:
        self.exchange = exchange
        self.request = request
        self.tls = tls
        self.h1: H1Reader | None = None
        self.h2: _H2 | None = None
        self.error: str | None = None
        self.dropped = False

    def connectionMade(self) -> None:
        self.exchange.connection = self
        if self.exchange.abort_reason is not None:
            self.drop()
        elif not self.tls:
            self._start(h2=False)

    def handshakeCompleted(self) -> None:
        protocol = getattr(self.transport, "negotiatedProtocol", None)
        self._start(h2=protocol == b"h2")

    def _start(self, h2: bool) -> None:
        assert self.transport is not None
        if h2:
            self.h2 = _H2(self)
            self.h2.send(self.request)
        else:
            self.h1 = H1Reader(self.request.method)
            self.transport.write(self.request.http1())

    def dataReceived(self, data: bytes) -> None:
        if self.exchange.ended or self.error is not None:
            return
        if self.h2 is not None:
            self.h2.receive(data)
            return
        if self.h1 is None:
            return
        extra = self.h1.extra
        try:
            pieces = self.h1.feed(data)
        except HTTPError as e:
            self.fail(str(e))
            return
        if self.h1.extra > extra:
            self.exchange.recorder.extra(self.h1.extra - extra)
        for piece in pieces:
            recorder = self.exchange.recorder
            stop = (
                recorder.head(piece)
                if isinstance(piece, Head)
                else recorder.body(piece)
            )
            if stop is not None:
                self.fail(stop)
                return
        if self.h1.done and self.request.method != "HEAD":
            self.complete()

    def complete(self) -> None:
        """The response is whole: end the exchange and the connection."""
        self.exchange.finish(None)
        assert self.transport is not None
        self.transport.loseConnection()

    def fail(self, error: str) -> None:
        """Stop reading, for ``error``, and drop the connection."""
        if self.error is None:
            self.error = error
        self.drop()

    def drop(self) -> None:
        """Close the connection at once."""
        transport = self.transport
        if transport is None or self.dropped:
            return
        self.dropped = True
        if ITCPTransport.providedBy(transport):
            ITCPTransport(transport).abortConnection()
        else:
            transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        error = self.exchange.abort_reason or self.error
        if error is None and self.h1 is not None:
            error = self.h1.end()
        elif error is None and self.h2 is not None:
            error = self.h2.lost()
        elif error is None and self.h1 is None and self.h2 is None:
            error = _describe(reason)
        self.exchange.finish(error)


class _H2:
    """One request over an HTTP/2 connection, with the ``h2`` package."""

    def __init__(self, connection: _Connection) -> None:
        import h2.config
        import h2.connection

        self.connection = connection
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.stream_id = 0
        self.prehead = 0
        self.head: Head | None = None
        self.ended = False

    def send(self, request: _Request) -> None:
        from h2.settings import SettingCodes

        self.h2.initiate_connection()
        # No server push: pushed streams would only take up the window.
        self.h2.update_settings({SettingCodes.ENABLE_PUSH: 0})
        self.stream_id = self.h2.get_next_available_stream_id()
        headers = [
            (b":method", request.method.encode("ascii")),
            (b":scheme", request.url.scheme.encode("ascii")),
            (b":authority", request.authority.encode("ascii")),
            (b":path", request.url.target.encode("ascii")),
        ]
        headers += [
            (name.lower().encode("ascii"), value.encode("utf-8"))
            for name, value in request.headers
        ]
        if request.body or request.method == "POST":
            headers.append((b"content-length", str(len(request.body)).encode()))
        self.h2.send_headers(self.stream_id, headers, end_stream=not request.body)
        if request.body:
            self.h2.send_data(self.stream_id, request.body, end_stream=True)
        self._flush()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.connection.transport is not None:
            self.connection.transport.write(data)

    def receive(self, data: bytes) -> None:
        import h2.events

        if self.head is None:
            self.prehead += len(data)
            if self.prehead > MAX_H2_PREHEAD:
                self.connection.fail(
                    f"no HTTP/2 response head in the first {MAX_H2_PREHEAD} bytes"
                )
                return
        try:
            events = self.h2.receive_data(data)
        except Exception as e:  # h2's, hpack's: whatever the server provoked
            self.connection.fail(f"a malformed HTTP/2 response: {e}")
            return
        recorder = self.connection.exchange.recorder
        for event in events:
            if isinstance(event, h2.events.DataReceived) and (
                event.stream_id != self.stream_id and event.flow_controlled_length
            ):
                # Data of another stream still counts against the connection.
                with contextlib.suppress(Exception):
                    self.h2.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id or 0
                    )
            if getattr(event, "stream_id", self.stream_id) != self.stream_id:
                continue
            stop: str | None = None
            if isinstance(event, h2.events.ResponseReceived):
                self.head = _h2_head(event.headers or [])
                stop = recorder.head(self.head)
            elif isinstance(event, h2.events.DataReceived):
                if event.flow_controlled_length:
                    self.h2.acknowledge_received_data(
                        event.flow_controlled_length, self.stream_id
                    )
                stop = recorder.body(event.data or b"")
            elif isinstance(event, h2.events.StreamEnded):
                self.ended = True
                self._flush()
                self.connection.complete()
                return
            elif isinstance(event, h2.events.StreamReset):
                stop = f"the server reset the HTTP/2 stream ({event.error_code!s})"
            elif isinstance(event, h2.events.ConnectionTerminated):
                stop = f"the server sent GOAWAY ({event.error_code!s})"
            if stop is not None:
                self.connection.fail(stop)
                return
        self._flush()

    def lost(self) -> str | None:
        if self.ended:
            return None
        if self.head is None:
            return "the connection closed without a response"
        return "the connection closed before the HTTP/2 stream ended"


def _h2_head(raw: Sequence[tuple[bytes | str, bytes | str]]) -> Head:
    headers: list[tuple[str, str]] = []
    status = 0
    for name, value in raw:
        key = name.decode("latin-1") if isinstance(name, bytes) else name
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if key == ":status":
            status = int(text)
        elif not key.startswith(":"):
            headers.append((key.lower(), text))
    return Head(status=status, version="HTTP/2", headers=tuple(headers), framing="h2")


def _describe(reason: Failure) -> str:
    """A failure to connect or a lost connection, in one line."""
    value = reason.value
    if type(value).__module__ == "OpenSSL.SSL":
        # pyOpenSSL's errors hold a list of (library, function, reason).
        errors = value.args[0] if value is not None and value.args else []
        details = [str(error[2]) for error in errors if error]
        return "the TLS handshake failed: " + ("; ".join(details) or "no reason")
    message = reason.getErrorMessage().strip()
    return message.rstrip(".") or type(value).__name__


@define
class Connector:
    """
    Opens each request's connection: TCP, or TLS offering HTTP/2 and
    HTTP/1.1 by ALPN as a browser does.

    :ivar reactor: A reactor with TCP and time.
    :ivar trust: The certificates to trust over TLS (the platform's if
        ``None``).
    :ivar http2: Whether to offer HTTP/2 over TLS (when the ``h2`` package
        is installed).
    :ivar endpoint_for: How to reach a URL's host; a TCP or TLS endpoint on
        ``reactor`` by default (tests give their own).
    """

    reactor: Any
    trust: IOpenSSLTrustRoot | None = None  # an OpenSSL trust root
    http2: bool = True
    endpoint_for: Callable[[URL], IStreamClientEndpoint] | None = None

    def _endpoint(self, url: URL) -> IStreamClientEndpoint:
        if self.endpoint_for is not None:
            return self.endpoint_for(url)
        from twisted.internet.ssl import optionsForClientTLS

        host = url.host.strip("[]")
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self.reactor, host, url.port, timeout=CONNECT_TIMEOUT
        )
        if url.scheme == "https":
            # Offered only when it can be spoken: h2 is an optional extra.
            h2 = self.http2 and importlib.util.find_spec("h2") is not None
            protocols = [b"h2", b"http/1.1"] if h2 else [b"http/1.1"]
            options = optionsForClientTLS(
                host, trustRoot=self.trust, acceptableProtocols=protocols
            )
            endpoint = wrapClientTLS(options, endpoint)
        return endpoint

    def request(
        self,
        method: str,
        url: URL,
        headers: Sequence[tuple[str, str]],
        recorder: Recorder,
        body: bytes = b"",
    ) -> _Exchange:
        """Make one request (no redirect followed) and record its response."""
        exchange = _Exchange(recorder)
        request = _Request(method, url, tuple(headers), body)
        tls = url.scheme == "https" and self.endpoint_for is None
        factory = Factory.forProtocol(lambda: _Connection(exchange, request, tls))
        try:
            endpoint = self._endpoint(url)
        except Exception as e:
            exchange.finish(f"cannot connect: {e}")
            return exchange
        connecting = exchange.connecting = endpoint.connect(factory)

        def failed(reason: Failure) -> None:
            exchange.finish(exchange.abort_reason or _describe(reason))

        connecting.addErrback(failed)
        return exchange


class Fetch:
    """
    A request that follows redirects (at most :data:`MAX_REDIRECTS`, the
    caller's headers dropped on a change of origin, as a browser does).
    """

    def __init__(
        self,
        connector: Connector,
        method: str,
        url: URL,
        headers: Sequence[tuple[str, str]],
        recorder: Recorder,
        *,
        own: Sequence[tuple[str, str]] = (),
        follow: bool = True,
        body: bytes = b"",
    ) -> None:
        self.done: Deferred[None] = Deferred()
        self.redirects: list[tuple[int, str]] = []
        self.url = url
        self._connector = connector
        self._method = method
        self._headers = tuple(headers)
        self._own = tuple(own)
        self._recorder = recorder
        self._follow = follow
        self._body = body
        self._exchange: _Exchange | None = None
        self._aborted: str | None = None
        self._location: str | None = None
        self._request(url)

    def _request(self, url: URL) -> None:
        self.url = url
        self._location = None
        exchange = self._exchange = self._connector.request(
            self._method,
            url,
            (*self._own, *self._headers),
            _Redirects(self) if self._follow else self._recorder,
            self._body,
        )
        exchange.done.addCallback(lambda _: self._after())

    def _after(self) -> None:
        if self._location is None:
            self.done.callback(None)
            return
        location, self._location = self._location, None
        if self._aborted is not None:
            self._recorder.end(self._aborted)
        elif len(self.redirects) > MAX_REDIRECTS:
            self._recorder.end(f"more than {MAX_REDIRECTS} redirects")
        else:
            try:
                target = URL.parse(location, self.url)
            except ValueError as e:
                self._recorder.end(f"a bad redirect: {e}")
            else:
                if target.origin != self.url.origin:
                    self._headers = ()
                self._request(target)
                return
        self.done.callback(None)

    def abort(self, reason: str) -> None:
        """End the request (or the redirect being followed) for ``reason``."""
        self._aborted = reason
        if self._exchange is not None:
            self._exchange.abort(reason)


class _Redirects(Recorder):
    """Takes a redirect's head for its :class:`Fetch`; passes the rest on."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._passing = True

    def head(self, head: Head) -> str | None:
        locations = head.get("location")
        if head.status in _REDIRECTS and locations:
            self._passing = False
            self._fetch.redirects.append((head.status, locations[-1]))
            self._fetch._location = locations[-1]
            return "redirected"
        return self._fetch._recorder.head(head)

    def body(self, data: bytes) -> str | None:
        return self._fetch._recorder.body(data)

    def end(self, error: str | None) -> None:
        if self._passing:
            self._fetch._recorder.end(error)
