"""
Tests for L{twisted_sse._attempt}: the protocol that reads a connection
attempt's response body and hands it on.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._attempt import Attempt, BodyReceiver


class BodyReceiverTests(SynchronousTestCase):
    """L{BodyReceiver}."""

    def setUp(self) -> None:
        self.attempt = Attempt()
        self.chunks: list[bytes] = []
        self.ends: list[Failure] = []
        self.receiver = BodyReceiver(self.attempt, self.chunks.append, self.ends.append)

    def test_keeps_the_producer(self) -> None:
        """The body's producer is kept in the attempt, to pause or drop it."""
        transport = StringTransport()
        self.receiver.makeConnection(transport)
        self.assertIs(self.attempt.body, transport)

    def test_hands_chunks_on(self) -> None:
        """Each chunk is handed on as it comes, in order."""
        self.receiver.makeConnection(StringTransport())
        self.receiver.dataReceived(b"data: 1\n")
        self.receiver.dataReceived(b"\n")
        self.assertEqual(self.chunks, [b"data: 1\n", b"\n"])

    def test_hands_the_end_on(self) -> None:
        """The end of the body is handed on with its reason."""
        self.receiver.makeConnection(StringTransport())
        reason = Failure(ConnectionLost())
        self.receiver.connectionLost(reason)
        self.assertEqual((self.chunks, self.ends), ([], [reason]))
