"""
The checks of ``twisted-sse check`` on the stream's response head: its
status, ``Content-Type``, ``Cache-Control``, no ``Content-Length``, no
``Content-Encoding``, and its framing.
"""

from __future__ import annotations

import re

from ._judgement import (
    NO_STREAM,
    Check,
    Named,
    essence,
    event_stream,
    opened,
    seconds,
)
from ._observations import ACCEPT_ENCODING, Observations

__all__ = [
    "check_cache_control",
    "check_content_encoding",
    "check_content_length",
    "check_content_type",
    "check_framing",
    "check_status",
]


def check_status(obs: Observations) -> Check:
    """The stream's request answers ``200``, after any redirects."""
    make = Named("status")
    stream = obs.stream
    if stream is None or stream.head is None:
        error = (stream.error if stream else None) or "no response"
        answered = obs.head_request
        if not error.startswith("no response in"):
            pass
        elif answered is not None and answered.head is not None:
            error += (
                f", though HEAD was answered in {seconds(answered.head_at or 0.0)}: "
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
    make = Named("content-type")
    answer = opened(obs)
    if answer is None:
        return make("skip", "no 200 response")
    head = answer[1]
    values = head.get("content-type")
    shown = ", ".join(values) or "missing"
    if essence(head) != "text/event-stream":
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
    make = Named("cache-control")
    answer = event_stream(obs)
    if answer is None:
        return make("skip", NO_STREAM)
    values = answer[1].get("cache-control")
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
    make = Named("content-length")
    answer = event_stream(obs)
    if answer is None:
        return make("skip", NO_STREAM)
    lengths = answer[1].get("content-length")
    if lengths:
        return make(
            "fail",
            f"Content-Length: {lengths[0]} on an endless stream: clients and proxies "
            f"stop reading after {lengths[0]} bytes",
        )
    return make("pass", "none")


def check_content_encoding(obs: Observations) -> Check:
    """No ``Content-Encoding``: a compressor holds events in its buffer."""
    make = Named("content-encoding")
    answer = event_stream(obs)
    if answer is None:
        return make("skip", NO_STREAM)
    codings = [
        coding.strip()
        for value in answer[1].get("content-encoding")
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
    make = Named("framing")
    answer = event_stream(obs)
    if answer is None:
        return make("skip", NO_STREAM)
    head = answer[1]
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
