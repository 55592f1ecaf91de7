"""
The checks of ``twisted-sse check`` on the requests beside the stream: a
``HEAD``, with ``--origin`` the CORS preflight and the stream's
``Access-Control-Allow-Origin``, with ``--publish`` the test events.
"""

from __future__ import annotations

from ._judgement import (
    LATE,
    PROMPT,
    Check,
    Named,
    answered_2xx,
    opened,
    seconds,
)
from ._observations import Observations

__all__ = [
    "check_cors",
    "check_cors_preflight",
    "check_head",
    "check_publish",
]


def check_head(obs: Observations) -> Check:
    """``HEAD`` answers at once, with no body."""
    make = Named("head")
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
        return make("warn", f"HEAD took {seconds(took)}", **details)
    return make("pass", f"200 in {seconds(took)}, no body", **details)


def check_cors_preflight(obs: Observations) -> Check:
    """
    With ``--origin``, the preflight ``OPTIONS`` allows the origin and the
    ``Last-Event-ID`` header.  Browsers' own EventSource sends no preflight;
    clients built on ``fetch()`` that send ``Last-Event-ID`` or
    ``Authorization`` do.
    """
    make = Named("cors-preflight")
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
    make = Named("cors")
    origin = obs.origin
    if origin is None:
        return make("skip", "no --origin given")
    answer = opened(obs)
    if answer is None:
        return make("skip", "no 200 response")
    allowed = answer[1].get("access-control-allow-origin")
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
    make = Named("publish")
    if not obs.publishing:
        return make("skip", "no --publish given")
    if not obs.publishes:
        return make("skip", obs.publish_note or "nothing was published")
    for publish in obs.publishes:
        answer = publish.exchange
        if not answered_2xx(answer):
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
        f"{seconds(min(arrived))} to {seconds(worst)}"
    )
    return make("warn" if worst > LATE else "pass", reason, **details)
