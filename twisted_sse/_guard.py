"""
Connection hardening for a :class:`~twisted.web.server.Site`: a deadline for
each request head, a file-descriptor budget that closes connections which
have not sent a request head before the process runs out, and the listen
backlog.

Twisted's idle timeout restarts on every byte, so a client that sends one
header line every few seconds holds its connection (and a descriptor)
forever; and when ``accept`` fails with ``EMFILE`` Twisted logs a line per
attempt and closes whatever waits in the backlog, legitimate clients
included.  A :class:`ConnectionGuard` watches the HTTP/1.x channels a site
makes (:class:`GuardedChannel`):

* a connection must deliver a complete request head within
  ``header_timeout`` seconds, counted from the connection's start for the
  first request and from the end of the previous response for the next
  request on a keep-alive connection;
* the connections still waiting for a head are kept in the order they began
  to wait; when fewer than ``fd_reserve`` descriptors are left, or
  ``accept`` fails with ``EMFILE``/``ENFILE``, the oldest of them are
  closed, as nginx drains its idle keep-alive connections.  A connection
  whose head is complete (an open event stream, a publisher's upload) is
  never touched, nor is an HTTP/2 connection.

:func:`raise_fd_limit` and :func:`check_backlog` are the start-up halves.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import ILogObserver, LogEvent, Logger, LogPublisher
from twisted.web.http import HTTPChannel
from zope.interface import implementer

from ._errors import error_body
from ._twisted import guarded_protocol_class

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_FD_RESERVE",
    "DEFAULT_HEADER_TIMEOUT",
    "ConnectionGuard",
    "GuardedChannel",
    "backlog_of",
    "check_backlog",
    "count_open_fds",
    "raise_fd_limit",
    "somaxconn",
]

_log = Logger()

#: Seconds a connection has to deliver a complete request head.
DEFAULT_HEADER_TIMEOUT = 10.0

#: Descriptors kept free for everything that is not a client connection:
#: the log file, a Redis connection and its reconnections, DNS look-ups,
#: modules imported late, Twisted's own ``EMFILE`` reserve.  When fewer are
#: left, connections waiting for a request head are closed.
DEFAULT_FD_RESERVE = 64

#: The listen backlog of a bare ``--port``: Twisted's default of 50 makes
#: the kernel drop the SYNs of a reconnect burst, whose clients then wait
#: 1, 3, 7 s for their retransmissions.
DEFAULT_BACKLOG = 1024

#: Connections closed at once when descriptors run short, beyond what is
#: needed to get back to the reserve (nginx drains 32 at a time), so that
#: the next accepts do not each close one.
EVICTION_BATCH = 32

#: Descriptors below which a new connection is closed as soon as it is
#: accepted (at most half the reserve), when nothing more can be freed in
#: time: the evicted
#: connections' descriptors are only released on the reactor's next turn,
#: and one more ``accept`` could fail with ``EMFILE``, on which Twisted
#: closes everything waiting in the backlog.
EMERGENCY_MARGIN = 8

#: Seconds a connection closed at its deadline may take to go (its last
#: bytes unread by a client that does not read) before it is aborted.
ABORT_GRACE = 5.0

#: The answer to a request head that was started but not finished in time.
REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)


def count_open_fds() -> int | None:
    """
    The number of descriptors this process has open, from ``/proc/self/fd``
    (Linux) or ``/dev/fd`` (macOS, the BSDs); ``None`` where neither can be
    listed.
    """
    for path in ("/proc/self/fd", "/dev/fd"):
        try:
            # Listing opens the directory: one entry is that descriptor.
            return len(os.listdir(path)) - 1
        except OSError:
            continue
    return None


#: What a request line starts with: a method token.
_METHOD = re.compile(rb"[A-Z]{1,16}")


class GuardedChannel(HTTPChannel):
    """
    An HTTP/1.x channel that tells its :class:`ConnectionGuard` when it
    starts waiting for a request head and when the head is complete.

    :ivar guard: The guard it reports to.
    :ivar awaiting_head: Whether the connection is waiting for a request
        head (a new connection, or a keep-alive one between requests).
    :ivar head_bytes: Whether bytes of that head have arrived.
    """

    awaiting_head = False
    head_bytes = False
    counted = False

    def __init__(self, guard: ConnectionGuard) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.guard = guard

    def connectionMade(self) -> None:
        """Start the idle timer, and the deadline of the first head."""
        super().connectionMade()  # type: ignore[no-untyped-call]
        self.guard.channel_opened(self)

    def dataReceived(self, data: bytes) -> None:
        """Note that a head has begun (for the choice of answer at its deadline)."""
        if self.awaiting_head and data:
            self.head_bytes = True
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A line of a request head longer than Twisted reads (16 KiB), which
        Twisted answers by closing the connection without a word: answer
        ``414`` for a request line (a URL that long) and ``431`` for a
        header line, in JSON, then close.
        """
        method, space, _ = line[:32].partition(b" ")
        if space and _METHOD.fullmatch(method):
            status = b"414 URI Too Long"
            reason = f"the request line is longer than {self.MAX_LENGTH} bytes"
        else:
            status = b"431 Request Header Fields Too Large"
            reason = f"a header line is longer than {self.MAX_LENGTH} bytes"
        body = error_body(reason)
        transport = self.transport
        if transport is None:
            return
        transport.write(
            b"HTTP/1.1 " + status + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Cache-Control: no-store\r\n"
            b"Connection: close\r\n"
            b"Content-Length: " + str(len(body)).encode("ascii") + b"\r\n\r\n" + body
        )
        transport.loseConnection()

    def allHeadersReceived(self) -> None:
        """The head is complete: no deadline until the response ends."""
        self.guard.head_received(self)
        super().allHeadersReceived()  # type: ignore[no-untyped-call]

    def requestDone(self, request: Any) -> None:
        """
        The response has ended: on a persistent connection the next head's
        deadline starts now.  (Twisted replays any pipelined bytes inside
        ``requestDone``; a head completed from them stops the deadline
        again.)
        """
        if self.persistent:
            self.guard.awaits_head(self)
        super().requestDone(request)  # type: ignore[no-untyped-call]

    def switched_to_h2(self) -> None:
        """ALPN switched the connection to HTTP/2: it has its own timer."""
        self.guard.channel_upgraded(self)

    def connection_closed(self) -> None:
        """The connection ended (over HTTP/1.x or HTTP/2)."""
        self.guard.channel_closed(self)


