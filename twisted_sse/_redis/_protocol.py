"""
One Redis connection on hiredis: commands packed by ``hiredis.pack_command``,
replies parsed by ``hiredis.Reader`` and matched in order to the Deferreds of
the commands sent, each with a reply timeout.

Redis answers the commands of a connection in the order they were sent
(RESP2), so a FIFO of Deferreds is all the matching there is.  A connection
that subscribes (sharded pub/sub, for Redis Cluster) is first prepared
with commands, then handed to :meth:`RedisProtocol.listen`: from then on
every message goes to one handler, and commands are sent with
:meth:`RedisProtocol.send`, unanswered.  A reply that takes longer
than its timeout means that every reply behind it is stuck too: the
connection is aborted, which fails every pending command, and whoever owns
the connection (:class:`~twisted_sse._redis._link.RedisLink`) opens another.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, Union

import hiredis
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._broker import BrokerUnavailable

__all__ = [
    "COMMAND_TIMEOUT",
    "Arg",
    "Commands",
    "RedisCommandError",
    "RedisProtocol",
    "Reply",
    "no_delay",
]

_log = Logger()

#: Seconds to wait for a reply before the connection is deemed dead.
COMMAND_TIMEOUT = 5.0


class RedisCommandError(BrokerUnavailable):
    """Redis refused a command (out of memory, read-only replica, ACL, ...)."""


#: A Redis reply as ``hiredis.Reader`` gives it with no encoding: bulk
#: strings and status lines as bytes, integers, nil, arrays, and the errors
#: nested in arrays as :class:`RedisCommandError` values.  (``str`` is for
#: fakes that answer status lines as text.)
Reply = Union[bytes, str, int, None, list["Reply"], Exception]  # noqa: UP007
#: A command argument.
Arg = str | bytes | int


class Commands(Protocol):
    """Something that runs Redis commands: a connection or a link."""

    def execute(self, *args: Arg, timeout: float | None = None) -> Deferred[Reply]:
        """Send one command; a Deferred firing with its reply."""


class RedisProtocol(TwistedProtocol):
    """
    A Redis connection: :meth:`execute` sends a command and returns a
    Deferred of its reply.

    An error reply fails the command's Deferred with
    :class:`RedisCommandError`; errors inside an array reply (a script's or
    ``EXEC``'s) stay values in the array, as :class:`RedisCommandError`\\ s.
    Losing the connection fails every pending command with
    :class:`~twisted_sse.BrokerUnavailable`; so does a reply timeout, which
    aborts the connection.

    :param clock: Times the replies.
    :param timeout: Seconds a reply may take (default of :meth:`execute`).
    :param on_made: Called with the protocol when the connection is made.
    :param on_lost: Called with the protocol when it is lost, after the
        pending commands failed.
    """

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float = COMMAND_TIMEOUT,
        on_made: Callable[[RedisProtocol], object] | None = None,
        on_lost: Callable[[RedisProtocol], object] | None = None,
    ) -> None:
        self.clock = clock
        self.timeout = timeout
        self._on_made = on_made
        self._on_lost = on_lost
        # No encoding: event data need not be UTF-8, and a foreign entry
        # must not break decoding.  Numbers stay text (data "42" is text).
        self._reader = hiredis.Reader(replyError=RedisCommandError)
        #: The commands sent and not answered: Deferred, name, deadline.
        self._pending: deque[tuple[Deferred[Reply], Arg, float]] = deque()
        #: Fires at the earliest deadline of a pending command, at most one.
        self._timer: IDelayedCall | None = None
        self._open = False
        #: Why the connection is being closed, if this protocol closes it.
        self._why = "lost the connection to Redis"
        #: Once listening: where every message goes.
        self._push: Callable[[Reply], object] | None = None

    @property
    def open(self) -> bool:
        """Whether commands can be sent (connected, not lost)."""
        return self._open

    @property
    def pending(self) -> int:
        """How many commands wait for their reply."""
        return len(self._pending)

    def connectionMade(self) -> None:
        """Connected: set ``TCP_NODELAY``; tell ``on_made``."""
        self._open = True
        no_delay(self.transport)
        if self._on_made is not None:
            self._on_made(self)

    def execute(self, *args: Arg, timeout: float | None = None) -> Deferred[Reply]:
        """
        Send one command.

        :param timeout: Seconds to wait for the reply (the protocol's
            default if ``None``); past it the connection is aborted.
        :returns: A Deferred firing with the reply, or failing with
            :class:`RedisCommandError` when Redis answers an error, or with
            :class:`~twisted_sse.BrokerUnavailable` when the connection is
            closed, lost or aborted for a late reply.
        """
        if not self._open:
            return fail(BrokerUnavailable("Redis is not connected"))
        try:
            # hiredis's stub types the tuple as one item long.
            packed = hiredis.pack_command(args)  # type: ignore[arg-type]
        except Exception as error:
            return fail(error)
        answer: Deferred[Reply] = Deferred()
        clock = self.clock
        deadline = clock.seconds() + (self.timeout if timeout is None else timeout)
        self._pending.append((answer, args[0], deadline))
        transport: Any = self.transport
        transport.write(packed)
        timer = self._timer
        if timer is None:
            self._timer = clock.callLater(deadline - clock.seconds(), self._expire)
        elif deadline < timer.getTime():
            timer.reset(deadline - clock.seconds())
        return answer

    def listen(self, handler: Callable[[Reply], object]) -> None:
        """
        From now on, hand every message to ``handler`` (pub/sub): the
        commands still waiting for a reply are answered first.  Commands
        are then sent with :meth:`send`.
        """
        self._push = handler

    def send(self, *args: Arg) -> None:
        """Send one command whose answer goes to the :meth:`listen` handler."""
        if self._open:
            transport: Any = self.transport
            transport.write(hiredis.pack_command(args))  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        """Parse what arrived; fire the commands it answers, in order."""
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError:
                _log.failure("Redis sent something that is not RESP2")
                self.abort("Redis sent something that is not RESP2")
                return
            if reply is False:
                return
            if not pending and self._push is not None:
                try:
                    self._push(reply)
                except Exception:
                    _log.failure("A Redis message handler failed")
                continue
            if not pending:
                _log.error("Redis sent a reply to no command")
                self.abort("Redis sent a reply to no command")
                return
            answer, name, _ = pending.popleft()
            if isinstance(reply, RedisCommandError):
                text = str(reply)
                if text.startswith("ERR "):
                    text = text[4:]
                answer.errback(RedisCommandError(f"Redis refused {name!r}: {text}"))
            else:
                answer.callback(reply)

    def _expire(self) -> None:
        self._timer = None
        if not self._pending:
            return
        now = self.clock.seconds()
        earliest = min(deadline for _, _, deadline in self._pending)
        if earliest <= now:
            # Every command behind this one is stuck too: aborting fails
            # them all, and the owner reconnects.
            self.abort("Redis did not answer in time")
        else:
            self._timer = self.clock.callLater(earliest - now, self._expire)

    def abort(self, why: str = "lost the connection to Redis") -> None:
        """Abort the connection; pending commands fail with ``why``."""
        if self._open:
            self._why = why
            self._open = False
            transport: Any = self.transport
            transport.abortConnection()

    def close(self) -> None:
        """Close the connection once what was written is sent."""
        if self._open:
            self._open = False
            transport: Any = self.transport
            transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Fail every pending command; tell ``on_lost``."""
        self._open = False
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        pending, self._pending = self._pending, deque()
        if pending:
            error = BrokerUnavailable(self._why)
            for answer, _, _ in pending:
                answer.errback(error)
        if self._on_lost is not None:
            self._on_lost(self)


def no_delay(transport: Any) -> None:
    """
    Set ``TCP_NODELAY`` on ``transport``, or on the TCP transport under it
    (TLS).
    """
    # Commands are small writes, often several in flight: with Nagle's
    # algorithm each one waits for the ACK of the previous, which Redis's
    # kernel may delay by 40 ms.  Measured (bench/run.py, hub-redis, 1000
    # clients, saturation): 38k -> 112k-189k deliveries/s, p99 610 -> 41-58 ms.
    while transport is not None:
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
            return
        transport = getattr(transport, "transport", None)
