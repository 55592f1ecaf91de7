"""
Two ``twistd -n sse --broker redis://...`` processes sharing one Redis, as
behind a load balancer: a client on one receives what is published on the
other, and resumes on the other after losing the first, missing nothing.

They use the shared Redis on 127.0.0.1:6379 (database 13, a channel name of
their own, deleted afterwards); without one they are skipped, and with
``TWISTED_SSE_REQUIRE_REDIS=1`` (as in CI) a missing Redis fails them.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import MessageEvent

from . import _redis_tools as tools
from ._http import SocketClient, http_request
from ._process import USAGE_EXITS_NONZERO, Twistd, run_twistd, start_healthy

TOKEN = "process-test-token"
BROKER = f"redis://{tools.REDIS_HOST}:{tools.REDIS_PORT}/{tools.REDIS_DB}"


class EventReader:
    """The events of one SSE response, read as they arrive."""

    def __init__(self, response: SocketClient) -> None:
        self.response = response

    def events(self, count: int, timeout: float = 10.0) -> list[MessageEvent]:
        """Read until ``count`` events (comments and ids alone do not count)."""
        self.response.wait_for(lambda response: len(response.events) >= count, timeout)
        return self.response.events


class TwoProcessesTests(SynchronousTestCase):
    """Two twistd sse processes on one Redis act as one server."""

    def setUp(self) -> None:
        reason = tools.unavailable_reason()
        if reason is not None:
            if tools.required():
                self.fail(f"{reason}, and TWISTED_SSE_REQUIRE_REDIS=1")
            self.skipTest(reason)
        self.channel = f"proc-{uuid.uuid4().hex[:12]}"
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
        self.a = self.start(*options)
        self.b = self.start(*options)

    def start(self, *options: str) -> Twistd:
        return start_healthy(self, *options, wait=15)

    def publish(self, server: Twistd, data: str) -> str:
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/channels/{self.channel}",
            data=data.encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            event_id: str = json.loads(answer.read())["id"]
            return event_id

    def subscribe(
        self, server: Twistd, last_event_id: str | None = None
    ) -> EventReader:
        headers = [f"Last-Event-ID: {last_event_id}"] if last_event_id else []
        response = SocketClient(
            server.port, http_request(f"/channels/{self.channel}", *headers)
        )
        self.addCleanup(response.close)
        self.assertEqual(response.code, 200)
        return EventReader(response)

    def test_fan_out_and_resume_elsewhere(self) -> None:
        """Published on B, seen on A; A dies; resumed on B with nothing lost."""
        on_a = self.subscribe(self.a)
        # The first frame gives the channel's position at once: an empty
        # channel's, in its epoch.
        first = on_a.response.read_frame()
        self.assertRegex(first, rb"\Aretry: 1000\nid: [0-9a-z]+:0-0\n\n\Z")
        ids = [self.publish(self.b, "one"), self.publish(self.a, "two")]
        seen = on_a.events(2)
        self.assertEqual([e.data for e in seen], ["one", "two"])
        self.assertEqual(seen[-1].last_event_id, ids[1])

        self.a.stop()  # SIGKILL: the client loses its stream.
        self.assertTrue(on_a.response.at_eof())
        ids += [self.publish(self.b, "three"), self.publish(self.b, "four")]

        on_b = self.subscribe(self.b, last_event_id=seen[-1].last_event_id)
        ids.append(self.publish(self.b, "five"))
        resumed = on_b.events(3)
        self.assertEqual([e.data for e in resumed], ["three", "four", "five"])
        self.assertEqual([e.last_event_id for e in resumed], ids[2:])
        self.assertEqual(sorted(set(ids)), ids)

    def test_foreign_publisher(self) -> None:
        """An XADD by a program without twisted_sse reaches every process."""
        on_a, on_b = self.subscribe(self.a), self.subscribe(self.b)
        for reader in (on_a, on_b):
            # Once the first frame is there, the subscription is live.
            reader.response.read_frame()
        event_id = tools.command(
            tools.REDIS_PORT,
            "XADD",
            f"sse:{self.channel}",
            "MAXLEN",
            "~",
            "1000",
            "*",
            "event",
            "job",
            "data",
            '{"id": 7, "state": "done"}',
            host=tools.REDIS_HOST,
            db=tools.REDIS_DB,
        )
        assert isinstance(event_id, bytes)
        epoch = tools.command(
            tools.REDIS_PORT,
            "HGET",
            f"sse:{self.channel}#epoch",
            "e",
            host=tools.REDIS_HOST,
            db=tools.REDIS_DB,
        )
        assert isinstance(epoch, bytes)
        for reader in (on_a, on_b):
            (event,) = reader.events(1)
            self.assertEqual(
                (event.type, event.data, event.last_event_id),
                (
                    "job",
                    '{"id": 7, "state": "done"}',
                    f"{epoch.decode()}:{event_id.decode()}",
                ),
            )


class BrokerOptionTests(SynchronousTestCase):
    """``--broker`` mistakes stop twistd at once, without a traceback."""

    def test_bad_scheme(self) -> None:
        """A URL that is not redis:// is a usage error that hides its password."""
        result = run_twistd("--broker", "postgres://app:hunter2@db/1")
        if USAGE_EXITS_NONZERO:
            self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertIn(b"--broker must be memory or redis://", output)
        self.assertNotIn(b"hunter2", output)
        self.assertNotIn(b"Traceback", output)
