"""
Tests for L{twisted_sse._registry}: admission (connection limits) and the
paced drain, through a hub's streams.
"""

from __future__ import annotations

from random import Random
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from tests._transports import TransportCase, over_both_transports
from twisted_sse import _registry
from twisted_sse._registry import StreamRegistry
from twisted_sse.testing import SSETestResponse

from ._helpers import HubFixture, OpenStreamsCase

# Admission


@over_both_transports
class AdmissionTests(TransportCase):
    """Over a connection limit, clients get 200, a jittered retry: and an end."""

    def make(self, **limits: Any) -> HubFixture:
        self.clock_registry = StreamRegistry(
            Clock(), busy_retry=2000, random=Random(7), **limits
        )
        return HubFixture(self, registry=self.clock_registry)

    def assert_sent_away(self, response: SSETestResponse) -> None:
        """The response tells an EventSource to come back later."""
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.header("Content-Type"), "text/event-stream; charset=utf-8"
        )
        self.assertTrue(response.finished)
        self.assertEqual(response.events, [])
        assert response.retry is not None
        self.assertTrue(2000 <= response.retry <= 4000, response.retry)
        # An event stream never has a length: the body ends with the
        # terminating chunk, and the connection closes to free its slot.
        self.assertIsNone(response.header("Content-Length"))
        self.assertEqual(response.header("Transfer-Encoding"), "chunked")
        self.assertEqual(response.header("Connection"), "close")
        self.assertFalse(response.connected)

    def test_total(self) -> None:
        """Over max_connections, a client is sent away; under it, admitted."""
        hub = self.make(max_connections=2)
        first = hub.subscribe("a", headers={"X-Test-Client": "10.0.0.1"})
        hub.subscribe("b", headers={"X-Test-Client": "10.0.0.2"})
        third = hub.subscribe("c", headers={"X-Test-Client": "10.0.0.3"})
        self.assert_sent_away(third)
        self.assertIn("too many connections", third.comments)
        self.assertEqual(hub.registry.refused["total"], 1)
        first.disconnect()
        self.assertTrue(hub.subscribe("c").connected)

    def test_per_ip(self) -> None:
        """Over max_connections_per_ip from one address, sent away; others not."""
        hub = self.make(max_connections_per_ip=2)
        one = {"X-Test-Client": "10.0.0.1"}
        two = {"X-Test-Client": "10.0.0.2"}
        kept = [hub.subscribe(headers=one), hub.subscribe(headers=one)]
        refused = hub.subscribe(headers=one)
        self.assert_sent_away(refused)
        self.assertIn("too many connections from this address", refused.comments)
        self.assertTrue(hub.subscribe(headers=two).connected)
        kept[0].disconnect()
        self.assertTrue(hub.subscribe(headers=one).connected)

    def test_jitter(self) -> None:
        """Refused clients get retry values spread over [busy, 2 * busy]."""
        hub = self.make(max_connections=1)
        hub.subscribe()
        retries = set()
        for _ in range(30):
            response = hub.subscribe()
            self.assert_sent_away(response)
            retries.add(response.retry)
        self.assertGreater(len(retries), 10)

    def test_not_503(self) -> None:
        """A refusal is never a 5xx: EventSource would give up for good."""
        hub = self.make(max_connections=1)
        hub.subscribe()
        self.assertEqual(hub.subscribe().code, 200)

    def test_rechecked_after_authorizer(self) -> None:
        """Admission holds even when the authoriser answers later."""
        decisions: list[Deferred[bool]] = []

        def later(request: Any, channel: str) -> Deferred[bool]:
            decisions.append(Deferred())
            return decisions[-1]

        registry = StreamRegistry(Clock(), max_connections=1, busy_retry=2000)
        hub = HubFixture(self, registry=registry, authorizer=later)
        first, second = hub.subscribe(), hub.subscribe()
        for decided in decisions:
            decided.callback(True)
        hub.client.flush()
        self.assertTrue(first.connected)
        self.assert_sent_away(second)
        self.assertEqual(len(registry.streams), 1)
        self.assertEqual(hub.memory.subscriber_count("news"), 1)

    def test_publishing_not_limited(self) -> None:
        """Connection limits apply to streams, not to publishing."""
        hub = self.make(max_connections=1)
        hub.subscribe()
        self.assertEqual(hub.post_json(data="x").code, 200)


