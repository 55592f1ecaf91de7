"""
Tests for L{twisted_sse._redis._reader.Reader}, a broker's reader loop, on a
fake Redis (L{tests._redis_tools.FakeRedis}) and a L{Clock}: the fan-out of
what it reads, the epoch changes it follows (a marked entry, a reconnect,
the periodic check, a lost tail it rotates), the entries it skips, and how
it wakes and what it stops reading.
"""

from __future__ import annotations

from twisted_sse._broker import HISTORY_LOST_EVENT

from ._helpers import Pacer
from ._redis_fakes import FakeRedisTestCase, Logs, entry_of, epoch_of, pages


class EpochTests(FakeRedisTestCase):
    """The reader follows a channel into a new epoch, and tells its subscribers."""

    def test_live_loss_on_first_publish(self) -> None:
        """
        Redis flushed, then a publish: the live subscribers are told at once
        (the publish marks the first entry of the new epoch), with an id
        that resumes exactly, then get the event.
        """
        broker = self.broker()
        got, _ = self.subscribe(broker, "a")
        old = self.publish(broker, "a", "before")
        self.redis.flush()
        self.clock.advance(1)
        new = self.publish(broker, "a", "after")
        self.assertEqual(got.ids[0], old)
        self.assertEqual([p.key for p in got.got[1:]], [HISTORY_LOST_EVENT, "message"])
        loss = got.got[1]
        self.assertIn(b'"reason": "unknown"', loss.frame)
        self.assertEqual(epoch_of(loss.id), epoch_of(new))
        self.assertEqual(got.ids[2], new)
        resumed, subscription = self.subscribe(broker, "a", None, loss.id)
        self.assertIsNone(subscription.history_lost)
        self.assertEqual(resumed.ids, [new])

    def test_live_loss_epoch_made_elsewhere(self) -> None:
        """
        When another process made the new epoch (a subscriber's read after
        the flush), the first publish in it still tells this one's readers.
        """
        broker, other = self.broker(), self.broker()
        got, _ = self.subscribe(broker, "a")
        self.publish(broker, "a", "before")
        self.redis.flush()
        self.clock.advance(1)
        self.subscribe(other, "a", None, "x:1-0")  # makes the new epoch
        new = self.publish(other, "a", "after")
        self.assertEqual([p.key for p in got.got[1:]], [HISTORY_LOST_EVENT, "message"])
        self.assertEqual(got.ids[2], new)

    def test_live_loss_on_reconnect(self) -> None:
        """A reader that reconnects to an emptied Redis tells its subscribers."""
        broker = self.broker()
        got, _ = self.subscribe(broker, "a")
        self.publish(broker, "a", "before")
        self.redis.flush()
        broker.reader.link.drop()
        self.assertEqual(got.got[-1].key, HISTORY_LOST_EVENT)
        new = self.publish(broker, "a", "after")
        self.assertEqual(got.ids[-1], new)
        self.assertEqual(epoch_of(got.ids[-2]), epoch_of(new))

    def test_live_loss_found_by_check(self) -> None:
        """
        A flush with no publish since is found by the periodic check of
        the followed channels.
        """
        broker = self.broker(channel_ttl=30)
        got, _ = self.subscribe(broker, "a")
        self.publish(broker, "a", "before")
        self.redis.flush()
        self.clock.advance(broker.check_interval - 0.5)
        self.assertEqual(len(got.got), 1)
        self.clock.advance(0.5)
        self.assertEqual(got.got[-1].key, HISTORY_LOST_EVENT)
        loss = got.got[-1]
        new = self.publish(broker, "a", "after")
        resumed, subscription = self.subscribe(broker, "a", None, loss.id)
        self.assertIsNone(subscription.history_lost)
        self.assertEqual(resumed.ids, [new])

    def test_lost_tail_rotates_theepoch_of(self) -> None:
        """
        Redis holds less of a stream than the reader read, under the same
        epoch (a failover to a replica that missed writes): the epoch is
        rotated, the subscribers are told, and the ids given out before are
        refused; what is left and what follows is delivered once.
        """
        broker, other = self.broker(), self.broker()
        got, _ = self.subscribe(broker, "a")
        on_other, _ = self.subscribe(other, "a")
        ids = [self.publish(broker, "a", str(n)) for n in range(5)]
        stream = self.redis.streams[b"sse:a"]
        # The replica had only the first three.
        del stream.entries[3:]
        stream.last_generated = stream.entries[-1][0]
        stream.entries_added = 3
        broker.reader.link.drop()
        other.reader.link.drop()
        for collector in (got, on_other):
            self.assertEqual(collector.ids[:5], ids)
            loss = collector.got[5]
            self.assertEqual(loss.key, HISTORY_LOST_EVENT)
            self.assertNotEqual(epoch_of(loss.id), epoch_of(ids[0]))
            self.assertEqual(entry_of(loss.id), entry_of(ids[2]))
        _, held = self.subscribe(broker, "a", None, ids[4])
        self.assertEqual(held.history_lost, "unknown")
        new = self.publish(broker, "a", "after")
        self.assertEqual(got.ids[6:], [new])
        self.assertEqual(on_other.ids[6:], [new])
        resumed, subscription = self.subscribe(other, "a", None, got.got[5].id)
        self.assertIsNone(subscription.history_lost)
        self.assertEqual(resumed.ids, [new])


