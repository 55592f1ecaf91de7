"""
Every open stream of a server: admission (connection limits) and a graceful
drain.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from random import Random
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from ._event import Event
from ._stream import EventStream, client_ip
from ._twisted import h2_stream_pending, h2_transport

__all__ = ["DRAIN_RATE", "StreamRegistry"]

#: Streams ended per second at most while draining (see StreamRegistry.drain).
DRAIN_RATE = 1000.0


class StreamRegistry:
    """
    Every open stream of a server, for admission control and a graceful
    drain.

    Admission: over ``max_connections`` streams in all, or
    ``max_connections_per_ip`` from one client address, a new stream is sent
    away with ``200``, a jittered ``retry:`` and an immediate end.  A
    spec-following ``EventSource`` then comes back after that delay; a
    ``503`` would make a browser give up for good.

    Drain (:meth:`drain`): new streams are sent away the same way, and every
    open stream is ended cleanly at a random moment of the drain window with
    a jittered ``retry:``, so that clients do not all reconnect at once.

    :param clock: The time source.
    :param max_connections: Streams in all; ``0`` for no limit.
    :param max_connections_per_ip: Streams per client address; ``0`` for no
        limit.
    :param busy_retry: Base ``retry:`` in milliseconds for a client sent
        away; each gets a random value between it and twice it.
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_connections: int = 0,
        max_connections_per_ip: int = 0,
        busy_retry: int = 5000,
        random: Random | None = None,
    ) -> None:
        if max_connections < 0 or max_connections_per_ip < 0:
            raise ValueError("connection limits must be >= 0 (0: no limit)")
        Event(retry=busy_retry)
        self.clock = clock
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.busy_retry = busy_retry
        self.draining = False
        #: Streams sent away, by reason ("draining", "total", "per-ip").
        self.refused: Counter[str] = Counter()
        #: Streams opened since start, and closed by reason ("closed" by the
        #: server, "lost" by the client, "aborted" for not reading).
        self.opened = 0
        self.closed: Counter[str] = Counter()
        #: Frames and bytes of streams already closed, and frames their
        #: slow-client policy dropped; see :meth:`totals` for all streams.
        self._closed_frames = 0
        self._closed_bytes = 0
        self._closed_dropped = 0
        self.streams: set[EventStream] = set()
        self._per_ip: dict[str, int] = {}
        self._random = random if random is not None else Random()

    def jittered_retry(self, base: int | None = None) -> int:
        """A reconnection time between ``base`` and twice it (ms)."""
        base = self.busy_retry if base is None else base
        return base + self._random.randint(0, base)

    def admit(self, request: Any) -> str | None:
        """
        Whether a new stream for ``request`` may open.

        :returns: ``None`` if so, else the reason it may not.
        """
        if self.draining:
            return self._refuse("draining", "the server is shutting down")
        if self.max_connections and len(self.streams) >= self.max_connections:
            return self._refuse("total", "too many connections")
        if (
            self.max_connections_per_ip
            and self._per_ip.get(client_ip(request), 0) >= self.max_connections_per_ip
        ):
            return self._refuse("per-ip", "too many connections from this address")
        return None

    def _refuse(self, kind: str, reason: str) -> str:
        self.refused[kind] += 1
        return reason

    def totals(self) -> tuple[int, int, int]:
        """Frames and bytes accepted, and frames dropped, by every stream."""
        frames, size, dropped = (
            self._closed_frames,
            self._closed_bytes,
            self._closed_dropped,
        )
        for stream in self.streams:
            frames += stream.frames
            size += stream.bytes
            dropped += stream.dropped
        return frames, size, dropped

    def add(self, stream: EventStream) -> None:
        """Count ``stream`` until it closes."""
        self.track(stream, client_ip(stream.request))
        stream.on_close(partial(self.forget, stream))

    def track(self, stream: EventStream, ip: str) -> None:
        """
        Count ``stream``, from client address ``ip``, until :meth:`forget`
        is called for it: for a resource that is told of its streams' ends
        itself (:class:`StreamResource`), without a close callback.
        """
        self.streams.add(stream)
        self.opened += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1

    def forget(self, stream: EventStream) -> None:
        """Stop counting ``stream``, which closed (see :meth:`track`)."""
        if stream not in self.streams:
            return
        ip = client_ip(stream.request)
        self.streams.discard(stream)
        self.closed[stream.close_reason or "closed"] += 1
        self._closed_frames += stream.frames
        self._closed_bytes += stream.bytes
        self._closed_dropped += stream.dropped
        left = self._per_ip.get(ip, 1) - 1
        if left:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)

    def drain(
        self, seconds: float, retry: int = 1000, grace: float = 1.0
    ) -> Deferred[None]:
        """
        Stop admitting streams and end the open ones cleanly, each with a
        ``retry:`` between ``retry`` and ``retry`` plus ``seconds``, so that
        their clients come back spread over the window; then close their
        connections once the terminating chunk is flushed.  The ends
        themselves are spread at no more than :data:`DRAIN_RATE` per second
        (within ``seconds``): a busy server takes the whole window, a quiet
        one stops at once.

        :param grace: Seconds to wait at most, after the last stream ended,
            for the connections to flush and close.
        :returns: A Deferred that fires when that is done.
        """
        self.draining = True
        return Deferred.fromCoroutine(self._drain(seconds, retry, grace))

    async def _drain(self, seconds: float, retry: int, grace: float) -> None:
        window_ms = int(seconds * 1000)
        waiting = []
        connections: list[Any] = []
        h2_channels: list[Any] = []

        def end(stream: EventStream, hint: int) -> None:
            # Note the connection first: closing the last stream resumes the
            # wait below at once, before this function goes on.
            if stream.is_http2:
                # The stream's last frames wait in its connection's send loop,
                # which runs on a later reactor turn: see them out below.
                h2_channels.append(stream.request.channel)
                stream.close(hint)
                return
            connection = stream.request.channel.transport
            if connection is not None:
                connections.append(connection)
            stream.close(hint)
            if connection is not None:
                # Flushes what is buffered (the terminating chunk), then
                # closes: no half-written response for a proxy to report.
                connection.loseConnection()

        streams = list(self.streams)
        # The retry hints spread the reconnections over the whole window;
        # the ends themselves need spreading only when there are many, so a
        # server with a handful of streams stops at once.
        spread = min(seconds, len(streams) / DRAIN_RATE)
        for stream in streams:
            done: Deferred[None] = Deferred()
            stream.on_close(partial(done.callback, None))
            hint = retry + self._random.randint(0, max(window_ms, 0))
            if spread > 0:
                stream.call_later(self._random.uniform(0, spread), end, stream, hint)
            else:
                end(stream, hint)
            waiting.append(done)
        await DeferredList(waiting)
        waited, step = 0.0, 0.02
        # HTTP/2: wait until each ended stream has left its connection (its
        # END_STREAM is written), then close the connections as above.
        # Without this the reactor stops with the frames unsent, and clients
        # see a stream cut without its end (curl: "not closed cleanly").
        while waited < grace and any(map(h2_stream_pending, h2_channels)):
            await deferLater(self.clock, step)
            waited += step
        for transport in {id(t): t for t in map(h2_transport, h2_channels)}.values():
            if transport is not None:
                transport.loseConnection()
                connections.append(transport)
        while waited < grace and not all(map(_disconnected, connections)):
            await deferLater(self.clock, step)
            waited += step


def _disconnected(transport: Any) -> bool:
    """
    Whether a connection is closed.  A TLS transport (a protocol wrapper)
    has no ``disconnected``: the TCP transport under it does, and closes
    only after the wrapper has flushed its records.
    """
    while transport is not None and not hasattr(transport, "disconnected"):
        transport = getattr(transport, "transport", None)
    return transport is None or bool(transport.disconnected)
