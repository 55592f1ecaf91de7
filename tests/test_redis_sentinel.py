"""
Tests for Sentinel support: C{redis+sentinel://} URLs, and
L{twisted_sse._redis._sentinel.Sentinels} asking fake sentinels in turn on
a L{Clock} (order, timeouts, unknown services, failovers told).
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from twisted_sse import (
    BrokerUnavailable,
    Event,
    RedisAddress,
    RedisBroker,
    parse_redis_url,
)
from twisted_sse._app import SSEApp
from twisted_sse._memory import MemoryBroker
from twisted_sse._metrics import SSECollector
from twisted_sse._redis._sentinel import Sentinels
from twisted_sse._registry import StreamRegistry
from twisted_sse._tap import Options

from ._redis_tools import ClosingTransport, FakeRedis, commands_in, fake_broker
from .test_redis_link import _INFO, _Harness

URL = "redis+sentinel://:secret@s1:5000,s2,[::1]:5002/cache/3"


class ParseTests(SynchronousTestCase):
    """redis+sentinel:// URLs."""

    def test_parse(self) -> None:
        """The sentinels (26379 by default), the service, the database."""
        address = parse_redis_url(URL)
        self.assertEqual(
            address.sentinels, (("s1", 5000), ("s2", 26379), ("::1", 5002))
        )
        self.assertEqual(address.service, "cache")
        self.assertEqual(address.db, 3)
        self.assertEqual(address.password, "secret")
        self.assertFalse(address.tls)
        self.assertEqual((address.host, address.port), ("s1", 5000))

    def test_parse_tls(self) -> None:
        """rediss+sentinel:// turns TLS on, for the sentinels too."""
        address = parse_redis_url("rediss+sentinel://s1/cache?ssl_ca_certs=/ca.pem")
        self.assertTrue(address.tls)
        self.assertEqual(address.db, 0)
        self.assertEqual(address.ca_certs, "/ca.pem")
        self.assertTrue(address.sentinel("s1", 1).tls)

    def test_str_hides_password(self) -> None:
        """str shows the sentinel URL with the password masked."""
        address = parse_redis_url(URL)
        self.assertEqual(
            str(address), "redis+sentinel://:***@s1:5000,s2:26379,[::1]:5002/cache/3"
        )
        self.assertNotIn("secret", repr(address))

    def test_primary_and_sentinel(self) -> None:
        """The primary keeps the login and database; a sentinel has neither."""
        address = parse_redis_url(URL)
        self.assertEqual(
            address.primary("10.0.0.1", 6380),
            RedisAddress("10.0.0.1", 6380, 3, password="secret"),
        )
        self.assertEqual(address.sentinel("s2", 26379), RedisAddress("s2", 26379))

    def test_errors(self) -> None:
        """Bad sentinel URLs are refused without showing the password."""
        for url in [
            "redis+sentinel://:secret@s1:26379",
            "redis+sentinel://:secret@s1:26379/",
            "redis+sentinel://:secret@s1:26379/cache/x",
            "redis+sentinel://:secret@s1:26379/cache/1/2",
            "redis+sentinel://:secret@s1:port/cache",
            "redis+sentinel://:secret@s1:0/cache",
            "redis+sentinel://:secret@s1,,s2/cache",
            "redis+sentinel://:secret@s1/cache?ssl_ca_certs=/ca.pem",
            "redis+sentinel://:secret@s1/cache#x",
        ]:
            with self.assertRaises(ValueError, msg=url) as caught:
                parse_redis_url(url)
            self.assertNotIn("secret", str(caught.exception))


class _Sentinels:
    """Fake sentinels: each question waits for the test's answer."""

    def __init__(self) -> None:
        self.asked: list[tuple[tuple[str, int], str, Deferred[Any]]] = []

    def ask(self, address: RedisAddress, service: str) -> Deferred[Any]:
        self.assertNoLogin(address)
        answer: Deferred[Any] = Deferred()
        self.asked.append(((address.host, address.port), service, answer))
        return answer

    @staticmethod
    def assertNoLogin(address: RedisAddress) -> None:
        assert address.password is None and address.db == 0

    def answer(self, reply: Any) -> None:
        self.asked[-1][2].callback(reply)

    def refuse(self) -> None:
        self.asked[-1][2].errback(ConnectionRefusedError())


