"""
The Redis broker on a real Redis Cluster of three primaries (private
processes on free ports, one cluster for the module, each test with a key
prefix of its own): channels spread over every primary, exact streams
across brokers, resume, history bounds, channel expiry, idempotency,
presence, a slot moved under a live channel, and patterns refused with a
reason (``-m slow``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList

from twisted_sse import Event, RedisBroker, parse_redis_url
from twisted_sse._redis._cluster import key_slot

from . import _helpers
from . import _redis_tools as tools
from ._helpers import sleep, until
from .test_redis import Collector
from .test_redis_topologies import Topology, brokers, ready

pytestmark = pytest.mark.slow

__all__ = ["brokers"]


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    """Three primaries, for every test of the module."""
    tools.need(tools.server_unavailable_reason())
    running = Topology("cluster")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def cluster(topology: Topology) -> tools.ClusterTopology:
    assert topology.cluster is not None
    return topology.cluster


def command(cluster: tools.ClusterTopology, key: str, *args: Any) -> Any:
    """A command about ``key``, sent to the primary that owns it."""
    return tools.command(cluster.owner(key_slot(key)), *args)


@pytest_twisted.ensureDeferred
async def test_channels_on_every_primary(
    cluster: tools.ClusterTopology, brokers: Any
) -> None:
    """
    30 channels land on all three primaries; what one broker publishes,
    interleaved over them, reaches the subscribers of another exactly.
    """
    a, b = brokers(), brokers()
    await ready(a, b)
    channels = [f"room{n}" for n in range(30)]
    owners = {cluster.owner(key_slot(a.key(channel))) for channel in channels}
    assert len(owners) == 3
    assert set(owners) == set(cluster.primaries())
    got = {channel: Collector() for channel in channels}
    for channel in channels:
        await a.subscribe(channel, got[channel])
    sent: dict[str, list[str]] = {channel: [] for channel in channels}
    for round_ in range(5):
        ids = await DeferredList(
            [b.publish(c, Event(data=f"{c} {round_}")) for c in channels],
            fireOnOneErrback=True,
            consumeErrors=True,
        )
        for channel, (_, event_id) in zip(channels, ids, strict=True):
            sent[channel].append(event_id)
    for channel in channels:
        await got[channel].wait(5)
    await sleep(0.2)
    for channel in channels:
        assert got[channel].ids == sent[channel]
        assert got[channel].data == [f"{channel} {n}" for n in range(5)]
    # The keys of a channel share its slot: the stream, the epoch.
    key = a.key("room0")
    assert key == a.prefix + "{room0}"
    assert key_slot(a.epoch_key("room0")) == key_slot(key)
    assert command(cluster, key, "TYPE", key) in ("stream", b"stream")


@pytest_twisted.ensureDeferred
async def test_slot_moved_under_a_live_channel(
    cluster: tools.ClusterTopology, brokers: Any
) -> None:
    """
    The slot of a channel moves to another primary, step by step, while
    it is published on and read: every event arrives once, in order, and
    the redirections are followed.
    """
    a, b = brokers(), brokers()
    await ready(a, b)
    got = Collector()
    await a.subscribe("moving", got)
    slot = key_slot(a.key("moving"))
    source = cluster.owner(slot)
    target = next(port for port in cluster.primaries() if port != source)
    ids = [await b.publish("moving", Event(data=str(n))) for n in range(20)]
    migration = cluster.migration(slot, target, batch=1)
    migration.begin()
    reactor = _helpers.global_reactor()
    finished = []

    def step() -> None:
        # One key at a time: between steps, a script on the channel's two
        # keys finds one moved (TRYAGAIN), then both (ASK), then MOVED.
        if migration.step():
            reactor.callLater(0.1, step)
        else:
            migration.finish()
            finished.append(True)

    reactor.callLater(0.1, step)
    for n in range(20, 60):
        ids.append(await b.publish("moving", Event(data=str(n))))
        await sleep(0.02)
    await until(lambda: finished, "the migration")
    await got.wait(60, timeout=20)
    await sleep(0.3)
    assert got.ids == ids
    assert cluster.owner(slot) == target
    assert migration.moved == 2
    assert (b.redirections or 0) > 0
    # The reader follows the channel on its new node.
    more = await b.publish("moving", Event(data="60"))
    await got.wait(61)
    assert got.ids[-1] == more


@pytest_twisted.ensureDeferred
async def test_patterns_refused(brokers: Any) -> None:
    """A pattern is refused with a reason: no publish log on a cluster."""
    a = brokers()
    await ready(a)
    with pytest.raises(ValueError, match="Redis Cluster"):
        await a.watch("news.", lambda *_: None)


@pytest_twisted.ensureDeferred
async def test_topology(cluster: tools.ClusterTopology, brokers: Any) -> None:
    """The broker reports every slot covered and each primary up."""
    a = brokers()
    await ready(a)
    state = a.topology()
    assert state is not None
    assert state["mode"] == "cluster"
    assert state["slots_covered"] == 16384
    assert sorted(node["address"] for node in state["nodes"]) == sorted(
        f"127.0.0.1:{port}" for port in cluster.primaries()
    )
    assert all(node["up"] for node in state["nodes"])


@pytest_twisted.ensureDeferred
async def test_tls(tmp_path: Path) -> None:
    """
    rediss+cluster:// speaks TLS to every primary the map names (their TLS
    ports, their certificate checked): events cross brokers on all three.
    """
    tools.need(tools.server_unavailable_reason())
    from ._certs import self_signed

    key, certificate = self_signed(tmp_path)
    with tools.ClusterTopology(tls=(str(key), str(certificate))) as tls_cluster:
        reactor = _helpers.global_reactor()
        address = parse_redis_url(tls_cluster.tls_url(str(certificate)))
        assert address.tls
        a, b = RedisBroker(reactor, address), RedisBroker(reactor, address)
        a.startService()
        b.startService()
        try:
            await ready(a, b)
            state = a.topology()
            assert state is not None
            tls_ports = {node.tls_port for node in tls_cluster.nodes}
            assert {int(n["address"].rpartition(":")[2]) for n in state["nodes"]} <= (
                tls_ports
            )
            channels = ["room0", "room1", "room2", "room3", "room5"]
            owners = {tls_cluster.owner(key_slot(a.key(c))) for c in channels}
            assert len(owners) == 3
            got = {channel: Collector() for channel in channels}
            for channel in channels:
                await b.subscribe(channel, got[channel])
            sent = {c: await a.publish(c, Event(data=c)) for c in channels}
            for channel in channels:
                await got[channel].wait(1)
                assert got[channel].ids == [sent[channel]]
        finally:
            await a.stop()
            await b.stop()
