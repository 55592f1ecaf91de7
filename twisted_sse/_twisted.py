"""
What this package knows of Twisted's internals, in one place.

Everything here leans on names Twisted does not promise to keep: the
attributes of a TCP transport's write buffer, of a request's notifications
and encoder, the raw dictionary of :class:`~twisted.web.http_headers.Headers`,
an HTTP/2 stream's connection, and the HTTP/1.1-or-h2 protocol a
:class:`~twisted.web.server.Site` builds.  Each piece is checked at its
first use against what it expects; when a check fails, one log line says
so and the code takes the road that needs nothing private: a stream writes
through ``request.write``, keeps its request as Twisted made it, a drain
does not wait for HTTP/2 frames, and the connection guard is unavailable.
Other modules call what is here by its plain name and never name a private
of Twisted themselves (``tests/test_twisted.py`` checks).

:class:`StreamWriter`, the part of an :class:`~twisted_sse.EventStream` that
puts bytes on their way, lives here because its fast path reads the TCP
transport's buffer on every frame: moving that read behind a function
would cost a call per frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from io import BytesIO
from typing import Any, Protocol
from weakref import WeakKeyDictionary

from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.server import Request

__all__ = [
    "StreamWriter",
    "answer_first",
    "chunked",
    "direct_transport",
    "forget_notification",
    "guarded_protocol_class",
    "h2_stream_pending",
    "h2_transport",
    "notify_directly",
    "plain_response",
    "start_response",
]

_log = Logger()


def _twisted_version() -> str:
    import twisted

    return str(getattr(twisted, "__version__", "?"))


def _warn_once(piece: str, format: str) -> None:
    """Log, once per ``piece``, that a check of Twisted's internals failed."""
    if piece in _WARNED:
        return
    _WARNED.add(piece)
    _log.warn(format, version=_twisted_version(), piece=piece)


_WARNED: set[str] = set()


# --- The direct path: HTTP/1.x over Twisted's own TCP transport --------------


class ChunkCache:
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


#: Frames ``frame`` as one HTTP/1.1 chunk (cached: see :class:`ChunkCache`).
chunked = ChunkCache()

#: Whether a stream may take the direct path, by the classes of its
#: request, channel and transport.
_DIRECT_CLASSES: dict[tuple[type, type, type], bool] = {}

#: What the direct path reads of a TCP transport (its write buffer).
_TRANSPORT_NAMES = ("socket", "dataBuffer", "offset", "_tempDataBuffer", "reactor")
#: Twisted's Request methods the direct path relies on (they answer each
#: entry of ``request.notifications``).
_REQUEST_METHODS = ("write", "notifyFinish", "connectionLost")
_CLEANUP = "_cleanup"
#: What the direct path reads or sets of a request.
_REQUEST_NAMES = ("notifications", "_encoder", "_inFakeHead")


