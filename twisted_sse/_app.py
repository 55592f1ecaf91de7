"""
The Klein application that ``twistd sse`` serves: the seed example's page at
``/``, its counter stream at ``/events``, and the hub's channels.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.pages import notFound
from twisted.web.resource import IResource

from ._broker import IBroker
from ._heartbeat import DEFAULT_HEARTBEAT, Heartbeat
from ._hub import Hub
from ._memory import MemoryBroker
from ._metrics import MetricsResource, SSECollector
from ._registry import StreamRegistry
from ._resource import EventStreamResource, counter

__all__ = ["SSEApp"]


def _page() -> bytes:
    return files("twisted_sse").joinpath("static/index.html").read_bytes()


class SSEApp:
    """
    The service ``twistd sse`` runs, as a Klein app.

    ``GET /events`` streams ``retry: <retry>`` then ``data: 1``,
    ``data: 2``, ... every ``interval`` seconds, each connection counting
    from 1; ``GET /`` serves a page whose ``EventSource`` shows the messages;
    ``/channels/{name}`` is the broadcast hub (GET subscribes, POST
    publishes).

    :param clock: The time source for the counter and the heartbeats.
    :param broker: The hub's broker; a :class:`MemoryBroker` if ``None``.
    :param interval: Seconds between counter events.
    :param retry: The reconnection time sent first, in milliseconds.
    :param heartbeat: Seconds of silence before a heartbeat comment; ``0``
        disables.
    :param allow_origin: ``Access-Control-Allow-Origin`` for the streams, or
        ``None`` for none.
    :param registry: Open streams, for connection limits and the drain.
    :param metrics: Serve ``GET /metrics`` (Prometheus text format).
    :param metrics_token: If set, ``/metrics`` needs this bearer token.
    :param metrics_channels: Channels that get their own metric label.
    :param hub_options: Keyword arguments for :class:`Hub`; its
        ``max_queue_events``, ``max_queue_bytes`` and ``policy`` apply to the
        counter stream too.
    """

    app = Klein()

    def __init__(
        self,
        clock: IReactorTime,
        broker: IBroker | None = None,
        interval: float = 1.0,
        retry: int = 1000,
        heartbeat: float = DEFAULT_HEARTBEAT,
        allow_origin: str | None = "*",
        registry: StreamRegistry | None = None,
        metrics: bool = True,
        metrics_token: str | None = None,
        metrics_channels: Iterable[str] = (),
        **hub_options: Any,
    ) -> None:
        self.clock = clock
        self.heartbeat = Heartbeat(clock, heartbeat)
        self.registry = registry if registry is not None else StreamRegistry(clock)
        self.broker = broker if broker is not None else MemoryBroker()
        # The hub's queue bounds and default slow-client policy apply to the
        # counter's streams too.
        queue = {
            name: hub_options[name]
            for name in ("max_queue_events", "max_queue_bytes", "policy")
            if name in hub_options
        }
        self.events = EventStreamResource(
            counter(interval),
            clock=clock,
            retry=retry,
            heartbeat_timer=self.heartbeat,
            allow_origin=allow_origin,
            registry=self.registry,
            **queue,
        )
        self.hub = Hub(
            self.broker,
            clock=clock,
            registry=self.registry,
            heartbeat_timer=self.heartbeat,
            retry=retry,
            allow_origin=allow_origin,
            **hub_options,
        )
        self._page = _page()
        #: What ``/metrics`` reports (``None`` when it is turned off).
        self.collector: SSECollector | None = (
            SSECollector(self.registry, self.hub, self.broker, metrics_channels)
            if metrics
            else None
        )
        self.metrics: MetricsResource | None = (
            MetricsResource(self.collector, token=metrics_token)
            if self.collector is not None
            else None
        )

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

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: Any) -> bytes:
        """200 while the broker works, 503 while it does not (Redis down)."""
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if self.broker.available:
            return b'{"status":"ok","broker":"up"}\n'
        request.setResponseCode(503)
        return b'{"status":"unavailable","broker":"down"}\n'

    @app.route("/metrics", branch=False)
    def metrics_page(self, request: Any) -> IResource:
        """Prometheus metrics, unless turned off (404)."""
        if self.metrics is None:
            return notFound("Not Found", "Metrics are turned off on this server.")
        return self.metrics

    @app.route("/channels/<string:name>", branch=False)
    def channel(self, request: Any, name: str) -> IResource:
        """A hub channel: GET subscribes, POST publishes."""
        return self.hub.channel_resource(name)
