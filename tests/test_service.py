"""
Tests for L{twisted_sse._service}: C{EventStreamService} listens, and on
stop drains the streams before the port closes.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from tests._transports import over_both_transports
from twisted_sse import EventStreamService, _registry

from ._helpers import OpenStreamsCase


@implementer(IListeningPort)
class _Port:
    """A listening port that records when it stops."""

    def __init__(self) -> None:
        self.stopped_at: float | None = None
        self.clock: Clock | None = None

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred[None]:
        assert self.clock is not None
        self.stopped_at = self.clock.seconds()
        return succeed(None)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 3000)


@implementer(IStreamServerEndpoint)
class _Endpoint:
    """An endpoint that listens on a _Port."""

    def __init__(self, port: _Port) -> None:
        self.port = port
        self.listens = 0

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        self.listens += 1
        return succeed(self.port)


@over_both_transports
class ServiceTests(OpenStreamsCase):
    """The service's stop waits for the drain, then closes the port."""

    def test_service(self) -> None:
        """stopService drains the streams, then closes the port, then fires."""
        self.patch(_registry, "DRAIN_RATE", 5.0)
        port = _Port()
        port.clock = self.hub.clock
        service = EventStreamService(
            _Endpoint(port),
            Site(Resource()),
            self.hub.registry,
            self.hub.clock,
            drain=3.0,
        )
        parent = MultiService()
        service.setServiceParent(parent)
        parent.privilegedStartService()
        parent.startService()
        stopped: list[float] = []
        parent.stopService().addCallback(
            lambda _: stopped.append(self.hub.clock.seconds())
        )
        self.step_until(lambda: bool(stopped), 10)
        self.assertEqual(len(self.ended), 20)
        assert port.stopped_at is not None
        self.assertGreaterEqual(port.stopped_at, max(self.ended))
        self.assertLessEqual(max(self.ended), 3.0)
        self.assertEqual(stopped, [port.stopped_at])

    def test_listen_once(self) -> None:
        """listen() opens the port once, however often it is called."""
        port = _Port()
        port.clock = self.hub.clock
        endpoint = _Endpoint(port)
        service = EventStreamService(
            endpoint, Site(Resource()), self.hub.registry, self.hub.clock
        )
        listened: list[IListeningPort] = []
        service.listen().addCallback(listened.append)
        service.listen().addCallback(listened.append)
        self.assertEqual(listened, [port, port])
        self.assertEqual(endpoint.listens, 1)
        self.assertIs(service.port, port)
        self.hub.client.disconnect_all()

    def test_start_alone_listens(self) -> None:
        """startService() alone listens, once, as in a program without twistd."""
        port = _Port()
        port.clock = self.hub.clock
        endpoint = _Endpoint(port)
        service = EventStreamService(
            endpoint, Site(Resource()), self.hub.registry, self.hub.clock
        )
        parent = MultiService()
        service.setServiceParent(parent)
        parent.startService()
        self.assertIs(service.port, port)
        service.privilegedStartService()
        self.assertEqual(endpoint.listens, 1)
        self.hub.client.disconnect_all()

    def test_negative_drain(self) -> None:
        """A negative drain window is a ValueError naming it."""
        error = self.assertRaises(
            ValueError,
            EventStreamService,
            _Endpoint(_Port()),
            Site(Resource()),
            self.hub.registry,
            self.hub.clock,
            drain=-1,
        )
        self.assertIn("drain", str(error))
        self.hub.client.disconnect_all()