def direct_transport(request: Any) -> Any:
    """
    The TCP connection under ``request`` if its stream may take the direct
    path, else ``None``.

    ``request.write`` appends to the transport's buffer and asks the reactor
    to flush it on the next turn: one ``send`` plus two ``epoll_ctl`` calls
    per delivery (register, then unregister write interest).  When the
    buffer is empty, sending at once is the same bytes in the same order
    without the round trip; whatever the kernel does not take is handed to
    the transport, which then buffers, flushes and pauses producers as
    usual (:meth:`StreamWriter._send`).  Any other transport (TLS, HTTP/2
    streams, UNIX sockets in other reactors) keeps using ``request.write``.

    On the direct path, a stream also starts its response itself
    (:func:`start_response`) and is told of its request's end without a
    Deferred (:func:`notify_directly`).  All three lean on Twisted's own
    classes, so they are taken only when the request, its channel and its
    transport are exactly those (checked once per combination of classes):
    :class:`twisted.web.server.Request`'s ``write``, ``notifyFinish``,
    ``connectionLost`` and ``_cleanup``, which answer each entry of
    ``request.notifications``; :class:`~twisted.web.http.HTTPChannel`'s
    ``writeHeaders``; and a :class:`twisted.internet.tcp.Connection` with
    ``socket``, ``dataBuffer``, ``offset`` and ``_tempDataBuffer``.  A
    subclass that overrides any of them gets the ordinary path; Twisted's
    own classes without them log one warning and get it too.
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
    if not (
        isinstance(transport, Connection)
        and all(
            getattr(kind, name, None) is getattr(Request, name)
            for name in _REQUEST_METHODS
        )
        and getattr(type(channel), "writeHeaders", None) is HTTPChannel.writeHeaders
    ):
        # Not Twisted's own classes (or not all of them): the plain path.
        return False
    if not (
        getattr(Request, _CLEANUP, None) is not None
        and all(hasattr(transport, name) for name in _TRANSPORT_NAMES)
        and all(hasattr(request, name) for name in _REQUEST_NAMES)
        and isinstance(request.notifications, list)
    ):
        _warn_once(
            "direct writes",
            "This Twisted ({version}) keeps its requests or TCP buffers "
            "differently: streams write through request.write ({piece} off)",
        )
        return False
    # A subclass's own clean-up may not answer the stream as Twisted's does.
    return getattr(kind, _CLEANUP) is getattr(Request, _CLEANUP)


def plain_response(request: Any) -> bool:
    """
    Whether the response :func:`start_response` would write is exactly
    what :meth:`twisted.web.server.Request.write` would: a ``200`` answer
    to a ``GET``, not started, with its ``Content-Type`` set, and nothing
    for Twisted to add or transform (no encoder such as gzip, no
    ``Last-Modified``, ``ETag``, cookie or ``Content-Length``).  Only for a
    request :func:`direct_transport` accepted.
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


def start_response(request: Any, transport: Any, body: bytes) -> None:
    """
    Write the status line, the headers and ``body`` (the stream's first
    frames) as one buffer, the way :meth:`twisted.web.http.Request.write`
    does on its first call, for a response that :func:`plain_response`
    accepted.  Twisted's own write goes through about forty calls for the
    same bytes, a fifth of what opening a stream costs.

    The bytes go to the transport's buffer, flushed on the reactor's next
    turn as Twisted's would be: a burst of new connections is then flushed
    together, which measured cheaper than sending each at once.
    """
    headers = request.responseHeaders
    version = request.clientproto
    is_chunked = version == b"HTTP/1.1"
    if is_chunked:
        headers.setRawHeaders(b"Transfer-Encoding", [b"chunked"])
        request.chunked = 1
    request.startedWriting = 1
    lines = [version, b" 200 ", request.code_message, b"\r\n"]
    for name, values in headers.getAllRawHeaders():
        for value in values:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    request.sentLength += len(body)
    lines.append(chunked(body) if is_chunked else body)
    transport.write(b"".join(lines))


class _Notified(Protocol):
    """What Twisted calls when a request ends, as it would a Deferred."""

    def callback(self, result: object) -> object: ...

    def errback(self, reason: Failure) -> object: ...


def notify_directly(request: Any, notified: _Notified) -> None:
    """
    What ``request.notifyFinish()`` does with a Deferred, without one:
    Twisted calls ``notified``'s ``callback`` or ``errback`` when the
    request ends.  Only for a request :func:`direct_transport` accepted.
    """
    request.notifications.append(notified)


def forget_notification(request: Any, finished: object) -> bool:
    """
    Take ``finished`` (a Deferred of ``request.notifyFinish()`` that was
    given no callbacks) out of ``request``'s notifications; whether it
    could.
    """
    notifications = getattr(request, "notifications", None)
    if not isinstance(notifications, list) or finished not in notifications:
        return False
    notifications.remove(finished)
    return True


# --- An open stream's request, slimmed once its head is on the wire ----------


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


#: Header names, header values and addresses that open streams share (see
#: :func:`_shared`), up to :data:`_SHARED_MAX` of them.
_SHARED: dict[Any, Any] = {}
_SHARED_MAX = 1024
#: The longest header value shared, in bytes.
_SHARED_LONGEST = 128