class ResolveTests(SynchronousTestCase):
    """Sentinels.resolve asks the sentinels in turn."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.fake = _Sentinels()
        self.sentinels = Sentinels(
            self.clock,
            parse_redis_url(URL),
            timeout=0.5,
            check_interval=2.0,
            ask=self.fake.ask,
        )
        self.switches: list[str] = []
        self.sentinels.on_switch(lambda: self.switches.append("switch"))

    def test_first_answers(self) -> None:
        """The first sentinel's answer is the primary."""
        found = self.sentinels.resolve()
        self.fake.answer([b"10.0.0.1", b"6379"])
        self.assertEqual(self.successResultOf(found), ("10.0.0.1", 6379))
        self.assertEqual(self.fake.asked[0][:2], (("s1", 5000), "cache"))
        self.assertEqual(self.sentinels.primary, ("10.0.0.1", 6379))
        self.assertEqual(self.sentinels.failovers, 0)

    def test_next_when_refused_or_silent(self) -> None:
        """
        A refused or silent sentinel (past the timeout) is skipped; the one
        that answered is asked first next time.
        """
        found = self.sentinels.resolve()
        self.fake.refuse()
        self.clock.advance(0.5)  # s2 says nothing
        self.fake.answer([b"10.0.0.1", b"6379"])
        self.assertEqual(self.successResultOf(found), ("10.0.0.1", 6379))
        self.assertEqual(
            [where for where, _, _ in self.fake.asked],
            [("s1", 5000), ("s2", 26379), ("::1", 5002)],
        )
        self.assertEqual(
            self.sentinels.state()["sentinels"],
            {"s1:5000": "down", "s2:26379": "down", "::1:5002": "up"},
        )
        self.sentinels.resolve()
        self.assertEqual(self.fake.asked[-1][0], ("::1", 5002))

    def test_unknown_service(self) -> None:
        """A sentinel that knows no such service (nil) is not believed."""
        found = self.sentinels.resolve()
        self.fake.answer(None)
        self.fake.answer([b"10.0.0.2", b"6379"])
        self.assertEqual(self.successResultOf(found), ("10.0.0.2", 6379))

    def test_none_knows(self) -> None:
        """When no sentinel answers, no primary is known: BrokerUnavailable."""
        self.sentinels.primary = ("10.0.0.1", 6379)
        found = self.sentinels.resolve()
        for _ in range(3):
            self.fake.refuse()
        failure = self.failureResultOf(found, BrokerUnavailable)
        self.assertIn("cache", str(failure.value))
        self.assertIsNone(self.sentinels.primary)
        self.assertIsNone(self.sentinels.state()["primary"])

    def test_failover(self) -> None:
        """Another primary than before is counted and told, once."""
        self.sentinels.resolve()
        self.fake.answer([b"10.0.0.1", b"6379"])
        self.sentinels.resolve()
        self.fake.answer([b"10.0.0.1", b"6379"])
        self.assertEqual(self.switches, [])
        self.sentinels.resolve()
        self.fake.answer([b"10.0.0.2", b"6379"])
        self.assertEqual(self.switches, ["switch"])
        self.assertEqual(self.sentinels.failovers, 1)
        self.assertEqual(self.sentinels.state()["primary"], "10.0.0.2:6379")

    def test_periodic_check(self) -> None:
        """Started, it asks every check_interval, one question at a time."""
        self.sentinels.start()
        self.clock.advance(2.0)
        self.assertEqual(len(self.fake.asked), 1)
        self.clock.advance(0.2)
        self.fake.answer([b"10.0.0.2", b"6379"])
        self.clock.advance(2.0)
        self.assertEqual(len(self.fake.asked), 2)
        self.fake.answer([b"10.0.0.3", b"6379"])
        self.assertEqual(self.switches, ["switch"])
        self.sentinels.stop()
        self.clock.advance(10.0)
        self.assertEqual(len(self.fake.asked), 2)

    def test_no_sentinels(self) -> None:
        """A plain address has no sentinels to ask."""
        with self.assertRaises(ValueError):
            Sentinels(self.clock, RedisAddress("h"), ask=lambda a, s: succeed(None))


