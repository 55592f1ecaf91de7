"""
``twistd sse``: command-line options and the service they make.
"""

from __future__ import annotations

import os
import re
import sys
from io import BytesIO
from typing import Any, NoReturn

from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.server import Request, Site

from ._app import SSEApp
from ._broker import DEFAULT_CHANNEL_TTL, DEFAULT_HISTORY, IBroker, valid_channel
from ._errors import error_body
from ._guard import (
    DEFAULT_BACKLOG,
    DEFAULT_FD_RESERVE,
    DEFAULT_HEADER_TIMEOUT,
    ConnectionGuard,
    check_backlog,
    raise_fd_limit,
)
from ._heartbeat import DEFAULT_HEARTBEAT
from ._hub import (
    DEFAULT_MAX_EVENT_BYTES,
    WWW_AUTHENTICATE,
    Hub,
    bearer_token_authorizer,
)
from ._logs import access_log_formatter
from ._memory import DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_TOTAL, MemoryBroker
from ._redis._address import parse_redis_url
from ._redis._broker import RedisBroker
from ._registry import StreamRegistry
from ._service import EventStreamService
from ._stream import (
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_EVENTS,
    SlowClientPolicy,
)
from ._version import version_text

__all__ = ["Options", "makeService"]

_log = Logger()

#: The Site idle timeout.  Twisted's default of 60 s is suspended over HTTP/1.1
#: while a request is open, but not over HTTP/2 (twisted#9532), where it cuts
#: a connection that has been silent for that long (with Twisted 26.10, data
#: the server sends counts as activity: heartbeats keep a stream alive if
#: they are more frequent; --heartbeat 0 streams are cut).  An hour keeps
#: quiet streams alive and still reaps idle connections.
DEFAULT_TIMEOUT = 3600.0


def _number(name: str, kind: type[float], positive: bool) -> Any:
    """
    A coercer for ``--name``: a finite float, or an integer in plain digits
    (``kind=int``), above zero (``positive``) or at least zero; anything else
    is a usage error naming the option.
    """
    noun = "integer" if kind is int else "number"
    wanted = f"a positive {noun}" if positive else f"0 or a positive {noun}"
    pattern = r"[0-9]+" if kind is int else r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"

    def coerce(value: str) -> float:
        if not re.fullmatch(pattern, value.strip()):
            raise ValueError(f"--{name} must be {wanted}, not {value!r}")
        number = kind(value)
        if number < 0 or (positive and number == 0):
            raise ValueError(f"--{name} must be {wanted}, not {value!r}")
        return number

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def _positive_float(name: str) -> Any:
    return _number(name, float, positive=True)


def _non_negative_float(name: str) -> Any:
    return _number(name, float, positive=False)


def _non_negative_int(name: str) -> Any:
    return _number(name, int, positive=False)


def _positive_int(name: str) -> Any:
    return _number(name, int, positive=True)


def endpoint_description(port: str) -> str:
    """
    Turn ``--port`` into an endpoint description: a bare port number means
    TCP on all interfaces (``serverFromString`` refuses bare numbers), with
    a listen backlog of :data:`~twisted_sse._guard.DEFAULT_BACKLOG` rather
    than Twisted's 50, for the reconnect burst after a restart.  A
    description is kept as it is, with its own backlog or Twisted's.
    """
    port = port.strip()
    if port.isdigit():
        return f"tcp:{port}:backlog={DEFAULT_BACKLOG}"
    return port


#: Endpoint types whose listening port hands connections straight to the
#: site, which may then refuse one by answering ``None`` to
#: ``buildProtocol`` (Twisted's TLS wrapper cannot take that).
_UNWRAPPED_ENDPOINTS = frozenset({"tcp", "tcp6", "unix", "systemd"})


