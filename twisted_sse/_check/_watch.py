"""
The watch of ``twisted-sse check``: :func:`observe` follows a
:class:`Plan`, watching the stream for ``--duration`` with a ``HEAD``
beside it, a CORS preflight, a resume once the stream has shown two ids,
and test events published, and returns what each did as
:class:`~twisted_sse._check._observations.Observations`.  Nothing here
judges.

The time is bounded by the watch: ``--duration``, then at most
:data:`SETTLE` seconds for the connections to go.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from attrs import define, frozen
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall

from .._url import URL
from ._connector import Connector
from ._fetch import Fetch
from ._observations import (
    ACCEPT_ENCODING,
    MAX_RECORDS,
    Arrival,
    Observations,
    PublishObservation,
    ResumeObservation,
)
from ._recorders import ShortRecorder, StreamRecorder

__all__ = ["Plan", "observe"]

#: Seconds a HEAD, preflight or publish may take.
REQUEST_TIMEOUT: Final = 5.0
#: Seconds a HEAD response is held open after its head, to see a body that
#: should not be there.
HEAD_GRACE: Final = 0.3
#: When, as fractions of the watch, the test events are published.
PUBLISH_AT: Final = (0.2, 0.4, 0.6)
#: Seconds after the watch that aborted connections have to be gone.
SETTLE: Final = 2.0


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
    recorder: ShortRecorder
    arrived_at: float | None = None


@define
class _Resume:
    recorder: StreamRecorder
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
        self.stream = StreamRecorder(
            reactor, self.start, self.url, on_open=self._opened, on_event=self._event
        )
        self.head = ShortRecorder(reactor, "HEAD", HEAD_GRACE)
        self.preflight: ShortRecorder | None = None

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
            self.preflight = ShortRecorder(self.reactor, "OPTIONS")
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
        resume = None
        if self.resume is not None:
            resume = ResumeObservation(
                after=self.resume.after,
                expected=self.resume.expected,
                before=self.resume.before,
                first_data=self.first_data or "",
                stream=self.resume.recorder.observation(),
            )
        note = ""
        if self.publish_url is not None and not self.publishes:
            note = "the stream did not open, so nothing was published"
        return Observations(
            url=self.url.text,
            started=self.start,
            window=self.plan.duration,
            idle=self.plan.idle,
            stream=self.stream.observation(),
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

    def _short(self, recorder: ShortRecorder) -> None:
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
        recorder = ShortRecorder(self.reactor, "POST")
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
        recorder = StreamRecorder(self.reactor, self.start, self.url, after)
        fetch = recorder.fetch = Fetch(
            self.connector,
            "GET",
            self.url,
            self.plan.headers,
            recorder,
            own=_stream_headers(self.plan, after),
        )
        self.resume = _Resume(recorder, after, expected, tuple(self.ids[:-1]))
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
