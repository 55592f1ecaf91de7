"""
twisted_sse as a peer of the shared SSE broadcast benchmark.

Serves the benchmark's workload contract (the harness's ``peers/common.py``):

``GET /events``
    ``text/event-stream``; first frame ``retry: 1000``, then every broadcast
    event as ``data: <seq> <ts_ns> <pad>``, ``ts_ns`` being
    ``CLOCK_MONOTONIC`` nanoseconds taken just before the fan-out and the
    whole frame ``size`` bytes.
``GET /publish?count=K&rate=R&size=S&duration=D``
    One bounded publish run (``rate=0``: one event per reactor turn), then
    ``{"published", "first_seq", "last_seq", "elapsed_s", "clients"}``; 409
    while another run is going.
``GET /stats``
    ``{"clients": c, "seq": s}``.

Two ways to serve ``/events``, both through twisted_sse:

``--via stream`` (the default)
    An :class:`~twisted_sse.EventStreamResource`, whose ``streams`` are the
    open streams; each event is encoded once with
    :class:`~twisted_sse.Event` and the same bytes are written to every
    stream with :meth:`~twisted_sse.EventStream.write`.  Public API only.
``--via hub``
    The broadcast hub: ``/events`` is a channel of a
    :class:`~twisted_sse.Hub` on a broker (``--broker memory`` or
    ``redis``) and each event goes through ``hub.publish``.  Frames then
    carry an ``id:`` line; the padding is shortened so the frame stays
    ``size`` bytes.  Public API only.

Run it by hand::

    python bench/peer.py --port 8110 &
    curl -N http://127.0.0.1:8110/events &
    curl 'http://127.0.0.1:8110/publish?count=3&rate=2&size=80'

Loopback only; the process stops by itself after ``--max-lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.defer import Deferred, succeed  # noqa: E402
from twisted.logger import globalLogBeginner  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from twisted.web.server import NOT_DONE_YET, Site  # noqa: E402

import twisted_sse  # noqa: E402
from twisted_sse import Event, EventStream, EventStreamResource  # noqa: E402

MAX_COUNT = 10_000_000
MAX_DURATION = 120.0
PAD = "x" * 65536
CHANNEL = "bench"
#: ``data: `` and the blank line around the payload.
FRAME_OVERHEAD = len("data: \n\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The harness's options, with its environment variables as defaults."""
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=env("SSE_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port",
        type=int,
        default=int(env("SSE_PORT", "8110")),
        help="0: any free port (printed on stdout)",
    )
    parser.add_argument("--rate", type=float, default=float(env("SSE_RATE", "1")))
    parser.add_argument("--size", type=int, default=int(env("SSE_SIZE", "64")))
    parser.add_argument("--count", type=int, default=int(env("SSE_COUNT", "1000")))
    parser.add_argument(
        "--duration", type=float, default=float(env("SSE_DURATION", "10"))
    )
    parser.add_argument("--autostart", type=int, default=int(env("SSE_AUTOSTART", "0")))
    parser.add_argument("--backlog", type=int, default=int(env("SSE_BACKLOG", "1024")))
    parser.add_argument(
        "--max-lifetime", type=float, default=float(env("SSE_MAX_LIFETIME", "900"))
    )
    parser.add_argument(
        "--via", choices=("stream", "hub"), default=env("SSE_VIA", "stream")
    )
    parser.add_argument(
        "--broker", choices=("memory", "redis"), default=env("SSE_BROKER", "memory")
    )
    parser.add_argument(
        "--redis-url", default=env("SSE_REDIS_URL", "redis://127.0.0.1:6379")
    )
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost"):
        parser.error("benchmark peers only listen on 127.0.0.1")
    return args


def event_data(seq: int, size: int, overhead: int = FRAME_OVERHEAD) -> str:
    """
    The data field of event ``seq``: ``<seq> <ts_ns> <pad>``, stamped now,
    padded so that the frame (``overhead`` bytes around it) is ``size`` bytes.
    """
    head = f"{seq} {time.monotonic_ns()}"
    pad = size - len(head) - overhead - 1
    return head + " " + PAD[:pad] if pad > 0 else head + " "


