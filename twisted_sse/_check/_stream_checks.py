"""
The checks of ``twisted-sse check`` on the stream as it flowed: the first
byte, the stream kept open, valid frames, events delivered when sent (not
held and let go in bursts), a heartbeat, and a resume with
``Last-Event-ID``.
"""

from __future__ import annotations

from typing import Final

from ._judgement import (
    LATE,
    NO_STREAM,
    PROMPT,
    UNREADABLE,
    Check,
    Named,
    Status,
    answered_2xx,
    event_stream,
    seconds,
)
from ._observations import Arrival, Observations, StreamObservation

__all__ = [
    "check_delivery",
    "check_first_byte",
    "check_frames",
    "check_heartbeat",
    "check_resume",
    "check_stream",
]

#: Events this close together (seconds), or in one read, arrived together.
BURST_GAP: Final = 0.01
#: The fewest events that make a burst...
BURST_EVENTS: Final = 3
#: ... after at least this long without a byte.
BURST_SILENCE: Final = 0.5
#: The most the delay of events may differ (seconds), by the times written
#: in their data, before it is buffering.
STAMP_SPREAD: Final = 0.5
#: Events arriving this soon after the head are left out of the timestamp
#: comparison: a server may replay older events when a stream opens.
OPENING: Final = 0.2


def check_first_byte(obs: Observations) -> Check:
    """The first byte of the body comes at once, with the head."""
    make = Named("first-byte")
    answer = event_stream(obs)
    if answer is None:
        return make("skip", NO_STREAM)
    stream = answer[0]
    head_at = stream.head_at or 0.0
    first = stream.first_byte_at
    if first is None:
        return make(
            "fail",
            f"the head came after {seconds(head_at)}, but no byte of the body in the "
            f"{obs.window:g} s watch: a buffering proxy, or a server that writes "
            "nothing until its first event",
            head=head_at,
        )
    details = {"head": head_at, "first_byte": first}
    if first > PROMPT:
        return make(
            "warn",
            f"the first byte came after {seconds(first)} (the head after "
            f"{seconds(head_at)}): send a retry: line or a comment at once, so "
            "that clients and proxies see the stream open",
            **details,
        )
    return make(
        "pass",
        f"after {seconds(first)} (the head after {seconds(head_at)})",
        **details,
    )


def check_stream(obs: Observations) -> Check:
    """The stream stays open for the whole watch."""
    make = Named("stream")
    answer = event_stream(obs)
    if answer is None:
        return make("skip", NO_STREAM)
    stream = answer[0]
    ended = stream.ended_at if stream.ended_at is not None else obs.window
    if stream.end == "window":
        return make("pass", f"open for the whole {obs.window:g} s watch")
    if stream.end == "eof":
        retry = stream.retry if stream.retry is not None else 3000
        return make(
            "warn",
            f"the server ended the stream after {seconds(ended)}: clients reconnect "
            f"after retry ({retry} ms)",
            ended=ended,
        )
    return make(
        "fail",
        f"the stream broke after {seconds(ended)}: {stream.error or 'no reason'}",
        ended=ended,
    )


def check_frames(obs: Observations) -> Check:
    """The frames are valid: field syntax, ids, ``retry``, UTF-8."""
    make = Named("frames")
    answer = event_stream(obs)
    if answer is None:
        return make("skip", NO_STREAM)
    stream = answer[0]
    if not stream.readable and not stream.issues:
        return make("skip", UNREADABLE)
    details = {"lines": stream.lines, "events": stream.event_count}
    if not stream.lines and not stream.issues:
        return make("skip", "no whole line arrived")
    levels: tuple[Status, ...] = ("fail", "warn")
    for level in levels:
        found = [issue for issue in stream.issues if issue.level == level]
        if found:
            reason = "; ".join(
                issue.message + (f" ({issue.count} times)" if issue.count > 1 else "")
                for issue in found
            )
            return make(level, reason, **details)
    retry = f", retry {stream.retry} ms" if stream.retry is not None else ""
    return make(
        "pass",
        f"{stream.lines} lines, {stream.event_count} events{retry}: all valid",
        **details,
    )


