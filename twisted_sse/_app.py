"""
The Klein application that ``twistd sse`` serves: the seed example's page at
``/``, its counter stream at ``/events``, and the hub's channels.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from importlib.resources import files
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from ._broker import IBroker
from ._errors import json_error, method_not_allowed, no_channel
from ._heartbeat import DEFAULT_HEARTBEAT, Heartbeat
from ._hub import Hub
from ._memory import MemoryBroker
from ._metrics import MetricsResource, SSECollector
from ._presence_http import PresenceResource
from ._registry import StreamRegistry
from ._resource import EventStreamResource, counter
from ._script import ClientScriptResource

__all__ = ["SSEApp"]

_log = Logger()

#: The methods ``/metrics`` answers.
_METRICS_METHODS = (b"GET", b"HEAD")


def _page() -> bytes:
    return files("twisted_sse").joinpath("static/index.html").read_bytes()


class SSEApp:
    """
    The service ``twistd sse`` runs, as a Klein app.

    ``GET /events`` streams ``retry: <retry>`` then ``data: 1``,
    ``data: 2``, ... every ``interval`` seconds, each connection counting
    from 1; ``GET /`` serves a page that shows the messages and a channel
    through the browser client, ``/sse.js`` (with ``/sse.d.ts``);
    ``/channels/{name}`` is the broadcast hub (GET subscribes, POST
    publishes).

    :param clock: The time source for the counter and the heartbeats.
    :param broker: The hub's broker; a :class:`MemoryBroker` if ``None``.
    :param interval: Seconds between counter events.
    :param retry: The reconnection time sent first, in milliseconds.
    :param heartbeat: Seconds of silence before a heartbeat comment; ``0``
        disables.
    :param allow_origin: Who may read the streams from another origin: ``"*"``,
        an origin or a sequence of them, or ``None`` for no CORS headers
        (see :class:`~twisted_sse.StreamResource`).
    :param registry: Open streams, for connection limits and the drain.
    :param metrics: Serve ``GET /metrics`` (Prometheus text format).
    :param metrics_token: If set, ``/metrics`` needs this bearer token.
    :param metrics_channels: Channels that get their own metric label.
    :param hub_options: Keyword arguments for :class:`Hub`; its
        ``max_queue_events``, ``max_queue_bytes``, ``policy`` and
        ``stream_log`` apply to the counter stream too.
    """

    app = Klein()

    def __init__(
        self,
        clock: IReactorTime,
        broker: IBroker | None = None,
        interval: float = 1.0,
        retry: int = 1000,
        heartbeat: float = DEFAULT_HEARTBEAT,
        allow_origin: str | Sequence[str] | None = "*",
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
        # The hub's queue bounds, default slow-client policy and stream log
        # apply to the counter's streams too.
        queue = {
            name: hub_options[name]
            for name in ("max_queue_events", "max_queue_bytes", "policy", "stream_log")
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
        #: The browser client, ``/sse.js``, and its declarations, ``/sse.d.ts``.
        self.client_script = ClientScriptResource("sse.js")
        self.client_types = ClientScriptResource("sse.d.ts")
        paths = [
            "/",
            "/events",
            "/healthz",
            "/metrics",
            "/subscribe",
            "/sse.js",
            "/sse.d.ts",
            "/channels/{name}",
            "/presence/{channel}",
        ]
        if not metrics:
            paths.remove("/metrics")
        self._not_found = (
            f"not found: this server answers {', '.join(paths[:-1])} and {paths[-1]}"
        )
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
        """
        The app as a :class:`~twisted.web.resource.IResource`.

        A channel's plain path (``/channels/news``: one segment of ASCII
        without percent-escapes) goes straight to the hub's resource; every
        other path goes through the Klein app, which answers it the same
        way.  A subscription is the request a hub serves most, and the app's
        routing was more than a third of its set-up time and 1.2 KB of
        memory per open stream (``bench/PROFILE.md``).
        """
        return _UTF8URLs(self.app.resource(), self.hub)

    @app.handle_errors(Exception)
    def error(self, request: Any, failure: Failure) -> bytes:
        """
        Every error of the routes in JSON: no route (404), a method a route
        does not answer (405), and an unexpected exception (500, logged).
        """
        error = failure.value
        if isinstance(error, NotFound):
            # Klein left the path as it came: what is below the app.
            if request.postpath[:1] == [b"channels"]:
                hub = [*request.prepath, b"channels"]
                return json_error(request, 404, no_channel(hub))
            if request.postpath[:1] == [b"presence"]:
                where = [*request.prepath, b"presence"]
                return json_error(request, 404, no_channel(where))
            return json_error(request, 404, self._not_found)
        if isinstance(error, MethodNotAllowed):
            methods = sorted(error.valid_methods or ())
            return method_not_allowed(request, [m.encode("ascii") for m in methods])
        if isinstance(error, HTTPException):
            if error.code is None or error.code < 400:
                failure.raiseException()  # a redirect: Klein answers it
            return json_error(request, error.code, error.description or error.name)
        if request.startedWriting:
            failure.raiseException()  # too late for an answer of its own
        _log.failure("Answering {path} failed", failure, path=request.path)
        return json_error(request, 500, "internal error")

    @app.route("/", methods=["GET", "HEAD"])
    def index(self, request: Any) -> bytes:
        """The demo page: the counter and a channel, through ``sse.js``."""
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return self._page

    @app.route("/events", branch=False)
    def stream(self, request: Any) -> IResource | bytes:
        """The counter stream (and a JSON 405 for the methods it does not answer)."""
        allowed = self.events.allowed_methods
        if request.method not in allowed:
            return method_not_allowed(request, allowed)
        return self.events

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: Any) -> bytes:
        """
        200 while the broker works, 503 while it does not (Redis down, no
        primary known with Sentinel, or slots of a cluster not covered).
        With Sentinel, ``redis`` tells the service, the primary the
        sentinels last named, whether each sentinel answered, and the
        failovers seen; on Redis Cluster, the slots covered, each primary
        with its slots and whether it is up, and the redirections followed.
        """
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        up = self.broker.available
        if not up:
            request.setResponseCode(503)
        topology = getattr(self.broker, "topology", None)
        state = topology() if callable(topology) else None
        if state is not None:
            body = {
                "status": "ok" if up else "unavailable",
                "broker": "up" if up else "down",
                "redis": state,
            }
            return json.dumps(body, separators=(",", ":")).encode("utf-8") + b"\n"
        if up:
            return b'{"status":"ok","broker":"up"}\n'
        return b'{"status":"unavailable","broker":"down"}\n'

    @app.route("/metrics", branch=False)
    def metrics_page(self, request: Any) -> IResource | bytes:
        """Prometheus metrics, unless turned off (404)."""
        if self.metrics is None:
            return json_error(request, 404, "metrics are turned off on this server")
        if request.method not in _METRICS_METHODS:
            return method_not_allowed(request, _METRICS_METHODS)
        return self.metrics

    @app.route("/subscribe", branch=False)
    def subscribe(self, request: Any) -> IResource | bytes:
        """Several channels and patterns on one stream (see the hub)."""
        resource = self.hub.subscribe_resource()
        allowed = (b"GET", b"HEAD", b"OPTIONS")
        if request.method not in allowed:
            return method_not_allowed(request, allowed)
        return resource

    @app.route("/sse.js", branch=False)
    def script(self, request: Any) -> IResource:
        """The browser client (a JSON 405 for methods but GET and HEAD)."""
        return self.client_script

    @app.route("/sse.d.ts", branch=False)
    def script_types(self, request: Any) -> IResource:
        """The browser client's TypeScript declarations."""
        return self.client_types

    @app.route("/channels/<string:name>", branch=False)
    def channel(self, request: Any, name: str) -> IResource:
        """A hub channel: GET subscribes, POST publishes."""
        return self.hub.channel_resource(name)

    @app.route("/presence/<string:name>", branch=False)
    def presence(self, request: Any, name: str) -> IResource:
        """Who is on a hub channel."""
        return PresenceResource(self.hub, name)


