"""
Test your Server-Sent Events endpoints without a network.

In the spirit of :mod:`treq.testing`: :class:`SSETestClient` serves any
:class:`~twisted.web.resource.IResource` (an :class:`EventStreamResource
<twisted_sse.EventStreamResource>`, a tree built with ``putChild``, or a Klein
app's ``app.resource()``) through a real :class:`twisted.web.server.Site`, over
an in-memory transport.  The request goes through Twisted's own HTTP parsing,
resource traversal, chunked encoding and disconnect handling; only the socket
is fake.  Every byte the server writes reaches the client at once, so events
arrive whether you move time with :meth:`SSETestClient.advance` or with
``clock.advance`` directly.  The client speaks HTTP/1.1 (or 1.0), one
connection per request; HTTP/2 is not simulated.

Inject one :class:`~twisted.internet.task.Clock` into both the resource
(``EventStreamResource(..., clock=clock)``) and the client: the client uses it
to step time and to check that no timer outlived the test.  The helpers are
synchronous and need no reactor, so they work in a
:class:`~twisted.trial.unittest.SynchronousTestCase` under ``trial`` and
``pytest`` alike.

A complete example that you can copy lives in ``tests/test_example_usage.py``;
in short::

    from twisted.internet.task import Clock
    from twisted.trial.unittest import SynchronousTestCase

    from twisted_sse import EventStreamResource, counter
    from twisted_sse.testing import SSETestClient


    class CounterTests(SynchronousTestCase):
        def test_counts(self) -> None:
            \"\"\"The stream sends 1, 2, 3, one per second.\"\"\"
            clock = Clock()
            resource = EventStreamResource(counter(1), clock=clock)
            client = SSETestClient(resource, clock=clock)

            response = client.get("/")
            self.assertEqual(response.code, 200)
            client.advance(3)
            self.assertEqual([e.data for e in response.events], ["1", "2", "3"])

            response.disconnect()
            client.assert_clean(testcase=self)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol
from unittest import TestCase

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from twisted.web.server import Site

from ._event import MessageEvent
from ._heartbeat import Heartbeat
from ._parser import EventParser
from ._registry import StreamRegistry
from ._resource import StreamResource

__all__ = [
    "Checkable",
    "SSETestClient",
    "SSETestResponse",
    "SubscriptionCounter",
    "assert_no_leaks",
    "parse_events",
]

_LINE_BREAK = re.compile(b"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"

# An HTTP method is a token (RFC 9110, section 5.6.2).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def parse_events(data: bytes, last_event_id: str = "") -> list[MessageEvent]:
    """
    Parse a complete ``text/event-stream`` body.

    An unfinished last block (no blank line after it) is discarded, as a
    browser does when the stream ends.

    :param data: The body.
    :param last_event_id: The last event id to start from.
    :returns: The events the body dispatches, in order.
    """
    parser = EventParser(last_event_id=last_event_id)
    events = parser.feed(data)
    parser.end()
    return events


#: What :func:`assert_no_leaks` can check for open streams and timers.
Checkable = StreamResource | StreamRegistry | Heartbeat


class SubscriptionCounter(Protocol):
    """
    A broker as :func:`assert_no_leaks` sees it (a
    ``MemoryBroker`` is one): it can count the subscribers of its channels.
    """

    def channel_names(self) -> list[str]:
        """The channels that have history or subscribers."""

    def subscriber_count(self, channel: str) -> int:
        """How many subscriptions ``channel`` has."""


class _KleinApp(Protocol):
    """What :meth:`SSETestClient.for_klein` needs of a Klein app."""

    def resource(self) -> IResource:
        """The app as a resource."""


class _MalformedResponse(ValueError):
    """The server wrote something that is not an HTTP/1.x response."""


# The states of _ResponseReader.
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


class _ResponseReader:
    """
    Read one HTTP/1.x response as it arrives, strictly: status line, headers,
    then a body delimited by chunked encoding, ``Content-Length`` or the end
    of the connection.  Anything else raises :class:`_MalformedResponse`, so a
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
        return self.state not in (_STATUS, _HEADERS)

    @property
    def complete(self) -> bool:
        return self.state == _DONE

    def feed(self, data: bytes) -> bytes:
        """
        :returns: The body bytes (framing removed) completed by ``data``.
        """
        self._buffer += data
        body = bytearray()
        while self._buffer:
            if self.state == _DONE:
                raise _MalformedResponse(
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
                raise _MalformedResponse(f"no CRLF in 64 KiB of the {self.state}")
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
                raise _MalformedResponse(f"bad status line: {line!r}")
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
                raise _MalformedResponse(f"bad chunk size line: {line!r}")
            self._remaining = int(size, 16)
            self.state = _CHUNK_DATA if self._remaining else _TRAILERS
        elif self.state == _CHUNK_END:
            if line:
                raise _MalformedResponse(f"chunk longer than its size: {line!r}")
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
            raise _MalformedResponse(f"bad header line: {line!r}")
        return name, value.strip(b" \t")

    def _start_body(self) -> None:
        assert self.code is not None
        coding = self.headers.getRawHeaders(b"Transfer-Encoding")
        length = self.headers.getRawHeaders(b"Content-Length")
        if self.head_only or self.code in _NO_BODY_CODES:
            self.state = _DONE
        elif coding is not None:
            if length is not None:
                raise _MalformedResponse("both Transfer-Encoding and Content-Length")
            if b",".join(coding).split(b",")[-1].strip().lower() != b"chunked":
                raise _MalformedResponse(f"unsupported Transfer-Encoding: {coding!r}")
            self.state = _CHUNK_SIZE
        elif length is not None:
            if len(set(length)) != 1 or not length[0].isdigit():
                raise _MalformedResponse(f"bad Content-Length: {length!r}")
            self._remaining = int(length[0])
            self.state = _LENGTH if self._remaining else _DONE
        else:
            self.state = _UNTIL_CLOSE


class _ServerTransport(StringTransport):
    """
    The server's end of an in-memory connection: what the server writes goes
    straight to the :class:`SSETestResponse`, and closing it tells the
    response that the server hung up.

    As on a real transport, ``disconnecting`` is set by ``loseConnection``
    and ``disconnected`` once the protocol was told ``connectionLost``.
    """

    def __init__(self, response: SSETestResponse, peer: IPv4Address) -> None:
        # lenient: Twisted's HTTPChannel resumes the transport after a
        # response even when it is about to close the connection.
        super().__init__(  # type: ignore[no-untyped-call]  # untyped in Twisted
            hostAddress=IPv4Address("TCP", "127.0.0.1", 80),
            peerAddress=peer,
            lenient=True,
        )
        self._response = response

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"Data must be bytes, not {type(data).__name__}")
        if self.connected and not self.disconnecting:
            self._response._from_server(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.connected and not self.disconnecting:
            self.disconnecting = True
            self._response._server_closed(ConnectionDone("the server closed"), False)

    def abortConnection(self) -> None:
        if self.connected and not self.disconnecting:
            self.disconnecting = True
            self._response._server_closed(ConnectionAborted("the server aborted"), True)


class SSETestResponse:
    """
    One request made by :class:`SSETestClient`, on its own connection, and the
    response as it has arrived so far.

    Bytes are read as the server writes them: the attributes are always up to
    date, and Deferreds from :meth:`next_event` fire from inside the server's
    write.  When the body has ended, the client closes its connection at its
    next call (see :meth:`SSETestClient.flush`).

    :ivar method: The request method, such as ``"GET"``.
    :ivar path: The request path.
    :ivar request_headers: The headers that were sent.
    :ivar events: Every event the body has dispatched so far, in order.
    :ivar finished: Whether the body ended the way HTTP says a body ends: the
        terminating chunk of a chunked body, the full ``Content-Length``, the
        end of a connection-delimited body, or no body at all (``HEAD``,
        ``204``, ``304``).
    :ivar connected: Whether the connection is still open.
    :ivar protocol_error: Why the bytes the server wrote are not a valid
        HTTP/1.x response, or ``None``.
    """

    def __init__(
        self,
        client: SSETestClient,
        method: str,
        path: str,
        request_headers: Headers,
        last_event_id: str,
        origin: str,
    ) -> None:
        self.method = method
        self.path = path
        self.request_headers = request_headers
        self._raw = bytearray()
        self._wire = bytearray()
        self.events: list[MessageEvent] = []
        self.finished = False
        self.connected = True
        self.protocol_error: str | None = None
        self._client = client
        self._reader = _ResponseReader(head_only=method == "HEAD")
        self._parser = EventParser(last_event_id=last_event_id, origin=origin)
        self._taken = 0
        self._waiting: list[Deferred[MessageEvent]] = []
        self._ended: Failure | None = None
        self._paused = False
        self._held: list[bytes] = []
        self._protocol: IProtocol | None = None
        self._transport: _ServerTransport | None = None
        self._server_notified = False

    def __repr__(self) -> str:
        state = "finished" if self.finished else "open" if self.connected else "cut"
        return (
            f"<SSETestResponse {self.method} {self.path} {self.code} {state}, "
            f"{len(self.events)} events>"
        )

    @property
    def raw(self) -> bytes:
        """
        The body so far with the transfer encoding removed: the
        ``text/event-stream`` itself.
        """
        return bytes(self._raw)

    @property
    def wire(self) -> bytes:
        """
        Every byte the server wrote on the connection: status line, headers,
        chunk framing.
        """
        return bytes(self._wire)

    @property
    def code(self) -> int | None:
        """The status code, or ``None`` until the response head arrives."""
        return self._reader.code if self._reader.head_done else None

    @property
    def phrase(self) -> bytes:
        """The reason phrase, such as ``b"OK"``."""
        return self._reader.phrase

    @property
    def version(self) -> bytes:
        """The HTTP version of the response, such as ``b"HTTP/1.1"``."""
        return self._reader.version

    @property
    def headers(self) -> Headers:
        """The response headers; empty until the whole head has arrived."""
        return self._reader.headers if self._reader.head_done else Headers()

    def header(self, name: str) -> str | None:
        """
        One response header as text.

        :param name: The header name, in any case.
        :returns: Its value (several values joined with ``", "``, as HTTP
            allows), or ``None`` if the response has no such header.
        """
        values = self.headers.getRawHeaders(name.encode("ascii"))
        if values is None:
            return None
        return ", ".join(value.decode("latin-1") for value in values)

    @property
    def retry(self) -> int | None:
        """The reconnection time the stream set, in milliseconds, if any."""
        return self._parser.retry

    @property
    def last_event_id(self) -> str:
        """The last event id committed, as a browser would send it back."""
        return self._parser.last_event_id

    @property
    def comments(self) -> list[str]:
        """
        The text of every complete comment line so far (``": ping"`` gives
        ``"ping"``, a bare ``":"`` gives ``""``): heartbeats, mostly.  Clients
        ignore comments, so :attr:`events` never shows them.
        """
        body = self.raw
        if body.startswith(_BOM):
            body = body[len(_BOM) :]
        # The last piece is an unterminated line (or b"" after a break).
        lines = _LINE_BREAK.split(body)[:-1]
        return [
            line[2:].decode("utf-8", "replace")
            if line.startswith(b": ")
            else line[1:].decode("utf-8", "replace")
            for line in lines
            if line.startswith(b":")
        ]

    def next_event(self) -> Deferred[MessageEvent]:
        """
        The next event not yet taken with this method.

        Events are taken in order, starting with the first.  The Deferred has
        already fired if the event has arrived; otherwise it fires when the
        server sends it.  If the server ends the response first, it fails
        with :class:`~twisted.web.client.ResponseDone` when the body ended
        cleanly, or with :class:`~twisted.internet.error.ConnectionDone` or
        :class:`~twisted.internet.error.ConnectionAborted` when the server
        closed the connection before that.  A Deferred still waiting when
        :meth:`disconnect` is called never fires; asked for after it, the
        next event fails with the reason given to :meth:`disconnect`.
        Events received before the end can still be taken.  Cancelling the
        Deferred gives up the wait without taking an event.

        :returns: A Deferred that fires with a
            :class:`~twisted_sse.MessageEvent`.
        """
        if self._taken < len(self.events):
            self._taken += 1
            return succeed(self.events[self._taken - 1])
        if self._ended is not None:
            return fail(self._ended)

        def cancel(deferred: Deferred[MessageEvent]) -> None:
            if deferred in self._waiting:
                self._waiting.remove(deferred)

        waiting: Deferred[MessageEvent] = Deferred(cancel)
        self._waiting.append(waiting)
        return waiting

    def disconnect(self, reason: Exception | None = None) -> None:
        """
        Close the connection from the client's side, as when a browser tab
        goes away: the server's channel gets ``connectionLost``, so its
        ``request.notifyFinish()`` Deferred fails.  Does nothing if the
        connection is already closed.

        :param reason: What the server is told; by default
            :class:`~twisted.internet.error.ConnectionDone` (the client closed
            the socket).  Pass a
            :class:`~twisted.internet.error.ConnectionLost` to simulate a
            client that vanished from the network.
        """
        why = reason if reason is not None else ConnectionDone("the client closed")
        with self._client._operation():
            self._client._pending.append(lambda: self._client_closed(why))

    def pause_reading(self) -> None:
        """
        Stop reading, as a client whose socket buffer is full: the server's
        channel is paused (so is a push producer registered on the request),
        and what the server still writes is held until :meth:`resume_reading`.
        """
        with self._client._operation():
            if self._paused or self._transport is None:
                return
            self._paused = True
            if self._transport.producer is not None and self.connected:
                self._transport.producer.pauseProducing()

    def resume_reading(self) -> None:
        """Read what was held back, then resume the server's channel."""
        with self._client._operation():
            if not self._paused or self._transport is None:
                return
            self._paused = False
            held, self._held = b"".join(self._held), []
            if held:
                self._read(held)
            if self._transport.producer is not None and self.connected:
                self._transport.producer.resumeProducing()

    # Wiring, called by SSETestClient and _ServerTransport.

    def _connect(self, protocol: IProtocol, transport: _ServerTransport) -> None:
        self._protocol = protocol
        self._transport = transport
        protocol.makeConnection(transport)

    def _send(self, data: bytes) -> None:
        assert self._protocol is not None
        self._protocol.dataReceived(data)

    def _from_server(self, data: bytes) -> None:
        self._wire += data
        if self._paused:
            self._held.append(data)
        else:
            self._client._delivering += 1
            try:
                self._read(data)
            finally:
                self._client._delivering -= 1

    def _read(self, data: bytes) -> None:
        if self.protocol_error is not None:
            return
        try:
            body = self._reader.feed(data)
        except _MalformedResponse as e:
            self.protocol_error = str(e)
            self._end(Failure(e))
            return
        if body:
            self._raw += body
            self.events.extend(self._parser.feed(body))
            self._wake()
        if self._reader.complete and not self.finished:
            self.finished = True
            self._parser.end()
            self._end(Failure(ResponseDone("the response ended")))
            if self.connected:
                # The client is done with the connection; close it at a safe
                # point, not inside the server's write.
                self._client._pending.append(
                    lambda: self._client_closed(ConnectionDone("the response ended"))
                )

    def _wake(self) -> None:
        while self._waiting and self._taken < len(self.events):
            waiting = self._waiting.pop(0)
            self._taken += 1
            waiting.callback(self.events[self._taken - 1])

    def _end(self, reason: Failure) -> None:
        if self._ended is not None:
            return
        self._ended = reason
        waiting, self._waiting = self._waiting, []
        for deferred in waiting:
            deferred.errback(reason)

    def _server_closed(self, reason: Exception, aborted: bool) -> None:
        """The server closed (or, ``aborted``, reset) the connection."""
        self._client._delivering += 1
        try:
            if aborted:
                # A reset throws away what the client had not read yet.
                self._held.clear()
            elif self._held:
                self._paused = False
                held, self._held = b"".join(self._held), []
                self._read(held)
            self.connected = False
            self._reader.eof()
            self._read(b"")
            self._end(Failure(reason))
        finally:
            self._client._delivering -= 1
        # A real reactor tells the protocol later, never inside its call.
        self._client._pending.append(lambda: self._notify_server(reason))

    def _client_closed(self, reason: Exception) -> None:
        if self._transport is None or not self._transport.connected:
            return
        if self.connected:
            self.connected = False
            self._held.clear()
            # Deferreds still waiting are left unfired: the test hung up on
            # them itself, and failing them would log unhandled errors.
            self._waiting = []
            self._end(Failure(reason))
            self._transport.disconnecting = True
        self._notify_server(reason)

    def _notify_server(self, reason: Exception) -> None:
        if self._server_notified or self._protocol is None:
            return
        self._server_notified = True
        assert self._transport is not None
        self._transport.connected = False
        self._transport.disconnected = True
        self._protocol.connectionLost(Failure(reason))


class SSETestClient:
    """
    Make requests to a resource in memory and read the responses as a
    browser's ``EventSource`` would, one connection per request.

    Every method runs the server to completion before it returns and then
    delivers the connection closes that came due (see :meth:`flush`).

    :param resource: The root of the resource tree to serve.
    :param clock: The clock the resource was given; a new one if ``None``.
        The ``Site``'s connection timeouts run on it too, so a connection
        left open shows up as a pending call.
    :param host: The ``Host`` header sent, and the origin given to events
        (``http://host``).
    :ivar clock: The clock.
    :ivar site: The :class:`~twisted.web.server.Site` serving ``resource``.
    :ivar responses: Every response, in the order the requests were made.
    """

    def __init__(
        self,
        resource: IResource,
        clock: Clock | None = None,
        *,
        host: str = "localhost",
    ) -> None:
        self.clock = clock if clock is not None else Clock()
        self.resource = resource
        self.site = Site(resource, reactor=self.clock)
        self.host = host
        self.responses: list[SSETestResponse] = []
        self._pending: list[Callable[[], None]] = []
        self._depth = 0
        self._delivering = 0
        self._next_port = 40000

    @classmethod
    def for_klein(
        cls, app: _KleinApp, clock: Clock | None = None, *, host: str = "localhost"
    ) -> SSETestClient:
        """
        Serve a Klein app: the same as ``SSETestClient(app.resource(), ...)``.

        :param app: A :class:`klein.Klein` app.
        :param clock: The clock the app's streams use.
        :param host: See :class:`SSETestClient`.
        """
        return cls(app.resource(), clock, host=host)

    def get(
        self,
        path: str,
        headers: Mapping[str, str] | None = None,
        *,
        last_event_id: str | None = None,
    ) -> SSETestResponse:
        """
        Open an event stream, as ``new EventSource(path)`` does.

        :param path: The request target: a percent-encoded path and query.
        :param headers: More request headers, replacing the defaults
            (``Host``, ``Accept: text/event-stream``, ``Cache-Control:
            no-cache``) case-insensitively.
        :param last_event_id: If given, sent as ``Last-Event-ID`` (as a
            reconnecting browser does) and the response's event parser starts
            from it.
        :returns: The response, with everything the server wrote so far.
        """
        return self.request("GET", path, headers, last_event_id=last_event_id)

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        *,
        last_event_id: str | None = None,
        http_version: str = "HTTP/1.1",
    ) -> SSETestResponse:
        """
        Make any request on a new connection.

        :param method: The method, such as ``"HEAD"`` or ``"OPTIONS"``.
        :param path: See :meth:`get`.
        :param headers: See :meth:`get`.
        :param body: The request body, sent with a ``Content-Length``.
        :param last_event_id: See :meth:`get`.
        :param http_version: ``"HTTP/1.1"`` or ``"HTTP/1.0"``.
        :returns: The response, with everything the server wrote so far.
        :raises ValueError: for a path, method or header that cannot be sent.
        """
        if not path.startswith("/") or not path.isascii():
            raise ValueError(f"path must be an ASCII path starting with /: {path!r}")
        if http_version not in ("HTTP/1.0", "HTTP/1.1"):
            raise ValueError(f"unsupported HTTP version: {http_version!r}")
        if not _TOKEN.fullmatch(method):
            raise ValueError(f"bad method: {method!r}")
        merged: dict[str, tuple[str, str]] = {}
        defaults = {
            "Host": self.host,
            "Accept": "text/event-stream",
            "Cache-Control": "no-cache",
        }
        if last_event_id is not None:
            defaults["Last-Event-ID"] = last_event_id
        for name, value in [*defaults.items(), *(headers or {}).items()]:
            merged[name.lower()] = (name, value)
        if body:
            merged["content-length"] = ("Content-Length", str(len(body)))
        request_headers = Headers()
        lines = [f"{method} {path} {http_version}".encode("ascii")]
        for name, value in merged.values():
            if any(c in name + value for c in "\r\n\0"):
                raise ValueError(f"header must be one line: {name!r}: {value!r}")
            request_headers.addRawHeader(name.encode("ascii"), value.encode("utf-8"))
            lines.append(f"{name}: {value}".encode())
        wire = b"\r\n".join(lines) + b"\r\n\r\n" + body

        with self._operation():
            response = SSETestResponse(
                self,
                method,
                path,
                request_headers,
                last_event_id=last_event_id or "",
                origin=f"http://{self.host}",
            )
            self.responses.append(response)
            self._next_port += 1
            peer = IPv4Address("TCP", "127.0.0.1", self._next_port)
            protocol = self.site.buildProtocol(peer)
            assert protocol is not None
            response._connect(protocol, _ServerTransport(response, peer))
            response._send(wire)
        return response

    def advance(self, seconds: float) -> None:
        """
        Move the clock ``seconds`` forward, running every timer that comes
        due at its own time, in order.

        Unlike ``clock.advance(3)``, which runs a one-second
        :class:`~twisted.internet.task.LoopingCall` once, this runs it three
        times, as three seconds of real time would.  Between steps it
        delivers due connection closes (see :meth:`flush`).

        :param seconds: How far to move.
        :raises ValueError: if ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"cannot go back in time: {seconds!r}")
        with self._operation():
            clock = self.clock
            target = clock.seconds() + seconds
            while True:
                due = [
                    call.getTime()
                    for call in clock.getDelayedCalls()
                    if call.active() and call.getTime() <= target
                ]
                if not due:
                    break
                # Each step runs every call due by then (Clock.advance does)
                # and moves time forward: the loop ends.
                _advance_to(clock, min(due))
                self._settle()
            _advance_to(clock, target)

    def flush(self) -> None:
        """
        Deliver the connection closes that are due: the server's
        ``connectionLost`` after it closed a connection, and the client's own
        close after a response ended or :meth:`SSETestResponse.disconnect`.

        A real reactor never delivers them inside the call that caused them,
        so neither does this client: every method of the client and its
        responses does it before returning.  Call this after moving time with
        ``clock.advance`` directly, before you look at the server's state.
        """
        with self._operation():
            pass

    def disconnect_all(self) -> None:
        """Close every connection still open, from the client's side."""
        for response in self.responses:
            response.disconnect()

    @property
    def open_responses(self) -> list[SSETestResponse]:
        """The responses whose connection is still open."""
        return [response for response in self.responses if response.connected]

    def assert_clean(
        self,
        *resources: Checkable,
        brokers: Iterable[SubscriptionCounter] = (),
        testcase: TestCase | None = None,
    ) -> None:
        """
        Fail if anything outlived the requests: see :func:`assert_no_leaks`,
        given this client and its clock.  The root resource is checked too
        when it is a :class:`~twisted_sse.StreamResource`.

        :param resources: Stream resources in the tree (or registries, or
            shared heartbeats) whose streams must all have ended.
        :param brokers: Brokers that must have no subscriber left.
        :param testcase: The running test, whose ``fail`` reports the leak.
        """
        self.flush()
        checked = list(resources)
        if isinstance(self.resource, StreamResource) and not any(
            self.resource is r for r in checked
        ):
            checked.insert(0, self.resource)
        assert_no_leaks(
            testcase,
            clock=self.clock,
            resources=checked,
            brokers=brokers,
            clients=[self],
        )

    # Internals

    @contextmanager
    def _operation(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._settle()

    def _settle(self) -> None:
        # Not while the server is inside a write to us (a callback of
        # next_event calling back into the client): that is its call stack.
        while self._pending and not self._delivering:
            self._pending.pop(0)()


def _advance_to(clock: Clock, when: float) -> None:
    """Advance ``clock`` to exactly ``when`` (or not at all if it is past)."""
    amount = when - clock.seconds()
    if amount <= 0:
        clock.advance(0)
        return
    # Float addition may land just short of ``when``, leaving the call due
    # there unfired; nudge the step up by the smallest amounts until it lands.
    while clock.seconds() + amount < when:
        amount = math.nextafter(amount, math.inf)
    clock.advance(amount)


def assert_no_leaks(
    testcase: TestCase | None = None,
    *,
    clock: Clock | None = None,
    resources: Iterable[Checkable] = (),
    brokers: Iterable[SubscriptionCounter] = (),
    clients: Iterable[SSETestClient] = (),
) -> None:
    """
    Fail if a stream, a timer, a subscription or a connection outlived the
    test.

    It checks that every resource (or registry) has no open stream and its
    heartbeat timer is stopped, that ``clock`` has no pending delayed call (a
    timer a handler forgot to stop, a subscription that keeps a
    :class:`~twisted.internet.task.LoopingCall` going), that no broker has a
    subscriber left, and that every client has no open connection or
    malformed response.  Nothing is cleaned up, so the state is there to
    look at.

    :param testcase: The running test: a leak is reported with its ``fail``,
        so it is its ``failureException``.  With ``None``,
        :class:`AssertionError` is raised.
    :param clock: The clock the streams run on.
    :param resources: :class:`~twisted_sse.StreamResource` (such as
        :class:`~twisted_sse.EventStreamResource`),
        :class:`~twisted_sse.StreamRegistry` or
        :class:`~twisted_sse.Heartbeat` objects to check.
    :param brokers: Brokers whose channels must have no subscriber left (any
        object with ``channel_names()`` and ``subscriber_count(channel)``).
    :param clients: Clients whose connections must all be closed; their
        pending connection closes are delivered first.
    :raises AssertionError: (or ``testcase.failureException``) listing every
        leak found.
    """
    clients = list(clients)
    for client in clients:
        client.flush()
    problems: list[str] = []
    for resource in resources:
        if isinstance(resource, (StreamResource, StreamRegistry)) and resource.streams:
            problems.append(
                f"{len(resource.streams)} stream(s) still open in {resource!r}"
            )
        heartbeat = resource.heartbeat if isinstance(resource, StreamResource) else None
        if isinstance(resource, Heartbeat):
            heartbeat = resource
        if heartbeat is not None and heartbeat.running:
            problems.append(f"heartbeat timer still running: {heartbeat!r}")
    for broker in brokers:
        for channel in broker.channel_names():
            count = broker.subscriber_count(channel)
            if count:
                problems.append(
                    f"{count} subscriber(s) left on channel {channel!r} of {broker!r}"
                )
    if clock is not None:
        problems.extend(
            f"pending delayed call: {call!r}"
            for call in clock.getDelayedCalls()
            if call.active()
        )
    for client in clients:
        for response in client.responses:
            if response.connected:
                problems.append(f"connection still open: {response!r}")
            if response.protocol_error is not None:
                problems.append(
                    f"malformed response to {response.method} {response.path}: "
                    f"{response.protocol_error}"
                )
    if problems:
        message = "Leaked after the test:\n" + "\n".join(f"- {p}" for p in problems)
        if testcase is not None:
            testcase.fail(message)
        raise AssertionError(message)