def _shared(value: Any) -> Any:
    """
    The one copy of ``value`` (a header name, a tuple of header values, an
    address) that open streams keep, when an equal one was kept before:
    most subscribers send the same ``Host``, ``Accept`` and ``User-Agent``
    and reach the same listening address.  Only short values are shared,
    and at most :data:`_SHARED_MAX` of them: a client sending values of its
    own costs the table nothing more.
    """
    found = _SHARED.get(value)
    if found is not None:
        return found
    if len(_SHARED) < _SHARED_MAX and (
        len(value) <= _SHARED_LONGEST
        if isinstance(value, bytes)
        else sum(map(len, value)) <= _SHARED_LONGEST
        if isinstance(value, tuple)
        else True
    ):
        _SHARED[value] = value
    return value


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
        kept: dict[bytes, Any] = {
            _shared(name): _shared(tuple(values)) for name, values in items
        }
        self._rawHeaders = kept

    def addRawHeader(self, name: str | bytes, value: str | bytes) -> None:
        """Add ``value`` to the values of ``name``."""
        values: list[str | bytes] = list(self.getRawHeaders(name, ()))
        values.append(value)
        self.setRawHeaders(name, values)


def _headers_keepable() -> bool:
    """
    Whether :class:`_KeptHeaders` works on this Twisted: ``Headers`` keeps
    its values in a ``_rawHeaders`` dictionary, and reads them from it.
    """
    try:
        probe = Headers({b"X-Probe": [b"a", b"b"]})
        kept = _KeptHeaders.of(probe)
        kept.addRawHeader(b"X-Probe", b"c")
        return (
            isinstance(probe._rawHeaders, dict)
            and list(kept.getRawHeaders(b"x-probe", ())) == [b"a", b"b", b"c"]
            and kept.copy().getRawHeaders(b"X-Probe") is not None
        )
    except Exception:
        return False


_KEEPABLE: bool | None = None


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


def _slim_request(request: Any) -> None:
    """
    Drop what an open stream's request no longer needs: its response
    headers, which are on the wire and can no longer change (about 1 KB),
    its cookies to set; keep its request headers in tuples
    (:class:`_KeptHeaders`), and share one empty body (:class:`_NoBody`)
    when its own was empty.
    """
    global _KEEPABLE
    request.responseHeaders = _SENT_HEADERS
    request.cookies = _SENT_COOKIES
    if _KEEPABLE is None:
        _KEEPABLE = _headers_keepable()
        if not _KEEPABLE:
            _warn_once(
                "kept request headers",
                "This Twisted ({version}) keeps Headers differently: open "
                "streams keep their request headers as they are ({piece} off)",
            )
    if _KEEPABLE:
        request.requestHeaders = _KeptHeaders.of(request.requestHeaders)
    # The server's own address, the same for every stream on a port, and
    # the request line's method and version.
    request.host = _shared(request.host)
    request.method = _shared(request.method)
    request.clientproto = _shared(request.clientproto)
    content = request.content
    if isinstance(content, BytesIO) and not content.getbuffer().nbytes:
        content.close()
        request.content = _NO_BODY


# --- The stream's writer -----------------------------------------------------


