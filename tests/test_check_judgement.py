"""
Tests for L{twisted_sse._check._judgement}: a check's result, and the
helpers every check shares to find the stream and word its reason.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._check._judgement import (
    Check,
    Named,
    answered_2xx,
    essence,
    event_stream,
    opened,
    seconds,
)
from twisted_sse._check._observations import ExchangeObservation

from ._check_fakes import head, observed, stream


class NamedTests(SynchronousTestCase):
    """Named: the checks of one name."""

    def test_check(self) -> None:
        """It makes a Check of its name, with the details given by keyword."""
        check = Named("heartbeat")("warn", "quiet", longest=2.5)
        self.assertEqual(check, Check("heartbeat", "warn", "quiet", {"longest": 2.5}))


class StreamFoundTests(SynchronousTestCase):
    """opened and event_stream: the stream, when there is one to judge."""

    def test_opened(self) -> None:
        """A stream that answered 200 is opened, whatever its type."""
        plain = stream(head=head(headers=[("content-type", "text/plain")]))
        found = opened(observed(stream=plain))
        self.assertEqual(found, (plain, plain.head))

    def test_not_opened(self) -> None:
        """No stream, no head, or another status: not opened."""
        for obs in [
            observed(stream=None),
            observed(stream=stream(head=None)),
            observed(stream=stream(head=head(204))),
            observed(stream=stream(head=head(301))),
        ]:
            self.assertIsNone(opened(obs))
            self.assertIsNone(event_stream(obs))

    def test_event_stream(self) -> None:
        """A 200 of text/event-stream, in any case, with parameters, is one."""
        for value in ["text/event-stream", "Text/Event-Stream; charset=utf-8"]:
            sse = stream(head=head(headers=[("content-type", value)]))
            self.assertEqual(event_stream(observed(stream=sse)), (sse, sse.head))

    def test_not_an_event_stream(self) -> None:
        """A 200 of another type, or of none, is not an event stream."""
        for headers in [[("content-type", "text/plain")], []]:
            obs = observed(stream=stream(head=head(headers=headers)))
            self.assertIsNone(event_stream(obs))


class HelperTests(SynchronousTestCase):
    """essence, answered_2xx and seconds."""

    def test_essence(self) -> None:
        """The media type, in lower case, without parameters; None without one."""
        value = "Text/Event-Stream ; charset=UTF-8"
        self.assertEqual(
            essence(head(headers=[("content-type", value)])), "text/event-stream"
        )
        self.assertIsNone(essence(head(headers=[])))

    def test_answered_2xx(self) -> None:
        """Statuses 200 to 299 are answered; others, or no answer, are not."""
        for status, answered in [(200, True), (204, True), (299, True), (300, False)]:
            exchange = ExchangeObservation("HEAD", head(status))
            self.assertEqual(answered_2xx(exchange), answered, status)
        self.assertFalse(answered_2xx(ExchangeObservation("HEAD", error="refused")))

    def test_seconds(self) -> None:
        """Under a second in whole milliseconds; from one second, in tenths."""
        self.assertEqual(
            [seconds(value) for value in [0.0004, 0.0126, 0.9994, 1.0, 12.34]],
            ["0 ms", "13 ms", "999 ms", "1.0 s", "12.3 s"],
        )
