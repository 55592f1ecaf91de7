"""
Real-socket tests (pytest-twisted) of how a stream starts its response on
the direct path (plain HTTP/1.x over TCP): the bytes on the wire are the
ones Twisted's own ``Request.write`` would send, the request keeps what a
handler or the access log may read, the stream learns of its end without a
Deferred, and anything Twisted would add or transform (an encoder, a
customised request class) takes Twisted's own path.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.tcp import Connection
from twisted.web.resource import EncodingResourceWrapper, IResource, Resource
from twisted.web.server import GzipEncoderFactory, Request, Site

from twisted_sse import Event, EventStream, EventStreamResource, Hub, MemoryBroker

from ._http import ReactorClient, connect, http_request


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class OrdinaryRequest(Request):
    """A request class of the application's own: Twisted's path is kept."""

    def write(self, data: bytes) -> None:
        super().write(data)


class AccessLog(Site):
    """A site that keeps what its access log reads of each finished request."""

    def __init__(self, resource: IResource, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.logged: list[tuple[bytes | None, int, int]] = []

    def log(self, request: Any) -> None:
        self.logged.append(
            (request.getHeader(b"user-agent"), request.code, request.sentLength)
        )


@asynccontextmanager
async def serving(
    resource: IResource, request_class: type[Request] = Request
) -> AsyncIterator[tuple[AccessLog, int]]:
    """Serve ``resource`` on 127.0.0.1; the site and its port."""
    site = AccessLog(resource, requestFactory=request_class)
    port = await TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1").listen(site)
    try:
        yield site, port.getHost().port
    finally:
        await port.stopListening()


def stream_resource(streams: list[EventStream], **options: Any) -> Resource:
    root = Resource()
    root.putChild(
        b"events",
        EventStreamResource(streams.append, clock=_reactor(), heartbeat=0, **options),
    )
    return root


def without_date(raw: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: -", raw)


async def first_answer(
    resource: IResource, request: bytes, request_class: type[Request]
) -> tuple[bytes, ReactorClient]:
    """The head and first frame ``resource`` sends for ``request``, as sent."""
    async with serving(resource, request_class) as (_, port):
        client = await connect(port, request)
        await client.wait_for(lambda c: b"\n\n" in c.body)
        return client.wire, client


@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize("allow_origin", [None, "*", "https://app.example"])
@pytest_twisted.ensureDeferred
async def test_head_is_twisteds(version: str, allow_origin: str | None) -> None:
    """The direct path sends the bytes Twisted's Request.write would."""
    answers = []
    for request_class in (Request, OrdinaryRequest):
        streams: list[EventStream] = []
        resource = stream_resource(streams, retry=1500, allow_origin=allow_origin)
        raw, client = await first_answer(
            resource,
            http_request("/events", "User-Agent: t", version=version),
            request_class,
        )
        direct = isinstance(streams[0]._transport, Connection)
        assert direct is (request_class is Request)
        answers.append(without_date(raw))
        client.hang_up()
        await client.lost
    assert answers[0] == answers[1]
    head, _, body = answers[0].partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/{version} 200 OK\r\n".encode())
    if version == "1.1":
        assert b"\r\nTransfer-Encoding: chunked" in head
        assert body == b"d\r\nretry: 1500\n\n\r\n"
    else:
        assert b"Transfer-Encoding" not in head
        assert body == b"retry: 1500\n\n"


@pytest_twisted.ensureDeferred
async def test_hub_head_is_twisteds() -> None:
    """A hub subscriber's head, with the history-lost header, is Twisted's too."""
    answers = []
    for request_class in (Request, OrdinaryRequest):
        hub = Hub(MemoryBroker(epoch=5), clock=_reactor(), heartbeat=0)
        root = Resource()
        root.putChild(b"channels", hub.resource())
        raw, client = await first_answer(
            root,
            http_request("/channels/news", "Last-Event-ID: 9-9"),
            request_class,
        )
        answers.append(without_date(raw))
        client.hang_up()
        await client.lost
    assert answers[0] == answers[1]
    assert b"\r\nSse-History-Lost: unknown\r\n" in answers[0]


