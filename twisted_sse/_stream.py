"""
One HTTP response as a Server-Sent Events stream.

:class:`EventStreamResource` is an ordinary :class:`~twisted.web.resource.IResource`
(so it works when returned from a Klein route, mounted with ``putChild`` in a
plain :class:`~twisted.web.server.Site`, or served by ``twistd``); each GET it
renders becomes an :class:`EventStream` that the resource's handler feeds.

Three Twisted facts shape this module:

- ``request.notifyFinish()`` must be called before the request can finish,
  or its Deferred never fires (twisted#4899).
- ``request.finish()`` after a disconnect raises, so a lost request is never
  finished.
- Writes made while the transport is paused are buffered without limit, so
  each stream keeps its own bounded queue as an ``IPushProducer``.
"""

from __future__ import annotations

import enum
import inspect
import itertools
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from functools import partial
from io import BytesIO
from random import Random
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.tcp import Connection
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from ._event import Event, encode_comment

__all__ = [
    "DEFAULT_HEARTBEAT",
    "EventStream",
    "EventStreamResource",
    "Heartbeat",
    "SlowClientPolicy",
    "StreamHandler",
    "StreamRegistry",
    "StreamResource",
    "counter",
]

_log = Logger()

#: Seconds of silence after which a stream gets a heartbeat comment: well
#: under nginx's default ``proxy_read_timeout`` of 60 s.
DEFAULT_HEARTBEAT = 15.0

#: Streams ended per second at most while draining (see StreamRegistry.drain).
DRAIN_RATE = 1000.0

#: Bounds of the queue a stream keeps while its client is not reading.
DEFAULT_MAX_QUEUE_EVENTS = 1000
DEFAULT_MAX_QUEUE_BYTES = 1024 * 1024

_HEARTBEAT_FRAME = encode_comment()
_OPEN_FRAME = encode_comment()


def _info(format: str, **fields: object) -> None:
    """
    ``_log.info(format, **fields)``, for the two lines every stream logs,
    without what :meth:`twisted.logger.Logger.emit` adds to building the
    event: it checks the level against every ``LogLevel`` (a sort), for each
    event, which made logging a tenth of what opening a stream costs.
    """
    fields["log_logger"] = _log
    fields["log_level"] = LogLevel.info
    fields["log_namespace"] = _log.namespace
    fields["log_source"] = _log.source
    fields["log_format"] = format
    fields["log_time"] = time.time()
    trace = fields.get("log_trace")
    if trace is not None:
        trace.append((_log, _log.observer))  # type: ignore[attr-defined]
    _log.observer(fields)


def _access_log(request: Any) -> None:
    """Write ``request``'s line to its site's access log, as ``finish`` would."""
    log = getattr(getattr(request, "site", None), "log", None)
    if log is None:
        return
    try:
        log(request)
    except Exception:
        _log.failure("Writing the access log failed")


def _default_clock() -> IReactorTime:
    from twisted.internet import reactor

    return reactor


class Heartbeat:
    """
    One shared timer that keeps every idle stream of a server alive.

    It ticks every ``interval / 2`` seconds, only while at least one stream is
    registered, and writes a comment frame to each stream that wrote nothing
    since the previous tick: a stream gets a heartbeat after at least
    ``interval / 2`` and at most ``interval`` seconds of silence, and a busy
    stream gets none.  One timer for all streams costs one
    :class:`~twisted.internet.interfaces.IDelayedCall` however many clients
    are connected.

    :param clock: The time source.
    :param interval: Seconds of silence tolerated; ``0`` disables heartbeats.
    """

    def __init__(self, clock: IReactorTime, interval: float = DEFAULT_HEARTBEAT):
        if interval < 0:
            raise ValueError(f"heartbeat must be >= 0 seconds, not {interval!r}")
        self.clock = clock
        self.interval = interval
        self._streams: set[EventStream] = set()
        # Live collections of streams (a resource's open streams), by id:
        # watching a resource's set costs nothing per stream.
        self._groups: dict[int, Collection[EventStream]] = {}
        self._loop: LoopingCall | None = None

    def add(self, stream: EventStream) -> None:
        """Watch ``stream`` until :meth:`discard` is called for it."""
        if self.interval:
            self._streams.add(stream)
            self._start()

    def discard(self, stream: EventStream) -> None:
        """Stop watching ``stream``; the timer stops with the last stream."""
        self._streams.discard(stream)
        self._stop_if_idle()

    def watch(self, streams: Collection[EventStream]) -> None:
        """
        Watch every stream in the live collection ``streams`` (such as a
        :class:`StreamResource`'s open streams) until :meth:`unwatch`; call
        it again whenever a stream is added, so that the timer runs.
        """
        if self.interval:
            self._groups[id(streams)] = streams
            self._start()

    def unwatch(self, streams: Collection[EventStream]) -> None:
        """Stop watching ``streams``; the timer stops with the last stream."""
        self._groups.pop(id(streams), None)
        self._stop_if_idle()

    @property
    def running(self) -> bool:
        """Whether the timer is scheduled."""
        return self._loop is not None

    def _start(self) -> None:
        if self._loop is None:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self.clock
            self._loop.start(self.interval / 2, now=False)

    def _stop_if_idle(self) -> None:
        if (
            self._loop is not None
            and not self._streams
            and not any(self._groups.values())
        ):
            self._loop.stop()
            self._loop = None

    def _tick(self) -> None:
        for stream in list(self._streams):
            stream._heartbeat()
        for group in list(self._groups.values()):
            for stream in list(group):
                stream._heartbeat()


