"""
``twisted-sse check``: what was seen of an endpoint
(:class:`~twisted_sse._observe.Observations`) judged check by check, and
the report, as a table or as JSON.

Each check is a pure function of the observations, so that each rule is
tested on its own with made-up observations.  A check passes, fails, warns
(clients cope, but it is likely a mistake, or the evidence is thin) or is
skipped (nothing to judge, or not asked for), with a one-line reason that
names the fault.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal

from attrs import field, frozen

from ._exchange import Head
from ._observe import (
    ACCEPT_ENCODING,
    Arrival,
    ExchangeObservation,
    Observations,
    StreamObservation,
)
from ._url import mime_essence

__all__ = ["CHECKS", "Check", "Report", "judge", "render_text"]

#: Seconds within which the first byte of a stream, and a HEAD's answer,
#: count as prompt.
PROMPT: Final = 1.0
#: Seconds a published test event may take to arrive and still count as
#: delivered at once.
LATE: Final = 1.0
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

Status = Literal["pass", "fail", "warn", "skip"]


@frozen
class Check:
    """
    One judgement.

    :ivar name: What was checked, such as ``content-encoding``.
    :ivar status: ``pass``, ``fail``, ``warn`` or ``skip``.
    :ivar reason: Why, in one line.
    :ivar details: Figures for the JSON report (seconds, counts).
    """

    name: str
    status: Status
    reason: str
    details: Mapping[str, object] = field(factory=dict)


@frozen
class _Named:
    """Makes the checks of one name."""

    name: str

    def __call__(self, status: Status, reason: str, **details: object) -> Check:
        return Check(self.name, status, reason, details)


def _opened(obs: Observations) -> tuple[StreamObservation, Head] | None:
    """The stream and its head, if it answered 200."""
    stream = obs.stream
    if stream is None or stream.head is None or stream.head.status != 200:
        return None
    return stream, stream.head


def _essence(head: Head) -> str | None:
    return mime_essence(value.encode("latin-1") for value in head.get("content-type"))


def _is_stream(obs: Observations) -> tuple[StreamObservation, Head] | None:
    """The stream and its head, if it opened as an event stream."""
    opened = _opened(obs)
    if opened is None or _essence(opened[1]) != "text/event-stream":
        return None
    return opened


_NO_STREAM = "no event stream opened (see status and content-type)"
_UNREADABLE = "the body is compressed with a coding the check cannot read"


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


# The response.


def check_status(obs: Observations) -> Check:
    """The stream's request answers ``200``, after any redirects."""
    make = _Named("status")
    stream = obs.stream
    if stream is None or stream.head is None:
        error = (stream.error if stream else None) or "no response"
        answered = obs.head_request
        if not error.startswith("no response in"):
            pass
        elif answered is not None and answered.head is not None:
            error += (
                f", though HEAD was answered in {_seconds(answered.head_at or 0.0)}: "
                "something between holds the streamed response (a buffering proxy)"
            )
        else:
            error += (
                ": the server sent no status line (a server that never answers, "
                "or a proxy buffering the whole response)"
            )
        return make("fail", error)
    head = stream.head
    hops = len(stream.redirects)
    plural = "s" if hops > 1 else ""
    after = f" after {hops} redirect{plural} to {stream.final_url}" if hops else ""
    details = {"code": head.status, "redirects": hops}
    if head.status == 200:
        return make("pass", f"200 {head.reason}".rstrip() + after, **details)
    if head.status == 204:
        return make(
            "fail",
            f"204{after}: clients take it as 'stop' and never reconnect",
            **details,
        )
    return make(
        "fail",
        f"HTTP {head.status} {head.reason}".rstrip()
        + f"{after}, not 200: clients give up for good",
        **details,
    )


def check_content_type(obs: Observations) -> Check:
    """``Content-Type: text/event-stream``, with a UTF-8 charset if any."""
    make = _Named("content-type")
    opened = _opened(obs)
    if opened is None:
        return make("skip", "no 200 response")
    head = opened[1]
    values = head.get("content-type")
    shown = ", ".join(values) or "missing"
    if _essence(head) != "text/event-stream":
        return make(
            "fail",
            f"Content-Type {shown!r} is not text/event-stream: EventSource fails",
        )
    charsets = re.findall(r";\s*charset\s*=\s*\"?([^;\"\s]+)", shown, re.IGNORECASE)
    if any(charset.lower() not in ("utf-8", "utf8") for charset in charsets):
        return make(
            "warn",
            f"Content-Type {shown!r}: the charset is ignored, the stream is always "
            "read as UTF-8",
        )
    return make("pass", shown)


