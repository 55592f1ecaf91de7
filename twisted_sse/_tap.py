"""
``twistd sse``: command-line options and the service they make.
"""

from __future__ import annotations

import re
import sys
from typing import Any, NoReturn

from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.server import Site

from ._app import SSEApp
from ._service import EventStreamService
from ._stream import DEFAULT_HEARTBEAT

__all__ = ["Options", "makeService"]

#: The Site idle timeout.  Twisted's default of 60 s is suspended over HTTP/1.1
#: while a request is open, but not over HTTP/2 (twisted#9532), where it cuts
#: any stream whose client sends nothing for that long: heartbeats do not
#: reset it.  An hour keeps streams alive and still reaps idle connections.
DEFAULT_TIMEOUT = 3600.0


def _positive_float(name: str) -> Any:
    def coerce(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--{name} must be a number, not {value!r}") from None
        if not number > 0 or number == float("inf"):
            raise ValueError(f"--{name} must be a positive number, not {value!r}")
        return number

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def _non_negative_float(name: str) -> Any:
    def coerce(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--{name} must be a number, not {value!r}") from None
        if not number >= 0 or number == float("inf"):
            raise ValueError(f"--{name} must be 0 or a positive number, not {value!r}")
        return number

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def _non_negative_int(name: str) -> Any:
    def coerce(value: str) -> int:
        if not re.fullmatch(r"[0-9]+", value):
            raise ValueError(f"--{name} must be a non-negative integer, not {value!r}")
        return int(value)

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def endpoint_description(port: str) -> str:
    """
    Turn ``--port`` into an endpoint description: a bare port number means
    TCP on all interfaces (``serverFromString`` refuses bare numbers).
    """
    port = port.strip()
    if port.isdigit():
        return f"tcp:{port}"
    return port


class Options(usage.Options):
    """Options of ``twistd sse``."""

    synopsis = "[options]"
    longdesc = (
        "Serve Server-Sent Events: GET /events streams a counter "
        "(retry, then data: 1, 2, ... every --interval seconds) and GET / "
        "shows it in a page."
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
    ]

    def postOptions(self) -> None:
        """Check what the coercers cannot: the endpoint and the origin."""
        origin = self["allow-origin"]
        if "\r" in origin or "\n" in origin:
            raise usage.UsageError("--allow-origin must be one line")
        self["endpoint"] = endpoint_description(self["port"])


def _fail(code: int, message: str) -> NoReturn:
    # One line and an exit code: a traceback helps nobody who mistyped a port.
    sys.stderr.write(f"twistd sse: {message}\n")
    raise SystemExit(code)


def makeService(options: Options) -> IService:
    """
    Make the ``twistd sse`` service, listening at once so that a port in use
    is reported as one line and a non-zero exit before anything starts.
    """
    from twisted.internet import reactor

    app = SSEApp(
        reactor,
        interval=options["interval"],
        retry=options["retry"],
        heartbeat=options["heartbeat"],
        allow_origin=options["allow-origin"] or None,
    )
    site = Site(app.resource(), timeout=options["timeout"] or None)
    try:
        endpoint = serverFromString(reactor, options["endpoint"])
    except (ValueError, KeyError, TypeError, ImportError) as error:
        _fail(2, f"--port {options['port']!r} is not a valid endpoint: {error}")
    server = EventStreamService(endpoint, site, app.stream_resources, reactor)
    failures: list[Failure] = []
    server.listen().addErrback(failures.append)
    if failures:
        problem = failures[0].value
        reason = (
            problem.socketError if isinstance(problem, CannotListenError) else problem
        )
        _fail(1, f"cannot listen on {options['endpoint']}: {reason}")
    service = MultiService()
    server.setServiceParent(service)  # type: ignore[no-untyped-call]
    return service
