"""
The client's default agent: Twisted's :class:`~twisted.web.client.Agent`,
with a cap on the response head of every connection it makes.

Twisted's HTTP client caps each line of a response head (16 KiB) but not
their number: a server sending headers without end fills the client's
memory.  The default agent stands a small counter, :class:`HeadLimit`,
between each connection and Twisted's protocol (through public endpoint
APIs) that drops the connection once the head passes the limits Twisted's
own server puts on a request head.

Also here, what the client does with the agent's answers whatever agent it
uses: :func:`discard` a response it will not read, and
:func:`limit_exceeded` to find the cap behind a failed request.
"""

from __future__ import annotations

import inspect
from typing import Final

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IResponse
from zope.interface import implementer

from ._parser import LimitExceeded

# wrapClientTLS takes the clock its TLS timers run on from Twisted 26.4;
# before, they run on the global reactor.
_TLS_TAKES_CLOCK = "clock" in inspect.signature(wrapClientTLS).parameters

__all__ = [
    "MAX_RESPONSE_HEADERS",
    "MAX_RESPONSE_HEADER_BYTES",
    "HeadLimit",
    "HeadLimitEndpoint",
    "HeadLimitEndpoints",
    "HeadLimitFactory",
    "default_agent",
    "discard",
    "limit_exceeded",
]

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


def discard(response: IResponse) -> None:
    """
    Drop ``response`` unread, and its connection with it.

    An unread body keeps the connection paused forever: take it and drop
    the connection at once.
    """
    response.deliverBody(_Discard())


class _Discard(Protocol):
    def makeConnection(self, transport: ITransport) -> None:
        producer = IPushProducer(transport, None)
        if producer is not None:
            producer.stopProducing()


def limit_exceeded(failure: Failure) -> LimitExceeded | None:
    """
    The :class:`~twisted_sse.LimitExceeded` that ``failure`` is or wraps,
    if any: a head too long reaches the agent's caller wrapped by the HTTP
    client.
    """
    if isinstance(failure.value, LimitExceeded):
        return failure.value
    if isinstance(failure.value, ResponseFailed | ResponseNeverReceived):
        for reason in failure.value.reasons:
            if isinstance(reason, Failure) and isinstance(reason.value, LimitExceeded):
                return reason.value
    return None


class HeadLimit(Protocol):
    """
    Stands between a connection and the HTTP client protocol: counts the
    response head as it passes, and drops the connection once it is longer
    than ``max_bytes`` or has more than ``max_lines`` header lines.  After
    the head, bytes pass through untouched.

    It parses lines as Twisted's client parser does (LF ends a line, one CR
    before it is dropped, an empty line ends a head, a 1xx head is followed
    by another), so that the two agree on where the head ends.

    :ivar wrapped: The HTTP client protocol it stands in front of.
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

    @property
    def exceeded(self) -> LimitExceeded | None:
        """The cap the head passed, once it has (and the connection is dropped)."""
        return self._error

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
class HeadLimitFactory:
    """
    Builds the wrapped factory's protocols behind a :class:`HeadLimit` of
    :data:`MAX_RESPONSE_HEADER_BYTES` and :data:`MAX_RESPONSE_HEADERS`.
    """

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
        return HeadLimit(protocol, MAX_RESPONSE_HEADER_BYTES, MAX_RESPONSE_HEADERS)


@implementer(IStreamClientEndpoint)
class HeadLimitEndpoint:
    """An endpoint whose connections' response heads are capped."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting = self._endpoint.connect(HeadLimitFactory(protocolFactory))

        def unwrap(protocol: IProtocol) -> IProtocol:
            # The agent talks to its own protocol, not to the counter.
            assert isinstance(protocol, HeadLimit)
            return protocol.wrapped

        return connecting.addCallback(unwrap)


@implementer(IAgentEndpointFactory)
class HeadLimitEndpoints:
    """
    What :class:`~twisted.web.client.Agent` connects through by default
    (TCP for http, TLS with
    :class:`~twisted.web.client.BrowserLikePolicyForHTTPS` for https), with
    the response head capped.
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
            if _TLS_TAKES_CLOCK:
                endpoint = wrapClientTLS(creator, endpoint, self._reactor)
            else:
                endpoint = wrapClientTLS(creator, endpoint)
        elif uri.scheme != b"http":
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        return HeadLimitEndpoint(endpoint)


def default_agent(reactor: IReactorTime) -> IAgent:
    """
    The agent of an :class:`~twisted_sse.EventSource` given none: an
    :class:`~twisted.web.client.Agent` on ``reactor`` through
    :class:`HeadLimitEndpoints`.
    """
    agent: IAgent = Agent.usingEndpointFactory(reactor, HeadLimitEndpoints(reactor))
    return agent
