"""
A real Sentinel topology (a primary, a replica, three sentinels, each a
private process on a free port) and a real ``twistd sse --broker
redis+sentinel://...``: the primary is SIGKILLed while events are
published and two subscribers read them.  Every acknowledged event reaches
each subscriber exactly once, or a ``history-lost`` tells it that some may
be missing; publishes in the gap get 503; after the failover publishing
works again and ``/healthz`` names the new primary.  Some seconds
(``-m slow``).
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import MessageEvent

from . import _redis_tools as tools
from ._http import SocketClient, http_request
from ._process import Twistd, start_healthy

pytestmark = pytest.mark.slow

TOKEN = "sentinel-test-token"
#: Publishes on their way at once.
PARALLEL = 8
CHANNEL = "failover"


class Subscriber:
    """
    One client of the channel: reconnects with its Last-Event-ID when the
    server ends its stream, and keeps every event it got.
    """

    def __init__(self, port: int, channel: str = CHANNEL) -> None:
        self.port = port
        self.channel = channel
        self.events: list[MessageEvent] = []
        self.reconnects = 0
        self.response = self._connect("")

    def _connect(self, last_event_id: str) -> SocketClient:
        headers = [f"Last-Event-ID: {last_event_id}"] if last_event_id else []
        return SocketClient(
            self.port,
            http_request(f"/channels/{self.channel}", *headers),
            last_event_id=last_event_id,
        )

    def read(self, until: float) -> None:
        """Read what comes before ``until`` (a monotonic time)."""
        response = self.response
        with contextlib.suppress(AssertionError):
            # Reads until the time is up (or the stream ends).
            response.wait_for(lambda r: False, max(0.01, until - time.monotonic()))
        self.events.extend(response.events)
        response.events.clear()
        if response.closed or response.code != 200:
            # Sent away (a retry) or cut: come back where it left off.
            self.reconnects += 1
            response.sock.close()
            time.sleep(0.2)
            try:
                self.response = self._connect(response.parser.last_event_id)
            except (OSError, AssertionError):
                self.response = response  # read again; the server may be busy

    def close(self) -> None:
        self.response.sock.close()


class SentinelFailoverTests(SynchronousTestCase):
    """A primary SIGKILLed under load: nothing acknowledged is lost silently."""

    def setUp(self) -> None:
        tools.need(tools.server_unavailable_reason())
        self.topology = tools.SentinelTopology().start()
        self.addCleanup(self.topology.stop)

    def start(self, *options: str) -> Twistd:
        return start_healthy(
            self,
            "--broker",
            self.topology.url(),
            "--publish-token",
            TOKEN,
            "--drain",
            "0",
            *options,
            wait=20,
        )

    def publish(self, server: Twistd, data: str) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/channels/{CHANNEL}",
            data=data.encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())["id"]
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Retry-After")

    def healthz(self, server: Twistd) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{server.port}/healthz", timeout=5
            ) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def test_primary_killed_under_load(self) -> None:
        """
        SIGKILL the primary between publishes: each acknowledged id is
        delivered once to every subscriber, or a history-lost is.
        """
        server = self.start()
        code, health = self.healthz(server)
        self.assertEqual(code, 200)
        old_primary = f"127.0.0.1:{self.topology.primary.port}"
        self.assertEqual(health["redis"]["primary"], old_primary)
        subscribers = [Subscriber(server.port) for _ in range(2)]
        for subscriber in subscribers:
            self.addCleanup(subscriber.close)
            subscriber.response.read_frame()  # live

        acknowledged: list[str] = []
        refused: list[int] = []
        killed_at = None
        number = 0
        deadline = time.monotonic() + 40
        publishers = ThreadPoolExecutor(max_workers=PARALLEL)
        self.addCleanup(publishers.shutdown)
        # Publish, PARALLEL at a time, until 20 events after the kill are
        # acknowledged; the kill comes while a batch is on its way.
        while time.monotonic() < deadline:
            batch = [
                publishers.submit(self.publish, server, f"event {number + n}")
                for n in range(PARALLEL)
            ]
            number += PARALLEL
            if killed_at is None and len(acknowledged) >= 40:
                self.topology.primary.kill()
                killed_at = len(acknowledged)
            answers = [future.result() for future in batch]
            for code, answer in answers:
                if code == 200:
                    acknowledged.append(answer)
                else:
                    self.assertEqual(code, 503, answer)
                    refused.append(number)
            if any(code != 200 for code, _ in answers):
                time.sleep(0.1)
            for subscriber in subscribers:
                subscriber.read(time.monotonic() + 0.005)
            if killed_at is not None and len(acknowledged) >= killed_at + 20:
                break
        self.assertIsNotNone(killed_at, "the primary was never killed")
        assert killed_at is not None
        self.assertGreaterEqual(
            len(acknowledged), killed_at + 20, "publishing never worked again"
        )
        self.assertTrue(refused, "no publish was refused during the failover")

        # Every subscriber catches up to the last acknowledged events.
        last = acknowledged[-PARALLEL:]
        for subscriber in subscribers:
            catch_up = time.monotonic() + 20
            while time.monotonic() < catch_up and not set(last) <= {
                event.last_event_id for event in subscriber.events
            }:
                subscriber.read(time.monotonic() + 0.2)

        for subscriber in subscribers:
            ids = [
                event.last_event_id
                for event in subscriber.events
                if event.type == "message"
            ]
            lost = [e for e in subscriber.events if e.type == "history-lost"]
            self.assertEqual(len(ids), len(set(ids)), "an event came twice")
            self.assertLessEqual(set(last), set(ids))
            missing = [event_id for event_id in acknowledged if event_id not in ids]
            if missing:
                self.assertTrue(
                    lost, f"{len(missing)} acknowledged events lost silently"
                )

        code, health = self.healthz(server)
        self.assertEqual(code, 200)
        self.assertEqual(
            health["redis"]["primary"], f"127.0.0.1:{self.topology.replica.port}"
        )
        self.assertEqual(health["redis"]["failovers"], 1)
