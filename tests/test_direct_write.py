"""
Real-socket tests (pytest-twisted) of the write path that sends frames
straight to a TCP socket: it must be chosen for plain HTTP/1.1 over TCP, and
keep every byte in order when the kernel takes only part of a write, when
the client stops reading, and when heartbeats and closes interleave.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest_twisted
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.tcp import Connection
from twisted.web.server import Site

from twisted_sse import Event, EventStream, EventStreamResource
from twisted_sse._site import CappedSite, _Request

from ._http import ReactorClient, connect, http_request


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@asynccontextmanager
async def one_stream(
    site: Callable[[Any], Site] = Site,
    **options: Any,
) -> AsyncIterator[tuple[ReactorClient, EventStream]]:
    """
    Serve an EventStreamResource on 127.0.0.1 (in ``site``, made from the
    resource), connect one reader, and give both ends once the server's
    stream exists; stop listening afterwards.
    """
    streams: list[EventStream] = []
    resource = EventStreamResource(
        streams.append, clock=_reactor(), heartbeat=0, **options
    )
    port = await TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1").listen(
        site(resource)
    )
    try:
        reader = await connect(port.getHost().port, http_request("/"))
        while not streams:
            await deferLater(_reactor(), 0.01)
        yield reader, streams[0]
    finally:
        await port.stopListening()


#: Queue bounds no burst below reaches: these tests are about ordering.
BIG_QUEUE: dict[str, Any] = {
    "max_queue_events": 100_000,
    "max_queue_bytes": 512 * 1024 * 1024,
}


def numbers_of(reader: ReactorClient) -> list[int]:
    """The sequence numbers that start each event's data."""
    return [int(event.data.split(" ", 1)[0]) for event in reader.events]


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
        await reader.ended(timeout=60)
        assert [event.data for event in reader.events] == ["hello"]


@pytest_twisted.ensureDeferred
async def test_direct_path_under_twistd_site() -> None:
    """
    ``twistd sse``'s own site and request class take the direct path too
    (its request must not override what the direct path relies on).
    """

    def capped(resource: Any) -> Site:
        return CappedSite(resource, max_body=1024)

    async with one_stream(capped) as (reader, stream):
        assert isinstance(stream.request, _Request)
        assert isinstance(stream._transport, Connection)
        stream.send(Event(data="hello"))
        stream.close()
        await reader.ended(timeout=60)
        assert [event.data for event in reader.events] == ["hello"]


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
        await reader.ended(timeout=60)
        assert numbers_of(reader) == list(range(count))
        assert all(event.data.endswith(payload) for event in reader.events)


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
        await reader.ended(timeout=60)
        assert numbers_of(reader) == list(range(count))


class _CountingSocket:
    """A real socket whose sends are counted (everything else passes through)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.sends: list[int] = []

    def send(self, data: bytes) -> int:
        sent: int = self._sock.send(data)
        self.sends.append(sent)
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@pytest_twisted.ensureDeferred
async def test_one_send_per_reactor_turn() -> None:
    """
    The events a stream is given in one reactor turn reach the kernel in one
    send, at the end of the turn, and all of them arrive in order; a stream
    given one event per turn sends each at its turn's end.
    """
    async with one_stream() as (reader, stream):
        transport = stream._transport
        counting = _CountingSocket(transport.socket)
        transport.socket = counting
        try:
            for number in range(5):
                stream.send(Event(data=f"{number} burst"))
            assert counting.sends == []  # the turn has not ended
            await deferLater(_reactor(), 0.01)
            assert len(counting.sends) == 1
            for number in range(5, 8):
                stream.send(Event(data=f"{number} alone"))
                await deferLater(_reactor(), 0.01)
            assert len(counting.sends) == 4
        finally:
            transport.socket = counting._sock
        stream.close()
        await reader.ended(timeout=60)
        assert numbers_of(reader) == list(range(8))
