"""
Tests for L{twisted_sse._redis._scripts}: how a script is run (C{EVALSHA},
C{EVAL} when Redis lost it) and what each of the broker's scripts does, on
the real Redis (the shared one, database 13, keys of each test's own), over
the broker's own connection on a blocking socket.

Without Redis they are skipped; with C{TWISTED_SSE_REQUIRE_REDIS=1} (as in
CI) a missing Redis fails them.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._redis._entries import Snapshot, entry_id, newer, snapshot
from twisted_sse._redis._protocol import RedisCommandError, Reply
from twisted_sse._redis._scripts import (
    PUBLISH,
    REFRESH,
    ROTATE,
    SNAPSHOT,
    Script,
    run_script,
    script,
)

from . import _redis_tools as tools


class ScriptTestCase(SynchronousTestCase):
    """The broker's connection to the shared Redis, and keys of the test's own."""

    def setUp(self) -> None:
        tools.need(tools.unavailable_reason())
        self.redis = tools.BlockingRedis()
        self.addCleanup(self.redis.close)
        self.prefix = tools.unique_prefix()
        self.addCleanup(
            tools.delete_prefix,
            tools.REDIS_PORT,
            tools.REDIS_DB,
            self.prefix,
            tools.REDIS_HOST,
        )

    def keys(self, channel: str = "a") -> tuple[str, str]:
        """The stream and epoch keys of ``channel``."""
        return self.prefix + channel, self.prefix + channel + "#epoch"

    def script(self, which: Script, keys: Any, *args: Any) -> Reply:
        """Run ``which``; its reply."""
        return self.successResultOf(run_script(self.redis, which, keys, args))

    def publish(
        self, *fields: str, channel: str = "a", maxlen: int = 1000, ttl_ms: int = 0
    ) -> str:
        """Publish ``fields`` with PUBLISH; the id it answers."""
        reply = self.script(
            PUBLISH, self.keys(channel), maxlen, ttl_ms, *(fields or ("data", "x"))
        )
        assert isinstance(reply, bytes)
        return reply.decode()

    def snapshot(
        self,
        channel: str = "a",
        ttl_ms: int = 0,
        want: str = "",
        after: str = "",
        count: int = 1000,
        budget: int = 1 << 20,
    ) -> Snapshot:
        """Run SNAPSHOT; what it answers, parsed."""
        reply = self.script(
            SNAPSHOT, self.keys(channel), ttl_ms, want, after, count, budget
        )
        return snapshot(reply)

    def entries(self, channel: str = "a") -> list[tuple[str, list[bytes]]]:
        """The stream's entries, straight from Redis: id and fields."""
        reply = self.redis.run("XRANGE", self.keys(channel)[0], "-", "+")
        return [(entry[0].decode(), entry[1]) for entry in reply]

    def epoch(self, channel: str = "a") -> dict[bytes, bytes]:
        """The channel's epoch hash, straight from Redis."""
        reply = self.redis.run("HGETALL", self.keys(channel)[1])
        return dict(zip(reply[::2], reply[1::2], strict=True))

    def ttl(self, key: str) -> int:
        """The key's TTL in milliseconds (-1: none, -2: no key)."""
        reply = self.redis.run("PTTL", key)
        assert isinstance(reply, int)
        return reply


def _unique(body: str) -> Script:
    """A script no Redis has seen yet."""
    return script(f"-- {uuid.uuid4()}\n{body}")


class RunScriptTests(ScriptTestCase):
    """run_script: EVALSHA, and EVAL when Redis does not have the script."""

    def test_evalsha(self) -> None:
        """A script Redis has is run by its sha alone."""
        echo = _unique("return ARGV[1]")
        self.redis.run("SCRIPT", "LOAD", echo.source)
        sent = len(self.redis.sent)
        self.assertEqual(self.script(echo, (), "hello"), b"hello")
        self.assertEqual(
            [args[:2] for args in self.redis.sent[sent:]], [("EVALSHA", echo.sha)]
        )

    def test_noscript(self) -> None:
        """
        A script Redis does not have (it restarted, or its scripts were
        flushed) is sent whole with EVAL, once: then EVALSHA finds it.
        """
        echo = _unique("return KEYS[1] .. ARGV[1]")
        sent = len(self.redis.sent)
        self.assertEqual(self.script(echo, ("k",), "v"), b"kv")
        self.assertEqual(
            [args[0] for args in self.redis.sent[sent:]], ["EVALSHA", "EVAL"]
        )
        self.assertEqual(self.redis.sent[-1][1:4], (echo.source, 1, "k"))
        sent = len(self.redis.sent)
        self.assertEqual(self.script(echo, ("k",), "w"), b"kw")
        self.assertEqual([args[0] for args in self.redis.sent[sent:]], ["EVALSHA"])

    def test_other_errors(self) -> None:
        """Another error of a script fails its run, without an EVAL."""
        refuse = _unique("return redis.error_reply('NOPE not today')")
        self.redis.run("SCRIPT", "LOAD", refuse.source)
        sent = len(self.redis.sent)
        failure = self.failureResultOf(
            run_script(self.redis, refuse, (), ()), RedisCommandError
        )
        self.assertIn("NOPE not today", str(failure.value))
        self.assertEqual([args[0] for args in self.redis.sent[sent:]], ["EVALSHA"])


