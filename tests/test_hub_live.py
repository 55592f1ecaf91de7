"""
Real-reactor, real-socket tests of the hub (pytest-twisted): publishing from
other threads with L{publish_from_thread}, and a client that stops reading
on a real TCP connection.

These run under pytest only (trial does not collect plain functions); the
socket-free tests in test_hub.py run under both.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.server import Site

from twisted_sse import Event
from twisted_sse._broker import publish_from_thread
from twisted_sse._hub import Hub
from twisted_sse._memory import MemoryBroker
from twisted_sse._stream import EventStream, SlowClientPolicy

from ._http import ReactorClient, connect, http_request

#: Seconds a client waits for what it expects.
WAIT = 20


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Server:
    """A hub served on 127.0.0.1 by the real reactor."""

    def __init__(self, hub: Hub, broker: MemoryBroker, port: Any) -> None:
        self.hub = hub
        self.broker = broker
        self.listening = port
        self.port: int = port.getHost().port

    async def connect(self, path: str) -> ReactorClient:
        client = await connect(
            self.port, http_request(path, "Accept: text/event-stream")
        )
        # The stream is open once its first frame has arrived.
        await client.wait_for(lambda c: c.body, WAIT)
        return client

    def streams(self) -> set[EventStream]:
        return self.hub.registry.streams


@asynccontextmanager
async def serving(**hub_options: Any) -> AsyncIterator[Server]:
    """Serve a hub for the duration, then check that nothing leaked."""
    reactor = _reactor()
    before = {call for call in reactor.getDelayedCalls() if call.active()}
    broker = MemoryBroker()
    hub = Hub(broker, clock=reactor, **hub_options)
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(Site(hub.resource()))
    server = Server(hub, broker, port)
    try:
        yield server
    finally:
        await port.stopListening()
        for _ in range(200):
            if not server.streams():
                break
            await deferLater(reactor, 0.01)
    assert server.streams() == set()
    assert not hub.heartbeat.running
    for channel in broker.channel_names():
        assert broker.subscriber_count(channel) == 0
    await deferLater(reactor, 0.05)
    leftover = [
        call
        for call in reactor.getDelayedCalls()
        if call.active() and call not in before
    ]
    assert leftover == []


@pytest_twisted.ensureDeferred
async def test_publish_from_thread() -> None:
    """Events published from another thread arrive in order with their ids."""
    reactor = _reactor()
    async with serving() as server:
        client = await server.connect("/news")

        def work() -> list[str]:
            return [
                publish_from_thread(reactor, server.broker, "news", Event(data=str(n)))
                for n in range(200)
            ]

        published = await deferToThread(work)
        await client.wait_for(lambda c: len(c.events) >= 200, WAIT)
        assert [event.data for event in client.events] == [str(n) for n in range(200)]
        assert [event.last_event_id for event in client.events] == published
        await client.close()


@pytest_twisted.ensureDeferred
async def test_many_threads() -> None:
    """Several threads publishing at once: unique increasing ids, none lost."""
    reactor = _reactor()
    async with serving() as server:
        client = await server.connect("/news")

        def work(thread: int) -> list[str]:
            return [
                publish_from_thread(
                    reactor, server.broker, "news", Event(data=f"{thread}:{n}")
                )
                for n in range(50)
            ]

        results = await DeferredList(
            [deferToThread(work, thread) for thread in range(4)],
            fireOnOneErrback=True,
            consumeErrors=True,
        )
        await client.wait_for(lambda c: len(c.events) >= 200, WAIT)
        got = [event.data for event in client.events]
        seqs = [int(event.last_event_id.split("-")[1]) for event in client.events]
        assert seqs == list(range(1, 201))
        for thread, (_, ids) in enumerate(results):
            mine = [data for data in got if data.startswith(f"{thread}:")]
            assert mine == [f"{thread}:{n}" for n in range(50)]
            by_id = {e.last_event_id: e.data for e in client.events}
            assert [by_id[i] for i in ids] == mine
        await client.close()


@pytest_twisted.ensureDeferred
async def test_thread_error() -> None:
    """A publish that fails raises its error in the publishing thread."""
    reactor = _reactor()
    broker = MemoryBroker()

    def work() -> str:
        return publish_from_thread(reactor, broker, "bad name", Event(data="x"))

    with pytest.raises(ValueError, match="invalid channel name"):
        await deferToThread(work)


@pytest_twisted.ensureDeferred
async def test_not_on_reactor_thread() -> None:
    """On the reactor thread, publish_from_thread refuses instead of deadlocking."""
    with pytest.raises(RuntimeError, match="reactor thread"):
        publish_from_thread(_reactor(), MemoryBroker(), "news", Event(data="x"))


@pytest_twisted.ensureDeferred
async def test_resume_over_tcp() -> None:
    """A client that reconnects with Last-Event-ID gets exactly what it missed."""
    async with serving() as server:
        first = await server.connect("/news")
        for n in range(3):
            await server.hub.publish("news", Event(data=str(n)))
        await first.wait_for(lambda c: len(c.events) == 3, WAIT)
        await first.close()
        for n in range(3, 6):
            await server.hub.publish("news", Event(data=str(n)))
        last_id = first.parser.last_event_id
        again = await server.connect(f"/news?lastEventId={last_id}")
        await server.hub.publish("news", Event(data="6"))
        await again.wait_for(lambda c: len(c.events) == 4, WAIT)
        assert [e.data for e in again.events] == ["3", "4", "5", "6"]
        await again.close()


@pytest_twisted.ensureDeferred
async def test_stalled_reader_cut_off() -> None:
    """
    A real client that never reads is cut off once its queue is full, while
    a reading client gets every event.
    """
    reactor = _reactor()
    async with serving(max_queue_events=50, max_queue_bytes=64 * 1024) as server:
        reader = await server.connect("/news")
        (fast,) = server.streams()
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.setblocking(False)
        try:
            stalled.connect_ex(("127.0.0.1", server.port))
            await deferLater(reactor, 0.05)
            stalled.send(b"GET /news HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(100):
                if len(server.streams()) == 2:
                    break
                await deferLater(reactor, 0.01)
            (slow,) = server.streams() - {fast}
            payload = "x" * 4000
            sent = 0
            while not slow.closed and sent < 5000:
                for _ in range(20):
                    await server.hub.publish("news", Event(data=payload))
                    sent += 1
                    # The stalled stream never holds more than its bounds.
                    assert slow.queued <= 50
                    assert slow.queued_bytes <= 64 * 1024
                await deferLater(reactor, 0)
            assert slow.closed
            assert slow.close_reason == "aborted"
            # The reader got everything, the stalled one's fate aside.
            await reader.wait_for(lambda c: len(c.events) == sent, WAIT)
            assert server.broker.subscriber_count("news") == 1
        finally:
            stalled.close()
        await reader.close()


@pytest_twisted.ensureDeferred
async def test_stalled_reader_drop_oldest() -> None:
    """Under drop-oldest, a real stalled reader keeps a bounded queue."""
    reactor = _reactor()
    async with serving(
        policy=SlowClientPolicy.DROP_OLDEST, max_queue_events=20
    ) as server:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.setblocking(False)
        try:
            stalled.connect_ex(("127.0.0.1", server.port))
            await deferLater(reactor, 0.05)
            stalled.send(b"GET /news HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(100):
                if server.streams():
                    break
                await deferLater(reactor, 0.01)
            (slow,) = server.streams()
            for _ in range(100):
                for _ in range(20):
                    await server.hub.publish("news", Event(data="y" * 4000))
                await deferLater(reactor, 0)
                assert slow.queued <= 20
            assert slow.paused
            assert not slow.closed
            assert slow.dropped > 0
        finally:
            stalled.close()
