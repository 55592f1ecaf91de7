"""
An event stream in a Klein application.

A Klein route returns the :class:`~twisted_sse.EventStreamResource` itself
(not ``NOT_DONE_YET``, which Klein would finish at once): every method then
reaches the resource, which streams GET, answers HEAD and the CORS preflight,
and refuses the rest with 405.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime

from twisted_sse import Event, EventStream, EventStreamResource, counter


class Dashboard:
    """
    A small app: ``/ticks`` counts every second, ``/alerts`` carries the
    alerts raised with :meth:`alert`, ``/`` says hello.
    """

    app = Klein()

    def __init__(self, clock: IReactorTime) -> None:
        self.ticks = EventStreamResource(counter(interval=1.0), clock=clock, retry=1000)
        self.alerts = EventStreamResource(self._watch, clock=clock, retry=5000)
        self._watchers: set[EventStream] = set()

    def _watch(self, stream: EventStream) -> None:
        self._watchers.add(stream)
        stream.on_close(lambda: self._watchers.discard(stream))

    def alert(self, text: str) -> None:
        """Send ``text`` to every open ``/alerts`` stream."""
        event = Event(event="alert", data=text)
        for stream in list(self._watchers):
            stream.send(event)

    @app.route("/")
    def home(self, request: Any) -> str:
        return "Streams at /ticks and /alerts.\n"

    @app.route("/ticks", branch=False)
    def tick_stream(self, request: Any) -> EventStreamResource:
        return self.ticks

    @app.route("/alerts", branch=False)
    def alert_stream(self, request: Any) -> EventStreamResource:
        return self.alerts


def main(reactor: Any) -> Any:
    """Serve the dashboard on port 8080 until interrupted."""
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import serverFromString
    from twisted.web.server import Site

    dashboard = Dashboard(reactor)
    serverFromString(reactor, "tcp:8080").listen(Site(dashboard.app.resource()))
    return Deferred()


if __name__ == "__main__":
    from twisted.internet.task import react

    react(main)
