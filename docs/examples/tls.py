"""
Serve a site over TLS; with ``Twisted[http2]`` installed, clients that offer
HTTP/2 get it (the Site offers ``h2`` by ALPN).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint


def tls_endpoint(
    reactor: Any, key: str, cert: str, port: int = 8443, chain: str | None = None
) -> IStreamServerEndpoint:
    """
    A TLS endpoint from PEM files: the private key, the certificate and, if
    the certificate authority gave one, the intermediate chain.
    """
    description = (
        f"ssl:{port}:privateKey={quoteStringArgument(key)}"
        f":certKey={quoteStringArgument(cert)}"
    )
    if chain is not None:
        description += f":extraCertChain={quoteStringArgument(chain)}"
    endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    return endpoint
