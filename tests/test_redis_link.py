"""
Tests for L{twisted_sse._redis._link.RedisLink} on a L{Clock} and an
in-memory endpoint: ClientService's retries as the link's policy says, the
preparation of each connection before use, C{ready} flipping, and commands
failing at once while there is no connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from twisted_sse import BrokerUnavailable, Event, RedisAddress, RedisBroker
from twisted_sse._redis._link import MIN_REDIS, RedisLink, retry_delay

from ._redis_tools import ClosingTransport, commands_in

_INFO = b"redis_version:7.2.4\r\nredis_mode:standalone\r\n"


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


@implementer(IStreamClientEndpoint)
class _Endpoint:
    """Connection attempts that the test ends, one way or the other."""

    def __init__(self) -> None:
        self.attempts: list[tuple[Deferred[Any], Any]] = []
        self.transports: list[ClosingTransport] = []

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        attempt: Deferred[Any] = Deferred()
        self.attempts.append((attempt, protocolFactory))
        return attempt

    def refuse(self) -> None:
        """The last attempt is refused."""
        attempt, _ = self.attempts[-1]
        attempt.errback(ConnectionRefusedError())

    def accept(self) -> ClosingTransport:
        """The last attempt connects; its transport."""
        attempt, factory = self.attempts[-1]
        protocol = factory.buildProtocol(None)
        transport = ClosingTransport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        attempt.callback(protocol)
        self.transports.append(transport)
        return transport


class _Harness:
    def __init__(
        self, address: RedisAddress | None = None, scripts: tuple[str, ...] = ()
    ) -> None:
        self.clock = Clock()
        self.endpoint = _Endpoint()
        self.events: list[str] = []
        self.link = RedisLink(
            self.clock,
            address or RedisAddress("redis.invalid"),
            "test:link",
            on_ready=lambda: self.events.append("ready"),
            on_lost=lambda: self.events.append("lost"),
            scripts=scripts,
            connect_to=self.endpoint,
            jitter=lambda: 0.0,
        )

    def prepare(self, transport: ClosingTransport, *replies: bytes) -> None:
        """Answer the preparation's commands."""
        transport.protocol.dataReceived(b"".join(replies))


class RetryPolicyTests(SynchronousTestCase):
    """How long the link waits between attempts."""

    def test_delays(self) -> None:
        """0.05 s doubling to 2.5 s without jitter, 0.1 s to 5 s with the most."""
        low = [retry_delay(attempt, lambda: 0.0) for attempt in range(1, 10)]
        self.assertEqual(low, [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.5, 2.5, 2.5])
        self.assertEqual(retry_delay(1, lambda: 1.0), 0.1)
        self.assertEqual(retry_delay(1000, lambda: 1.0), 5.0)

    def test_client_service_waits_as_told(self) -> None:
        """Refused attempts are retried after 0.05, 0.1, 0.2 s... on the clock."""
        harness = _Harness()
        harness.link.start()
        endpoint = harness.endpoint
        self.assertEqual(len(endpoint.attempts), 1)
        for delay in (0.05, 0.1, 0.2, 0.4):
            endpoint.refuse()
            harness.clock.advance(delay - 0.001)
            before = len(endpoint.attempts)
            harness.clock.advance(0.001)
            self.assertEqual(len(endpoint.attempts), before + 1)
        self.assertFalse(harness.link.ready)
        self.flushLoggedErrors()

    def test_refused_preparation_backs_off(self) -> None:
        """A connection refused at AUTH is closed; the backoff keeps growing."""
        harness = _Harness(RedisAddress("redis.invalid", password="wrong"))
        harness.link.start()
        for delay in (0.05, 0.1, 0.2):
            transport = harness.endpoint.accept()
            harness.prepare(transport, b"-WRONGPASS invalid password\r\n")
            self.assertEqual(transport.closed, "aborted")
            attempts = len(harness.endpoint.attempts)
            harness.clock.advance(delay - 0.001)
            self.assertEqual(len(harness.endpoint.attempts), attempts)
            harness.clock.advance(0.001)
            self.assertEqual(len(harness.endpoint.attempts), attempts + 1)
        self.assertEqual(harness.events, [])


