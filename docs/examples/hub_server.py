"""
A broadcast hub in your own site: ``/channels/{name}`` subscribes (GET) and
publishes (POST), with ids and history from a broker.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from twisted_sse import Hub, IBroker, MemoryBroker


def make_hub(
    clock: IReactorTime,
    broker: IBroker | None = None,
    publish_token: str | None = None,
) -> Hub:
    """
    A hub on ``broker`` (by default, an in-memory broker that keeps the last
    1000 events of each channel for clients that resume).  ``POST`` needs
    ``Authorization: Bearer <publish_token>``; with ``None``, publishing
    over HTTP is off and only Python code can publish.
    """
    if broker is None:
        broker = MemoryBroker(history=1000)
    return Hub(broker, clock=clock, publish_token=publish_token, retry=1000)


def make_root(hub: Hub) -> Resource:
    """A site tree with the hub's channels under ``/channels/``."""
    root = Resource()
    root.putChild(b"channels", hub.resource())
    return root
