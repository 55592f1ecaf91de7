"""
Run a test case over both kinds of connection the test client makes, so the
suite tests both of the stream's writers: ``request.write`` (the plain
writer, every transport) and the direct writer that production takes for
plain HTTP/1.x over TCP.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource

from twisted_sse.testing import SSETestClient

Case = TypeVar("Case", bound=type["TransportCase"])


def over_both_transports(case: Case) -> Case:
    """
    Run ``case``'s tests over the test client's ``"memory"`` transport, and,
    in a twin class named ``<case>OverTCP`` added to the same module, over
    ``"tcp"``.  The case makes its clients with ``transport=self.transport``.
    """
    name = case.__name__ + "OverTCP"
    twin = type(
        name,
        (case,),
        {
            "transport": "tcp",
            "__module__": case.__module__,
            "__qualname__": name,
            "__doc__": f"{case.__doc__} (over Twisted's TCP connection)",
        },
    )
    setattr(sys.modules[case.__module__], name, twin)
    return case


class TransportCase(SynchronousTestCase):
    """A test case whose test clients use its ``transport``."""

    #: The test client's transport; ``"tcp"`` in the twin class.
    transport = "memory"

    def client_for(
        self, resource: IResource, clock: Clock | None = None, **options: Any
    ) -> SSETestClient:
        """An :class:`SSETestClient` over this case's transport."""
        return SSETestClient(resource, clock, transport=self.transport, **options)