def check_cache_control(obs: Observations) -> Check:
    """``Cache-Control: no-cache`` (or ``no-store``): no cache keeps a stream."""
    make = _Named("cache-control")
    opened = _is_stream(obs)
    if opened is None:
        return make("skip", _NO_STREAM)
    values = opened[1].get("cache-control")
    shown = ", ".join(values)
    directives = {
        part.strip().split("=", 1)[0].lower(): part.strip()
        for part in shown.split(",")
        if part.strip()
    }
    if not values:
        return make(
            "warn",
            "no Cache-Control: a cache between may store the stream; send no-cache",
        )
    if "no-cache" in directives or "no-store" in directives:
        return make("pass", shown)
    ages = [
        directives[name].split("=", 1)[-1].strip('"')
        for name in ("max-age", "s-maxage")
        if name in directives
    ]
    if "public" in directives or any(age.isdigit() and int(age) > 0 for age in ages):
        return make("fail", f"Cache-Control: {shown}: caches may serve a stored stream")
    return make("warn", f"Cache-Control: {shown}, without no-cache")


def check_content_length(obs: Observations) -> Check:
    """No ``Content-Length``: a stream has no end to announce."""
    make = _Named("content-length")
    opened = _is_stream(obs)
    if opened is None:
        return make("skip", _NO_STREAM)
    lengths = opened[1].get("content-length")
    if lengths:
        return make(
            "fail",
            f"Content-Length: {lengths[0]} on an endless stream: clients and proxies "
            f"stop reading after {lengths[0]} bytes",
        )
    return make("pass", "none")


def check_content_encoding(obs: Observations) -> Check:
    """No ``Content-Encoding``: a compressor holds events in its buffer."""
    make = _Named("content-encoding")
    opened = _is_stream(obs)
    if opened is None:
        return make("skip", _NO_STREAM)
    codings = [
        coding.strip()
        for value in opened[1].get("content-encoding")
        for coding in value.split(",")
        if coding.strip().lower() not in ("", "identity")
    ]
    if codings:
        return make(
            "fail",
            f"Content-Encoding: {', '.join(codings)}: a compressor (gzip, br) holds "
            "events until its buffer fills; turn compression off for "
            "text/event-stream",
        )
    return make("pass", f"none, although the request accepted {ACCEPT_ENCODING}")


def check_framing(obs: Observations) -> Check:
    """Chunked (HTTP/1.1) or HTTP/2 framing, not a length nor the close."""
    make = _Named("framing")
    opened = _is_stream(obs)
    if opened is None:
        return make("skip", _NO_STREAM)
    head = opened[1]
    if head.framing == "h2":
        return make("pass", "HTTP/2 frames")
    if head.framing == "chunked":
        return make("pass", f"chunked ({head.version})")
    if head.framing == "length":
        return make(
            "fail", "the body has a length, so it ends: a stream must be chunked"
        )
    return make(
        "warn",
        f"{head.version}, no chunking: the body ends only with the connection, "
        "which cannot be kept alive, and a cut looks like an end",
    )


# The stream.


def check_first_byte(obs: Observations) -> Check:
    """The first byte of the body comes at once, with the head."""
    make = _Named("first-byte")
    opened = _is_stream(obs)
    if opened is None:
        return make("skip", _NO_STREAM)
    stream = opened[0]
    head_at = stream.head_at or 0.0
    first = stream.first_byte_at
    if first is None:
        return make(
            "fail",
            f"the head came after {_seconds(head_at)}, but no byte of the body in the "
            f"{obs.window:g} s watch: a buffering proxy, or a server that writes "
            "nothing until its first event",
            head=head_at,
        )
    details = {"head": head_at, "first_byte": first}
    if first > PROMPT:
        return make(
            "warn",
            f"the first byte came after {_seconds(first)} (the head after "
            f"{_seconds(head_at)}): send a retry: line or a comment at once, so "
            "that clients and proxies see the stream open",
            **details,
        )
    return make(
        "pass",
        f"after {_seconds(first)} (the head after {_seconds(head_at)})",
        **details,
    )


