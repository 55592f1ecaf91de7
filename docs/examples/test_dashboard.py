"""
Tests for the Klein dashboard and for a hub, with twisted_sse.testing.

Run them with ``trial`` or ``pytest``: they are synchronous, use no socket
and wait for nothing, because time is a Clock that the test moves.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from embed_klein import Dashboard
from hub_server import make_hub, make_root
from twisted_sse import MemoryBroker
from twisted_sse.testing import SSETestClient


class DashboardTests(SynchronousTestCase):
    """The dashboard's streams."""

    def setUp(self) -> None:
        # One clock for the application and the client.
        self.clock = Clock()
        self.dashboard = Dashboard(self.clock)
        self.client = SSETestClient.for_klein(self.dashboard.app, self.clock)
        # Whatever a test leaves open is closed before the next one.
        self.addCleanup(self.client.disconnect_all)

    def test_ticks(self) -> None:
        """/ticks sends 1, 2, 3, one a second, after a retry of 1000 ms."""
        response = self.client.get("/ticks")

        self.client.advance(3)

        self.assertEqual(response.code, 200)
        self.assertEqual(response.retry, 1000)
        self.assertEqual([event.data for event in response.events], ["1", "2", "3"])

    def test_alert_reaches_every_watcher(self) -> None:
        """An alert is an event of type "alert" on every open /alerts stream."""
        first = self.client.get("/alerts")
        second = self.client.get("/alerts")
        waiting = first.next_event()

        self.dashboard.alert("disk full")

        event = self.successResultOf(waiting)
        self.assertEqual((event.type, event.data), ("alert", "disk full"))
        self.assertEqual(second.events, first.events)

    def test_idle_stream_gets_heartbeats(self) -> None:
        """A silent stream gets a comment at least every 15 seconds."""
        response = self.client.get("/alerts")

        self.client.advance(60)

        self.assertGreaterEqual(len(response.comments), 4)
        self.assertEqual(response.events, [])

    def test_other_methods(self) -> None:
        """The stream answers HEAD with its headers, and POST with 405."""
        head = self.client.request("HEAD", "/ticks")
        post = self.client.request("POST", "/ticks")

        self.assertEqual(
            head.header("Content-Type"), "text/event-stream; charset=utf-8"
        )
        self.assertTrue(head.finished)
        self.assertEqual(post.code, 405)

    def test_nothing_outlives_the_client(self) -> None:
        """A client that goes away leaves no stream, watcher or timer behind."""
        ticks = self.client.get("/ticks")
        alerts = self.client.get("/alerts")
        self.client.advance(5)

        ticks.disconnect()
        alerts.disconnect()

        self.client.assert_clean(
            self.dashboard.ticks, self.dashboard.alerts, testcase=self
        )


class HubTests(SynchronousTestCase):
    """Publishing and subscribing through a hub."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = MemoryBroker()
        self.hub = make_hub(self.clock, self.broker, publish_token="secret")
        self.client = SSETestClient(make_root(self.hub), self.clock)
        self.addCleanup(self.client.disconnect_all)

    def test_publish_over_http(self) -> None:
        """A POST with the token reaches a subscriber, with the id it answered."""
        subscriber = self.client.get("/channels/news")

        posted = self.client.request(
            "POST",
            "/channels/news",
            {"Authorization": "Bearer secret", "Content-Type": "application/json"},
            b'{"data": "hello", "event": "headline"}',
        )

        self.assertEqual(posted.code, 200)
        (event,) = subscriber.events
        self.assertEqual((event.type, event.data), ("headline", "hello"))
        self.assertIn(event.last_event_id.encode("ascii"), posted.raw)

    def test_publish_needs_the_token(self) -> None:
        """A POST without the token is refused with 401."""
        posted = self.client.request("POST", "/channels/news", body=b"hello")
        self.assertEqual(posted.code, 401)

    def test_no_subscription_outlives_the_client(self) -> None:
        """A subscriber that goes away leaves nothing in the broker."""
        subscriber = self.client.get("/channels/news")
        subscriber.disconnect()
        self.client.assert_clean(
            self.hub.registry, brokers=[self.broker], testcase=self
        )
