"""
The suite's HTTP/1.x client for its real-socket and real-process tests: one
request, sent as it is, and the response read as it arrives by the
library's strict reader (``twisted_sse._testing._reader.ResponseReader``),
so a framing bug in the server fails the test instead of being smoothed
over.

A :class:`Response` keeps every byte of the wire, the body with its framing
removed, and the events an :class:`~twisted_sse.EventParser` finds in it.
Two clients feed one: :class:`ReactorClient`, a protocol on the global
reactor for the pytest-twisted tests (made by :func:`connect`), and
:class:`SocketClient`, a blocking socket for the tests that read a
``twistd`` child process from the test's own thread.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from twisted_sse import EventParser, MessageEvent
from twisted_sse._testing._reader import MalformedResponse, ResponseReader

__all__ = [
    "MalformedResponse",
    "ReactorClient",
    "Response",
    "SocketClient",
    "connect",
    "http_request",
]


def http_request(
    path: str,
    *headers: str,
    method: str = "GET",
    version: str = "1.1",
    body: bytes = b"",
    host: str = "localhost",
) -> bytes:
    """
    The bytes of a request.

    :param path: The request target.
    :param headers: Header lines (``"Name: value"``), sent after ``Host``.
    :param method: The method.
    :param version: ``"1.1"`` or ``"1.0"``.
    :param body: The body, sent with a ``Content-Length`` (as is an empty
        one, for a method other than ``GET`` and ``HEAD``).
    :param host: The ``Host`` header's value.
    """
    lines = [f"{method} {path} HTTP/{version}", f"Host: {host}", *headers]
    if body or method not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join([*lines, "", ""]).encode("latin-1") + body


class Response:
    """
    One response as it has arrived so far on a connection, read strictly.

    A server's bytes that are not an HTTP/1.x response (or that go on after
    its end) set :attr:`error` and are kept in :attr:`wire` only (so are
    the body bytes that came with them); the clients' waits raise it, so a
    test that means to read such bytes reads :attr:`wire`.

    :ivar request: The request's bytes, as sent.
    :ivar reader: The strict reader the bytes go through.
    :ivar parser: The event parser the body goes through (its
        ``last_event_id`` and ``retry``).
    :ivar events: Every event the body has dispatched so far.
    :ivar error: Why the server's bytes are not a response, or ``None``.
    :ivar closed: Whether the connection has ended.
    """

    def __init__(self, request: bytes, last_event_id: str = "") -> None:
        """
        :param request: The request; a ``HEAD`` one's response has no body.
        :param last_event_id: The id the event parser starts from.
        """
        self.request = request
        self.reader = ResponseReader(head_only=request.startswith(b"HEAD "))
        self.parser = EventParser(last_event_id=last_event_id)
        self.events: list[MessageEvent] = []
        self.error: MalformedResponse | None = None
        self.closed = False
        self._wire = bytearray()
        self._body = bytearray()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.code} complete={self.complete} "
            f"closed={self.closed} error={self.error!r}, "
            f"{len(self._wire)} bytes: ...{bytes(self._wire[-120:])!r}>"
        )

    @property
    def wire(self) -> bytes:
        """Every byte the server sent: interim responses, head, framing."""
        return bytes(self._wire)

    @property
    def body(self) -> bytes:
        """The body so far, its transfer framing removed."""
        return bytes(self._body)

    @property
    def code(self) -> int | None:
        """The status code, or ``None`` until the whole head has arrived."""
        return self.reader.code if self.reader.head_done else None

    @property
    def phrase(self) -> bytes:
        """The reason phrase, such as ``b"OK"``."""
        return self.reader.phrase

    @property
    def version(self) -> bytes:
        """The response's HTTP version, such as ``b"HTTP/1.1"``."""
        return self.reader.version

    @property
    def headers(self) -> Headers:
        """The headers; empty until the whole head has arrived."""
        return self.reader.headers if self.reader.head_done else Headers()

    def header(self, name: str) -> str | None:
        """
        One header as text: its values joined with ``", "``, or ``None``.
        """
        values = self.headers.getRawHeaders(name.encode("ascii"))
        if values is None:
            return None
        return ", ".join(value.decode("latin-1") for value in values)

    @property
    def head_done(self) -> bool:
        """Whether the whole head (after any interim response) has arrived."""
        return self.reader.head_done

    @property
    def complete(self) -> bool:
        """
        Whether the response has ended as HTTP says it ends: the last
        chunk, the whole ``Content-Length``, the end of a body read until
        the connection closes, or no body at all.
        """
        return self.reader.complete

    def received(self, data: bytes) -> None:
        """Take ``data``, the next bytes the server sent."""
        self._wire += data
        if self.error is not None:
            return
        try:
            body = self.reader.feed(data)
        except MalformedResponse as error:
            self.error = error
            return
        if body:
            self._body += body
            self.events.extend(self.parser.feed(body))

    def connection_ended(self, *, hung_up: bool = False) -> None:
        """
        The connection has ended: a body read until then is complete, unless
        this side ``hung_up``.
        """
        self.closed = True
        if self.error is None and not hung_up:
            self.reader.eof()

    def _unmet(self, timeout: float | None) -> Exception:
        """Why a wait ended without its condition: the error comes first."""
        if self.error is not None:
            return self.error
        if timeout is None:
            return AssertionError(f"the connection ended first: {self!r}")
        return AssertionError(f"nothing came within {timeout} s: {self!r}")


