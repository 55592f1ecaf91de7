"""
Tests for L{twisted_sse._redis._channels}: a followed channel's ids, and
L{read_snapshot}, the state of a channel and a page of its stream read in
one script, on the real Redis (the shared one, database 13, keys of each
test's own) over the broker's own connection on a blocking socket.

Without Redis those are skipped; with C{TWISTED_SSE_REQUIRE_REDIS=1} (as in
CI) a missing Redis fails them.
"""

from __future__ import annotations

from typing import cast
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._redis import _channels
from twisted_sse._redis._channels import Channel, read_snapshot
from twisted_sse._redis._entries import Snapshot, entry_id
from twisted_sse._redis._link import RedisLink
from twisted_sse._redis._scripts import PUBLISH, run_script

from . import _redis_tools as tools


class ChannelTests(SynchronousTestCase):
    """Channel.text: the id a position is given."""

    def test_text(self) -> None:
        """A position's id is the epoch and stream id, one string for all."""
        state = Channel("news", "sse:news", "sse:news#epoch", epoch="kq3x9b1c0a")
        first = state.text((1765, 2))
        self.assertEqual(first, "kq3x9b1c0a:1765-2")
        self.assertIs(state.text((1765, 2)), first)

    def test_text_follows(self) -> None:
        """Another position, or the same in a new epoch, has its own id."""
        state = Channel("news", "sse:news", "sse:news#epoch", epoch="a")
        state.text((1, 0))
        self.assertEqual(state.text((2, 0)), "a:2-0")
        state.epoch = "b"
        self.assertEqual(state.text((2, 0)), "b:2-0")


class ReadSnapshotTests(SynchronousTestCase):
    """read_snapshot on the shared Redis."""

    def setUp(self) -> None:
        tools.need(tools.unavailable_reason())
        self.redis = tools.BlockingRedis()
        self.addCleanup(self.redis.close)
        prefix = tools.unique_prefix()
        self.addCleanup(
            tools.delete_prefix,
            tools.REDIS_PORT,
            tools.REDIS_DB,
            prefix,
            tools.REDIS_HOST,
        )
        self.state = Channel("a", prefix + "a", prefix + "a#epoch")
        # read_snapshot needs only the link's execute.
        self.link = cast(RedisLink, self.redis)

    def publish(self, data: str = "x") -> str:
        """Publish one entry; its stream id."""
        reply = self.successResultOf(
            run_script(
                self.redis,
                PUBLISH,
                (self.state.key, self.state.epoch_key),
                (1000, 0, "data", data),
            )
        )
        assert isinstance(reply, bytes)
        return reply.decode().partition(":")[2]

    def read(self, after: str | None, count: int = 1000, ttl_ms: int = 0) -> Snapshot:
        position = None if after is None else entry_id(after)
        return self.successResultOf(
            read_snapshot(self.link, self.state, position, count, ttl_ms)
        )

    def ids(self, snapshot: Snapshot) -> list[str]:
        return [entry[0] for entry in snapshot.entries]

    def test_state(self) -> None:
        """
        Without an id, the channel's epoch and stream state are read, with
        no entries; the channel's TTL is refreshed.
        """
        ids = [self.publish() for _ in range(3)]
        state = self.read(None, ttl_ms=60_000)
        epoch = self.redis.run("HGET", self.state.epoch_key, "e")
        self.assertEqual(
            (state.epoch, state.exists, state.last_generated, state.length),
            (epoch.decode(), True, entry_id(ids[2]), 3),
        )
        self.assertEqual(state.entries, [])
        ttl = self.redis.run("PTTL", self.state.key)
        self.assertTrue(59_000 < ttl <= 60_000, ttl)

    def test_page(self) -> None:
        """With an id, the entries after it: at most ``count``, more if left."""
        ids = [self.publish() for _ in range(5)]
        page = self.read(ids[0], count=3)
        self.assertEqual((self.ids(page), page.more), (ids[1:4], True))
        page = self.read(ids[3], count=3)
        self.assertEqual((self.ids(page), page.more), (ids[4:], False))

    def test_page_bytes(self) -> None:
        """A page holds about PAGE_BYTES of fields: it ends at the entry past them."""
        ids = [self.publish("x" * 100) for _ in range(5)]
        with mock.patch.object(_channels, "PAGE_BYTES", 150):
            page = self.read(ids[0])
        # 104 bytes of fields each: the second passes 150.
        self.assertEqual((self.ids(page), page.more), (ids[1:3], True))
        self.assertEqual(self.ids(self.read(ids[0])), ids[1:])