class Broadcaster:
    """What feeds ``/events``: counts clients, sends one event to all."""

    def resource(self) -> Resource:
        """The ``/events`` resource."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether it can take subscribers and events (a broker connected)."""
        return True

    def clients(self) -> int:
        """Open streams."""
        raise NotImplementedError

    def broadcast(self, seq: int, size: int) -> Deferred[None]:
        """Send event ``seq`` to every client; fires once it is handed over."""
        raise NotImplementedError


class StreamBroadcaster(Broadcaster):
    """An EventStreamResource; its ``streams`` are the open streams."""

    def __init__(self) -> None:
        # The handler has nothing to do: broadcast() writes to every open
        # stream of the resource.
        self._resource = EventStreamResource(
            _keep_open, clock=reactor, retry=1000, allow_origin="*"
        )

    def resource(self) -> Resource:
        return self._resource

    def clients(self) -> int:
        return len(self._resource.streams)

    def broadcast(self, seq: int, size: int) -> Deferred[None]:
        frame = Event(data=event_data(seq, size)).encode()
        # A copy: a write can end a stream (slow-client policy), which
        # removes it from the set.
        for stream in list(self._resource.streams):
            stream.write(frame)
        return succeed(None)


def _keep_open(stream: EventStream) -> None:
    """A stream handler that leaves the stream open and idle."""


class HubBroadcaster(Broadcaster):
    """A channel of the broadcast hub, on an in-memory or Redis broker."""

    def __init__(self, broker_name: str, redis_url: str) -> None:
        broker: Any
        if broker_name == "redis":
            address = twisted_sse.parse_redis_url(redis_url)
            broker = twisted_sse.RedisBroker(reactor, address)
            broker.startService()
            self.epoch = None
        else:
            broker = twisted_sse.MemoryBroker()
            self.epoch = broker.epoch
        self.broker = broker
        self.hub = twisted_sse.Hub(broker, clock=reactor, retry=1000, allow_origin="*")
        self._resource = self.hub.channel_resource(CHANNEL)

    def resource(self) -> Resource:
        return self._resource

    def ready(self) -> bool:
        return bool(self.broker.available)

    def clients(self) -> int:
        return len(self.hub.registry.streams)

    def broadcast(self, seq: int, size: int) -> Deferred[None]:
        # The broker adds "id: <epoch>-<n>\n" to the frame; with one
        # publisher on the channel n is our seq, so the memory broker's frame
        # stays exactly `size` bytes (Redis ids are about as long).
        epoch = self.epoch if self.epoch is not None else int(time.time() * 1000)
        overhead = FRAME_OVERHEAD + len(f"id: {epoch}-{seq}\n")
        published = self.hub.publish(
            CHANNEL, Event(data=event_data(seq, size, overhead))
        )
        return published.addCallback(lambda _: None)


class Peer:
    """The contract's state: the sequence number and the one publish run."""

    def __init__(self, args: argparse.Namespace, broadcaster: Broadcaster) -> None:
        self.args = args
        self.broadcaster = broadcaster
        self.seq = 0
        self.busy = False

    def run_params(self, query: dict[str, str]) -> tuple[int, float, int, float]:
        """``/publish`` parameters over the defaults, clamped as the harness does."""

        def get(name: str, default: float) -> float:
            value = query.get(name)
            return float(value) if value not in (None, "") else default

        args = self.args
        count = int(min(max(get("count", args.count), 0), MAX_COUNT))
        rate = max(get("rate", args.rate), 0.0)
        size = int(min(max(get("size", args.size), 0), len(PAD)))
        duration = min(max(get("duration", args.duration), 0.0), MAX_DURATION)
        return count, rate, size, duration

    def publish_run(
        self,
        count: int,
        rate: float,
        size: int,
        duration: float,
        done: Callable[[bytes], object],
    ) -> None:
        """At most ``count`` events and ``duration`` seconds, then ``done``."""
        t0 = time.monotonic()
        first = self.seq + 1
        sent = 0

        def step() -> None:
            nonlocal sent
            if sent >= count or time.monotonic() - t0 >= duration:
                body = {
                    "published": sent,
                    "first_seq": first,
                    "last_seq": self.seq,
                    "elapsed_s": round(time.monotonic() - t0, 6),
                    "clients": self.broadcaster.clients(),
                }
                done(json.dumps(body).encode())
                return
            self.seq += 1
            sent += 1
            handed = self.broadcaster.broadcast(self.seq, size)
            handed.addCallback(lambda _: schedule())
            handed.addErrback(lambda failure: print(failure, file=sys.stderr))

        def schedule() -> None:
            if rate > 0:
                delay = t0 + sent / rate - time.monotonic()
                reactor.callLater(max(delay, 0), step)
            else:
                reactor.callLater(0, step)  # one event per reactor turn

        step()


