"""
The event-stream resources: :class:`StreamResource`, what every one shares
(headers, first frame, HEAD, CORS, 405, admission, the bookkeeping of open
streams), :class:`EventStreamResource`, which hands each stream to a
handler, and :func:`counter`, the seed's handler.

:class:`EventStreamResource` is an ordinary
:class:`~twisted.web.resource.IResource` (so it works when returned from a
Klein route, mounted with ``putChild`` in a plain
:class:`~twisted.web.server.Site`, or served by ``twistd``); each GET it
renders becomes an :class:`~twisted_sse.EventStream` that the resource's
handler feeds.
"""

from __future__ import annotations

import inspect
import itertools
import re
import time
from collections.abc import Callable, Sequence
from types import AsyncGeneratorType, GeneratorType
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ._auth import Grant, grant_of, identity_hash
from ._event import MAX_RETRY, Event, encode_comment
from ._handlers import feed
from ._heartbeat import DEFAULT_HEARTBEAT, Heartbeat
from ._registry import StreamRegistry
from ._stream import (
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_EVENTS,
    EventStream,
    SlowClientPolicy,
    StreamHandler,
    client_ip,
)

__all__ = [
    "FAILURE_RETRY",
    "EventStreamResource",
    "StreamResource",
    "abandon",
    "counter",
    "default_clock",
    "requested_last_event_id",
]

_log = Logger()

#: The ``retry:`` (milliseconds) sent to a client whose stream ended because
#: its handler raised: 10 s, longer than a browser's own reconnection time
#: (3 to 5 s), so a handler that fails at once does not have every client
#: reconnect every few seconds for ever.  A resource with a longer ``retry``
#: of its own sends twice that instead (its ``failure_retry``).
FAILURE_RETRY = 10_000

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
    """
    Write ``request``'s line to its site's access log, as ``finish`` would
    (the site decides whether it keeps one: ``CappedSite(access_log=False)``
    does not).
    """
    log = getattr(getattr(request, "site", None), "log", None)
    if log is None:
        return
    try:
        log(request)
    except Exception:
        _log.failure("Writing the access log failed")


def requested_last_event_id(request: Any) -> str | None:
    """
    The id a client resumes after: its ``Last-Event-ID`` header, or the
    ``lastEventId`` query parameter of ``EventSource`` polyfills (which
    cannot send the header); ``None`` for neither.
    """
    header = request.getHeader(b"Last-Event-ID")
    if header is not None:
        return str(header.decode("utf-8", "replace"))
    values = request.args.get(b"lastEventId")
    if values:
        return str(values[0].decode("utf-8", "replace"))
    return None


#: The ``retry:`` (ms) of a stream ended by its credentials' expiry, when
#: its resource has no retry of its own.
_EXPIRED_RETRY = 1000


def _holder(grant: Grant | None) -> dict[str, str]:
    # Who holds the credentials, in the logs: a hash, never the identity.
    if grant is None or grant.identity is None:
        return {}
    return {"user": identity_hash(grant.identity)}


def check_origins(allow_origin: str | Sequence[str] | None) -> tuple[str, ...]:
    """
    The origins of ``allow_origin`` (see :class:`StreamResource`).

    :raises ValueError: for an origin that is not ``*`` nor
        ``scheme://host[:port]`` in ASCII, or ``*`` among others.
    """
    if allow_origin is None:
        return ()
    origins = (allow_origin,) if isinstance(allow_origin, str) else tuple(allow_origin)
    for origin in origins:
        if not isinstance(origin, str) or (
            origin != "*" and _ORIGIN.fullmatch(origin) is None
        ):
            raise ValueError(
                f"allow_origin must be * or origins like https://app.example "
                f"(scheme://host[:port], no path), not {origin!r}"
            )
    if "*" in origins and len(origins) > 1:
        raise ValueError("allow_origin: * cannot be listed with other origins")
    return origins


#: An origin as browsers send it: a scheme, a host, maybe a port, no path.
_ORIGIN = re.compile(
    r"[a-z][a-z0-9+.-]*://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?"
)


def abandon(finished: Deferred[None]) -> None:
    """
    The client went away before its stream opened: its request's finish
    Deferred failed, which is no error to report.
    """
    finished.addErrback(lambda _: None)