def _reactor() -> Any:
    """The global reactor, imported only when a real-reactor test runs."""
    from twisted.internet import reactor

    return reactor


class ReactorClient(Response, Protocol):
    """
    Sends its request, as it is, once connected, and reads the response as
    the global reactor delivers it.

    :ivar lost: Fires (with ``None``) once the connection has ended, on
        either side.
    """

    def __init__(self, request: bytes, last_event_id: str = "") -> None:
        super().__init__(request, last_event_id)
        self.lost: Deferred[None] = Deferred()
        self._hung_up = False
        self._waiting: list[
            tuple[Callable[[ReactorClient], object], Deferred[ReactorClient]]
        ] = []

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received(data)
        self._check()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connection_ended(hung_up=self._hung_up)
        self._check()
        self.lost.callback(None)

    def _check(self) -> None:
        for entry in list(self._waiting):
            predicate, done = entry
            if entry not in self._waiting:
                continue  # cancelled by an earlier entry's callback
            if predicate(self):
                self._waiting.remove(entry)
                done.callback(self)
            elif self.error is not None or self.closed:
                self._waiting.remove(entry)
                done.errback(self._unmet(None))

    def wait_for(
        self, predicate: Callable[[ReactorClient], object], timeout: float = 10.0
    ) -> Deferred[ReactorClient]:
        """
        Wait until ``predicate(self)`` holds, checked now and whenever bytes
        arrive.

        :param predicate: A condition on this client.
        :param timeout: Seconds to wait.
        :returns: A Deferred that fires with this client; it fails with the
            :class:`MalformedResponse` if the server's bytes stop being a
            response first, with :class:`AssertionError` if the connection
            ends first, and with ``twisted.internet.defer.TimeoutError``
            after ``timeout``.
        """

        def cancel(done: Deferred[ReactorClient]) -> None:
            if entry in self._waiting:
                self._waiting.remove(entry)

        done: Deferred[ReactorClient] = Deferred(cancel)
        entry = (predicate, done)
        self._waiting.append(entry)
        self._check()
        return done.addTimeout(timeout, _reactor())

    def ended(self, timeout: float = 10.0) -> Deferred[ReactorClient]:
        """
        Wait until the response is :attr:`complete` (see :meth:`wait_for`).
        """
        return self.wait_for(lambda client: client.complete, timeout)

    def hang_up(self) -> None:
        """Close the connection from the client's side."""
        assert self.transport is not None
        self._hung_up = True
        self.transport.loseConnection()

    async def close(self) -> None:
        """Hang up and wait for the connection to end."""
        self.hang_up()
        await self.lost