# Draining


@over_both_transports
class DrainTests(OpenStreamsCase):
    """On stop, every stream ends cleanly, spread over the drain window."""

    def test_retry_hints_spread(self) -> None:
        """Each stream ends cleanly with a retry hint spread over the window."""
        fired: list[None] = []
        self.hub.registry.drain(5.0, retry=1000).addCallback(fired.append)
        self.step_until(lambda: bool(fired), 10)
        self.assertEqual(fired, [None])
        for response in self.responses:
            self.assertTrue(response.finished)  # the terminating chunk
            self.assertFalse(response.connected)
            assert response.retry is not None
            self.assertTrue(1000 <= response.retry <= 6000, response.retry)
        hints = sorted(r.retry or 0 for r in self.responses)
        # The clients come back spread over the window, not all at once.
        self.assertGreater(len(set(hints)), 15)
        self.assertGreater(hints[-1] - hints[0], 2000)

    def test_ends_spread(self) -> None:
        """The ends are spread in time too, at the drain rate."""
        fired: list[None] = []
        self.hub.registry.drain(5.0).addCallback(fired.append)
        self.step_until(lambda: bool(fired), 10)
        self.assertEqual(len(self.ended), 20)
        # 20 streams at DRAIN_RATE per second need 20 / DRAIN_RATE seconds.
        self.assertLessEqual(max(self.ended), 20 / _registry.DRAIN_RATE)
        self.assertGreater(len(set(self.ended)), 15)

    def test_ends_within_window(self) -> None:
        """However many streams, the last one ends within the window."""
        self.patch(_registry, "DRAIN_RATE", 2.0)
        fired: list[float] = []
        self.hub.registry.drain(3.0).addCallback(
            lambda _: fired.append(self.hub.clock.seconds())
        )
        self.step_until(lambda: bool(fired), 10)
        self.assertEqual(len(self.ended), 20)
        self.assertLessEqual(max(self.ended), 3.0)
        self.assertGreater(max(self.ended) - min(self.ended), 1.5)
        self.assertGreaterEqual(fired[0], max(self.ended))
        self.assertLess(fired[0], 4.0)

    def test_fires_after_last(self) -> None:
        """The drain's Deferred fires only once every stream has ended."""
        fired: list[float] = []
        self.hub.registry.drain(2.0).addCallback(
            lambda _: fired.append(self.hub.clock.seconds())
        )
        self.step_until(lambda: bool(fired), 10)
        self.assertEqual(len(self.ended), 20)
        self.assertGreaterEqual(fired[0], max(self.ended))

    def test_new_streams_sent_away(self) -> None:
        """While draining, new subscribers are sent away with a retry."""
        self.hub.registry.drain(2.0)
        late = self.hub.subscribe()
        self.assertEqual(late.code, 200)
        self.assertTrue(late.finished)
        self.assertIn("the server is shutting down", late.comments)
        self.step_until(lambda: not self.hub.registry.streams, 10)

    def test_zero(self) -> None:
        """With no window, every stream ends at once."""
        fired: list[None] = []
        self.hub.registry.drain(0).addCallback(fired.append)
        self.hub.client.flush()
        self.assertTrue(all(response.finished for response in self.responses))
        self.hub.client.advance(1)
        self.assertEqual(fired, [None])

    def test_drain_during_authorizer(self) -> None:
        """A stream still being authorised when the drain begins never opens."""
        decided: Deferred[bool] = Deferred()
        self.hub.hub.authorizer = lambda request, channel: decided
        pending = self.hub.subscribe()
        fired: list[None] = []
        self.hub.registry.drain(1.0).addCallback(fired.append)
        decided.callback(True)
        self.hub.client.flush()
        self.assertTrue(pending.finished)
        self.assertIn("the server is shutting down", pending.comments)
        self.step_until(lambda: bool(fired), 10)
        self.assertEqual(self.hub.registry.streams, set())
