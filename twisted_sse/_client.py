"""
The client: :class:`EventSource`, the browser's ``EventSource`` for Twisted.

It runs the connection as the WHATWG HTML standard says a client must
("Server-sent events", "Processing model"):

- ``GET`` with ``Accept: text/event-stream``, ``Cache-Control: no-cache`` and
  ``Last-Event-ID`` when the last event id is not empty;
- redirects (301, 302, 303, 307, 308) followed, at most 20; the events'
  origin is the final URL's; the caller's extra headers (credentials) never
  follow a redirect to another origin;
- status 200 with a ``text/event-stream`` Content-Type opens the stream; any
  other status (204, the server's "stop", included) or type fails for good;
- a network error, or the body ending after the stream opened, reconnects
  after the reconnection time (3000 ms unless the server sent ``retry:``),
  with capped exponential backoff and jitter after failed attempts (an
  attempt that delivered no event is one);
- what a server can make the client hold is capped: a line, an event's
  data, the response head; past a cap the connection is dropped and
  retried as a failed attempt;
- ``close()`` is final: nothing is delivered after it.

Redirects are followed here rather than by
:class:`~twisted.web.client.RedirectAgent`, which keeps every non-sensitive
header (``X-Api-Key``, say) across origins and does not say which URL it
ended at.

Twisted's HTTP client caps each line of a response head (16 KiB) but not
their number: a server sending headers without end fills the client's
memory.  The default agent here stands a small counter between each
connection and Twisted's protocol (through public endpoint APIs) that drops
the connection once the head passes the limits Twisted's own server puts on
a request head.
"""

from __future__ import annotations

import random as _random
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import IntEnum
from typing import Final

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IResponse
from zope.interface import implementer

from ._event import MessageEvent
from ._parser import (
    DEFAULT_MAX_EVENT_DATA_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    EventParser,
    LimitExceeded,
)
from ._url import URL, check_headers, mime_essence, strict_url

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_RECONNECTION_TIME",
    "ITERATOR_QUEUE_BYTES",
    "ITERATOR_QUEUE_EVENTS",
    "MAX_REDIRECTS",
    "MAX_RESPONSE_HEADERS",
    "MAX_RESPONSE_HEADER_BYTES",
    "EventSource",
    "EventSourceError",
    "IdleTimeout",
    "ReadyState",
    "strict_url",
]

_log = Logger()

#: Milliseconds to wait before reconnecting, until the server sends
#: ``retry:`` (the browsers' default).
DEFAULT_RECONNECTION_TIME: Final = 3000

#: Seconds of silence after which a stream is presumed dead and reopened.
#: Servers send a heartbeat every 15 s or so; 45 s tolerates two lost ones.
DEFAULT_IDLE_TIMEOUT: Final = 45.0

#: Seconds that the backoff after failed attempts never exceeds (unless the
#: server's own ``retry:`` asks for longer).
DEFAULT_MAX_BACKOFF: Final = 60.0

#: Events, and characters of their data, that may wait for one ``async for``
#: loop before the client stops reading the stream until the loop catches up
#: (to half of either).
ITERATOR_QUEUE_EVENTS: Final = 1000
ITERATOR_QUEUE_BYTES: Final = 16 * 1024 * 1024

#: Redirects followed before the connection fails (the Fetch standard's limit).
MAX_REDIRECTS: Final = 20

#: The most bytes of response head (status line, headers, line ends, and
#: those of any interim 1xx responses before it) the default agent reads
#: before it drops the connection: Twisted's server's limit on a request
#: head (``totalHeadersSize``), also Node's default.  Being no more than
#: Twisted's client's limit on one line, it is always the one that trips.
MAX_RESPONSE_HEADER_BYTES: Final = 16384

#: The most response header lines (continuation lines included) the
#: default agent reads before it drops the connection: Twisted's server's
#: limit on request headers (``maxHeaders``).
MAX_RESPONSE_HEADERS: Final = 500

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# The wait after the n-th failed attempt in a row doubles from at least this
# many seconds, so that a server sending ``retry: 0`` cannot make a client
# that fails to connect spin.
_BACKOFF_FLOOR = 1.0
# Up to this fraction of the backoff is taken off at random, so that clients
# dropped together do not come back together.
_JITTER = 0.25


