"""
Idempotent publishing across two ``twistd -n sse --broker redis://...``
processes sharing one Redis: the same ``Idempotency-Key`` POSTed to both
at once, many times, is published once, every answer naming its id, and
subscribers on both receive it exactly once.

They use the shared Redis on 127.0.0.1:6379 (database 13, channel names of
their own); without one they are skipped, and with
``TWISTED_SSE_REQUIRE_REDIS=1`` (as in CI) a missing Redis fails them.
"""

from __future__ import annotations

import json
import threading
import urllib.request
import uuid

import pytest
from twisted.trial.unittest import SynchronousTestCase

from . import _redis_tools as tools
from ._http import SocketClient, http_request
from ._process import Twistd, start_healthy

pytestmark = pytest.mark.slow

TOKEN = "idempotency-process-token"
BROKER = f"redis://{tools.REDIS_HOST}:{tools.REDIS_PORT}/{tools.REDIS_DB}"
#: Publishes of each key, spread over both processes, all at once.
REPEATS = 16


class IdempotencyAcrossProcessesTests(SynchronousTestCase):
    """Two processes on one Redis publish a key once between them."""

    def setUp(self) -> None:
        tools.require(self)
        self.channel = f"idem-{uuid.uuid4().hex[:12]}"
        self.addCleanup(
            tools.command,
            tools.REDIS_PORT,
            "DEL",
            f"sse:{self.channel}",
            f"sse:{self.channel}#epoch",
            host=tools.REDIS_HOST,
            db=tools.REDIS_DB,
        )
        options = ("--broker", BROKER, "--publish-token", TOKEN, "--drain", "0")
        self.servers = [
            start_healthy(self, *options, wait=15),
            start_healthy(self, *options, wait=15),
        ]

    def post(self, server: Twistd, key: str, data: str) -> tuple[int, str, str]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/channels/{self.channel}",
            data=data.encode(),
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": "text/plain",
                "Idempotency-Key": key,
            },
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=15) as answer:
            replayed = answer.headers.get("Idempotency-Replayed") or ""
            return answer.status, json.loads(answer.read())["id"], replayed

    def subscribe(self, server: Twistd) -> SocketClient:
        response = SocketClient(server.port, http_request(f"/channels/{self.channel}"))
        self.addCleanup(response.close)
        self.assertEqual(response.code, 200)
        response.read_frame()
        return response

    def test_same_key_at_once_on_both(self) -> None:
        """
        Each key, POSTed 16 times at once over both processes, gets one id
        in every answer, all but one of them replays, and each subscriber
        receives each key's event once.
        """
        subscribers = [self.subscribe(server) for server in self.servers]
        keys = [f"order-{n}" for n in range(3)]
        answers: dict[str, list[tuple[int, str, str]]] = {key: [] for key in keys}
        errors: list[BaseException] = []
        start = threading.Barrier(REPEATS * len(keys))

        def publish(server: Twistd, key: str) -> None:
            try:
                start.wait(timeout=30)
                answers[key].append(self.post(server, key, f"event of {key}"))
            except BaseException as error:  # reported below
                errors.append(error)

        threads = [
            threading.Thread(
                target=publish, args=(self.servers[n % 2], key), daemon=True
            )
            for key in keys
            for n in range(REPEATS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        self.assertEqual(errors, [])
        ids = {}
        for key in keys:
            got = answers[key]
            self.assertEqual(len(got), REPEATS)
            self.assertEqual({status for status, _, _ in got}, {200})
            self.assertEqual(len({event_id for _, event_id, _ in got}), 1, got)
            self.assertEqual(
                sorted(replayed for _, _, replayed in got),
                [""] + ["true"] * (REPEATS - 1),
            )
            ids[got[0][1]] = f"event of {key}"
        # One more publish without a key marks the end of the stream.
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.servers[0].port}/channels/{self.channel}",
            data=b"end",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=15).close()
        for subscriber in subscribers:
            subscriber.wait_for(
                lambda r: any(e.data == "end" for e in r.events), timeout=15
            )
            received = [
                (event.last_event_id, event.data)
                for event in subscriber.events
                if event.data != "end"
            ]
            self.assertEqual(len(received), len(keys), received)
            self.assertEqual(dict(received), ids)
