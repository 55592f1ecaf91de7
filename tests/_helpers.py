"""
Small pieces several test modules share: a broker subscriber that records
what it is given (and one that paces a replay), the context-manager half of
the test's own clients, a hub served on a clock (:class:`HubFixture`) with
what its tests read of a response (:func:`first_frame_id`, :func:`answer`)
and a broker that is down (:class:`BrokenBroker`), and a counter resource
with its client (:class:`CounterCase`).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable
from random import Random
from types import TracebackType
from typing import Any, Self

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPullProducer, ITransport
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface import implementer

from twisted_sse import (
    BrokerUnavailable,
    Event,
    EventParser,
    EventStream,
    EventStreamResource,
    Published,
    StreamRegistry,
    Subscription,
    counter,
)
from twisted_sse._broker import IBroker
from twisted_sse._hub import Hub
from twisted_sse._memory import MemoryBroker
from twisted_sse.testing import SSETestClient, SSETestResponse, parse_events

from ._transports import TransportCase


class Collector:
    """A broker subscriber (a ``deliver`` callable) that keeps what it gets."""

    def __init__(self) -> None:
        self.got: list[Published] = []

    def __call__(self, published: Published) -> object:
        self.got.append(published)
        return None

    @property
    def ids(self) -> list[str]:
        """The ids delivered, in order."""
        return [published.id for published in self.got]

    @property
    def data(self) -> list[str]:
        """The data of the events delivered, as a client would parse them."""
        events = parse_events(b"".join(published.frame for published in self.got))
        return [event.data for event in events]


class Pacer(Collector):
    """
    A subscriber with room for ``room`` events at a time: it answers
    ``False`` (no room) for the last one, as the hub's handoff does for a
    client that has not read yet (see ``IBroker.subscribe``).
    """

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room
        self.left = room

    def __call__(self, published: Published) -> bool:
        super().__call__(published)
        self.left -= 1
        return self.left > 0

    def take(self, subscription: Subscription, room: int | None = None) -> None:
        """The client read everything (and may now take ``room``): go on."""
        self.room = self.room if room is None else room
        self.left = self.room
        subscription.resume_replay()


class Closing:
    """``with thing:`` closes ``thing`` at the end; subclasses define close()."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def global_reactor() -> Any:
    """The global reactor, imported only when a real-reactor test runs."""
    from twisted.internet import reactor

    return reactor


async def sleep(seconds: float) -> None:
    await deferLater(global_reactor(), seconds, lambda: None)


async def until(
    predicate: Callable[[], object], what: str, timeout: float = 10.0
) -> None:
    """Wait (on the reactor) until ``predicate()`` is true."""
    reactor = global_reactor()
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await sleep(0.01)


EPOCH = 1700000000000
TOKEN = "s3cret-token"


def ids(response: SSETestResponse) -> list[str]:
    """The ids of the response's events."""
    return [event.last_event_id for event in response.events]


def data(response: SSETestResponse) -> list[str]:
    """The data of the response's events."""
    return [event.data for event in response.events]


class ClientAddress(Resource):
    """
    Takes the client's address from ``X-Test-Client`` (as a proxy-aware
    site would from ``X-Forwarded-For``), since the test client always
    connects from 127.0.0.1.
    """

    def __init__(self, child: Resource) -> None:
        super().__init__()
        self.child = child

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        host = request.getHeader(b"X-Test-Client")
        if host is not None:
            request.client = IPv4Address("TCP", host.decode("ascii"), 1234)
        request.prepath.pop()
        request.postpath.insert(0, path)
        return self.child


