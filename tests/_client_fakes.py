"""
Fakes for the client's tests: an L{IAgent} whose requests, responses and
bodies the test answers, and a L{Harness} that runs an L{EventSource} on it
and a L{Clock}, recording what the source does.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from twisted_sse import EventSource, EventSourceError, LimitExceeded, MessageEvent

URL = "http://example.com/events"
ORIGIN = "http://example.com"
BOM = b"\xef\xbb\xbf"
SSE = "text/event-stream"


@implementer(IResponse)
class FakeResponse:
    """
    An L{IResponse} whose body the test writes with L{send} and ends with
    L{end}; data sent before C{deliverBody} is buffered, as Twisted does.
    """

    version = (b"HTTP", 1, 1)
    phrase = b"Whatever"
    length = UNKNOWN_LENGTH
    request = None
    previousResponse = None

    def __init__(self, code: int, headers: Headers) -> None:
        self.code = code
        self.headers = headers
        self.transport = StringTransport()
        self.protocol: Any = None
        self._buffer: list[bytes] = []
        self._ended: Failure | None = None

    def deliverBody(self, protocol: Any) -> None:
        assert self.protocol is None, "deliverBody called twice"
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        for data in self._buffer:
            protocol.dataReceived(data)
        if self._ended is not None:
            protocol.connectionLost(self._ended)

    def setPreviousResponse(self, response: IResponse) -> None:
        pass

    def send(self, data: bytes) -> None:
        """Deliver C{data} as the next body chunk."""
        if self.protocol is None:
            self._buffer.append(data)
        else:
            self.protocol.dataReceived(data)

    def end(self, reason: Failure | None = None) -> None:
        """End the body, cleanly by default."""
        reason = reason if reason is not None else Failure(ResponseDone())
        if self.protocol is None:
            self._ended = reason
        else:
            self.protocol.connectionLost(reason)

    @property
    def stopped(self) -> bool:
        """Whether the client dropped the connection."""
        return bool(self.transport.producerState == "stopped")


class FakeRequest:
    """One request made through L{FakeAgent}, answered by the test."""

    def __init__(self, method: bytes, uri: bytes, headers: Headers) -> None:
        self.method = method
        self.uri = uri
        self.headers = headers
        self.cancelled = False
        self.late_response: FakeResponse | None = None
        self.deferred: Deferred[IResponse] = Deferred(self._cancel)

    def _cancel(self, deferred: Deferred[IResponse]) -> None:
        self.cancelled = True
        if self.late_response is not None:
            # The response was already on its way: the cancel loses the race.
            deferred.callback(self.late_response)

    def header(self, name: str) -> str | None:
        """The single value of header C{name}, or L{None}."""
        values = self.headers.getRawHeaders(name.encode())
        if values is None:
            return None
        assert len(values) == 1, values
        return values[0].decode()

    def respond(
        self,
        code: int = 200,
        content_type: str | None = SSE,
        headers: dict[str, str] | None = None,
    ) -> FakeResponse:
        """Answer with a response whose body is still open."""
        raw = Headers()
        if content_type is not None:
            raw.addRawHeader(b"Content-Type", content_type.encode())
        for name, value in (headers or {}).items():
            raw.addRawHeader(name.encode(), value.encode())
        response = FakeResponse(code, raw)
        self.deferred.callback(response)
        return response

    def redirect(self, location: str, code: int = 302) -> FakeResponse:
        """Answer with a redirect."""
        return self.respond(code, None, {"Location": location})

    def fail(self, error: Exception | None = None) -> None:
        """Fail the request as a network error would."""
        self.deferred.errback(error if error is not None else ConnectionRefusedError())


@implementer(IAgent)
class FakeAgent:
    """An L{IAgent} that records requests and lets the test answer them."""

    def __init__(self) -> None:
        self.requests: list[FakeRequest] = []

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        request = FakeRequest(
            method, uri, headers if headers is not None else Headers()
        )
        self.requests.append(request)
        return request.deferred


class Harness:
    """An L{EventSource} on a fake agent and a clock, recording what it does."""

    def __init__(self, url: str = URL, jitter: float = 0.0, **kwargs: Any) -> None:
        self.clock = Clock()
        self.agent = FakeAgent()
        self.source = EventSource(
            url, agent=self.agent, reactor=self.clock, random=lambda: jitter, **kwargs
        )
        self.events: list[MessageEvent] = []
        self.errors: list[Failure] = []
        self.opened = 0
        self.source.on_message = self.events.append
        self.source.on_error = self.errors.append
        self.source.on_open = self._opened

    def _opened(self) -> None:
        self.opened += 1

    @property
    def last(self) -> FakeRequest:
        """The latest request."""
        return self.agent.requests[-1]

    def start(self) -> FakeRequest:
        """Let the source make its first request."""
        self.clock.advance(0)
        return self.last

    def open(self, *chunks: bytes) -> FakeResponse:
        """Answer the latest request with an open stream carrying C{chunks}."""
        response = self.last.respond()
        for chunk in chunks:
            response.send(chunk)
        return response

    def requests_after(self, seconds: float) -> int:
        """How many requests there are after C{seconds} more."""
        self.clock.advance(seconds)
        return len(self.agent.requests)


def message(
    data: str, type: str = "message", last_event_id: str = "", origin: str = ORIGIN
) -> MessageEvent:
    """The event the client should deliver."""
    return MessageEvent(
        type=type, data=data, last_event_id=last_event_id, origin=origin
    )


def error_of(failure: Failure) -> EventSourceError:
    """The L{EventSourceError} that C{failure} wraps."""
    assert isinstance(failure.value, EventSourceError), failure
    return failure.value


def collect(source: EventSource) -> tuple[list[MessageEvent], Deferred[None]]:
    """Iterate C{source} in a coroutine; return what it yields and its result."""
    seen: list[MessageEvent] = []

    async def consume() -> None:
        async for event in source:
            seen.append(event)

    return seen, Deferred.fromCoroutine(consume())


def limit_of(failure: Failure) -> LimitExceeded:
    """The L{LimitExceeded} that C{failure} wraps."""
    assert isinstance(failure.value, LimitExceeded), failure
    return failure.value
