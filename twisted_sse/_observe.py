"""
What ``twisted-sse check`` sees of an endpoint: the stream watched for a
while, a ``HEAD`` beside it, a CORS preflight, a resume, test events
published; each recorded as plain values (:class:`Observations`) for
:mod:`twisted_sse._check` to judge.  Nothing here judges.

Everything is bounded whatever a server sends: response heads and framing
by :mod:`twisted_sse._exchange`, a stream's lines and events by the
parser's caps (16 MiB each, the client's defaults), the records kept by
:data:`MAX_RECORDS`, and the time by the watch (``--duration``, then at
most :data:`SETTLE` seconds for the connections to go).
"""

from __future__ import annotations

import json
import zlib
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, Literal

from attrs import define, frozen
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ._exchange import Connector, Fetch, Head, Recorder
from ._parser import (
    DEFAULT_MAX_EVENT_DATA_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    EventParser,
    LimitExceeded,
)
from ._url import URL, mime_essence

__all__ = [
    "Arrival",
    "ExchangeObservation",
    "Issue",
    "Observations",
    "Plan",
    "PublishObservation",
    "ResumeObservation",
    "StreamObservation",
    "observe",
    "timestamp_in",
]

#: The most reads and events of a stream kept for judging; past them only
#: counts and the longest silence are kept.
MAX_RECORDS: Final = 10000
#: Characters of an event's data kept.
DATA_KEPT: Final = 1024
#: Kinds of issue noted one by one in a stream's lines; the rest are
#: counted together.
MAX_ISSUES: Final = 20
#: Bytes of a short response's body (a publish's answer) kept.
BODY_KEPT: Final = 65536
#: Seconds a HEAD, preflight or publish may take.
REQUEST_TIMEOUT: Final = 5.0
#: Seconds a HEAD response is held open after its head, to see a body that
#: should not be there.
HEAD_GRACE: Final = 0.3
#: When, as fractions of the watch, the test events are published.
PUBLISH_AT: Final = (0.2, 0.4, 0.6)
#: Seconds after the watch that aborted connections have to be gone.
SETTLE: Final = 2.0
#: What a browser accepts: a compressing proxy answers with one of these.
ACCEPT_ENCODING: Final = "gzip, deflate, br"

_KNOWN_FIELDS = {b"data", b"event", b"id", b"retry"}
_BOM = b"\xef\xbb\xbf"
_TIME_KEYS = ("time", "timestamp", "ts", "sent", "sent_at", "created", "created_at")

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


