"""
Real-reactor, real-socket tests of generator handlers (pytest-twisted): a
user's generator is advanced only as fast as a real client reads, and is
closed, its ``finally`` run, when a real client goes away.

These run under pytest only (trial does not collect plain functions); the
socket-free tests in test_handlers.py run under both.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest_twisted
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.web.server import Site

from twisted_sse import EventStream, EventStreamResource

from ._http import Response, connect, http_request


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Server:
    """A resource served on 127.0.0.1 by the real reactor."""

    def __init__(self, resource: EventStreamResource, port: Any) -> None:
        self.resource = resource
        self.port: int = port.getHost().port

    def stream(self) -> EventStream:
        (stream,) = self.resource.streams
        return stream


@asynccontextmanager
async def serving(handler: Any) -> AsyncIterator[Server]:
    """Serve ``handler`` for the duration, then check that nothing leaked."""
    reactor = _reactor()
    before = {call for call in reactor.getDelayedCalls() if call.active()}
    resource = EventStreamResource(handler, clock=reactor)
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(Site(resource))
    try:
        yield Server(resource, port)
    finally:
        await port.stopListening()
        await until(lambda: not resource.streams)
    assert resource.streams == set()
    assert not resource.heartbeat.running
    await deferLater(reactor, 0.05)
    leftover = [
        call
        for call in reactor.getDelayedCalls()
        if call.active() and call not in before
    ]
    assert leftover == []


async def until(condition: Any, seconds: float = 10.0) -> None:
    """Wait, a reactor turn at a time, until ``condition()`` holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await deferLater(_reactor(), 0.01)


async def steady(value: Any, turns: int = 10) -> int:
    """Wait until ``value()`` has not changed for ``turns`` turns of 20 ms."""
    last, same = value(), 0
    while same < turns:
        await deferLater(_reactor(), 0.02)
        now = value()
        same = same + 1 if now == last else 0
        last = now
    return int(last)


def stalled_client(port: int, path: str) -> socket.socket:
    """A client with a small receive buffer that sends a GET, then reads nothing."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.setblocking(False)
    client.sendall(http_request(path, "Accept: text/event-stream"))
    return client


def small_send_buffer(stream: EventStream) -> None:
    """Keep the server's kernel buffer for ``stream`` small, as on a busy host."""
    handle = stream.request.channel.transport.getHandle()
    handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)


#: How many events the backpressure tests' generators have, of 1000 digits.
TOTAL = 4000


@pytest_twisted.ensureDeferred
async def test_generator_waits_for_its_reader() -> None:
    """
    A user's generator is advanced only as fast as a real client reads:
    while the client reads nothing it stops, a few frames ahead (what the
    socket buffers hold); the stream queues nothing and stays open; reading,
    the client gets every event in order, and the end.
    """
    pulled: list[int] = []

    def numbers(stream: EventStream) -> Iterator[str]:
        small_send_buffer(stream)
        for number in range(TOTAL):
            pulled.append(number)
            yield f"{number:01000d}"

    async with serving(numbers) as server:
        client = stalled_client(server.port, "/")
        try:
            await until(lambda: bool(server.resource.streams))
            stream = server.stream()
            stalled = await steady(lambda: len(pulled))

            # What Twisted's own 64 KiB and the kernel's buffers (16 KiB
            # sent, 4 KiB received, each doubled by Linux) hold: at most
            # about 120 frames of 1 KB (65 here).
            assert 0 < stalled < 400, stalled
            assert stream.paused
            assert stream.queued == 0
            assert not stream.closed

            response = Response(http_request("/"))
            while not response.complete:
                try:
                    data = client.recv(65536)
                except BlockingIOError:
                    await deferLater(_reactor(), 0)
                    continue
                assert data, "the server hung up"
                response.received(data)
            assert response.error is None
            assert [int(event.data) for event in response.events] == list(range(TOTAL))
        finally:
            client.close()


@pytest_twisted.ensureDeferred
async def test_async_generator_waits_for_its_reader() -> None:
    """The same for a user's async generator that awaits between its yields."""
    pulled: list[int] = []
    reactor = _reactor()

    async def numbers(stream: EventStream) -> AsyncIterator[str]:
        small_send_buffer(stream)
        for number in range(TOTAL):
            pulled.append(number)
            yield f"{number:01000d}"
            if number % 100 == 0:
                await deferLater(reactor, 0)

    async with serving(numbers) as server:
        client = stalled_client(server.port, "/")
        try:
            await until(lambda: bool(server.resource.streams))
            stream = server.stream()
            stalled = await steady(lambda: len(pulled))
            assert 0 < stalled < 400, stalled
            assert stream.queued == 0
            assert not stream.closed
        finally:
            # It goes away while the generator waits for it.
            client.close()
        await until(lambda: not server.resource.streams)
        assert len(pulled) == stalled


@pytest_twisted.ensureDeferred
async def test_generator_closed_when_client_leaves() -> None:
    """A real client hangs up: the generator's finally runs within a second."""
    reactor = _reactor()
    released: list[float] = []

    def ticks(stream: EventStream) -> Iterator[Any]:
        try:
            while True:
                yield "tick"
                yield deferLater(reactor, 0.01)
        finally:
            released.append(time.monotonic())

    async with serving(ticks) as server:
        client = await connect(server.port, http_request("/"))
        await client.wait_for(lambda response: len(response.events) >= 3)
        hung_up = time.monotonic()
        await client.close()
        await until(lambda: bool(released), seconds=1.0)
        assert released[0] - hung_up < 1.0


@pytest_twisted.ensureDeferred
async def test_async_generator_closed_when_client_leaves() -> None:
    """A real client hangs up while an async generator awaits: its finally runs."""
    reactor = _reactor()
    released: list[float] = []

    async def ticks(stream: EventStream) -> AsyncIterator[str]:
        try:
            while True:
                yield "tick"
                await deferLater(reactor, 60)
        finally:
            released.append(time.monotonic())

    async with serving(ticks) as server:
        client = await connect(server.port, http_request("/"))
        await client.wait_for(lambda response: len(response.events) >= 1)
        hung_up = time.monotonic()
        await client.close()
        await until(lambda: bool(released), seconds=1.0)
        assert released[0] - hung_up < 1.0


@pytest_twisted.ensureDeferred
async def test_stalled_generator_closed_when_client_leaves() -> None:
    """A generator held back by a client that stopped reading is closed when it goes."""
    released: list[str] = []

    def numbers(stream: EventStream) -> Iterator[str]:
        small_send_buffer(stream)
        try:
            while True:
                yield "x" * 1000
        finally:
            released.append("released")

    async with serving(numbers) as server:
        client = stalled_client(server.port, "/")
        try:
            await until(lambda: bool(server.resource.streams))
            stream = server.stream()
            await until(lambda: stream.paused)
        finally:
            client.close()
        await until(lambda: bool(released), seconds=1.0)
