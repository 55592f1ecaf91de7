"""
The site of ``twistd sse``: request bodies kept only up to the largest
publish, a request with a body judged on its head (its token and its
declared length) before the body is read, refused with a lingering close,
and an access log that can be turned off.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.server import Request, Site

from ._errors import error_body
from ._guard import ConnectionGuard
from ._hub import Hub

__all__ = ["LINGER", "CappedBody", "CappedSite"]

_log = Logger()


class CappedBody(BytesIO):
    """
    A request body kept up to ``cap`` bytes; the rest is read from the
    connection and dropped.
    """

    def __init__(self, cap: int) -> None:
        super().__init__()
        self._room = cap

    def write(self, data: Any, /) -> int:
        """Keep what fits; report all of ``data`` as written."""
        room = self._room
        if room > 0:
            kept = data[:room]
            self._room = room - len(kept)
            super().write(kept)
        return len(data)


#: Seconds a refused request's connection stays open reading (and
#: dropping) what the client had already sent: see _Request.
LINGER = 2.0


class _Request(Request):
    """
    A request of ``twistd sse``.  A request with a body can only be a
    publish (no other resource of the server takes one), so it is judged on
    its head, as soon as Twisted has parsed the headers (``gotLength``): a
    missing or wrong token (401), publishing turned off (403) or a declared
    length over ``--max-event-bytes`` (413) is answered at once, before
    ``100 Continue``, and the connection is closed.  Without that, anyone
    could make the server read, and pay for, an endless chunked body.

    The close lingers, as nginx's does: closing a socket with unread bytes
    makes the kernel reset the connection, and a reset can destroy the
    answer before the client reads it.  So what the client had already sent
    is read and dropped, up to ``--max-event-bytes`` and for :data:`LINGER`
    seconds at most; a client that honours ``Expect: 100-continue`` sends
    nothing and gets its answer, one that keeps sending past the bound is
    cut off.
    """

    refused = False
    _dropped = 0
    _linger: IDelayedCall | None = None

    def gotLength(self, length: int | None) -> None:
        """Refuse an unwelcome body before reading it, else make room for it."""
        # HTTP/1.x only: an HTTP/2 stream's body is paced by flow control,
        # and capped as it arrives (CappedSite.getContentFile).
        channel = self.channel
        site = (
            getattr(channel, "site", None) if isinstance(channel, HTTPChannel) else None
        )
        if (
            isinstance(site, CappedSite)
            and site.hub is not None
            and _has_body(self, length)
        ):
            refused = site.hub.publish_refused(self, length)
            if refused is not None:
                self._refuse(site, refused.code, refused.reason, refused.challenge)
                return
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def _refuse(
        self, site: CappedSite, code: int, message: str, challenge: bytes | None
    ) -> None:
        self.refused = True
        self._room = site.max_body
        # Nothing of the body is kept, and no "100 Continue" invites the
        # client to send it.
        self.content = CappedBody(0)
        self.requestHeaders.removeHeader(b"Expect")
        body = error_body(message)
        head = [
            b"HTTP/1.1 %d %s" % (code, RESPONSES.get(code, b"Error")),
            b"Content-Type: application/json",
            b"Cache-Control: no-store",
            b"Content-Length: %d" % len(body),
            b"Connection: close",
        ]
        if challenge is not None:
            head.append(b"WWW-Authenticate: " + challenge)
        transport: Any = self.channel.transport
        transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self._linger = site.reactor.callLater(LINGER, self._close)
        # Twisted tells a request's notifications when its connection goes:
        # no lingering left to end then.  (Not an override of
        # connectionLost: a request class that overrides it loses the
        # streams' direct writes, see _twisted.direct_transport.)
        self.notifyFinish().addBoth(self._lingered)
        _log.info(
            "Refused a request body from {peer} on its head: {code} {reason}",
            peer=_peer(transport),
            code=code,
            reason=message,
        )

    def handleContentChunk(self, data: bytes) -> None:
        """Drop a refused body, up to the bound; keep anything else."""
        if not self.refused:
            super().handleContentChunk(data)  # type: ignore[no-untyped-call]
            return
        self._dropped += len(data)
        if self._dropped > self._room:
            self._close()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """A refused request was answered already: close once its body is in."""
        if self.refused:
            self._close()
        else:
            super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    def _lingered(self, result: object) -> None:
        """The connection went away: no lingering left to end."""
        self._stop_lingering()

    def _close(self) -> None:
        self._stop_lingering()
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.loseConnection()

    def _stop_lingering(self) -> None:
        linger, self._linger = self._linger, None
        if linger is not None and linger.active():
            linger.cancel()


def _has_body(request: Request, length: int | None) -> bool:
    if length is not None:
        return length > 0
    return request.requestHeaders.hasHeader(b"Transfer-Encoding")


def _peer(transport: Any) -> str:
    try:
        return str(getattr(transport.getPeer(), "host", "?"))
    except Exception:
        return "?"


class CappedSite(Site):
    """
    The site of ``twistd sse``.  Twisted keeps a request's whole body before
    the resource sees it, in a temporary file beyond 100 KB, and anyone may
    send one: the token is checked only then.  Here a body is kept up to
    one byte more than the largest publish (``--max-event-bytes``), which
    is all the hub needs to answer ``413``; the rest is read and dropped.
    No other resource of the server takes a body.

    :param max_body: The largest request body kept, in bytes.
    :param hub: The hub whose publish rules judge a body on its head.
    :param guard: The request-head deadline and descriptor budget.
    :param access_log: Whether to write an access-log line per request
        (``--access-log``).  With ``False``, :meth:`log` does nothing: no
        line is formatted and no log event built.
    :param options: Passed to :class:`~twisted.web.server.Site`
        (``timeout``, ``logFormatter``, ``reactor``...).
    """

    def __init__(
        self,
        resource: Any,
        *,
        max_body: int,
        hub: Hub | None = None,
        guard: ConnectionGuard | None = None,
        access_log: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(resource, **options)  # type: ignore[no-untyped-call]
        #: Whether requests get an access-log line (it may be changed while
        #: the site runs).
        self.access_log = access_log
        self.max_body = max_body
        #: The hub whose publish rules judge a request body on its head.
        self.hub = hub
        self.requestFactory = _Request
        #: The request-head deadline and descriptor budget of the connections.
        self.guard = guard if guard is not None and guard.available else None

    def log(self, request: Any) -> None:
        """Write ``request``'s access-log line, unless the access log is off."""
        if self.access_log:
            super().log(request)

    def getContentFile(self, length: int | None) -> BytesIO:
        """A body for a new request (Twisted's ``Request.gotLength`` hook)."""
        return CappedBody(self.max_body + 1)

    def protocol(self) -> Any:
        """
        A new HTTP protocol (``Factory.buildProtocol`` calls this): Twisted's,
        on a channel that reports its request heads to the guard if any.
        """
        if self.guard is not None:
            return self.guard.build_protocol()
        return Site.protocol(self)

    def buildProtocol(self, addr: Any) -> Any:
        """
        A channel for a connection just accepted, once the guard has made
        room for it; ``None`` (close it at once) when no descriptor is left.
        """
        if self.guard is not None and not self.guard.admit():
            return None
        return super().buildProtocol(addr)  # type: ignore[no-untyped-call]

    def startFactory(self) -> None:
        """Start the guard with the site (when its port starts listening)."""
        super().startFactory()
        if self.guard is not None:
            self.guard.start()

    def stopFactory(self) -> None:
        """Stop the guard with the site."""
        if self.guard is not None:
            self.guard.stop()
        super().stopFactory()
