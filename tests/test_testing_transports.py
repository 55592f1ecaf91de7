"""
Tests for L{twisted_sse._testing._transports}: the two kinds of in-memory
connection under the test client, and the socket under the TCP one.
"""

from __future__ import annotations

import socket

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._testing._transports import (
    MemorySocket,
    MemoryTransport,
    TCPConnection,
)
from twisted_sse._testing._turns import Turns

_PEER = IPv4Address("TCP", "127.0.0.1", 40001)


class _End:
    """The client's end: what it was given, and how the server closed."""

    def __init__(self) -> None:
        self.data = b""
        self.closes: list[tuple[type[Exception], bool]] = []

    def received(self, data: bytes) -> None:
        self.data += data

    def closed(self, reason: Exception, aborted: bool) -> None:
        self.closes.append((type(reason), aborted))


class MemorySocketTests(SynchronousTestCase):
    """The socket takes what the client reads, as a kernel would."""

    def test_reading_takes_all(self) -> None:
        """While the client reads, a send delivers every byte."""
        end = _End()
        sock = MemorySocket(end.received, end.closed)
        self.assertEqual(sock.send(b"hello"), 5)
        self.assertEqual(end.data, b"hello")

    def test_room_then_refusal(self) -> None:
        """Not reading, it takes ``room`` bytes, then refuses with EAGAIN."""
        end = _End()
        sock = MemorySocket(end.received, end.closed)
        sock.room = 3
        self.assertEqual(sock.send(memoryview(b"hello")), 3)
        self.assertFalse(sock.writable)
        self.assertRaises(BlockingIOError, sock.send, b"lo")
        self.assertEqual(end.data, b"hel")

    def test_peer_closed_drops(self) -> None:
        """After the client closed, sends are taken and dropped."""
        end = _End()
        sock = MemorySocket(end.received, end.closed)
        sock.peer_closed = True
        self.assertEqual(sock.send(b"gone"), 4)
        self.assertEqual(end.data, b"")
        sock.close()
        self.assertEqual(end.closes, [])

    def test_close_once(self) -> None:
        """Closing reports a clean close once; a closed socket refuses sends."""
        end = _End()
        sock = MemorySocket(end.received, end.closed)
        sock.close()
        sock.close()
        self.assertEqual(end.closes, [(ConnectionDone, False)])
        self.assertRaises(OSError, sock.send, b"x")

    def test_linger_resets(self) -> None:
        """SO_LINGER before the close makes it a reset."""
        end = _End()
        sock = MemorySocket(end.received, end.closed)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"")
        sock.close()
        self.assertEqual(end.closes, [(ConnectionAborted, True)])


class MemoryTransportTests(SynchronousTestCase):
    """The memory transport hands writes over at once and reports closes."""

    def test_write_then_close(self) -> None:
        """Writes reach the client; after loseConnection they are dropped."""
        end = _End()
        transport = MemoryTransport(end.received, end.closed, _PEER)
        transport.write(b"a")
        transport.writeSequence([b"b", b"c"])
        transport.loseConnection()
        transport.loseConnection()
        transport.write(b"late")
        self.assertEqual(end.data, b"abc")
        self.assertEqual(end.closes, [(ConnectionDone, False)])

    def test_abort(self) -> None:
        """abortConnection reports a reset."""
        end = _End()
        transport = MemoryTransport(end.received, end.closed, _PEER)
        transport.abortConnection()
        self.assertEqual(end.closes, [(ConnectionAborted, True)])

    def test_not_bytes(self) -> None:
        """Writing text is a TypeError, as on a real transport."""
        end = _End()
        transport = MemoryTransport(end.received, end.closed, _PEER)
        self.assertRaises(TypeError, transport.write, "text")


class TCPConnectionTests(SynchronousTestCase):
    """Twisted's TCP connection over the memory socket, flushed by turns."""

    def make(self) -> tuple[_End, TCPConnection, Turns]:
        end = _End()
        turns = Turns()
        sock = MemorySocket(end.received, end.closed)
        connection = TCPConnection(sock, Protocol(), turns, _PEER)
        return end, connection, turns

    def test_addresses(self) -> None:
        """The connection reports the client's address and the server's."""
        _, connection, _ = self.make()
        self.assertEqual(connection.getPeer(), _PEER)
        self.assertEqual(connection.getHost().port, 80)

    def test_write_flushed_on_turn(self) -> None:
        """What Twisted buffers reaches the client on the next turn."""
        end, connection, turns = self.make()
        connection.write(b"buffered")
        self.assertEqual(end.data, b"")
        turns.settle()
        self.assertEqual(end.data, b"buffered")

    def test_lose_connection_after_flush(self) -> None:
        """loseConnection flushes first, then closes cleanly."""
        end, connection, turns = self.make()
        connection.write(b"last")
        connection.loseConnection()
        turns.settle()
        self.assertEqual(end.data, b"last")
        self.assertEqual(end.closes, [(ConnectionDone, False)])
        self.assertFalse(connection.connected)

    def test_abort_resets(self) -> None:
        """abortConnection drops the buffer and resets on the next turn."""
        end, connection, turns = self.make()
        connection.write(b"dropped")
        connection.abortConnection()
        turns.settle()
        self.assertEqual(end.data, b"")
        self.assertEqual(end.closes, [(ConnectionAborted, True)])