class Publish(Resource):
    isLeaf = True

    def __init__(self, peer: Peer) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.peer = peer

    def render_GET(self, request: Any) -> bytes | int:
        peer = self.peer
        if peer.busy:
            request.setResponseCode(409)
            return b'{"error":"busy"}'
        query = {k.decode(): v[0].decode() for k, v in request.args.items()}
        peer.busy = True

        def done(body: bytes) -> None:
            peer.busy = False
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", b"%d" % len(body))
            request.write(body)
            request.finish()

        peer.publish_run(*peer.run_params(query), done)
        return NOT_DONE_YET


class Memory(Resource):
    """
    ``GET /tracemalloc?key=lineno&top=40``: what was allocated since the
    server started listening, by source line (``key=filename``: by file).
    Served only with ``SSE_TRACEMALLOC=1``.
    """

    isLeaf = True

    def __init__(self, baseline: tracemalloc.Snapshot) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.baseline = baseline

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        gc.collect()
        now = tracemalloc.take_snapshot()
        key = request.args.get(b"key", [b"lineno"])[0].decode()
        top = int(request.args.get(b"top", [b"40"])[0])
        if key not in ("lineno", "filename", "traceback"):
            key = "lineno"
        stats = now.compare_to(self.baseline, key)
        total = sum(stat.size_diff for stat in stats)
        lines = [f"total {total} bytes"]
        lines += [str(stat) for stat in stats[:top]]
        return ("\n".join(lines) + "\n").encode()


class Stats(Resource):
    isLeaf = True

    def __init__(self, peer: Peer) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.peer = peer

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        clients = self.peer.broadcaster.clients()
        return b'{"clients": %d, "seq": %d}' % (clients, self.peer.seq)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The library logs each stream's opening and end.  Until logging begins,
    # Twisted keeps the last 65536 log events in memory, which would count
    # as RSS per connection; a real server logs somewhere, this one nowhere.
    globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)
    broadcaster: Broadcaster = (
        HubBroadcaster(args.broker, args.redis_url)
        if args.via == "hub"
        else StreamBroadcaster()
    )
    peer = Peer(args, broadcaster)
    root = Resource()
    root.putChild(b"events", broadcaster.resource())
    root.putChild(b"publish", Publish(peer))
    root.putChild(b"stats", Stats(peer))
    site = Site(root)
    site.displayTracebacks = False
    site.noisy = False
    reactor.callLater(args.max_lifetime, reactor.stop)

    def listen() -> None:
        if os.environ.get("SSE_TRACEMALLOC") == "1":
            tracemalloc.start()
            root.putChild(b"tracemalloc", Memory(tracemalloc.take_snapshot()))
        port = reactor.listenTCP(
            args.port,
            site,  # type: ignore[arg-type]
            backlog=args.backlog,
            interface=args.host,
        )
        if args.autostart:
            peer.busy = True

            def report(body: bytes) -> None:
                peer.busy = False
                print(body.decode(), flush=True)

            peer.publish_run(args.count, args.rate, args.size, args.duration, report)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        label = args.via + (f"/{args.broker}" if args.via == "hub" else "")
        where = f"{args.host}:{address.port}"
        print(f"twisted_sse peer ({label}) listening on {where}", flush=True)

    def when_ready(deadline: float) -> None:
        # Listen only once the broker is connected, so that the harness's
        # readiness poll of /stats means "ready to serve".
        if broadcaster.ready():
            listen()
        elif time.monotonic() > deadline:
            print("the broker did not become available", file=sys.stderr)
            reactor.stop()
        else:
            reactor.callLater(0.05, when_ready, deadline)

    reactor.callWhenRunning(when_ready, time.monotonic() + 20)
    reactor.run()


if __name__ == "__main__":
    main()