class SkippedTests(FakeRedisTestCase):
    """What cannot be sent is skipped, never the stream broken."""

    def test_malformed_entries_skipped(self) -> None:
        """
        Entries another program wrote that cannot be sent are skipped, in
        replay pages and live reads alike, each logged once with its id.
        """
        logs = Logs(self)
        broker = self.broker()
        start = self.position(broker, "a")
        key = b"sse:a"
        bad = [
            [b"data", b"x", b"event", b"a\nb"],
            [b"data", b"\xff"],
            [b"retry", b"9" * 16],
            [b"key", b""],
        ]
        good: list[str] = []
        for fields in bad:
            self.clock.advance(0.001)
            self.redis.xadd(key, fields)
            good.append(self.publish(broker, "a", f"good {len(good)}"))
        pacers = [Pacer(1) for _ in range(2)]
        with pages(1):
            live, _ = self.subscribe(broker, "a")
            for pacer in pacers:
                _, subscription = self.subscribe(broker, "a", pacer, start)
                for _ in range(10):
                    pacer.take(subscription)
            for fields in bad:
                self.clock.advance(0.001)
                self.redis.xadd(key, fields)
                good.append(self.publish(broker, "a", f"good {len(good)}"))
        for pacer in pacers:
            self.assertEqual(pacer.ids, good)
        self.assertEqual(live.ids, good[4:])
        skipped = [text for text in logs.texts() if "Skipping stream entry" in text]
        self.assertEqual(len(skipped), 8)
        self.assertEqual(len(set(skipped)), 8)


class CheckTests(FakeRedisTestCase):
    """The periodic check of the channels followed."""

    def test_followed_channels_refreshed(self) -> None:
        """
        Every third of the TTL, one script per 500 followed channels sets
        their streams' and epochs' TTL; channels no longer followed are not.
        """
        broker = self.broker(channel_ttl=30)
        self.assertEqual(broker.check_interval, 10)
        subscriptions = [self.subscribe(broker, f"c{n}")[1] for n in range(1100)]
        for subscription in subscriptions[1000:]:
            subscription.cancel()
        self.clock.advance(10)
        batches = self.refreshes()
        self.assertEqual([len(args) for args in batches], [3 + 1000 + 1] * 2)
        keys = [key for args in batches for key in args[3:-1]]
        self.assertEqual(
            keys,
            [key for n in range(1000) for key in (f"sse:c{n}", f"sse:c{n}#epoch")],
        )
        self.assertEqual({args[-1] for args in batches}, {30_000})
        self.clock.advance(10)
        self.assertEqual(len(self.refreshes()), 4)


class WakeTests(FakeRedisTestCase):
    """The loop: woken for a new channel, and what it stops reading."""

    def test_new_channel_unblocks(self) -> None:
        """
        A channel newly followed ends the blocked XREAD at once (CLIENT
        UNBLOCK), and the next one names it too.
        """
        broker = self.broker()
        self.subscribe(broker, "a")
        sent = len(self.redis.commands)
        self.subscribe(broker, "b")
        commands = self.redis.commands[sent:]
        reader = broker.reader.link.client  # type: ignore[attr-defined]
        self.assertIn(("CLIENT", "UNBLOCK", reader), commands)
        xread = [command for command in commands if command[0] == "XREAD"][-1]
        self.assertEqual(xread[6:8], ("sse:a", "sse:b"))

    def test_not_a_stream(self) -> None:
        """
        A channel whose key another program made something else is no
        longer read, said once; the other channels go on.
        """
        logs = Logs(self)
        broker = self.broker()
        on_a, _ = self.subscribe(broker, "a")
        on_b, _ = self.subscribe(broker, "b")
        self.publish(broker, "a", "1")
        del self.redis.streams[b"sse:a"]
        self.redis.strings[b"sse:a"] = b"not a stream"
        self.publish(broker, "b", "1")
        self.publish(broker, "b", "2")
        self.assertEqual((on_a.data, on_b.data), (["1"], ["1", "2"]))
        self.assertIsNone(broker.reader.channels["a"].position)
        dropped = [text for text in logs.texts() if "is no longer read" in text]
        self.assertEqual(len(dropped), 1)
        self.assertIn("holds a string", dropped[0])