class _Cork:
    """
    The direct-path streams of one reactor that were given frames during
    the current turn, flushed together when it ends: each stream's frames
    go out as one ``send``, and streams given the same frames (a broadcast)
    share one joined and chunk-framed buffer.

    A reactor runs the delayed calls that are due right after the events of
    a turn, so the flush, a ``callLater(0)`` scheduled by the turn's first
    frame, runs before the reactor waits again: what a turn wrote reaches
    the kernel in that turn, in fewer, larger writes.

    Answers to publishes go first (:func:`answer_first`): a publisher
    waiting for its answer sends its next event while this turn's are
    being fanned out, and the next turn reads it with the others that
    came meanwhile, so the next flush sends more frames per ``send``.
    """

    __slots__ = ("_at_turn_end", "answers", "scheduled", "streams")

    def __init__(self, reactor: Any) -> None:
        self.streams: list[StreamWriter] = []
        self.answers: list[Any] = []
        self.scheduled = False
        # The test client's reactor says itself when a turn ends (at once,
        # when no call of the client's is running); a reactor's turn ends
        # with the delayed calls due.
        at_turn_end = getattr(reactor, "at_turn_end", None)
        if at_turn_end is None:
            callLater = reactor.callLater

            def at_turn_end(call: Callable[[], object]) -> None:
                callLater(0, call)

        self._at_turn_end: Callable[[Callable[[], object]], object] = at_turn_end

    def schedule(self) -> None:
        """Flush at the end of this turn (a stream or an answer is added)."""
        self.scheduled = True
        self._at_turn_end(self.flush)

    def answer(self, transport: Any) -> None:
        """Flush what ``transport`` holds at the end of this turn, first."""
        self.answers.append(transport)
        if not self.scheduled:
            self.schedule()

    def flush(self) -> None:
        """Send what each stream was given this turn, one write per stream."""
        self.scheduled = False
        answers, self.answers = self.answers, []
        for transport in answers:
            if (
                transport.connected
                and not transport.disconnecting
                and (
                    transport._tempDataBuffer
                    or len(transport.dataBuffer) > transport.offset
                )
            ):
                # What the reactor does when the socket is writable, now; an
                # error is met again, and handled, on the reactor's own call.
                try:
                    transport.doWrite()
                except Exception:
                    _log.failure("Sending an answer failed")
        streams, self.streams = self.streams, []
        last: list[bytes] | None = None
        joined = b""
        for stream in streams:
            frames = stream._corked
            if frames is None:
                continue  # closed, or flushed by its close, meanwhile
            stream._corked = None
            if isinstance(frames, list):
                # A broadcast gives every subscriber the same frames: a list
                # equal to the previous one (compared by identity first) is
                # joined once, and chunk-framed once (ChunkCache).
                if frames != last:
                    last = frames
                    joined = b"".join(frames)
                frame = joined
            else:
                frame = frames
            try:
                stream._write_now(chunked(frame) if stream._chunked else frame)
            except Exception:
                _log.failure("Sending a stream's frames failed")


def answer_first(request: Any) -> None:
    """
    Send ``request``'s answer, if it is written by the end of this reactor
    turn, before the frames the turn gave streams (see :class:`_Cork`).
    Only for a plain HTTP/1.x request over Twisted's own TCP transport
    (:func:`direct_transport`); any other is answered as usual.
    """
    transport = direct_transport(request)
    if transport is not None:
        _cork_for(transport.reactor).answer(transport)


#: The most a stream's frames of one turn wait for the end of the turn, in
#: bytes: Twisted's write buffer size, past which it pauses a producer.
CORK_BYTES = 65536

#: The cork of each reactor that runs direct-path streams.
_CORKS: WeakKeyDictionary[Any, _Cork] = WeakKeyDictionary()


def _cork_for(reactor: Any) -> _Cork:
    cork = _CORKS.get(reactor)
    if cork is None:
        cork = _CORKS[reactor] = _Cork(reactor)
    return cork


