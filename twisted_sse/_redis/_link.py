"""
One Redis connection kept open: :class:`RedisLink`, on Twisted's
``ClientService``.

``ClientService`` connects, reconnects after a connection fails or is lost
(waiting as :func:`retry_delay` says) and stops.  The link prepares each new
connection (``AUTH``, ``SELECT``, the version check, ``CLIENT SETNAME``,
``SCRIPT LOAD``) and only then sends commands on it; while there is no
prepared connection, :meth:`RedisLink.execute` fails at once.

The preparation is not ``ClientService``'s ``prepareConnection``: on
Twisted 26.10 a connection lost while ``prepareConnection`` runs raises
``NoTransition`` inside ``ClientService`` and leaves it connecting forever,
and a connection it rejects is left open (closing it raises the same).  So
the link prepares a connection ``ClientService`` already holds as
connected, closes it if that fails, and counts the failures itself for the
backoff (``ClientService`` restarts its count at every connection).

With Sentinel (an address from ``redis+sentinel://``), each attempt first
asks the sentinels where the primary is (see
:class:`~twisted_sse._redis._sentinel.Sentinels`), and the preparation
checks with ``ROLE`` that the server is the primary; a ``READONLY`` answer
(the server was demoted) or the sentinels naming another primary drops
the connection, which is then made again to the primary they name.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._broker import BrokerUnavailable
from ._address import RedisAddress, endpoint
from ._protocol import COMMAND_TIMEOUT, Arg, RedisCommandError, RedisProtocol, Reply
from ._sentinel import Sentinels

__all__ = ["MIN_REDIS", "MakeLink", "RedisLink", "retry_delay"]

_log = Logger()

#: Reconnection backoff: first delay (before jitter), cap, growth.
_BACKOFF_INITIAL = 0.1
_BACKOFF_MAX = 5.0
_BACKOFF_FACTOR = 2.0
#: The oldest Redis with the stream fields the broker relies on
#: (``XRANGE (id`` is 6.2; ``XINFO STREAM`` ``entries-added`` is 7.0).
MIN_REDIS = (7, 0)


def retry_delay(attempt: int, jitter: Callable[[], float] = random.random) -> float:
    """
    Seconds to wait before connection attempt ``attempt + 1`` (``attempt``
    from 1): 0.05-0.1 s, doubling up to 2.5-5 s.  The jitter (half the
    delay at most) keeps processes that lost the same Redis out of step.

    :param jitter: Gives a number in [0, 1).
    """
    delay = min(
        _BACKOFF_INITIAL * _BACKOFF_FACTOR ** min(max(attempt - 1, 0), 30),
        _BACKOFF_MAX,
    )
    return delay * (0.5 + 0.5 * jitter())


class _Factory(Factory):
    """Builds the link's protocols (``ClientService`` wants a factory)."""

    noisy = False

    def __init__(self, build: Callable[[], RedisProtocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> RedisProtocol:
        return self._build()


class RedisLink:
    """
    One connection to Redis, kept open: reconnected with backoff when it
    fails, each command with a reply timeout.

    :param reactor: The reactor to connect with (``IReactorTCP``) and to
        time with (``IReactorTime``).
    :param address: Where Redis is.
    :param name: The connection's ``CLIENT SETNAME``, also used in logs.
    :param on_ready: Called when a new connection is ready (after AUTH,
        SELECT and the version check).
    :param on_lost: Called when a ready connection is lost.
    :param timeout: Seconds a reply may take before the connection is deemed
        dead and dropped.
    :param scripts: Lua scripts to ``SCRIPT LOAD`` on each new connection
        before it is ready, so that ``EVALSHA`` finds them (a refusal, by an
        ACL say, is ignored: ``EVAL`` then sends them whole).
    :param connect_to: The endpoint to connect to; by default the one of
        ``address`` (TCP, with TLS for ``rediss://``).
    :param jitter: Gives a number in [0, 1) for :func:`retry_delay`.
    :param sentinels: For a ``redis+sentinel://`` address, the sentinels to
        ask where the primary is (shared by the links of a broker); made
        from ``address`` if ``None``.  Ignored with ``connect_to``.
    """

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        name: str,
        on_ready: Callable[[], object] | None = None,
        on_lost: Callable[[], object] | None = None,
        timeout: float = COMMAND_TIMEOUT,
        scripts: Sequence[str] = (),
        *,
        connect_to: IStreamClientEndpoint | None = None,
        jitter: Callable[[], float] = random.random,
        sentinels: Sentinels | None = None,
    ) -> None:
        self.clock: IReactorTime = reactor
        self.address = address
        self.name = name
        self.timeout = timeout
        self.scripts = tuple(scripts)
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._jitter = jitter

        if sentinels is None and address.sentinels and connect_to is None:
            sentinels = Sentinels(reactor, address)
        #: The sentinels asked at each attempt, or ``None``.
        self.sentinels = sentinels
        if sentinels is not None:
            sentinels.on_switch(self.drop)

        def target() -> IStreamClientEndpoint:
            # Made at each attempt, as it reads the CA file of rediss://.
            if connect_to is not None:
                return connect_to
            if sentinels is not None:
                return _SentinelEndpoint(reactor, address, sentinels)
            return endpoint(reactor, address)

        self._service = ClientService(
            _Reporting(target, self._connect_failed),
            _Factory(self._build),
            retryPolicy=self._retry_delay,
            clock=reactor,
        )
        #: The connection commands go to: prepared, not lost.
        self._ready: RedisProtocol | None = None
        #: The newest connection, prepared or not.
        self._newest: RedisProtocol | None = None
        #: Failed attempts since the last ready connection.
        self._failures = 0
        #: Why the last attempt failed, to log with its retry.
        self._error: str | None = None
        self._stopping = False

    @property
    def ready(self) -> bool:
        """Whether commands can be sent now."""
        return self._ready is not None

    @property
    def protocol(self) -> RedisProtocol | None:
        """The ready connection, or ``None``."""
        return self._ready

    @property
    def local_address(self) -> IAddress | None:
        """This end of the ready connection (``None`` when not ready)."""
        ready = self._ready
        if ready is None or ready.transport is None:
            return None
        host: IAddress = ready.transport.getHost()
        return host

    def start(self) -> None:
        """Start connecting (and reconnecting)."""
        if not self._service.running:
            self._stopping = False
            self._service.startService()

    def stop(self) -> Deferred[None]:
        """Stop reconnecting and close the connection; fires when closed."""
        self._stopping = True
        if not self._service.running:
            return succeed(None)
        return self._service.stopService()

    def drop(self) -> None:
        """Abort the current connection (it is reconnected)."""
        if self._newest is not None:
            self._newest.abort()

    def execute(self, *args: Arg, timeout: float | None = None) -> Deferred[Reply]:
        """
        Send one command.

        :param timeout: Seconds to wait for the reply (the link's default if
            ``None``); past it the connection is dropped.
        :returns: A Deferred firing with the reply, or failing with
            :class:`~twisted_sse.BrokerUnavailable` at once when the
            connection is down, or later when it is lost, or with
            ``RedisCommandError`` when Redis answers an error.
        """
        ready = self._ready
        if ready is None:
            return fail(BrokerUnavailable("Redis is not connected"))
        answer = ready.execute(*args, timeout=timeout)
        if self.address.sentinels:
            answer.addErrback(self._read_only, ready)
        return answer

    def _read_only(self, failure: Failure, protocol: RedisProtocol) -> Failure:
        """A ``READONLY`` answer: the primary was demoted; find the new one."""
        if failure.check(RedisCommandError) and "READONLY" in str(failure.value):
            if protocol is self._ready:
                _log.warn(
                    "Redis at {address} ({name}) is no longer the primary",
                    address=str(self.address),
                    name=self.name,
                )
                protocol.abort()
        return failure

    # The connection's life

    def _build(self) -> RedisProtocol:
        return RedisProtocol(
            self.clock, self.timeout, on_made=self._made, on_lost=self._lost
        )

    def _retry_delay(self, attempt: int) -> float:
        # ClientService counts attempts since its last connection, which
        # may be one the link refused: count here instead.
        self._failures += 1
        delay = retry_delay(self._failures, self._jitter)
        error, self._error = self._error, None
        if error is not None and (self._failures == 1 or self._failures % 20 == 0):
            _log.warn(
                "Cannot connect to Redis at {address} ({name}): {error}; "
                "retrying in {delay:.2f} s (attempt {attempt})",
                address=str(self.address),
                name=self.name,
                error=error,
                delay=delay,
                attempt=self._failures,
            )
        return delay

    def _connect_failed(self, failure: Failure) -> None:
        self._error = _describe(failure.value)

    def _made(self, protocol: RedisProtocol) -> None:
        self._newest = protocol
        Deferred.fromCoroutine(self._prepare(protocol)).addCallbacks(
            lambda _: self._prepared(protocol),
            lambda failure: self._not_prepared(protocol, failure),
        )

    def _prepared(self, protocol: RedisProtocol) -> None:
        if not protocol.open or self._stopping:
            return
        _log.info(
            "Connected to Redis at {address} ({name})",
            address=str(self.address),
            name=self.name,
        )
        self._failures = 0
        self._ready = protocol
        self._notify(self._on_ready)

    def _not_prepared(self, protocol: RedisProtocol, failure: Failure) -> None:
        if not self._stopping:
            self._error = _describe(failure.value)
        # ClientService sees a lost connection and waits as _retry_delay says.
        protocol.abort()

    def _lost(self, protocol: RedisProtocol) -> None:
        if protocol is self._newest:
            self._newest = None
        if protocol is not self._ready:
            return
        self._ready = None
        if not self._stopping:
            _log.warn(
                "Lost the connection to Redis at {address} ({name})",
                address=str(self.address),
                name=self.name,
            )
        self._notify(self._on_lost)

    def _notify(self, callback: Callable[[], object] | None) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:
            _log.failure("A Redis connection callback failed")

    async def _prepare(self, protocol: RedisProtocol) -> None:
        address = self.address

        async def send(*args: Arg) -> Reply:
            return await protocol.execute(*args)

        if address.password is not None:
            if address.username is not None:
                await send("AUTH", address.username, address.password)
            else:
                await send("AUTH", address.password)
        if address.db:
            await send("SELECT", address.db)
        if address.sentinels:
            role = await send("ROLE")
            if not isinstance(role, list) or not role or role[0] != b"master":
                raise RedisCommandError(
                    "the server the sentinels named is not the primary (yet)"
                )
        version = redis_version(await send("INFO", "server"))
        if version < MIN_REDIS:
            raise RedisCommandError(
                f"Redis {'.'.join(map(str, version))} is too old: twisted_sse "
                f"needs Redis {'.'.join(map(str, MIN_REDIS))} or later"
            )
        await send("CLIENT", "SETNAME", self.name)
        for script in self.scripts:
            try:
                await send("SCRIPT", "LOAD", script)
            except RedisCommandError as error:
                _log.debug("SCRIPT LOAD refused: {error}", error=str(error))


#: Makes a :class:`RedisLink` from its client name and its ``on_ready`` and
#: ``on_lost`` callbacks (the rest, where and how, is the maker's).
MakeLink = Callable[
    [str, Callable[[], object] | None, Callable[[], object] | None], RedisLink
]


@implementer(IStreamClientEndpoint)
class _Reporting:
    """An endpoint, made at each attempt, that tells why an attempt failed."""

    def __init__(
        self,
        make: Callable[[], IStreamClientEndpoint],
        failed: Callable[[Failure], None],
    ) -> None:
        self._make = make
        self._failed = failed

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(failure: Failure) -> Failure:
            self._failed(failure)
            return failure

        try:
            connecting: Deferred[IProtocol] = self._make().connect(protocolFactory)
        except Exception:
            connecting = fail()
        return connecting.addErrback(failed)


@implementer(IStreamClientEndpoint)
class _SentinelEndpoint:
    """Connects to the primary the sentinels name when asked."""

    def __init__(
        self, reactor: Any, address: RedisAddress, sentinels: Sentinels
    ) -> None:
        self._reactor = reactor
        self._address = address
        self._sentinels = sentinels

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        def found(primary: tuple[str, int]) -> Deferred[IProtocol]:
            where = self._address.primary(*primary)
            return endpoint(self._reactor, where).connect(protocolFactory)

        return self._sentinels.resolve().addCallback(found)


def redis_version(info: Reply) -> tuple[int, ...]:
    """The major and minor version in an ``INFO server`` reply; 0.0 if none."""
    if isinstance(info, bytes):
        text = info.decode("utf-8", "replace")
    elif isinstance(info, str):
        text = info
    else:
        return (0, 0)
    match = re.search(r"^redis_version:(\d+)\.(\d+)", text, re.MULTILINE)
    if match is None:
        return (0, 0)
    return int(match.group(1)), int(match.group(2))


def _describe(error: BaseException | None) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
