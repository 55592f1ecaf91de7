"""
Tests for L{twisted_sse._check._observations}: what a check saw, as plain
values; the one figure they work out is a test event's latency.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._check._observations import ExchangeObservation, PublishObservation


class PublishObservationTests(SynchronousTestCase):
    """PublishObservation.latency."""

    def test_latency(self) -> None:
        """The latency is from the request to the arrival on the stream."""
        publish = PublishObservation(1, 0.6, ExchangeObservation("POST"), 0.85)
        self.assertAlmostEqual(publish.latency or 0.0, 0.25)

    def test_never_arrived(self) -> None:
        """A test event that never arrived has no latency."""
        publish = PublishObservation(1, 0.6, ExchangeObservation("POST"))
        self.assertIsNone(publish.latency)
