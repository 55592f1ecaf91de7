"""
Test your Server-Sent Events endpoints without a network.

In the spirit of :mod:`treq.testing`: :class:`SSETestClient` serves any
:class:`~twisted.web.resource.IResource` (an :class:`EventStreamResource
<twisted_sse.EventStreamResource>`, a tree built with ``putChild``, or a Klein
app's ``app.resource()``) through a real :class:`twisted.web.server.Site`, over
an in-memory transport.  The request goes through Twisted's own HTTP parsing,
resource traversal, chunked encoding and disconnect handling; only the socket
is fake.  Every byte the server writes reaches the client at once, so events
arrive whether you move time with :meth:`SSETestClient.advance` or with
``clock.advance`` directly.  The client speaks HTTP/1.1 (or 1.0), one
connection per request; HTTP/2 is not simulated.

Inject one :class:`~twisted.internet.task.Clock` into both the resource
(``EventStreamResource(..., clock=clock)``) and the client: the client uses it
to step time and to check that no timer outlived the test.  The helpers are
synchronous and need no reactor, so they work in a
:class:`~twisted.trial.unittest.SynchronousTestCase` under ``trial`` and
``pytest`` alike.

A complete example that you can copy lives in ``tests/test_example_usage.py``;
in short::

    from twisted.internet.task import Clock
    from twisted.trial.unittest import SynchronousTestCase

    from twisted_sse import EventStreamResource, counter
    from twisted_sse.testing import SSETestClient


    class CounterTests(SynchronousTestCase):
        def test_counts(self) -> None:
            \"\"\"The stream sends 1, 2, 3, one per second.\"\"\"
            clock = Clock()
            resource = EventStreamResource(counter(1), clock=clock)
            client = SSETestClient(resource, clock=clock)

            response = client.get("/")
            self.assertEqual(response.code, 200)
            client.advance(3)
            self.assertEqual([e.data for e in response.events], ["1", "2", "3"])

            response.disconnect()
            client.assert_clean(testcase=self)
"""

from __future__ import annotations

from ._event import MessageEvent
from ._parser import EventParser
from ._testing._client import KleinApp, SSETestClient
from ._testing._leaks import Checkable, SubscriptionCounter, assert_no_leaks
from ._testing._response import SSETestResponse

__all__ = [
    "Checkable",
    "KleinApp",
    "SSETestClient",
    "SSETestResponse",
    "SubscriptionCounter",
    "assert_no_leaks",
    "parse_events",
]


def parse_events(data: bytes, last_event_id: str = "") -> list[MessageEvent]:
    """
    Parse a complete ``text/event-stream`` body.

    An unfinished last block (no blank line after it) is discarded, as a
    browser does when the stream ends.

    :param data: The body.
    :param last_event_id: The last event id to start from.
    :returns: The events the body dispatches, in order.
    """
    parser = EventParser(last_event_id=last_event_id)
    events = parser.feed(data)
    parser.end()
    return events
