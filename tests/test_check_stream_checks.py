"""
Tests for L{twisted_sse._check._stream_checks}: the judgements of the
stream as it flowed (first byte, end, frames, delivery, heartbeat, resume),
on made-up observations.
"""

from __future__ import annotations

from typing import Any

from attrs import evolve

from twisted_sse._check._observations import (
    Arrival,
    ExchangeObservation,
    Issue,
    Observations,
    PublishObservation,
    ResumeObservation,
)
from twisted_sse._check._stream_checks import (
    check_delivery,
    check_first_byte,
    check_frames,
    check_heartbeat,
    check_resume,
    check_stream,
)

from ._check_fakes import JudgementTests, head, observed, reads_of, steady, stream


class StreamTests(JudgementTests):
    """First byte, the connection held, frames, heartbeat."""

    def test_first_byte(self) -> None:
        """Prompt passes, late warns, none fails naming buffering."""
        self.judged(check_first_byte, observed(), "pass")
        late = observed(stream=stream(first_byte_at=2.5))
        self.judged(check_first_byte, late, "warn", "2.5 s", "retry:")
        none = observed(stream=stream(first_byte_at=None))
        self.judged(check_first_byte, none, "fail", "no byte of the body", "buffering")

    def test_stream_end(self) -> None:
        """Open to the end passes; ended by the server warns; broken fails."""
        self.judged(check_stream, observed(), "pass")
        ended = observed(stream=stream(end="eof", ended_at=1.0, retry=2000))
        self.judged(check_stream, ended, "warn", "ended the stream", "2000 ms")
        cut = observed(
            stream=stream(
                end="limit", error="dropped: a line longer than max_line_bytes (16 B)"
            )
        )
        self.judged(check_stream, cut, "fail", "a line longer than max_line_bytes")

    def test_frames(self) -> None:
        """Issues fail or warn by their level, counted; none passes."""
        self.judged(check_frames, observed(), "pass", "all valid")
        issues = (
            Issue("warn", "line 2: unknown field 'x'"),
            Issue("fail", "line 3: an id with a NUL", 4),
        )
        obs = observed(stream=stream(issues=issues))
        self.judged(check_frames, obs, "fail", "an id with a NUL (4 times)")
        obs = observed(stream=stream(issues=issues[:1]))
        self.judged(check_frames, obs, "warn", "unknown field")
        obs = observed(stream=stream(lines=0))
        self.judged(check_frames, obs, "skip", "no whole line")

    def test_heartbeat(self) -> None:
        """A silence of --idle or more fails, named; shorter passes."""
        self.judged(check_heartbeat, observed(), "pass")
        obs = observed(idle=1.0, stream=stream(longest_silence=1.2, silence_from=0.3))
        self.judged(check_heartbeat, obs, "fail", "silent for 1.2 s", "--idle 1 s")

    def test_heartbeat_unseen(self) -> None:
        """A stream quiet for most of a watch shorter than --idle warns."""
        obs = observed(stream=stream(longest_silence=2.9, trailing_silence=2.9))
        self.judged(check_heartbeat, obs, "warn", "watch longer")
        obs = evolve(obs, window=40.0)
        self.judged(check_heartbeat, obs, "pass")


