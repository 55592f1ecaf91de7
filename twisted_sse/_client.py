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

The parts live in modules of their own: the request and its redirects in
``_redirects``, the default agent that caps response heads in ``_agent``, a
connection attempt in ``_attempt``, the backoff in ``_backoff``, the
``async for`` loops in ``_iterator``.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Iterable, Mapping
from enum import IntEnum
from typing import Final

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent

from ._agent import (
    MAX_RESPONSE_HEADER_BYTES,
    MAX_RESPONSE_HEADERS,
    default_agent,
    discard,
    limit_exceeded,
)
from ._attempt import Attempt, BodyReceiver
from ._backoff import reconnect_delay
from ._event import MessageEvent
from ._iterator import ITERATOR_QUEUE_BYTES, ITERATOR_QUEUE_EVENTS, EventIterator, Loops
from ._parser import (
    DEFAULT_MAX_EVENT_DATA_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    EventParser,
    LimitExceeded,
)
from ._redirects import MAX_REDIRECTS, Fetched, RedirectRefused, fetch
from ._url import URL, check_headers, mime_essence, strict_url, subscribe_url

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

    To read several channels of a hub in one stream, give ``channels``: the
    source reads the hub's ``/subscribe`` (see
    :func:`~twisted_sse.subscribe_url`), and each event's type is the
    channel it was published on (unless it was published with a type of its
    own)::

        source = EventSource("https://hub.example", channels=["orders", "news.*"])
        source.add_listener("orders", handle_order)

    :ivar url: The URL read: the URL given, or with ``channels`` the
        ``/subscribe`` URL made from it.
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
        channels: Iterable[str] | None = None,
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
        :param channels: Channel names and patterns (``news.*``) of a hub to
            read in one stream: the source reads ``subscribe_url(url,
            channels)`` (see :func:`~twisted_sse.subscribe_url`).  The ``id``
            of each event then stands for the position in every channel, so
            the ``Last-Event-ID`` of a reconnection resumes them all.
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
        :raises ValueError: if ``url`` is not an http(s) URL, a channel
            name is invalid or ``channels`` is empty, a header or
            ``last_event_id`` is malformed, a time is negative, or a cap is
            less than 1.
        """
        if channels is not None:
            url = subscribe_url(url, channels)
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
        self._agent = agent if agent is not None else default_agent(self._clock)
        self._random = random
        self._ready_state = ReadyState.CONNECTING
        self._origin = self._url.origin
        self._listeners: dict[str, list[Callable[[MessageEvent], object]]] = {}
        self._loops = Loops(self._resume_reading)
        self._attempt: Attempt | None = None
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
        self._loops.finish(None)

    def __aiter__(self) -> EventIterator:
        iterator = EventIterator(self._loops)
        if self._ready_state is ReadyState.CLOSED:
            iterator.finish(self._final_error)
        else:
            self._loops.add(iterator)
        return iterator

    # Connecting

    def _connect(self) -> None:
        self._connect_call = None
        attempt = Attempt()
        self._attempt = attempt
        self._arm_watchdog(attempt)
        request = Deferred.fromCoroutine(
            fetch(self._agent, self._url, self._headers, self._last_event_id)
        )
        attempt.request = request

        def received(fetched: Fetched) -> None:
            self._response_received(attempt, fetched)

        def failed(failure: Failure) -> None:
            if self._attempt is not attempt:
                return  # abandoned: closed, or the watchdog gave up on it
            if isinstance(failure.value, RedirectRefused):
                refused = failure.value
                self._fail(EventSourceError(str(refused), refused.status, refused.url))
                return
            exceeded = limit_exceeded(failure)
            # A head too long reaches here wrapped by the HTTP client.
            self._retry(attempt, failure if exceeded is None else Failure(exceeded))

        request.addCallbacks(received, failed).addErrback(
            lambda failure: _log.failure("Bug in EventSource", failure)
        )

    def _response_received(self, attempt: Attempt, fetched: Fetched) -> None:
        response = fetched.response
        if self._attempt is not attempt:
            discard(response)
            return
        url = fetched.url.text
        if response.code != 200:
            discard(response)
            if response.code == 204:
                message = "the server stopped the stream (HTTP 204)"
            else:
                message = f"HTTP status {response.code}, not 200"
            self._fail(EventSourceError(message, response.code, url))
            return
        content_type = response.headers.getRawHeaders(b"content-type") or []
        if mime_essence(content_type) != "text/event-stream":
            discard(response)
            named = b", ".join(content_type).decode("latin-1") or "missing"
            self._fail(
                EventSourceError(
                    f"Content-Type {named!r} is not text/event-stream", 200, url
                )
            )
            return
        origin = fetched.url.origin
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
            discard(response)  # closed by on_open
            return
        response.deliverBody(
            BodyReceiver(
                attempt,
                lambda data: self._data_received(attempt, data),
                lambda reason: self._body_ended(attempt, reason),
            )
        )

    # Reading

    def _data_received(self, attempt: Attempt, data: bytes) -> None:
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

    def _dispatch(self, attempt: Attempt, event: MessageEvent) -> None:
        callbacks = list(self._listeners.get(event.type, ()))
        if event.type == "message" and self.on_message is not None:
            callbacks.insert(0, self.on_message)
        for callback in callbacks:
            if self._attempt is not attempt:
                return
            self._call(callback, event)
        for iterator in self._loops:
            if self._attempt is not attempt:
                return
            iterator.put(event)
            if iterator.full() and not attempt.paused and attempt.body is not None:
                # An ``async for`` lags: stop reading (the server's socket
                # fills, and it applies its own slow-client policy) rather
                # than queue without bound.
                attempt.paused = True
                attempt.body.pauseProducing()

    def _body_ended(self, attempt: Attempt, reason: Failure) -> None:
        if self._attempt is not attempt:
            return
        if attempt.parser is not None:
            attempt.parser.end()
        self._retry(attempt, reason)

    # Reconnecting and failing

    def _retry(self, attempt: Attempt, reason: Failure) -> None:
        self._attempt = None
        self._cancel_timers()
        if not attempt.delivered or isinstance(reason.value, LimitExceeded):
            self._failures += 1
        delay = reconnect_delay(
            self.reconnection_time, self._failures, self._max_backoff, self._random
        )
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
        self._loops.finish(self._final_error)
        if self.on_error is not None:
            self._call(self.on_error, Failure(error))

    def _abandon(self, attempt: Attempt) -> None:
        # Called once the attempt is no longer current, so the errors and the
        # connectionLost that these provoke are ignored.
        if attempt.body is not None:
            attempt.body.stopProducing()
        elif attempt.request is not None:
            attempt.request.cancel()

    # Timers

    def _arm_watchdog(self, attempt: Attempt) -> None:
        if not self._idle_timeout:
            return
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self._idle_timeout)
        else:
            self._idle_call = self._clock.callLater(
                self._idle_timeout, self._idle, attempt
            )

    def _resume_reading(self) -> None:
        # A loop took an event and is under half its bounds.
        attempt = self._attempt
        if attempt is None or not attempt.paused or attempt.body is None:
            return
        if self._loops.lagging():
            return
        attempt.paused = False
        attempt.body.resumeProducing()

    def _idle(self, attempt: Attempt) -> None:
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