class BrokerTests(SynchronousTestCase):
    """RedisBroker on a Sentinel address."""

    def test_broker_topology(self) -> None:
        """The broker shares one Sentinels between its links and reports it."""
        clock = Clock()
        broker = RedisBroker(clock, parse_redis_url(URL))
        self.assertIsNotNone(broker.sentinels)
        self.assertIs(broker.commands.sentinels, broker.sentinels)
        self.assertIs(broker.reader.link.sentinels, broker.sentinels)
        topology = broker.topology()
        assert topology is not None
        self.assertEqual(topology["service"], "cache")
        self.assertIsNone(topology["primary"])
        self.assertEqual(broker.failovers, 0)
        self.assertIsNone(RedisBroker(clock, RedisAddress("h")).topology())

    def test_wait_bounds(self) -> None:
        """wait_replicas >= 0; wait_timeout above 0 and below the timeout."""
        clock = Clock()
        for options in [
            {"wait_replicas": -1},
            {"wait_replicas": 1, "wait_timeout": 0},
            {"wait_replicas": 1, "wait_timeout": 5.0},
        ]:
            with self.assertRaises(ValueError, msg=str(options)):
                RedisBroker(clock, RedisAddress("h"), **options)  # type: ignore[arg-type]

    def test_wait_refused(self) -> None:
        """A publish that fewer replicas than asked acknowledge fails (503)."""
        broker = RedisBroker(Clock(), RedisAddress("h"), wait_replicas=1)
        sent: list[tuple[Any, ...]] = []

        def execute(*args: Any, timeout: float | None = None) -> Deferred[Any]:
            sent.append(args)
            return succeed(0)

        broker._commands.execute = execute  # type: ignore[method-assign]
        failure = self.failureResultOf(
            broker._replicated(b"id", "sse:news"), BrokerUnavailable
        )
        self.assertIn("replicas", str(failure.value))
        self.assertEqual(sent, [("WAIT", 1, 1000)])

        def enough(*args: Any, timeout: float | None = None) -> Deferred[Any]:
            return succeed(1)

        broker._commands.execute = enough  # type: ignore[method-assign]
        self.assertEqual(
            self.successResultOf(broker._replicated(b"id", "sse:news")), b"id"
        )


class _SentinelBroker(MemoryBroker):
    """A memory broker that reports a Sentinel topology."""

    def __init__(self, up: bool) -> None:
        super().__init__()
        self.up = up
        self.failovers = 2

    @property
    def available(self) -> bool:  # type: ignore[override]
        return self.up

    def topology(self) -> dict[str, Any]:
        return {"service": "cache", "primary": "10.0.0.2:6379", "failovers": 2}


class ServerTests(SynchronousTestCase):
    """twistd sse's options, /healthz and /metrics with Sentinel."""

    def test_options(self) -> None:
        """--broker takes a Sentinel URL; --redis-wait needs Redis."""
        self.patch(os, "environ", {})
        options = Options()
        options.parseOptions(
            ["--broker", URL, "--redis-wait", "1", "--redis-wait-timeout", "0.5"]
        )
        self.assertEqual(options["redis"], parse_redis_url(URL))
        self.assertEqual(
            (options["redis-wait"], options["redis-wait-timeout"]), (1, 0.5)
        )
        for argv in [
            ["--redis-wait", "1"],
            ["--broker", URL, "--redis-wait-timeout", "5"],
            ["--broker", "redis+sentinel://:topsecret@s1/"],
        ]:
            with self.assertRaises(usage.UsageError, msg=str(argv)) as raised:
                Options().parseOptions(argv)
            self.assertNotIn("topsecret", str(raised.exception))

    def _healthz(self, broker: Any) -> tuple[int, dict[str, Any]]:
        app = SSEApp(Clock(), broker=broker, heartbeat=0)
        request = DummyRequest([b"healthz"])
        body = app.healthz(request)
        return request.responseCode or 200, json.loads(body)

    def test_healthz(self) -> None:
        """/healthz tells the topology; 503 while there is no primary."""
        code, body = self._healthz(_SentinelBroker(up=True))
        self.assertEqual(code, 200)
        self.assertEqual(body["status"], "ok")
        self.assertEqual(body["redis"]["primary"], "10.0.0.2:6379")
        code, body = self._healthz(_SentinelBroker(up=False))
        self.assertEqual((code, body["broker"]), (503, "down"))
        self.assertEqual(body["redis"]["service"], "cache")
        code, body = self._healthz(MemoryBroker())
        self.assertEqual((code, body), (200, {"status": "ok", "broker": "up"}))

    def test_metrics(self) -> None:
        """/metrics counts the failovers."""
        collector = SSECollector(
            StreamRegistry(Clock()), None, _SentinelBroker(up=True)
        )
        values = {
            sample.name: sample.value
            for metric in collector.collect()
            for sample in metric.samples
        }
        self.assertEqual(values["sse_redis_failovers_total"], 2)


