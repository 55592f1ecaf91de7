"""
Tests for L{twisted_sse._redis._address}: C{redis://} URLs parsed into
L{RedisAddress}es that never show their password, and the endpoint that
reaches one (TCP, or TLS that checks the server), on a
L{MemoryReactorClock} with TLS handshakes in memory.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.internet.interfaces import (
    IHandshakeListener,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from twisted_sse import RedisAddress, parse_redis_url
from twisted_sse._redis._address import CONNECT_TIMEOUT, endpoint

from ._certs import handshake, self_signed, tls_server
from ._names import Names, ResolvingReactor


class ParseTests(SynchronousTestCase):
    """parse_redis_url: what a URL says, and what it must not."""

    def test_parse_url(self) -> None:
        """A redis:// URL gives host, port, database, user and password."""
        self.assertEqual(
            parse_redis_url("redis://user:p%40ss@redis.example:6380/3"),
            RedisAddress("redis.example", 6380, 3, username="user", password="p@ss"),
        )
        self.assertEqual(
            parse_redis_url("redis://:secret@h"),
            RedisAddress("h", 6379, 0, password="secret"),
        )
        self.assertEqual(
            parse_redis_url("redis://[::1]:7000/"), RedisAddress("::1", 7000, 0)
        )

    def test_parse_url_tls(self) -> None:
        """rediss:// turns TLS on, with an optional file of trusted authorities."""
        address = parse_redis_url("rediss://h:6390/1?ssl_ca_certs=/etc/ca.pem")
        self.assertTrue(address.tls)
        self.assertEqual(address.ca_certs, "/etc/ca.pem")

    def test_parse_url_errors(self) -> None:
        """A bad URL is refused with a message that never shows the password."""
        for url in [
            "http://:secret@h:6379/0",
            "secret",
            "redis://:secret@h:port/0",
            "redis://:secret@h:6379/zero",
            "redis://:secret@/0",
            "redis://:secret@h/0?ssl_ca_certs=/x",
            "redis://:secret@h/0?timeout=3",
            "redis://:secret@h/0#frag",
        ]:
            with self.assertRaises(ValueError, msg=url) as raised:
                parse_redis_url(url)
            self.assertNotIn("secret", str(raised.exception), url)

    def test_address_hides_password(self) -> None:
        """Neither str() nor repr() of an address shows its password."""
        address = parse_redis_url("rediss://admin:hunter2@h:1/2")
        self.assertEqual(str(address), "rediss://admin:***@h:1/2")
        self.assertNotIn("hunter2", repr(address))


class ClusterParseTests(SynchronousTestCase):
    """redis+cluster:// URLs: the seed nodes of a Redis Cluster."""

    def test_parse(self) -> None:
        """The seeds (6379 by default), the login; host and port the first's."""
        address = parse_redis_url("redis+cluster://u:p%40ss@n1:7000,n2,[::1]:7002")
        self.assertEqual(address.cluster, (("n1", 7000), ("n2", 6379), ("::1", 7002)))
        self.assertEqual((address.host, address.port), ("n1", 7000))
        self.assertEqual((address.username, address.password), ("u", "p@ss"))
        self.assertEqual(address.db, 0)
        self.assertFalse(address.tls)
        self.assertEqual(address.sentinels, ())

    def test_database_zero(self) -> None:
        """A trailing / or /0 is accepted: a cluster has database 0 only."""
        for url in ["redis+cluster://n1/", "redis+cluster://n1:7000,n2/0"]:
            self.assertEqual(parse_redis_url(url).db, 0, url)

    def test_parse_tls(self) -> None:
        """rediss+cluster:// turns TLS on, with an optional CA file."""
        address = parse_redis_url("rediss+cluster://n1,n2/0?ssl_ca_certs=/ca.pem")
        self.assertTrue(address.tls)
        self.assertEqual(address.ca_certs, "/ca.pem")
        self.assertEqual(address.cluster, (("n1", 6379), ("n2", 6379)))

    def test_str_hides_password(self) -> None:
        """str shows the seeds with the password masked; repr hides it."""
        address = parse_redis_url("rediss+cluster://admin:hunter2@n1:7000,[::1]")
        self.assertEqual(str(address), "rediss+cluster://admin:***@n1:7000,[::1]:6379")
        self.assertNotIn("hunter2", repr(address))
        self.assertEqual(
            str(parse_redis_url("redis+cluster://n1")), "redis+cluster://n1:6379"
        )

    def test_node(self) -> None:
        """node() is a plain address of one node, with the login and TLS."""
        address = parse_redis_url(
            "rediss+cluster://u:secret@n1:7000,n2:7001?ssl_ca_certs=/ca.pem"
        )
        self.assertEqual(
            address.node("10.0.0.5", 7005),
            RedisAddress(
                "10.0.0.5",
                7005,
                0,
                username="u",
                password="secret",
                tls=True,
                ca_certs="/ca.pem",
            ),
        )
        self.assertEqual(str(address.node("n2", 7001)), "rediss://u:***@n2:7001/0")

    def test_other_database_refused(self) -> None:
        """A database other than 0 is refused: Redis Cluster has no other."""
        with self.assertRaises(ValueError) as raised:
            parse_redis_url("redis+cluster://:secret@n1,n2/3")
        self.assertEqual(str(raised.exception), "Redis Cluster has only database 0")

    def test_errors(self) -> None:
        """Bad cluster URLs are refused, with an example, never the password."""
        for url, says in [
            ("redis+cluster://:secret@n1,,n2", "redis+cluster://n1:6379,n2:6379"),
            ("redis+cluster://:secret@", "redis+cluster://n1:6379,n2:6379"),
            ("redis+cluster://:secret@n1:port", "redis+cluster://n1:6379,n2:6379"),
            ("redis+cluster://:secret@n1:0", "invalid port"),
            ("redis+cluster://:secret@n1:70000", "invalid port"),
            ("redis+cluster://:secret@n1/x", "database 0"),
            ("redis+cluster://:secret@n1/0/1", "database 0"),
            ("redis+cluster://:secret@n1?ssl_ca_certs=/ca.pem", "ssl_ca_certs"),
            ("redis+cluster://:secret@n1#x", "fragment"),
        ]:
            with self.assertRaises(ValueError, msg=url) as raised:
                parse_redis_url(url)
            self.assertIn(says, str(raised.exception), url)
            self.assertNotIn("secret", str(raised.exception), url)

    def test_sentinel_unchanged(self) -> None:
        """The Sentinel URL keeps its own messages after the shared parsing."""
        with self.assertRaises(ValueError) as raised:
            parse_redis_url("redis+sentinel://s1,,s2/cache")
        self.assertIn("redis+sentinel://s1:26379,s2:26379", str(raised.exception))
        with self.assertRaises(ValueError) as raised:
            parse_redis_url("redis+sentinel://s1:0/cache")
        self.assertEqual(str(raised.exception), "the Sentinel URL has an invalid port")


