"""
The server's end of the test client's in-memory connections, in two kinds.

``"memory"``: :class:`MemoryTransport`, a
:class:`~twisted.internet.testing.StringTransport` that hands every write to
the client at once.  A stream on it writes through ``request.write``, the
plain writer that every transport (TLS, HTTP/2, a proxy) gets.

``"tcp"``: :class:`TCPConnection`, Twisted's own
:class:`twisted.internet.tcp.Connection` over a :class:`MemorySocket`.  A
plain HTTP/1.x stream on it takes the path production takes over TCP: the
direct writer sends frames to the socket itself, Twisted buffers what the
socket refuses and pauses the stream, and the connection closes the way a
reactor closes it.  Only the socket and the reactor (:class:`~twisted_sse.
_testing._turns.Turns`) are fake.

Both tell the client's end what happened through two callables, given when
they are made: ``received(data)`` for bytes, ``closed(reason, aborted)``
when the server closed (``aborted``: reset) the connection.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterable
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.tcp import Connection
from twisted.internet.testing import StringTransport

from ._turns import Turns

__all__ = ["TRANSPORTS", "MemorySocket", "MemoryTransport", "TCPConnection"]

#: The kinds of connection the test client can make.
TRANSPORTS = ("memory", "tcp")

#: Where the server listens, as its connections report it.
_HOST = IPv4Address("TCP", "127.0.0.1", 80)

Received = Callable[[bytes], None]
Closed = Callable[[Exception, bool], None]


class MemoryTransport(StringTransport):
    """
    What the server writes goes straight to the client, and closing it
    tells the client that the server hung up.

    As on a real transport, ``disconnecting`` is set by ``loseConnection``
    and ``disconnected`` once the protocol was told ``connectionLost``.
    """

    def __init__(self, received: Received, closed: Closed, peer: IPv4Address) -> None:
        # lenient: Twisted's HTTPChannel resumes the transport after a
        # response even when it is about to close the connection.
        super().__init__(  # type: ignore[no-untyped-call]  # untyped in Twisted
            hostAddress=_HOST, peerAddress=peer, lenient=True
        )
        self.received = received
        self.closed = closed

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"Data must be bytes, not {type(data).__name__}")
        if self.connected and not self.disconnecting:
            self.received(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.connected and not self.disconnecting:
            self.disconnecting = True
            self.closed(ConnectionDone("the server closed"), False)

    def abortConnection(self) -> None:
        if self.connected and not self.disconnecting:
            self.disconnecting = True
            self.closed(ConnectionAborted("the server aborted"), True)


class MemorySocket:
    """
    The socket under a :class:`TCPConnection`.  While the client reads, what
    the server sends reaches it at once; while it does not
    (:meth:`~twisted_sse.testing.SSETestResponse.pause_reading`), the socket
    takes at most :attr:`room` more bytes (held for the client, as in a
    kernel buffer), then nothing (``EAGAIN``).  After the client closed,
    what the server sends is dropped, as the kernel drops it.

    :ivar room: ``None`` while the client reads; else how many more bytes
        the socket takes.
    :ivar peer_closed: Whether the client closed its end.
    """

    def __init__(self, received: Received, closed: Closed) -> None:
        self.received = received
        self.closed = closed
        self.room: int | None = None
        self.peer_closed = False
        self._reset = False
        self._open = True

    @property
    def writable(self) -> bool:
        """Whether a send would take bytes now."""
        return self.peer_closed or self.room is None or self.room > 0

    def send(self, data: bytes | memoryview) -> int:
        if not self._open:
            raise OSError(errno.EBADF, "the socket is closed")
        if self.peer_closed:
            return len(data)
        taken = len(data) if self.room is None else min(len(data), self.room)
        if not taken:
            raise BlockingIOError(errno.EAGAIN, "the client is not reading")
        if self.room is not None:
            self.room -= taken
        self.received(bytes(data[:taken]))
        return taken

    def recv(self, size: int) -> bytes:
        raise BlockingIOError(errno.EAGAIN, "the client sends nothing more")

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def setsockopt(self, level: int, option: int, value: object) -> None:
        # SO_LINGER with a zero timeout: the close resets the connection.
        self._reset = self._reset or option == socket.SO_LINGER

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        if self.peer_closed:
            return
        if self._reset:
            self.closed(ConnectionAborted("the server aborted"), True)
        else:
            self.closed(ConnectionDone("the server closed"), False)


class TCPConnection(Connection):
    """
    Twisted's TCP connection, over a :class:`MemorySocket`, flushed and
    closed by :class:`~twisted_sse._testing._turns.Turns` as a reactor
    would.
    """

    def __init__(
        self,
        memory_socket: MemorySocket,
        protocol: IProtocol,
        turns: Turns,
        peer: IPv4Address,
    ) -> None:
        super().__init__(cast(socket.socket, memory_socket), protocol, cast(Any, turns))
        self.memory_socket = memory_socket
        self.peer = peer
        self.connected = True
        self.logstr = "TCPConnection,in memory"

    @property
    def writable(self) -> bool:
        """Whether the socket would take bytes now."""
        return self.memory_socket.writable

    def getPeer(self) -> IPv4Address:
        return self.peer

    def getHost(self) -> IPv4Address:
        return _HOST
