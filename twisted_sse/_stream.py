"""
One HTTP response as a Server-Sent Events stream: :class:`EventStream`.

Three Twisted facts shape this module:

- ``request.notifyFinish()`` must be called before the request can finish,
  or its Deferred never fires (twisted#4899).
- ``request.finish()`` after a disconnect raises, so a lost request is never
  finished.
- Writes made while the transport is paused are buffered without limit, so
  each stream keeps its own bounded queue as an ``IPushProducer``.

How the stream's bytes reach the socket is its base class's business
(:class:`~twisted_sse._twisted.StreamWriter`).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._event import Event, Sendable, as_event, encode_comment
from ._heartbeat import Heartbeat
from ._twisted import (
    StreamWriter,
    direct_transport,
    notify_directly,
    plain_response,
    start_response,
)

__all__ = [
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_MAX_QUEUE_EVENTS",
    "MAX_LAST_EVENT_ID",
    "EventStream",
    "SlowClientPolicy",
    "StreamHandler",
    "client_ip",
]

_log = Logger()

#: Bounds of the queue a stream keeps while its client is not reading.
DEFAULT_MAX_QUEUE_EVENTS = 1000
DEFAULT_MAX_QUEUE_BYTES = 1024 * 1024

#: The longest ``Last-Event-ID`` :attr:`EventStream.last_event_id` accepts,
#: in bytes of UTF-8.  Ids are meant to be short (a counter, a timestamp, a
#: hub's ``epoch-sequence``); a longer one is treated as absent, so a client
#: cannot make a handler look up a megabyte of key.
MAX_LAST_EVENT_ID = 1024

_HEARTBEAT_FRAME = encode_comment()


def client_ip(request: Any) -> str:
    """The address of ``request``'s client, for logs and per-address limits."""
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


#: A function called with each new stream, once its headers and first frame
#: are on their way.  It may return a Deferred, be a coroutine function, or
#: be a generator or async generator function whose yields are sent (see
#: :class:`~twisted_sse.EventStreamResource`); if that fails, or the
#: function raises, the error is logged and the stream is ended.
StreamHandler = Callable[["EventStream"], Any]


class SlowClientPolicy(enum.Enum):
    """
    What a stream does when its client stops reading and its queue is full.
    """

    #: Drop the connection; the client reconnects and resumes with
    #: ``Last-Event-ID`` (the default: nothing is lost for a resuming client).
    DISCONNECT = "disconnect"
    #: Drop the oldest queued frames to make room.
    DROP_OLDEST = "drop-oldest"
    #: Conflate: keep only the newest queued frame per key (the publish
    #: body's ``key``, else the event type), then drop the oldest.
    LATEST = "latest"


class Feeder(Protocol):
    """
    What feeds a stream from inside the library (the hub's handoff), told
    of the stream's resumption and end directly: no callback objects per
    stream.
    """

    def stream_resumed(self) -> None: ...

    def stream_closed(self) -> None: ...


class Owner(Protocol):
    """
    What opened a stream (a :class:`~twisted_sse.StreamResource`): it names
    the stream in logs and is told first when the stream closes.
    """

    def log_fields(self, request: Any) -> dict[str, object]: ...

    def stream_closed(self, stream: EventStream) -> None: ...