@implementer(ILogObserver)
class ConnectionGuard:
    """
    The request-head deadline and descriptor budget of one site's
    connections.  Give it to the site (``CappedSite(..., guard=guard)`` in
    ``twistd sse``), which calls :meth:`admit` for each accepted connection
    and builds its protocols with :meth:`build_protocol`.

    :param clock: Times the deadlines.
    :param header_timeout: Seconds a connection has to deliver a complete
        request head; ``None`` or ``0`` disables the deadline.
    :param fd_limit: The process's soft ``RLIMIT_NOFILE`` (see
        :func:`raise_fd_limit`); ``None`` disables the descriptor budget.
    :param fd_reserve: Descriptors kept free: when fewer are left,
        connections waiting for a request head are closed, oldest first.
        With ``0``, they are closed only when ``accept`` fails.
    :param eviction_batch: Connections closed beyond what gets the reserve
        back, so that the next accepts do not each close one.
    :param refuse: Whether :meth:`admit` may refuse a connection when no
        descriptor can be freed in time.  Only a factory that is not wrapped
        (plain TCP, UNIX) may answer ``None`` to ``buildProtocol``; Twisted's
        TLS wrapper cannot take it.
    :param count_fds: Counts the descriptors the process has open, or
        ``None`` when it cannot.
    :param log: Where the one line per shortage goes.

    :ivar evicted: Connections closed to make room, in all.
    :ivar refused: Connections closed as soon as they were accepted.
    :ivar episodes: Times descriptors have run short.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        header_timeout: float | None = DEFAULT_HEADER_TIMEOUT,
        fd_limit: int | None = None,
        fd_reserve: int = DEFAULT_FD_RESERVE,
        refuse: bool = False,
        eviction_batch: int = EVICTION_BATCH,
        count_fds: Callable[[], int | None] = count_open_fds,
        log: Logger = _log,
    ) -> None:
        if fd_reserve < 0:
            raise ValueError(f"fd_reserve must be >= 0, not {fd_reserve!r}")
        self.clock = clock
        self.header_timeout = header_timeout or None
        self.fd_limit = fd_limit
        self.fd_reserve = fd_reserve
        self.refuse = refuse
        self.eviction_batch = eviction_batch
        self.evicted = 0
        self.refused = 0
        self.episodes = 0
        self._count_fds = count_fds
        self._log = log
        self._proxy = guarded_protocol_class()
        #: Connections (counted) from their start to their end.
        self._open = 0
        #: Descriptors the process holds besides its client connections.
        self._baseline = 0
        #: Connections waiting for a request head, in the order they began
        #: to wait, with the time they began.
        self._waiting: OrderedDict[GuardedChannel, float] = OrderedDict()
        #: Evicted connections whose descriptors are not released yet.
        self._evicting: set[GuardedChannel] = set()
        #: Connections closed at their deadline, each with the call that
        #: aborts it if it lingers.
        self._aborts: dict[GuardedChannel, IDelayedCall] = {}
        self._timer: IDelayedCall | None = None
        self._short = False
        self._publisher: LogPublisher | None = None

    @property
    def available(self) -> bool:
        """
        Whether this Twisted lets the guard see request heads; when it does
        not, the site keeps Twisted's own channels and the guard does
        nothing (see :func:`~twisted_sse._twisted.guarded_protocol_class`).
        """
        return self._proxy is not None

    # The site's side.

    def start(self, publisher: LogPublisher | None = None) -> None:
        """
        Start watching: measure the descriptors the process already holds,
        and observe ``publisher`` (the global one by default) for Twisted's
        ``accept`` failures.
        """
        measured = self._count_fds()
        if measured is not None:
            self._baseline = max(0, measured - self._open)
        if self._publisher is None:
            if publisher is None:
                from twisted.logger import globalLogPublisher

                publisher = globalLogPublisher
            self._publisher = publisher
            publisher.addObserver(self)

    def stop(self) -> None:
        """Stop observing the log and cancel the deadline timer."""
        if self._publisher is not None:
            self._publisher.removeObserver(self)
            self._publisher = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def build_protocol(self) -> Any:
        """
        A new HTTP protocol for the site (its ``protocol`` factory): HTTP/1.x
        on a :class:`GuardedChannel`, switching to HTTP/2 after ALPN as
        Twisted's own does.
        """
        assert self._proxy is not None, "check ConnectionGuard.available"
        return self._proxy(GuardedChannel(self))

    def admit(self) -> bool:
        """
        Make room for a connection just accepted (its descriptor is open):
        when fewer than ``fd_reserve`` descriptors are left, close the
        oldest connections waiting for a request head.  ``False`` (only
        with ``refuse``) means close this one at once: it took one of the
        last :data:`EMERGENCY_MARGIN` descriptors (at most half the
        reserve), and those being freed are only released on the reactor's
        next turn, after the next ``accept``.
        """
        limit = self.fd_limit
        if limit is None:
            return True
        free = limit - (self._baseline + self._open + 1)
        if free >= self.fd_reserve:
            return True
        free = self._make_room("reserve", accepted=1)
        if self.refuse and free < min(EMERGENCY_MARGIN, self.fd_reserve // 2):
            self.refused += 1
            return False
        return True

    @property
    def open_connections(self) -> int:
        """Connections from their start to their end."""
        return self._open

    @property
    def waiting(self) -> list[GuardedChannel]:
        """Connections waiting for a request head, oldest first."""
        return list(self._waiting)

    # ILogObserver: Twisted's accept failures.

    def __call__(self, event: LogEvent) -> None:
        """
        Make room when Twisted logs that ``accept`` failed for want of
        descriptors (``tcp.Port.doRead``): its messages are the only sign.
        """
        error = event.get("acceptError")
        if error in ("EMFILE", "ENFILE"):
            self.accept_failed(error)
        elif str(event.get("log_format", "")).startswith("EMFILE encountered"):
            self.accept_failed("EMFILE")

    def accept_failed(self, error: str) -> None:
        """
        ``accept`` failed with ``error`` (``EMFILE`` or ``ENFILE``): the
        process (or the system) is out of descriptors, whatever the count
        says; close the oldest connections waiting for a request head.
        """
        if error == "EMFILE" and self.fd_limit is not None:
            # The process is at its limit whatever the count said (listing
            # /proc/self/fd would need a descriptor too).  ENFILE is the
            # system's limit, not the process's.
            self._baseline = max(self._baseline, self.fd_limit - self._open)
        self._make_room(error, accepted=0)

    # The channels' side: what a GuardedChannel reports.

    def channel_opened(self, channel: GuardedChannel) -> None:
        """``channel`` is connected: count it, and wait for its first head."""
        channel.counted = True
        self._open += 1
        self.awaits_head(channel)

    def awaits_head(self, channel: GuardedChannel) -> None:
        """
        ``channel`` waits for a request head (it is new, or its last
        response ended): its deadline starts now, and it may be evicted.
        """
        channel.awaiting_head = True
        channel.head_bytes = False
        waiting = self._waiting
        waiting.pop(channel, None)
        waiting[channel] = self.clock.seconds()
        if self.header_timeout is not None and self._timer is None:
            self._timer = self.clock.callLater(self.header_timeout, self._expire)

    def head_received(self, channel: GuardedChannel) -> None:
        """``channel``'s request head is complete: no deadline, no eviction."""
        channel.awaiting_head = False
        self._waiting.pop(channel, None)

    def channel_upgraded(self, channel: GuardedChannel) -> None:
        """``channel`` switched to HTTP/2 after ALPN: no longer watched."""
        # Twisted's H2Connection has its own idle timer; its streams are
        # the connection's requests, never evicted.
        self.head_received(channel)

    def channel_closed(self, channel: GuardedChannel) -> None:
        """``channel``'s connection ended (over HTTP/1.x or HTTP/2)."""
        if not channel.counted:
            return
        channel.counted = False
        channel.awaiting_head = False
        self._open -= 1
        self._waiting.pop(channel, None)
        self._evicting.discard(channel)
        abort = self._aborts.pop(channel, None)
        if abort is not None and abort.active():
            abort.cancel()
        if self._short:
            # The episode is over once the reserve is comfortably back (two
            # batches above it, so that hovering at its edge is one episode).
            limit = self.fd_limit
            if (
                not self._evicting
                if limit is None
                else limit - (self._baseline + self._open)
                >= self.fd_reserve + 2 * self.eviction_batch
            ):
                self._short = False

    # Deadlines.

    def _expire(self) -> None:
        self._timer = None
        timeout = self.header_timeout
        if timeout is None:
            return
        now = self.clock.seconds()
        waiting = self._waiting
        while waiting:
            channel, since = next(iter(waiting.items()))
            if since + timeout > now:
                self._timer = self.clock.callLater(since + timeout - now, self._expire)
                return
            del waiting[channel]
            self._time_out(channel)

    def _time_out(self, channel: GuardedChannel) -> None:
        channel.awaiting_head = False
        transport: Any = channel.transport
        if transport is None:
            return
        # A client that has begun a head is told why it is cut off, as nginx
        # and Go do (and browsers retry a request answered 408 on a reused
        # connection).  One that has sent nothing gets no answer: it may be
        # a browser's idle or pre-opened connection, and a response nobody
        # asked for could be taken as the answer to its next request.
        if channel.head_bytes:
            transport.write(REQUEST_TIMEOUT_RESPONSE)
        channel.loseConnection()  # type: ignore[no-untyped-call]
        self._aborts[channel] = self.clock.callLater(
            ABORT_GRACE, transport.abortConnection
        )

    # Descriptors.

    def _make_room(self, trigger: str, accepted: int) -> int:
        """
        Close the oldest connections waiting for a request head: when fewer
        than ``fd_reserve`` descriptors will be free once the connections
        already closing are gone, enough of them to leave ``fd_reserve``
        plus ``eviction_batch`` free; after a failed ``accept``, at least
        ``eviction_batch``.  Logs the episode's one line if it begins
        here.

        :param trigger: ``"reserve"``, ``"EMFILE"`` or ``"ENFILE"``.
        :param accepted: Connections accepted but not counted yet.
        :returns: The descriptors free now.
        """
        limit = self.fd_limit
        if not self._short:
            self._begin_episode(trigger, accepted)
        batch = self.eviction_batch
        if limit is None:
            free = 0
            wanted = batch
        else:
            free = limit - (self._baseline + self._open + accepted)
            coming = free + len(self._evicting)
            wanted = 0 if trigger == "reserve" else batch
            if coming < self.fd_reserve:
                wanted = max(wanted, self.fd_reserve + batch - coming)
        waiting = self._waiting
        for _ in range(min(wanted, len(waiting))):
            channel, _since = waiting.popitem(last=False)
            self._evict(channel)
        return free

    def _begin_episode(self, trigger: str, accepted: int) -> None:
        self._short = True
        self.episodes += 1
        if trigger == "reserve":
            # The count may have drifted (a Redis reconnection, a log file):
            # take it again, once per episode.
            measured = self._count_fds()
            if measured is not None:
                self._baseline = max(0, measured - self._open - accepted)
            cause = "fewer than the reserve left"
        else:
            cause = f"accept failed with {trigger}"
        self._log.warn(
            "Short of file descriptors ({cause}): about {open_fds} of "
            "{fd_limit} open, {fd_reserve} kept in reserve; closing "
            "connections that have not sent a request head, oldest first "
            "({waiting} such of {connections} connections)",
            cause=cause,
            trigger=trigger,
            open_fds=self._baseline + self._open + accepted,
            fd_limit=self.fd_limit,
            fd_reserve=self.fd_reserve,
            waiting=len(self._waiting),
            connections=self._open,
        )

    def _evict(self, channel: GuardedChannel) -> None:
        channel.awaiting_head = False
        self.evicted += 1
        transport: Any = channel.transport
        if transport is None:
            return
        self._evicting.add(channel)
        # No answer, no lingering: the descriptor is what is wanted.
        transport.abortConnection()


