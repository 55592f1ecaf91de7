"""
What ``twisted-sse check`` saw of an endpoint, as plain values: the stream
watched for a while, a ``HEAD`` beside it, a CORS preflight, a resume,
test events published, all in :class:`Observations`.  The watch
(:mod:`twisted_sse._check._watch`) makes them; the checks judge them, and
are tested on made-up ones.  Nothing here judges.
"""

from __future__ import annotations

from typing import Final, Literal

from attrs import frozen

from ._http import Head

__all__ = [
    "ACCEPT_ENCODING",
    "BODY_KEPT",
    "DATA_KEPT",
    "MAX_RECORDS",
    "Arrival",
    "ExchangeObservation",
    "Issue",
    "Level",
    "Observations",
    "PublishObservation",
    "ResumeObservation",
    "StreamObservation",
]

#: The most reads and events of a stream kept for judging; past them only
#: counts and the longest silence are kept.
MAX_RECORDS: Final = 10000
#: Characters of an event's data kept.
DATA_KEPT: Final = 1024
#: Bytes of a short response's body (a publish's answer) kept.
BODY_KEPT: Final = 65536
#: What the stream's request accepts, as a browser does: a compressing
#: proxy answers with one of these.
ACCEPT_ENCODING: Final = "gzip, deflate, br"

Level = Literal["fail", "warn"]


@frozen
class Issue:
    """
    Something wrong in the bytes of a stream.

    :ivar level: ``fail`` when clients lose or garble something, ``warn``
        when they cope but it is likely a mistake.
    :ivar message: What, and on which line first.
    :ivar count: How many times it happened.
    """

    level: Level
    message: str
    count: int = 1


@frozen
class Arrival:
    """
    An event as it arrived.

    :ivar at: Seconds after the check started.
    :ivar type: The event type.
    :ivar data: The data, cut to :data:`DATA_KEPT` characters.
    :ivar id: The value of the event's own ``id`` field, or ``None`` when
        its block had none (its ``last_event_id`` is then carried over).
    :ivar last_event_id: The last event id as a client sees it.
    :ivar read: The number of the read of the body that completed it.
    :ivar stamp: The time (Unix seconds) written in its data, if any.
    """

    at: float
    type: str = "message"
    data: str = ""
    id: str | None = None
    last_event_id: str = ""
    read: int = 0
    stamp: float | None = None


@frozen
class StreamObservation:
    """
    One ``GET`` of the stream, watched until the end of the window.

    :ivar url: The URL asked for.
    :ivar final_url: The URL that answered, after redirects.
    :ivar redirects: ``(status, location)`` of each redirect followed.
    :ivar head: The response head, or ``None`` if none came.
    :ivar head_at: When the head came (seconds after the start).
    :ivar first_byte_at: When the first byte of the body came.
    :ivar reads: ``(at, size)`` of each read of the body (the first
        :data:`MAX_RECORDS`).
    :ivar longest_silence: The longest time without a byte of the body,
        from the head to the end of the watch or of the stream.
    :ivar silence_from: When that silence began.
    :ivar trailing_silence: The silence at the end.
    :ivar events: The events (the first :data:`MAX_RECORDS`).
    :ivar event_count: How many events arrived.
    :ivar byte_count: How many bytes of body arrived (without the HTTP/1.1
        chunking, before any decompression).
    :ivar issues: What is wrong in the bytes.
    :ivar lines: How many lines were read.
    :ivar retry: The last valid ``retry`` value.
    :ivar readable: Whether the body could be read (not compressed with
        an encoding the checker does not decode).
    :ivar ended_at: When the stream ended, or the watch did.
    :ivar end: ``window`` (open until the watch ended), ``eof`` (the
        server ended it), ``error`` (broken, or no response), ``limit``
        (dropped at a cap), ``refused`` (not a stream: another status or
        type), or ``none`` (never started).
    :ivar error: Why there was no stream, or why it broke.
    """

    url: str
    final_url: str = ""
    redirects: tuple[tuple[int, str], ...] = ()
    head: Head | None = None
    head_at: float | None = None
    first_byte_at: float | None = None
    reads: tuple[tuple[float, int], ...] = ()
    longest_silence: float = 0.0
    silence_from: float = 0.0
    trailing_silence: float = 0.0
    events: tuple[Arrival, ...] = ()
    event_count: int = 0
    byte_count: int = 0
    issues: tuple[Issue, ...] = ()
    lines: int = 0
    retry: int | None = None
    readable: bool = True
    ended_at: float | None = None
    end: str = "none"
    error: str | None = None


@frozen
class ExchangeObservation:
    """
    A short request: ``HEAD``, the CORS preflight, a publish.

    :ivar method: The request method.
    :ivar head: The response head, or ``None``.
    :ivar head_at: When the head came, in seconds after the request.
    :ivar body: The start of the body (:data:`BODY_KEPT` bytes at most).
    :ivar body_bytes: How many bytes of body came.
    :ivar error: Why it failed (no answer, connection refused...).
    """

    method: str
    head: Head | None = None
    head_at: float | None = None
    body: bytes = b""
    body_bytes: int = 0
    error: str | None = None


@frozen
class ResumeObservation:
    """
    A second ``GET`` with ``Last-Event-ID``.

    :ivar after: The id sent.
    :ivar expected: The id of the event the first stream had after it.
    :ivar before: The ids the first stream had up to ``after``, in order.
    :ivar first_data: The data of the first stream's first event.
    :ivar stream: What the resumed stream did.
    """

    after: str
    expected: str
    before: tuple[str, ...]
    first_data: str
    stream: StreamObservation


@frozen
class PublishObservation:
    """
    A test event published with ``POST``, and its arrival.

    :ivar number: Its number (1, 2, ...).
    :ivar posted_at: When the request was made.
    :ivar exchange: The request and its answer.
    :ivar arrived_at: When it arrived on the stream, or ``None``.
    """

    number: int
    posted_at: float
    exchange: ExchangeObservation
    arrived_at: float | None = None

    @property
    def latency(self) -> float | None:
        """Seconds from the request to the arrival, or ``None``."""
        if self.arrived_at is None:
            return None
        return self.arrived_at - self.posted_at


@frozen
class Observations:
    """
    Everything a check saw.

    :ivar url: The URL checked.
    :ivar started: When (Unix time).
    :ivar window: The seconds the stream was watched for (``--duration``).
    :ivar idle: The longest silence allowed (``--idle``).
    :ivar stream: The stream.
    :ivar head_request: The ``HEAD`` request.
    :ivar origin: The ``--origin``, if given.
    :ivar preflight: The CORS preflight, with ``--origin``.
    :ivar resume: The resumed stream, or ``None`` (see ``resume_note``).
    :ivar resume_note: Why there was no resume.
    :ivar publishing: Whether test events were to be published.
    :ivar publishes: The events published.
    :ivar publish_note: Why none was published, if so.
    """

    url: str
    started: float = 0.0
    window: float = 10.0
    idle: float = 30.0
    stream: StreamObservation | None = None
    head_request: ExchangeObservation | None = None
    origin: str | None = None
    preflight: ExchangeObservation | None = None
    resume: ResumeObservation | None = None
    resume_note: str = ""
    publishing: bool = False
    publishes: tuple[PublishObservation, ...] = ()
    publish_note: str = ""
