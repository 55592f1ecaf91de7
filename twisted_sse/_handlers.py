"""
Generator handlers: a stream fed with what its handler yields.

A handler of :class:`~twisted_sse.EventStreamResource` written as a
generator (``def handler(stream): yield "hello"``) or an async generator
(``async def handler(stream): ... yield ...``, sse-starlette's habit)
returns a generator object; :func:`feed` feeds the stream from it.

- **Pulled as the client reads.**  The generator is advanced only while the
  stream is not paused.  The stream is its request's push producer: Twisted
  pauses it when the socket's buffer fills, and resumes it when the client
  has read that, at which point the generator is advanced again
  (:meth:`EventStream.on_resume <twisted_sse.EventStream.on_resume>`).  So
  nothing piles up in the stream's own queue on a generator's behalf: a
  client that stops reading stops the generator, and is never cut off for
  it.
- **Fair.**  At most :data:`FRAMES_PER_TURN` frames are sent in a row; then
  the generator goes on at the next reactor turn, so one fast generator
  does not hold up every other connection.
- **What is yielded** is sent as :meth:`EventStream.send
  <twisted_sse.EventStream.send>` sends it: an event as it is, a ``str``,
  ``bytes``, ``dict`` or ``list`` as data.  What ``send`` refuses (a
  ``TypeError`` naming the type, a ``ValueError``) is raised inside the
  generator, at its ``yield``, so the traceback points at the line.
- **Waiting.**  An async generator runs under Twisted's coroutine support
  (:meth:`~twisted.internet.defer.Deferred.fromCoroutine`): it ``await``\\ s
  Deferreds, such as ``deferLater(stream.clock, 1)``.  A plain generator
  may yield a Deferred instead, as ``inlineCallbacks`` code does: the next
  step waits for it, and the ``yield`` evaluates to its result (or raises
  its failure).
- **The end.**  When the generator returns, the stream ends cleanly.  When
  the stream ends first (the client went away, or the server closed it),
  whatever the generator waits for is cancelled (an async generator sees
  :class:`~twisted.internet.defer.CancelledError` at its ``await``) and the
  generator is closed (``close()`` / ``aclose()``), so its ``finally``
  blocks run then and there.  When it raises, the resource's failure path
  takes over (:meth:`EventStreamResource.handler_failed
  <twisted_sse.EventStreamResource.handler_failed>`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from ._stream import EventStream

__all__ = ["FRAMES_PER_TURN", "feed"]

#: How many frames a generator handler sends in a row before it lets the
#: reactor serve other connections for a turn (while its client keeps
#: reading: a paused stream stops it sooner).  In a test on a
#: :class:`~twisted.internet.task.Clock`, a generator that yields more than
#: this at once goes on after ``client.advance(0)``.
FRAMES_PER_TURN = 100

#: What a handler's generator is: a plain one or an async one.
HandlerGenerator = Generator[Any, Any, object] | AsyncGenerator[Any, Any]

#: Told of a generator that raised (the stream's resource decides what
#: follows).
Failed = Callable[[Failure, EventStream], object]


def feed(generator: HandlerGenerator, stream: EventStream, failed: Failed) -> None:
    """
    Feed ``stream`` from ``generator`` (see the module's description) until
    one of them ends.

    :param generator: What a generator handler returned.
    :param stream: The stream it was called with.
    :param failed: Called with the failure and the stream if the generator
        raises (also when closing it raises).
    """
    _Pump(generator, stream, failed).start()


async def _advance(
    generator: AsyncGenerator[Any, Any], value: object, error: Failure | None
) -> object:
    """One step of an async generator: its next item, or :data:`_END`."""
    try:
        if error is not None:
            assert error.value is not None
            return await generator.athrow(error.value)
        return await generator.asend(value)
    except StopAsyncIteration:
        return _END


async def _aclose(generator: AsyncGenerator[Any, Any]) -> None:
    await generator.aclose()


#: What a step of an async generator returns when the generator is done.
_END = object()


class _Pump:
    """The state of one generator feeding one stream."""

    __slots__ = (
        "_done",
        "_error",
        "_failed",
        "_generator",
        "_is_async",
        "_running",
        "_stream",
        "_turn",
        "_value",
        "_waiting",
    )

    def __init__(
        self, generator: HandlerGenerator, stream: EventStream, failed: Failed
    ) -> None:
        self._generator = generator
        self._is_async = isinstance(generator, AsyncGenerator)
        self._stream = stream
        self._failed = failed
        # What the next step waits for: the step itself (an async generator
        # awaiting something), or a Deferred a plain generator yielded.
        self._waiting: Deferred[Any] | None = None
        # Inside _pull: steps that end at once are taken by its loop.
        self._running = False
        # The generator returned, raised or was closed.
        self._done = False
        # Sent into the generator at its next step, or thrown into it.
        self._value: object = None
        self._error: Failure | None = None
        # The call that goes on with the generator at the next turn.
        self._turn: IDelayedCall | None = None

    def start(self) -> None:
        self._stream.on_resume(self._pull)
        self._stream.on_close(self._stop)
        self._pull()

    def _pull(self) -> None:
        """Advance the generator while the stream takes frames."""
        if self._running or self._waiting is not None or self._done:
            return
        stream = self._stream
        self._running = True
        try:
            sent = 0
            while not (stream.closed or stream.paused or self._done):
                if sent == FRAMES_PER_TURN:
                    if self._turn is None or not self._turn.active():
                        self._turn = stream.call_later(0, self._pull)
                    break
                if self._is_async:
                    self._step_async()
                else:
                    self._step()
                if self._waiting is not None:
                    break
                sent += 1
        finally:
            self._running = False
        if stream.closed:
            # The stream ended while the generator ran (it closed the
            # stream itself, say): stop it now that it is not running.
            self._stop()

    # Plain generators

    def _step(self) -> None:
        generator: Generator[Any, Any, object] = self._generator  # type: ignore[assignment]
        value, error = self._value, self._error
        self._value = self._error = None
        try:
            if error is not None:
                item = error.throwExceptionIntoGenerator(generator)
            else:
                item = generator.send(value)
        except StopIteration:
            self._ended()
            return
        except Exception:
            self._done = True
            self._failed(Failure(), self._stream)
            return
        if isinstance(item, Deferred):
            self._waiting = item
            item.addBoth(self._waited)
        else:
            self._send(item)

    def _waited(self, result: object) -> None:
        """A Deferred the plain generator yielded has fired with ``result``."""
        if self._done:
            return
        self._waiting = None
        if isinstance(result, Failure):
            self._error = result
        else:
            self._value = result
        self._pull()

    # Async generators

    def _step_async(self) -> None:
        generator: AsyncGenerator[Any, Any] = self._generator  # type: ignore[assignment]
        value, error = self._value, self._error
        self._value = self._error = None
        step = Deferred.fromCoroutine(_advance(generator, value, error))
        self._waiting = step
        step.addBoth(self._stepped)

    def _stepped(self, result: object) -> None:
        """A step of the async generator ended, at once or later."""
        self._waiting = None
        if result is _END:
            self._ended()
        elif isinstance(result, Failure):
            self._done = True
            if not (self._stream.closed and result.check(CancelledError)):
                # A CancelledError after the stream ended is the generator
                # leaving its await as asked (see _stop).
                self._failed(result, self._stream)
        elif not self._stream.closed:
            self._send(result)
        self._pull()

    # Both

    def _send(self, item: object) -> None:
        try:
            self._stream.send(item)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            # Raised at the generator's yield, where the mistake is.
            self._error = Failure()

    def _ended(self) -> None:
        """The generator returned: the stream ends cleanly."""
        self._done = True
        self._stream.close()

    def _stop(self) -> None:
        """
        The stream has ended: cancel what the generator waits for and close
        the generator, unless it is running (then :meth:`_pull` calls this
        again when it returns).
        """
        if self._done or self._running:
            return
        waiting = self._waiting
        if waiting is not None:
            if not self._is_async:
                # A plain generator is closed at its yield whatever the
                # Deferred does when cancelled.
                self._waiting = None
            # An async generator gets CancelledError at its await: the step
            # ends (_stepped), and it is closed if it goes on to yield.
            waiting.cancel()
            if self._done or self._waiting is not None:
                return
        self._close()

    def _close(self) -> None:
        """Close the generator, so that its ``finally`` blocks run."""
        self._done = True
        if self._is_async:
            generator: AsyncGenerator[Any, Any] = self._generator  # type: ignore[assignment]
            closing = Deferred.fromCoroutine(_aclose(generator))
            closing.addErrback(self._failed, self._stream)
            return
        try:
            self._generator.close()  # type: ignore[union-attr]
        except Exception:
            self._failed(Failure(), self._stream)