def check_stream(obs: Observations) -> Check:
    """The stream stays open for the whole watch."""
    make = _Named("stream")
    opened = _is_stream(obs)
    if opened is None:
        return make("skip", _NO_STREAM)
    stream = opened[0]
    ended = stream.ended_at if stream.ended_at is not None else obs.window
    if stream.end == "window":
        return make("pass", f"open for the whole {obs.window:g} s watch")
    if stream.end == "eof":
        retry = stream.retry if stream.retry is not None else 3000
        return make(
            "warn",
            f"the server ended the stream after {_seconds(ended)}: clients reconnect "
            f"after retry ({retry} ms)",
            ended=ended,
        )
    return make(
        "fail",
        f"the stream broke after {_seconds(ended)}: {stream.error or 'no reason'}",
        ended=ended,
    )


def check_frames(obs: Observations) -> Check:
    """The frames are valid: field syntax, ids, ``retry``, UTF-8."""
    make = _Named("frames")
    opened = _is_stream(obs)
    if opened is None:
        return make("skip", _NO_STREAM)
    stream = opened[0]
    if not stream.readable and not stream.issues:
        return make("skip", _UNREADABLE)
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
    make = _Named("delivery")
    opened = _is_stream(obs)
    if opened is None:
        return make("skip", _NO_STREAM)
    stream = opened[0]
    if not stream.readable:
        return make("skip", _UNREADABLE)
    accepted = [p for p in obs.publishes if _accepted(p.exchange)]
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
            f"a test event took {_seconds(worst)} to arrive: something between holds "
            "events (a buffering proxy, a compressor)",
            latency=worst,
        )
    if accepted:
        worst = max(p.latency or 0.0 for p in accepted)
        return make(
            "pass",
            f"{len(accepted)} test events arrived within {_seconds(worst)}",
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
                f"by the times in their data, some events arrived {_seconds(spread)} "
                "later than others: they are held and let go in bursts (buffering)",
                spread=spread,
            )
        return make(
            "pass",
            f"by the times in their data, {len(stamped)} events arrived within "
            f"{_seconds(spread)} of each other's delay",
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
            f"{size} at once after {_seconds(silence)} without a byte"
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
    make = _Named("heartbeat")
    stream = obs.stream
    if stream is None or stream.head is None or _is_stream(obs) is None:
        return make("skip", _NO_STREAM)
    longest = stream.longest_silence
    details = {"longest_silence": longest, "idle": obs.idle}
    if longest >= obs.idle:
        return make(
            "fail",
            f"silent for {_seconds(longest)} (from {_seconds(stream.silence_from)}), "
            f"at least --idle {obs.idle:g} s: proxies and load balancers cut such "
            "streams; send a comment line every 15 s or so",
            **details,
        )
    if obs.window < obs.idle and stream.trailing_silence >= obs.window / 2:
        return make(
            "warn",
            f"silent for the last {_seconds(stream.trailing_silence)} of a "
            f"{obs.window:g} s watch: a heartbeat within --idle {obs.idle:g} s could "
            "not be seen; watch longer (--duration above --idle)",
            **details,
        )
    return make(
        "pass",
        f"longest silence {_seconds(longest)} in {obs.window:g} s "
        f"(limit {obs.idle:g} s)",
        **details,
    )


def check_resume(obs: Observations) -> Check:
    """Reconnecting with ``Last-Event-ID`` gets the events after it."""
    make = _Named("resume")
    opened = _is_stream(obs)
    if opened is None:
        return make("skip", _NO_STREAM)
    stream = opened[0]
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
            f"nothing came after {sent} in {_seconds(_left(obs, again))}, although "
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


# Beside the stream.


def _accepted(exchange: ExchangeObservation) -> bool:
    return exchange.head is not None and 200 <= exchange.head.status < 300


def check_head(obs: Observations) -> Check:
    """``HEAD`` answers at once, with no body."""
    make = _Named("head")
    answer = obs.head_request
    if answer is None:
        return make("skip", "no HEAD request was made")
    if answer.head is None:
        error = answer.error or "no answer"
        if error.startswith("no answer"):
            error += " (a server that serves HEAD as a GET never ends it)"
        return make("fail", f"HEAD: {error}")
    status = answer.head.status
    took = answer.head_at or 0.0
    details = {"code": status, "took": took, "body_bytes": answer.body_bytes}
    if answer.body_bytes:
        return make(
            "fail", f"HEAD answered with {answer.body_bytes} bytes of body", **details
        )
    if status >= 500:
        return make("fail", f"HEAD answered {status}", **details)
    if status != 200:
        return make(
            "warn",
            f"HEAD answered {status}, not 200: monitors and some proxies use HEAD",
            **details,
        )
    if took > PROMPT:
        return make("warn", f"HEAD took {_seconds(took)}", **details)
    return make("pass", f"200 in {_seconds(took)}, no body", **details)


def check_cors_preflight(obs: Observations) -> Check:
    """
    With ``--origin``, the preflight ``OPTIONS`` allows the origin and the
    ``Last-Event-ID`` header.  Browsers' own EventSource sends no preflight;
    clients built on ``fetch()`` that send ``Last-Event-ID`` or
    ``Authorization`` do.
    """
    make = _Named("cors-preflight")
    origin = obs.origin
    answer = obs.preflight
    if origin is None or answer is None:
        return make("skip", "no --origin given")
    if answer.head is None:
        return make("fail", f"the preflight OPTIONS: {answer.error or 'no answer'}")
    head = answer.head
    if not 200 <= head.status < 300:
        return make(
            "fail",
            f"the preflight OPTIONS answered {head.status}: clients that preflight "
            "(fetch-based, with headers) are refused",
        )
    allowed = head.get("access-control-allow-origin")
    if allowed not in (["*"], [origin]):
        return make(
            "fail",
            f"the preflight allows origin {', '.join(allowed) or 'none'}, not {origin}",
        )
    names = {
        name.strip().lower()
        for value in head.get("access-control-allow-headers")
        for name in value.split(",")
    }
    if "last-event-id" not in names and "*" not in names:
        return make(
            "warn",
            "the preflight does not allow Last-Event-ID: fetch-based clients cannot "
            "resume from another origin",
        )
    return make("pass", f"OPTIONS {head.status} allows {origin} and Last-Event-ID")


def check_cors(obs: Observations) -> Check:
    """With ``--origin``, the stream allows that origin to read it."""
    make = _Named("cors")
    origin = obs.origin
    if origin is None:
        return make("skip", "no --origin given")
    opened = _opened(obs)
    if opened is None:
        return make("skip", "no 200 response")
    allowed = opened[1].get("access-control-allow-origin")
    if not allowed:
        return make(
            "fail",
            f"no Access-Control-Allow-Origin: a page on {origin} cannot read "
            "the stream",
        )
    if allowed not in (["*"], [origin]):
        return make(
            "fail", f"Access-Control-Allow-Origin: {', '.join(allowed)}, not {origin}"
        )
    return make("pass", f"Access-Control-Allow-Origin: {allowed[0]}")


def check_publish(obs: Observations) -> Check:
    """With ``--publish``, test events published arrive on the stream."""
    make = _Named("publish")
    if not obs.publishing:
        return make("skip", "no --publish given")
    if not obs.publishes:
        return make("skip", obs.publish_note or "nothing was published")
    for publish in obs.publishes:
        answer = publish.exchange
        if not _accepted(answer):
            body = answer.body[:200].decode("utf-8", "replace").strip()
            said = (
                f"answered {answer.head.status}" + (f" {body}" if body else "")
                if answer.head
                else (answer.error or "no answer")
            )
            return make("fail", f"publishing test event {publish.number}: POST {said}")
    latencies = [p.latency for p in obs.publishes]
    arrived = [latency for latency in latencies if latency is not None]
    details = {"latencies": latencies}
    if len(arrived) < len(latencies):
        return make(
            "fail",
            f"{len(latencies) - len(arrived)} of {len(latencies)} test events never "
            "arrived on the stream",
            **details,
        )
    worst = max(arrived)
    reason = (
        f"{len(arrived)} test events arrived, after "
        f"{_seconds(min(arrived))} to {_seconds(worst)}"
    )
    return make("warn" if worst > LATE else "pass", reason, **details)


#: Every check, in the order of the report.
CHECKS: Final[Sequence[Callable[[Observations], Check]]] = (
    check_status,
    check_content_type,
    check_cache_control,
    check_content_length,
    check_content_encoding,
    check_framing,
    check_first_byte,
    check_stream,
    check_frames,
    check_delivery,
    check_heartbeat,
    check_resume,
    check_head,
    check_cors_preflight,
    check_cors,
    check_publish,
)


# The report.


@frozen
class Report:
    """
    Every check of one endpoint.

    :ivar observations: What was seen.
    :ivar checks: The judgements, in :data:`CHECKS` order.
    """

    observations: Observations
    checks: tuple[Check, ...]

    @property
    def failed(self) -> bool:
        """Whether a check failed."""
        return any(check.status == "fail" for check in self.checks)

    @property
    def exit_code(self) -> int:
        """``1`` if a check failed, else ``0``."""
        return 1 if self.failed else 0

    def counts(self) -> dict[str, int]:
        """How many checks have each status."""
        counts = dict.fromkeys(("pass", "fail", "warn", "skip"), 0)
        for check in self.checks:
            counts[check.status] += 1
        return counts

    def timings(self) -> dict[str, object]:
        """The stream's figures: when its head and first byte came, and more."""
        stream = self.observations.stream
        head = stream.head if stream else None
        return {
            "protocol": head.version if head else None,
            "response_head": stream.head_at if stream else None,
            "first_byte": stream.first_byte_at if stream else None,
            "longest_silence": stream.longest_silence if head and stream else None,
            "events": stream.event_count if stream else 0,
            "bytes": stream.byte_count if stream else 0,
            "publish_latencies": [p.latency for p in self.observations.publishes],
        }

    def to_json(self) -> dict[str, object]:
        """The report as one JSON-ready document (seconds to 0.1 ms)."""
        obs = self.observations
        stream = obs.stream
        document: dict[str, object] = {
            "url": obs.url,
            "final_url": stream.final_url if stream else obs.url,
            "duration": obs.window,
            "idle": obs.idle,
            "timings": self.timings(),
            "result": "fail" if self.failed else "pass",
            "counts": self.counts(),
            "checks": [
                {
                    "name": check.name,
                    "status": check.status,
                    "reason": check.reason,
                    **check.details,
                }
                for check in self.checks
            ],
        }
        rounded = _rounded(document)
        assert isinstance(rounded, dict)
        return rounded


def _rounded(value: object) -> object:
    """``value`` with every float in it rounded to 0.1 ms."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    return value


def judge(obs: Observations) -> Report:
    """Run every check on ``obs``."""
    return Report(obs, tuple(check(obs) for check in CHECKS))


_COLOURS = {"pass": "32", "fail": "1;31", "warn": "33", "skip": "2"}


def render_text(report: Report, colour: bool = False) -> str:
    """
    The report as a table, one check a line, with a summary.

    :param colour: Colour the statuses with ANSI escapes.
    """
    obs = report.observations
    timings = report.timings()
    lines = [f"twisted-sse check {obs.url}"]
    if timings["protocol"]:
        head_at = timings["response_head"]
        first = timings["first_byte"]
        figures = [
            f"{timings['protocol']}",
            f"watched {obs.window:g} s",
            f"{timings['events']} events",
            f"{timings['bytes']} bytes",
        ]
        if isinstance(head_at, float):
            figures.append(f"head {_seconds(head_at)}")
        if isinstance(first, float):
            figures.append(f"first byte {_seconds(first)}")
        lines.append(", ".join(figures))
    lines.append("")
    width = max(len(check.name) for check in report.checks)
    for check in report.checks:
        label = check.status.upper()
        if colour:
            label = f"\x1b[{_COLOURS[check.status]}m{label}\x1b[0m"
        pad = " " * (4 - len(check.status))
        lines.append(f"  {label}{pad}  {check.name:<{width}}  {check.reason}")
    counts = report.counts()
    lines.append("")
    lines.append(
        ("FAILED: " if report.failed else "OK: ")
        + f"{counts['fail']} failed, {counts['warn']} warnings, "
        f"{counts['pass']} passed, {counts['skip']} skipped"
    )
    return "\n".join(lines) + "\n"
