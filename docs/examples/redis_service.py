"""
The hub on a Redis broker, as a service of your own program: any number of
these processes share channels, ids and history.

Run it with the broker URL and the publishing token in the environment::

    TWISTED_SSE_BROKER=redis://127.0.0.1:6379/0 TWISTED_SSE_PUBLISH_TOKEN=s3cret \
        python redis_service.py tcp:8080
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import Site

from twisted_sse import (
    EventStreamService,
    Hub,
    RedisBroker,
    StreamRegistry,
    parse_redis_url,
)


def make_service(
    reactor: Any, redis_url: str, publish_token: str, port: str = "tcp:8080"
) -> MultiService:
    """
    The broker's connections and the listening site, in one service tree.
    Start it (or hand it to twistd) and the broker connects in the
    background; stop it and the open streams are drained before the port
    closes.
    """
    broker = RedisBroker(reactor, parse_redis_url(redis_url), history=1000)
    registry = StreamRegistry(reactor)
    hub = Hub(broker, clock=reactor, registry=registry, publish_token=publish_token)
    root = Resource()
    root.putChild(b"channels", hub.resource())

    service = MultiService()
    broker.setServiceParent(service)
    site = Site(root)
    EventStreamService(
        serverFromString(reactor, port), site, registry, reactor, drain=5.0
    ).setServiceParent(service)
    return service


def main(reactor: Any, port: str = "tcp:8080") -> Deferred[None]:
    """Run the service until the process is interrupted, then drain it."""
    service = make_service(
        reactor,
        os.environ.get("TWISTED_SSE_BROKER", "redis://127.0.0.1:6379/0"),
        os.environ["TWISTED_SSE_PUBLISH_TOKEN"],
        port,
    )
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    return Deferred()  # never fires: run until Ctrl-C or SIGTERM


if __name__ == "__main__":
    from twisted.internet.task import react

    react(main, sys.argv[1:])