class Options(usage.Options):
    """Options of ``twistd sse``."""

    synopsis = "[options]"
    longdesc = (
        "Serve Server-Sent Events: GET /events streams a counter "
        "(retry, then data: 1, 2, ... every --interval seconds), GET / "
        "shows it in a page, and /channels/{name} is a broadcast hub: GET "
        "subscribes (resuming after Last-Event-ID), POST publishes."
    )

    optParameters = [
        [
            "port",
            "p",
            "3000",
            "Where to listen: a port number or a Twisted endpoint description "
            "(tcp:3000:interface=127.0.0.1, ssl:8443:privateKey=key.pem, "
            "unix:/run/sse.sock).",
        ],
        [
            "interval",
            None,
            1.0,
            "Seconds between counter events.",
            _positive_float("interval"),
        ],
        [
            "retry",
            None,
            1000,
            "Reconnection time sent to clients, in milliseconds.",
            _non_negative_int("retry"),
        ],
        [
            "heartbeat",
            None,
            DEFAULT_HEARTBEAT,
            "Seconds of silence before a heartbeat comment (0 disables).",
            _non_negative_float("heartbeat"),
        ],
        [
            "allow-origin",
            None,
            "*",
            "Access-Control-Allow-Origin for the streams ('' sends none).",
        ],
        [
            "timeout",
            None,
            DEFAULT_TIMEOUT,
            "Idle timeout of client connections in seconds (0 disables). "
            "Over HTTP/2 it cuts streams whose client sends nothing for that "
            "long.",
            _non_negative_float("timeout"),
        ],
        [
            "header-timeout",
            None,
            DEFAULT_HEADER_TIMEOUT,
            "Seconds a connection has to send a complete request head, from "
            "its start or from the end of its previous response (0 "
            "disables). Clients that began one get 408, the others are just "
            "closed. Open streams and request bodies are not affected.",
            _non_negative_float("header-timeout"),
        ],
        [
            "fd-reserve",
            None,
            DEFAULT_FD_RESERVE,
            "File descriptors kept free: when fewer are left, connections "
            "that have not sent a request head are closed, oldest first (0: "
            "only when accept fails for want of descriptors). The soft limit "
            "is raised to the hard one at start-up.",
            _non_negative_int("fd-reserve"),
        ],
        [
            "publish-token",
            None,
            None,
            "Bearer token that POST /channels/{name} must present; without "
            "it, publishing over HTTP is off. Also read from the "
            "TWISTED_SSE_PUBLISH_TOKEN environment variable, which keeps it "
            "out of the process list.",
        ],
        [
            "subscribe-token",
            None,
            None,
            "Bearer token that GET /channels/{name} must present (as an "
            "Authorization header, or as ?access_token= for a browser's "
            "EventSource); without it, anyone may subscribe. Also read from "
            "the TWISTED_SSE_SUBSCRIBE_TOKEN environment variable.",
        ],
        [
            "broker",
            None,
            None,
            "Where events get their ids and history: 'memory' (this process "
            "only) or redis://[[user]:password@]host:port/db (rediss:// for "
            "TLS) to share channels between processes. Also read from the "
            "TWISTED_SSE_BROKER environment variable, which keeps a password "
            "out of the process list. [default: memory]",
        ],
        [
            "history",
            None,
            DEFAULT_HISTORY,
            "Events kept per channel for clients resuming with Last-Event-ID "
            "(with Redis: the streams' MAXLEN ~).",
            _non_negative_int("history"),
        ],
        [
            "history-bytes",
            None,
            DEFAULT_HISTORY_BYTES,
            "Bytes of events kept per channel.",
            _non_negative_int("history-bytes"),
        ],
        [
            "history-total",
            None,
            DEFAULT_HISTORY_TOTAL,
            "Bytes of events kept over all channels (memory broker); past it "
            "the oldest events of the channels published least recently go "
            "first.",
            _non_negative_int("history-total"),
        ],
        [
            "channel-ttl",
            None,
            DEFAULT_CHANNEL_TTL,
            "Seconds after which a channel with no subscriber and no publish "
            "is forgotten, its history with it (0: never).",
            _non_negative_float("channel-ttl"),
        ],
        [
            "max-event-bytes",
            None,
            DEFAULT_MAX_EVENT_BYTES,
            "Largest publish body in bytes (413 beyond).",
            _positive_int("max-event-bytes"),
        ],
        [
            "queue-events",
            None,
            DEFAULT_MAX_QUEUE_EVENTS,
            "Events a client that does not read may have queued.",
            _positive_int("queue-events"),
        ],
        [
            "queue-bytes",
            None,
            DEFAULT_MAX_QUEUE_BYTES,
            "Bytes a client that does not read may have queued.",
            _positive_int("queue-bytes"),
        ],
        [
            "max-connections",
            None,
            0,
            "Open streams in all (0: no limit); clients over it are told to "
            "come back later with a jittered retry.",
            _non_negative_int("max-connections"),
        ],
        [
            "max-connections-per-ip",
            None,
            0,
            "Open streams per client address (0: no limit).",
            _non_negative_int("max-connections-per-ip"),
        ],
        [
            "busy-retry",
            None,
            5000,
            "Base retry, in milliseconds, for clients sent away (over a "
            "connection limit, while draining, while the broker is down); "
            "each gets a random value between it and twice it.",
            _non_negative_int("busy-retry"),
        ],
        [
            "drain",
            None,
            5.0,
            "Seconds over which open streams are ended on shutdown, each with "
            "a jittered retry, so that clients do not reconnect all at once.",
            _non_negative_float("drain"),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["slow-client"] = SlowClientPolicy.DISCONNECT
        self["channel-policies"] = {}
        self["metrics-channels"] = []

    optFlags = [
        ["no-metrics", None, "Do not serve GET /metrics."],
    ]

    def opt_version(self) -> NoReturn:
        """Display twisted_sse's, Twisted's and Python's versions and exit."""
        print(version_text())
        sys.exit(0)

    def opt_metrics_token(self, value: str) -> None:
        """Bearer token GET /metrics must present (or TWISTED_SSE_METRICS_TOKEN)."""
        self["metrics-token"] = value

    def opt_metrics_channel(self, value: str) -> None:
        """A channel with its own label in /metrics (repeatable)."""
        if not valid_channel(value):
            raise usage.UsageError(f"--metrics-channel: invalid channel {value!r}")
        self["metrics-channels"].append(value)

    def opt_slow_client(self, value: str) -> None:
        """
        What to do when a client stops reading and its queue is full:
        disconnect (it resumes with Last-Event-ID), drop-oldest, or latest
        (keep the newest queued event per key). CHANNEL=POLICY sets one
        channel's; repeatable. [default: disconnect]
        """
        channel, equals, name = value.rpartition("=")
        policies = {policy.value: policy for policy in SlowClientPolicy}
        if name not in policies:
            raise usage.UsageError(
                f"--slow-client must be one of {', '.join(policies)}"
                f" (or CHANNEL=POLICY), not {value!r}"
            )
        if equals:
            if not valid_channel(channel):
                raise usage.UsageError(f"--slow-client: invalid channel {channel!r}")
            self["channel-policies"][channel] = policies[name]
        else:
            self["slow-client"] = policies[name]

    def postOptions(self) -> None:
        """Check what the coercers cannot: the endpoint and the origin."""
        origin = self["allow-origin"]
        if "\r" in origin or "\n" in origin:
            raise usage.UsageError("--allow-origin must be one line")
        self["endpoint"] = endpoint_description(self["port"])
        for name in ("publish-token", "subscribe-token"):
            variable = "TWISTED_SSE_" + name.replace("-", "_").upper()
            self[name] = self[name] or os.environ.get(variable) or None
        broker = self["broker"] or os.environ.get("TWISTED_SSE_BROKER") or "memory"
        self["redis"] = None
        if broker.strip().lower() not in ("memory", "memory://"):
            try:
                self["redis"] = parse_redis_url(broker)
            except ValueError as error:
                # The message never repeats the URL: it may hold a password.
                raise usage.UsageError(
                    "--broker must be memory or redis://[[user]:password@]host"
                    f"[:port][/db] (rediss:// for TLS): {error}"
                ) from None


class _CappedBody(BytesIO):
    """
    A request body kept up to ``cap`` bytes; the rest is read from the
    connection and dropped.
    """

    def __init__(self, cap: int) -> None:
        super().__init__()
        self._room = cap

    def write(self, data: Any, /) -> int:
        """Keep what fits; report all of ``data`` as written."""
        room = self._room
        if room > 0:
            kept = data[:room]
            self._room = room - len(kept)
            super().write(kept)
        return len(data)


#: Seconds a refused request's connection stays open reading (and
#: dropping) what the client had already sent: see _Request.
LINGER = 2.0


class _Request(Request):
    """
    A request of ``twistd sse``.  A request with a body can only be a
    publish (no other resource of the server takes one), so it is judged on
    its head, as soon as Twisted has parsed the headers (``gotLength``): a
    missing or wrong token (401), publishing turned off (403) or a declared
    length over ``--max-event-bytes`` (413) is answered at once, before
    ``100 Continue``, and the connection is closed.  Without that, anyone
    could make the server read, and pay for, an endless chunked body.

    The close lingers, as nginx's does: closing a socket with unread bytes
    makes the kernel reset the connection, and a reset can destroy the
    answer before the client reads it.  So what the client had already sent
    is read and dropped, up to ``--max-event-bytes`` and for :data:`LINGER`
    seconds at most; a client that honours ``Expect: 100-continue`` sends
    nothing and gets its answer, one that keeps sending past the bound is
    cut off.
    """

    refused = False
    _dropped = 0
    _linger: IDelayedCall | None = None

    def gotLength(self, length: int | None) -> None:
        """Refuse an unwelcome body before reading it, else make room for it."""
        # HTTP/1.x only: an HTTP/2 stream's body is paced by flow control,
        # and capped as it arrives (_Site.getContentFile).
        channel = self.channel
        site = (
            getattr(channel, "site", None) if isinstance(channel, HTTPChannel) else None
        )
        if isinstance(site, _Site) and site.hub is not None and _has_body(self, length):
            refused = site.hub.publish_refusal(self, length)
            if refused is not None:
                self._refuse(site, *refused)
                return
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def _refuse(self, site: _Site, code: int, message: str) -> None:
        self.refused = True
        self._room = site.max_body
        # Nothing of the body is kept, and no "100 Continue" invites the
        # client to send it.
        self.content = _CappedBody(0)
        self.requestHeaders.removeHeader(b"Expect")
        body = error_body(message)
        head = [
            b"HTTP/1.1 %d %s" % (code, RESPONSES.get(code, b"Error")),
            b"Content-Type: application/json",
            b"Cache-Control: no-store",
            b"Content-Length: %d" % len(body),
            b"Connection: close",
        ]
        if code == 401:
            head.append(b"WWW-Authenticate: " + WWW_AUTHENTICATE)
        transport: Any = self.channel.transport
        transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self._linger = site.reactor.callLater(LINGER, self._close)
        _log.info(
            "Refused a request body from {peer} on its head: {code} {reason}",
            peer=_peer(transport),
            code=code,
            reason=message,
        )

    def handleContentChunk(self, data: bytes) -> None:
        """Drop a refused body, up to the bound; keep anything else."""
        if not self.refused:
            super().handleContentChunk(data)  # type: ignore[no-untyped-call]
            return
        self._dropped += len(data)
        if self._dropped > self._room:
            self._close()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """A refused request was answered already: close once its body is in."""
        if self.refused:
            self._close()
        else:
            super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Any) -> None:
        """The connection went away: no lingering left to end."""
        self._stop_lingering()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def _close(self) -> None:
        self._stop_lingering()
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.loseConnection()

    def _stop_lingering(self) -> None:
        linger, self._linger = self._linger, None
        if linger is not None and linger.active():
            linger.cancel()


def _has_body(request: Request, length: int | None) -> bool:
    if length is not None:
        return length > 0
    return request.requestHeaders.hasHeader(b"Transfer-Encoding")


def _peer(transport: Any) -> str:
    try:
        return str(getattr(transport.getPeer(), "host", "?"))
    except Exception:
        return "?"


class _Site(Site):
    """
    The site of ``twistd sse``.  Twisted keeps a request's whole body before
    the resource sees it, in a temporary file beyond 100 KB, and anyone may
    send one: the token is checked only then.  Here a body is kept up to
    one byte more than the largest publish (``--max-event-bytes``), which
    is all the hub needs to answer ``413``; the rest is read and dropped.
    No other resource of the server takes a body.
    """

    def __init__(
        self,
        resource: Any,
        *,
        max_body: int,
        hub: Hub | None = None,
        guard: ConnectionGuard | None = None,
        **options: Any,
    ) -> None:
        super().__init__(resource, **options)  # type: ignore[no-untyped-call]
        self.max_body = max_body
        #: The hub whose publish rules judge a request body on its head.
        self.hub = hub
        self.requestFactory = _Request
        #: The request-head deadline and descriptor budget of the connections.
        self.guard = guard if guard is not None and guard.available else None

    def getContentFile(self, length: int | None) -> BytesIO:
        """A body for a new request (Twisted's ``Request.gotLength`` hook)."""
        return _CappedBody(self.max_body + 1)

    def protocol(self) -> Any:
        """
        A new HTTP protocol (``Factory.buildProtocol`` calls this): Twisted's,
        on a channel that reports its request heads to the guard if any.
        """
        if self.guard is not None:
            return self.guard.build_protocol()
        return Site.protocol(self)

    def buildProtocol(self, addr: Any) -> Any:
        """
        A channel for a connection just accepted, once the guard has made
        room for it; ``None`` (close it at once) when no descriptor is left.
        """
        if self.guard is not None and not self.guard.admit():
            return None
        return super().buildProtocol(addr)  # type: ignore[no-untyped-call]

    def startFactory(self) -> None:
        """Start the guard with the site (when its port starts listening)."""
        super().startFactory()
        if self.guard is not None:
            self.guard.start()

    def stopFactory(self) -> None:
        """Stop the guard with the site."""
        if self.guard is not None:
            self.guard.stop()
        super().stopFactory()


def _fail(code: int, message: str) -> NoReturn:
    # One line and an exit code: a traceback helps nobody who mistyped a port.
    sys.stderr.write(f"twistd sse: {message}\n")
    raise SystemExit(code)


def _select_cap(reactor: Any) -> int | None:
    """
    ``FD_SETSIZE`` for the select reactor (``twistd --reactor select``),
    which cannot watch descriptors from it on: the limit is not raised
    beyond it.
    """
    from twisted.internet.selectreactor import SelectReactor

    return 1024 if isinstance(reactor, SelectReactor) else None


def makeService(options: Options) -> IService:
    """
    Make the ``twistd sse`` service, listening at once so that a port in use
    is reported as one line and a non-zero exit before anything starts.
    """
    from twisted.internet import reactor

    registry = StreamRegistry(
        reactor,
        max_connections=options["max-connections"],
        max_connections_per_ip=options["max-connections-per-ip"],
        busy_retry=options["busy-retry"],
    )
    broker: IBroker
    if options["redis"] is not None:
        broker = RedisBroker(
            reactor,
            options["redis"],
            history=options["history"],
            channel_ttl=options["channel-ttl"],
        )
    else:
        broker = MemoryBroker(
            history=options["history"],
            history_bytes=options["history-bytes"],
            history_total=options["history-total"],
            channel_ttl=options["channel-ttl"],
            clock=reactor,
        )
    app = SSEApp(
        reactor,
        broker=broker,
        interval=options["interval"],
        retry=options["retry"],
        heartbeat=options["heartbeat"],
        allow_origin=options["allow-origin"] or None,
        registry=registry,
        publish_token=options["publish-token"],
        metrics=not options["no-metrics"],
        metrics_token=options.get("metrics-token")
        or os.environ.get("TWISTED_SSE_METRICS_TOKEN")
        or None,
        metrics_channels=options["metrics-channels"],
        max_event_bytes=options["max-event-bytes"],
        policy=options["slow-client"],
        channel_policies=options["channel-policies"],
        max_queue_events=options["queue-events"],
        max_queue_bytes=options["queue-bytes"],
        authorizer=(
            bearer_token_authorizer(options["subscribe-token"])
            if options["subscribe-token"]
            else None
        ),
    )
    guard = ConnectionGuard(
        reactor,
        header_timeout=options["header-timeout"],
        fd_limit=raise_fd_limit(cap=_select_cap(reactor)),
        fd_reserve=options["fd-reserve"],
        refuse=options["endpoint"].split(":", 1)[0].strip().lower()
        in _UNWRAPPED_ENDPOINTS,
    )
    check_backlog(options["endpoint"])
    if app.collector is not None:
        app.collector.guard = guard
    site = _Site(
        app.resource(),
        max_body=options["max-event-bytes"],
        hub=app.hub,
        guard=guard,
        timeout=options["timeout"] or None,
        logFormatter=access_log_formatter,
    )
    try:
        endpoint = serverFromString(reactor, options["endpoint"])
    except (ValueError, KeyError, TypeError, ImportError) as error:
        _fail(2, f"--port {options['port']!r} is not a valid endpoint: {error}")
    server = EventStreamService(
        endpoint,
        site,
        registry,
        reactor,
        drain=options["drain"],
        retry=options["retry"],
    )
    failures: list[Failure] = []
    server.listen().addErrback(failures.append)
    if failures:
        problem = failures[0].value
        reason = (
            problem.socketError if isinstance(problem, CannotListenError) else problem
        )
        _fail(1, f"cannot listen on {options['endpoint']}: {reason}")
    service = MultiService()
    if isinstance(broker, RedisBroker):
        # Connects in the background: until Redis answers, publishing gets
        # 503 and subscribers a retry hint.
        broker.setServiceParent(service)  # type: ignore[no-untyped-call]
    server.setServiceParent(service)  # type: ignore[no-untyped-call]
    return service
