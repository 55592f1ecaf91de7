"""
Tests for L{twisted_sse._iterator}: C{async for} over an L{EventSource}
(driven by a fake agent), and L{EventIterator} and L{Loops} on their own:
the queue of a loop, its bounds, and who holds a loop.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import MessageEvent
from twisted_sse._client import EventSourceError
from twisted_sse._iterator import (
    ITERATOR_QUEUE_BYTES,
    ITERATOR_QUEUE_EVENTS,
    EventIterator,
    Loops,
)

from ._client_fakes import Harness, collect, error_of, message


def next_of(iterator: EventIterator) -> Deferred[MessageEvent]:
    """The next event of C{iterator}, as a L{Deferred}."""
    return Deferred.fromCoroutine(iterator.__anext__())


class Drains:
    """L{Loops} that count the calls telling the source a loop drained."""

    def __init__(self) -> None:
        self.calls = 0
        self.loops = Loops(self._drained)

    def _drained(self) -> None:
        self.calls += 1

    def iterator(self) -> EventIterator:
        """A loop added to L{loops}."""
        iterator = EventIterator(self.loops)
        self.loops.add(iterator)
        return iterator


class IterationTests(SynchronousTestCase):
    """``async for`` over an EventSource."""

    def test_iteration(self) -> None:
        """Iteration yields every event of every type in order; close() ends it."""
        harness = Harness()
        seen, done = collect(harness.source)
        harness.start()
        harness.open(b"data: 1\n\nevent: x\ndata: 2\n\n").end()
        harness.clock.advance(3)
        harness.open(b"data: 3\n\n")
        self.assertNoResult(done)
        harness.source.close()
        self.assertEqual(seen, [message("1"), message("2", type="x"), message("3")])
        self.assertIsNone(self.successResultOf(done))

    def test_iteration_buffers(self) -> None:
        """Events arriving while the loop body waits elsewhere are kept, in order."""
        harness = Harness()
        gate: Deferred[None] = Deferred()
        seen: list[str] = []

        async def consume() -> None:
            async for event in harness.source:
                seen.append(event.data)
                if event.data == "1":
                    await gate

        done = Deferred.fromCoroutine(consume())
        harness.start()
        harness.open(b"data: 1\n\ndata: 2\n\ndata: 3\n\n")
        self.assertEqual(seen, ["1"])
        gate.callback(None)
        self.assertEqual(seen, ["1", "2", "3"])
        harness.source.close()
        self.successResultOf(done)

    def test_lagging_loop_pauses_reading(self) -> None:
        """
        An ``async for`` that lags stops the client reading (bounded memory,
        and the server's own slow-client policy decides), then reading
        resumes once it has caught up halfway; the idle watchdog does not
        count the pause as a dead server.
        """
        harness = Harness(idle_timeout=45)
        gate: Deferred[None] = Deferred()
        seen: list[str] = []

        async def consume() -> None:
            async for event in harness.source:
                seen.append(event.data)
                if event.data == "0":
                    await gate

        done = Deferred.fromCoroutine(consume())
        harness.start()
        response = harness.open()
        bound = ITERATOR_QUEUE_EVENTS
        for n in range(bound):
            response.send(b"data: %d\n\n" % n)
        self.assertEqual(response.transport.producerState, "producing")
        response.send(b"data: %d\n\n" % bound)
        self.assertEqual(response.transport.producerState, "paused")
        harness.clock.advance(100)
        self.assertEqual(len(harness.agent.requests), 1)
        gate.callback(None)
        self.assertEqual(seen, [str(n) for n in range(bound + 1)])
        self.assertEqual(response.transport.producerState, "producing")
        response.send(b"data: last\n\n")
        self.assertEqual(seen[-1], "last")
        harness.source.close()
        self.successResultOf(done)

    def test_lagging_loop_pauses_on_bytes(self) -> None:
        """Large events pause reading by their size too."""
        harness = Harness()
        gate: Deferred[None] = Deferred()

        async def consume() -> None:
            async for _ in harness.source:
                await gate

        done = Deferred.fromCoroutine(consume())
        harness.start()
        response = harness.open()
        big = b"x" * (1024 * 1024)
        for _ in range(ITERATOR_QUEUE_BYTES // len(big) + 1):
            response.send(b"data: " + big + b"\n\n")
        self.assertEqual(response.transport.producerState, "paused")
        harness.source.close()
        gate.callback(None)
        self.successResultOf(done)

    def test_close_in_loop(self) -> None:
        """close() in a loop body ends the loop; the rest of the chunk is dropped."""
        harness = Harness()
        seen: list[str] = []

        async def consume() -> None:
            async for event in harness.source:
                seen.append(event.data)
                harness.source.close()

        done = Deferred.fromCoroutine(consume())
        harness.start()
        harness.open(b"data: 1\n\ndata: 2\n\n")
        self.assertEqual(seen, ["1"])
        self.successResultOf(done)

    def test_iteration_ends_on_204(self) -> None:
        """A 204 ends iteration normally."""
        harness = Harness()
        _, done = collect(harness.source)
        harness.start().respond(204, None)
        self.assertIsNone(self.successResultOf(done))

    def test_iteration_raises_on_failure(self) -> None:
        """A fatal error is raised by the iteration."""
        harness = Harness()
        _, done = collect(harness.source)
        harness.start().respond(404, "text/html")
        failure = self.failureResultOf(done, EventSourceError)
        self.assertEqual(error_of(failure).status, 404)
        # A loop started afterwards raises it too.
        _, done = collect(harness.source)
        self.failureResultOf(done, EventSourceError)

    def test_unreferenced_loop(self) -> None:
        """A waiting loop whose Deferred nobody keeps is not garbage collected."""
        harness = Harness()
        seen: list[MessageEvent] = []

        async def consume() -> None:
            async for event in harness.source:
                seen.append(event)

        Deferred.fromCoroutine(consume())
        gc.collect()
        harness.start()
        harness.open(b"data: 1\n\n")
        self.assertEqual(seen, [message("1")])

    def test_abandoned_loop_forgotten(self) -> None:
        """A loop left with break is forgotten: the source no longer holds it."""
        harness = Harness()
        loops: list[weakref.ref[AsyncIterator[MessageEvent]]] = []

        async def first() -> None:
            iterator = aiter(harness.source)
            loops.append(weakref.ref(iterator))
            async for _ in iterator:
                break

        done = Deferred.fromCoroutine(first())
        harness.start()
        response = harness.open(b"data: 1\n\n")
        self.successResultOf(done)
        del done
        gc.collect()
        [loop] = loops
        self.assertIsNone(loop())
        response.send(b"data: 2\n\n")
        self.assertEqual(harness.events, [message("1"), message("2")])

    def test_iteration_after_close(self) -> None:
        """A loop started after close() ends at once."""
        harness = Harness()
        harness.source.close()
        _, done = collect(harness.source)
        self.assertIsNone(self.successResultOf(done))

    def test_iteration_cancelled(self) -> None:
        """Cancelling a waiting loop does not disturb the source."""
        harness = Harness()
        _, done = collect(harness.source)
        harness.start()
        response = harness.open()
        done.cancel()
        self.failureResultOf(done, CancelledError)
        response.send(b"data: x\n\n")
        self.assertEqual(harness.events, [message("x")])


class EventIteratorTests(SynchronousTestCase):
    """One loop's queue, its bounds and its end."""

    def test_waiting_loop_gets_event(self) -> None:
        """An event put while the loop waits is handed to it, not queued."""
        iterator = Drains().iterator()
        taken = next_of(iterator)
        self.assertNoResult(taken)
        iterator.put(message("1"))
        self.assertEqual(self.successResultOf(taken), message("1"))
        self.assertNoResult(next_of(iterator))

    def test_queued_in_order(self) -> None:
        """Events put while the loop is busy are taken in order."""
        iterator = Drains().iterator()
        for data in "123":
            iterator.put(message(data))
        taken = [self.successResultOf(next_of(iterator)).data for _ in range(3)]
        self.assertEqual(taken, ["1", "2", "3"])

    def test_full_by_count(self) -> None:
        """A loop is full at the event bound, and not yet drained above half of it."""
        iterator = Drains().iterator()
        for n in range(ITERATOR_QUEUE_EVENTS - 1):
            iterator.put(message(str(n)))
        self.assertFalse(iterator.full())
        iterator.put(message("last"))
        self.assertTrue(iterator.full())
        for _ in range(ITERATOR_QUEUE_EVENTS // 2):
            next_of(iterator)
        self.assertTrue(iterator.full(low=True))
        next_of(iterator)
        self.assertFalse(iterator.full(low=True))

    def test_full_by_bytes(self) -> None:
        """A loop is full once the data it queued reaches the byte bound."""
        iterator = Drains().iterator()
        iterator.put(message("x" * (ITERATOR_QUEUE_BYTES - 1)))
        self.assertFalse(iterator.full())
        iterator.put(message("x"))
        self.assertTrue(iterator.full())

    def test_drained_under_half(self) -> None:
        """Each event taken under half of the bounds tells the source, not before."""
        drains = Drains()
        iterator = drains.iterator()
        half = ITERATOR_QUEUE_EVENTS // 2
        for n in range(half + 2):
            iterator.put(message(str(n)))
        next_of(iterator)
        next_of(iterator)
        self.assertEqual(drains.calls, 0)
        next_of(iterator)
        self.assertEqual(drains.calls, 1)
        next_of(iterator)
        self.assertEqual(drains.calls, 2)

    def test_finish_with_error(self) -> None:
        """A loop finished with an error drops what it queued and raises it."""
        iterator = Drains().iterator()
        iterator.put(message("1"))
        error = EventSourceError("gone", 404, "http://example.com/")
        iterator.finish(error)
        self.assertIs(self.failureResultOf(next_of(iterator)).value, error)

    def test_finish_ends_waiting_loop(self) -> None:
        """A loop waiting when it is finished stops; later events are ignored."""
        iterator = Drains().iterator()
        taken = next_of(iterator)
        iterator.finish(None)
        self.failureResultOf(taken, StopAsyncIteration)
        iterator.put(message("late"))
        self.failureResultOf(next_of(iterator), StopAsyncIteration)


class LoopsTests(SynchronousTestCase):
    """The loops of one source: who holds them, and ending them all."""

    def test_weakly_held(self) -> None:
        """A loop nobody else holds is forgotten."""
        drains = Drains()
        iterator = drains.iterator()
        self.assertEqual(len(drains.loops), 1)
        del iterator
        gc.collect()
        self.assertEqual(len(drains.loops), 0)

    def test_held_while_waiting(self) -> None:
        """A loop waiting for an event is held until it gets one."""
        drains = Drains()
        seen: list[MessageEvent] = []

        async def consume() -> None:
            async for event in drains.iterator():
                seen.append(event)
                break

        Deferred.fromCoroutine(consume())
        gc.collect()
        [iterator] = list(drains.loops)
        iterator.put(message("1"))
        del iterator
        gc.collect()
        self.assertEqual((seen, len(drains.loops)), ([message("1")], 0))

    def test_snapshot(self) -> None:
        """Iterating gives the loops open now; one added meanwhile is not included."""
        drains = Drains()
        first = drains.iterator()
        seen = []
        for iterator in drains.loops:
            seen.append(iterator)
            drains.loops.add(EventIterator(drains.loops))
        self.assertEqual(seen, [first])

    def test_lagging(self) -> None:
        """The loops lag while any one of them is at or above half of its bounds."""
        drains = Drains()
        idle, busy = drains.iterator(), drains.iterator()
        self.assertFalse(drains.loops.lagging())
        for n in range(ITERATOR_QUEUE_EVENTS // 2):
            busy.put(message(str(n)))
        self.assertTrue(drains.loops.lagging())
        self.assertFalse(idle.full(low=True))
        next_of(busy)
        self.assertFalse(drains.loops.lagging())

    def test_finish_all(self) -> None:
        """finish() ends every loop with the error given and forgets them."""
        drains = Drains()
        iterators = [drains.iterator(), drains.iterator()]
        error = EventSourceError("gone")
        drains.loops.finish(error)
        self.assertEqual(len(drains.loops), 0)
        for iterator in iterators:
            self.assertIs(self.failureResultOf(next_of(iterator)).value, error)
