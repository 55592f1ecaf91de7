"""
Tests for ``GET /metrics``: the Prometheus text format, parsed back with
prometheus_client's own parser, matches what the clients saw.
"""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._app import SSEApp
from twisted_sse._event import Event
from twisted_sse._memory import MemoryBroker
from twisted_sse.testing import SSETestClient


def scrape(
    client: SSETestClient, headers: dict[str, str] | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers)
    assert response.code == 200, response.raw
    samples = {}
    for family in text_string_to_metric_families(response.raw.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class MetricsTests(SynchronousTestCase):
    """The figures in /metrics follow the streams and the hub."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = MemoryBroker(epoch=1)
        self.app = SSEApp(
            self.clock,
            broker=self.broker,
            heartbeat=0,
            publish_token="T",
            metrics_channels=["prices"],
            max_queue_events=3,
        )
        self.client = SSETestClient(self.app.resource(), self.clock)

    def test_content_type(self) -> None:
        """The body is in the Prometheus text format."""
        response = self.client.get("/metrics")
        self.assertEqual(response.code, 200)
        self.assertRegex(
            response.header("Content-Type") or "", r"^text/plain; version="
        )

    def test_streams_and_events(self) -> None:
        """Open streams per channel, opens, closes and events match the clients."""
        prices = [self.client.get("/channels/prices") for _ in range(2)]
        other = self.client.get("/channels/news")
        counter = self.client.get("/events")
        for number in range(3):
            self.app.hub.publish("prices", Event(data=str(number)))
        self.app.hub.publish("news", Event(data="x"))
        samples = scrape(self.client)
        self.assertEqual(samples[("sse_streams_open", (("channel", "prices"),))], 2)
        self.assertEqual(samples[("sse_streams_open", (("channel", "other"),))], 1)
        self.assertEqual(samples[("sse_streams_open", (("channel", "none"),))], 1)
        self.assertEqual(samples[("sse_events_published_total", ())], 4)
        self.assertEqual(samples[("sse_streams_opened_total", ())], 4)
        delivered = sum(len(r.events) for r in prices) + len(other.events)
        self.assertEqual(delivered, 7)
        self.assertEqual(samples[("sse_events_delivered_total", ())], 7)
        prices[0].disconnect()
        counter.disconnect()
        self.client.flush()
        samples = scrape(self.client)
        self.assertEqual(
            samples[("sse_streams_closed_total", (("reason", "lost"),))], 2
        )
        self.assertEqual(samples[("sse_streams_open", (("channel", "prices"),))], 1)

    def test_no_user_labels(self) -> None:
        """Channel names not named by the operator never become labels."""
        self.client.get("/channels/attacker-chosen-name")
        samples = scrape(self.client)
        labels = {value for key in samples for _, value in key[1]}
        self.assertNotIn("attacker-chosen-name", labels)

    def test_resumes_and_slow_clients(self) -> None:
        """Resumes by outcome and clients cut for not reading are counted."""
        for number in range(3):
            self.app.hub.publish("prices", Event(data=str(number)))
        self.client.get("/channels/prices", last_event_id="1-1")
        self.client.get("/channels/prices", last_event_id="garbage")
        slow = self.client.get("/channels/prices")
        slow.pause_reading()
        for number in range(10):
            self.app.hub.publish("prices", Event(data=str(number)))
        self.client.flush()
        samples = scrape(self.client)
        self.assertEqual(samples[("sse_resumes_total", (("outcome", "exact"),))], 1)
        self.assertEqual(samples[("sse_resumes_total", (("outcome", "malformed"),))], 1)
        self.assertEqual(samples[("sse_events_replayed_total", ())], 2)
        self.assertEqual(
            samples[("sse_streams_closed_total", (("reason", "aborted"),))], 1
        )
        self.assertEqual(samples[("sse_broker_up", ())], 1)

    def test_token(self) -> None:
        """With a metrics token, a scrape without it gets 401."""
        app = SSEApp(self.clock, heartbeat=0, metrics_token="m")
        client = SSETestClient(app.resource(), self.clock)
        refused = client.get("/metrics")
        self.assertEqual(refused.code, 401)
        self.assertEqual(refused.header("Content-Type"), "application/json")
        self.assertEqual(
            json.loads(refused.raw), {"error": "/metrics needs its bearer token"}
        )
        self.assertEqual(
            client.get("/metrics", {"Authorization": "Bearer wrong"}).code, 401
        )
        scrape(client, {"Authorization": "Bearer m"})

    def test_disabled(self) -> None:
        """With metrics off, /metrics is 404."""
        app = SSEApp(self.clock, heartbeat=0, metrics=False)
        client = SSETestClient(app.resource(), self.clock)
        self.assertEqual(client.get("/metrics").code, 404)


class BoundedSeriesTests(SynchronousTestCase):
    """/metrics stays small whatever publishers do."""

    def test_many_channels(self) -> None:
        """5,000 channels add no series; history and channels are gauged."""
        clock = Clock()
        broker = MemoryBroker(epoch=1, history_total=64 * 1024, clock=clock)
        app = SSEApp(clock, broker=broker, heartbeat=0, publish_token="T")
        client = SSETestClient(app.resource(), clock)
        before = scrape(client)
        subscribers = [client.get(f"/channels/c{n}") for n in range(50)]
        for n in range(5000):
            app.hub.publish(f"c{n}", Event(data="x" * 100))
        after = scrape(client)
        self.assertEqual(sorted(after), sorted(before))
        # The subscribed channels, and those whose history fits the total:
        # a channel left with neither is forgotten.
        self.assertEqual(after[("sse_channels", ())], len(broker.channel_names()))
        self.assertLess(after[("sse_channels", ())], 50 + 64 * 1024 // 100)
        self.assertLessEqual(after[("sse_history_bytes", ())], 64 * 1024)
        self.assertEqual(after[("sse_history_bytes", ())], broker.total_bytes)
        for subscriber in subscribers:
            subscriber.disconnect()
        client.disconnect_all()

    def test_guard_totals(self) -> None:
        """With a connection guard, its totals are counters in /metrics."""
        clock = Clock()
        app = SSEApp(clock, heartbeat=0)
        client = SSETestClient(app.resource(), clock)
        self.assertNotIn(("sse_connections_evicted_total", ()), scrape(client))
        assert app.collector is not None
        app.collector.guard = _Totals(evicted=40, refused=2, episodes=1)
        samples = scrape(client)
        self.assertEqual(samples[("sse_connections_evicted_total", ())], 40)
        self.assertEqual(samples[("sse_connections_refused_total", ())], 2)
        self.assertEqual(samples[("sse_fd_shortages_total", ())], 1)
        client.disconnect_all()


class _Totals:
    """What the collector reads of a ConnectionGuard."""

    def __init__(self, evicted: int, refused: int, episodes: int) -> None:
        self.evicted = evicted
        self.refused = refused
        self.episodes = episodes