class PreparationTests(SynchronousTestCase):
    """What a new connection is sent before it is used."""

    def test_commands_in_order(self) -> None:
        """AUTH, SELECT, INFO, CLIENT SETNAME, SCRIPT LOAD, then ready."""
        address = RedisAddress("redis.invalid", db=3, username="sse", password="pw")
        harness = _Harness(address, scripts=("return 1",))
        harness.link.start()
        transport = harness.endpoint.accept()
        self.assertEqual(commands_in(transport.value()), [[b"AUTH", b"sse", b"pw"]])
        harness.prepare(transport, b"+OK\r\n")
        harness.prepare(transport, b"+OK\r\n")
        harness.prepare(transport, _bulk(_INFO))
        self.assertFalse(harness.link.ready)
        harness.prepare(transport, b"+OK\r\n")
        self.assertFalse(harness.link.ready)
        harness.prepare(transport, _bulk(b"e0e1f5"))
        self.assertEqual(
            commands_in(transport.value()),
            [
                [b"AUTH", b"sse", b"pw"],
                [b"SELECT", b"3"],
                [b"INFO", b"server"],
                [b"CLIENT", b"SETNAME", b"test:link"],
                [b"SCRIPT", b"LOAD", b"return 1"],
            ],
        )
        self.assertTrue(harness.link.ready)
        self.assertEqual(harness.events, ["ready"])
        self.assertTrue(transport.no_delay)

    def test_script_load_refused(self) -> None:
        """A refused SCRIPT LOAD (an ACL) does not keep the link from being ready."""
        harness = _Harness(scripts=("return 1",))
        harness.link.start()
        transport = harness.endpoint.accept()
        harness.prepare(
            transport, _bulk(_INFO), b"+OK\r\n", b"-NOPERM no script load\r\n"
        )
        self.assertTrue(harness.link.ready)

    def test_old_redis_refused(self) -> None:
        """A Redis older than 7.0 is not used: the connection is closed."""
        harness = _Harness()
        harness.link.start()
        transport = harness.endpoint.accept()
        harness.prepare(transport, _bulk(b"redis_version:6.2.14\r\n"))
        self.assertFalse(harness.link.ready)
        self.assertEqual(transport.closed, "aborted")
        self.assertEqual(MIN_REDIS, (7, 0))

    def test_lost_while_preparing(self) -> None:
        """A connection lost during its preparation is retried, never ready."""
        harness = _Harness()
        harness.link.start()
        harness.endpoint.accept().loseConnection()
        self.assertFalse(harness.link.ready)
        harness.clock.advance(0.05)
        self.assertEqual(len(harness.endpoint.attempts), 2)
        self.assertEqual(harness.events, [])


class ReadyTests(SynchronousTestCase):
    """Commands while connected, lost and back."""

    def connected(self) -> tuple[_Harness, ClosingTransport]:
        harness = _Harness()
        harness.link.start()
        transport = harness.endpoint.accept()
        harness.prepare(transport, _bulk(_INFO), b"+OK\r\n")
        self.assertTrue(harness.link.ready)
        transport.clear()
        return harness, transport

    def test_fails_at_once_before_connected(self) -> None:
        """Before a connection is ready, a command fails at once, unsent."""
        harness = _Harness()
        harness.link.start()
        transport = harness.endpoint.accept()
        self.failureResultOf(harness.link.execute("PING"), BrokerUnavailable)
        self.assertEqual(commands_in(transport.value()), [[b"INFO", b"server"]])

    def test_lost_and_back(self) -> None:
        """Lost: not ready, commands fail at once; reconnected 0.05 s later."""
        harness, transport = self.connected()
        pending = harness.link.execute("PING")
        transport.loseConnection()
        self.failureResultOf(pending, BrokerUnavailable)
        self.assertFalse(harness.link.ready)
        self.assertEqual(harness.events, ["ready", "lost"])
        self.failureResultOf(harness.link.execute("PING"), BrokerUnavailable)
        harness.clock.advance(0.05)
        again = harness.endpoint.accept()
        harness.prepare(again, _bulk(_INFO), b"+OK\r\n")
        self.assertTrue(harness.link.ready)
        self.assertEqual(harness.events, ["ready", "lost", "ready"])
        sent = harness.link.execute("PING")
        again.protocol.dataReceived(b"+PONG\r\n")
        self.assertEqual(self.successResultOf(sent), b"PONG")
        self.assertEqual(transport.value(), b"*1\r\n$4\r\nPING\r\n")

    def test_timeout_drops(self) -> None:
        """A reply late by the link's timeout drops the connection."""
        harness, transport = self.connected()
        pending = harness.link.execute("PING")
        harness.clock.advance(5)
        self.assertEqual(transport.closed, "aborted")
        self.failureResultOf(pending, BrokerUnavailable)
        self.assertFalse(harness.link.ready)

    def test_drop(self) -> None:
        """drop() aborts the connection; the link reconnects."""
        harness, transport = self.connected()
        harness.link.drop()
        self.assertEqual(transport.closed, "aborted")
        harness.clock.advance(0.05)
        self.assertEqual(len(harness.endpoint.attempts), 2)

    def test_stop(self) -> None:
        """stop() closes the connection, fires, and leaves no timer."""
        harness, transport = self.connected()
        stopped = harness.link.stop()
        self.assertEqual(transport.closed, "lost")
        self.successResultOf(stopped)
        self.assertFalse(harness.link.ready)
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        self.assertEqual(len(harness.endpoint.attempts), 1)

    def test_stop_while_waiting(self) -> None:
        """stop() between attempts cancels the next one."""
        harness = _Harness()
        harness.link.start()
        harness.endpoint.refuse()
        self.successResultOf(harness.link.stop())
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        self.flushLoggedErrors()


class BrokerWhileDownTests(SynchronousTestCase):
    """The broker's face of a link that is down."""

    def test_publish_fails_at_once(self) -> None:
        """Without a connection, publish fails at once, unavailable."""
        broker = RedisBroker(Clock(), RedisAddress("redis.invalid"))
        self.assertFalse(broker.available)
        self.failureResultOf(broker.publish("news", Event(data="x")), BrokerUnavailable)
        self.failureResultOf(broker.subscribe("news", print), BrokerUnavailable)