@implementer(IPushProducer)
class EventStream(StreamWriter):
    """
    One open ``text/event-stream`` response.

    Send events with :meth:`send`; end the stream with :meth:`close`.  The
    stream is the push producer of its request: while the client is not
    reading, frames wait in a queue bounded by ``max_queue_events`` and
    ``max_queue_bytes``, and when it is full the ``policy`` decides (see
    :class:`SlowClientPolicy`), so a stalled reader never makes the server's
    memory grow without bound nor delays anyone else.

    Callbacks registered with :meth:`on_close` run exactly once, whether the
    server ended the stream or the client went away.

    Create streams through :class:`EventStreamResource`; the constructor is
    public for code that writes its own resource.

    :param heartbeat: A :class:`Heartbeat` the stream leaves when it closes
        (add the stream to it yourself).

    :ivar dropped: Frames dropped by the slow-client policy.
    :ivar owner: What opened the stream (a :class:`StreamResource`), told
        first when it closes; set by the resource.
    :ivar feeder: What feeds the stream from inside the library (the hub),
        told when the client has taken what was queued and when the stream
        closes; set by the feeder.
    :ivar close_reason: ``None`` while open; then ``"closed"`` (by the
        server), ``"lost"`` (the client went away) or ``"aborted"`` (cut off
        for not reading).
    """

    # One per connection, so an idle stream is kept small: slots, and
    # nothing allocated until it is needed (the queue, callback lists).
    # Every object here is also one more for the cyclic garbage collector
    # to scan, which is what slows a server down as connections pile up
    # (bench/PROFILE.md).
    __slots__ = (
        "__weakref__",
        "_close_callbacks",
        "_delayed",
        "_heartbeat_timer",
        "_max_bytes",
        "_max_events",
        "_queue",
        "_queued_bytes",
        "_resume_callbacks",
        "_wrote",
        "bytes",
        "clock",
        "close_reason",
        "closed",
        "dropped",
        "feeder",
        "frames",
        "opened_at",
        "owner",
        "paused",
        "policy",
    )

    def __init__(
        self,
        request: Any,
        clock: IReactorTime,
        heartbeat: Heartbeat | None = None,
        max_queue_events: int = DEFAULT_MAX_QUEUE_EVENTS,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        policy: SlowClientPolicy = SlowClientPolicy.DISCONNECT,
    ) -> None:
        if max_queue_events < 1 or max_queue_bytes < 1:
            raise ValueError("max_queue_events and max_queue_bytes must be >= 1")
        StreamWriter.__init__(self, request)
        self.clock = clock
        self.closed = False
        self.paused = False
        self.close_reason: str | None = None
        self.dropped = 0
        #: Frames and bytes the stream accepted for its client.
        self.frames = 0
        self.bytes = 0
        self.opened_at = clock.seconds()
        self.policy = policy
        self._heartbeat_timer = heartbeat
        self._max_events = max_queue_events
        self._max_bytes = max_queue_bytes
        # Frames waiting for the client, oldest first, once there are any.
        # Under the LATEST policy they are keyed, so a newer frame replaces
        # a queued one with the same key; keyless frames get a unique key.
        self._queue: OrderedDict[object, bytes] | None = None
        self._queued_bytes = 0
        self._wrote = True
        self._close_callbacks: list[Callable[[], object]] | None = None
        self._resume_callbacks: list[Callable[[], object]] | None = None
        self._delayed: set[IDelayedCall] | None = None
        self.owner: Owner | None = None
        self.feeder: Feeder | None = None

    @property
    def log_fields(self) -> dict[str, object]:
        """Structured fields naming the stream in logs and metrics."""
        owner = self.owner
        return owner.log_fields(self.request) if owner is not None else {}

    def start(self, body: bytes, finished: Deferred[None] | None = None) -> None:
        """
        Start the response (its headers are set): write its head and
        ``body``, the first frames, and learn of its end.  A plain
        HTTP/1.x request over Twisted's own TCP transport takes the direct
        path (the head in one buffer, then frames straight to the socket);
        any other goes through ``request.write``, and the stream becomes its push
        producer at once.

        :param finished: ``request.notifyFinish()``, if the caller already
            asked for it (it need not be asked twice).
        """
        request = self.request
        transport = direct_transport(request)
        if transport is None or not plain_response(request):
            if finished is None:
                finished = request.notifyFinish()
            finished.addBoth(self._lost)
            request.write(body)
            # Paused and resumed by Twisted as its transport fills and drains.
            self._register()
            return
        if finished is not None:
            finished.addBoth(self._lost)
        else:
            # Twisted calls the stream's callback or errback when the
            # request ends: no Deferred.
            notify_directly(request, self)
        start_response(request, transport, body)
        self._go_direct(transport)

    @property
    def last_event_id(self) -> str | None:
        """
        Where the client asks to resume: the id of the last event it got,
        or ``None`` for a first connection.

        A reconnecting browser sends it as the ``Last-Event-ID`` header;
        EventSource polyfills that cannot set headers send it as the
        ``lastEventId`` query parameter, read when the header is absent.
        It is checked before you see it: an id that is empty, longer than
        :data:`MAX_LAST_EVENT_ID` bytes, not UTF-8, or holding a CR, LF or
        NUL is ``None``, as if the client had sent none.

        This is how a handler resumes: if the id is one it gave, it sends
        what came after that event, then goes on live; else it starts as
        for a new client.  It is still the client's word, so look it up,
        never trust it.  The tutorial's ``count_on`` (:doc:`/tutorial`)
        and the journal of :doc:`/howto/resume` resume this way.
        """
        request = self.request
        raw = request.getHeader(b"last-event-id")
        if raw is None:
            values = getattr(request, "args", {}).get(b"lastEventId")
            if not values:
                return None
            raw = values[0]
        if not raw or len(raw) > MAX_LAST_EVENT_ID:
            return None
        if b"\r" in raw or b"\n" in raw or b"\0" in raw:
            return None
        try:
            return str(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return None

    @property
    def is_http2(self) -> bool:
        """Whether the response travels over HTTP/2."""
        return bool(self.request.clientproto == b"HTTP/2")

    @property
    def queued(self) -> int:
        """How many frames wait for the client to read."""
        return len(self._queue) if self._queue else 0

    @property
    def queued_bytes(self) -> int:
        """How many bytes wait for the client to read."""
        return self._queued_bytes

    def send(self, event: Sendable) -> bool:
        """
        Encode ``event`` and send it.

        An :class:`~twisted_sse.Event` is sent as it is.  Anything else is
        the data of a plain message: ``send("hello")`` sends ``data:
        hello``; ``bytes`` are read as UTF-8, each invalid sequence becoming
        U+FFFD, as a browser would show it; a ``dict`` or ``list`` goes as
        its JSON text (compact, ``NaN`` refused), ready for
        ``JSON.parse(event.data)``.  A ``dict`` is data, not the event's
        fields (unlike sse-starlette's): for an ``event`` type, an ``id``
        or a ``retry``, send an :class:`~twisted_sse.Event`.

        :returns: ``False`` if the stream was already closed, else ``True``.
        :raises TypeError: for any other kind of value (naming its type);
            nothing is sent and the stream goes on.
        :raises ValueError: for data the wire cannot carry (see
            :class:`~twisted_sse.Event`); nothing is sent either.
        """
        # The hot path first: one identity test, then exactly what send
        # did before it took other values.
        if type(event) is Event:
            return self.write(event.encode(), event.event or "message")
        message = as_event(event)
        return self.write(message.encode(), message.event or "message")

    def write(self, frame: bytes, key: object = None) -> bool:
        """
        Send already-encoded frame bytes (one or more complete frames, as
        produced by :meth:`Event.encode <twisted_sse.Event.encode>`).  Encode
        once and write the same bytes to every stream when broadcasting.

        :param key: The conflation key for the ``latest`` policy; ``None``
            never conflates.
        :returns: ``False`` if the stream is closed (or was just cut off for
            not reading), else ``True``.
        """
        if self.closed:
            return False
        self._wrote = True
        self.frames += 1
        self.bytes += len(frame)
        queue = self._queue
        if not self.paused and not queue:
            self._send(frame)
            return True
        if queue is None:
            queue = self._queue = OrderedDict()
        if key is None or self.policy is not SlowClientPolicy.LATEST:
            key = object()
        else:
            old = queue.pop(key, None)
            if old is not None:
                self._queued_bytes -= len(old)
                self.dropped += 1
        queue[key] = frame
        self._queued_bytes += len(frame)
        if len(queue) > self._max_events or self._queued_bytes > self._max_bytes:
            self._overflow()
        return not self.closed

    def call_later(
        self, delay: float, function: Callable[..., object], *args: object
    ) -> IDelayedCall:
        """
        Schedule ``function`` on the stream's clock; it is cancelled if the
        stream closes first, so a timer never outlives its stream.
        """

        def run() -> None:
            if self._delayed is not None:
                self._delayed.discard(call)
            function(*args)

        call = self.clock.callLater(delay, run)
        if self._delayed is None:
            self._delayed = set()
        self._delayed.add(call)
        return call

    def on_close(self, callback: Callable[[], object]) -> None:
        """
        Call ``callback`` once when the stream ends, for any reason (at once
        if it has ended already).  Use it to release what feeds the stream:
        timers, subscriptions.
        """
        if self.closed:
            callback()
        elif self._close_callbacks is None:
            self._close_callbacks = [callback]
        else:
            self._close_callbacks.append(callback)

    def close(self, retry: int | None = None) -> None:
        """
        End the stream cleanly: queued frames are flushed, then the
        response's terminating chunk is sent, so proxies do not report a
        broken upstream.  Safe to call more than once.

        :param retry: If given, a last ``retry:`` frame telling the client in
            how many milliseconds to reconnect.
        """
        if self.closed:
            return
        tail = Event(retry=retry).encode() if retry is not None else b""
        # What this turn gave the stream (counted already: request.write
        # counts it again), then what waited for the client.
        frames = self._uncork()
        self.request.sentLength -= len(frames)
        if self._queue:
            frames += b"".join(self._queue.values())
        frames += tail
        self._release("closed")
        if frames:
            self.request.write(frames)
        if self._registered:
            self.request.unregisterProducer()
        self.request.finish()

    def abort(self) -> None:
        """
        Drop the connection at once, without flushing: for a client that
        stopped reading.  The client sees a network error and reconnects.
        """
        if self.closed:
            return
        self._release("aborted")
        if self._registered:
            self.request.unregisterProducer()
        channel = self.request.channel
        # Over HTTP/2 the channel is one stream of a shared connection: reset
        # that stream only.  Over HTTP/1.x, abort the TCP connection.
        target = channel if self.is_http2 else getattr(channel, "transport", None)
        if target is not None and hasattr(target, "abortConnection"):
            target.abortConnection()
        else:
            self.request.loseConnection()

    # IPushProducer

    def pauseProducing(self) -> None:
        """The client's socket is full: queue frames from now on."""
        self.paused = True

    def resumeProducing(self) -> None:
        """The client is reading again: write out the queue, coalesced."""
        self.paused = False
        queue = self._queue
        if queue and not self.closed:
            # Everything that waited goes out as one write.
            frames = b"".join(queue.values())
            self._queue = None
            self._queued_bytes = 0
            self._send(frames)
        if self.feeder is not None and not self.paused and not self.closed:
            self.feeder.stream_resumed()
        for callback in list(self._resume_callbacks or ()):
            if self.paused or self.closed:
                break
            callback()

    def on_resume(self, callback: Callable[[], object]) -> None:
        """
        Call ``callback`` each time the client has taken what was queued
        and the stream can take more (after :meth:`resumeProducing`): for a
        feeder that paces itself, such as the hub replaying history.
        """
        if self._resume_callbacks is None:
            self._resume_callbacks = [callback]
        else:
            self._resume_callbacks.append(callback)

    def stopProducing(self) -> None:
        """The connection is gone; the request's finish Deferred says so too."""
        self.paused = True

    # Internals

    def _overflow(self) -> None:
        queue = self._queue
        assert queue is not None
        if self.policy is SlowClientPolicy.DISCONNECT:
            _log.info(
                "Disconnecting {peer}, which stopped reading: {queued} frames "
                "({queued_bytes} bytes) queued",
                peer=client_ip(self.request),
                queued=len(queue),
                queued_bytes=self._queued_bytes,
                policy=self.policy.value,
            )
            self.abort()
            return
        while len(queue) > 1 and (
            len(queue) > self._max_events or self._queued_bytes > self._max_bytes
        ):
            self._queued_bytes -= len(queue.popitem(last=False)[1])
            self.dropped += 1
        if self._queued_bytes > self._max_bytes:
            # One frame larger than the whole queue: it cannot wait.
            self.abort()

    def heartbeat_tick(self) -> None:
        """
        A tick of the stream's :class:`Heartbeat`: write a comment if the
        stream wrote nothing since the previous tick (and can write now).
        """
        if self._wrote:
            self._wrote = False
        elif not self.paused and not self._queue:
            self._send(_HEARTBEAT_FRAME)
            # A heartbeat is output too: the next one is due after another
            # full interval of silence, not at the next tick.
            self._wrote = True

    # On the direct path the stream itself is an entry of its request's
    # ``notifications``, which Twisted fires when the request ends: one
    # Deferred, list, bound method and three tuples fewer per connection.

    def callback(self, result: object) -> None:
        """The request finished (see :meth:`start`)."""
        self._lost(None)

    def errback(self, reason: Failure) -> None:
        """The connection was lost (see :meth:`start`)."""
        self._lost(reason)

    def _lost(self, reason: Failure | None) -> None:
        if not self.closed:
            self._release("lost")

    def _release(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self._corked = None
        self._queue = None
        self._queued_bytes = 0
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.discard(self)
        delayed, self._delayed = self._delayed, None
        for call in delayed or ():
            if call.active():
                call.cancel()
        self._resume_callbacks = None
        # The owning resource first, then the feeder, then on_close callbacks.
        callbacks: list[Callable[[], object]] = []
        if self.owner is not None:
            callbacks.append(partial(self.owner.stream_closed, self))
        if self.feeder is not None:
            callbacks.append(self.feeder.stream_closed)
            self.feeder = None
        callbacks += self._close_callbacks or ()
        self._close_callbacks = None
        for callback in callbacks:
            try:
                callback()
            except Exception:
                _log.failure("Error in a stream's close callback")