#: A function called with each new stream, once its headers and first frame
#: are on their way.  It may return a Deferred, or be a coroutine function;
#: if that fails, or the function raises, the error is logged and the stream
#: is ended.
StreamHandler = Callable[["EventStream"], Any]


class _ChunkCache:
    """
    The chunked-encoding framing of the frame most recently framed.  A
    broadcast writes the same bytes object to every subscriber in a row, so
    this frames each event once per publish, not once per subscriber.
    """

    __slots__ = ("chunk", "frame")

    def __init__(self) -> None:
        self.frame = b""
        self.chunk = b""

    def __call__(self, frame: bytes) -> bytes:
        if frame is not self.frame:
            self.frame = frame
            self.chunk = b"%x\r\n%b\r\n" % (len(frame), frame)
        return self.chunk


_chunked = _ChunkCache()


def _direct_transport(request: Any) -> Any:
    """
    The TCP connection under ``request`` if its stream may take the direct
    path, else ``None``.

    ``request.write`` appends to the transport's buffer and asks the reactor
    to flush it on the next turn: one ``send`` plus two ``epoll_ctl`` calls
    per delivery (register, then unregister write interest).  When the
    buffer is empty, sending at once is the same bytes in the same order
    without the round trip; whatever the kernel does not take is handed to
    the transport, which then buffers, flushes and pauses producers as
    usual (:meth:`EventStream._send`).  Any other transport (TLS, HTTP/2
    streams, UNIX sockets in other reactors) keeps using ``request.write``.

    On the direct path, a stream also starts its response itself
    (:func:`_start_response`) and is told of its request's end without a
    Deferred (:meth:`StreamResource.open_stream`).  All three lean on
    Twisted's own classes, so they are taken only when the request, its
    channel and its transport are exactly those (checked once per
    combination of classes): :class:`twisted.web.server.Request`'s
    ``write``, ``notifyFinish``, ``connectionLost`` and ``_cleanup``, which
    answer each entry of ``request.notifications``;
    :class:`~twisted.web.http.HTTPChannel`'s ``writeHeaders``; and a
    :class:`twisted.internet.tcp.Connection` with ``socket``, ``dataBuffer``,
    ``offset`` and ``_tempDataBuffer``.  A subclass that overrides any of
    them gets the ordinary path.
    """
    if request.clientproto not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    channel = request.channel
    transport = getattr(channel, "transport", None)
    kinds = (type(request), type(channel), type(transport))
    usable = _DIRECT_CLASSES.get(kinds)
    if usable is None:
        usable = _DIRECT_CLASSES[kinds] = _direct_classes(request, channel, transport)
    return transport if usable else None


def _direct_classes(request: Any, channel: Any, transport: Any) -> bool:
    kind = type(request)
    return (
        isinstance(transport, Connection)
        and all(
            hasattr(transport, name)
            for name in ("socket", "dataBuffer", "offset", "_tempDataBuffer")
        )
        and all(
            getattr(kind, name, None) is getattr(Request, name)
            for name in ("write", "notifyFinish", "connectionLost", "_cleanup")
        )
        and isinstance(getattr(request, "notifications", None), list)
        and getattr(type(channel), "writeHeaders", None) is HTTPChannel.writeHeaders
    )


def _plain_response(request: Any) -> bool:
    """
    Whether the response :func:`_start_response` would write is exactly
    what :meth:`twisted.web.server.Request.write` would: a ``200`` answer
    to a ``GET``, not started, with its ``Content-Type`` set, and nothing
    for Twisted to add or transform (no encoder such as gzip, no
    ``Last-Modified``, ``ETag``, cookie or ``Content-Length``).
    """
    headers = request.responseHeaders
    return not (
        request.startedWriting
        or request.code != 200
        or request.method != b"GET"
        or request._encoder is not None
        or request._inFakeHead
        or request.lastModified is not None
        or request.etag is not None
        or request.cookies
        or headers.hasHeader(b"Content-Length")
        or not headers.hasHeader(b"Content-Type")
    )


