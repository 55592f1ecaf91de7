"""
How ``twisted-sse check`` reaches a server: the :class:`Connector` opens
each request's connection of its own, TCP, or TLS offering HTTP/2 and
HTTP/1.1 by ALPN as a browser does, and starts the
:class:`~twisted_sse._check._exchange.Exchange` on it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any, Final

from attrs import define
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint

from .._url import URL
from ._exchange import Exchange
from ._http import Recorder, Request

__all__ = ["CONNECT_TIMEOUT", "Connector"]

#: Seconds a TCP connection may take to open.
CONNECT_TIMEOUT: Final = 5.0


@define
class Connector:
    """
    Opens each request's connection: TCP, or TLS offering HTTP/2 and
    HTTP/1.1 by ALPN as a browser does.

    :ivar reactor: A reactor with TCP and time.
    :ivar trust: The certificates to trust over TLS (the platform's if
        ``None``), as :func:`twisted.internet.ssl.trustRootFromCertificates`
        makes them.
    :ivar http2: Whether to offer HTTP/2 over TLS (when the ``h2`` package
        is installed).
    :ivar endpoint_for: How to reach a URL's host; a TCP or TLS endpoint on
        ``reactor`` by default (tests give their own).
    """

    reactor: Any
    # An OpenSSL trust root: Twisted names its type in a private module only.
    trust: Any = None
    http2: bool = True
    endpoint_for: Callable[[URL], IStreamClientEndpoint] | None = None

    def _endpoint(self, url: URL) -> IStreamClientEndpoint:
        if self.endpoint_for is not None:
            return self.endpoint_for(url)
        from twisted.internet.ssl import optionsForClientTLS

        host = url.host.strip("[]")
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self.reactor, host, url.port, timeout=CONNECT_TIMEOUT
        )
        if url.scheme == "https":
            # Offered only when it can be spoken: h2 is an optional extra.
            h2 = self.http2 and importlib.util.find_spec("h2") is not None
            protocols = [b"h2", b"http/1.1"] if h2 else [b"http/1.1"]
            options = optionsForClientTLS(
                host, trustRoot=self.trust, acceptableProtocols=protocols
            )
            endpoint = wrapClientTLS(options, endpoint)
        return endpoint

    def request(
        self,
        method: str,
        url: URL,
        headers: Sequence[tuple[str, str]],
        recorder: Recorder,
        body: bytes = b"",
    ) -> Exchange:
        """Make one request (no redirect followed) and record its response."""
        exchange = Exchange(recorder)
        request = Request(method, url, tuple(headers), body)
        tls = url.scheme == "https" and self.endpoint_for is None
        try:
            endpoint = self._endpoint(url)
        except Exception as e:
            exchange.finish(f"cannot connect: {e}")
            return exchange
        exchange.connect(endpoint, request, tls)
        return exchange