class _UTF8URLs(Resource):
    """
    The app's resource behind a check that its URL decodes: Klein answers
    one that is not UTF-8 (``/channels/%FF``) in plain text, and logs a
    traceback for it.
    """

    isLeaf = True

    def __init__(self, routes: IResource, hub: Hub | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.routes = routes
        self.hub = hub

    def render(self, request: Any) -> bytes | int:
        """A JSON 400 for a URL that is not UTF-8; the app's answer else."""
        path = request.postpath
        if len(path) == 2 and path[0] == b"channels" and self.hub is not None:
            name = path[1]
            if name and name.isascii() and b"%" not in name:
                return self._channel(request, name.decode("ascii"))
        try:
            b"/".join(request.prepath + request.postpath).decode("utf-8")
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return json_error(request, 400, "the URL is not UTF-8")
        result: bytes | int = self.routes.render(request)
        return result

    def _channel(self, request: Any, name: str) -> bytes | int:
        """
        What the app's ``/channels/<name>`` route answers, without its
        routing: the hub's resource for ``name``, and a JSON 500 (logged)
        for an unexpected exception, as the app's error handler gives.
        """
        assert self.hub is not None
        try:
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return json_error(request, 400, "the URL is not UTF-8")
        try:
            result: bytes | int = self.hub.channel_resource(name).render(request)
        except Exception:
            if request.startedWriting:
                raise  # too late for an answer of its own
            _log.failure("Answering {path} failed", path=request.path)
            return json_error(request, 500, "internal error")
        return result