class ReadyState(IntEnum):
    """The state of an :class:`EventSource`, numbered as in the browser."""

    CONNECTING = 0
    OPEN = 1
    CLOSED = 2


class EventSourceError(Exception):
    """
    Why an :class:`EventSource` failed for good: a status other than 200
    (204 is the server telling the client to stop), a Content-Type other than
    ``text/event-stream``, too many redirects, a bad redirect.

    :ivar status: The HTTP status of the response that failed it, or
        ``None`` when there was none to blame.
    :ivar url: The URL that gave that response.
    """

    def __init__(self, message: str, status: int | None = None, url: str = ""):
        super().__init__(message)
        self.status = status
        self.url = url

    @property
    def stopped(self) -> bool:
        """Whether the server asked the client to stop (status 204)."""
        return self.status == 204


class IdleTimeout(Exception):
    """A connection was silent for longer than the idle timeout."""


def _default_reactor() -> IReactorTime:
    from twisted.internet import reactor

    return reactor


def _discard(response: IResponse) -> None:
    # An unread body keeps the connection paused forever: take it and drop
    # the connection at once.
    response.deliverBody(_Discard())


class _Discard(Protocol):
    def makeConnection(self, transport: ITransport) -> None:
        producer = IPushProducer(transport, None)
        if producer is not None:
            producer.stopProducing()


class _HeadLimit(Protocol):
    """
    Stands between a connection and the HTTP client protocol: counts the
    response head as it passes, and drops the connection once it is longer
    than C{max_bytes} or has more than C{max_lines} header lines.  After the
    head, bytes pass through untouched.

    It parses lines as Twisted's client parser does (LF ends a line, one CR
    before it is dropped, an empty line ends a head, a 1xx head is followed
    by another), so that the two agree on where the head ends.
    """

    def __init__(self, wrapped: IProtocol, max_bytes: int, max_lines: int) -> None:
        self.wrapped = wrapped
        self._max_bytes = max_bytes
        self._max_lines = max_lines
        self._in_head = True
        self._head_bytes = 0
        self._header_lines = 0
        self._line = bytearray()
        # The status line of the head being read; None before it.
        self._status: bytes | None = None
        self._error: LimitExceeded | None = None

    def makeConnection(self, transport: ITransport) -> None:
        self.transport = transport
        # The HTTP protocol gets the real transport: only what it reads goes
        # through here.
        self.wrapped.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        if self._in_head:
            self._error = self._scan(data)
            if self._error is not None:
                assert self.transport is not None
                if ITCPTransport.providedBy(self.transport):
                    ITCPTransport(self.transport).abortConnection()
                else:
                    self.transport.loseConnection()
                return
        self.wrapped.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._error is not None:
            reason = Failure(self._error)
        self.wrapped.connectionLost(reason)

    def _scan(self, data: bytes) -> LimitExceeded | None:
        start = 0
        while self._in_head:
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline + 1
            self._head_bytes += end - start
            if self._head_bytes > self._max_bytes:
                return LimitExceeded(
                    f"response headers longer than {self._max_bytes} bytes",
                    self._max_bytes,
                )
            if newline < 0:
                self._line += data[start:]
                return None
            self._line += data[start:newline]
            line = bytes(self._line).removesuffix(b"\r")
            self._line.clear()
            start = end
            if self._status is None:
                self._status = line
            elif line:
                self._header_lines += 1
                if self._header_lines > self._max_lines:
                    return LimitExceeded(
                        f"more than {self._max_lines} response header lines",
                        self._max_lines,
                    )
            else:
                self._in_head = _interim(self._status)
                self._status = None
        return None


def _interim(status: bytes) -> bool:
    # Twisted's client skips a 1xx response and reads the next head.
    parts = status.split(b" ", 2)
    try:
        return len(parts) > 1 and 100 <= int(parts[1]) < 200
    except ValueError:
        return False


@implementer(IProtocolFactory)
class _HeadLimitFactory:
    """Builds the wrapped factory's protocols behind a L{_HeadLimit}."""

    def __init__(self, wrapped: IProtocolFactory) -> None:
        self._wrapped = wrapped

    def doStart(self) -> None:
        self._wrapped.doStart()

    def doStop(self) -> None:
        self._wrapped.doStop()

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        protocol = self._wrapped.buildProtocol(addr)
        if protocol is None:
            return None
        return _HeadLimit(protocol, MAX_RESPONSE_HEADER_BYTES, MAX_RESPONSE_HEADERS)


