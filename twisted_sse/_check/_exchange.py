"""
One request of ``twisted-sse check`` on a connection of its own: the
:class:`Exchange` a caller holds (its end, its abort), and the
:class:`Connection` that speaks HTTP/1.1 (read by
:class:`~twisted_sse._check._h1.H1Reader`), or HTTP/2 when TLS's ALPN chose
it (:class:`~twisted_sse._check._h2.H2Stream`), and reports the response
raw to a :class:`~twisted_sse._check._http.Recorder`.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocol,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from ._h1 import H1Reader
from ._h2 import H2Stream
from ._http import Head, HTTPError, Recorder, Request

__all__ = ["Connection", "Exchange", "describe"]


class Exchange:
    """
    One request on a connection of its own; :meth:`abort` ends it.

    :ivar done: Fires once the exchange has ended and its recorder was told.
    :ivar recorder: Where the response goes.
    :ivar abort_reason: Why :meth:`abort` was called, if it was.
    :ivar ended: Whether the exchange has ended.
    """

    def __init__(self, recorder: Recorder) -> None:
        self.done: Deferred[None] = Deferred()
        self.recorder = recorder
        self.abort_reason: str | None = None
        self.ended = False
        self._connecting: Deferred[IProtocol] | None = None
        self._connection: Connection | None = None

    def connect(
        self, endpoint: IStreamClientEndpoint, request: Request, tls: bool
    ) -> None:
        """
        Connect to ``endpoint`` and make ``request`` there.

        :param tls: Whether ``endpoint`` speaks TLS: the request then waits
            for the handshake, whose ALPN may choose HTTP/2.
        """
        factory = Factory.forProtocol(lambda: Connection(self, request, tls))
        connecting = self._connecting = endpoint.connect(factory)

        def failed(reason: Failure) -> None:
            self.finish(self.abort_reason or describe(reason))

        connecting.addErrback(failed)

    def connected(self, connection: Connection) -> None:
        """``connection`` is open: an abort now drops it."""
        self._connection = connection

    def finish(self, error: str | None) -> None:
        """End the exchange (once): ``error`` says why, ``None`` if complete."""
        if self.ended:
            return
        self.ended = True
        self.recorder.end(error)
        self.done.callback(None)

    def abort(self, reason: str) -> None:
        """End the exchange now, for ``reason``."""
        if self.ended or self.abort_reason is not None:
            return
        self.abort_reason = reason
        if self._connection is not None:
            self._connection.drop()
        elif self._connecting is not None:
            self._connecting.cancel()
        else:
            self.finish(reason)


@implementer(IHandshakeListener)
class Connection(Protocol):
    """Speaks HTTP/1.1, or HTTP/2 when TLS's ALPN chose it, for one request."""

    def __init__(self, exchange: Exchange, request: Request, tls: bool) -> None:
        self.exchange = exchange
        self.request = request
        self.tls = tls
        self.h1: H1Reader | None = None
        self.h2: H2Stream | None = None
        self.error: str | None = None
        self.dropped = False

    def connectionMade(self) -> None:
        self.exchange.connected(self)
        if self.exchange.abort_reason is not None:
            self.drop()
        elif not self.tls:
            self._start(h2=False)

    def handshakeCompleted(self) -> None:
        protocol = getattr(self.transport, "negotiatedProtocol", None)
        self._start(h2=protocol == b"h2")

    def _start(self, h2: bool) -> None:
        assert self.transport is not None
        if h2:
            self.h2 = H2Stream(self, self.exchange.recorder)
            self.h2.send(self.request)
        else:
            self.h1 = H1Reader(self.request.method)
            self.transport.write(self.request.http1())

    def dataReceived(self, data: bytes) -> None:
        if self.exchange.ended or self.error is not None:
            return
        if self.h2 is not None:
            self.h2.receive(data)
            return
        if self.h1 is None:
            return
        extra = self.h1.extra
        try:
            pieces = self.h1.feed(data)
        except HTTPError as e:
            self.fail(str(e))
            return
        for piece in pieces:
            recorder = self.exchange.recorder
            stop = (
                recorder.head(piece)
                if isinstance(piece, Head)
                else recorder.body(piece)
            )
            if stop is not None:
                self.fail(stop)
                return
        # After the head they follow: a redirect's head stops the loop, and
        # its extra bytes are not the final response's.
        if self.h1.extra > extra:
            self.exchange.recorder.extra(self.h1.extra - extra)
        if self.h1.done and self.request.method != "HEAD":
            self.complete()

    def complete(self) -> None:
        """The response is whole: end the exchange and the connection."""
        self.exchange.finish(None)
        assert self.transport is not None
        self.transport.loseConnection()

    def fail(self, error: str) -> None:
        """Stop reading, for ``error``, and drop the connection."""
        if self.error is None:
            self.error = error
        self.drop()

    def drop(self) -> None:
        """Close the connection at once."""
        transport = self.transport
        if transport is None or self.dropped:
            return
        self.dropped = True
        if ITCPTransport.providedBy(transport):
            ITCPTransport(transport).abortConnection()
        else:
            transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        error = self.exchange.abort_reason or self.error
        if error is None and _mismatch(reason):
            # Some Twisted releases report the handshake complete before the
            # certificate's names are checked: the mismatch still says why.
            error = describe(reason)
        elif error is None and self.h1 is not None:
            error = self.h1.end()
        elif error is None and self.h2 is not None:
            error = self.h2.lost()
        elif error is None and self.h1 is None and self.h2 is None:
            error = describe(reason)
        self.exchange.finish(error)


def describe(reason: Failure) -> str:
    """A failure to connect or a lost connection, in one line."""
    value = reason.value
    if type(value).__module__ == "OpenSSL.SSL":
        # pyOpenSSL's errors hold a list of (library, function, reason).
        errors = value.args[0] if value is not None and value.args else []
        details = [str(error[2]) for error in errors if error]
        return "the TLS handshake failed: " + ("; ".join(details) or "no reason")
    if _mismatch(reason):
        # service_identity's error holds one mismatch per name checked.
        mismatches = getattr(value, "errors", None) or [value]
        return "the certificate is not for this host: " + "; ".join(
            str(mismatch) for mismatch in mismatches
        )
    message = reason.getErrorMessage().strip()
    return message.rstrip(".") or type(value).__name__


def _mismatch(reason: Failure) -> bool:
    """Whether ``reason`` is a certificate that names another host."""
    return type(reason.value).__module__.startswith("service_identity")