_Names = Names


@implementer(IHandshakeListener)
class _Client(Protocol):
    """Notes whether its TLS handshake completed, and why it was lost."""

    def __init__(self) -> None:
        self.shook = False
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.shook = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


class EndpointTests(SynchronousTestCase):
    """endpoint: how the broker's connections reach Redis."""

    def connect(
        self, address: RedisAddress, timeout: float = CONNECT_TIMEOUT
    ) -> tuple[MemoryReactorClock, _Names, _Client]:
        names = _Names()
        reactor = ResolvingReactor(names)
        client = _Client()
        endpoint(reactor, address, timeout).connect(Factory.forProtocol(lambda: client))
        return reactor, names, client

    def test_tcp(self) -> None:
        """redis:// is TCP to the host and port, in the timeout given."""
        reactor, names, _ = self.connect(RedisAddress("redis.example", 6380))
        self.assertEqual(names.asked, [("redis.example", 6380)])
        ((_, port, _, timeout, _),) = reactor.tcpClients
        self.assertEqual((port, timeout), (6380, CONNECT_TIMEOUT))
        reactor, _, _ = self.connect(RedisAddress("::1"), timeout=0.5)
        ((_, _, _, timeout, _),) = reactor.tcpClients
        self.assertEqual(timeout, 0.5)


class TLSTests(SynchronousTestCase):
    """rediss://: TLS that checks the server's certificate and name."""

    def setUp(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="twisted-sse-redis-"))
        self.addCleanup(shutil.rmtree, directory, True)
        key, self.cert = self_signed(directory)
        self.server = tls_server(key, self.cert)

    def handshake(self, address: RedisAddress) -> _Client:
        """Connect to ``address``; the test's server answers, in memory."""
        reactor = ResolvingReactor()
        client = _Client()
        endpoint(reactor, address).connect(Factory.forProtocol(lambda: client))
        _, pump = handshake(reactor, self.server)

        def close() -> None:
            # The client's TLS buffers its writes on the global reactor:
            # closing cancels that.
            if client.transport is not None:
                client.transport.loseConnection()
            pump.flush()

        self.addCleanup(close)
        return client

    def test_trusts_ca_certs(self) -> None:
        """The authorities of ssl_ca_certs are trusted."""
        address = RedisAddress("localhost", tls=True, ca_certs=str(self.cert))
        client = self.handshake(address)
        self.assertTrue(client.shook)
        self.assertIsNone(client.lost)

    def test_untrusted(self) -> None:
        """Without ssl_ca_certs, a certificate the system does not trust fails."""
        client = self.handshake(RedisAddress("localhost", tls=True))
        self.assertFalse(client.shook)
        assert client.lost is not None
        self.assertIn("certificate verify failed", str(client.lost.value))

    def test_name_checked(self) -> None:
        """A trusted certificate of another name fails."""
        address = RedisAddress("redis.example", tls=True, ca_certs=str(self.cert))
        client = self.handshake(address)
        # Whether the handshake is reported complete before the name is
        # checked differs between Twisted releases; the connection is lost
        # either way, naming the host.
        assert client.lost is not None
        self.assertIn("redis.example", str(client.lost.value))

    def test_missing_ca_certs(self) -> None:
        """A ssl_ca_certs file that is not there is an error at once."""
        address = RedisAddress("localhost", tls=True, ca_certs=str(self.cert) + "x")
        with self.assertRaises(FileNotFoundError):
            endpoint(MemoryReactorClock(), address)
