"""
Tests for L{twisted_sse._check._recorders}: the time written in an
event's data.  The recorders themselves are driven by
L{tests.test_check_watch}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._check._recorders import timestamp_in


class TimestampTests(SynchronousTestCase):
    """timestamp_in: the time an event's data says it was made."""

    def test_found(self) -> None:
        """Seconds, milliseconds, ISO 8601 with an offset; alone or in JSON."""
        cases = {
            "1800000000.5": 1800000000.5,
            '{"time": 1800000000}': 1800000000.0,
            '{"ts": 1800000000123}': 1800000000.123,
            '{"sent_at": "2027-01-15T08:00:00+00:00"}': 1800000000.0,
            "2027-01-15T08:00:00Z": 1800000000.0,
        }
        for data, expected in cases.items():
            self.assertAlmostEqual(timestamp_in(data) or 0.0, expected, places=3)

    def test_not_found(self) -> None:
        """Counters, text, naive times and other JSON have none."""
        for data in ["1", "hello", "2027-01-15T08:00:00", "[1800000000]", '{"n": 1}']:
            self.assertIsNone(timestamp_in(data), data)