class DeliveryTests(JudgementTests):
    """check_delivery: events arrive when sent, not in bursts."""

    def test_steady(self) -> None:
        """Events one per read, spread out, pass."""
        events = steady(10)
        obs = observed(stream=stream(events=events, reads=reads_of(events)))
        self.judged(check_delivery, obs, "pass", "10 events")

    def test_bursts(self) -> None:
        """
        Events held and let go together after silences fail: the
        buffering the server of a window does.
        """
        events = tuple(
            Arrival(at=1.0 + window, data=str(n), read=window + 1)
            for window in range(2)
            for n in range(5)
        )
        obs = observed(stream=stream(events=events, reads=reads_of(events)))
        self.judged(check_delivery, obs, "fail", "10 of 10 events", "2 burst", "buffer")

    def test_first_burst_counts_from_the_request(self) -> None:
        """A burst that came with a head held as long counts as one."""
        events = tuple(Arrival(at=1.8, data=str(n), read=1) for n in range(20))
        obs = observed(
            stream=stream(head_at=1.8, events=events, reads=reads_of(events))
        )
        self.judged(check_delivery, obs, "fail", "20 of 20")

    def test_stall_in_a_fast_stream(self) -> None:
        """
        A stream of an event every 5 ms that stalls once is not buffering:
        only the backlog that came at once is a burst.
        """
        events = steady(100, every=0.005)
        backlog = tuple(Arrival(at=1.2, data=str(n), read=500) for n in range(10))
        after = tuple(
            Arrival(at=1.2 + n * 0.005, data=str(n), read=501 + n)
            for n in range(1, 100)
        )
        events += backlog + after
        obs = observed(stream=stream(events=events, reads=reads_of(events)))
        self.judged(check_delivery, obs, "warn", "11 of 209 events", "1 burst")

    def test_one_small_burst_warns(self) -> None:
        """A burst among many single events only warns."""
        events = steady(10) + tuple(
            Arrival(at=4.0, data=str(n), read=99) for n in range(3)
        )
        obs = observed(window=5.0, stream=stream(events=events, reads=reads_of(events)))
        self.judged(check_delivery, obs, "warn", "3 of 13")

    def test_timestamps_spread(self) -> None:
        """Times in the data that show events held fail, even without a burst."""
        start = 1_800_000_000.0
        events = tuple(
            Arrival(at=1.0 + n * 0.3, read=n + 1, stamp=start + 0.2 * n - 0.5 * n)
            for n in range(5)
        )
        obs = observed(stream=stream(events=events, reads=reads_of(events)))
        self.judged(check_delivery, obs, "fail", "times in their data", "buffering")

    def test_timestamps_excuse_bursts(self) -> None:
        """Events sent together (the same time in each) may arrive together."""
        start = 1_800_000_000.0
        events = tuple(
            Arrival(at=1.0 + window, read=window + 1, stamp=start + 1.0 + window)
            for window in range(2)
            for n in range(5)
        )
        obs = observed(stream=stream(events=events, reads=reads_of(events)))
        self.judged(check_delivery, obs, "pass", "times in their data")

    def test_published_late(self) -> None:
        """A test event that takes over a second to arrive fails."""
        publishes = (
            PublishObservation(1, 0.6, ExchangeObservation("POST", head()), 2.1),
        )
        obs = observed(publishing=True, publishes=publishes)
        self.judged(check_delivery, obs, "fail", "1.5 s", "buffering proxy")

    def test_published_never(self) -> None:
        """A test event accepted but never seen fails."""
        publishes = (PublishObservation(1, 0.6, ExchangeObservation("POST", head())),)
        obs = observed(publishing=True, publishes=publishes)
        self.judged(check_delivery, obs, "fail", "never arrived")

    def test_published_prompt(self) -> None:
        """Test events that arrive at once pass."""
        publishes = (
            PublishObservation(1, 0.6, ExchangeObservation("POST", head()), 0.61),
        )
        obs = observed(publishing=True, publishes=publishes)
        self.judged(check_delivery, obs, "pass", "10 ms")

    def test_too_few(self) -> None:
        """Fewer than two events, and nothing published: skipped."""
        obs = observed(stream=stream(events=steady(1), event_count=1))
        self.judged(check_delivery, obs, "skip", "--publish")


class ResumeTests(JudgementTests):
    """check_resume: Last-Event-ID gets the events after it."""

    def resumed(self, *ids: str | None, **kwargs: Any) -> Observations:
        """A main stream with ids 1 2 3; resumed after 2 with ``ids``."""
        events = tuple(
            Arrival(at=1.0 + n, id=event_id, data=f"d{event_id}", read=n + 1)
            for n, event_id in enumerate(ids)
        )
        resume = ResumeObservation(
            after="2",
            expected="3",
            before=("1", "2"),
            first_data="d1",
            stream=stream(events=events, **kwargs),
        )
        return observed(resume=resume)

    def test_next(self) -> None:
        """The event after the id comes first: pass."""
        self.judged(check_resume, self.resumed("3"), "pass", "'3', the next event")

    def test_events_without_ids_first(self) -> None:
        """Events without an id are passed over: the first with one counts."""
        self.judged(check_resume, self.resumed(None, "3"), "pass")

    def test_from_the_start(self) -> None:
        """The stream's first event again: replay from the start."""
        self.judged(check_resume, self.resumed("1"), "fail", "from the start")

    def test_same_again(self) -> None:
        """The event of the id itself again fails."""
        self.judged(check_resume, self.resumed("2"), "fail", "'2' again")

    def test_skipped(self) -> None:
        """A later event first: the next one was skipped."""
        self.judged(check_resume, self.resumed("4"), "fail", "skipped '3'")

    def test_nothing(self) -> None:
        """Nothing after the id fails."""
        self.judged(check_resume, self.resumed(), "fail", "nothing came")

    def test_refused(self) -> None:
        """A failed resume request fails, with its status."""
        obs = self.resumed(head=head(500))
        self.judged(check_resume, obs, "fail", "HTTP 500")

    def test_no_ids(self) -> None:
        """A stream without ids is skipped, saying so."""
        obs = observed(stream=stream(events=steady(3)))
        self.judged(check_resume, obs, "skip", "no ids")
        obs = observed(stream=stream(events=steady(1, id="7")))
        self.judged(check_resume, obs, "skip", "two are needed")