class StreamWriter:
    """
    How a stream's frames reach the socket: through ``request.write`` (the
    plain path, Twisted's public request API), or, once :meth:`_go_direct`
    was called for a transport :func:`direct_transport` accepted, straight
    to the TCP socket, once per reactor turn.  The base class of
    :class:`~twisted_sse.EventStream`, which calls :meth:`_send` for every
    frame: a method of its own, so a frame costs no extra call.

    On the direct path, the frames a stream is given during a reactor turn
    wait for the end of the turn and go out as one ``send`` (see
    :class:`_Cork`): the kernel's cost is per write, not per byte, and a
    publisher that sends several events between two turns of the reactor
    then costs each subscriber one write for all of them.  When Twisted
    already buffers bytes for the socket, frames are added to that buffer
    at once, behind them, as ``request.write`` would.

    :ivar request: The request the stream answers.
    """

    __slots__ = (
        "_chunked",
        "_cork",
        "_corked",
        "_corked_bytes",
        "_registered",
        "_transport",
        "request",
    )

    #: Whether the stream has ended (a slot of the subclass).
    closed: bool

    def __init__(self, request: Any) -> None:
        self.request = request
        #: The TCP connection frames go straight to, once :meth:`_go_direct`
        #: was called; else ``request.write``.
        self._transport: Any = None
        self._chunked = False
        self._registered = False
        #: The frames given this turn, waiting for the cork's flush: one
        #: frame, a list of them, or ``None``.
        self._corked: bytes | list[bytes] | None = None
        #: Their size, once there are several.
        self._corked_bytes = 0
        self._cork: _Cork | None = None

    def _register(self) -> None:
        # Become the request's push producer, so that Twisted pauses and
        # resumes the stream as its socket fills and drains.
        if not self._registered and not self.closed:
            self._registered = True
            self.request.registerProducer(self, True)

    def _go_direct(self, transport: Any) -> None:
        """
        Send frames straight to ``transport`` from now on (see
        :func:`direct_transport`), once the response has started.

        The stream registers as its request's producer only when the kernel
        first leaves bytes to Twisted's buffer: until then there is nothing
        to pause.  That keeps an idle connection small: registering adds
        attributes to Twisted's request and channel objects (about 3 KB per
        connection, measured with tracemalloc, in ``bench/PROFILE.md``).
        For the same reason, the request is slimmed (:func:`_slim_request`).
        """
        self._transport = transport
        self._chunked = bool(self.request.chunked)
        self._cork = _cork_for(transport.reactor)
        _slim_request(self.request)

    def _send(self, frame: bytes) -> None:
        """Send ``frame``: at the end of this turn, with the turn's others."""
        transport = self._transport
        if transport is None:
            self.request.write(frame)
            return
        # What request.write would count, for the access log.
        self.request.sentLength += len(frame)
        corked = self._corked
        if corked is not None:
            if isinstance(corked, list):
                corked.append(frame)
                self._corked_bytes += len(frame)
            else:
                self._corked = [corked, frame]
                self._corked_bytes = len(corked) + len(frame)
            if self._corked_bytes >= CORK_BYTES:
                # As much as Twisted buffers before it pauses a producer:
                # out now, so that a stream given more than that in one turn
                # is paused, and queues within its bounds, as it would be
                # without the cork.
                frames = self._uncork()
                self._write_now(chunked(frames) if self._chunked else frames)
            return
        # The first frame of the turn.  Should Twisted hold bytes for the
        # socket by the end of the turn, the flush puts these behind them.
        self._corked = frame
        cork = self._cork
        assert cork is not None
        cork.streams.append(self)
        if not cork.scheduled:
            cork.schedule()

    def _uncork(self) -> bytes:
        """
        The frames given this turn and not yet sent, joined, for a stream
        that ends now and writes them through ``request.write``; they will
        not be sent by the cork's flush.
        """
        corked, self._corked = self._corked, None
        if corked is None:
            return b""
        return b"".join(corked) if isinstance(corked, list) else corked

    def _write_now(self, data: bytes) -> None:
        """
        Write ``data`` (framed for the wire): straight to the socket when
        Twisted holds nothing for it, else behind what it holds.
        """
        transport = self._transport
        if (
            transport._tempDataBuffer
            or len(transport.dataBuffer) > transport.offset
            or not transport.connected
            or transport.disconnecting
        ):
            self._buffer(data)
            return
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Let Twisted meet the error on its own path and close cleanly.
            self._buffer(data)
            return
        if sent < len(data):
            self._buffer(data[sent:])

    def _buffer(self, data: bytes) -> None:
        """
        Leave ``data`` to Twisted's buffer, which sends it when the socket
        has room and pauses the stream when it holds too much.
        """
        self._register()
        self._transport.write(data)