def _start_response(request: Any, transport: Any, body: bytes) -> None:
    """
    Write the status line, the headers and ``body`` (the stream's first
    frames) as one buffer, the way :meth:`twisted.web.http.Request.write`
    does on its first call, for a response that :func:`_plain_response`
    accepted.  Twisted's own write goes through about forty calls for the
    same bytes, a fifth of what opening a stream costs.

    The bytes go to the transport's buffer, flushed on the reactor's next
    turn as Twisted's would be: a burst of new connections is then flushed
    together, which measured cheaper than sending each at once.
    """
    headers = request.responseHeaders
    version = request.clientproto
    chunked = version == b"HTTP/1.1"
    if chunked:
        headers.setRawHeaders(b"Transfer-Encoding", [b"chunked"])
        request.chunked = 1
    request.startedWriting = 1
    lines = [version, b" 200 ", request.code_message, b"\r\n"]
    for name, values in headers.getAllRawHeaders():
        for value in values:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    request.sentLength += len(body)
    lines.append(_chunked(body) if chunked else body)
    transport.write(b"".join(lines))


class _SentHeaders(Headers):
    """
    What an open stream's request holds as its response headers once they
    are on the wire: always empty, and setting a header (too late to be
    sent) does nothing, so one instance serves every stream.
    """

    __slots__ = ()

    def setRawHeaders(self, name: str | bytes, values: Sequence[str | bytes]) -> None:
        """Ignored: the headers were sent."""

    def addRawHeader(self, name: str | bytes, value: str | bytes) -> None:
        """Ignored: the headers were sent."""


_SENT_HEADERS = _SentHeaders()


class _SentCookies(list[bytes]):
    """
    What an open stream's request holds as its cookies to set once its
    headers are on the wire: always empty, and a cookie added (too late to
    be sent, which Twisted ignores too) is dropped, so one instance serves
    every stream.
    """

    def append(self, cookie: bytes, /) -> None:
        """Ignored: the headers were sent."""


_SENT_COOKIES = _SentCookies()

#: Whether a stream may take the direct path, by the classes of its
#: request, channel and transport.
_DIRECT_CLASSES: dict[tuple[type, type, type], bool] = {}


class _KeptHeaders(Headers):
    """
    An open stream's request headers: the same names and values, kept in
    tuples instead of lists.  Tuples of bytes (and then the dictionary that
    holds them) are left alone by the cyclic garbage collector, so a
    stream's request headers cost it nothing to scan, however many the
    client sent.  Reading them works as before; setting or adding one
    still works.
    """

    __slots__ = ()

    def __init__(self, rawHeaders: Any = None) -> None:
        # As Headers takes them (so that copy() works), then kept in tuples.
        super().__init__(rawHeaders)
        self._keep(self._rawHeaders.items())

    @classmethod
    def of(cls, headers: Headers) -> _KeptHeaders:
        """``headers``, kept (their names and values are already clean)."""
        kept = cls.__new__(cls)
        kept._keep(headers.getAllRawHeaders())
        return kept

    def _keep(self, items: Iterable[tuple[bytes, Sequence[bytes]]]) -> None:
        # The documented ivar of Headers: a dict of canonical names to values.
        kept: dict[bytes, Any] = {name: tuple(values) for name, values in items}
        self._rawHeaders = kept

    def addRawHeader(self, name: str | bytes, value: str | bytes) -> None:
        """Add ``value`` to the values of ``name``."""
        values: list[str | bytes] = list(self.getRawHeaders(name, ()))
        values.append(value)
        self.setRawHeaders(name, values)


class _NoBody(BytesIO):
    """
    The body of an open stream's ``GET`` request, which was empty: one
    shared, empty, read-only file instead of a ``BytesIO`` per stream.
    Twisted closes a request's ``content`` when it ends, which this ignores.
    """

    def close(self) -> None:
        """Ignored: the file is shared, and empty."""

    def write(self, data: object, /) -> int:
        """Refused: the file is shared."""
        raise OSError("an open stream's request body is read-only")


_NO_BODY = _NoBody()


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


class _Feeder(Protocol):
    """What feeds a stream from inside the library (the hub's handoff)."""

    def stream_resumed(self) -> None: ...

    def stream_closed(self) -> None: ...


