"""
Event streams in a plain ``twisted.web`` site, run as a service.

The streams are children of an ordinary resource tree (``putChild``), next to
whatever the site already serves.  :class:`~twisted_sse.EventStreamService`
listens for the site and, when it stops, ends every open stream cleanly
before the port closes, so clients get a complete response and a ``retry:``
telling them when to come back.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from twisted_sse import (
    EventStreamResource,
    EventStreamService,
    StreamRegistry,
    counter,
)


def make_root(clock: IReactorTime, registry: StreamRegistry) -> Resource:
    """An existing site's tree, with a stream added at ``/live/counter``."""
    root = Resource()
    root.putChild(b"", Data(b"<p>Hello.</p>", "text/html; charset=utf-8"))
    live = Resource()
    root.putChild(b"live", live)
    live.putChild(
        b"counter",
        EventStreamResource(counter(1.0), clock=clock, retry=1000, registry=registry),
    )
    return root


def make_service(reactor: Any, port: str = "tcp:8080") -> MultiService:
    """
    The application's services: the site, listening on ``port``, drained
    over 5 seconds when the service stops.
    """
    registry = StreamRegistry(reactor, max_connections=10_000)
    site = Site(make_root(reactor, registry))
    server = EventStreamService(
        serverFromString(reactor, port), site, registry, reactor, drain=5.0
    )
    application = MultiService()
    server.setServiceParent(application)
    return application
