"""
A small event-stream server for the end-to-end tests, run as a subprocess::

    python tests/sse_server_fixture.py

It listens on a free port of 127.0.0.1 and prints that port number, alone on
a line, once it is ready; it runs until terminated.

Endpoints:

- ``/counter``: our own :class:`~twisted_sse.EventStreamResource`, counting
  every 50 ms, with ``retry: 100``.
- ``/no-content``: 204, the stop signal.
- ``/missing``: 404.
- ``/wrong-type``: 200 with ``text/plain``.
- ``/redirect``: 302 to ``/counter``.
- ``/redirect-home`` and ``/redirect-away``: 302 to ``/auth`` on the same
  origin, and on ``localhost`` (another origin, same server).
- ``/auth``: one event whose data is the ``Authorization`` header received
  (``-`` if none), then silence.
- ``/ends``: ``retry: 100``, three events with ids after the ``Last-Event-ID``
  received (data ``"<id> after <Last-Event-ID or ->"``), then the body ends.
- ``/once``: one event with id ``1``, then the body ends; a request with a
  ``Last-Event-ID`` gets 204.
- ``/silent``: an open stream that never sends a byte.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from twisted_sse import EventStreamResource, counter

SSE = b"text/event-stream; charset=utf-8"


class Status(Resource):
    """Answer a fixed status, type and body."""

    isLeaf = True

    def __init__(self, code: int, content_type: bytes, body: bytes = b"") -> None:
        super().__init__()
        self.code = code
        self.content_type = content_type
        self.body = body

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"Content-Type", self.content_type)
        return self.body


class Redirect(Resource):
    """Redirect to a fixed URL, or a path on another host of this server."""

    isLeaf = True

    def __init__(self, path: bytes, host: bytes | None = None) -> None:
        super().__init__()
        self.path = path
        self.host = host

    def render_GET(self, request: Any) -> bytes:
        if self.host is None:
            location = self.path
        else:
            port = request.getHost().port
            location = b"http://%s:%d%s" % (self.host, port, self.path)
        request.redirect(location)
        return b""


def _last_event_id(request: Any) -> int | None:
    raw = request.getHeader(b"last-event-id")
    if raw is None:
        return None
    return int(raw) if raw.isdigit() else 0


class Ends(Resource):
    """Three events after the Last-Event-ID received, then the body ends."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", SSE)
        last = _last_event_id(request)
        start = last or 0
        after = "-" if last is None else str(last)
        frames = ["retry: 100\n\n"]
        for n in range(start + 1, start + 4):
            frames.append(f"id: {n}\ndata: {n} after {after}\n\n")
        return "".join(frames).encode()


class Once(Resource):
    """One event, then the end; 204 to a client that comes back."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        if _last_event_id(request) is not None:
            request.setResponseCode(204)
            return b""
        request.setHeader(b"Content-Type", SSE)
        return b"retry: 100\n\nid: 1\ndata: only\n\n"


class Open(Resource):
    """An open stream: optionally one event, then silence."""

    isLeaf = True

    def __init__(self, echo_authorization: bool = False) -> None:
        super().__init__()
        self.echo_authorization = echo_authorization

    def render_GET(self, request: Any) -> int:
        request.setHeader(b"Content-Type", SSE)
        request.notifyFinish().addErrback(lambda failure: None)
        if self.echo_authorization:
            value = request.getHeader(b"authorization") or b"-"
            request.write(b"data: " + value + b"\n\n")
        else:
            request.write(b"")
        return NOT_DONE_YET


def root(clock: IReactorTime) -> Resource:
    """The resource tree described in the module docstring."""
    tree = Resource()
    children: dict[bytes, Resource] = {
        b"counter": EventStreamResource(counter(0.05), clock=clock, retry=100),
        b"no-content": Status(204, b"text/plain"),
        b"missing": Status(404, b"text/plain", b"not here\n"),
        b"wrong-type": Status(200, b"text/plain", b"data: x\n\n"),
        b"redirect": Redirect(b"/counter"),
        b"redirect-home": Redirect(b"/auth"),
        b"redirect-away": Redirect(b"/auth", host=b"localhost"),
        b"auth": Open(echo_authorization=True),
        b"ends": Ends(),
        b"once": Once(),
        b"silent": Open(),
    }
    for name, child in children.items():
        tree.putChild(name, child)
    return tree


async def serve(reactor: Any) -> None:
    """Listen on a free port of 127.0.0.1, print it, serve forever."""
    tcp: IReactorTCP = reactor
    port = await TCP4ServerEndpoint(tcp, 0, interface="127.0.0.1").listen(
        Site(root(reactor))
    )
    sys.stdout.write(f"{port.getHost().port}\n")
    sys.stdout.flush()
    forever: Deferred[None] = Deferred()
    await forever


if __name__ == "__main__":
    from twisted.internet.task import react

    react(serve)
