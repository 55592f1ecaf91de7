"""
Tests for L{twisted_sse._testing._turns}: the test client's reactor turns,
which run deferred work and flush writers only at safe points.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._testing._turns import Turns


class _Writer:
    """A file descriptor that writes ``chunks`` one per doWrite."""

    def __init__(self, turns: Turns, chunks: int, then: object = None) -> None:
        self.turns = turns
        self.writable = True
        self.chunks = chunks
        self.then = then
        self.lost: list[Failure] = []

    def doWrite(self) -> object:
        self.chunks -= 1
        if self.chunks <= 0:
            self.turns.removeWriter(self)
            return self.then
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


class TurnsTests(SynchronousTestCase):
    """Work runs after the call that caused it, never inside it."""

    def test_later_runs_when_outermost_returns(self) -> None:
        """later() inside nested operations runs when the outermost ends."""
        turns = Turns()
        ran: list[str] = []
        with turns.operation():
            with turns.operation():
                turns.later(lambda: ran.append("later"))
            self.assertEqual(ran, [])
        self.assertEqual(ran, ["later"])

    def test_nothing_settles_while_delivering(self) -> None:
        """settle() waits while the server is writing to the client."""
        turns = Turns()
        ran: list[str] = []
        turns.later(lambda: ran.append("later"))
        with turns.delivering():
            turns.settle()
            self.assertEqual(ran, [])
        turns.settle()
        self.assertEqual(ran, ["later"])

    def test_call_later_cancelled(self) -> None:
        """A cancelled callLater does not run; an active one runs once."""
        turns = Turns()
        ran: list[int] = []
        kept = turns.callLater(5, ran.append, 1)
        dropped = turns.callLater(0, ran.append, 2)
        dropped.cancel()
        self.assertFalse(dropped.active())
        turns.settle()
        self.assertEqual(ran, [1])
        self.assertFalse(kept.active())

    def test_writer_flushed_while_writable(self) -> None:
        """A writable writer is flushed until it stops writing."""
        turns = Turns()
        writer = _Writer(turns, chunks=3)
        turns.addWriter(writer)
        turns.addWriter(writer)
        turns.settle()
        self.assertEqual(writer.chunks, 0)
        self.assertEqual(turns.writers, [])

    def test_unwritable_writer_waits(self) -> None:
        """A writer whose peer does not read is left for a later turn."""
        turns = Turns()
        writer = _Writer(turns, chunks=1)
        writer.writable = False
        turns.addWriter(writer)
        turns.settle()
        self.assertEqual(writer.chunks, 1)
        writer.writable = True
        turns.settle()
        self.assertEqual(writer.chunks, 0)

    def test_write_reason_loses_connection(self) -> None:
        """A doWrite that returns a reason ends the connection with it."""
        turns = Turns()
        writer = _Writer(turns, chunks=1, then=ConnectionDone())
        turns.addWriter(writer)
        turns.settle()
        self.assertEqual(len(writer.lost), 1)
        self.assertTrue(writer.lost[0].check(ConnectionDone))
