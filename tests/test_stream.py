"""
Tests for L{twisted_sse._stream}: a stream's bounded queue and the
slow-client policies, through a hub's streams.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._stream import SlowClientPolicy

from ._helpers import EPOCH, HubFixture, data, ids


class FlowControlTests(SynchronousTestCase):
    """
    A client that stops reading never costs unbounded memory nor delays.

    The queue and its policies are the same over both writers; these tests
    pause the stream the moment its client stops reading (the ``"memory"``
    transport).  How the direct writer gets paused over TCP is in
    ``test_writer.py``.
    """

    def test_disconnect_slow_only(self) -> None:
        """Under disconnect, the slow client is cut; the others get everything."""
        hub = HubFixture(self, max_queue_events=10)
        slow, fast = hub.subscribe(), hub.subscribe()
        slow.pause_reading()
        for n in range(10):
            hub.publish(str(n))
        self.assertTrue(slow.connected)
        hub.publish("10")
        self.assertFalse(slow.connected)
        self.assertFalse(slow.finished)  # cut, not ended: it reconnects
        self.assertEqual(data(fast), [str(n) for n in range(11)])
        self.assertEqual(hub.memory.subscriber_count("news"), 1)
        self.assertEqual(len(hub.registry.streams), 1)

    def test_disconnect_by_bytes(self) -> None:
        """The queue's byte bound cuts a slow client too."""
        hub = HubFixture(self, max_queue_bytes=1000)
        slow = hub.subscribe()
        slow.pause_reading()
        hub.publish("x" * 600)
        self.assertTrue(slow.connected)
        hub.publish("x" * 600)
        self.assertFalse(slow.connected)

    def test_slow_resumes(self) -> None:
        """A client that reads again before the queue fills gets all, in order."""
        hub = HubFixture(self, max_queue_events=10)
        client = hub.subscribe()
        client.pause_reading()
        for n in range(10):
            hub.publish(str(n))
        self.assertEqual(client.events, [])
        client.resume_reading()
        self.assertEqual(data(client), [str(n) for n in range(10)])

    def test_disconnected_client_resumes(self) -> None:
        """A client cut for not reading resumes with Last-Event-ID, losing nothing."""
        hub = HubFixture(self, max_queue_events=3)
        slow = hub.subscribe()
        hub.publish("0")
        slow.pause_reading()
        for n in range(1, 6):
            hub.publish(str(n))
        self.assertFalse(slow.connected)
        again = hub.subscribe(last_event_id=slow.last_event_id)
        self.assertEqual(data(slow) + data(again), [str(n) for n in range(6)])

    def test_drop_oldest(self) -> None:
        """Under drop-oldest, the newest events wait; older ones are dropped."""
        hub = HubFixture(self, policy=SlowClientPolicy.DROP_OLDEST, max_queue_events=3)
        slow, fast = hub.subscribe(), hub.subscribe()
        slow.pause_reading()
        for n in range(10):
            hub.publish(str(n))
        self.assertTrue(slow.connected)
        slow.resume_reading()
        self.assertEqual(data(slow), ["7", "8", "9"])
        self.assertEqual(ids(slow), [f"{EPOCH}-{n}" for n in (8, 9, 10)])
        self.assertEqual(len(data(fast)), 10)
        hub.publish("10")
        self.assertEqual(data(slow)[-1], "10")

    def test_latest_by_key(self) -> None:
        """Under latest, the newest queued event per publish key is kept."""
        hub = HubFixture(self, policy=SlowClientPolicy.LATEST, max_queue_events=10)
        slow = hub.subscribe()
        slow.pause_reading()
        for n, key in enumerate(["EUR", "USD", "EUR", "JPY", "USD", "EUR"]):
            response = hub.post_json(data=f"{key} {n}", event="price", key=key)
            self.assertEqual(response.code, 200)
        slow.resume_reading()
        # Ids still increase: a newer value takes the place at the end.
        self.assertEqual(data(slow), ["JPY 3", "USD 4", "EUR 5"])
        self.assertEqual(ids(slow), [f"{EPOCH}-{n}" for n in (4, 5, 6)])

    def test_latest_by_type(self) -> None:
        """Without a key, latest conflates by event type."""
        hub = HubFixture(self, policy=SlowClientPolicy.LATEST)
        slow = hub.subscribe()
        slow.pause_reading()
        for n in range(5):
            hub.publish(f"a{n}", event="a")
            hub.publish(f"b{n}", event="b")
        hub.publish("m")
        slow.resume_reading()
        self.assertEqual(data(slow), ["a4", "b4", "m"])

    def test_latest_bounded(self) -> None:
        """Under latest, many distinct keys still fit in the bound."""
        hub = HubFixture(self, policy=SlowClientPolicy.LATEST, max_queue_events=5)
        slow = hub.subscribe()
        slow.pause_reading()
        for n in range(20):
            hub.publish(str(n), event=f"type{n}")
        self.assertTrue(slow.connected)
        slow.resume_reading()
        self.assertEqual(data(slow), ["15", "16", "17", "18", "19"])

    def test_memory_bounded(self) -> None:
        """However much is published, a slow client's queue stays in bounds."""
        hub = HubFixture(
            self,
            policy=SlowClientPolicy.DROP_OLDEST,
            max_queue_events=100,
            max_queue_bytes=20_000,
            history=10,
        )
        slow = hub.subscribe()
        slow.pause_reading()
        (stream,) = hub.registry.streams
        worst = 0
        for n in range(3000):
            hub.publish(f"{n:04d}" + "z" * 1000)
            worst = max(worst, stream.queued_bytes)
            self.assertLessEqual(stream.queued, 100)
        self.assertLessEqual(worst, 20_000)
        self.assertGreater(stream.dropped, 2900)
        # Nothing reached the transport while it was paused.
        self.assertEqual(slow.raw, f"retry: 1000\nid: {EPOCH}-0\n\n".encode())
