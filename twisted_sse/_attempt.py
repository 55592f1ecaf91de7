"""
One connection attempt of an :class:`~twisted_sse.EventSource`: its state
(the request, then the body it opened and the parser reading it), and the
protocol that hands the body on.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from ._parser import EventParser
from ._redirects import Fetched

__all__ = ["Attempt", "BodyReceiver"]


@define
class Attempt:
    """One connection attempt: the request, then the body it opened."""

    request: Deferred[Fetched] | None = None
    body: IPushProducer | None = None
    parser: EventParser | None = None
    # Whether the stream dispatched an event: only that ends a run of
    # failed attempts.
    delivered: bool = False
    # Whether reading the body is paused for an ``async for`` that lags.
    paused: bool = False


class BodyReceiver(Protocol):
    """
    Reads the response body of an attempt: keeps the body's producer in the
    attempt (to pause, resume or drop it), and hands each chunk, then the
    end, to the callables given.
    """

    def __init__(
        self,
        attempt: Attempt,
        received: Callable[[bytes], object],
        ended: Callable[[Failure], object],
    ) -> None:
        self._attempt = attempt
        self._received = received
        self._ended = ended

    def makeConnection(self, transport: ITransport) -> None:
        # The "transport" of a response body is only a push producer.
        self._attempt.body = IPushProducer(transport, None)

    def dataReceived(self, data: bytes) -> None:
        self._received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._ended(reason)
