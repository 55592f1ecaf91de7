"""
The application's hook over real sockets (pytest-twisted): a twisted.web
application on 127.0.0.1 asked by treq's real client, a closed port, an
application that never answers, and the default client's cookie jar and
connection pool.

These run under pytest only (trial does not collect plain functions); the
in-memory tests in test_authhook.py run under both.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from twisted_sse._auth import Access, Grant, Refused
from twisted_sse._authhook import HTTPAuthHook

from .test_authhook import Incoming, asking


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class LiveApplication(Resource):
    """
    The application's auth endpoint on a real port: records each POST's
    headers and body, answers ``body`` (setting ``set_cookie`` when given),
    or holds every request when ``hold`` is set.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple[Request, dict[str, Any]]] = []
        self.body = b""
        self.hold = False
        self.set_cookie: bytes | None = None
        self.ended: list[object] = []
        #: The client port of each POST: one port, one connection.
        self.ports: list[int] = []

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        self.got.append((request, json.loads(request.content.read())))
        self.ports.append(request.getClientAddress().port)
        request.notifyFinish().addBoth(self.ended.append)
        if self.hold:
            return NOT_DONE_YET
        if self.set_cookie is not None:
            request.setHeader(b"Set-Cookie", self.set_cookie)
        return self.body

    def header(self, index: int, name: str) -> str | None:
        values = self.got[index][0].requestHeaders.getRawHeaders(name)
        return None if values is None else values[-1]


@implementer(ILogObserver)
class Reasons:
    """The reasons the hook logs while installed."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == "twisted_sse._authhook":
            self.reasons.append(event["reason"])


async def until(condition: Callable[[], object], seconds: float = 10.0) -> None:
    """Wait, a reactor turn at a time, until ``condition()`` holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await deferLater(_reactor(), 0.01)


def _pending(before: set[Any]) -> list[Any]:
    return [
        call
        for call in _reactor().getDelayedCalls()
        if call.active() and call not in before
    ]


@asynccontextmanager
async def serving(app: LiveApplication) -> AsyncIterator[str]:
    """
    Serve ``app`` on 127.0.0.1 for the duration and yield its URL; then
    close the port and check that no connection or timer is left.
    """
    reactor = _reactor()
    before = {call for call in reactor.getDelayedCalls() if call.active()}
    site = Site(app)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    try:
        yield f"http://127.0.0.1:{port.getHost().port}/auth"
    finally:
        await port.stopListening()
    # Every request the application took has ended (answered, or dropped
    # by the hook), and no connection's timeout is left behind.
    await until(lambda: len(app.ended) == len(app.got))
    await until(lambda: not _pending(before))


def _client() -> HTTPClient:
    """treq's client over a real agent that keeps no connection open."""
    pool = HTTPConnectionPool(_reactor(), persistent=False)
    return HTTPClient(Agent(_reactor(), pool=pool))


def _logged() -> Reasons:
    reasons = Reasons()
    globalLogPublisher.addObserver(reasons)
    return reasons


@pytest_twisted.ensureDeferred
async def test_grant_over_http() -> None:
    """A real POST carries the ask and its cookie; a JSON 200 grants."""
    app = LiveApplication()
    app.body = json.dumps({"sub": "ada", "channels": ["news.*"]}).encode()
    async with serving(app) as url:
        hook = HTTPAuthHook(url, clock=_reactor(), client=_client())
        request = Incoming(headers={b"Cookie": b"sid=abc"})
        decision = Access(hook=hook).decide(request, "subscribe", ["news.eu"])
        assert isinstance(decision, Deferred)
        grant = await decision
    assert grant == Grant(identity="ada", subscribe=("news.*",))
    ((_, body),) = app.got
    assert body == {
        "action": "subscribe",
        "method": "GET",
        "path": "/subscribe",
        "channels": ["news.eu"],
    }
    assert app.header(0, "Cookie") == "sid=abc"
    assert app.header(0, "X-Forwarded-For") == "203.0.113.9"


@pytest_twisted.ensureDeferred
async def test_connection_refused() -> None:
    """Nothing listening at the URL: 503, logged as a refused connection."""
    app = LiveApplication()
    async with serving(app) as url:
        pass
    reasons = _logged()
    try:
        hook = HTTPAuthHook(url, clock=_reactor(), client=_client())
        try:
            await hook(asking())
        except Refused as refused:
            assert (refused.code, refused.retry) == (503, hook.retry)
        else:
            raise AssertionError("a closed port granted")
    finally:
        globalLogPublisher.removeObserver(reasons)
    assert reasons.reasons == ["ConnectionRefusedError"]
    assert app.got == []


@pytest_twisted.ensureDeferred
async def test_never_answers() -> None:
    """An application that never answers: 503 at the timeout, POST dropped."""
    app = LiveApplication()
    app.hold = True
    reasons = _logged()
    try:
        async with serving(app) as url:
            hook = HTTPAuthHook(url, clock=_reactor(), client=_client(), timeout=0.3)
            try:
                await hook(asking())
            except Refused as refused:
                assert refused.code == 503
            else:
                raise AssertionError("a silent application granted")
            # The hook hung up: the held request ends without an answer.
            await until(lambda: len(app.ended) == 1)
    finally:
        globalLogPublisher.removeObserver(reasons)
    assert reasons.reasons == ["timed out"]
    assert len(app.got) == 1


@pytest_twisted.ensureDeferred
async def test_default_client_keeps_no_cookie() -> None:
    """
    The default client reuses its connection, never sends one client's
    cookie from the application with another's ask, and closes its pool.
    """
    app = LiveApplication()
    app.set_cookie = b"app=for-the-first-client"
    async with serving(app) as url:
        hook = HTTPAuthHook(url, clock=_reactor())
        try:
            first = Incoming(headers={b"Cookie": b"sid=first"})
            await hook(asking(first, channels=("a",)))
            await hook(asking(Incoming(), channels=("b",)))
        finally:
            await hook.close()
    assert len(app.got) == 2
    assert app.ports[0] == app.ports[1]
    assert app.header(0, "Cookie") == "sid=first"
    assert app.header(1, "Cookie") is None