async def connect(
    port: int, request: bytes, *, last_event_id: str = ""
) -> ReactorClient:
    """
    A :class:`ReactorClient` connected to 127.0.0.1:``port``, its request
    sent.

    :param port: The server's port.
    :param request: The request's bytes (see :func:`http_request`).
    :param last_event_id: The id the client's event parser starts from.
    """
    client = ReactorClient(request, last_event_id)
    endpoint = TCP4ClientEndpoint(_reactor(), "127.0.0.1", port)
    await connectProtocol(endpoint, client)
    return client


class SocketClient(Response):
    """
    Sends its request on a blocking socket to 127.0.0.1 and reads the
    response only when the test asks, from the test's own thread: for the
    tests against a ``twistd`` child process.

    Creating one connects, sends the request and reads until the whole head
    has arrived.  :meth:`read_frame` and :meth:`read_body` hand out the body
    in order, each from where the last left off.

    :ivar sock: The socket.
    """

    def __init__(
        self,
        port: int,
        request: bytes,
        *,
        last_event_id: str = "",
        timeout: float = 10.0,
    ) -> None:
        """
        :param port: The server's port.
        :param request: The request's bytes (see :func:`http_request`).
        :param last_event_id: The id the event parser starts from.
        :param timeout: Seconds to wait for the connection and the head.
        :raises MalformedResponse: if the server's bytes are no response.
        :raises AssertionError: if the head does not come in time.
        """
        super().__init__(request, last_event_id)
        self._taken = 0
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.sendall(request)
        self.wait_for(lambda response: response.head_done, timeout)

    def _fill(self, timeout: float) -> None:
        """Read what arrives within ``timeout`` seconds, if anything."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        if data:
            self.received(data)
        else:
            self.connection_ended()

    def wait_for(
        self, predicate: Callable[[SocketClient], object], timeout: float = 10.0
    ) -> SocketClient:
        """
        Read until ``predicate(self)`` holds.

        :param predicate: A condition on this response.
        :param timeout: Seconds to wait.
        :returns: This response.
        :raises MalformedResponse: if the server's bytes stop being a
            response first.
        :raises AssertionError: if the connection ends or ``timeout``
            passes first.
        """
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if self.error is not None or self.closed:
                raise self._unmet(None)
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._unmet(timeout)
            self._fill(left)
        return self

    def read_frame(self, timeout: float = 10.0) -> bytes:
        """
        The next frame of the body: its bytes up to and including the blank
        line (``b"\\n\\n"``) that ends it.

        :param timeout: Seconds to wait for it.
        :returns: The frame; once the response has ended, what is left of
            the body (an unfinished last frame), then ``b""``.
        :raises MalformedResponse: if the server's bytes stop being a
            response first.
        :raises AssertionError: if the connection ends before the frame or
            the end of the response, or ``timeout`` passes.
        """

        def ready(response: SocketClient) -> bool:
            return response.complete or response._body.find(b"\n\n", self._taken) >= 0

        self.wait_for(ready, timeout)
        end = self._body.find(b"\n\n", self._taken)
        end = len(self._body) if end < 0 else end + 2
        frame = bytes(self._body[self._taken : end])
        self._taken = end
        return frame

    def read_body(self, size: int, timeout: float = 10.0) -> bytes:
        """
        The next ``size`` bytes of the body, across frames and chunks.

        :param size: How many bytes.
        :param timeout: Seconds to wait for them.
        :returns: Fewer only if the response ends first.
        :raises MalformedResponse: if the server's bytes stop being a
            response first.
        :raises AssertionError: if the connection ends before them or the
            end of the response, or ``timeout`` passes.
        """
        self.wait_for(
            lambda response: (
                response.complete or len(response._body) - self._taken >= size
            ),
            timeout,
        )
        piece = bytes(self._body[self._taken : self._taken + size])
        self._taken += len(piece)
        return piece

    def at_eof(self, timeout: float = 5.0) -> bool:
        """
        Whether the connection ends within ``timeout`` seconds, reading what
        comes meanwhile (bytes after the end of the response set
        :attr:`error`, not raised here).
        """
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._fill(left)
        return self.closed

    def close(self) -> None:
        """Close the socket: hang up."""
        self.sock.close()
        self.connection_ended(hung_up=True)