def _iso_time(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    # Without an offset, the time could be anywhere's.
    return moment.timestamp() if moment.tzinfo is not None else None


def timestamp_in(data: str) -> float | None:
    """
    The time written in an event's data, as Unix seconds: the data itself,
    or a ``time``, ``timestamp``, ``ts``, ``sent``, ``sent_at``, ``created``
    or ``created_at`` member of a JSON object; a number of seconds or
    milliseconds since 1970, or an ISO 8601 time with its offset.

    :returns: The time, or ``None`` if there is none.
    """
    text = data.strip()
    value: object = text
    if text.startswith("{") and len(text) <= 65536:
        try:
            document = json.loads(text)
        except ValueError:
            return None
        if not isinstance(document, dict):
            return None
        value = next((document[k] for k in _TIME_KEYS if k in document), None)
    if isinstance(value, str):
        string = value
        try:
            value = float(string)
        except ValueError:
            return _iso_time(string)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    # Seconds from 2001 to 2286, or the same in milliseconds.
    if 1e9 <= number < 1e10:
        return number
    if 1e12 <= number < 1e13:
        return number / 1000
    return None


# What is recorded.


class _ShortRecorder(Recorder):
    """Records a short exchange: its head, the start of its body."""

    def __init__(self, clock: IReactorTime, method: str, grace: float = 0.0) -> None:
        self.clock = clock
        self.method = method
        self.started = clock.seconds()
        self.head_: Head | None = None
        self.head_at: float | None = None
        self.kept = bytearray()
        self.body_bytes = 0
        self.error: str | None = None
        self.ended = False
        self.grace = grace
        self.fetch: Fetch | None = None
        self._grace_call: IDelayedCall | None = None

    def head(self, head: Head) -> str | None:
        self.head_ = head
        self.head_at = self.clock.seconds() - self.started
        if self.method == "HEAD":
            # A HEAD response has no body; hold on briefly to see one that
            # comes anyway.
            self._grace_call = self.clock.callLater(self.grace, self._close)
        return None

    def _close(self) -> None:
        self._grace_call = None
        if self.fetch is not None:
            self.fetch.abort("")

    def body(self, data: bytes) -> str | None:
        self.body_bytes += len(data)
        room = BODY_KEPT - len(self.kept)
        if room > 0:
            self.kept += data[:room]
        return None

    def extra(self, size: int) -> None:
        self.body_bytes += size

    def end(self, error: str | None) -> None:
        if self.ended:
            return
        self.ended = True
        if self._grace_call is not None and self._grace_call.active():
            self._grace_call.cancel()
        self.error = error or None

    def observation(self) -> ExchangeObservation:
        error = self.error
        if not self.ended and self.head_ is None:
            error = "no answer"
        return ExchangeObservation(
            method=self.method,
            head=self.head_,
            head_at=self.head_at,
            body=bytes(self.kept),
            body_bytes=self.body_bytes,
            error=error,
        )


class _LintParser(EventParser):
    """
    An :class:`~twisted_sse._parser.EventParser` that also notes what is
    wrong with each line, and which events carried an ``id`` field.
    """

    def __init__(self, last_event_id: str, origin: str) -> None:
        super().__init__(
            last_event_id,
            origin,
            max_line_bytes=DEFAULT_MAX_LINE_BYTES,
            max_event_bytes=DEFAULT_MAX_EVENT_DATA_BYTES,
        )
        self.lines = 0
        self.issues: dict[str, Issue] = {}
        # The own id of each event dispatched, in order.
        self.own_ids: deque[str | None] = deque()
        self.in_block = False
        self.lone_crs = 0
        self._block_id: str | None = None
        self._ended_in_cr = False

    def note(self, key: str, level: Level, message: str) -> None:
        """Note an issue; a repeat only counts, and so do kinds past the
        first :data:`MAX_ISSUES` (a server may make up field names)."""
        if key not in self.issues and len(self.issues) >= MAX_ISSUES:
            key, message = "more", "and issues of other kinds"
        known = self.issues.get(key)
        if known is None:
            self.issues[key] = Issue(level, message)
        else:
            worst: Level = "fail" if "fail" in (level, known.level) else "warn"
            self.issues[key] = Issue(worst, known.message, known.count + 1)

    def feed(self, chunk: bytes) -> list[Any]:
        crs = chunk.count(b"\r") - chunk.count(b"\r\n")
        if self._ended_in_cr and chunk[:1] == b"\n":
            crs -= 1
        self.lone_crs += crs
        if chunk:
            self._ended_in_cr = chunk[-1:] == b"\r"
        return super().feed(chunk)

    def process_line(self, line: bytes) -> Any:
        self.lines += 1
        number = self.lines
        if not line:
            event = super().process_line(line)
            if event is not None:
                self.own_ids.append(self._block_id)
            self._block_id = None
            self.in_block = False
            return event
        self.in_block = True
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            self.note(
                "utf-8", "fail", f"line {number} is not UTF-8 (clients see U+FFFD)"
            )
        if line.startswith(_BOM):
            self.note(
                "bom",
                "fail",
                f"line {number} starts with a byte order mark: only one, at the "
                "very start of the stream, is removed",
            )
        if line[:1] != b":" and not line.startswith(_BOM):
            self._lint_field(line, number)
        return super().process_line(line)

    def _lint_field(self, line: bytes, number: int) -> None:
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"id":
            if b"\0" in value:
                self.note(
                    "id-nul",
                    "fail",
                    f"line {number}: an id with a NUL, which clients ignore",
                )
            else:
                self._block_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if not value:
                self.note("retry-empty", "warn", f"line {number}: an empty retry")
            elif not (value.isdigit() and value.isascii()):
                self.note(
                    "retry",
                    "fail",
                    f"line {number}: retry {value[:20].decode('utf-8', 'replace')!r} "
                    "is not all ASCII digits, so clients ignore it",
                )
            elif int(value) > 2**31 - 1:
                self.note(
                    "retry-big",
                    "warn",
                    f"line {number}: retry {int(value)} is longer than a browser's "
                    "timer holds",
                )
        elif name not in _KNOWN_FIELDS:
            shown = name[:40].decode("utf-8", "replace")
            if name.strip().lower().lstrip(_BOM) in _KNOWN_FIELDS:
                self.note(
                    f"field {shown}",
                    "fail",
                    f"line {number}: field {shown!r} is not "
                    f"{name.strip().lower().decode('ascii', 'replace')!r} "
                    "(names are exact), so clients ignore the line",
                )
            else:
                self.note(
                    f"field {shown}",
                    "warn",
                    f"line {number}: unknown field {shown!r}, which clients ignore",
                )

    def end(self) -> None:
        if self.in_block:
            self.note(
                "unfinished",
                "warn",
                "the stream ended inside an event (no blank line after it), "
                "which clients drop",
            )
        super().end()


class _StreamRecorder(Recorder):
    """Watches a stream: its head, each read and event, and the silences."""

    def __init__(
        self,
        clock: IReactorTime,
        start: float,
        url: URL,
        last_event_id: str = "",
        on_open: Callable[[], object] | None = None,
        on_event: Callable[[Arrival], object] | None = None,
    ) -> None:
        self.clock = clock
        self.start = start
        self.url = url
        self.on_open = on_open
        self.on_event = on_event
        self.parser = _LintParser(last_event_id, url.origin)
        self.fetch: Fetch | None = None
        self.head_: Head | None = None
        self.head_at: float | None = None
        self.first_byte_at: float | None = None
        self.reads: list[tuple[float, int]] = []
        self.read_count = 0
        self.last_byte = 0.0
        self.longest = 0.0
        self.silence_from = 0.0
        self.events: list[Arrival] = []
        self.event_count = 0
        self.byte_count = 0
        self.readable = True
        self.decoder: Any = None
        self.ended_at: float | None = None
        self.end_kind = "none"
        self.error: str | None = None
        self.closing: str | None = None
        self.trailing = 0.0

    def now(self) -> float:
        return self.clock.seconds() - self.start

    def head(self, head: Head) -> str | None:
        self.head_ = head
        self.head_at = self.last_byte = self.now()
        essence = mime_essence(
            value.encode("latin-1") for value in head.get("content-type")
        )
        if head.status != 200 or essence != "text/event-stream":
            self.end_kind = "refused"
            return "not an event stream"
        encodings = [
            coding.strip().lower()
            for value in head.get("content-encoding")
            for coding in value.split(",")
            if coding.strip().lower() not in ("", "identity")
        ]
        if encodings in (["gzip"], ["x-gzip"], ["deflate"]):
            self.decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)
        elif encodings:
            self.readable = False
        if self.on_open is not None:
            self.on_open()
        return None

    def body(self, data: bytes) -> str | None:
        now = self.now()
        if self.first_byte_at is None:
            self.first_byte_at = now
        self._silence(now)
        self.read_count += 1
        self.byte_count += len(data)
        if not self.readable:
            return None
        try:
            pieces = self._decode(data)
        except zlib.error as e:
            self.readable = False
            self.parser.note("decode", "fail", f"the compressed body is corrupt: {e}")
            return None
        if len(self.reads) < MAX_RECORDS:
            self.reads.append((now, len(data)))
        for piece in pieces:
            try:
                events = self.parser.feed(piece)
            except LimitExceeded as e:
                self._arrived(e.events, now)
                self.end_kind = "limit"
                self.parser.note("limit", "fail", f"dropped: {e}")
                return f"dropped: {e}"
            self._arrived(events, now)
            if self.closing is not None:
                return self.closing
        return None

    def _decode(self, data: bytes) -> list[bytes]:
        if self.decoder is None:
            return [data]
        pieces = []
        while data:
            pieces.append(self.decoder.decompress(data, 65536))
            data = self.decoder.unconsumed_tail
        return pieces

    def _silence(self, now: float) -> None:
        silence = now - self.last_byte
        if silence > self.longest:
            self.longest = silence
            self.silence_from = self.last_byte
        self.last_byte = now

    def _arrived(self, events: list[Any], now: float) -> None:
        for event in events:
            own = self.parser.own_ids.popleft() if self.parser.own_ids else None
            self.event_count += 1
            arrival = Arrival(
                at=now,
                type=event.type,
                data=event.data[:DATA_KEPT],
                id=own,
                last_event_id=event.last_event_id,
                read=self.read_count,
                stamp=timestamp_in(event.data) if len(event.data) <= 65536 else None,
            )
            if len(self.events) < MAX_RECORDS:
                self.events.append(arrival)
            if self.on_event is not None:
                self.on_event(arrival)

    def close(self, reason: str) -> None:
        """End the watch."""
        self.closing = reason
        if self.fetch is not None:
            self.fetch.abort(reason)

    def end(self, error: str | None) -> None:
        if self.ended_at is not None:
            return
        now = self.ended_at = self.now()
        if self.head_ is not None:
            self.trailing = now - self.last_byte
            self._silence(now)
        if error is None:
            self.parser.end()
            self.end_kind = "eof" if self.head_ is not None else "error"
        elif self.end_kind in ("refused", "limit"):
            pass
        elif self.closing is not None and error == self.closing:
            self.end_kind = "window" if self.head_ is not None else "error"
            if self.head_ is None:
                self.error = f"no response in {now:.1f} s"
        else:
            self.end_kind = "error"
            self.error = error
        if self.end_kind == "limit":
            self.error = error

    def observation(
        self, final_url: str, redirects: list[tuple[int, str]]
    ) -> StreamObservation:
        trailing = self.trailing
        if self.ended_at is None and self.head_ is not None:
            trailing = self.now() - self.last_byte
        issues = list(self.parser.issues.values())
        if self.parser.lone_crs:
            issues.append(
                Issue(
                    "warn",
                    "lines end with a lone CR: valid, but some clients other "
                    "than browsers do not split on it",
                    self.parser.lone_crs,
                )
            )
        return StreamObservation(
            url=self.url.text,
            final_url=final_url,
            redirects=tuple(redirects),
            head=self.head_,
            head_at=self.head_at,
            first_byte_at=self.first_byte_at,
            reads=tuple(self.reads),
            longest_silence=self.longest,
            silence_from=self.silence_from,
            trailing_silence=trailing,
            events=tuple(self.events),
            event_count=self.event_count,
            byte_count=self.byte_count,
            issues=tuple(issues),
            lines=self.parser.lines,
            retry=self.parser.retry,
            readable=self.readable,
            ended_at=self.ended_at,
            end=self.end_kind,
            error=self.error,
        )


