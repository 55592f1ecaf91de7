"""
A judgement of ``twisted-sse check``, and what its checks share.

Each check is a pure function of the
:class:`~twisted_sse._check._observations.Observations`, so that each rule
is tested on its own with made-up observations.  It gives a :class:`Check`:
it passes, fails, warns (clients cope, but it is likely a mistake, or the
evidence is thin) or is skipped (nothing to judge, or not asked for), with
a one-line reason that names the fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from attrs import field, frozen

from .._url import mime_essence
from ._http import Head
from ._observations import ExchangeObservation, Observations, StreamObservation

__all__ = [
    "LATE",
    "NO_STREAM",
    "PROMPT",
    "UNREADABLE",
    "Check",
    "Named",
    "Status",
    "answered_2xx",
    "essence",
    "event_stream",
    "opened",
    "seconds",
]

#: Seconds within which the first byte of a stream, and a HEAD's answer,
#: count as prompt.
PROMPT: Final = 1.0
#: Seconds a published test event may take to arrive and still count as
#: delivered at once.
LATE: Final = 1.0

#: The reason of a check skipped because there is no event stream.
NO_STREAM: Final = "no event stream opened (see status and content-type)"
#: The reason of a check skipped because the body cannot be read.
UNREADABLE: Final = "the body is compressed with a coding the check cannot read"

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
class Named:
    """Makes the checks of one name."""

    name: str

    def __call__(self, status: Status, reason: str, **details: object) -> Check:
        return Check(self.name, status, reason, details)


def opened(obs: Observations) -> tuple[StreamObservation, Head] | None:
    """The stream and its head, if it answered 200."""
    stream = obs.stream
    if stream is None or stream.head is None or stream.head.status != 200:
        return None
    return stream, stream.head


def essence(head: Head) -> str | None:
    """The media type of ``head``'s ``Content-Type``, in lower case."""
    return mime_essence(value.encode("latin-1") for value in head.get("content-type"))


def event_stream(obs: Observations) -> tuple[StreamObservation, Head] | None:
    """The stream and its head, if it opened as an event stream."""
    answered = opened(obs)
    if answered is None or essence(answered[1]) != "text/event-stream":
        return None
    return answered


def answered_2xx(exchange: ExchangeObservation) -> bool:
    """Whether ``exchange`` was answered with a 2xx."""
    return exchange.head is not None and 200 <= exchange.head.status < 300


def seconds(value: float) -> str:
    """``value`` seconds, for a reason: in ms under one second."""
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"