def _bursts(stream: StreamObservation) -> list[tuple[int, float]]:
    """
    The bursts of a stream: at least :data:`BURST_EVENTS` events that
    arrived together (in the read of the first, or within
    :data:`BURST_GAP` of it) after at least :data:`BURST_SILENCE` without
    a byte of the body.  Before the first byte, the silence counts from the
    request, not the head: a buffering proxy holds the head too.

    A burst is what came with its first event, not a chain of events each
    close to the one before: a steady fast stream after one stall of the
    checker is a burst (its backlog) and the rest, not one long burst.

    :returns: ``(events, silence before)`` of each.
    """
    reads = [at for at, _ in stream.reads]
    groups: list[list[Arrival]] = []
    for event in stream.events:
        first = groups[-1][0] if groups else None
        if first is not None and (
            event.read == first.read or event.at - first.at <= BURST_GAP
        ):
            groups[-1].append(event)
        else:
            groups.append([event])
    bursts = []
    for group in groups:
        if len(group) < BURST_EVENTS:
            continue
        start = group[0].at
        # Pieces of one network read are noted a few microseconds apart.
        before = [at for at in reads if at < start - BURST_GAP]
        silence = start - (before[-1] if before else 0.0)
        if silence >= BURST_SILENCE:
            bursts.append((len(group), silence))
    return bursts


def check_delivery(obs: Observations) -> Check:
    """
    Events arrive when sent, not held and let go in bursts: judged by the
    test events published (their latency), else by the times written in
    the data, else by how the events were spaced when they arrived.
    """
    make = Named("delivery")
    answer = event_stream(obs)
    if answer is None:
        return make("skip", NO_STREAM)
    stream = answer[0]
    if not stream.readable:
        return make("skip", UNREADABLE)
    accepted = [p for p in obs.publishes if answered_2xx(p.exchange)]
    late = [p for p in accepted if p.latency is None or p.latency > LATE]
    if late:
        missing = [p for p in late if p.latency is None]
        if missing:
            return make(
                "fail",
                f"{len(missing)} of {len(accepted)} test events published never "
                "arrived in the watch: something between holds the stream "
                "(a buffering proxy, a compressor)",
            )
        worst = max(p.latency or 0.0 for p in late)
        return make(
            "fail",
            f"a test event took {seconds(worst)} to arrive: something between holds "
            "events (a buffering proxy, a compressor)",
            latency=worst,
        )
    if accepted:
        worst = max(p.latency or 0.0 for p in accepted)
        return make(
            "pass",
            f"{len(accepted)} test events arrived within {seconds(worst)}",
            latency=worst,
        )
    stamped = [
        event
        for event in stream.events
        if event.stamp is not None and event.at - (stream.head_at or 0.0) > OPENING
    ]
    if len(stamped) >= BURST_EVENTS:
        lags = [obs.started + event.at - (event.stamp or 0.0) for event in stamped]
        spread = max(lags) - min(lags)
        if spread > STAMP_SPREAD:
            return make(
                "fail",
                f"by the times in their data, some events arrived {seconds(spread)} "
                "later than others: they are held and let go in bursts (buffering)",
                spread=spread,
            )
        return make(
            "pass",
            f"by the times in their data, {len(stamped)} events arrived within "
            f"{seconds(spread)} of each other's delay",
            spread=spread,
        )
    if stream.event_count < 2:
        hint = (
            "the test events were refused (see publish)"
            if obs.publishes
            else "publish test events with --publish, or watch longer"
        )
        return make(
            "skip",
            f"{stream.event_count} event(s) in {obs.window:g} s: too few to "
            f"judge; {hint}",
        )
    bursts = _bursts(stream)
    held = sum(size for size, _ in bursts)
    counted = len(stream.events)
    if bursts:
        size, silence = max(bursts)
        reason = (
            f"{held} of {counted} events arrived in {len(bursts)} burst(s), up to "
            f"{size} at once after {seconds(silence)} without a byte"
        )
        if 2 * held >= counted:
            return make(
                "fail",
                reason + ": held and let go by a buffer (a proxy, a compressor); if "
                "the server sends them so, put a time in the data to tell",
                bursts=len(bursts),
            )
        return make("warn", reason, bursts=len(bursts))
    return make("pass", f"{counted} events arrived one by one, no burst")


