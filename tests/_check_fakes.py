"""
Made-up observations and fake connections for the tests of
C{twisted-sse check}: healthy values to change one field of, a base class
that judges them, and connections that a L{Clock} drives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from twisted_sse._check._http import Head, Recorder
from twisted_sse._check._judgement import Check
from twisted_sse._check._observations import (
    Arrival,
    ExchangeObservation,
    Observations,
    StreamObservation,
)
from twisted_sse._url import URL as _URL

URL = "http://example.com/events"
SSE = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
)


def head(status: int = 200, *extra: tuple[str, str], **kwargs: Any) -> Head:
    """A response head: an event stream's headers, then ``extra``."""
    headers = kwargs.pop("headers", SSE)
    return Head(status=status, headers=(*headers, *extra), **kwargs)


def stream(**kwargs: Any) -> StreamObservation:
    """A healthy stream watched for 3 s, changed by ``kwargs``."""
    defaults: dict[str, Any] = {
        "url": URL,
        "final_url": URL,
        "head": head(),
        "head_at": 0.01,
        "first_byte_at": 0.01,
        "longest_silence": 0.5,
        "end": "window",
        "ended_at": 3.0,
        "lines": 6,
    }
    defaults.update(kwargs)
    defaults.setdefault("event_count", len(defaults.get("events", ())))
    return StreamObservation(**defaults)


def observed(**kwargs: Any) -> Observations:
    """Observations of a healthy stream over a 3 s watch, changed by ``kwargs``."""
    defaults: dict[str, Any] = {
        "url": URL,
        "started": 1_800_000_000.0,
        "window": 3.0,
        "idle": 30.0,
        "stream": stream(),
        "head_request": ExchangeObservation("HEAD", head(), 0.01),
    }
    defaults.update(kwargs)
    return Observations(**defaults)


def steady(count: int, every: float = 0.2, **kwargs: Any) -> tuple[Arrival, ...]:
    """``count`` events, one per read, ``every`` seconds apart."""
    return tuple(
        Arrival(at=0.1 + n * every, data=str(n), read=n + 1, **kwargs)
        for n in range(count)
    )


def reads_of(events: tuple[Arrival, ...]) -> tuple[tuple[float, int], ...]:
    """One read per distinct read number of ``events``."""
    seen: dict[int, float] = {}
    for event in events:
        seen.setdefault(event.read, event.at)
    return tuple((at, 10) for at in seen.values())


class JudgementTests(SynchronousTestCase):
    """Helpers for judging made-up observations."""

    def judged(
        self,
        check: Callable[[Observations], Check],
        obs: Observations,
        status: str,
        *words: str,
    ) -> Check:
        """Judge ``obs``; assert the status and that the reason has ``words``."""
        result = check(obs)
        self.assertEqual(result.status, status, result.reason)
        for word in words:
            self.assertIn(word, result.reason)
        return result


# Fake connections.


class FakeTransport(StringTransport):
    """A transport whose closing reaches its protocol on the next turn."""

    def __init__(self, clock: Clock, protocol: IProtocol) -> None:
        super().__init__()
        self.clock = clock
        self.protocol = protocol
        self.closed = False

    def loseConnection(self) -> None:
        super().loseConnection()
        if not self.closed:
            self.closed = True
            self.clock.callLater(0, self.protocol.connectionLost, Failure(Exception()))

    def abortConnection(self) -> None:
        self.loseConnection()


class Net:
    """Fake connections: each is a protocol on a L{FakeTransport}."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.connections: list[tuple[_URL, IProtocol, FakeTransport]] = []

    def endpoint(self, url: _URL) -> FakeEndpoint:
        return FakeEndpoint(self, url)

    def requests(
        self, method: str = "GET"
    ) -> list[tuple[bytes, IProtocol, FakeTransport]]:
        """The connections whose request is ``method``, with the request bytes."""
        return [
            (transport.value(), protocol, transport)
            for _, protocol, transport in self.connections
            if transport.value().startswith(method.encode() + b" ")
        ]


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Connects at once to a L{FakeTransport}."""

    def __init__(self, net: Net, url: _URL) -> None:
        self.net = net
        self.url = url

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert protocol is not None
        transport = FakeTransport(self.net.clock, protocol)
        protocol.makeConnection(transport)
        self.net.connections.append((self.url, protocol, transport))
        return succeed(protocol)


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class TellingRecorder(Recorder):
    """A recorder that keeps what it is told, in order; stops where told."""

    def __init__(self) -> None:
        self.told: list[tuple[str, object]] = []
        self.stop_at_head: str | None = None

    def head(self, head: Head) -> str | None:
        self.told.append(("head", head.status))
        return self.stop_at_head

    def body(self, data: bytes) -> str | None:
        self.told.append(("body", data))
        return None

    def extra(self, size: int) -> None:
        self.told.append(("extra", size))

    def end(self, error: str | None) -> None:
        self.told.append(("end", error))