# --- HTTP/2 ------------------------------------------------------------------
# Twisted gives an HTTP/2 stream (an H2Stream, the request's channel) no
# public way to its connection: these read its private ``_conn``, and answer
# "nothing to wait for" should that change (with one warning).

_H2_CONNECTION = "_conn"


def _h2_connection(channel: Any) -> Any:
    connection = getattr(channel, _H2_CONNECTION, None)
    if connection is None or not hasattr(connection, "streams"):
        _warn_once(
            "HTTP/2 drain",
            "This Twisted ({version}) hides an HTTP/2 stream's connection "
            "differently: a drain does not wait for HTTP/2 frames ({piece} off)",
        )
        return None
    return connection


def h2_stream_pending(channel: Any) -> bool:
    """Whether an HTTP/2 stream's frames are still queued in its connection."""
    connection = _h2_connection(channel)
    return channel.streamID in getattr(connection, "streams", ())


def h2_transport(channel: Any) -> Any:
    """The transport under an HTTP/2 stream's connection, or ``None``."""
    return getattr(_h2_connection(channel), "transport", None)


# --- The HTTP/1.1-or-h2 protocol a Site builds --------------------------------
# Twisted's Site builds its channels with the private
# http._genericHTTPChannelProtocolFactory: an http._GenericHTTPChannelProtocol
# proxy around an HTTPChannel, which swaps the channel for an H2Connection
# when ALPN picks h2.  The connection guard needs its own channel class in
# that proxy, and to see the swap (the old channel is then dropped without
# connectionLost) and the connection's end.  Checked once, at the first
# call; when the check fails, the guard is unavailable and the site keeps
# Twisted's channels (a warning says so).

_PROXY_CHECKED = False
_PROXY: Any = None


class _Watched(Protocol):
    """The channel a guarded protocol reports to (the guard's channel)."""

    def switched_to_h2(self) -> None: ...

    def connection_closed(self) -> None: ...


def guarded_protocol_class() -> Any:
    """
    A subclass of Twisted's HTTP/1.1-or-h2 protocol proxy, built around a
    channel (a :class:`_Watched` ``HTTPChannel``), that calls the channel's
    ``switched_to_h2`` when ALPN switched the connection to HTTP/2 and its
    ``connection_closed`` when the connection ends; ``None`` if this Twisted
    has no such class or it does not behave as expected.
    """
    global _PROXY_CHECKED, _PROXY
    if _PROXY_CHECKED:
        return _PROXY
    _PROXY_CHECKED = True
    base = getattr(http, "_GenericHTTPChannelProtocol", None)
    try:
        probe = HTTPChannel()
        usable = (
            isinstance(base, type)
            and getattr(base(probe), "_channel", None) is probe
            and callable(getattr(base, "dataReceived", None))
            and callable(getattr(base, "connectionLost", None))
        )
    except Exception:
        usable = False
    if not usable:
        _log.warn(
            "This Twisted ({version}) builds its HTTP channels differently: "
            "no request-head deadline, and no closing of connections without "
            "a request head when file descriptors run short",
            version=_twisted_version(),
        )
        return None

    class GuardedProtocol(base):  # type: ignore[misc,valid-type]
        """Twisted's HTTP/1.1-or-h2 proxy, around a watched channel."""

        _watching = True

        def __init__(self, channel: _Watched) -> None:
            super().__init__(channel)
            self._guarded = channel

        def dataReceived(self, data: bytes) -> None:
            if not self._watching:
                return super().dataReceived(data)  # type: ignore[no-any-return]
            # The first bytes are where Twisted switches to HTTP/2.
            self._watching = False
            super().dataReceived(data)
            if self._channel is not self._guarded:
                self._guarded.switched_to_h2()

        def connectionLost(self, reason: Failure) -> None:
            try:
                super().connectionLost(reason)
            finally:
                self._guarded.connection_closed()

    _PROXY = GuardedProtocol
    return _PROXY
