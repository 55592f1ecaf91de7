"""
:class:`~twisted_sse.testing.SSETestClient`: requests to a resource in
memory, served by a real :class:`~twisted.web.server.Site`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Protocol
from unittest import TestCase
from urllib.parse import quote

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from twisted.web.server import Site

from .._fanin import parse_selection
from .._resource import StreamResource
from ._leaks import Checkable, SubscriptionCounter, assert_no_leaks
from ._response import SentRequest, SSETestResponse
from ._transports import TRANSPORTS
from ._turns import Turns

__all__ = ["KleinApp", "SSETestClient"]

# An HTTP method is a token (RFC 9110, section 5.6.2).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class KleinApp(Protocol):
    """What :meth:`SSETestClient.for_klein` needs of a Klein app."""

    def resource(self) -> IResource:
        """The app as a resource."""


class SSETestClient:
    """
    Make requests to a resource in memory and read the responses as a
    browser's ``EventSource`` would, one connection per request.

    Every method runs the server to completion before it returns and then
    delivers the connection closes that came due (see :meth:`flush`).

    :param resource: The root of the resource tree to serve.
    :param clock: The clock the resource was given; a new one if ``None``.
        The ``Site``'s connection timeouts run on it too, so a connection
        left open shows up as a pending call.
    :param host: The ``Host`` header sent, and the origin given to events
        (``http://host``).
    :param transport: The kind of connection under each request.
        ``"memory"`` (the default) hands every write to the client at once,
        and the stream writes through ``request.write``, as it does over
        TLS, HTTP/2 or a proxy.  ``"tcp"`` runs Twisted's own TCP connection
        over an in-memory socket, so a plain HTTP/1.x stream takes the path
        production takes over TCP: frames go to the socket directly, what
        the socket refuses is buffered by Twisted (see
        :meth:`SSETestResponse.pause_reading`), and what Twisted buffered
        (a response head, the end of a response) reaches the client on the
        client's next call, as on a reactor's next turn: call :meth:`flush`
        after ``clock.advance``.
    :ivar transport: The kind of connection.
    :ivar clock: The clock.
    :ivar site: The :class:`~twisted.web.server.Site` serving ``resource``.
    :ivar responses: Every response, in the order the requests were made.
    """

    def __init__(
        self,
        resource: IResource,
        clock: Clock | None = None,
        *,
        host: str = "localhost",
        transport: str = "memory",
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(
                f"transport must be one of {', '.join(TRANSPORTS)}: {transport!r}"
            )
        self.transport = transport
        self.clock = clock if clock is not None else Clock()
        self.resource = resource
        self.site = Site(resource, reactor=self.clock)
        self.host = host
        self.responses: list[SSETestResponse] = []
        self._turns = Turns()
        self._next_port = 40000

    @classmethod
    def for_klein(
        cls,
        app: KleinApp,
        clock: Clock | None = None,
        *,
        host: str = "localhost",
        transport: str = "memory",
    ) -> SSETestClient:
        """
        Serve a Klein app: the same as ``SSETestClient(app.resource(), ...)``.

        :param app: A :class:`klein.Klein` app.
        :param clock: The clock the app's streams use.
        :param host: See :class:`SSETestClient`.
        :param transport: See :class:`SSETestClient`.
        """
        return cls(app.resource(), clock, host=host, transport=transport)

    def get(
        self,
        path: str,
        headers: Mapping[str, str] | None = None,
        *,
        last_event_id: str | None = None,
    ) -> SSETestResponse:
        """
        Open an event stream, as ``new EventSource(path)`` does.

        :param path: The request target: a percent-encoded path and query.
        :param headers: More request headers, replacing the defaults
            (``Host``, ``Accept: text/event-stream``, ``Cache-Control:
            no-cache``) case-insensitively.
        :param last_event_id: If given, sent as ``Last-Event-ID`` (as a
            reconnecting browser does) and the response's event parser starts
            from it.
        :returns: The response, with everything the server wrote so far.
        """
        return self.request("GET", path, headers, last_event_id=last_event_id)

    def subscribe(
        self,
        channels: Iterable[str],
        *,
        last_event_id: str | None = None,
        envelope: bool = False,
        path: str = "/subscribe",
        headers: Mapping[str, str] | None = None,
    ) -> SSETestResponse:
        """
        Open a stream of several channels and patterns at a hub's
        ``/subscribe`` (:meth:`Hub.subscribe_resource
        <twisted_sse.Hub.subscribe_resource>`), as ``new
        EventSource("/subscribe?channel=a&channel=news.*")`` does.

        To come back after a disconnect, subscribe again with the cursor the
        stream gave last: ``last_event_id=response.last_event_id``.

        :param channels: The channel names and patterns (``news.*``), sent as
            ``channel`` query parameters in the order given.
        :param last_event_id: If given, sent as ``Last-Event-ID``: the
            stream resumes after it on every channel (see :meth:`get`).
        :param envelope: Ask for ``envelope=1``: every event's data is a
            JSON object naming its channel, and no event has a type but
            ``history-lost``.
        :param path: Where the hub's subscribe resource is in the tree; it
            may have a query of its own, which the channels follow.
        :param headers: See :meth:`get`.
        :returns: The response, with everything the server wrote so far.
        :raises TypeError: if ``channels`` is one string rather than names.
        :raises ValueError: for what the hub would answer ``400`` (no name,
            an empty or invalid name, ``*``), with the hub's own message.
            How many names a connection may have is the hub's setting
            (``max_subscriptions``), so that one is left to the hub.  To
            send a request the hub refuses, use :meth:`get`.
        """
        if isinstance(channels, str):
            raise TypeError(
                f"channels must be a list of names, not a string: [{channels!r}]?"
            )
        names = list(channels)
        parse_selection(names, max_subscriptions=max(len(names), 1))
        query = [f"channel={quote(name, safe=':@*')}" for name in names]
        if envelope:
            query.append("envelope=1")
        separator = "&" if "?" in path else "?"
        return self.get(
            path + separator + "&".join(query), headers, last_event_id=last_event_id
        )

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        *,
        last_event_id: str | None = None,
        http_version: str = "HTTP/1.1",
    ) -> SSETestResponse:
        """
        Make any request on a new connection.

        :param method: The method, such as ``"HEAD"`` or ``"OPTIONS"``.
        :param path: See :meth:`get`.
        :param headers: See :meth:`get`.
        :param body: The request body, sent with a ``Content-Length``.
        :param last_event_id: See :meth:`get`.
        :param http_version: ``"HTTP/1.1"`` or ``"HTTP/1.0"``.
        :returns: The response, with everything the server wrote so far.
        :raises ValueError: for a path, method or header that cannot be sent.
        """
        if not path.startswith("/") or not path.isascii():
            raise ValueError(f"path must be an ASCII path starting with /: {path!r}")
        if http_version not in ("HTTP/1.0", "HTTP/1.1"):
            raise ValueError(f"unsupported HTTP version: {http_version!r}")
        if not _TOKEN.fullmatch(method):
            raise ValueError(f"bad method: {method!r}")
        merged: dict[str, tuple[str, str]] = {}
        defaults = {
            "Host": self.host,
            "Accept": "text/event-stream",
            "Cache-Control": "no-cache",
        }
        if last_event_id is not None:
            defaults["Last-Event-ID"] = last_event_id
        for name, value in [*defaults.items(), *(headers or {}).items()]:
            merged[name.lower()] = (name, value)
        if body:
            merged["content-length"] = ("Content-Length", str(len(body)))
        request_headers = Headers()
        lines = [f"{method} {path} {http_version}".encode("ascii")]
        for name, value in merged.values():
            if any(c in name + value for c in "\r\n\0"):
                raise ValueError(f"header must be one line: {name!r}: {value!r}")
            request_headers.addRawHeader(name.encode("ascii"), value.encode("utf-8"))
            lines.append(f"{name}: {value}".encode())
        wire = b"\r\n".join(lines) + b"\r\n\r\n" + body

        sent = SentRequest(
            method,
            path,
            request_headers,
            wire,
            last_event_id=last_event_id or "",
            origin=f"http://{self.host}",
        )
        with self._turns.operation():
            self._next_port += 1
            peer = IPv4Address("TCP", "127.0.0.1", self._next_port)
            protocol = self.site.buildProtocol(peer)
            assert protocol is not None
            response = SSETestResponse(
                self._turns, sent, protocol, transport=self.transport, peer=peer
            )
            self.responses.append(response)
        return response

    def advance(self, seconds: float) -> None:
        """
        Move the clock ``seconds`` forward, running every timer that comes
        due at its own time, in order.

        Unlike ``clock.advance(3)``, which runs a one-second
        :class:`~twisted.internet.task.LoopingCall` once, this runs it three
        times, as three seconds of real time would.  Between steps it
        delivers due connection closes (see :meth:`flush`).

        :param seconds: How far to move.
        :raises ValueError: if ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"cannot go back in time: {seconds!r}")
        with self._turns.operation():
            clock = self.clock
            target = clock.seconds() + seconds
            while True:
                due = [
                    call.getTime()
                    for call in clock.getDelayedCalls()
                    if call.active() and call.getTime() <= target
                ]
                if not due:
                    break
                # Each step runs every call due by then (Clock.advance does)
                # and moves time forward: the loop ends.
                _advance_to(clock, min(due))
                self._turns.settle()
            _advance_to(clock, target)

    def flush(self) -> None:
        """
        Deliver the connection closes that are due: the server's
        ``connectionLost`` after it closed a connection, and the client's own
        close after a response ended or :meth:`SSETestResponse.disconnect`.

        A real reactor never delivers them inside the call that caused them,
        so neither does this client: every method of the client and its
        responses does it before returning.  Call this after moving time with
        ``clock.advance`` directly, before you look at the server's state.
        """
        with self._turns.operation():
            pass

    def disconnect_all(self) -> None:
        """Close every connection still open, from the client's side."""
        for response in self.responses:
            response.disconnect()

    @property
    def open_responses(self) -> list[SSETestResponse]:
        """The responses whose connection is still open."""
        return [response for response in self.responses if response.connected]

    def assert_clean(
        self,
        *resources: Checkable,
        brokers: Iterable[SubscriptionCounter] = (),
        testcase: TestCase | None = None,
    ) -> None:
        """
        Fail if anything outlived the requests: see :func:`assert_no_leaks`,
        given this client and its clock.  The root resource is checked too
        when it is a :class:`~twisted_sse.StreamResource`.

        :param resources: Stream resources in the tree (or registries, or
            shared heartbeats) whose streams must all have ended.
        :param brokers: Brokers that must have no subscriber left.
        :param testcase: The running test, whose ``fail`` reports the leak.
        """
        self.flush()
        checked = list(resources)
        if isinstance(self.resource, StreamResource) and not any(
            self.resource is r for r in checked
        ):
            checked.insert(0, self.resource)
        assert_no_leaks(
            testcase,
            clock=self.clock,
            resources=checked,
            brokers=brokers,
            clients=[self],
        )


def _advance_to(clock: Clock, when: float) -> None:
    """Advance ``clock`` to exactly ``when`` (or not at all if it is past)."""
    amount = when - clock.seconds()
    if amount <= 0:
        clock.advance(0)
        return
    # Float addition may land just short of ``when``, leaving the call due
    # there unfired; nudge the step up by the smallest amounts until it lands.
    while clock.seconds() + amount < when:
        amount = math.nextafter(amount, math.inf)
    clock.advance(amount)
