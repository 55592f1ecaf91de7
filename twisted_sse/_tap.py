"""
``twistd sse``: command-line options and the service they make.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from ._app import SSEApp
from ._auth import check_claims
from ._authhook import DEFAULT_HOOK_TIMEOUT
from ._broker import (
    DEFAULT_CHANNEL_TTL,
    DEFAULT_HISTORY,
    DEFAULT_IDEMPOTENCY_TTL,
    IBroker,
    valid_channel,
)
from ._fanin import DEFAULT_MAX_SUBSCRIPTIONS
from ._guard import (
    DEFAULT_BACKLOG,
    DEFAULT_FD_RESERVE,
    DEFAULT_HEADER_TIMEOUT,
    ConnectionGuard,
    check_backlog,
    raise_fd_limit,
)
from ._heartbeat import DEFAULT_HEARTBEAT
from ._hub import DEFAULT_MAX_EVENT_BYTES
from ._jwt import DEFAULT_LEEWAY, MIN_SECRET_BYTES
from ._logs import access_log_formatter
from ._memory import DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_TOTAL, MemoryBroker
from ._presence import DEFAULT_PRESENCE_MEMBERS, MAX_PRESENCE_MEMBERS
from ._redis._address import parse_redis_url
from ._redis._broker import RedisBroker
from ._redis._protocol import COMMAND_TIMEOUT
from ._registry import StreamRegistry
from ._resource import check_origins
from ._service import EventStreamService
from ._site import CappedSite
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


def _presence_members(value: str) -> int:
    number = int(_non_negative_int("presence-members")(value))
    if number > MAX_PRESENCE_MEMBERS:
        raise ValueError(
            f"--presence-members must be at most {MAX_PRESENCE_MEMBERS}, not {value!r}"
        )
    return number


_presence_members.coerceDoc = ""  # type: ignore[attr-defined]


def _positive_int(name: str) -> Any:
    return _number(name, int, positive=True)


def _switch(name: str) -> Any:
    """
    A coercer for ``--name on|off`` (nginx's spelling of a log switch),
    either case; anything else is a usage error naming the option.
    """

    def coerce(value: str) -> str:
        word = value.strip().lower()
        if word not in ("on", "off"):
            raise ValueError(f"--{name} must be on or off, not {value!r}")
        return word

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


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
            "Bearer token that may read every channel (as an Authorization "
            "header, the sse_token cookie or ?access_token= for a browser's "
            "EventSource); without it, a JWT key or --auth-url, anyone may "
            "subscribe. Also read from the TWISTED_SSE_SUBSCRIBE_TOKEN "
            "environment variable.",
        ],
        [
            "jwt-secret",
            None,
            None,
            "Verify signed tokens (JWT, HS256/HS384/HS512) with this secret, "
            f"at least {MIN_SECRET_BYTES} bytes; their sse claim lists the "
            "channels their holder may read and publish. Better read from "
            "the TWISTED_SSE_JWT_SECRET environment variable, which keeps it "
            "out of the process list.",
        ],
        [
            "jwt-audience",
            None,
            None,
            "Tokens must name this audience in their aud claim.",
        ],
        [
            "jwt-issuer",
            None,
            None,
            "Tokens must name this issuer in their iss claim.",
        ],
        [
            "jwt-leeway",
            None,
            DEFAULT_LEEWAY,
            "Seconds of clock skew allowed for a token's exp and nbf.",
            _non_negative_float("jwt-leeway"),
        ],
        [
            "auth-url",
            None,
            None,
            "Ask the application at this http(s) URL whether a request "
            "without a JWT may subscribe or publish: it gets a POST with the "
            "channels, the cookies and the Authorization header, and allows "
            "with a 2xx.",
        ],
        [
            "auth-timeout",
            None,
            DEFAULT_HOOK_TIMEOUT,
            "Seconds the application has to answer --auth-url (503 after).",
            _positive_float("auth-timeout"),
        ],
        [
            "broker",
            None,
            None,
            "Where events get their ids and history: 'memory' (this process "
            "only), redis://[[user]:password@]host:port/db (rediss:// for "
            "TLS) to share channels between processes, or "
            "redis+sentinel://[[user]:password@]host:port[,host:port...]"
            "/service[/db] (rediss+sentinel:// for TLS) to follow the primary "
            "that Redis Sentinel names, or redis+cluster://[[user]:password@]"
            "host:port[,host:port...] (rediss+cluster:// for TLS) to spread "
            "channels over the primaries of a Redis Cluster. Also read from the "
            "TWISTED_SSE_BROKER environment variable, which keeps a password "
            "out of the process list. [default: memory]",
        ],
        [
            "redis-wait",
            None,
            0,
            "With Redis: after each publish, WAIT until this many replicas "
            "have the event before answering (503 if fewer did within "
            "--redis-wait-timeout; the event may still be delivered). 0: "
            "answer at once (a failover may then lose the last events, "
            "announced as history-lost).",
            _non_negative_int("redis-wait"),
        ],
        [
            "redis-wait-timeout",
            None,
            1.0,
            "Seconds --redis-wait waits for the replicas (below 5).",
            _positive_float("redis-wait-timeout"),
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
            "idempotency-ttl",
            None,
            DEFAULT_IDEMPOTENCY_TTL,
            "Seconds an Idempotency-Key of POST /channels/{name} is "
            "remembered: a repeat within them is answered the first id and "
            "not published again (0: keys are refused with 501). With Redis, "
            "use the same value on every process.",
            _non_negative_float("idempotency-ttl"),
        ],
        [
            "max-event-bytes",
            None,
            DEFAULT_MAX_EVENT_BYTES,
            "Largest publish body in bytes (413 beyond).",
            _positive_int("max-event-bytes"),
        ],
        [
            "max-subscriptions",
            None,
            DEFAULT_MAX_SUBSCRIPTIONS,
            "Channels and patterns one GET /subscribe may name (400 beyond).",
            _positive_int("max-subscriptions"),
        ],
        [
            "presence-members",
            None,
            DEFAULT_PRESENCE_MEMBERS,
            "Most identities GET /presence/{channel} and the presence event "
            f"list (0 to {MAX_PRESENCE_MEMBERS}; 0: counts only).",
            _presence_members,
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
        [
            "access-log",
            None,
            "on",
            "on or off: one line per request in the combined log format (for "
            "a stream, when it ends). Off, no line is built at all; behind a "
            "proxy that keeps its own access log, this one is a second copy.",
            _switch("access-log"),
        ],
        [
            "stream-log",
            None,
            "on",
            "on or off: an info line when each stream opens and when it ends "
            "(with the reason, duration and frames sent). Off, none is built; "
            "warnings and errors are logged either way.",
            _switch("stream-log"),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["slow-client"] = SlowClientPolicy.DISCONNECT
        self["channel-policies"] = {}
        self["metrics-channels"] = []
        self["jwt-keys"] = []
        self["public"] = []
        self["allow-origins"] = []

    optFlags = [
        ["no-metrics", None, "Do not serve GET /metrics."],
        [
            "no-presence",
            None,
            "Keep no presence: no GET /presence/{channel}, no presence=1.",
        ],
        [
            "presence-claim",
            None,
            "Reading presence needs a token whose sse.presence claim covers "
            "the channel (with --jwt-secret, --jwt-key or --auth-url).",
        ],
    ]

    def opt_version(self) -> NoReturn:
        """Display twisted_sse's, Twisted's and Python's versions and exit."""
        print(version_text())
        sys.exit(0)

    def opt_allow_origin(self, value: str) -> None:
        """
        An origin whose pages may read the streams (repeatable): a request
        from a listed origin gets it back, with
        Access-Control-Allow-Credentials so its cookies are sent; * allows
        every origin, without credentials; '' sends no CORS headers.
        [default: *]
        """
        self["allow-origins"].append(value.strip())

    def opt_jwt_key(self, path: str) -> None:
        """
        A PEM public key (RSA, EC or Ed25519) whose signed tokens are
        accepted (repeatable, for key rotation); its type decides the
        algorithms accepted.
        """
        try:
            with open(path, "rb") as file:
                self["jwt-keys"].append((path, file.read(64 * 1024)))
        except OSError as error:
            raise usage.UsageError(
                f"--jwt-key: cannot read {path}: {error.strerror}"
            ) from None

    def opt_public(self, name: str) -> None:
        """
        A channel, or a pattern like news.*, that anyone may read without
        a token when tokens guard the others (repeatable). Publishing on it
        still needs one.
        """
        try:
            check_claims([name], "--public")
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        self["public"].append(name)

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
        """Check what the coercers cannot: the endpoint, origins and keys."""
        origins = self["allow-origins"] or ["*"]
        if origins == [""]:
            self["allow-origin"] = None
        else:
            try:
                check_origins(origins)
            except ValueError as error:
                raise usage.UsageError(
                    str(error).replace("allow_origin", "--allow-origin")
                ) from None
            self["allow-origin"] = origins[0] if len(origins) == 1 else origins
        self["endpoint"] = endpoint_description(self["port"])
        for name in ("publish-token", "subscribe-token", "jwt-secret"):
            variable = "TWISTED_SSE_" + name.replace("-", "_").upper()
            self[name] = self[name] or os.environ.get(variable) or None
        self["jwt"] = self._verifier()
        if (
            self["public"]
            and self["jwt"] is None
            and not self["auth-url"]
            and not (self["subscribe-token"])
        ):
            raise usage.UsageError(
                "--public names what anyone may read when something guards the "
                "rest: give --jwt-secret, --jwt-key, --auth-url or "
                "--subscribe-token too"
            )
        if self["presence-claim"] and self["jwt"] is None and not self["auth-url"]:
            raise usage.UsageError(
                "--presence-claim needs tokens that can carry the claim: give "
                "--jwt-secret, --jwt-key or --auth-url too"
            )
        url = self["auth-url"]
        if url is not None and not re.fullmatch(
            r"https?://[^/?#\s]+(?:[/?#]\S*)?", url
        ):
            raise usage.UsageError("--auth-url must be an http:// or https:// URL")
        broker = self["broker"] or os.environ.get("TWISTED_SSE_BROKER") or "memory"
        self["redis"] = None
        if broker.strip().lower() not in ("memory", "memory://"):
            try:
                self["redis"] = parse_redis_url(broker)
            except ValueError as error:
                # The message never repeats the URL: it may hold a password.
                raise usage.UsageError(
                    "--broker must be memory or redis://[[user]:password@]host"
                    "[:port][/db] (rediss:// for TLS; redis+sentinel://"
                    "host:port[,...]/service[/db] for Sentinel; redis+cluster://"
                    f"host:port[,...] for Redis Cluster): {error}"
                ) from None
        if self["redis"] is None and self["redis-wait"]:
            raise usage.UsageError("--redis-wait needs a Redis --broker")
        if not self["redis-wait-timeout"] < COMMAND_TIMEOUT:
            raise usage.UsageError(
                f"--redis-wait-timeout must be below {COMMAND_TIMEOUT:g} seconds"
            )

    def _verifier(self) -> Any:
        """The JWT verifier the options make, or ``None``."""
        secret, keys = self["jwt-secret"], self["jwt-keys"]
        if secret is None and not keys:
            for name in ("jwt-audience", "jwt-issuer"):
                if self[name] is not None:
                    raise usage.UsageError(f"--{name} needs --jwt-secret or --jwt-key")
            return None
        from ._jwt import JWTVerifier, load_public_key

        for path, data in keys:
            try:
                load_public_key(data, path)
            except ValueError as error:
                raise usage.UsageError(f"--jwt-key: {error}") from None
        try:
            return JWTVerifier(
                secret=secret,
                keys=[data for _, data in keys],
                audience=self["jwt-audience"],
                issuer=self["jwt-issuer"],
                leeway=self["jwt-leeway"],
            )
        except ValueError as error:
            # Never the secret itself: a message names the option only.
            raise usage.UsageError(f"JWT options: {error}") from None


# usage.Options prints an opt_ method's docstring as it is, the
# indentation of its continuation lines included: fold each into one line.
for _name, _method in list(vars(Options).items()):
    if _name.startswith("opt_") and _method.__doc__:
        _method.__doc__ = " ".join(_method.__doc__.split())


#: What --auth-url must look like (HTTPAuthHook checks it further).
_HTTP_URL = re.compile(r"https?://[^/?#\s]+(?:[/?#]\S*)?")


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


class _Closing(Service):
    """A service whose stop closes something (the hook's connections)."""

    def __init__(self, close: Callable[[], Deferred[None]]) -> None:
        self.close = close

    def stopService(self) -> Deferred[None]:
        """Close it."""
        super().stopService()  # type: ignore[no-untyped-call]
        return self.close()


def _auth_hook(options: Options, reactor: Any) -> Any:
    url = options["auth-url"]
    if url is None:
        return None
    from ._authhook import HTTPAuthHook

    try:
        return HTTPAuthHook(url, clock=reactor, timeout=options["auth-timeout"])
    except ValueError as error:
        _fail(2, f"--auth-url: {error}")


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
            idempotency_ttl=options["idempotency-ttl"],
            wait_replicas=options["redis-wait"],
            wait_timeout=options["redis-wait-timeout"],
        )
    else:
        broker = MemoryBroker(
            history=options["history"],
            history_bytes=options["history-bytes"],
            history_total=options["history-total"],
            channel_ttl=options["channel-ttl"],
            clock=reactor,
            idempotency_ttl=options["idempotency-ttl"],
        )
    hook = _auth_hook(options, reactor)
    app = SSEApp(
        reactor,
        broker=broker,
        interval=options["interval"],
        retry=options["retry"],
        heartbeat=options["heartbeat"],
        allow_origin=options["allow-origin"],
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
        max_subscriptions=options["max-subscriptions"],
        subscribe_token=options["subscribe-token"],
        jwt=options["jwt"],
        public=options["public"],
        presence=not options["no-presence"],
        presence_members=options["presence-members"],
        presence_claim=bool(options["presence-claim"]),
        auth_hook=hook,
        stream_log=options["stream-log"] == "on",
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
    site = CappedSite(
        app.resource(),
        max_body=options["max-event-bytes"],
        hub=app.hub,
        guard=guard,
        timeout=options["timeout"] or None,
        logFormatter=access_log_formatter,
        access_log=options["access-log"] == "on",
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
    if hook is not None:
        # Stopped last (a MultiService stops its children in reverse): its
        # connections to the application close once the streams are gone.
        _Closing(hook.close).setServiceParent(service)  # type: ignore[no-untyped-call]
    if isinstance(broker, RedisBroker):
        # Connects in the background: until Redis answers, publishing gets
        # 503 and subscribers a retry hint.
        broker.setServiceParent(service)  # type: ignore[no-untyped-call]
    server.setServiceParent(service)  # type: ignore[no-untyped-call]
    return service
