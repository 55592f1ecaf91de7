"""
The test client's reactor turns: the work a real reactor does after the call
that caused it, never inside it.

A reactor tells a protocol its connection is lost on a later turn, and
flushes what a transport buffered when the socket becomes writable.  The
in-memory client does both at safe points: when the outermost of its calls
(or of its responses' calls) returns, and between the steps of
:meth:`~twisted_sse.testing.SSETestClient.advance`.  Nothing runs while the
server is inside a write to the client (a callback of ``next_event`` that
calls back into the client), since that is the server's call stack.

:class:`Turns` is also the reactor of the client's TCP connections
(:class:`~twisted_sse._testing._transports.TCPConnection`): the part of
:class:`~twisted.internet.interfaces.IReactorFDSet` they use, and a
``callLater`` for their abort.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from twisted.python.failure import Failure

__all__ = ["Turns"]


class _Writer(Protocol):
    """A file descriptor as :class:`Turns` flushes it."""

    @property
    def writable(self) -> bool:
        """Whether its peer would take bytes now."""

    def doWrite(self) -> object:
        """Write what it can; a reason to disconnect, or ``None``."""

    def connectionLost(self, reason: Failure) -> None:
        """The connection ended for ``reason``."""


class _Call:
    """What :meth:`Turns.callLater` returns: enough of an ``IDelayedCall``."""

    def __init__(self) -> None:
        self.cancelled = False
        self.called = False

    def active(self) -> bool:
        return not (self.cancelled or self.called)

    def cancel(self) -> None:
        self.cancelled = True


class Turns:
    """
    Work that comes due on the client's next turn, run when it is safe.

    :ivar writers: The file descriptors that have bytes to flush.
    """

    def __init__(self) -> None:
        self._pending: list[Callable[[], None]] = []
        self._depth = 0
        self._delivering = 0
        self.writers: list[_Writer] = []

    @contextmanager
    def operation(self) -> Iterator[None]:
        """One call of the client's: settle when the outermost one returns."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.settle()

    @contextmanager
    def delivering(self) -> Iterator[None]:
        """The server is writing to the client: settle nothing meanwhile."""
        self._delivering += 1
        try:
            yield
        finally:
            self._delivering -= 1

    def later(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the next turn."""
        self._pending.append(call)

    def at_turn_end(self, call: Callable[[], object]) -> None:
        """
        Run ``call`` when the current turn ends: when the outermost of the
        client's calls returns, or at once if none is running (a test that
        sends on a stream or moves the clock itself sees the bytes arrive
        as it returns).  The direct writer flushes the frames of a turn
        this way (see :class:`~twisted_sse._twisted.StreamWriter`).
        """
        if self._depth:
            self._pending.append(call)  # type: ignore[arg-type]
        else:
            call()

    def settle(self) -> None:
        """Run what is due, and flush the writers whose peer reads, until done."""
        while not self._delivering:
            if self._pending:
                self._pending.pop(0)()
                continue
            writer = next((w for w in self.writers if w.writable), None)
            if writer is None:
                return
            why = writer.doWrite()
            if why is not None:
                # As a reactor does when doWrite returns a reason.
                self.removeWriter(writer)
                writer.connectionLost(Failure(why))

    # The reactor of the client's TCP connections.

    def addWriter(self, writer: _Writer) -> None:
        if writer not in self.writers:
            self.writers.append(writer)

    def removeWriter(self, writer: _Writer) -> None:
        if writer in self.writers:
            self.writers.remove(writer)

    def addReader(self, reader: object) -> None:
        """The client writes its request straight to the protocol: no reads."""

    def removeReader(self, reader: object) -> None:
        """See :meth:`addReader`."""

    def callLater(self, delay: float, call: Callable[..., Any], *args: Any) -> _Call:
        """Run ``call(*args)`` on the next turn, whatever ``delay`` says."""
        handle = _Call()

        def run() -> None:
            if handle.active():
                handle.called = True
                call(*args)

        self.later(run)
        return handle
