"""
Tests for the tutorial's counter: no sockets, no waiting, the same under
``trial`` and ``pytest``.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tutorial_counter import count_on, make_root
from twisted_sse import EventStreamResource
from twisted_sse.testing import SSETestClient


class CounterTests(SynchronousTestCase):
    """The counter stream and its page."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = SSETestClient(make_root(self.clock), self.clock)

    def test_page(self) -> None:
        """GET / is the page that opens an EventSource on /events."""
        response = self.client.get("/")
        self.assertEqual(response.code, 200)
        self.assertIn(b'new EventSource("/events")', response.raw)

    def test_counts(self) -> None:
        """The stream sets retry to 1000 ms, then sends 1, 2, 3, one a second."""
        response = self.client.get("/events")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.header("Content-Type"), "text/event-stream; charset=utf-8"
        )
        self.assertEqual(response.retry, 1000)

        self.client.advance(3)

        self.assertEqual([event.data for event in response.events], ["1", "2", "3"])
        response.disconnect()
        self.client.assert_clean(testcase=self)

    def test_each_connection_counts_from_one(self) -> None:
        """A second connection starts again at 1."""
        first = self.client.get("/events")
        self.client.advance(2)
        second = self.client.get("/events")
        self.client.advance(1)

        self.assertEqual([event.data for event in first.events], ["1", "2", "3"])
        self.assertEqual([event.data for event in second.events], ["1"])
        self.client.disconnect_all()
        self.client.assert_clean(testcase=self)

    def test_count_on_resumes(self) -> None:
        """The generator's stream goes on from the Last-Event-ID it is sent."""
        client = SSETestClient(
            EventStreamResource(count_on, clock=self.clock, retry=1000), self.clock
        )
        first = client.get("/events")
        client.advance(2)
        first.disconnect()

        again = client.get("/events", last_event_id=first.last_event_id)
        client.advance(2)

        self.assertEqual([event.data for event in first.events], ["1", "2"])
        self.assertEqual([event.data for event in again.events], ["3", "4"])
        again.disconnect()
        client.assert_clean(testcase=self)
