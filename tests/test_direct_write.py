"""
Real-socket tests (pytest-twisted) of the write path that sends frames
straight to a TCP socket: it must be chosen for plain HTTP/1.1 over TCP, and
keep every byte in order when the kernel takes only part of a write, when
the client stops reading, and when heartbeats and closes interleave.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.tcp import Connection
from twisted.python.failure import Failure
from twisted.web.server import Site

from twisted_sse import Event, EventParser, EventStream, EventStreamResource


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class ChunkedReader(Protocol):
    """Reads one chunked SSE response and parses its events."""

    def __init__(self) -> None:
        self.buffer = b""
        self.head: bytes | None = None
        self.parser = EventParser()
        self.events: list[str] = []
        self.ended: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.head is None:
            if b"\r\n\r\n" not in self.buffer:
                return
            self.head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        while b"\r\n" in self.buffer:
            size_line, _, rest = self.buffer.partition(b"\r\n")
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return
            assert rest[size : size + 2] == b"\r\n", "broken chunk framing"
            payload, self.buffer = rest[:size], rest[size + 2 :]
            if size == 0:
                self.ended.callback(None)
                return
            self.events.extend(event.data for event in self.parser.feed(payload))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


@asynccontextmanager
async def one_stream(
    **options: Any,
) -> AsyncIterator[tuple[ChunkedReader, EventStream]]:
    """
    Serve an EventStreamResource on 127.0.0.1, connect one reader, and give
    both ends once the server's stream exists; stop listening afterwards.
    """
    streams: list[EventStream] = []
    resource = EventStreamResource(
        streams.append, clock=_reactor(), heartbeat=0, **options
    )
    port = await TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1").listen(
        Site(resource)
    )
    try:
        reader = ChunkedReader()
        endpoint = TCP4ClientEndpoint(_reactor(), "127.0.0.1", port.getHost().port)
        await endpoint.connect(Factory.forProtocol(lambda: reader))
        while not streams:
            await deferLater(_reactor(), 0.01)
        yield reader, streams[0]
    finally:
        await port.stopListening()


#: Queue bounds no burst below reaches: these tests are about ordering.
BIG_QUEUE = {"max_queue_events": 100_000, "max_queue_bytes": 512 * 1024 * 1024}


def numbers_of(reader: ChunkedReader) -> list[int]:
    """The sequence numbers that start each event's data."""
    return [int(data.split(" ", 1)[0]) for data in reader.events]


@pytest_twisted.ensureDeferred
async def test_direct_path_chosen_for_tcp() -> None:
    """A plain HTTP/1.1 stream over TCP sends through the direct writer."""
    async with one_stream() as (reader, stream):
        assert isinstance(stream._transport, Connection)
        # The headers are on the wire: the request no longer keeps them, and
        # a header set now (too late) changes nothing.
        headers = stream.request.responseHeaders
        assert list(headers.getAllRawHeaders()) == []
        stream.request.setHeader(b"X-Too-Late", b"1")
        headers.addRawHeader(b"X-Too-Late", b"2")
        assert list(headers.getAllRawHeaders()) == []
        stream.send(Event(data="hello"))
        stream.close()
        await reader.ended.addTimeout(60, _reactor())
        assert reader.events == ["hello"]


@pytest_twisted.ensureDeferred
async def test_order_kept_through_partial_sends_and_pauses() -> None:
    """Large bursts to a client that stops reading arrive whole and in order."""
    async with one_stream(**BIG_QUEUE) as (reader, stream):
        assert reader.transport is not None
        reader.transport.pauseProducing()  # type: ignore[attr-defined]
        payload = "x" * 8000
        count = 3000  # ~24 MB: far more than the socket buffers hold
        for number in range(count):
            stream.send(Event(data=f"{number} {payload}"))
            if number % 500 == 0:
                await deferLater(_reactor(), 0)
        # The kernel could not take it all: the stream had to hold back.
        assert stream.paused
        reader.transport.resumeProducing()  # type: ignore[attr-defined]
        stream.close()
        await reader.ended.addTimeout(60, _reactor())
        assert numbers_of(reader) == list(range(count))
        assert all(data.endswith(payload) for data in reader.events)


@pytest_twisted.ensureDeferred
async def test_order_kept_while_client_reads_concurrently() -> None:
    """Writes racing a reading client never overtake bytes Twisted buffered."""
    async with one_stream(**BIG_QUEUE) as (reader, stream):
        payload = "y" * 50_000
        count = 600
        for number in range(count):
            stream.send(Event(data=f"{number} {payload}"))
            if number % 3 == 0:
                # Let the client read and the kernel drain between writes,
                # while Twisted may still hold the tail of an earlier one.
                await deferLater(_reactor(), 0)
        stream.close()
        await reader.ended.addTimeout(60, _reactor())
        assert numbers_of(reader) == list(range(count))