@implementer(IPushProducer)
class EventStream:
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
        "_chunked",
        "_close_callbacks",
        "_delayed",
        "_feeder",
        "_heartbeat_timer",
        "_max_bytes",
        "_max_events",
        "_owner",
        "_queue",
        "_queued_bytes",
        "_registered",
        "_resume_callbacks",
        "_transport",
        "_wrote",
        "bytes",
        "clock",
        "close_reason",
        "closed",
        "dropped",
        "frames",
        "opened_at",
        "paused",
        "policy",
        "request",
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
        self.request = request
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
        # The resource that opened the stream (told when it closes), and
        # what feeds it from inside the library.
        self._owner: StreamResource | None = None
        self._feeder: _Feeder | None = None
        #: The TCP connection frames go straight to, once :meth:`_go_direct`
        #: was called; else ``request.write``.
        self._transport: Any = None
        self._chunked = False
        self._registered = False

    @property
    def log_fields(self) -> dict[str, object]:
        """Structured fields naming the stream in logs and metrics."""
        owner = self._owner
        return owner.log_fields(self.request) if owner is not None else {}

    def _register(self) -> None:
        # Become the request's push producer, so that Twisted pauses and
        # resumes the stream as its socket fills and drains.
        if not self._registered and not self.closed:
            self._registered = True
            self.request.registerProducer(self, True)

    def _go_direct(self, transport: Any) -> None:
        """
        Send frames straight to ``transport`` from now on (see
        :func:`_direct_transport`), once the response has started.

        The stream registers as its request's producer only when the kernel
        first leaves bytes to Twisted's buffer: until then there is nothing
        to pause.  That keeps an idle connection small: registering adds
        attributes to Twisted's request and channel objects (about 3 KB per
        connection, measured with tracemalloc, in ``bench/PROFILE.md``).
        For the same reason, the request forgets its response headers, which
        are on the wire and can no longer change (about 1 KB), keeps its
        request headers in tuples (:class:`_KeptHeaders`), and shares one
        empty body (:class:`_NoBody`) when its own was empty.
        """
        request = self.request
        self._transport = transport
        self._chunked = bool(request.chunked)
        request.responseHeaders = _SENT_HEADERS
        request.cookies = _SENT_COOKIES
        request.requestHeaders = _KeptHeaders.of(request.requestHeaders)
        content = request.content
        if isinstance(content, BytesIO) and not content.getbuffer().nbytes:
            content.close()
            request.content = _NO_BODY

    def _send(self, frame: bytes) -> None:
        """Send ``frame`` now: straight to the socket when it has room."""
        transport = self._transport
        if transport is None:
            self.request.write(frame)
            return
        # What request.write would count, for the access log.
        self.request.sentLength += len(frame)
        data = _chunked(frame) if self._chunked else frame
        if (
            transport._tempDataBuffer
            or len(transport.dataBuffer) > transport.offset
            or not transport.connected
            or transport.disconnecting
        ):
            self._register()
            transport.write(data)
            return
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Let Twisted meet the error on its own path and close cleanly.
            self._register()
            transport.write(data)
            return
        if sent < len(data):
            self._register()
            transport.write(data[sent:])

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

    def send(self, event: Event) -> bool:
        """
        Encode ``event`` and send it.

        :returns: ``False`` if the stream was already closed, else ``True``.
        """
        return self.write(event.encode(), event.event or "message")

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
        frames = b"".join(self._queue.values()) + tail if self._queue else tail
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
        if self._feeder is not None and not self.paused and not self.closed:
            self._feeder.stream_resumed()
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
                peer=_client_ip(self.request),
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

    def _heartbeat(self) -> None:
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
        """The request finished (see :meth:`StreamResource.open_stream`)."""
        self._lost(None)

    def errback(self, reason: Failure) -> None:
        """The connection was lost (see :meth:`StreamResource.open_stream`)."""
        self._lost(reason)

    def _lost(self, reason: Failure | None) -> None:
        if not self.closed:
            self._release("lost")

    def _release(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
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
        if self._owner is not None:
            callbacks.append(partial(self._owner._stream_closed, self))
        if self._feeder is not None:
            callbacks.append(self._feeder.stream_closed)
            self._feeder = None
        callbacks += self._close_callbacks or ()
        self._close_callbacks = None
        for callback in callbacks:
            try:
                callback()
            except Exception:
                _log.failure("Error in a stream's close callback")


class StreamRegistry:
    """
    Every open stream of a server, for admission control and a graceful
    drain.

    Admission: over ``max_connections`` streams in all, or
    ``max_connections_per_ip`` from one client address, a new stream is sent
    away with ``200``, a jittered ``retry:`` and an immediate end.  A
    spec-following ``EventSource`` then comes back after that delay; a
    ``503`` would make a browser give up for good.

    Drain (:meth:`drain`): new streams are sent away the same way, and every
    open stream is ended cleanly at a random moment of the drain window with
    a jittered ``retry:``, so that clients do not all reconnect at once.

    :param clock: The time source.
    :param max_connections: Streams in all; ``0`` for no limit.
    :param max_connections_per_ip: Streams per client address; ``0`` for no
        limit.
    :param busy_retry: Base ``retry:`` in milliseconds for a client sent
        away; each gets a random value between it and twice it.
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_connections: int = 0,
        max_connections_per_ip: int = 0,
        busy_retry: int = 5000,
        random: Random | None = None,
    ) -> None:
        if max_connections < 0 or max_connections_per_ip < 0:
            raise ValueError("connection limits must be >= 0 (0: no limit)")
        Event(retry=busy_retry)
        self.clock = clock
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.busy_retry = busy_retry
        self.draining = False
        #: Streams sent away, by reason ("draining", "total", "per-ip").
        self.refused: Counter[str] = Counter()
        #: Streams opened since start, and closed by reason ("closed" by the
        #: server, "lost" by the client, "aborted" for not reading).
        self.opened = 0
        self.closed: Counter[str] = Counter()
        #: Frames and bytes of streams already closed, and frames their
        #: slow-client policy dropped; see :meth:`totals` for all streams.
        self._closed_frames = 0
        self._closed_bytes = 0
        self._closed_dropped = 0
        self.streams: set[EventStream] = set()
        self._per_ip: dict[str, int] = {}
        self._random = random if random is not None else Random()

    def jittered_retry(self, base: int | None = None) -> int:
        """A reconnection time between ``base`` and twice it (ms)."""
        base = self.busy_retry if base is None else base
        return base + self._random.randint(0, base)

    def admit(self, request: Any) -> str | None:
        """
        Whether a new stream for ``request`` may open.

        :returns: ``None`` if so, else the reason it may not.
        """
        if self.draining:
            return self._refuse("draining", "the server is shutting down")
        if self.max_connections and len(self.streams) >= self.max_connections:
            return self._refuse("total", "too many connections")
        if (
            self.max_connections_per_ip
            and self._per_ip.get(_client_ip(request), 0) >= self.max_connections_per_ip
        ):
            return self._refuse("per-ip", "too many connections from this address")
        return None

    def _refuse(self, kind: str, reason: str) -> str:
        self.refused[kind] += 1
        return reason

    def totals(self) -> tuple[int, int, int]:
        """Frames and bytes accepted, and frames dropped, by every stream."""
        frames, size, dropped = (
            self._closed_frames,
            self._closed_bytes,
            self._closed_dropped,
        )
        for stream in self.streams:
            frames += stream.frames
            size += stream.bytes
            dropped += stream.dropped
        return frames, size, dropped

    def add(self, stream: EventStream) -> None:
        """Count ``stream`` until it closes."""
        self._track(stream, _client_ip(stream.request))
        stream.on_close(partial(self._forget, stream))

    def _track(self, stream: EventStream, ip: str) -> None:
        # Without a close callback: a StreamResource calls _forget itself.
        self.streams.add(stream)
        self.opened += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1

    def _forget(self, stream: EventStream) -> None:
        if stream not in self.streams:
            return
        ip = _client_ip(stream.request)
        self.streams.discard(stream)
        self.closed[stream.close_reason or "closed"] += 1
        self._closed_frames += stream.frames
        self._closed_bytes += stream.bytes
        self._closed_dropped += stream.dropped
        left = self._per_ip.get(ip, 1) - 1
        if left:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)

    def drain(
        self, seconds: float, retry: int = 1000, grace: float = 1.0
    ) -> Deferred[None]:
        """
        Stop admitting streams and end the open ones cleanly, each with a
        ``retry:`` between ``retry`` and ``retry`` plus ``seconds``, so that
        their clients come back spread over the window; then close their
        connections once the terminating chunk is flushed.  The ends
        themselves are spread at no more than :data:`DRAIN_RATE` per second
        (within ``seconds``): a busy server takes the whole window, a quiet
        one stops at once.

        :param grace: Seconds to wait at most, after the last stream ended,
            for the connections to flush and close.
        :returns: A Deferred that fires when that is done.
        """
        self.draining = True
        return Deferred.fromCoroutine(self._drain(seconds, retry, grace))

    async def _drain(self, seconds: float, retry: int, grace: float) -> None:
        window_ms = int(seconds * 1000)
        waiting = []
        connections: list[Any] = []
        h2_channels: list[Any] = []

        def end(stream: EventStream, hint: int) -> None:
            # Note the connection first: closing the last stream resumes the
            # wait below at once, before this function goes on.
            if stream.is_http2:
                # The stream's last frames wait in its connection's send loop,
                # which runs on a later reactor turn: see them out below.
                h2_channels.append(stream.request.channel)
                stream.close(hint)
                return
            connection = stream.request.channel.transport
            if connection is not None:
                connections.append(connection)
            stream.close(hint)
            if connection is not None:
                # Flushes what is buffered (the terminating chunk), then
                # closes: no half-written response for a proxy to report.
                connection.loseConnection()

        streams = list(self.streams)
        # The retry hints spread the reconnections over the whole window;
        # the ends themselves need spreading only when there are many, so a
        # server with a handful of streams stops at once.
        spread = min(seconds, len(streams) / DRAIN_RATE)
        for stream in streams:
            done: Deferred[None] = Deferred()
            stream.on_close(partial(done.callback, None))
            hint = retry + self._random.randint(0, max(window_ms, 0))
            if spread > 0:
                stream.call_later(self._random.uniform(0, spread), end, stream, hint)
            else:
                end(stream, hint)
            waiting.append(done)
        await DeferredList(waiting)
        waited, step = 0.0, 0.02
        # HTTP/2: wait until each ended stream has left its connection (its
        # END_STREAM is written), then close the connections as above.
        # Without this the reactor stops with the frames unsent, and clients
        # see a stream cut without its end (curl: "not closed cleanly").
        while waited < grace and any(map(_h2_stream_pending, h2_channels)):
            await deferLater(self.clock, step)
            waited += step
        for transport in {id(t): t for t in map(_h2_transport, h2_channels)}.values():
            if transport is not None:
                transport.loseConnection()
                connections.append(transport)
        while waited < grace and not all(map(_disconnected, connections)):
            await deferLater(self.clock, step)
            waited += step


def _disconnected(transport: Any) -> bool:
    """
    Whether a connection is closed.  A TLS transport (a protocol wrapper)
    has no ``disconnected``: the TCP transport under it does, and closes
    only after the wrapper has flushed its records.
    """
    while transport is not None and not hasattr(transport, "disconnected"):
        transport = getattr(transport, "transport", None)
    return transport is None or bool(transport.disconnected)


# Twisted gives an HTTP/2 stream (an H2Stream, the request's channel) no
# public way to its connection: these read its private ``_conn``, and answer
# "nothing to wait for" should that change.


def _h2_stream_pending(channel: Any) -> bool:
    """Whether an HTTP/2 stream's frames are still queued in its connection."""
    connection = getattr(channel, "_conn", None)
    return channel.streamID in getattr(connection, "streams", ())


def _h2_transport(channel: Any) -> Any:
    """The transport under an HTTP/2 stream's connection, or ``None``."""
    return getattr(getattr(channel, "_conn", None), "transport", None)


def _client_ip(request: Any) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


class StreamResource(Resource):
    """
    What every event-stream resource shares: the response headers, the
    first frame, HEAD, the CORS preflight, 405 for other methods, admission
    and the bookkeeping of open streams.  Subclasses decide what feeds a
    stream (:class:`EventStreamResource`: a handler; the hub: a channel).

    :param clock: The time source; the global reactor if ``None``.
    :param retry: Milliseconds sent as the first frame's ``retry:``.
    :param heartbeat: Seconds of silence before a heartbeat comment; ``0``
        disables.  Ignored when ``heartbeat_timer`` is given.
    :param heartbeat_timer: A :class:`Heartbeat` shared with other resources.
    :param allow_origin: The ``Access-Control-Allow-Origin`` value, or
        ``None`` to send no CORS headers.
    :param max_queue_events: Frames a non-reading client may have queued.
    :param max_queue_bytes: Bytes a non-reading client may have queued.
    :param policy: What happens when that queue is full.
    :param registry: A :class:`StreamRegistry` shared by the server's
        resources, for connection limits and a graceful drain.

    :ivar streams: The set of this resource's open streams (read it; a
        stream leaves it when it closes).  Broadcasting to a resource's
        clients is writing one encoded frame to each.
    """

    isLeaf = True
    #: Methods answered; others get 405 with ``Allow``.
    allowed_methods: tuple[bytes, ...] = (b"GET", b"HEAD", b"OPTIONS")

    def __init__(
        self,
        *,
        clock: IReactorTime | None = None,
        retry: int | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        heartbeat_timer: Heartbeat | None = None,
        allow_origin: str | None = None,
        max_queue_events: int = DEFAULT_MAX_QUEUE_EVENTS,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        policy: SlowClientPolicy = SlowClientPolicy.DISCONNECT,
        registry: StreamRegistry | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if retry is not None:
            Event(retry=retry)  # validates: a ValueError names the field
        if allow_origin is not None and ("\r" in allow_origin or "\n" in allow_origin):
            raise ValueError(f"allow_origin must be one line: {allow_origin!r}")
        if max_queue_events < 1 or max_queue_bytes < 1:
            raise ValueError("max_queue_events and max_queue_bytes must be >= 1")
        self.clock = clock if clock is not None else _default_clock()
        self.retry = retry
        self.heartbeat = (
            heartbeat_timer
            if heartbeat_timer is not None
            else Heartbeat(self.clock, heartbeat)
        )
        self.allow_origin = allow_origin
        self.max_queue_events = max_queue_events
        self.max_queue_bytes = max_queue_bytes
        self.policy = policy
        self.registry = registry
        self.streams: set[EventStream] = set()
        self.first_frame = (
            Event(retry=retry).encode() if retry is not None else _OPEN_FRAME
        )
        self._allow = b", ".join(self.allowed_methods)

    def close_all(self, retry: int | None = None) -> None:
        """
        End every open stream cleanly (see :meth:`EventStream.close`).

        :param retry: A ``retry:`` hint in milliseconds for each client.
        """
        for stream in list(self.streams):
            stream.close(retry)

    # Building blocks for subclasses

    def set_cors_headers(self, request: Any) -> None:
        """Set ``Access-Control-Allow-Origin`` (and ``Vary``) if configured."""
        if self.allow_origin is not None:
            request.setHeader(b"Access-Control-Allow-Origin", self.allow_origin)
            if self.allow_origin != "*":
                request.setHeader(b"Vary", b"Origin")

    def set_stream_headers(self, request: Any) -> None:
        """Set the status and headers of an event-stream response."""
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        if request.clientproto == b"HTTP/1.1" and not request.responseHeaders.hasHeader(
            b"Connection"
        ):
            # What the seed sends.  Never over HTTP/2, which forbids it; never
            # over HTTP/1.0 or when Twisted already answers "close".
            request.setHeader(b"Connection", b"keep-alive")
        self.set_cors_headers(request)

    def refusal(self, request: Any) -> str | None:
        """
        Why the registry does not admit ``request`` (see
        :meth:`StreamRegistry.admit`), or ``None`` if it does.
        """
        if self.registry is None:
            return None
        return self.registry.admit(request)

    def send_away(self, request: Any, reason: str) -> None:
        """
        Answer ``request`` so that an ``EventSource`` comes back later: a
        ``200`` event stream holding only a jittered ``retry:`` and a comment
        saying why, ended with the terminating chunk (an event stream never
        has a ``Content-Length``); then close the connection, so that the
        client does not hold the very slot a limit protects while it waits.
        A ``503`` would make a browser give up for good.
        """
        registry = self.registry or StreamRegistry(self.clock)
        retry = registry.jittered_retry()
        transport = None
        if request.clientproto != b"HTTP/2":
            transport = getattr(request.channel, "transport", None)
            request.setHeader(b"Connection", b"close")
        self.set_stream_headers(request)
        request.write(Event(retry=retry, comment=reason.replace("\n", " ")).encode())
        request.finish()
        if transport is not None:
            transport.loseConnection()

    def open_stream(
        self,
        request: Any,
        *frames: bytes,
        finished: Deferred[None] | None = None,
    ) -> EventStream:
        """
        Turn ``request`` into an open :class:`EventStream`: the headers and
        ``frames`` (the first frame by default) go out at once, and the
        stream is tracked until it ends.

        :param finished: ``request.notifyFinish()``, if the caller already
            asked for it (it need not be asked twice).
        """
        self.set_stream_headers(request)
        stream = EventStream(
            request,
            self.clock,
            max_queue_events=self.max_queue_events,
            max_queue_bytes=self.max_queue_bytes,
            policy=self.policy,
        )
        stream._owner = self
        streams = self.streams
        streams.add(stream)
        if len(streams) == 1:
            # The first stream since the set was last empty (and unwatched).
            self.heartbeat.watch(streams)
        peer = _client_ip(request)
        _info("Stream opened for {peer}", peer=peer, **self.log_fields(request))
        if self.registry is not None:
            self.registry._track(stream, peer)
        body = b"".join(frames) if frames else self.first_frame
        transport = _direct_transport(request)
        if transport is None or not _plain_response(request):
            if finished is None:
                finished = request.notifyFinish()
            finished.addBoth(stream._lost)
            request.write(body)
            # Paused and resumed by Twisted as its transport fills and drains.
            stream._register()
            return stream
        if finished is not None:
            finished.addBoth(stream._lost)
        else:
            # What notifyFinish would do with a Deferred, without one: Twisted
            # calls the stream's callback or errback when the request ends.
            request.notifications.append(stream)
        _start_response(request, transport, body)
        stream._go_direct(transport)
        return stream

    def _stream_closed(self, stream: EventStream) -> None:
        """Forget ``stream``, which just closed, and log its end."""
        streams = self.streams
        streams.discard(stream)
        if not streams:
            self.heartbeat.unwatch(streams)
        if self.registry is not None:
            self.registry._forget(stream)
        _info(
            "Stream closed for {peer} ({reason}) after {duration:.1f} s",
            peer=_client_ip(stream.request),
            reason=stream.close_reason,
            duration=self.clock.seconds() - stream.opened_at,
            frames=stream.frames,
            dropped=stream.dropped,
            **stream.log_fields,
        )
        if stream.close_reason != "closed":
            # Twisted writes a request's access-log line when it finishes; a
            # stream whose client left, or that was cut off, never finishes.
            _access_log(stream.request)

    def log_fields(self, request: Any) -> dict[str, object]:
        """Structured fields that name a stream in the logs (its path)."""
        return {"path": request.path.decode("utf-8", "replace")}

    # Rendering

    def render_HEAD(self, request: Any) -> bytes:
        """Answer the headers a GET would get, and finish."""
        self.set_stream_headers(request)
        return b""

    def render_OPTIONS(self, request: Any) -> bytes:
        """Answer a CORS preflight."""
        request.setResponseCode(204)
        request.setHeader(b"Allow", self._allow)
        self.set_cors_headers(request)
        if self.allow_origin is not None:
            request.setHeader(b"Access-Control-Allow-Methods", self._allow)
            request.setHeader(
                b"Access-Control-Allow-Headers",
                b"Last-Event-ID, Cache-Control, Authorization, Content-Type",
            )
            request.setHeader(b"Access-Control-Max-Age", b"86400")
        return b""

    def render(self, request: Any) -> bytes | int:
        """Dispatch by method; unknown methods get 405 with ``Allow``."""
        method = request.method
        if method in self.allowed_methods:
            handler = getattr(self, "render_" + method.decode("ascii"))
            result: bytes | int = handler(request)
            return result
        request.setResponseCode(405)
        request.setHeader(b"Allow", self._allow)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"405 Method Not Allowed: this resource answers %s\n" % self._allow


class EventStreamResource(StreamResource):
    """
    Serve a ``text/event-stream``: each GET becomes an :class:`EventStream`
    given to ``handler``.

    The response has ``Content-Type: text/event-stream; charset=utf-8``,
    ``Cache-Control: no-cache``, ``X-Accel-Buffering: no`` (so nginx does not
    buffer it), an optional ``Access-Control-Allow-Origin``, never a
    ``Content-Length``, and no ``Connection`` header over HTTP/2, where it is
    forbidden.  The headers and a first frame (``retry:`` when ``retry`` is
    set, else an empty comment) are written at once, so clients and proxies
    see the stream open.

    HEAD answers the headers and finishes; OPTIONS answers a CORS preflight
    that allows the ``Last-Event-ID`` header; any other method but GET gets
    405 with ``Allow``.

    :param handler: Called with each new stream.

    The keyword arguments are those of :class:`StreamResource`.
    """

    def __init__(self, handler: StreamHandler, **options: Any) -> None:
        super().__init__(**options)
        self.handler = handler

    def render_GET(self, request: Any) -> bytes | int:
        """Open a stream and hand it to the handler."""
        refused = self.refusal(request)
        if refused is not None:
            self.send_away(request, refused)
            return NOT_DONE_YET
        stream = self.open_stream(request)
        try:
            result = self.handler(stream)
        except Exception:
            _handler_failed(Failure(), stream)
        else:
            if isinstance(result, Deferred):
                result.addErrback(_handler_failed, stream)
            elif inspect.iscoroutine(result):
                Deferred.fromCoroutine(result).addErrback(_handler_failed, stream)
        return NOT_DONE_YET


def _handler_failed(failure: Failure, stream: EventStream) -> None:
    _log.failure("Stream handler failed; ending the stream", failure)
    stream.close()


def counter(interval: float = 1.0, start: int = 1) -> Callable[[EventStream], None]:
    """
    A stream handler that sends ``data: 1``, ``data: 2``, ... every
    ``interval`` seconds, counting from ``start`` for each connection: the
    seed example's stream, driven by a
    :class:`~twisted.internet.task.LoopingCall` on the stream's clock.

    :param interval: Seconds between events; must be positive.
    """
    if not interval > 0:
        raise ValueError(
            f"interval must be a positive number of seconds, not {interval!r}"
        )

    def handle(stream: EventStream) -> None:
        numbers = itertools.count(start)
        loop = LoopingCall(lambda: stream.send(Event(data=str(next(numbers)))))
        loop.clock = stream.clock
        loop.start(interval, now=False)
        stream.on_close(loop.stop)

    return handle
