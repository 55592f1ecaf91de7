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

from collections.abc import Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.server import Site

from ._stream import EventStream, EventStreamResource

__all__ = ["EventStreamService"]

_log = Logger()


def _connection_of(stream: EventStream) -> Any:
    request = stream.request
    if stream.is_http2:
        return None  # one stream of a shared connection: nothing to close
    return getattr(request.channel, "transport", None)


class EventStreamService(Service):
    """
    Listen on ``endpoint`` with ``site``, and on stop end the open streams of
    ``resources`` cleanly before the port and the process go away.

    Add it to a :class:`~twisted.application.service.MultiService` to embed
    event streams in an existing Twisted program.

    :param endpoint: Where to listen.
    :param site: The site to serve.
    :param resources: The stream resources whose streams to end on stop.
    :param clock: The time source for the shutdown grace period.
    :param grace: Seconds to wait at most, after ending the streams, for their
        connections to flush and close.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        site: Site,
        resources: Iterable[EventStreamResource],
        clock: IReactorTime,
        grace: float = 1.0,
    ) -> None:
        self.endpoint = endpoint
        self.site = site
        self.resources = list(resources)
        self.clock = clock
        self.grace = grace
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None

    def listen(self) -> Deferred[IListeningPort]:
        """
        Start listening now (idempotent).  For TCP, TLS and UNIX endpoints
        the Deferred has fired, with the port or the failure, when this
        returns: ``twistd sse`` uses that to report a port in use in one line
        before anything else starts.
        """
        if self._listening is None:
            self._listening = self.endpoint.listen(self.site)

            def listening(port: IListeningPort) -> IListeningPort:
                self.port = port
                return port

            self._listening.addCallback(listening)
        return self._listening

    def privilegedStartService(self) -> None:
        """Listen before privileges are dropped, as twistd expects."""
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self.listen().addErrback(lambda failure: _log.failure("Cannot listen", failure))

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting connections, end every open stream with its
        terminating chunk, and fire once their connections have closed (or
        after ``grace`` seconds).
        """
        super().stopService()  # type: ignore[no-untyped-call]
        if self.port is None:
            return succeed(None)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        assert self.port is not None
        stopped = self.port.stopListening()
        if stopped is not None:
            await stopped
        connections = []
        for resource in self.resources:
            for stream in list(resource.streams):
                connection = _connection_of(stream)
                stream.close()
                if connection is not None:
                    # Flushes what is buffered (the terminating chunk), then
                    # closes: no half-written response for a proxy to report.
                    connection.loseConnection()
                    connections.append(connection)
        waited = 0.0
        step = 0.02
        while waited < self.grace and any(
            not getattr(c, "disconnected", True) for c in connections
        ):
            await deferLater(self.clock, step)
            waited += step
