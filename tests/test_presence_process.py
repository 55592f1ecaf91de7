"""
Presence across two ``twistd -n sse --broker redis://...`` processes
sharing one Redis: subscribers joining and leaving on either are counted
and told on both, a process stopped cleanly says goodbye at once, and one
killed with SIGKILL drops out of every count when its lease ends.

They use the shared Redis on 127.0.0.1:6379 (database 13, channel names of
their own, whose presence keys expire on their own); without one they are
skipped, and with ``TWISTED_SSE_REQUIRE_REDIS=1`` (as in CI) a missing
Redis fails them.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from twisted.trial.unittest import SynchronousTestCase

from . import _redis_tools as tools
from ._http import SocketClient, http_request
from ._process import Twistd, start_healthy

pytestmark = pytest.mark.slow

SECRET = "a-presence-secret-of-at-least-32-bytes"
BROKER = f"redis://{tools.REDIS_HOST}:{tools.REDIS_PORT}/{tools.REDIS_DB}"
#: How long a change may take to be seen everywhere before the test gives
#: up: far above what it takes (about a second), to stay clear of a busy
#: machine.
SEEN = 15.0
#: How long a killed process may stay counted: its lease (15 s) and a
#: renewal period, with room to spare.
LEASE_END = 45.0


def token(sub: str) -> str:
    return jwt.encode(
        {"sub": sub, "sse": {"subscribe": ["*"]}}, SECRET, algorithm="HS256"
    )


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Ask ``check`` until it answers something true, for ``timeout`` at most."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


class PresenceAcrossProcessesTests(SynchronousTestCase):
    """Two processes on one Redis answer presence as one server."""

    def setUp(self) -> None:
        tools.require(self)
        self.channel = f"room-{uuid.uuid4().hex[:12]}"
        self.a = self.start()
        self.b = self.start()

    def start(self) -> Twistd:
        return start_healthy(
            self,
            "--broker",
            BROKER,
            "--drain",
            "0",
            env={"TWISTED_SSE_JWT_SECRET": SECRET},
            wait=15,
        )

    def presence(self, server: Twistd) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/presence/{self.channel}",
            headers={"Authorization": f"Bearer {token('reader')}"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            body: dict[str, Any] = json.loads(answer.read())
            return body

    def members(self, server: Twistd) -> tuple[int, dict[str, int]]:
        body = self.presence(server)
        return body["count"], {m["sub"]: m["connections"] for m in body["members"]}

    def subscribe(self, server: Twistd, sub: str, follow: bool = False) -> SocketClient:
        query = "?presence=1" if follow else ""
        response = SocketClient(
            server.port,
            http_request(
                f"/channels/{self.channel}{query}",
                f"Authorization: Bearer {token(sub)}",
            ),
        )
        self.addCleanup(response.close)
        self.assertEqual(response.code, 200)
        response.read_frame()
        return response

    def told(self, response: SocketClient) -> list[tuple[str, Any]]:
        return [
            (event.type, json.loads(event.data))
            for event in response.events
            if event.type in ("presence", "join", "leave")
        ]

    def wait_told(
        self, response: SocketClient, kind: str, sub: str, timeout: float = SEEN
    ) -> None:
        wanted = (kind, {"channel": self.channel, "sub": sub})
        response.wait_for(lambda r: wanted in self.told(r), timeout)
        self.assertIn(wanted, self.told(response))

    def wait_members(
        self, expected: tuple[int, dict[str, int]], timeout: float = SEEN
    ) -> None:
        for server in (self.a, self.b):
            eventually(
                lambda server=server: self.members(server) == expected,  # type: ignore[misc]
                timeout,
                f"{expected} on port {server.port}, not {self.members(server)}",
            )

    def test_join_leave_and_kill(self) -> None:
        """
        Joins and leaves on either process reach a follower on the other
        and the counts of both; a process stopped cleanly is gone at once,
        one killed when its lease ends, with a leave for its identities.
        """
        watcher = self.subscribe(self.a, "alice", follow=True)
        watcher.wait_for(lambda r: bool(self.told(r)), SEEN)
        self.assertEqual(
            self.told(watcher),
            [
                (
                    "presence",
                    {
                        "channel": self.channel,
                        "count": 1,
                        "members": [{"sub": "alice", "connections": 1}],
                    },
                )
            ],
        )
        bob = self.subscribe(self.b, "bob")
        self.subscribe(self.b, "bob")
        self.wait_told(watcher, "join", "bob")
        self.wait_members((3, {"alice": 1, "bob": 2}))

        bob.close()
        self.wait_members((2, {"alice": 1, "bob": 1}))
        self.assertNotIn(
            ("leave", {"channel": self.channel, "sub": "bob"}), self.told(watcher)
        )

        carol = self.subscribe(self.b, "carol")
        self.wait_told(watcher, "join", "carol")
        self.wait_members((3, {"alice": 1, "bob": 1, "carol": 1}))
        del carol

        # Killed: no goodbye; its lease runs out.
        self.b.stop()
        self.wait_told(watcher, "leave", "carol", timeout=LEASE_END)
        self.wait_told(watcher, "leave", "bob", timeout=SEEN)
        self.assertEqual(self.members(self.a), (1, {"alice": 1}))

    def test_clean_stop(self) -> None:
        """A process stopped with SIGTERM takes its connections away at once."""
        watcher = self.subscribe(self.a, "alice", follow=True)
        self.subscribe(self.b, "dave")
        self.wait_told(watcher, "join", "dave")
        self.b.terminate()
        # Well before its lease (15 s) would end.
        self.wait_told(watcher, "leave", "dave", timeout=10)
        self.assertEqual(self.members(self.a), (1, {"alice": 1}))
