"""
Tests for L{twisted_sse._handlers}: handlers written as generators and async
generators, as a user writes them, served through
L{twisted_sse.testing.SSETestClient} over both of its transports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, globalLogPublisher

from tests._transports import TransportCase, over_both_transports
from twisted_sse import FAILURE_RETRY, Event, EventStream, EventStreamResource
from twisted_sse._handlers import FRAMES_PER_TURN
from twisted_sse.testing import SSETestClient, SSETestResponse

from ._helpers import data

#: Events of 100 digits (108 bytes a frame): more than Twisted buffers for a
#: socket (64 KiB) and than a generator sends in one turn.
MANY = max(2000, 2 * FRAMES_PER_TURN)


class HandlerCase(TransportCase):
    """Serve one handler at ``/events`` on a fake clock."""

    def serve(self, handler: Any, **options: Any) -> SSETestResponse:
        """Serve ``handler`` and open a stream on it."""
        self.clock = Clock()
        self.resource = EventStreamResource(handler, clock=self.clock, **options)
        self.client: SSETestClient = self.client_for(self.resource, clock=self.clock)
        return self.client.get("/events")

    def stream(self) -> EventStream:
        """The one open stream."""
        (stream,) = self.resource.streams
        return stream

    def failures(self) -> list[dict[str, Any]]:
        """Collect the log events that carry a failure from now on."""
        seen: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if "log_failure" in event:
                seen.append(event)

        globalLogPublisher.addObserver(cast(ILogObserver, observe))
        self.addCleanup(globalLogPublisher.removeObserver, cast(ILogObserver, observe))
        return seen


@over_both_transports
class GeneratorTests(HandlerCase):
    """A plain generator handler streams what it yields."""

    def test_yields_are_sent(self) -> None:
        """Each value yielded is a message; the generator's end ends the stream."""

        def handler(stream: EventStream) -> Iterator[Any]:
            yield "hello"
            yield b"caf\xc3\xa9"
            yield {"temperature": 21.5}
            yield [1, 2]
            yield Event(data="bye", event="farewell", id="7")

        response = self.serve(handler)

        self.assertEqual(
            [(event.type, event.data) for event in response.events],
            [
                ("message", "hello"),
                ("message", "café"),
                ("message", '{"temperature":21.5}'),
                ("message", "[1,2]"),
                ("farewell", "bye"),
            ],
        )
        self.assertEqual(response.last_event_id, "7")
        self.assertTrue(response.finished)
        self.client.assert_clean(testcase=self)

    def test_paced_with_deferreds(self) -> None:
        """A yielded Deferred is waited for; the yield evaluates to its result."""

        def handler(stream: EventStream) -> Iterator[Any]:
            for number in range(1, 4):
                waited = yield deferLater(stream.clock, 1.0, (10).__mul__, number)
                yield f"{number}: {waited}"

        response = self.serve(handler)
        self.assertEqual(data(response), [])
        self.client.advance(2)
        self.assertEqual(data(response), ["1: 10", "2: 20"])
        self.assertFalse(response.finished)
        self.client.advance(1)
        self.assertEqual(data(response), ["1: 10", "2: 20", "3: 30"])
        self.assertTrue(response.finished)
        self.client.assert_clean(testcase=self)

    def test_failed_deferred_raises_at_yield(self) -> None:
        """A yielded Deferred that fails raises its error in the generator."""

        def handler(stream: EventStream) -> Iterator[Any]:
            try:
                yield fail(KeyError("gone"))
            except KeyError as error:
                yield f"missing {error}"

        response = self.serve(handler)
        self.assertEqual(data(response), ["missing 'gone'"])
        self.assertTrue(response.finished)

    def test_closed_when_client_leaves(self) -> None:
        """The client goes away: the generator is closed, its finally runs at once."""
        cleaned: list[str] = []

        def handler(stream: EventStream) -> Iterator[Any]:
            try:
                while True:
                    yield deferLater(stream.clock, 1.0)
                    yield "tick"
            finally:
                cleaned.append("released")

        response = self.serve(handler)
        self.client.advance(2)
        response.disconnect()

        self.assertEqual(data(response), ["tick", "tick"])
        self.assertEqual(cleaned, ["released"])
        # The timer it waited on is gone with it.
        self.client.assert_clean(testcase=self)

    def test_closed_when_server_closes(self) -> None:
        """The server ends the stream: the generator is closed too."""
        cleaned: list[str] = []

        def handler(stream: EventStream) -> Iterator[Any]:
            try:
                yield "one"
                yield deferLater(stream.clock, 60.0)
            finally:
                cleaned.append("released")

        response = self.serve(handler)
        self.resource.close_all()
        self.client.flush()

        self.assertEqual(cleaned, ["released"])
        self.assertTrue(response.finished)
        self.client.assert_clean(testcase=self)

    def test_generator_closes_its_stream(self) -> None:
        """A generator that closes its own stream is closed when it next yields."""
        cleaned: list[str] = []

        def handler(stream: EventStream) -> Iterator[Any]:
            try:
                yield "last"
                stream.close()
                yield "never sent"
                cleaned.append("went on")
            finally:
                cleaned.append("released")

        response = self.serve(handler)

        self.assertEqual(data(response), ["last"])
        self.assertEqual(cleaned, ["released"])
        self.assertTrue(response.finished)
        self.client.assert_clean(testcase=self)

    def test_not_advanced_while_client_not_reading(self) -> None:
        """
        A client that stops reading stops the generator (its queue stays
        empty, the stream stays open); reading again, it gets every value in
        order.
        """
        pulled: list[int] = []

        def handler(stream: EventStream) -> Iterator[str]:
            for number in range(MANY):
                pulled.append(number)
                yield f"{number:0100d}"

        response = self.serve(handler)
        response.pause_reading()
        before = len(pulled)
        self.client.advance(0)
        stalled = len(pulled)
        self.client.advance(10)

        self.assertEqual(len(pulled), stalled)
        # Over TCP, at most what fills Twisted's own buffer of the socket
        # (64 KiB) once the socket takes nothing; a frame is 108 bytes.
        self.assertLessEqual(stalled - before, 65536 // 108 + 1)
        stream = self.stream()
        self.assertTrue(stream.paused)
        self.assertEqual(stream.queued, 0)
        self.assertFalse(stream.closed)

        response.resume_reading()
        self.client.advance(0)

        self.assertEqual([int(text) for text in data(response)], list(range(MANY)))
        self.assertTrue(response.finished)
        self.client.assert_clean(testcase=self)


class FairnessTests(HandlerCase):
    """
    A generator shares the reactor.  Over the ``"memory"`` transport only:
    over ``"tcp"`` every flush of the socket resumes the stream, which goes
    on at once, as it would on a real reactor's next turn.
    """

    def test_bounded_run_per_turn(self) -> None:
        """A generator that never waits sends a bounded run per reactor turn."""

        def handler(stream: EventStream) -> Iterator[str]:
            for _ in range(2 * FRAMES_PER_TURN + 10):
                yield "more"

        response = self.serve(handler)
        self.assertEqual(len(response.events), FRAMES_PER_TURN)
        self.assertFalse(response.finished)
        # The rest comes on the next turns (which a Clock runs at once).
        now = self.clock.seconds()
        self.assertIn(now, [call.getTime() for call in self.clock.getDelayedCalls()])

        self.client.advance(0)

        self.assertEqual(len(response.events), 2 * FRAMES_PER_TURN + 10)
        self.assertTrue(response.finished)
        self.client.assert_clean(testcase=self)

    def test_documented_run(self) -> None:
        """The run EventStreamResource's documentation states is the one used."""
        documented = " ".join((EventStreamResource.__doc__ or "").split())
        self.assertIn(f"at most {FRAMES_PER_TURN} frames in a row", documented)


@over_both_transports
class AsyncGeneratorTests(HandlerCase):
    """An async generator handler streams what it yields, awaiting Deferreds."""

    def test_yields_with_awaits(self) -> None:
        """A user's async generator, awaiting between its yields, streams them."""
        cleaned: list[str] = []

        async def handler(stream: EventStream) -> AsyncIterator[Any]:
            try:
                count = 0
                while True:
                    count += 1
                    yield {"count": count}
                    await deferLater(stream.clock, 1.0)
            finally:
                cleaned.append("released")

        response = self.serve(handler)
        self.client.advance(2)
        self.assertEqual(data(response), ['{"count":1}', '{"count":2}', '{"count":3}'])
        response.disconnect()

        self.assertEqual(cleaned, ["released"])
        self.client.assert_clean(testcase=self)

    def test_end_ends_stream(self) -> None:
        """When the async generator returns, the stream ends cleanly."""

        async def handler(stream: EventStream) -> AsyncIterator[str]:
            yield "one"
            await deferLater(stream.clock, 1.0)
            yield "two"

        response = self.serve(handler)
        self.client.advance(1)

        self.assertEqual(data(response), ["one", "two"])
        self.assertTrue(response.finished)
        self.assertIsNone(response.retry)
        self.client.assert_clean(testcase=self)

    def test_cancelled_at_its_await(self) -> None:
        """A client leaving mid-await: the await raises CancelledError, finally runs."""
        seen: list[str] = []

        async def handler(stream: EventStream) -> AsyncIterator[str]:
            try:
                yield "waiting"
                await Deferred()
            except CancelledError:
                seen.append("cancelled")
                raise
            finally:
                seen.append("released")

        response = self.serve(handler)
        response.disconnect()

        self.assertEqual(seen, ["cancelled", "released"])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.client.assert_clean(testcase=self)

    def test_swallowed_cancel_still_closed(self) -> None:
        """A generator that goes on after CancelledError is closed at its next yield."""
        seen: list[str] = []

        async def handler(stream: EventStream) -> AsyncIterator[str]:
            try:
                yield "waiting"
                try:
                    await deferLater(stream.clock, 60.0)
                except CancelledError:
                    seen.append("ignored the cancel")
                yield "never sent"
                seen.append("went on")
            finally:
                seen.append("released")

        response = self.serve(handler)
        response.disconnect()

        self.assertEqual(seen, ["ignored the cancel", "released"])
        self.assertEqual(data(response), ["waiting"])
        self.client.assert_clean(testcase=self)

    def test_closed_while_paused(self) -> None:
        """A generator held back by a client that stopped reading is closed too."""
        cleaned: list[str] = []

        async def handler(stream: EventStream) -> AsyncIterator[str]:
            try:
                while True:
                    yield "x" * 1000
            finally:
                cleaned.append("released")

        response = self.serve(handler)
        response.pause_reading()
        self.client.advance(0)
        self.assertTrue(self.stream().paused)
        response.disconnect()

        self.assertEqual(cleaned, ["released"])
        self.client.assert_clean(testcase=self)

    def test_not_advanced_while_client_not_reading(self) -> None:
        """Backpressure holds for async generators too."""
        pulled: list[int] = []

        async def handler(stream: EventStream) -> AsyncIterator[str]:
            for number in range(MANY):
                pulled.append(number)
                yield f"{number:0100d}"

        response = self.serve(handler)
        response.pause_reading()
        before = len(pulled)
        self.client.advance(0)
        stalled = len(pulled)
        self.client.advance(10)

        self.assertEqual(len(pulled), stalled)
        self.assertLessEqual(stalled - before, 65536 // 108 + 1)
        self.assertEqual(self.stream().queued, 0)

        response.resume_reading()
        self.client.advance(0)

        self.assertEqual([int(text) for text in data(response)], list(range(MANY)))
        self.assertTrue(response.finished)
        self.client.assert_clean(testcase=self)


@over_both_transports
class FailureTests(HandlerCase):
    """A generator that raises: logged once, and a back-off for the client."""

    def assert_failed(
        self,
        response: SSETestResponse,
        logged: list[dict[str, Any]],
        error: type[Exception],
    ) -> None:
        self.client.flush()
        self.assertTrue(response.finished)
        self.assertEqual(response.retry, FAILURE_RETRY)
        (event,) = logged
        self.assertEqual(event["path"], "/events")
        self.assertIsInstance(event["log_failure"].value, error)
        self.assertEqual(len(self.flushLoggedErrors(error)), 1)
        self.client.assert_clean(testcase=self)

    def test_generator_raises(self) -> None:
        """A generator's exception: one traceback with the path, a long retry."""
        logged = self.failures()

        def handler(stream: EventStream) -> Iterator[str]:
            yield "before"
            raise ZeroDivisionError()

        response = self.serve(handler)
        self.assertEqual(data(response), ["before"])
        self.assert_failed(response, logged, ZeroDivisionError)

    def test_async_generator_raises_later(self) -> None:
        """An async generator failing after an await: the same."""
        logged = self.failures()

        async def handler(stream: EventStream) -> AsyncIterator[str]:
            yield "before"
            await deferLater(stream.clock, 1.0)
            raise ZeroDivisionError()

        response = self.serve(handler)
        self.assertFalse(response.finished)
        self.client.advance(1)
        self.assertEqual(data(response), ["before"])
        self.assert_failed(response, logged, ZeroDivisionError)

    def test_unsendable_yield(self) -> None:
        """Yielding what send refuses raises TypeError at the yield."""
        logged = self.failures()

        def handler(stream: EventStream) -> Iterator[object]:
            yield 42

        response = self.serve(handler)
        self.assertIn("int", str(logged[0]["log_failure"].value))
        self.assert_failed(response, logged, TypeError)

    def test_unsendable_yield_caught(self) -> None:
        """The TypeError raised at the yield can be caught, and the stream goes on."""

        def handler(stream: EventStream) -> Iterator[object]:
            try:
                yield object()
            except TypeError as error:
                yield f"oops: {error}"
            yield "still here"

        response = self.serve(handler)
        self.assertTrue(data(response)[0].startswith("oops: cannot send a object"))
        self.assertEqual(data(response)[1], "still here")
        self.assertTrue(response.finished)
        self.assertIsNone(response.retry)

    def test_finally_raises(self) -> None:
        """A generator whose finally raises when closed: logged once."""
        logged = self.failures()

        def handler(stream: EventStream) -> Iterator[Any]:
            try:
                yield "one"
                yield deferLater(stream.clock, 60.0)
            finally:
                raise ZeroDivisionError()

        response = self.serve(handler)
        response.disconnect()

        self.assertEqual(len(logged), 1)
        self.assertEqual(logged[0]["path"], "/events")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.client.assert_clean(testcase=self)

    def test_longer_than_the_resource_retry(self) -> None:
        """With a long retry of its own, a resource backs off twice as long."""
        logged = self.failures()

        def handler(stream: EventStream) -> Iterator[str]:
            raise ZeroDivisionError()
            yield "never"

        response = self.serve(handler, retry=30_000)
        self.client.flush()
        self.assertEqual(response.retry, 60_000)
        self.assertEqual(len(logged), 1)
        self.flushLoggedErrors(ZeroDivisionError)


@over_both_transports
class LeakCheckTests(HandlerCase):
    """The test client's leak check sees a generator's stream that was left open."""

    def test_open_generator_stream_is_a_leak(self) -> None:
        """assert_clean fails while a generator's stream is open, then passes."""

        async def handler(stream: EventStream) -> AsyncIterator[str]:
            while True:
                yield "tick"
                await deferLater(stream.clock, 1.0)

        response = self.serve(handler)
        with self.assertRaises(self.failureException) as caught:
            self.client.assert_clean(testcase=self)
        self.assertIn("stream(s) still open", str(caught.exception))
        self.assertIn("pending delayed call", str(caught.exception))

        response.disconnect()
        self.client.assert_clean(testcase=self)
