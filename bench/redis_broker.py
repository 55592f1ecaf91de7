"""
The Redis broker on its own, against a private ``redis-server`` on a free
port (127.0.0.1, no persistence):

* cross-process latency: broker A publishes one event every 2 ms, broker B
  (its own two connections, as another process would have) delivers it;
  time from ``publish()`` to B's subscriber, p50 / p99;
* publish throughput: ``XADD``\\ s per second with 500 in flight;
* replay: a 10 000-event resume (``Last-Event-ID`` of the first event);
* local fan-out: one event to 1 000 local subscribers of one process.

Run from the repository root, in the README's virtualenv::

    python bench/redis_broker.py
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater, react

from twisted_sse import Event, RedisAddress, RedisBroker
from twisted_sse._broker import Published


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def wait(reactor: Any, *brokers: RedisBroker) -> None:
    while not all(broker.available for broker in brokers):
        await deferLater(reactor, 0.01, lambda: None)


async def bench(reactor: Any, port: int) -> dict[str, float]:
    address = RedisAddress("127.0.0.1", port)
    a = RedisBroker(reactor, address, history=100_000)
    b = RedisBroker(reactor, address, history=100_000)
    a.startService()
    b.startService()
    await wait(reactor, a, b)
    results: dict[str, float] = {}

    # Cross-process latency.
    sent: dict[str, float] = {}
    latencies: list[float] = []
    arrived: dict[str, float] = {}

    def on_b(published: Published) -> None:
        arrived[published.id] = time.perf_counter()

    await b.subscribe("latency", on_b)
    for n in range(1000):
        started = time.perf_counter()
        event_id = await a.publish("latency", Event(data=f"event {n}"))
        sent[event_id] = started
        await deferLater(reactor, 0.002, lambda: None)
    await deferLater(reactor, 0.2, lambda: None)
    latencies = [(arrived[i] - sent[i]) * 1000 for i in sent if i in arrived]
    results["cross_process_latency_p50_ms"] = percentile(latencies, 0.5)
    results["cross_process_latency_p99_ms"] = percentile(latencies, 0.99)
    results["cross_process_delivered"] = len(latencies)

    # Publish throughput.
    started = time.perf_counter()
    first = ""
    for _ in range(20):
        ids = await gatherResults(
            [a.publish("throughput", Event(data="x" * 64)) for _ in range(500)]
        )
        first = first or ids[0]
    results["publish_per_s"] = 10_000 / (time.perf_counter() - started)

    # Replay.
    # The replay is paced: the Deferred fires after its first page, and the
    # rest follows page by page; the time is until the last event is in.
    replayed: list[Published] = []
    done: Deferred[None] = Deferred()

    def take(published: Published) -> None:
        replayed.append(published)
        if len(replayed) == 9999:
            done.callback(None)

    started = time.perf_counter()
    subscription = await b.subscribe("throughput", take, first)
    await done
    results["replay_9999_s"] = time.perf_counter() - started
    assert subscription.replayed == 9999
    subscription.cancel()

    # Local fan-out to 1000 subscribers.
    counts = [0]

    def count(published: Published) -> None:
        counts[0] += 1

    for _ in range(1000):
        await b.subscribe("fanout", count)
    started = time.perf_counter()
    for _ in range(100):
        await a.publish("fanout", Event(data="y"))
    while counts[0] < 100_000:
        await deferLater(reactor, 0.001, lambda: None)
    results["fanout_1000_subscribers_events_per_s"] = 100 / (
        time.perf_counter() - started
    )

    await a.stop()
    await b.stop()
    return results


def main() -> None:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is needed")
    port = free_port()
    directory = tempfile.mkdtemp(prefix="bench-redis-")
    process = subprocess.Popen(
        [
            *(server, "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", directory),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)

        async def run(reactor: Any) -> None:
            results = await Deferred.fromCoroutine(bench(reactor, port))
            print(json.dumps({k: round(v, 3) for k, v in results.items()}))

        react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
