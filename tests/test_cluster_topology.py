"""
A real Redis Cluster (three primaries, private processes on free ports)
and two real ``twistd sse --broker redis+cluster://...`` processes: 30
channels spread over the three primaries, subscribed on one process and
published on the other, arrive exactly; repeats of an ``Idempotency-Key``
at once on both processes publish once; ``/healthz`` reports the slots
covered; a pattern is refused with a reason (``-m slow``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._redis._cluster import key_slot

from . import _redis_tools as tools
from ._http import SocketClient, http_request
from ._process import Twistd, start_healthy
from .test_sentinel_topology import Subscriber

pytestmark = pytest.mark.slow

TOKEN = "cluster-test-token"
CHANNELS = [f"room{n}" for n in range(30)]


class _OnCluster(SynchronousTestCase):
    """
    A private cluster (``topology_options`` for ``ClusterTopology``), and
    ``twistd sse`` processes on it, with a publisher's and a reader's calls.
    """

    topology_options: dict[str, Any] = {}

    def setUp(self) -> None:
        tools.need(tools.server_unavailable_reason())
        self.topology = tools.ClusterTopology(**self.topology_options).start()
        self.addCleanup(self.topology.stop)

    def start(self) -> Twistd:
        return start_healthy(
            self,
            "--broker",
            self.topology.url(),
            "--publish-token",
            TOKEN,
            "--drain",
            "0",
            wait=20,
        )

    def publish(
        self, server: Twistd, channel: str, data: str, key: str | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}
        if key is not None:
            headers["Idempotency-Key"] = key
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/channels/{channel}",
            data=data.encode(),
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                body = json.loads(answer.read())
                return answer.status, body["id"], dict(answer.headers)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read()), dict(error.headers)

    def get(self, server: Twistd, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{server.port}{path}", timeout=5
            ) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


class ClusterProcessTests(_OnCluster):
    """Two processes on one cluster."""

    def setUp(self) -> None:
        super().setUp()
        self.a = self.start()
        self.b = self.start()

    def test_channels_across_processes(self) -> None:
        """
        Subscribers on A of 30 channels over three primaries get, exactly
        and in order, what B publishes on them, interleaved.
        """
        owners = {self.topology.owner(key_slot(f"sse:{{{c}}}")) for c in CHANNELS}
        self.assertEqual(owners, set(self.topology.primaries()))
        streams = {
            channel: SocketClient(self.a.port, http_request(f"/channels/{channel}"))
            for channel in CHANNELS
        }
        for stream in streams.values():
            self.addCleanup(stream.sock.close)
            stream.read_frame()  # the retry: live
        sent: dict[str, list[str]] = {channel: [] for channel in CHANNELS}
        with ThreadPoolExecutor(max_workers=6) as pool:
            for round_ in range(4):
                answers = pool.map(
                    lambda c, n=round_: (c, self.publish(self.b, c, f"{c} {n}")),
                    CHANNELS,
                )
                for channel, (code, event_id, _) in answers:
                    self.assertEqual(code, 200, event_id)
                    sent[channel].append(event_id)
        for channel, stream in streams.items():
            stream.wait_for(lambda s: len(s.events) >= 4)
            time.sleep(0.01)
            self.assertEqual([e.last_event_id for e in stream.events], sent[channel])
            self.assertEqual(
                [e.data for e in stream.events], [f"{channel} {n}" for n in range(4)]
            )

    def test_idempotency_on_two_processes(self) -> None:
        """The same Idempotency-Key sent at once on A and B publishes once."""
        stream = SocketClient(self.a.port, http_request("/channels/orders"))
        self.addCleanup(stream.sock.close)
        stream.read_frame()
        with ThreadPoolExecutor(max_workers=8) as pool:
            for round_ in range(5):
                key = f"order-{round_}"
                answers = list(
                    pool.map(
                        lambda server, k=key: self.publish(server, "orders", k, k),
                        [self.a, self.b] * 4,
                    )
                )
                self.assertEqual({code for code, _, _ in answers}, {200})
                self.assertEqual(len({event_id for _, event_id, _ in answers}), 1)
                replayed = [
                    headers.get("Idempotency-Replayed") for _, _, headers in answers
                ]
                self.assertEqual(replayed.count("true"), 7)
        stream.wait_for(lambda s: len(s.events) >= 5)
        time.sleep(0.3)
        stream.wait_for(lambda s: True, 0.1)
        self.assertEqual(
            [e.data for e in stream.events], [f"order-{n}" for n in range(5)]
        )

    def test_healthz_and_metrics(self) -> None:
        """/healthz tells every slot covered and the three primaries up."""
        code, health = self.get(self.a, "/healthz")
        self.assertEqual(code, 200)
        redis = health["redis"]
        self.assertEqual(redis["mode"], "cluster")
        self.assertEqual(redis["slots_covered"], 16384)
        self.assertEqual(
            sorted(node["address"] for node in redis["nodes"]),
            sorted(f"127.0.0.1:{port}" for port in self.topology.primaries()),
        )
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.a.port}/metrics", timeout=5
        ) as answer:
            text = answer.read().decode()
        self.assertIn("sse_redis_redirections_total", text)
        self.assertIn("sse_publish_unavailable_total", text)

    def test_pattern_refused(self) -> None:
        """/subscribe with a pattern gets a 4xx naming the reason."""
        stream = SocketClient(
            self.a.port, http_request("/subscribe?channel=news.*"), timeout=5
        )
        self.addCleanup(stream.sock.close)
        self.assertEqual(stream.code, 400)
        stream.wait_for(lambda s: s.complete)
        self.assertIn(b"Redis Cluster", stream.body)


class ClusterFailoverTests(_OnCluster):
    """A primary of a cluster with replicas SIGKILLed under load."""

    topology_options = {"replicas": 1, "node_timeout_ms": 1000}

    def test_primary_killed_under_load(self) -> None:
        """
        SIGKILL the primary of a channel while it is published on: each
        acknowledged id reaches every subscriber once, or a history-lost
        does; publishes in the gap get 503; the replica takes over.
        """
        server = self.start()
        channel = "failover"
        slot = key_slot(f"sse:{{{channel}}}")
        victim = self.topology.owner(slot)
        subscribers = [Subscriber(server.port, channel) for _ in range(2)]
        for subscriber in subscribers:
            self.addCleanup(subscriber.close)
            subscriber.response.read_frame()

        acknowledged: list[str] = []
        refused = 0
        killed_at = None
        deadline = time.monotonic() + 60
        number = 0
        with ThreadPoolExecutor(max_workers=4) as pool:
            while time.monotonic() < deadline:
                batch = [
                    pool.submit(self.publish, server, channel, f"event {number + n}")
                    for n in range(4)
                ]
                number += 4
                if killed_at is None and len(acknowledged) >= 40:
                    for node in self.topology.nodes:
                        if node.port == victim:
                            node.kill()
                    killed_at = len(acknowledged)
                answers = [future.result() for future in batch]
                for code, answer, headers in answers:
                    if code == 200:
                        acknowledged.append(answer)
                    else:
                        self.assertEqual(code, 503, answer)
                        self.assertEqual(headers.get("Retry-After"), "1")
                        refused += 1
                if any(code != 200 for code, _, _ in answers):
                    time.sleep(0.1)
                for subscriber in subscribers:
                    subscriber.read(time.monotonic() + 0.005)
                if killed_at is not None and len(acknowledged) >= killed_at + 20:
                    break
        self.assertIsNotNone(killed_at)
        assert killed_at is not None
        self.assertGreaterEqual(len(acknowledged), killed_at + 20)
        self.assertTrue(refused, "no publish was refused during the failover")
        self.assertNotEqual(self.topology.owner(slot), victim)

        last = acknowledged[-4:]
        for subscriber in subscribers:
            catch_up = time.monotonic() + 20
            while time.monotonic() < catch_up and not set(last) <= {
                event.last_event_id for event in subscriber.events
            }:
                subscriber.read(time.monotonic() + 0.2)
        for subscriber in subscribers:
            ids = [e.last_event_id for e in subscriber.events if e.type == "message"]
            lost = [e for e in subscriber.events if e.type == "history-lost"]
            self.assertEqual(len(ids), len(set(ids)), "an event came twice")
            self.assertLessEqual(set(last), set(ids))
            missing = [event_id for event_id in acknowledged if event_id not in ids]
            if missing:
                self.assertTrue(lost, f"{len(missing)} acknowledged events lost")

        code, health = self.get(server, "/healthz")
        self.assertEqual(code, 200)
        self.assertEqual(health["redis"]["slots_covered"], 16384)
