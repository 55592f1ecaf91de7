"""
Where a Redis server is: :class:`RedisAddress`, parsed from a ``redis://``
URL by :func:`parse_redis_url`, and the Twisted endpoint that reaches it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from attrs import field, frozen
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint

__all__ = ["CONNECT_TIMEOUT", "RedisAddress", "endpoint", "parse_redis_url"]

#: Seconds to wait for a TCP (and TLS) connection.
CONNECT_TIMEOUT = 5.0


@frozen
class RedisAddress:
    """
    Where a Redis server is and how to log in, from a ``redis://`` URL.

    :ivar host: Host name or address.
    :ivar port: TCP port.
    :ivar db: Database number (``SELECT``).
    :ivar username: ACL user name (Redis 6+), or ``None``.
    :ivar password: Password, or ``None``; never shown by ``str`` or
        ``repr``.
    :ivar tls: Whether to speak TLS (``rediss://``).
    :ivar ca_certs: A PEM file of the authorities that sign the server's
        certificate (``rediss://...?ssl_ca_certs=/path``); the system's
        trust roots if ``None``.
    """

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_certs: str | None = None

    def __str__(self) -> str:
        """The URL with the password masked, for logs and messages."""
        scheme = "rediss" if self.tls else "redis"
        login = ""
        if self.username is not None or self.password is not None:
            login = (self.username or "") + (":***" if self.password else "") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{login}{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """
    Parse ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for
    TLS, with an optional ``?ssl_ca_certs=/path/ca.pem``).

    :raises ValueError: naming what is wrong; the message never contains the
        password.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise ValueError("the URL must start with redis:// or rediss://")
    try:
        host = parts.hostname
        port = parts.port
    except ValueError:
        raise ValueError("the Redis URL has an invalid port") from None
    if not host:
        raise ValueError("the Redis URL names no host, as in redis://host:6379/0")
    if port == 0:
        raise ValueError("the Redis URL has an invalid port")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(
            "the Redis database must be a number, as in redis://host:6379/0"
        )
    ca_certs = None
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "ssl_ca_certs" and scheme == "rediss" and value:
            ca_certs = value
        else:
            raise ValueError(
                f"unknown Redis URL parameter {name!r} (only ssl_ca_certs, "
                "with rediss://)"
            )
    if parts.fragment:
        raise ValueError("a Redis URL has no #fragment")
    return RedisAddress(
        host=host,
        port=port if port is not None else 6379,
        db=int(path) if path else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=scheme == "rediss",
        ca_certs=ca_certs,
    )


def endpoint(
    reactor: Any, address: RedisAddress, timeout: float = CONNECT_TIMEOUT
) -> IStreamClientEndpoint:
    """
    The endpoint that reaches ``address``: TCP (every address of the host
    name, as ``HostnameEndpoint`` tries them), wrapped in TLS that checks the
    server's certificate for ``rediss://``.

    :param reactor: Provides ``IReactorTCP`` and ``IReactorTime``.
    :param timeout: Seconds a connection attempt may take.
    """
    tcp: IStreamClientEndpoint = HostnameEndpoint(
        reactor, address.host, address.port, timeout=timeout
    )
    if not address.tls:
        return tcp
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    trust_root = None
    if address.ca_certs is not None:
        with open(address.ca_certs, "rb") as pem:
            trust_root = Certificate.loadPEM(pem.read())
    return wrapClientTLS(optionsForClientTLS(address.host, trustRoot=trust_root), tcp)