def check_heartbeat(obs: Observations) -> Check:
    """The longest silence of the stream stays under ``--idle``."""
    make = Named("heartbeat")
    stream = obs.stream
    if stream is None or stream.head is None or event_stream(obs) is None:
        return make("skip", NO_STREAM)
    longest = stream.longest_silence
    details = {"longest_silence": longest, "idle": obs.idle}
    if longest >= obs.idle:
        return make(
            "fail",
            f"silent for {seconds(longest)} (from {seconds(stream.silence_from)}), "
            f"at least --idle {obs.idle:g} s: proxies and load balancers cut such "
            "streams; send a comment line every 15 s or so",
            **details,
        )
    if obs.window < obs.idle and stream.trailing_silence >= obs.window / 2:
        return make(
            "warn",
            f"silent for the last {seconds(stream.trailing_silence)} of a "
            f"{obs.window:g} s watch: a heartbeat within --idle {obs.idle:g} s could "
            "not be seen; watch longer (--duration above --idle)",
            **details,
        )
    return make(
        "pass",
        f"longest silence {seconds(longest)} in {obs.window:g} s "
        f"(limit {obs.idle:g} s)",
        **details,
    )


def check_resume(obs: Observations) -> Check:
    """Reconnecting with ``Last-Event-ID`` gets the events after it."""
    make = Named("resume")
    answer = event_stream(obs)
    if answer is None:
        return make("skip", NO_STREAM)
    stream = answer[0]
    resume = obs.resume
    if resume is None:
        ids = {event.id for event in stream.events if event.id is not None}
        if obs.resume_note:
            reason = obs.resume_note
        elif not ids:
            reason = "the stream sent no ids, so it cannot be resumed"
        else:
            reason = (
                "only one event with an id: two are needed to test a resume "
                "(publish test events with --publish, or watch longer)"
            )
        return make("skip", reason)
    again = resume.stream
    sent = f"Last-Event-ID: {resume.after}"
    if again.head is None or again.head.status != 200:
        error = again.error or (f"HTTP {again.head.status}" if again.head else "")
        return make("fail", f"the request with {sent} failed: {error}")
    first = next((event for event in again.events if event.id is not None), None)
    if first is None:
        return make(
            "fail",
            f"nothing came after {sent} in {seconds(_left(obs, again))}, although "
            f"{resume.expected!r} followed it",
        )
    details = {"sent": resume.after, "expected": resume.expected, "got": first.id}
    if first.id == resume.expected:
        return make(
            "pass", f"{sent} went on with {first.id!r}, the next event", **details
        )
    if (resume.before and first.id == resume.before[0]) or (
        first.data and first.data == resume.first_data and first.id not in resume.before
    ):
        return make(
            "fail",
            f"{sent} replayed from the start: it got {first.id!r}, the stream's first "
            "event, again",
            **details,
        )
    if first.id == resume.after:
        return make("fail", f"{sent} got the event {first.id!r} again", **details)
    if first.id in resume.before:
        return make(
            "fail",
            f"{sent} replayed from an earlier event: it got {first.id!r}",
            **details,
        )
    return make(
        "fail",
        f"{sent} skipped {resume.expected!r}: it went on with {first.id!r}",
        **details,
    )


def _left(obs: Observations, stream: StreamObservation) -> float:
    start = stream.head_at or 0.0
    end = stream.ended_at if stream.ended_at is not None else obs.window
    return max(end - start, 0.0)