# The whole watch.


@frozen
class Plan:
    """
    What to check, and how.

    :ivar url: The stream's URL.
    :ivar duration: Seconds to watch the stream.
    :ivar idle: The longest silence allowed.
    :ivar headers: Extra request headers for the stream and ``HEAD``.
    :ivar origin: The origin to test CORS from, or ``None``.
    :ivar publish_url: Where to ``POST`` test events, or ``None``.
    :ivar token: The bearer token for publishing.
    """

    url: str
    duration: float = 10.0
    idle: float = 30.0
    headers: tuple[tuple[str, str], ...] = ()
    origin: str | None = None
    publish_url: str | None = None
    token: str | None = None


@define
class _Publish:
    number: int
    posted_at: float
    recorder: _ShortRecorder
    arrived_at: float | None = None


@define
class _Resume:
    recorder: _StreamRecorder
    fetch: Fetch
    after: str
    expected: str
    before: tuple[str, ...]


def _stream_headers(plan: Plan, last_event_id: str = "") -> list[tuple[str, str]]:
    """What a browser's ``EventSource`` sends, less what the user overrides."""
    headers = [
        ("Accept", "text/event-stream"),
        ("Cache-Control", "no-cache"),
        ("Accept-Encoding", ACCEPT_ENCODING),
    ]
    if plan.origin:
        headers.append(("Origin", plan.origin))
    if last_event_id:
        headers.append(("Last-Event-ID", last_event_id))
    given = {name.lower() for name, _ in plan.headers}
    return [(name, value) for name, value in headers if name.lower() not in given]


