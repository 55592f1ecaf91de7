"""
Slow-client policies: what a stream does when its client stops reading and
the stream's queue is full.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from twisted_sse import (
    Event,
    EventStream,
    EventStreamResource,
    Hub,
    MemoryBroker,
    SlowClientPolicy,
)


def make_hub(clock: IReactorTime) -> Hub:
    """
    Every channel disconnects a client that falls 100 events behind (it
    reconnects and resumes from history); the ``prices`` channel instead
    keeps only the newest queued price per symbol.
    """
    return Hub(
        MemoryBroker(history=1000),
        clock=clock,
        max_queue_events=100,
        policy=SlowClientPolicy.DISCONNECT,
        channel_policies={"prices": SlowClientPolicy.LATEST},
    )


def publish_price(hub: Hub, symbol: str, price: float) -> Deferred[str]:
    """Publish a price, keyed by its symbol for the ``latest`` policy."""
    event = Event(event="price", data=json.dumps({"symbol": symbol, "price": price}))
    return hub.publish("prices", event, key=symbol)


class PriceFeed:
    """A price stream of your own, conflated per symbol for slow clients."""

    def __init__(self, clock: IReactorTime) -> None:
        self.resource = EventStreamResource(
            self._follow,
            clock=clock,
            policy=SlowClientPolicy.LATEST,
            max_queue_events=50,
        )
        self._streams: set[EventStream] = set()

    def _follow(self, stream: EventStream) -> None:
        self._streams.add(stream)
        stream.on_close(lambda: self._streams.discard(stream))

    def quote(self, symbol: str, price: float) -> None:
        """Send a price to every open stream, keyed by its symbol."""
        # Encoded once, whatever the number of streams.
        event = Event(
            event="price", data=json.dumps({"symbol": symbol, "price": price})
        )
        frame = event.encode()
        for stream in list(self._streams):
            stream.write(frame, key=symbol)
