"""
The Klein application that ``twistd sse`` serves: the seed example's page at
``/`` and its counter stream at ``/events``.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource

from ._stream import DEFAULT_HEARTBEAT, EventStreamResource, Heartbeat, counter

__all__ = ["SSEApp"]


def _page() -> bytes:
    return files("twisted_sse").joinpath("static/index.html").read_bytes()


class SSEApp:
    """
    The seed's service as a Klein app.

    ``GET /events`` streams ``retry: <retry>`` then ``data: 1``,
    ``data: 2``, ... every ``interval`` seconds, each connection counting
    from 1; ``GET /`` serves a page whose ``EventSource`` shows the messages.

    :param clock: The time source for the counter and the heartbeats.
    :param interval: Seconds between counter events.
    :param retry: The reconnection time sent first, in milliseconds.
    :param heartbeat: Seconds of silence before a heartbeat comment; ``0``
        disables.
    :param allow_origin: ``Access-Control-Allow-Origin`` for the streams, or
        ``None`` for none.
    """

    app = Klein()

    def __init__(
        self,
        clock: IReactorTime,
        interval: float = 1.0,
        retry: int = 1000,
        heartbeat: float = DEFAULT_HEARTBEAT,
        allow_origin: str | None = "*",
    ) -> None:
        self.clock = clock
        self.heartbeat = Heartbeat(clock, heartbeat)
        self.events = EventStreamResource(
            counter(interval),
            clock=clock,
            retry=retry,
            heartbeat_timer=self.heartbeat,
            allow_origin=allow_origin,
        )
        self._page = _page()

    @property
    def stream_resources(self) -> list[EventStreamResource]:
        """Every resource whose streams must be ended on shutdown."""
        return [self.events]

    def resource(self) -> IResource:
        """The app as a :class:`~twisted.web.resource.IResource`."""
        resource: IResource = self.app.resource()
        return resource

    @app.route("/", methods=["GET", "HEAD"])
    def index(self, request: Any) -> bytes:
        """The seed's page: an ``EventSource`` on ``events``."""
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return self._page

    @app.route("/events", branch=False)
    def stream(self, request: Any) -> IResource:
        """The counter stream (every method: the resource answers 405)."""
        return self.events