class _Watch:
    """One check while it runs: the requests, the timers, what they saw."""

    def __init__(self, reactor: Any, plan: Plan, connector: Connector) -> None:
        self.reactor = reactor
        self.plan = plan
        self.connector = connector
        self.url = URL.parse(plan.url)
        self.publish_url = URL.parse(plan.publish_url) if plan.publish_url else None
        self.start = float(reactor.seconds())
        self.nonce = f"{self.start:.6f}"
        self.finished: Deferred[None] = Deferred()
        self.deadline: IDelayedCall | None = None
        self.jobs: list[Deferred[None]] = []
        self.closers: list[Callable[[str], object]] = []
        self.publishes: list[_Publish] = []
        self.publish_calls: list[IDelayedCall] = []
        self.resume: _Resume | None = None
        self.resume_note = ""
        self.ids: list[str] = []
        self.first_data: str | None = None
        self.over = False
        self.ready = False
        self.stream = _StreamRecorder(
            reactor, self.start, self.url, on_open=self._opened, on_event=self._event
        )
        self.head = _ShortRecorder(reactor, "HEAD", HEAD_GRACE)
        self.preflight: _ShortRecorder | None = None

    def now(self) -> float:
        return float(self.reactor.seconds()) - self.start

    def remaining(self) -> float:
        return self.plan.duration - self.now()

    async def run(self) -> Observations:
        plan = self.plan
        self.deadline = self.reactor.callLater(plan.duration, self._end)
        self.stream.fetch = Fetch(
            self.connector,
            "GET",
            self.url,
            plan.headers,
            self.stream,
            own=_stream_headers(plan),
        )
        self._add(self.stream.fetch.done, self.stream.close)
        self.head.fetch = Fetch(
            self.connector, "HEAD", self.url, plan.headers, self.head
        )
        self._short(self.head)
        if plan.origin:
            self.preflight = _ShortRecorder(self.reactor, "OPTIONS")
            self.preflight.fetch = Fetch(
                self.connector,
                "OPTIONS",
                self.url,
                (),
                self.preflight,
                own=[
                    ("Origin", plan.origin),
                    ("Access-Control-Request-Method", "GET"),
                    ("Access-Control-Request-Headers", "last-event-id"),
                ],
                follow=False,
            )
            self._short(self.preflight)
        self.ready = True
        self._settled()
        await self.finished
        # Everything was aborted: give the connections a moment to go (not
        # by cancelling the jobs, whose Deferreds fire when they do).
        settled: Deferred[None] = Deferred()

        def done(_: object) -> None:
            if not settled.called:
                settled.callback(None)

        DeferredList(list(self.jobs), consumeErrors=True).addBoth(done)
        timer = self.reactor.callLater(SETTLE, done, None)
        await settled
        if timer.active():
            timer.cancel()
        return self._observations()

    def _observations(self) -> Observations:
        stream = self.stream
        assert stream.fetch is not None
        resume = None
        if self.resume is not None:
            fetch = self.resume.fetch
            resume = ResumeObservation(
                after=self.resume.after,
                expected=self.resume.expected,
                before=self.resume.before,
                first_data=self.first_data or "",
                stream=self.resume.recorder.observation(
                    fetch.url.text, fetch.redirects
                ),
            )
        note = ""
        if self.publish_url is not None and not self.publishes:
            note = "the stream did not open, so nothing was published"
        return Observations(
            url=self.url.text,
            started=self.start,
            window=self.plan.duration,
            idle=self.plan.idle,
            stream=stream.observation(stream.fetch.url.text, stream.fetch.redirects),
            head_request=self.head.observation(),
            origin=self.plan.origin,
            preflight=self.preflight.observation() if self.preflight else None,
            resume=resume,
            resume_note=self.resume_note,
            publishing=self.publish_url is not None,
            publishes=tuple(
                PublishObservation(
                    number=p.number,
                    posted_at=p.posted_at,
                    exchange=p.recorder.observation(),
                    arrived_at=p.arrived_at,
                )
                for p in self.publishes
            ),
            publish_note=note,
        )

    def _add(self, job: Deferred[None], closer: Callable[[str], object]) -> None:
        self.jobs.append(job)
        self.closers.append(closer)
        if self.over:
            closer("the watch ended")
        job.addCallback(lambda _: self._settled())

    def _settled(self) -> None:
        # Once every request has ended (the stream too), there is nothing
        # left to watch.
        if self.ready and all(job.called for job in self.jobs):
            self._end()

    def _short(self, recorder: _ShortRecorder) -> None:
        """Run a short request, aborted after :data:`REQUEST_TIMEOUT`."""
        fetch = recorder.fetch
        assert fetch is not None
        wait = max(min(REQUEST_TIMEOUT, self.remaining()), 0.0)
        timer = self.reactor.callLater(wait, fetch.abort, f"no answer in {wait:.1f} s")
        fetch.done.addCallback(lambda _: timer.cancel() if timer.active() else None)
        self._add(fetch.done, fetch.abort)

    def _end(self) -> None:
        if self.over:
            return
        self.over = True
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        for call in self.publish_calls:
            if call.active():
                call.cancel()
        for close in self.closers:
            close(f"the watch of {self.plan.duration:g} s ended")
        self.finished.callback(None)

    def _opened(self) -> None:
        """The stream opened: schedule the test events."""
        if self.publish_url is None or self.publish_calls or self.over:
            return
        for number, fraction in enumerate(PUBLISH_AT, 1):
            delay = max(0.0, self.plan.duration * fraction - self.now())
            call = self.reactor.callLater(
                delay, self._publish, self.publish_url, number
            )
            self.publish_calls.append(call)

    def _publish(self, url: URL, number: int) -> None:
        if self.over:
            return
        data = json.dumps(
            {
                "twisted-sse-check": self.nonce,
                "n": number,
                "time": self.reactor.seconds(),
            }
        )
        recorder = _ShortRecorder(self.reactor, "POST")
        recorder.fetch = Fetch(
            self.connector,
            "POST",
            url,
            (),
            recorder,
            own=[
                ("Authorization", f"Bearer {self.plan.token or ''}"),
                ("Content-Type", "application/json"),
            ],
            follow=False,
            body=json.dumps({"data": data}).encode("utf-8"),
        )
        self.publishes.append(_Publish(number, self.now(), recorder))
        self._short(recorder)

    def _event(self, arrival: Arrival) -> None:
        if self.first_data is None:
            self.first_data = arrival.data
        if self.nonce in arrival.data:
            self._match(arrival)
        if arrival.id is None or (self.ids and arrival.id == self.ids[-1]):
            return
        if len(self.ids) < MAX_RECORDS:
            self.ids.append(arrival.id)
        if self.resume is not None or len(self.ids) < 2 or self.over:
            return
        if self.remaining() < min(1.0, self.plan.duration / 4):
            self.resume_note = "too little of the watch was left to resume"
            return
        self._start_resume()

    def _match(self, arrival: Arrival) -> None:
        """Note the arrival of a test event."""
        try:
            document = json.loads(arrival.data)
        except ValueError:
            return
        if not isinstance(document, dict) or document.get("twisted-sse-check") != (
            self.nonce
        ):
            return
        for publish in self.publishes:
            if publish.number == document.get("n") and publish.arrived_at is None:
                publish.arrived_at = arrival.at

    def _start_resume(self) -> None:
        """Reconnect after the second to last id seen: the last should follow."""
        after, expected = self.ids[-2], self.ids[-1]
        recorder = _StreamRecorder(self.reactor, self.start, self.url, after)
        fetch = recorder.fetch = Fetch(
            self.connector,
            "GET",
            self.url,
            self.plan.headers,
            recorder,
            own=_stream_headers(self.plan, after),
        )
        self.resume = _Resume(recorder, fetch, after, expected, tuple(self.ids[:-1]))
        self.resume_note = ""

        def enough(arrival: Arrival) -> None:
            # The first event with an id tells all that is to tell.
            if arrival.id is not None:
                recorder.on_event = None
                recorder.close("resumed")

        recorder.on_event = enough
        self._add(fetch.done, recorder.close)


async def observe(
    reactor: Any, plan: Plan, connector: Connector | None = None
) -> Observations:
    """
    Watch the stream at ``plan.url`` for ``plan.duration`` seconds, with a
    ``HEAD`` beside it, a CORS preflight when ``plan.origin`` is set, a
    resume once the stream has shown two ids, and test events published
    when ``plan.publish_url`` is set; record what each did.

    :param reactor: The reactor (time, and TCP unless ``connector`` says
        otherwise).
    :param plan: What to check.
    :param connector: Opens the connections; by default TCP and TLS on
        ``reactor``, trusting the platform's certificates.
    :returns: What was seen.  Every request has ended, at the latest
        :data:`SETTLE` seconds after the watch.
    :raises ValueError: if a URL of ``plan`` is not an http(s) URL.
    """
    watch = _Watch(reactor, plan, connector or Connector(reactor))
    return await watch.run()
