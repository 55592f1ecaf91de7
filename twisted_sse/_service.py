"""
An :class:`~twisted.application.service.IService` that serves a site holding
event streams, and ends every stream cleanly when it stops.

A plain ``strports.service`` would stop listening and let the reactor cut the
open streams at shutdown: clients see a broken chunked response (nginx
reports 502) and the terminating chunk never leaves.  This service ends each
stream (the terminating chunk), lets the kernel take the bytes, closes the
connections, and only then lets the reactor stop.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from ._registry import StreamRegistry

__all__ = ["EventStreamService"]

_log = Logger()


class EventStreamService(Service):
    """
    Listen on ``endpoint`` with ``site``; on stop, drain the open streams of
    ``registry`` (see :meth:`StreamRegistry.drain`) before the port and the
    process go away.

    Add it to a :class:`~twisted.application.service.MultiService` to embed
    event streams in an existing Twisted program; give every stream resource
    of the site the same ``registry``.

    :param endpoint: Where to listen.
    :param site: The site to serve.
    :param registry: The streams to end on stop.
    :param clock: The time source for the drain.
    :param drain: Seconds over which to spread the ends of the streams, so
        their clients do not all reconnect at the same moment.
    :param retry: Base ``retry:`` hint, in milliseconds, given to drained
        clients (each gets a random value up to ``drain`` seconds later).
    :param grace: Seconds to wait at most, after the streams have ended, for
        their connections to flush and close.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        site: Site,
        registry: StreamRegistry,
        clock: IReactorTime,
        drain: float = 0.0,
        retry: int = 1000,
        grace: float = 1.0,
    ) -> None:
        if drain < 0:
            raise ValueError(f"drain must be >= 0 seconds, not {drain!r}")
        self.endpoint = endpoint
        self.site = site
        self.registry = registry
        self.clock = clock
        self.drain = drain
        self.retry = retry
        self.grace = grace
        self.port: IListeningPort | None = None
        self._started = False
        self._failure: Failure | None = None
        self._waiting: list[Deferred[IListeningPort]] = []

    def listen(self) -> Deferred[IListeningPort]:
        """
        Start listening now (idempotent: the endpoint is asked once).  For
        TCP, TLS and UNIX endpoints the Deferred has fired, with the port or
        the failure, when this returns: ``twistd sse`` uses that to report a
        port in use in one line before anything else starts.

        :returns: A new Deferred on each call, so that one caller's callbacks
            never change what another gets.
        """
        if not self._started:
            self._started = True
            self.endpoint.listen(self.site).addBoth(self._listened)
        if self.port is not None:
            return succeed(self.port)
        if self._failure is not None:
            return fail(self._failure)
        waiting: Deferred[IListeningPort] = Deferred()
        self._waiting.append(waiting)
        return waiting

    def _listened(self, result: IListeningPort | Failure) -> None:
        waiting, self._waiting = self._waiting, []
        if isinstance(result, Failure):
            self._failure = result
            for deferred in waiting:
                deferred.errback(result)
        else:
            self.port = result
            for deferred in waiting:
                deferred.callback(result)

    def privilegedStartService(self) -> None:
        """Listen before privileges are dropped, as twistd expects."""
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listen_logged()

    def startService(self) -> None:
        """
        Listen, if :meth:`privilegedStartService` has not: a program without
        ``twistd`` (or a parent ``MultiService`` started with
        ``startService()`` alone) calls only this, as with Twisted's own
        ``StreamServerEndpointService``.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self._listen_logged()

    def _listen_logged(self) -> None:
        if not self._started:
            self.listen().addErrback(
                lambda failure: _log.failure("Cannot listen", failure)
            )

    def stopService(self) -> Deferred[None]:
        """
        Stop admitting streams, end every open stream cleanly over the drain
        window, then stop listening; fires when all of that is done.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await self.registry.drain(self.drain, self.retry, self.grace)
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)