@implementer(IStreamClientEndpoint)
class _HeadLimitEndpoint:
    """An endpoint whose connections' response heads are capped."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting = self._endpoint.connect(_HeadLimitFactory(protocolFactory))

        def unwrap(protocol: IProtocol) -> IProtocol:
            # The agent talks to its own protocol, not to the counter.
            assert isinstance(protocol, _HeadLimit)
            return protocol.wrapped

        return connecting.addCallback(unwrap)


@implementer(IAgentEndpointFactory)
class _HeadLimitEndpoints:
    """
    What L{Agent} connects through by default (TCP for http, TLS with
    L{BrowserLikePolicyForHTTPS} for https), with the response head capped.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, uri.host.decode("ascii"), uri.port
        )
        if uri.scheme == b"https":
            creator = self._tls.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint, self._reactor)
        elif uri.scheme != b"http":
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        return _HeadLimitEndpoint(endpoint)


def _default_agent(reactor: IReactorTime) -> IAgent:
    agent: IAgent = Agent.usingEndpointFactory(reactor, _HeadLimitEndpoints(reactor))
    return agent


def _limit_exceeded(failure: Failure) -> LimitExceeded | None:
    """The L{LimitExceeded} that C{failure} is or wraps, if any."""
    if isinstance(failure.value, LimitExceeded):
        return failure.value
    if isinstance(failure.value, ResponseFailed | ResponseNeverReceived):
        for reason in failure.value.reasons:
            if isinstance(reason, Failure) and isinstance(reason.value, LimitExceeded):
                return reason.value
    return None


@define
class _Attempt:
    """One connection attempt: the request, then the body it opened."""

    url: URL
    request: Deferred[IResponse] | None = None
    body: IPushProducer | None = None
    parser: EventParser | None = None
    # Whether the stream dispatched an event: only that ends a run of
    # failed attempts.
    delivered: bool = False
    # Whether reading the body is paused for an ``async for`` that lags.
    paused: bool = False


