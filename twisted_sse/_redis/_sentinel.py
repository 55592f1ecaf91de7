"""
Finding the primary through Redis Sentinel: :class:`Sentinels`.

The sentinels of a ``redis+sentinel://`` address are asked in turn
(``SENTINEL get-master-addr-by-name <service>``), each over a short
connection of its own with a short timeout; the first that answers names
the primary, and is asked first next time.  Every
:class:`~twisted_sse._redis._link.RedisLink` of the broker asks again at
each (re)connection, and checks with ``ROLE`` that the server it reached
is the primary.

A failover is noticed three ways: the primary's connection is lost (it
died), Redis answers ``READONLY`` (it was demoted), or the periodic check
(every :data:`CHECK_INTERVAL` seconds while started) finds that the
sentinels name another primary.  This module does not subscribe to
``+switch-master``: the connection layer speaks no pub/sub, and the
periodic check notices a switch at most that many seconds late.  A switch
is counted (:attr:`Sentinels.failovers`) and told to the listeners, which
drop their connections so that they reconnect to the new primary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .._broker import BrokerUnavailable
from ._address import RedisAddress, endpoint
from ._protocol import RedisProtocol, Reply

__all__ = ["CHECK_INTERVAL", "SENTINEL_TIMEOUT", "Ask", "Sentinels"]

_log = Logger()

#: Seconds a sentinel has to connect and answer.
SENTINEL_TIMEOUT = 1.0
#: Seconds between two checks that the sentinels still name the same primary.
CHECK_INTERVAL = 1.0

#: Asks the sentinel at an address where the primary of a service is: a
#: Deferred of the reply (``[host, port]``, or nil for an unknown service).
Ask = Callable[[RedisAddress, str], "Deferred[Reply]"]


def ask_sentinel(reactor: Any, timeout: float) -> Ask:
    """
    An :data:`Ask` over a new connection each time (closed after the
    answer), with ``timeout`` to connect and as much to answer.
    """

    async def ask(address: RedisAddress, service: str) -> Reply:
        protocol = await endpoint(reactor, address, timeout).connect(
            Factory.forProtocol(lambda: RedisProtocol(reactor, timeout))
        )
        assert isinstance(protocol, RedisProtocol)
        try:
            return await protocol.execute(
                "SENTINEL", "get-master-addr-by-name", service
            )
        finally:
            protocol.abort()

    return lambda address, service: Deferred.fromCoroutine(ask(address, service))


class Sentinels:
    """
    The sentinels of a ``redis+sentinel://`` address, and what they last
    said.

    :param reactor: Provides ``IReactorTime`` (and ``IReactorTCP`` unless
        ``ask`` is given).
    :param address: A ``redis+sentinel://`` address.
    :param timeout: Seconds each sentinel has to answer.
    :param check_interval: Seconds between two checks while started.
    :param ask: How to ask one sentinel (tests give a fake).
    """

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        *,
        timeout: float = SENTINEL_TIMEOUT,
        check_interval: float = CHECK_INTERVAL,
        ask: Ask | None = None,
    ) -> None:
        if not address.sentinels or address.service is None:
            raise ValueError("the address names no sentinels")
        self.clock: IReactorTime = reactor
        self.address = address
        self.service = address.service
        self.timeout = timeout
        self.check_interval = check_interval
        self._ask = ask if ask is not None else ask_sentinel(reactor, timeout)
        #: The sentinels, the one that answered last first.
        self._order = list(address.sentinels)
        #: Whether each sentinel answered when last asked.
        self.reachable: dict[tuple[str, int], bool] = {
            sentinel: False for sentinel in address.sentinels
        }
        #: The primary the sentinels last named, or ``None``.
        self.primary: tuple[str, int] | None = None
        #: Times the sentinels named another primary than before.
        self.failovers = 0
        self._listeners: list[Callable[[], object]] = []
        self._loop: LoopingCall | None = None
        self._checking = False

    def on_switch(self, listener: Callable[[], object]) -> None:
        """Call ``listener`` whenever the sentinels name another primary."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Check every ``check_interval`` seconds (the first in that long)."""
        if self._loop is None:
            self._loop = LoopingCall(self._check)
            self._loop.clock = self.clock
            self._loop.start(self.check_interval, now=False)

    def stop(self) -> None:
        """Stop checking."""
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def state(self) -> dict[str, Any]:
        """For ``/healthz``: the service, the primary, the sentinels' state."""
        primary = self.primary
        return {
            "service": self.service,
            "primary": None if primary is None else f"{primary[0]}:{primary[1]}",
            "sentinels": {
                f"{host}:{port}": "up" if up else "down"
                for (host, port), up in self.reachable.items()
            },
            "failovers": self.failovers,
        }

    def resolve(self) -> Deferred[tuple[str, int]]:
        """
        Ask the sentinels in turn where the primary is; fails with
        :class:`~twisted_sse.BrokerUnavailable` when none knows.
        """
        return Deferred.fromCoroutine(self._resolve())

    async def _resolve(self) -> tuple[str, int]:
        errors: list[str] = []
        for sentinel in list(self._order):
            asking = self._ask(self.address.sentinel(*sentinel), self.service)
            asking.addTimeout(self.timeout, self.clock)
            try:
                reply = await asking
            except Exception as error:
                self.reachable[sentinel] = False
                errors.append(f"{sentinel[0]}:{sentinel[1]}: {type(error).__name__}")
                continue
            self.reachable[sentinel] = True
            primary = _primary(reply)
            if primary is None:
                errors.append(
                    f"{sentinel[0]}:{sentinel[1]} knows no service {self.service!r}"
                )
                continue
            if self._order[0] != sentinel:
                self._order.remove(sentinel)
                self._order.insert(0, sentinel)
            self._found(primary)
            return primary
        self.primary = None
        raise BrokerUnavailable(
            f"no sentinel named the primary of {self.service!r} ({'; '.join(errors)})"
        )

    def _found(self, primary: tuple[str, int]) -> None:
        before, self.primary = self.primary, primary
        if before is None or before == primary:
            return
        self.failovers += 1
        _log.warn(
            "Sentinel: the primary of {service} is now {host}:{port} "
            "(was {old_host}:{old_port})",
            service=self.service,
            host=primary[0],
            port=primary[1],
            old_host=before[0],
            old_port=before[1],
        )
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                _log.failure("A Sentinel switch listener failed")

    def _check(self) -> Deferred[None]:
        if self._checking:
            return succeed(None)
        self._checking = True

        def done(result: object) -> None:
            self._checking = False

        return self.resolve().addBoth(done)


def _primary(reply: Reply) -> tuple[str, int] | None:
    """The (host, port) of a ``get-master-addr-by-name`` reply, if any."""
    if not isinstance(reply, list) or len(reply) != 2:
        return None
    host, port = reply
    if isinstance(host, bytes):
        host = host.decode("utf-8", "replace")
    if isinstance(port, bytes):
        port = port.decode("ascii", "replace")
    if not isinstance(host, str) or not isinstance(port, str | int):
        return None
    try:
        return host, int(port)
    except ValueError:
        return None
