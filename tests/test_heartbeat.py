"""
Tests for L{twisted_sse._heartbeat}: one shared timer keeps every idle
stream of a hub alive.
"""

from __future__ import annotations

from twisted.web.test.requesthelper import DummyRequest

from tests._transports import TransportCase, over_both_transports
from twisted_sse import EventStream

from ._helpers import HubFixture


@over_both_transports
class HeartbeatTests(TransportCase):
    """One shared timer keeps every idle stream alive."""

    def test_one_timer(self) -> None:
        """Many streams on many channels share one delayed call."""
        hub = HubFixture(self)
        for n in range(30):
            hub.subscribe(f"channel{n % 3}")
        active = [call for call in hub.clock.getDelayedCalls() if call.active()]
        self.assertEqual(len(active), 1)

    def test_idle_streams_only(self) -> None:
        """Idle streams get a comment; streams that just wrote get none."""
        hub = HubFixture(self, heartbeat=15)
        busy, idle = hub.subscribe("busy"), hub.subscribe("idle")
        hub.client.advance(14)
        hub.publish("x", "busy")
        hub.client.advance(1)
        self.assertEqual(idle.comments, [""])
        self.assertEqual(busy.comments, [])
        self.assertEqual(idle.events, [])

    def test_interval(self) -> None:
        """An idle stream gets one heartbeat per interval of silence."""
        hub = HubFixture(self, heartbeat=15)
        response = hub.subscribe()
        hub.client.advance(60)
        self.assertEqual(len(response.comments), 4)

    def test_stops_with_last_stream(self) -> None:
        """The timer stops when the last stream closes."""
        hub = HubFixture(self)
        responses = [hub.subscribe() for _ in range(3)]
        for response in responses:
            response.disconnect()
        self.assertFalse(hub.hub.heartbeat.running)
        self.assertEqual(hub.clock.getDelayedCalls(), [])

    def test_stream_added_alone_and_in_a_resource(self) -> None:
        """
        Streams watched one by one and a resource's watched set share the
        timer; it runs until both are empty.
        """
        hub = HubFixture(self, heartbeat=10)
        heartbeat = hub.hub.heartbeat
        response = hub.subscribe()
        extra = EventStream(DummyRequest([b""]), hub.clock, heartbeat=heartbeat)
        heartbeat.add(extra)
        response.disconnect()
        self.assertTrue(heartbeat.running)
        extra._release("closed")
        self.assertFalse(heartbeat.running)
        self.assertEqual(hub.clock.getDelayedCalls(), [])