class _BodyReceiver(Protocol):
    """Hands a response body to its :class:`EventSource`."""

    def __init__(self, source: EventSource, attempt: _Attempt) -> None:
        self._source = source
        self._attempt = attempt

    def makeConnection(self, transport: ITransport) -> None:
        # The "transport" of a response body is only a push producer.
        self._attempt.body = IPushProducer(transport, None)

    def dataReceived(self, data: bytes) -> None:
        self._source._data_received(self._attempt, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._source._body_ended(self._attempt, reason)


class _EventIterator:
    """One ``async for`` over an :class:`EventSource`."""

    def __init__(self, source: EventSource) -> None:
        self._source = source
        self._events: deque[MessageEvent] = deque()
        # Characters of data queued: with the count, what pauses reading.
        self._bytes = 0
        self._waiter: Deferred[MessageEvent | None] | None = None
        self._done = False
        self._error: EventSourceError | None = None

    def __aiter__(self) -> _EventIterator:
        return self

    async def __anext__(self) -> MessageEvent:
        if self._events:
            queued = self._events.popleft()
            self._bytes -= len(queued.data)
            if not self.full(low=True):
                self._source._iterator_drained()
            return queued
        if not self._done:
            self._waiter = Deferred()
            # While it waits, nothing but the source may hold the loop: a
            # fire-and-forget coroutine would otherwise be garbage collected.
            self._source._waiting.add(self)
            try:
                event = await self._waiter
            finally:
                self._waiter = None
                self._source._waiting.discard(self)
            if event is not None:
                return event
        if self._error is not None:
            raise self._error
        raise StopAsyncIteration

    def _put(self, event: MessageEvent) -> None:
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

    def _finish(self, error: EventSourceError | None) -> None:
        self._done = True
        self._error = error
        self._events.clear()
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback(None)


class EventSource:
    """
    A Server-Sent Events client, like the browser's ``EventSource``.

    It connects on the reactor's next turn (so callbacks set right after
    construction see everything), then reconnects by itself until
    :meth:`close` is called or the server makes it fail for good.  Receive
    events with the callbacks, with :meth:`add_listener`, or by iterating::

        source = EventSource("https://example.com/events")
        source.on_message = lambda event: print(event.data)
        source.add_listener("update", handle_update)

        async def consume() -> None:
            async for event in source:  # every event, of every type
                ...

    Iteration (under :meth:`Deferred.fromCoroutine
    <twisted.internet.defer.Deferred.fromCoroutine>`) yields events
    dispatched after it starts; it ends when :meth:`close` is called or the
    server answers 204, and raises :class:`EventSourceError` when the source
    fails for good otherwise.  Callbacks and loop bodies run as the data
    arrives; a :meth:`close` in one stops the delivery of everything else,
    including events already parsed from the same chunk.

    When a stream that delivered an event ends or breaks, the source waits
    :attr:`reconnection_time` and reconnects, sending ``Last-Event-ID``.
    After *n* failed attempts in a row it waits ``min(max_backoff,
    max(reconnection_time, 1 s) * 2**n)`` less a random part of up to a
    quarter, never less than the reconnection time.  A failed attempt is a
    network error, a response that never comes, a stream that ends (or goes
    silent) before it delivered an event, and a stream dropped for passing
    a cap.  Comments, heartbeats, ``retry:`` and ``id:`` lines deliver no
    event, so a server that answers ``retry: 0`` (or a heartbeat) and hangs
    up at once gets a connection after 2 s, 4 s, 8 s... and not a storm.
    The first event a stream dispatches starts the count again.

    What a server can make the source hold is capped, with defaults no real
    stream comes near: a line (``max_line_bytes``), an event's data
    (``max_event_bytes``), and, with the default agent, the response head
    (16384 bytes and 500 header lines, the limits Twisted's server puts on
    a request head).  The source stops reading as soon as a cap is passed,
    drops the connection, calls ``on_error`` with a ``LimitExceeded``
    whose message names the cap and its value (such as ``a line longer
    than max_line_bytes (16777216 bytes)``), and retries as after a failed
    attempt.

    :ivar url: The URL given.
    :ivar reconnection_time: Milliseconds to wait before reconnecting after
        an open stream ended; the server changes it with ``retry:``, and it
        persists across connections.
    :ivar on_open: Called with no argument each time a stream opens.
    :ivar on_message: Called with each event of type ``message``.
    :ivar on_error: Called with a :class:`~twisted.python.failure.Failure`
        when a connection is lost or fails to open (then
        :attr:`ready_state` is ``CONNECTING`` and a reconnect is scheduled)
        and when the source fails for good (then it is ``CLOSED`` and the
        failure wraps an :class:`EventSourceError`).  Not called by
        :meth:`close`.
    """

    CONNECTING: Final = ReadyState.CONNECTING
    OPEN: Final = ReadyState.OPEN
    CLOSED: Final = ReadyState.CLOSED

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        last_event_id: str = "",
        reconnection_time: int = DEFAULT_RECONNECTION_TIME,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_DATA_BYTES,
        agent: IAgent | None = None,
        reactor: IReactorTime | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        """
        :param url: An absolute ``http`` or ``https`` URL.
        :param headers: Extra request headers (``Authorization``, say),
            sent to the URL's origin only: a redirect to another origin drops
            them for the rest of that connection.  ``Accept``,
            ``Cache-Control`` and ``Last-Event-ID`` are set by the source.
        :param last_event_id: The id to resume from, sent as
            ``Last-Event-ID`` on the first connection.
        :param reconnection_time: The initial reconnection time in
            milliseconds.
        :param idle_timeout: Seconds without a byte from the server (or
            without a response, while connecting) after which the connection
            is dropped and reopened; ``0`` disables the watchdog.
        :param max_backoff: The most seconds to wait between failed attempts
            (unless the reconnection time is longer).
        :param max_line_bytes: The longest line of the stream accepted, in
            bytes without its line end: 16 MiB by default.
        :param max_event_bytes: The most data one event may gather, in bytes
            as sent (the line feeds between its ``data`` lines included):
            16 MiB by default.
        :param agent: The :class:`~twisted.web.iweb.IAgent` making requests;
            one that does not follow redirects itself (the source does).
            By default an :class:`~twisted.web.client.Agent` on ``reactor``
            that caps response heads; an agent given here is trusted to
            bound them itself.
        :param reactor: The reactor: the time source for reconnects and the
            watchdog, and the default agent's.  The global reactor by default.
        :param random: Returns a float in [0, 1); the source of jitter.
        :raises ValueError: if ``url`` is not an http(s) URL, a header or
            ``last_event_id`` is malformed, a time is negative, or a cap is
            less than 1.
        """
        self._url = URL.parse(strict_url(url))
        self._headers = check_headers(headers)
        if any(char in last_event_id for char in "\r\n\0"):
            raise ValueError("last_event_id must not contain CR, LF or NUL")
        if reconnection_time < 0 or idle_timeout < 0 or max_backoff < 0:
            raise ValueError("times must not be negative")
        if max_line_bytes < 1 or max_event_bytes < 1:
            raise ValueError("the caps must be at least 1 byte")
        self.url = url
        self.reconnection_time = reconnection_time
        self.on_open: Callable[[], object] | None = None
        self.on_message: Callable[[MessageEvent], object] | None = None
        self.on_error: Callable[[Failure], object] | None = None
        self._last_event_id = last_event_id
        self._idle_timeout = idle_timeout
        self._max_backoff = max_backoff
        self._max_line_bytes = max_line_bytes
        self._max_event_bytes = max_event_bytes
        self._clock = reactor if reactor is not None else _default_reactor()
        self._agent = agent if agent is not None else _default_agent(self._clock)
        self._random = random
        self._ready_state = ReadyState.CONNECTING
        self._origin = self._url.origin
        self._listeners: dict[str, list[Callable[[MessageEvent], object]]] = {}
        # Weak, so that a loop left with ``break`` is forgotten; a loop that
        # waits for an event is also held in _waiting.
        self._iterators: weakref.WeakSet[_EventIterator] = weakref.WeakSet()
        self._waiting: set[_EventIterator] = set()
        self._attempt: _Attempt | None = None
        self._final_error: EventSourceError | None = None
        self._failures = 0
        self._idle_call: IDelayedCall | None = None
        self._reconnect_delay: float | None = 0.0
        self._connect_call: IDelayedCall | None = self._clock.callLater(
            0, self._connect
        )

    # Public API

    @property
    def ready_state(self) -> ReadyState:
        """``CONNECTING`` (0), ``OPEN`` (1) or ``CLOSED`` (2)."""
        return self._ready_state

    @property
    def last_event_id(self) -> str:
        """The last event id committed, sent as ``Last-Event-ID`` on reconnect."""
        return self._last_event_id

    @property
    def origin(self) -> str:
        """The origin of the URL the current (or last) stream was read from."""
        return self._origin

    @property
    def reconnect_delay(self) -> float | None:
        """Seconds before the scheduled (re)connection, or ``None``."""
        if self._connect_call is None or not self._connect_call.active():
            return None
        return self._reconnect_delay

    def add_listener(
        self, type: str, callback: Callable[[MessageEvent], object]
    ) -> None:
        """
        Call ``callback`` with each event of type ``type`` (``message`` for
        events that name none), after :attr:`on_message`.

        :param type: The event type (the stream's ``event:`` field).
        :param callback: Called with the :class:`MessageEvent`.
        """
        self._listeners.setdefault(type, []).append(callback)

    def remove_listener(
        self, type: str, callback: Callable[[MessageEvent], object]
    ) -> None:
        """
        Undo one :meth:`add_listener` of ``callback`` for ``type``; nothing
        happens if it was not added.
        """
        callbacks = self._listeners.get(type, [])
        if callback in callbacks:
            callbacks.remove(callback)

    def close(self) -> None:
        """
        Close for good: drop the connection, cancel any reconnect, end every
        iteration.  No event is delivered after this, not even one already
        parsed.  Safe to call more than once, and from any callback.
        """
        if self._ready_state is ReadyState.CLOSED:
            return
        self._ready_state = ReadyState.CLOSED
        attempt, self._attempt = self._attempt, None
        self._cancel_timers()
        if attempt is not None:
            self._abandon(attempt)
        self._finish_iterators(None)

    def __aiter__(self) -> _EventIterator:
        iterator = _EventIterator(self)
        if self._ready_state is ReadyState.CLOSED:
            iterator._finish(self._final_error)
        else:
            self._iterators.add(iterator)
        return iterator

    # Connecting

    def _connect(self) -> None:
        self._connect_call = None
        attempt = _Attempt(self._url)
        self._attempt = attempt
        self._arm_watchdog(attempt)
        request = Deferred.fromCoroutine(self._fetch(attempt))
        attempt.request = request

        def received(response: IResponse) -> None:
            self._response_received(attempt, response)

        def failed(failure: Failure) -> None:
            if self._attempt is not attempt:
                return  # abandoned: closed, or the watchdog gave up on it
            if isinstance(failure.value, EventSourceError):
                self._fail(failure.value)
                return
            exceeded = _limit_exceeded(failure)
            # A head too long reaches here wrapped by the HTTP client.
            self._retry(attempt, failure if exceeded is None else Failure(exceeded))

        request.addCallbacks(received, failed).addErrback(
            lambda failure: _log.failure("Bug in EventSource", failure)
        )

    def _request_headers(self, extra: Sequence[tuple[str, str]]) -> Headers:
        headers = Headers()
        for name, value in extra:
            headers.addRawHeader(name.encode("ascii"), value.encode("utf-8"))
        headers.setRawHeaders(b"Accept", [b"text/event-stream"])
        headers.setRawHeaders(b"Cache-Control", [b"no-cache"])
        if self._last_event_id:
            headers.setRawHeaders(b"Last-Event-ID", [self._last_event_id.encode()])
        else:
            headers.removeHeader(b"Last-Event-ID")
        return headers

    async def _fetch(self, attempt: _Attempt) -> IResponse:
        url = self._url
        extra: Sequence[tuple[str, str]] = self._headers
        redirects = 0
        while True:
            attempt.url = url
            response = await self._agent.request(
                b"GET", url.text.encode("ascii"), self._request_headers(extra)
            )
            locations = response.headers.getRawHeaders(b"location")
            if response.code not in _REDIRECT_CODES or not locations:
                # A redirect without a Location is the response itself.
                return response
            _discard(response)
            if redirects == MAX_REDIRECTS:
                raise EventSourceError(
                    f"more than {MAX_REDIRECTS} redirects", response.code, url.text
                )
            redirects += 1
            try:
                target = URL.parse(locations[-1].decode("utf-8", "replace"), url)
            except ValueError as e:
                raise EventSourceError(
                    f"bad redirect: {e}", response.code, url.text
                ) from None
            if target.origin != url.origin:
                # Fetch: credentials never cross to another origin, and stay
                # dropped if a later hop comes back.
                extra = ()
            url = target

    def _response_received(self, attempt: _Attempt, response: IResponse) -> None:
        if self._attempt is not attempt:
            _discard(response)
            return
        url = attempt.url.text
        if response.code != 200:
            _discard(response)
            if response.code == 204:
                message = "the server stopped the stream (HTTP 204)"
            else:
                message = f"HTTP status {response.code}, not 200"
            self._fail(EventSourceError(message, response.code, url))
            return
        content_type = response.headers.getRawHeaders(b"content-type") or []
        if mime_essence(content_type) != "text/event-stream":
            _discard(response)
            named = b", ".join(content_type).decode("latin-1") or "missing"
            self._fail(
                EventSourceError(
                    f"Content-Type {named!r} is not text/event-stream", 200, url
                )
            )
            return
        origin = attempt.url.origin
        attempt.parser = EventParser(
            self._last_event_id,
            origin,
            max_line_bytes=self._max_line_bytes,
            max_event_bytes=self._max_event_bytes,
        )
        self._origin = origin
        self._ready_state = ReadyState.OPEN
        self._arm_watchdog(attempt)
        if self.on_open is not None:
            self._call(self.on_open)
        if self._attempt is not attempt:
            _discard(response)  # closed by on_open
            return
        response.deliverBody(_BodyReceiver(self, attempt))

    # Reading

    def _data_received(self, attempt: _Attempt, data: bytes) -> None:
        if self._attempt is not attempt or attempt.parser is None:
            return
        self._arm_watchdog(attempt)
        exceeded = None
        try:
            events = attempt.parser.feed(data)
        except LimitExceeded as e:
            # The events before the offending line still count.
            exceeded, events = e, e.events
        if attempt.parser.retry is not None:
            self.reconnection_time = attempt.parser.retry
        self._last_event_id = attempt.parser.last_event_id
        for event in events:
            if self._attempt is not attempt:
                return
            if not attempt.delivered:
                attempt.delivered = True
                self._failures = 0
            self._dispatch(attempt, event)
        if exceeded is not None and self._attempt is attempt:
            self._attempt = None
            self._abandon(attempt)
            self._retry(attempt, Failure(exceeded))

    def _dispatch(self, attempt: _Attempt, event: MessageEvent) -> None:
        callbacks = list(self._listeners.get(event.type, ()))
        if event.type == "message" and self.on_message is not None:
            callbacks.insert(0, self.on_message)
        for callback in callbacks:
            if self._attempt is not attempt:
                return
            self._call(callback, event)
        for iterator in list(self._iterators):
            if self._attempt is not attempt:
                return
            iterator._put(event)
            if iterator.full() and not attempt.paused and attempt.body is not None:
                # An ``async for`` lags: stop reading (the server's socket
                # fills, and it applies its own slow-client policy) rather
                # than queue without bound.
                attempt.paused = True
                attempt.body.pauseProducing()

    def _body_ended(self, attempt: _Attempt, reason: Failure) -> None:
        if self._attempt is not attempt:
            return
        if attempt.parser is not None:
            attempt.parser.end()
        self._retry(attempt, reason)

    # Reconnecting and failing

    def _next_delay(self) -> float:
        base = self.reconnection_time / 1000
        if not self._failures:
            return base
        cap = max(self._max_backoff, base)
        backoff = min(cap, max(base, _BACKOFF_FLOOR) * 2.0**self._failures)
        return max(base, backoff * (1 - _JITTER * self._random()))

    def _retry(self, attempt: _Attempt, reason: Failure) -> None:
        self._attempt = None
        self._cancel_timers()
        if not attempt.delivered or isinstance(reason.value, LimitExceeded):
            self._failures += 1
        delay = self._next_delay()
        self._ready_state = ReadyState.CONNECTING
        self._reconnect_delay = delay
        self._connect_call = self._clock.callLater(delay, self._connect)
        _log.info(
            "Reconnecting to {url} in {delay:.3f} s: {reason}",
            url=self._url.origin,
            delay=delay,
            reason=reason.getErrorMessage(),
            failures=self._failures,
        )
        if self.on_error is not None:
            self._call(self.on_error, reason)

    def _fail(self, error: EventSourceError) -> None:
        self._attempt = None
        self._cancel_timers()
        self._ready_state = ReadyState.CLOSED
        self._final_error = None if error.stopped else error
        _log.info("EventSource failed for good: {error}", error=str(error))
        self._finish_iterators(self._final_error)
        if self.on_error is not None:
            self._call(self.on_error, Failure(error))

    def _finish_iterators(self, error: EventSourceError | None) -> None:
        iterators = list(self._iterators)
        self._iterators.clear()
        for iterator in iterators:
            iterator._finish(error)

    def _abandon(self, attempt: _Attempt) -> None:
        # Called once the attempt is no longer current, so the errors and the
        # connectionLost that these provoke are ignored.
        if attempt.body is not None:
            attempt.body.stopProducing()
        elif attempt.request is not None:
            attempt.request.cancel()

    # Timers

    def _arm_watchdog(self, attempt: _Attempt) -> None:
        if not self._idle_timeout:
            return
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self._idle_timeout)
        else:
            self._idle_call = self._clock.callLater(
                self._idle_timeout, self._idle, attempt
            )

    def _iterator_drained(self) -> None:
        attempt = self._attempt
        if attempt is None or not attempt.paused or attempt.body is None:
            return
        if any(iterator.full(low=True) for iterator in self._iterators):
            return
        attempt.paused = False
        attempt.body.resumeProducing()

    def _idle(self, attempt: _Attempt) -> None:
        self._idle_call = None
        if self._attempt is not attempt:
            return
        if attempt.paused:
            # Silent because we stopped reading, not because the server did.
            self._arm_watchdog(attempt)
            return
        self._attempt = None
        self._abandon(attempt)
        self._retry(
            attempt, Failure(IdleTimeout(f"no data for {self._idle_timeout:g} s"))
        )

    def _cancel_timers(self) -> None:
        for call in (self._idle_call, self._connect_call):
            if call is not None and call.active():
                call.cancel()
        self._idle_call = self._connect_call = None

    def _call(self, callback: Callable[..., object], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            _log.failure("Error in an EventSource callback")
