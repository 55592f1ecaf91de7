"""
What ``twisted-sse check`` records of each response, as it comes:
:class:`ShortRecorder` keeps a short exchange (a ``HEAD``, the preflight, a
publish), :class:`StreamRecorder` watches a stream (its head, each read and
event, the silences, what the :class:`~twisted_sse._check._lint.LintParser`
finds in its lines).  Each gives its
:mod:`~twisted_sse._check._observations` value at the end.

Everything is bounded whatever a server sends: a body kept by
:data:`~twisted_sse._check._observations.BODY_KEPT`, a stream's lines and
events by the parser's caps (16 MiB each, the client's defaults), its
records by :data:`~twisted_sse._check._observations.MAX_RECORDS`.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .._event import MessageEvent
from .._parser import LimitExceeded
from .._url import URL, mime_essence
from ._fetch import Fetch
from ._http import Head, Recorder
from ._lint import LintParser
from ._observations import (
    BODY_KEPT,
    DATA_KEPT,
    MAX_RECORDS,
    Arrival,
    ExchangeObservation,
    Issue,
    StreamObservation,
)

__all__ = ["ShortRecorder", "StreamRecorder", "timestamp_in"]

_TIME_KEYS = ("time", "timestamp", "ts", "sent", "sent_at", "created", "created_at")


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


class ShortRecorder(Recorder):
    """
    Records a short exchange: its head, the start of its body.

    :ivar fetch: The request, once made: the end of a ``HEAD``'s grace
        aborts it.
    """

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
        """What was seen of the exchange."""
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


class StreamRecorder(Recorder):
    """
    Watches a stream: its head, each read and event, and the silences.

    :ivar fetch: The request, once made: :meth:`close` aborts it, and its
        final URL and redirects go into the observation.
    :ivar on_open: Called when the stream opens as an event stream.
    :ivar on_event: Called with each event as it arrives.
    """

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
        self.parser = LintParser(last_event_id, url.origin)
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
        """Seconds since the start of the check."""
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

    def _arrived(self, events: list[MessageEvent], now: float) -> None:
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

    def observation(self) -> StreamObservation:
        """What was seen of the stream, at the end of its :attr:`fetch`."""
        fetch = self.fetch
        assert fetch is not None
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
            final_url=fetch.url.text,
            redirects=tuple(fetch.redirects),
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
