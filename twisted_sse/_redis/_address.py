"""
Where a Redis server is: :class:`RedisAddress`, parsed from a ``redis://``
URL (or a ``redis+sentinel://`` one, which names the sentinels that know
where the primary is, or a ``redis+cluster://`` one, which names some
nodes of a Redis Cluster) by :func:`parse_redis_url`, and the Twisted
endpoint that reaches it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from attrs import evolve, field, frozen
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint

__all__ = [
    "CONNECT_TIMEOUT",
    "SENTINEL_PORT",
    "RedisAddress",
    "endpoint",
    "parse_redis_url",
]

#: Seconds to wait for a TCP (and TLS) connection.
CONNECT_TIMEOUT = 5.0
#: The port of a sentinel named without one.
SENTINEL_PORT = 26379


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
    :ivar sentinels: For ``redis+sentinel://``: the sentinels (host, port)
        to ask where the primary of ``service`` is; empty otherwise.
        ``host`` and ``port`` are then the first sentinel's.
    :ivar service: The name the sentinels monitor the primary under
        (``redis+sentinel://`` only).
    :ivar cluster: For ``redis+cluster://``: the seed nodes (host, port)
        of a Redis Cluster, asked in turn for its slot map; empty
        otherwise.  ``host`` and ``port`` are then the first seed's, and
        ``db`` is 0 (a cluster has no other database).
    """

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_certs: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    cluster: tuple[tuple[str, int], ...] = ()

    def __str__(self) -> str:
        """The URL with the password masked, for logs and messages."""
        scheme = "rediss" if self.tls else "redis"
        login = ""
        if self.username is not None or self.password is not None:
            login = (self.username or "") + (":***" if self.password else "") + "@"
        if self.sentinels:
            hosts = ",".join(_host_port(*sentinel) for sentinel in self.sentinels)
            return f"{scheme}+sentinel://{login}{hosts}/{self.service}/{self.db}"
        if self.cluster:
            hosts = ",".join(_host_port(*node) for node in self.cluster)
            return f"{scheme}+cluster://{login}{hosts}"
        return f"{scheme}://{login}{_host_port(self.host, self.port)}/{self.db}"

    def primary(self, host: str, port: int) -> RedisAddress:
        """
        The address of the server at ``host``:``port`` (the primary the
        sentinels named), with this address's login, database and TLS.
        """
        return evolve(self, host=host, port=port, sentinels=(), service=None)

    def sentinel(self, host: str, port: int) -> RedisAddress:
        """
        The address of the sentinel at ``host``:``port``: TLS as this
        address, no database and no login (sentinels are asked without
        ``AUTH``).
        """
        return RedisAddress(host, port, tls=self.tls, ca_certs=self.ca_certs)

    def node(self, host: str, port: int) -> RedisAddress:
        """
        The address of the Redis Cluster node at ``host``:``port`` (a seed,
        or a node the slot map names): a plain address with this address's
        login and TLS, and no seeds.
        """
        return evolve(
            self, host=host, port=port, db=0, cluster=(), sentinels=(), service=None
        )


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_redis_url(url: str) -> RedisAddress:
    """
    Parse ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for
    TLS, with an optional ``?ssl_ca_certs=/path/ca.pem``).

    With Sentinel, ``redis+sentinel://[[user]:password@]host[:port][,host
    [:port]...]/service[/db]`` (``rediss+sentinel://`` for TLS): the
    sentinels (port 26379 by default) and the name of the service they
    monitor; the login, database and TLS are the primary's.

    With Redis Cluster, ``redis+cluster://[[user]:password@]host[:port]
    [,host[:port]...][/0]`` (``rediss+cluster://`` for TLS): some nodes of
    the cluster (port 6379 by default), asked in turn for the slot map; the
    login and TLS are every node's.  A cluster has only database 0.

    :raises ValueError: naming what is wrong; the message never contains the
        password.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _parse_sentinel(parts, scheme == "rediss+sentinel")
    if scheme in ("redis+cluster", "rediss+cluster"):
        return _parse_cluster(parts, scheme == "rediss+cluster")
    if scheme not in ("redis", "rediss"):
        raise ValueError(
            "the URL must start with redis://, rediss://, redis+sentinel://, "
            "rediss+sentinel://, redis+cluster:// or rediss+cluster://"
        )
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
    ca_certs = _ca_certs(parts, scheme == "rediss")
    return RedisAddress(
        host=host,
        port=port if port is not None else 6379,
        db=int(path) if path else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=scheme == "rediss",
        ca_certs=ca_certs,
    )


def _ca_certs(parts: SplitResult, tls: bool) -> str | None:
    ca_certs = None
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "ssl_ca_certs" and tls and value:
            ca_certs = value
        else:
            raise ValueError(
                f"unknown Redis URL parameter {name!r} (only ssl_ca_certs, "
                "with rediss://, rediss+sentinel:// or rediss+cluster://)"
            )
    if parts.fragment:
        raise ValueError("a Redis URL has no #fragment")
    return ca_certs


def _login(parts: SplitResult) -> tuple[str | None, str | None, str]:
    """The user name, the password and the list of hosts of a netloc."""
    login, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = login.partition(":")
        username = unquote(user) if user else None
        password = unquote(secret) if colon else None
    return username, password, hosts


def _hosts(
    hosts: str, default_port: int, kind: str, example: str
) -> list[tuple[str, int]]:
    """
    ``host[:port],host[:port]...`` (an IPv6 address in brackets) as a list
    of (host, port).

    :param kind: What the URL is called in messages ("the Sentinel URL").
    :param example: A URL of its kind, for the messages.
    """
    found: list[tuple[str, int]] = []
    for item in hosts.split(","):
        match = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^\[\]:/]+))(?::(\d*))?", item)
        if match is None:
            raise ValueError(
                f"{kind} lists hosts as host:port,host:port, as in {example}"
            )
        host = match.group(1) or match.group(2)
        port_text = match.group(3)
        port = int(port_text) if port_text else default_port
        if not 0 < port < 65536:
            raise ValueError(f"{kind} has an invalid port")
        found.append((host, port))
    return found


def _parse_sentinel(parts: SplitResult, tls: bool) -> RedisAddress:
    username, password, hosts = _login(parts)
    sentinels = _hosts(
        hosts,
        SENTINEL_PORT,
        "the Sentinel URL",
        "redis+sentinel://s1:26379,s2:26379/mymaster",
    )
    segments = parts.path.strip("/").split("/") if parts.path.strip("/") else []
    if not segments or len(segments) > 2 or not segments[0]:
        raise ValueError(
            "the Sentinel URL names the service, and maybe a database, as in "
            "redis+sentinel://host:26379/mymaster/0"
        )
    service = unquote(segments[0])
    if len(segments) == 2 and not segments[1].isdigit():
        raise ValueError(
            "the Redis database must be a number, as in "
            "redis+sentinel://host:26379/mymaster/0"
        )
    ca_certs = _ca_certs(parts, tls)
    return RedisAddress(
        host=sentinels[0][0],
        port=sentinels[0][1],
        db=int(segments[1]) if len(segments) == 2 else 0,
        username=username,
        password=password,
        tls=tls,
        ca_certs=ca_certs,
        sentinels=tuple(sentinels),
        service=service,
    )


def _parse_cluster(parts: SplitResult, tls: bool) -> RedisAddress:
    username, password, hosts = _login(parts)
    example = "redis+cluster://n1:6379,n2:6379"
    nodes = _hosts(hosts, 6379, "the Redis Cluster URL", example)
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(
            "the Redis Cluster URL names at most database 0 after the hosts, "
            f"as in {example}/0"
        )
    if path and int(path) != 0:
        raise ValueError("Redis Cluster has only database 0")
    ca_certs = _ca_certs(parts, tls)
    return RedisAddress(
        host=nodes[0][0],
        port=nodes[0][1],
        username=username,
        password=password,
        tls=tls,
        ca_certs=ca_certs,
        cluster=tuple(nodes),
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