@pytest_twisted.ensureDeferred
async def test_request_readable_after_open() -> None:
    """
    What a handler or the access log reads of the request still works once
    the stream is open, and late writes to it are harmless.
    """
    streams: list[EventStream] = []
    async with serving(stream_resource(streams, retry=1000)) as (site, port):
        client = await connect(
            port,
            http_request("/events", "User-Agent: probe/1", "X-Twice: a", "X-Twice: b"),
        )
        await client.wait_for(lambda c: b"\n\n" in c.body)
        stream = streams[0]
        request = stream.request
        assert isinstance(stream._transport, Connection)
        assert request.getHeader(b"user-agent") == b"probe/1"
        assert list(request.requestHeaders.getRawHeaders(b"x-twice")) == [b"a", b"b"]
        assert request.getAllHeaders()[b"x-twice"] == b"b"
        request.requestHeaders.addRawHeader(b"X-Twice", b"c")
        assert list(request.requestHeaders.getRawHeaders(b"x-twice")) == [
            b"a",
            b"b",
            b"c",
        ]
        request.requestHeaders.setRawHeaders(b"X-New", [b"1"])
        assert request.getHeader(b"x-new") == b"1"
        copied = request.requestHeaders.copy()
        assert list(copied.getRawHeaders(b"x-twice")) == [b"a", b"b", b"c"]
        assert copied.getRawHeaders(b"user-agent") == (b"probe/1",)
        # The (empty) body is shared and read-only.
        assert request.content.read() == b""
        with pytest.raises(OSError):
            request.content.write(b"x")
        # Too late for a cookie: ignored, as Twisted would.
        request.addCookie(b"late", b"1")
        assert request.cookies == []
        stream.send(Event(data="hello"))
        stream.close()
        await client.ended()
        assert client.header("Set-Cookie") is None
        assert client.body == b"retry: 1000\n\ndata: hello\n\n"
        sent = len(b"retry: 1000\n\n" + b"data: hello\n\n")
        assert site.logged == [(b"probe/1", 200, sent)]


@pytest_twisted.ensureDeferred
async def test_end_told_without_deferred() -> None:
    """
    On the direct path the stream is itself an entry of its request's
    notifications: a client that leaves ends it as lost, a stream the
    server closes is closed once.
    """
    streams: list[EventStream] = []
    async with serving(stream_resource(streams, retry=1000)) as (site, port):
        leaving = await connect(port, http_request("/events"))
        staying = await connect(port, http_request("/events"))
        await leaving.wait_for(lambda c: b"\n\n" in c.body)
        await staying.wait_for(lambda c: b"\n\n" in c.body)
        first, second = streams
        for stream in streams:
            assert stream.request.notifications == [stream]
        ends: list[str | None] = []
        first.on_close(lambda: ends.append(first.close_reason))
        second.on_close(lambda: ends.append(second.close_reason))
        leaving.hang_up()
        await leaving.lost
        while not first.closed:
            await deferLater(_reactor(), 0.01)
        # A stream its client ended still gets its access-log line.
        assert site.logged == [(None, 200, len(b"retry: 1000\n\n"))]
        second.close()
        await staying.ended()
        staying.hang_up()
        await staying.lost
        await deferLater(_reactor(), 0.05)
        assert ends == ["lost", "closed"]
        assert len(site.logged) == 2


@pytest_twisted.ensureDeferred
async def test_customised_request_takes_twisteds_path() -> None:
    """A request class of the application's own is served as before."""
    streams: list[EventStream] = []
    async with serving(stream_resource(streams), OrdinaryRequest) as (site, port):
        client = await connect(port, http_request("/events", "User-Agent: x"))
        await client.wait_for(lambda c: b"\n\n" in c.body)
        stream = streams[0]
        assert stream._transport is None
        assert stream.request.getHeader(b"user-agent") == b"x"
        client.hang_up()
        await client.lost
        while not stream.closed:
            await deferLater(_reactor(), 0.01)
        assert stream.close_reason == "lost"
        assert site.logged == [(b"x", 200, len(b":\n\n"))]


@pytest_twisted.ensureDeferred
async def test_gzip_takes_twisteds_path() -> None:
    """Behind Twisted's gzip wrapper, frames go through its encoder."""
    streams: list[EventStream] = []
    root = Resource()
    root.putChild(
        b"events",
        EncodingResourceWrapper(
            EventStreamResource(streams.append, clock=_reactor(), heartbeat=0),
            [GzipEncoderFactory()],
        ),
    )
    async with serving(root) as (_, port):
        client = await connect(port, http_request("/events", "Accept-Encoding: gzip"))
        while not streams:
            await deferLater(_reactor(), 0.01)
        stream = streams[0]
        assert stream._transport is None
        stream.send(Event(data="zipped"))
        stream.close()
        await client.ended()
    assert client.header("Content-Encoding") == "gzip"
    text = zlib.decompress(client.body, 16 + zlib.MAX_WBITS)
    assert text == b":\n\ndata: zipped\n\n"


@pytest_twisted.ensureDeferred
async def test_hub_waiting_subscriber_told_without_deferred() -> None:
    """
    A subscriber that waited (here for the authoriser) had a Deferred to
    learn that its client left meanwhile; once its stream is open, the
    stream takes that Deferred's place among the request's notifications.
    """
    broker = MemoryBroker()
    hub = Hub(broker, clock=_reactor(), heartbeat=0, authorizer=lambda r, c: True)
    root = Resource()
    root.putChild(b"channels", hub.resource())
    async with serving(root) as (_, port):
        client = await connect(port, http_request("/channels/news"))
        await client.wait_for(lambda c: b"\n\n" in c.body)
        (stream,) = hub.channel_resource("news").streams
        assert isinstance(stream._transport, Connection)
        assert stream.request.notifications == [stream]
        client.hang_up()
        await client.lost
        while not stream.closed:
            await deferLater(_reactor(), 0.01)
        assert stream.close_reason == "lost"
        assert broker.subscriber_count("news") == 0
