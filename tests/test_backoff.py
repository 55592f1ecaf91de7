"""
Tests for L{twisted_sse._backoff}: the wait before a reconnect, after a
stream that delivered events and after failed attempts.  How the source
counts failed attempts is tested in L{tests.test_client}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._backoff import reconnect_delay


def never() -> float:
    """A source of jitter that must not be asked."""
    raise AssertionError("no jitter without a failure")


class ReconnectDelayTests(SynchronousTestCase):
    """L{reconnect_delay}."""

    def test_no_failure(self) -> None:
        """Without failed attempts the wait is the reconnection time, unjittered."""
        self.assertEqual(reconnect_delay(3000, 0, 60.0, never), 3.0)
        self.assertEqual(reconnect_delay(0, 0, 60.0, never), 0.0)

    def test_doubles(self) -> None:
        """The wait doubles with each failed attempt in a row, from the retry time."""
        delays = [reconnect_delay(3000, n, 600.0, lambda: 0.0) for n in range(1, 5)]
        self.assertEqual(delays, [6.0, 12.0, 24.0, 48.0])

    def test_floor(self) -> None:
        """Below one second, the doubling starts from one second: no spinning."""
        delays = [reconnect_delay(0, n, 60.0, lambda: 0.0) for n in range(1, 4)]
        self.assertEqual(delays, [2.0, 4.0, 8.0])

    def test_capped(self) -> None:
        """The wait never passes max_backoff."""
        self.assertEqual(reconnect_delay(3000, 30, 60.0, lambda: 0.0), 60.0)

    def test_long_reconnection_time(self) -> None:
        """A reconnection time beyond the cap is waited in full, jitter or not."""
        for jitter in (lambda: 0.0, lambda: 0.999):
            self.assertEqual(reconnect_delay(120_000, 3, 60.0, jitter), 120.0)

    def test_jitter(self) -> None:
        """Jitter takes up to a quarter off, never going under the reconnection time."""
        self.assertEqual(reconnect_delay(0, 3, 60.0, lambda: 0.5), 7.0)
        self.assertEqual(reconnect_delay(0, 3, 60.0, lambda: 1.0), 6.0)
        self.assertEqual(reconnect_delay(3000, 1, 60.0, lambda: 1.0), 4.5)
        self.assertEqual(reconnect_delay(5000, 1, 6.0, lambda: 1.0), 5.0)