class HubFixture:
    """
    A hub on a clock, served under ``/channels``, and a client for it, over
    the test case's ``transport`` (see ``tests/_transports.py``).
    """

    def __init__(
        self,
        testcase: SynchronousTestCase,
        broker: IBroker | None = None,
        registry: StreamRegistry | None = None,
        history: int = 1000,
        history_bytes: int = 16 * 1024 * 1024,
        **hub_options: Any,
    ) -> None:
        self.clock = Clock()
        self.memory = MemoryBroker(
            history=history, history_bytes=history_bytes, epoch=EPOCH
        )
        self.broker = broker if broker is not None else self.memory
        self.registry = (
            registry
            if registry is not None
            else StreamRegistry(self.clock, random=Random(4))
        )
        hub_options.setdefault("publish_token", TOKEN)
        self.hub = Hub(
            self.broker, clock=self.clock, registry=self.registry, **hub_options
        )
        root = Resource()
        root.putChild(b"channels", self.hub.resource())
        self.client = SSETestClient(
            ClientAddress(root),
            self.clock,
            transport=getattr(testcase, "transport", "memory"),
        )
        testcase.addCleanup(self.check, testcase)

    def check(self, testcase: SynchronousTestCase) -> None:
        self.client.disconnect_all()
        self.client.assert_clean(
            self.registry, self.hub.heartbeat, brokers=[self.memory], testcase=testcase
        )

    def subscribe(
        self,
        channel: str = "news",
        last_event_id: str | None = None,
        headers: dict[str, str] | None = None,
        query: str = "",
    ) -> SSETestResponse:
        return self.client.get(
            f"/channels/{channel}{query}", headers, last_event_id=last_event_id
        )

    def post(
        self,
        body: bytes,
        channel: str = "news",
        content_type: str | None = "application/json",
        token: str | None = TOKEN,
        authorization: str | None = None,
    ) -> SSETestResponse:
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if authorization is not None:
            headers["Authorization"] = authorization
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.request("POST", f"/channels/{channel}", headers, body)

    def post_json(self, channel: str = "news", **fields: Any) -> SSETestResponse:
        return self.post(json.dumps(fields).encode(), channel)

    def publish(self, data: str, channel: str = "news", **fields: Any) -> str:
        result: list[str] = []
        self.hub.publish(channel, Event(data=data, **fields)).addCallback(result.append)
        # The reactor's next turn: what the publish buffered or closed.
        self.client.flush()
        return result[0]


def first_frame_id(response: SSETestResponse) -> str:
    """The last event id that the response's first frame commits."""
    parser = EventParser()
    parser.feed(response.raw.split(b"\n\n", 1)[0] + b"\n\n")
    return parser.last_event_id


def answer(response: SSETestResponse) -> dict[str, Any]:
    """The JSON body of a non-stream response."""
    body: dict[str, Any] = json.loads(response.raw)
    return body


@implementer(IBroker)
class BrokenBroker:
    """A broker that is down: every publish and subscription fails."""

    available = False

    def publish(self, channel: str, event: Event, key: str | None = None) -> Any:
        return Deferred.fromCoroutine(self._fail())

    def subscribe(self, channel: str, deliver: Any, last_event_id: Any = None) -> Any:
        return Deferred.fromCoroutine(self._fail())

    async def _fail(self) -> Any:
        raise BrokerUnavailable("redis is down")

    def subscribe_now(
        self, channel: str, deliver: Any, last_event_id: Any = None
    ) -> Subscription | None:
        return None

    def stop(self) -> Deferred[None]:
        return succeed(None)


def silent(stream: EventStream) -> None:
    """A handler that sends nothing."""


class Keeper:
    """A handler that keeps its streams for the test to drive."""

    def __init__(self) -> None:
        self.streams: list[EventStream] = []

    def __call__(self, stream: EventStream) -> None:
        self.streams.append(stream)


class CounterCase(TransportCase):
    """
    A counter resource (one event a second) on a clock, and a client for it
    over the case's ``transport``.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = EventStreamResource(
            counter(1), retry=1000, clock=self.clock, heartbeat=15
        )
        self.client = self.client_for(self.resource, clock=self.clock)


class Sending(typing.Protocol):
    """A connection that counts the bytes it has sent."""

    sent: int

    @property
    def transport(self) -> ITransport | None:
        """Where its bytes go."""


@implementer(IPullProducer)
class Endless:
    """
    Writes ``piece`` to ``connection`` each time its socket can take more,
    until stopped: a hostile server's endless line, event or head.
    """

    def __init__(self, connection: Sending, piece: bytes) -> None:
        self.connection = connection
        self.piece = piece

    def resumeProducing(self) -> None:
        transport = self.connection.transport
        assert transport is not None
        transport.write(self.piece)
        self.connection.sent += len(self.piece)

    def stopProducing(self) -> None:
        pass


class OpenStreamsCase(TransportCase):
    """
    A hub with twenty open streams on four channels, noting when each ends:
    what a drain, or a service's stop, starts from.
    """

    def setUp(self) -> None:
        self.hub = HubFixture(self)
        self.responses = [self.hub.subscribe(f"channel{n % 4}") for n in range(20)]
        self.ended: list[float] = []
        for stream in self.hub.registry.streams:
            stream.on_close(lambda: self.ended.append(self.hub.clock.seconds()))

    def step_until(self, done: Callable[[], bool], limit: float) -> None:
        """Move time in small steps until ``done()``."""
        while not done() and self.hub.clock.seconds() < limit:
            self.hub.client.advance(0.05)
