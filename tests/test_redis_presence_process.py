"""
Presence across real processes: a child Python process runs a
L{twisted_sse.RedisBroker} on the real reactor, with connections of a few
identities on a channel; this test's broker, on the same Redis, counts them
and follows the channel; the child is killed (SIGKILL: no goodbye) and,
once its lease (3 seconds here, 15 by default) ends, it is out of the count
and its identities that only it had leave.  A few seconds (``-m slow``).

It uses the shared Redis on 127.0.0.1:6379 (database 13, keys of its own,
deleted afterwards); without one it is skipped, and with
C{TWISTED_SSE_REQUIRE_REDIS=1} (as in CI) a missing Redis fails it.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._presence import Member, PresenceChange, PresenceInfo

from . import _redis_tools as tools
from .test_redis_presence import Told, blocking_broker

pytestmark = pytest.mark.slow

CHANNEL = "room"

#: The child: a broker with a lease of 3 s (renewed every second) that
#: enters a connection for each argument after the channel ("-" for an
#: anonymous one) and prints "ready" once its presence reads them all.
CHILD = """
import sys

from twisted.internet import reactor

from twisted_sse import RedisAddress, RedisBroker

host, port, db, prefix, channel, *subs = sys.argv[1:]
broker = RedisBroker(
    reactor,
    RedisAddress(host, int(port), int(db)),
    prefix=prefix,
    presence_lease=3.0,
    presence_renew=1.0,
)
broker.startService()
for sub in subs:
    broker.enter(channel, None if sub == "-" else sub)


def check():
    if not broker.commands.ready:
        reactor.callLater(0.05, check)
        return

    def answer(info):
        if info.count == len(subs):
            print("ready", flush=True)
        else:
            reactor.callLater(0.05, check)

    broker.presence(channel, 100).addCallbacks(
        answer, lambda failure: reactor.callLater(0.05, check)
    )


reactor.callWhenRunning(check)
reactor.run()
"""


def read_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The first line ``process`` prints, waiting at most ``timeout`` seconds."""
    assert process.stdout is not None
    fileno = process.stdout.fileno()
    output = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in output:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        readable, _, _ = select.select([fileno], [], [], left)
        if not readable:
            break
        chunk = os.read(fileno, 4096)
        if not chunk:
            break
        output += chunk
    return output


class KilledProcessTests(SynchronousTestCase):
    """A process killed without a word leaves the presence of every other."""

    def setUp(self) -> None:
        tools.need(tools.unavailable_reason())
        self.prefix = tools.unique_prefix()
        self.addCleanup(
            tools.delete_prefix,
            tools.REDIS_PORT,
            tools.REDIS_DB,
            self.prefix,
            tools.REDIS_HOST,
        )

    def child(self, *subs: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                tools.REDIS_HOST,
                str(tools.REDIS_PORT),
                str(tools.REDIS_DB),
                self.prefix,
                CHANNEL,
                *subs,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

        def kill() -> None:
            if process.poll() is None:
                process.kill()
            process.wait()
            assert process.stdout is not None
            process.stdout.close()

        self.addCleanup(kill)
        return process

    def test_killed_leaves(self) -> None:
        """
        The child's connections are counted here; killed, they leave the
        count and bob (only the child's) leaves once its lease ends,
        within 30 seconds.
        """
        clock = Clock()
        broker, _ = blocking_broker(
            clock, self.prefix, presence_lease=3.0, presence_renew=1.0
        )
        self.addCleanup(broker.stop)
        child = self.child("alice", "alice", "bob", "-")
        line = read_line(child, 60)
        self.assertEqual(line, b"ready\n", line)

        told: list[Told] = []
        follow = broker.follow_presence(CHANNEL, 100, told.append)
        self.addCleanup(follow.cancel)
        clock.advance(0)
        broker.enter(CHANNEL, "alice")
        self.assertEqual(
            self.successResultOf(broker.presence(CHANNEL, 100)),
            PresenceInfo(CHANNEL, 5, [Member("alice", 3), Member("bob", 1)]),
        )

        child.send_signal(signal.SIGKILL)
        child.wait()
        alone = PresenceInfo(CHANNEL, 1, [Member("alice", 1)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # This broker's timers: its renewals, and the polls that find
            # the child's lease ended.
            clock.advance(0.5)
            if self.successResultOf(broker.presence(CHANNEL, 100)) == alone:
                break
            time.sleep(0.1)
        clock.advance(0.5)
        self.assertEqual(self.successResultOf(broker.presence(CHANNEL, 100)), alone)
        self.assertEqual(
            told,
            [
                PresenceInfo(CHANNEL, 4, [Member("alice", 2), Member("bob", 1)]),
                PresenceChange(CHANNEL, "leave", "bob"),
            ],
        )