class AcknowledgedTests(SynchronousTestCase):
    """
    After a lost connection, the broker checks that Redis still has the
    events it acknowledged just before (a failover may lose them before any
    reader read them).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.redis = FakeRedis(self.clock)
        self.broker = fake_broker(self.clock, self.redis)

    def publish(self, channel: str) -> str:
        event_id: str = self.successResultOf(
            self.broker.publish(channel, Event(data="x"))
        )
        return event_id

    def failover(self, lose_last: bool) -> None:
        """The command connection is lost; Redis comes back, maybe short."""
        if lose_last:
            stream = self.redis.streams[b"sse:a"]
            stream.entries.pop()
            stream.last_generated = stream.entries[-1][0]
        self.broker.commands.lose()
        self.clock.advance(1)
        self.broker.commands.start()

    def test_lost_acknowledged_rotates(self) -> None:
        """An acknowledged event Redis lost: the channel gets a new epoch."""
        self.publish("a")
        epoch = self.publish("a").partition(":")[0]
        self.failover(lose_last=True)
        meta = self.redis.hashes[b"sse:a#epoch"]
        self.assertNotEqual(meta[b"e"].decode(), epoch)
        self.assertEqual(meta[b"p"].decode(), epoch)

    def test_kept_acknowledged(self) -> None:
        """Redis kept every acknowledged event: the epoch stays."""
        epoch = self.publish("a").partition(":")[0]
        self.failover(lose_last=False)
        self.assertEqual(self.redis.hashes[b"sse:a#epoch"][b"e"].decode(), epoch)

    def test_old_acknowledged_forgotten(self) -> None:
        """Events acknowledged long before the loss are not remembered."""
        self.publish("a")
        self.publish("a")
        self.clock.advance(60)
        self.publish("b")
        self.assertEqual(list(self.broker._acked), ["b"])


class LinkTests(SynchronousTestCase):
    """A RedisLink on a Sentinel address: ROLE first, READONLY drops it."""

    def setUp(self) -> None:
        self.harness = _Harness(parse_redis_url("redis+sentinel://s1/cache"))
        self.harness.link.start()

    def connect(self, role: bytes) -> ClosingTransport:
        transport = self.harness.endpoint.accept()
        self.assertEqual(commands_in(transport.value()), [[b"ROLE"]])
        self.harness.prepare(transport, role)
        if transport.closed is None:
            self.harness.prepare(transport, b"$%d\r\n%s\r\n" % (len(_INFO), _INFO))
        return transport

    def test_replica_refused(self) -> None:
        """A server whose ROLE is not master is not used."""
        transport = self.connect(b"*1\r\n$5\r\nslave\r\n")
        self.assertEqual(transport.closed, "aborted")
        self.assertFalse(self.harness.link.ready)

    def test_read_only_drops(self) -> None:
        """A READONLY answer drops the connection (to find the new primary)."""
        transport = self.connect(b"*1\r\n$6\r\nmaster\r\n")
        self.harness.prepare(transport, b"+OK\r\n")  # CLIENT SETNAME
        self.assertTrue(self.harness.link.ready)
        answer = self.harness.link.execute("SET", "k", "v")
        self.harness.prepare(
            transport, b"-READONLY You can't write against a read only replica.\r\n"
        )
        self.failureResultOf(answer, BrokerUnavailable)
        self.assertEqual(transport.closed, "aborted")
        self.assertEqual(self.harness.events, ["ready", "lost"])
        self.flushLoggedErrors()