class EpochTokenTests(ScriptTestCase):
    """new_epoch(), in every script that makes an epoch."""

    def test_clock(self) -> None:
        """An epoch is Redis's clock in microseconds, in base 36."""
        before = self.redis.run("TIME")
        self.publish()
        after = self.redis.run("TIME")
        epoch = int(self.epoch()[b"e"], 36)
        self.assertLessEqual(int(before[0]) * 10**6 + int(before[1]), epoch)
        self.assertLessEqual(epoch, int(after[0]) * 10**6 + int(after[1]))

    def test_newer(self) -> None:
        """An epoch made later is newer."""
        first = self.snapshot("a").epoch
        second = self.snapshot("b").epoch
        self.assertTrue(newer(second, first), (first, second))


class PublishTests(ScriptTestCase):
    """PUBLISH: the epoch, XADD MAXLEN ~ and the TTLs, in one script."""

    def test_id(self) -> None:
        """It answers <epoch>:<entry id>, with the epoch it made."""
        event_id = self.publish()
        ((entry, _),) = self.entries()
        self.assertEqual(event_id, self.epoch()[b"e"].decode() + ":" + entry)

    def test_epoch_marked(self) -> None:
        """The first entry of an epoch carries it first; the next ones do not."""
        self.publish("data", "1", "key", "message")
        self.publish("data", "2", "key", "message")
        epoch = self.epoch()[b"e"]
        self.assertEqual(
            [fields for _, fields in self.entries()],
            [
                [b"sse-epoch", epoch, b"data", b"1", b"key", b"message"],
                [b"data", b"2", b"key", b"message"],
            ],
        )

    def test_epoch_a_snapshot_made(self) -> None:
        """
        An epoch a snapshot made is carried by the first entry published in
        it; then it is no longer marked.
        """
        epoch = self.snapshot().epoch
        self.assertEqual(self.epoch(), {b"e": epoch.encode(), b"m": b"1"})
        self.publish()
        self.publish()
        self.assertEqual(self.epoch(), {b"e": epoch.encode()})
        marks = [fields[:2] for _, fields in self.entries()]
        self.assertEqual(marks, [[b"sse-epoch", epoch.encode()], [b"data", b"x"]])

    def test_ttl(self) -> None:
        """With a TTL both keys expire in it; with none both are made to last."""
        stream, meta = self.keys()
        self.publish(ttl_ms=60_000)
        for key in (stream, meta):
            self.assertTrue(59_000 < self.ttl(key) <= 60_000, key)
        self.publish(ttl_ms=0)
        self.assertEqual((self.ttl(stream), self.ttl(meta)), (-1, -1))

    def test_maxlen(self) -> None:
        """The stream is trimmed to about its MAXLEN, never below it."""
        for _ in range(250):
            self.publish(maxlen=10)
        length = self.redis.run("XLEN", self.keys()[0])
        self.assertTrue(10 <= length < 250, length)

    def test_made_again_after(self) -> None:
        """
        A stream made again (Redis lost its keys) starts after every id the
        old one gave out, even within the same millisecond, so that a
        reader waiting after the old last id sees its first entry.
        """
        stream, meta = self.keys()
        for _ in range(50):
            before = self.publish().split(":")[1]
            self.publish()
            held = self.publish().split(":")[1]
            self.redis.run("DEL", stream, meta)
            again = self.publish().split(":")[1]
            self.assertGreater(entry_id(again.encode()), entry_id(held.encode()))
            self.assertGreater(entry_id(held.encode()), entry_id(before.encode()))


