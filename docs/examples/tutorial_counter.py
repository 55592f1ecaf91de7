"""
The seed's counter, the Twisted way.

``GET /events`` is an event stream: ``retry: 1000``, then ``data: 1``,
``data: 2``, ... once a second, each connection counting from 1.  ``GET /``
is a page whose ``EventSource`` shows the numbers.

Run it with ``python tutorial_counter.py`` (next to ``counter.html``) and open
http://localhost:3000/.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater, react
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from twisted_sse import Event, EventStream, EventStreamResource

#: The page: its EventSource shows each number as a new line.
PAGE = Path(__file__).with_name("counter.html").read_bytes()


def count_up(stream: EventStream) -> None:
    """Send 1, 2, 3, ... to ``stream``, one number a second."""
    numbers = itertools.count(1)
    loop = LoopingCall(lambda: stream.send(Event(data=str(next(numbers)))))
    loop.clock = stream.clock
    loop.start(1.0, now=False)
    stream.on_close(loop.stop)


async def count_on(stream: EventStream) -> AsyncIterator[Event]:
    """Count up once a second, on from the last number the client saw."""
    seen = stream.last_event_id  # None on a first connection
    number = int(seen) if seen is not None and seen.isdecimal() else 0
    while True:
        await deferLater(stream.clock, 1.0)
        number += 1
        yield Event(id=str(number), data=str(number))


def make_root(clock: IReactorTime) -> Resource:
    """The site's root: the page at ``/``, the stream at ``/events``."""
    root = Resource()
    root.putChild(b"", Data(PAGE, "text/html; charset=utf-8"))
    root.putChild(b"events", EventStreamResource(count_up, clock=clock, retry=1000))
    return root


def main(reactor: IReactorTime) -> Deferred[None]:
    """Serve the site on port 3000 until the process is interrupted."""
    endpoint = serverFromString(reactor, "tcp:3000")
    endpoint.listen(Site(make_root(reactor)))
    return Deferred()  # never fires: run until Ctrl-C


if __name__ == "__main__":
    react(main)
