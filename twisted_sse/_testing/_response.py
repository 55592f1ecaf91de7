"""
:class:`~twisted_sse.testing.SSETestResponse`: one request of the test
client, on its own connection, and the response as it has arrived.
"""

from __future__ import annotations

import re

from attrs import frozen
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from .._event import MessageEvent
from .._parser import EventParser
from ._reader import MalformedResponse, ResponseReader
from ._transports import MemorySocket, MemoryTransport, TCPConnection
from ._turns import Turns

__all__ = ["SSETestResponse", "SentRequest"]

_LINE_BREAK = re.compile(b"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


@frozen
class SentRequest:
    """
    A request as the test client sent it.

    :ivar method: The method, such as ``"GET"``.
    :ivar path: The request target.
    :ivar headers: The headers sent.
    :ivar wire: The request's bytes.
    :ivar last_event_id: The id the response's parser starts from.
    :ivar origin: The origin given to events.
    """

    method: str
    path: str
    headers: Headers
    wire: bytes
    last_event_id: str
    origin: str


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

    Made by :class:`SSETestClient`, which gives it its turns, the request it
    sends, the server's protocol, the kind of transport and the client's
    address.
    """

    def __init__(
        self,
        turns: Turns,
        request: SentRequest,
        protocol: IProtocol,
        *,
        transport: str = "memory",
        peer: IPv4Address,
    ) -> None:
        self.method = request.method
        self.path = request.path
        self.request_headers = request.headers
        self._raw = bytearray()
        self._wire = bytearray()
        self.events: list[MessageEvent] = []
        self.finished = False
        self.connected = True
        self.protocol_error: str | None = None
        self._turns = turns
        self._reader = ResponseReader(head_only=request.method == "HEAD")
        self._parser = EventParser(
            last_event_id=request.last_event_id, origin=request.origin
        )
        self._taken = 0
        self._waiting: list[Deferred[MessageEvent]] = []
        self._ended: Failure | None = None
        self._paused = False
        self._held: list[bytes] = []
        self._protocol = protocol
        self._server_notified = False
        # Over TCP, the connection tells its protocol of the end itself.
        self._socket: MemorySocket | None = None
        self._connection: TCPConnection | None = None
        self._memory: MemoryTransport | None = None
        if transport == "tcp":
            self._socket = MemorySocket(self._from_server, self._server_closed)
            self._connection = TCPConnection(self._socket, protocol, turns, peer)
            protocol.makeConnection(self._connection)
        else:
            self._memory = MemoryTransport(self._from_server, self._server_closed, peer)
            protocol.makeConnection(self._memory)
        protocol.dataReceived(request.wire)

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
        with self._turns.operation():
            self._turns.later(lambda: self._client_closed(why))

    def pause_reading(self, room: int = 0) -> None:
        """
        Stop reading, as a client whose socket buffer is full.

        Over the ``"memory"`` transport, the server's channel is paused at
        once (so is a push producer registered on the request), and what the
        server still writes is held until :meth:`resume_reading`.

        Over ``"tcp"``, the socket takes ``room`` more bytes (held until
        :meth:`resume_reading`), then nothing: Twisted buffers what the
        server writes, and pauses the request's producer once its buffer
        holds more than its ``bufferSize`` (64 KiB), as with a real socket.

        :param room: Over ``"tcp"``, the bytes the socket still takes, as a
            kernel buffer with that much room would; a write larger than
            that is sent in part.
        """
        with self._turns.operation():
            if self._paused:
                return
            self._paused = True
            if self._socket is not None:
                self._socket.room = room
            elif self._memory is not None:
                producer = self._memory.producer
                if producer is not None and self.connected:
                    producer.pauseProducing()

    def resume_reading(self) -> None:
        """
        Read what was held back, then resume the server's channel (over
        ``"tcp"``: Twisted flushes its buffer and resumes the producer when
        this call returns, as on a reactor's next turn).
        """
        with self._turns.operation():
            if not self._paused:
                return
            self._paused = False
            if self._socket is not None:
                self._socket.room = None
            held, self._held = b"".join(self._held), []
            if held:
                self._read(held)
            if self._memory is not None:
                producer = self._memory.producer
                if producer is not None and self.connected:
                    producer.resumeProducing()

    # What the server's transport tells the client.

    def _from_server(self, data: bytes) -> None:
        self._wire += data
        if self._paused:
            self._held.append(data)
        else:
            with self._turns.delivering():
                self._read(data)

    def _read(self, data: bytes) -> None:
        if self.protocol_error is not None:
            return
        try:
            body = self._reader.feed(data)
        except MalformedResponse as e:
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
                self._turns.later(
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
        if not self.connected:
            return
        with self._turns.delivering():
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
        if self._memory is None:
            # The TCP connection tells its protocol itself, right after.
            self._server_notified = True
        else:
            # A real reactor tells the protocol later, never inside its call.
            self._turns.later(lambda: self._notify_server(reason))

    def _client_closed(self, reason: Exception) -> None:
        if self._server_notified:
            return
        if self.connected:
            self.connected = False
            self._held.clear()
            # Deferreds still waiting are left unfired: the test hung up on
            # them itself, and failing them would log unhandled errors.
            self._waiting = []
            self._end(Failure(reason))
            if self._socket is not None:
                self._socket.peer_closed = True
            if self._memory is not None:
                self._memory.disconnecting = True
        self._notify_server(reason)

    def _notify_server(self, reason: Exception) -> None:
        if self._server_notified:
            return
        self._server_notified = True
        if self._connection is not None:
            # What the reactor does when the socket reports the close.
            self._connection.connectionLost(Failure(reason))
            return
        assert self._memory is not None
        self._memory.connected = False
        self._memory.disconnected = True
        self._protocol.connectionLost(Failure(reason))
