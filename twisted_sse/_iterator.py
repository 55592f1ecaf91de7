"""
``async for`` over an :class:`~twisted_sse.EventSource`: each loop is an
:class:`EventIterator` with a queue of the events it has not taken yet, and
the source keeps its loops in a :class:`Loops`.

The queues are bounded without dropping anything: when a loop lags by
:data:`ITERATOR_QUEUE_EVENTS` events or :data:`ITERATOR_QUEUE_BYTES`
characters of data, the source stops reading the stream (the server's
socket fills, and it applies its own slow-client policy), and reading
resumes once every loop is back under half of both.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Final

from twisted.internet.defer import Deferred

from ._event import MessageEvent

__all__ = ["ITERATOR_QUEUE_BYTES", "ITERATOR_QUEUE_EVENTS", "EventIterator", "Loops"]

#: Events, and characters of their data, that may wait for one ``async for``
#: loop before the client stops reading the stream until the loop catches up
#: (to half of either).
ITERATOR_QUEUE_EVENTS: Final = 1000
ITERATOR_QUEUE_BYTES: Final = 16 * 1024 * 1024


class Loops:
    """
    The ``async for`` loops of one source.

    A loop is held weakly, so that one left with ``break`` is forgotten,
    except while it waits for an event: then nothing but this may hold it,
    and a fire-and-forget coroutine would otherwise be garbage collected.
    """

    def __init__(self, drained: Callable[[], object]) -> None:
        """
        :param drained: Called each time a loop takes an event and is then
            under half of its bounds: reading may resume, unless
            :meth:`lagging` says another loop is still behind.
        """
        self._drained = drained
        self._open: weakref.WeakSet[EventIterator] = weakref.WeakSet()
        self._waiting: set[EventIterator] = set()

    def add(self, iterator: EventIterator) -> None:
        """Deliver events to ``iterator`` from now on."""
        self._open.add(iterator)

    def __iter__(self) -> Iterator[EventIterator]:
        """The loops open now (a snapshot: a loop body may start or end one)."""
        return iter(list(self._open))

    def __len__(self) -> int:
        return len(self._open)

    def lagging(self) -> bool:
        """Whether a loop is still too far behind for reading to resume."""
        return any(iterator.full(low=True) for iterator in self._open)

    def finish(self, error: Exception | None) -> None:
        """End every loop, with ``error`` raised or, if ``None``, normally."""
        iterators = list(self._open)
        self._open.clear()
        for iterator in iterators:
            iterator.finish(error)

    def waiting(self, iterator: EventIterator) -> None:
        """Hold ``iterator`` while it waits for an event."""
        self._waiting.add(iterator)

    def woken(self, iterator: EventIterator) -> None:
        """Stop holding ``iterator``: it no longer waits."""
        self._waiting.discard(iterator)

    def drained(self) -> None:
        """Tell the source a loop took an event and is under half its bounds."""
        self._drained()


class EventIterator:
    """One ``async for`` over a source: the events it has yet to take."""

    def __init__(self, loops: Loops) -> None:
        self._loops = loops
        self._events: deque[MessageEvent] = deque()
        # Characters of data queued: with the count, what pauses reading.
        self._bytes = 0
        self._waiter: Deferred[MessageEvent | None] | None = None
        self._done = False
        self._error: Exception | None = None

    def __aiter__(self) -> EventIterator:
        return self

    async def __anext__(self) -> MessageEvent:
        if self._events:
            queued = self._events.popleft()
            self._bytes -= len(queued.data)
            if not self.full(low=True):
                self._loops.drained()
            return queued
        if not self._done:
            self._waiter = Deferred()
            self._loops.waiting(self)
            try:
                event = await self._waiter
            finally:
                self._waiter = None
                self._loops.woken(self)
            if event is not None:
                return event
        if self._error is not None:
            raise self._error
        raise StopAsyncIteration

    def put(self, event: MessageEvent) -> None:
        """Hand ``event`` to the waiting loop, or queue it; ignored once finished."""
        if self._done:
            return
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback(event)
        else:
            self._events.append(event)
            self._bytes += len(event.data)

    def full(self, low: bool = False) -> bool:
        """
        Whether this loop lags so far behind that reading should pause
        (or, with ``low``, not yet resume: below half the bound it does).
        """
        divisor = 2 if low else 1
        return (
            len(self._events) >= ITERATOR_QUEUE_EVENTS // divisor
            or self._bytes >= ITERATOR_QUEUE_BYTES // divisor
        )

    def finish(self, error: Exception | None) -> None:
        """
        End the loop: it drops what it queued, then raises ``error`` or, if
        ``None``, stops.
        """
        self._done = True
        self._error = error
        self._events.clear()
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback(None)
