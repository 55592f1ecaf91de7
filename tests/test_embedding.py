"""
Real-socket tests (pytest-twisted) of the three documented ways to embed a
stream in an existing Twisted program: a Klein route returning the resource,
``putChild`` into an existing Site, and an ``IService`` in a
``MultiService``.  Also: clients that vanish abruptly leave nothing behind.

These run under pytest only (trial does not collect plain functions); the
socket-free equivalents in test_stream.py run under both.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from klein import Klein
from twisted.application.service import MultiService
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site

from twisted_sse import (
    EventStreamResource,
    EventStreamService,
    StreamRegistry,
    counter,
)

from ._http import ReactorClient, connect, http_request


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Listening:
    """A listening port on 127.0.0.1."""

    def __init__(self, port: IListeningPort) -> None:
        self.listening = port
        self.port: int = port.getHost().port  # type: ignore[attr-defined]

    async def stop(self) -> None:
        await maybeDeferred(self.listening.stopListening)


async def listen(site: Site) -> Listening:
    port = await TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1").listen(site)
    return Listening(port)


def stream_resource() -> EventStreamResource:
    return EventStreamResource(counter(0.05), clock=_reactor(), retry=500, heartbeat=15)


async def assert_released(resource: EventStreamResource) -> None:
    # Give the reactor a turn to deliver the disconnects.
    for _ in range(100):
        if not resource.streams:
            break
        await deferLater(_reactor(), 0.02)
    assert resource.streams == set()
    assert not resource.heartbeat.running


async def read_then_hang_up(
    site: Site, path: str, until: bytes, events: EventStreamResource
) -> ReactorClient:
    """
    Serve ``site``, GET ``path`` until ``until`` arrives, hang up, and check
    that ``events`` released the stream; the client, as it was then.
    """
    port = await listen(site)
    try:
        client = await connect(port.port, http_request(path))
        await client.wait_for(lambda c: until in c.body)
        await client.close()
        await assert_released(events)
        return client
    finally:
        await port.stop()


@pytest_twisted.ensureDeferred
async def test_klein_route() -> None:
    """A Klein route that returns the resource streams events."""
    app = Klein()
    events = stream_resource()

    @app.route("/feed", branch=False)
    def feed(request: object) -> EventStreamResource:
        return events

    client = await read_then_hang_up(
        Site(app.resource()), "/feed", b"data: 2\n\n", events
    )
    assert client.header("Content-Type") == "text/event-stream; charset=utf-8"
    assert b"retry: 500\n\n" in client.body


@pytest_twisted.ensureDeferred
async def test_put_child() -> None:
    """putChild into an existing Site's root streams events."""
    root = Resource()
    events = stream_resource()
    root.putChild(b"events", events)
    client = await read_then_hang_up(Site(root), "/events", b"data: 1\n\n", events)
    assert client.header("Content-Type") == "text/event-stream; charset=utf-8"


@pytest_twisted.ensureDeferred
async def test_service_in_multiservice() -> None:
    """EventStreamService in a MultiService ends streams cleanly on stop."""
    root = Resource()
    registry = StreamRegistry(_reactor())
    events = EventStreamResource(
        counter(0.05), clock=_reactor(), retry=500, registry=registry
    )
    root.putChild(b"events", events)
    endpoint = TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1")
    service = EventStreamService(endpoint, Site(root), registry, _reactor())
    parent = MultiService()
    service.setServiceParent(parent)
    parent.privilegedStartService()
    parent.startService()
    port = Listening(await service.listen())
    client = await connect(port.port, http_request("/events"))
    await client.wait_for(lambda c: b"data: 1\n\n" in c.body)
    await parent.stopService()
    await client.lost
    # The response ended with the terminating chunk, not a cut connection.
    assert client.complete
    assert client.wire.endswith(b"\r\n0\r\n\r\n")
    assert events.streams == set()


@pytest_twisted.ensureDeferred
async def test_hundred_clients_vanish() -> None:
    """100 clients that connect and vanish abruptly leave no stream or timer."""
    events = stream_resource()
    root = Resource()
    root.putChild(b"events", events)
    before = set(_reactor().getDelayedCalls())
    port = await listen(Site(root))
    try:
        clients = [
            await connect(port.port, http_request("/events")) for _ in range(100)
        ]
        for client in clients:
            await client.wait_for(lambda c: b"retry: 500\n\n" in c.body)
        assert len(events.streams) == 100
        for client in clients:
            assert client.transport is not None
            client.transport.abortConnection()  # type: ignore[attr-defined]
        await assert_released(events)
    finally:
        await port.stop()
    await deferLater(_reactor(), 0.05)
    leftover = [
        call
        for call in _reactor().getDelayedCalls()
        if call not in before and call.active()
    ]
    assert leftover == []


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