def default_clock() -> IReactorTime:
    """The global reactor, imported on first use."""
    from twisted.internet import reactor

    return reactor


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
    :param allow_origin: Who may read the streams from another origin:
        ``"*"`` (anyone, never with credentials), an origin
        (``"https://app.example"``) or a sequence of them, or ``None`` to
        send no CORS headers.  A request from a listed origin gets that
        origin back with ``Access-Control-Allow-Credentials: true``, so
        that a page's ``EventSource`` with ``withCredentials`` (or a
        ``fetch`` with ``credentials: "include"``) sends its cookies; one
        from another origin gets no ``Access-Control-Allow-Origin`` (a
        single configured origin is sent as it is).
    :param max_queue_events: Frames a non-reading client may have queued.
    :param max_queue_bytes: Bytes a non-reading client may have queued.
    :param policy: What happens when that queue is full.
    :param registry: A :class:`StreamRegistry` shared by the server's
        resources, for connection limits and a graceful drain.
    :param stream_log: Whether to log an info line when a stream opens,
        when it closes and when its credentials expire.  ``False`` skips
        building those events altogether (their cost goes with them, not
        just their output); warnings and errors (a failed handler, a slow
        client cut off) are logged either way.  The access-log line of
        each request is the site's to write (``twistd sse --access-log
        off`` turns it off; a :class:`~twisted.web.server.Site` of your
        own writes none if its ``log`` method does nothing).

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
        allow_origin: str | Sequence[str] | None = None,
        max_queue_events: int = DEFAULT_MAX_QUEUE_EVENTS,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        policy: SlowClientPolicy = SlowClientPolicy.DISCONNECT,
        registry: StreamRegistry | None = None,
        stream_log: bool = True,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if retry is not None:
            Event(retry=retry)  # validates: a ValueError names the field
        origins = check_origins(allow_origin)
        if max_queue_events < 1 or max_queue_bytes < 1:
            raise ValueError("max_queue_events and max_queue_bytes must be >= 1")
        self.clock = clock if clock is not None else default_clock()
        self.retry = retry
        self.heartbeat = (
            heartbeat_timer
            if heartbeat_timer is not None
            else Heartbeat(self.clock, heartbeat)
        )
        self.allow_origin = allow_origin
        # The listed origins, as a request's Origin header spells them; the
        # one origin sent to every request when exactly one is configured.
        self._origins = frozenset(o.encode("ascii") for o in origins if o != "*")
        self._origin: bytes | None = (
            origins[0].encode("ascii") if len(origins) == 1 else None
        )
        self.max_queue_events = max_queue_events
        self.max_queue_bytes = max_queue_bytes
        self.policy = policy
        self.registry = registry
        #: Whether streams log their opening and end (see ``stream_log``).
        self.stream_log = stream_log
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
        """
        Set ``Access-Control-Allow-Origin`` (with ``Vary: Origin`` and, for a
        listed origin, ``Access-Control-Allow-Credentials``) if configured.
        """
        origins = self._origins
        if not origins:
            if self._origin is not None:
                request.setHeader(b"Access-Control-Allow-Origin", self._origin)
            return
        request.setHeader(b"Vary", b"Origin")
        origin = request.getHeader(b"Origin")
        if origin in origins:
            request.setHeader(b"Access-Control-Allow-Origin", origin)
            request.setHeader(b"Access-Control-Allow-Credentials", b"true")
        elif self._origin is not None:
            request.setHeader(b"Access-Control-Allow-Origin", self._origin)

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
        stream.owner = self
        streams = self.streams
        streams.add(stream)
        if len(streams) == 1:
            # The first stream since the set was last empty (and unwatched).
            self.heartbeat.watch(streams)
        peer = client_ip(request)
        grant = grant_of(request)
        if self.stream_log:
            _info(
                "Stream opened for {peer}",
                peer=peer,
                **self.log_fields(request),
                **_holder(grant),
            )
        if self.registry is not None:
            self.registry.track(stream, peer)
        stream.start(b"".join(frames) if frames else self.first_frame, finished)
        if grant is not None and grant.expires is not None and not stream.closed:
            # Credentials that expire end the stream when they do: its
            # client comes back with fresh ones, or is refused.
            delay = max(0.0, grant.expires - self.clock.seconds())
            stream.call_later(delay, self._expired, stream)
        return stream

    def _expired(self, stream: EventStream) -> None:
        if self.stream_log:
            _info(
                "Ending a stream for {peer}: its credentials expired",
                peer=client_ip(stream.request),
                **stream.log_fields,
                **_holder(grant_of(stream.request)),
            )
        stream.close(self.retry if self.retry is not None else _EXPIRED_RETRY)

    def stream_closed(self, stream: EventStream) -> None:
        """
        Forget ``stream``, one of this resource's, which just closed, and
        log its end (the stream calls it first of all its close callbacks).
        """
        streams = self.streams
        streams.discard(stream)
        if not streams:
            self.heartbeat.unwatch(streams)
        if self.registry is not None:
            self.registry.forget(stream)
        if self.stream_log:
            _info(
                "Stream closed for {peer} ({reason}) after {duration:.1f} s",
                peer=client_ip(stream.request),
                reason=stream.close_reason,
                duration=self.clock.seconds() - stream.opened_at,
                frames=stream.frames,
                dropped=stream.dropped,
                **stream.log_fields,
                **_holder(grant_of(stream.request)),
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
        if self._origin is not None or self._origins:
            request.setHeader(b"Access-Control-Allow-Methods", self._allow)
            request.setHeader(
                b"Access-Control-Allow-Headers",
                b"Last-Event-ID, Cache-Control, Authorization, Content-Type, "
                b"Idempotency-Key",
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

    The handler is called with the new stream, once its headers and first
    frame are on their way.  It may be:

    - **a function** that sends now or later (from a timer, a subscription)
      with :meth:`EventStream.send` and releases what feeds the stream in
      :meth:`EventStream.on_close`; it may return a Deferred;
    - **a coroutine function** (``async def`` without ``yield``), run with
      :meth:`~twisted.internet.defer.Deferred.fromCoroutine`;
    - **a generator** (``def`` with ``yield``) or **an async generator**
      (``async def`` with ``yield``): what it yields is sent, as
      :meth:`EventStream.send` sends it (an :class:`Event`, or a ``str``,
      ``bytes``, ``dict`` or ``list`` as data).  It is advanced only while
      the client reads (a client that stops reading stops it), it may
      ``await`` Deferreds (an async generator) or yield one to wait for it
      (a plain generator), and when the client goes away it is closed at
      once, so its ``finally`` blocks run.  When it returns, the stream
      ends cleanly (a browser then reconnects after its retry time).  It
      sends at most 100 frames in a row, then lets other connections have
      a turn of the reactor (in a test on a ``Clock``, the rest follows
      ``client.advance(0)``).

    A handler that raises, or whose Deferred, coroutine or generator does,
    is logged once, with its traceback and the request's path, and its
    stream ends cleanly with a ``retry:`` of ``failure_retry``
    milliseconds, so that a broken handler does not bring every browser
    back every few seconds.  To resume a client where it left off, read
    :attr:`EventStream.last_event_id`.

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

    :ivar failure_retry: The ``retry:`` sent when a handler fails:
        :data:`FAILURE_RETRY`, or twice ``retry`` if that is longer (at most
        :data:`MAX_RETRY`).
    """

    def __init__(self, handler: StreamHandler, **options: Any) -> None:
        super().__init__(**options)
        self.handler = handler
        retry = self.retry
        self.failure_retry = (
            FAILURE_RETRY
            if retry is None
            else max(FAILURE_RETRY, min(2 * retry, MAX_RETRY))
        )

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
            self.handler_failed(Failure(), stream)
            return NOT_DONE_YET
        if result is None:
            pass
        elif isinstance(result, Deferred):
            result.addErrback(self.handler_failed, stream)
        elif inspect.iscoroutine(result):
            Deferred.fromCoroutine(result).addErrback(self.handler_failed, stream)
        elif isinstance(result, (GeneratorType, AsyncGeneratorType)):
            feed(result, stream, self.handler_failed)
        return NOT_DONE_YET

    def handler_failed(self, failure: Failure, stream: EventStream) -> None:
        """
        ``stream``'s handler raised ``failure`` (itself, or its Deferred,
        coroutine or generator): log it once, with the request's path, and
        end the stream cleanly with a ``retry:`` of ``failure_retry``.
        """
        # The path only: a query string may hold a token.
        fields = {
            **stream.log_fields,
            "path": stream.request.path.decode("utf-8", "replace"),
        }
        if stream.closed:
            _log.failure(
                "Stream handler for {path} failed after its stream ended",
                failure,
                **fields,
            )
            return
        _log.failure(
            "Stream handler for {path} failed; ending the stream "
            "(the client retries in {retry} ms)",
            failure,
            retry=self.failure_retry,
            **fields,
        )
        stream.close(retry=self.failure_retry)


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