class SnapshotTests(ScriptTestCase):
    """SNAPSHOT: the epoch, the stream's state and a page, in one script."""

    def test_new_channel(self) -> None:
        """
        On a channel never seen, it makes the epoch, marked for the first
        entry, and tells that the stream does not exist.
        """
        state = self.snapshot()
        self.assertEqual(self.epoch(), {b"e": state.epoch.encode(), b"m": b"1"})
        self.assertEqual(
            state,
            Snapshot(exists=False, epoch=state.epoch, entries=[], more=False),
        )

    def test_state(self) -> None:
        """The stream's last and first ids, length, entries added and deleted."""
        ids = [self.publish().partition(":")[2] for _ in range(3)]
        self.redis.run("XDEL", self.keys()[0], ids[1])
        state = self.snapshot()
        self.assertEqual(
            (
                state.exists,
                state.last_generated,
                state.first,
                state.length,
                state.entries_added,
                state.max_deleted,
                state.entries,
            ),
            (True, entry_id(ids[2]), entry_id(ids[0]), 2, 3, entry_id(ids[1]), []),
        )

    def test_page(self) -> None:
        """
        After an id, the entries that follow, at most ``count``: more tells
        whether the page was full.
        """
        ids = [self.publish().partition(":")[2] for _ in range(5)]
        full = self.snapshot(after=ids[0], count=2)
        self.assertEqual([entry[0] for entry in full.entries], ids[1:3])
        self.assertTrue(full.more)
        rest = self.snapshot(after=ids[2], count=10)
        self.assertEqual([entry[0] for entry in rest.entries], ids[3:])
        self.assertFalse(rest.more)

    def test_page_bytes(self) -> None:
        """
        A page ends with the entry whose fields reach the byte budget (one
        entry at least); more tells that entries were left.
        """
        ids = [self.publish("data", "x" * 100).partition(":")[2] for _ in range(5)]
        page = self.snapshot(after="0-0", budget=250)
        # About 124 bytes of fields in the first entry (it has the epoch's
        # mark), 104 in the others: the third reaches 250.
        self.assertEqual([entry[0] for entry in page.entries], ids[:3])
        self.assertTrue(page.more)
        one = self.snapshot(after="0-0", budget=1)
        self.assertEqual([entry[0] for entry in one.entries], ids[:1])

    def test_other_epoch(self) -> None:
        """Entries are read only in the epoch wanted; another gets the state alone."""
        event_id = self.publish()
        epoch, _, stream_id = event_id.partition(":")
        self.publish()
        wanted = self.snapshot(want=epoch, after=stream_id)
        self.assertEqual(len(wanted.entries), 1)
        other = self.snapshot(want="0", after=stream_id)
        self.assertEqual((other.entries, other.length), ([], 2))

    def test_ttl_refreshed(self) -> None:
        """It refreshes the TTL of the epoch, and of the stream if there is one."""
        stream, meta = self.keys()
        self.snapshot(ttl_ms=60_000)
        self.assertEqual(self.ttl(stream), -2)
        self.assertTrue(59_000 < self.ttl(meta) <= 60_000)
        self.publish(ttl_ms=1_000)
        self.snapshot(ttl_ms=60_000)
        for key in (stream, meta):
            self.assertTrue(59_000 < self.ttl(key) <= 60_000, key)


class RotateTests(ScriptTestCase):
    """ROTATE: a compare-and-set of the epoch."""

    def test_rotated(self) -> None:
        """The epoch given is replaced by a newer one, marked, the old one kept as p."""
        self.publish()
        old = self.epoch()[b"e"]
        new = self.script(ROTATE, self.keys(), old, 60_000)
        assert isinstance(new, bytes)
        self.assertTrue(newer(new.decode(), old.decode()))
        self.assertEqual(self.epoch(), {b"e": new, b"p": old, b"m": b"1"})
        self.assertTrue(59_000 < self.ttl(self.keys()[1]) <= 60_000)

    def test_already_rotated(self) -> None:
        """An epoch already replaced is left alone; the current one is answered."""
        self.publish()
        old = self.epoch()[b"e"]
        new = self.script(ROTATE, self.keys(), old, 0)
        self.assertEqual(self.script(ROTATE, self.keys(), old, 0), new)
        self.assertEqual(self.epoch()[b"p"], old)


class RefreshTests(ScriptTestCase):
    """REFRESH: the TTLs of followed channels, and their epochs."""

    def test_refresh(self) -> None:
        """
        Each channel's epoch comes back in order, nil for one without (Redis
        lost it); every key gets the TTL.
        """
        self.publish(channel="a")
        self.publish(channel="c")
        keys = [*self.keys("a"), *self.keys("b"), *self.keys("c")]
        epochs = self.script(REFRESH, keys, 60_000)
        self.assertEqual(epochs, [self.epoch("a")[b"e"], None, self.epoch("c")[b"e"]])
        for key in (*self.keys("a"), *self.keys("c")):
            self.assertTrue(59_000 < self.ttl(key) <= 60_000, key)