# --- Start-up ---------------------------------------------------------------


def raise_fd_limit(
    cap: int | None = None,
    *,
    getrlimit: Callable[[int], tuple[int, int]] | None = None,
    setrlimit: Callable[[int, tuple[int, int]], None] | None = None,
    log: Logger = _log,
) -> int | None:
    """
    Raise the soft ``RLIMIT_NOFILE`` to the hard limit (or to ``cap``: the
    select reactor cannot watch descriptors from ``FD_SETSIZE`` on), log
    the figure, and return the soft limit now in force; ``None`` when it is
    unlimited or cannot be read.
    """
    if resource is None:  # pragma: no cover - not on Windows
        return None
    getrlimit = getrlimit or resource.getrlimit
    setrlimit = setrlimit or resource.setrlimit
    infinity = resource.RLIM_INFINITY
    try:
        soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    previous = soft
    wanted = hard if cap is None or (hard != infinity and hard <= cap) else cap
    if soft != infinity and (wanted == infinity or wanted > soft):
        try:
            setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as error:
            log.warn(
                "Could not raise the file descriptor limit from {fd_limit} "
                "to {fd_wanted}: {error}",
                fd_limit=soft,
                fd_wanted=wanted,
                error=str(error),
            )
        else:
            soft = wanted

    def shown(value: int) -> int | str:
        return "unlimited" if value == infinity else value

    log.info(
        "File descriptor limit: {fd_limit} (was {fd_previous_limit}, hard "
        "limit {fd_hard_limit})",
        fd_limit=shown(soft),
        fd_previous_limit=shown(previous),
        fd_hard_limit=shown(hard),
    )
    return None if soft == infinity else soft


_BACKLOG = re.compile(r"(?:^|:)backlog=([0-9]+)(?=:|$)")


def backlog_of(description: str) -> int | None:
    """The ``backlog=`` an endpoint description names, if any."""
    match = _BACKLOG.search(description)
    return int(match.group(1)) if match else None


def somaxconn(path: str = "/proc/sys/net/core/somaxconn") -> int | None:
    """The kernel's cap on listen backlogs (Linux), or ``None``."""
    try:
        with open(path) as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


def check_backlog(
    description: str,
    *,
    read_somaxconn: Callable[[], int | None] = somaxconn,
    log: Logger = _log,
) -> int | None:
    """
    Log when the kernel caps the backlog ``description`` names (Linux takes
    the smaller of it and ``net.core.somaxconn``); return the backlog in
    force, or ``None`` when the description names none.
    """
    backlog = backlog_of(description)
    if backlog is None:
        return None
    cap = read_somaxconn()
    if cap is not None and 0 < cap < backlog:
        log.warn(
            "Listen backlog {backlog} is capped to {somaxconn} by the kernel "
            "(net.core.somaxconn); raise it for reconnect bursts",
            backlog=backlog,
            somaxconn=cap,
        )
        return cap
    return backlog
