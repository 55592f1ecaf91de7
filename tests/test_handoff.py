"""
Tests for L{twisted_sse._handoff}: a subscription's events reach its stream
once and in order, from before the stream exists to the end, and a long
replay is fed as fast as the client reads; for any interleaving of
publishes, resumes and slow answers (hypothesis).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests._transports import TransportCase, over_both_transports
from twisted_sse import Event
from twisted_sse._broker import IBroker, Subscription
from twisted_sse._hub import Hub
from twisted_sse._memory import MemoryBroker
from twisted_sse._stream import SlowClientPolicy
from twisted_sse.testing import SSETestResponse

from ._helpers import EPOCH, HubFixture, data, first_frame_id, ids


@implementer(IBroker)
class _SlowBroker:
    """
    A broker whose subscribe goes live at once but answers later (as a
    networked broker would): events meanwhile reach the hub's handoff
    before its stream exists.
    """

    available = True

    def __init__(self, inner: MemoryBroker) -> None:
        self.inner = inner
        self.waiting: list[Callable[[], None]] = []

    def publish(self, channel: str, event: Event, key: str | None = None) -> Any:
        return self.inner.publish(channel, event, key)

    def subscribe(self, channel: str, deliver: Any, last_event_id: Any = None) -> Any:
        made: list[Subscription] = []
        self.inner.subscribe(channel, deliver, last_event_id).addCallback(made.append)
        later: Deferred[Subscription] = Deferred()
        self.waiting.append(lambda: later.callback(made[0]))
        return later

    def subscribe_now(
        self, channel: str, deliver: Any, last_event_id: Any = None
    ) -> Subscription | None:
        return None

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def answer(self) -> None:
        self.waiting.pop(0)()


class HandoffTests(SynchronousTestCase):
    """The replay-to-live handoff has no gap and no duplicate."""

    def test_publishing_during_authorizer(self) -> None:
        """Events published while the authoriser decides are replayed once."""
        decisions: list[Deferred[bool]] = []

        def later(request: Any, channel: str) -> Deferred[bool]:
            decisions.append(Deferred())
            return decisions[-1]

        hub = HubFixture(self, authorizer=later)
        for n in range(1, 4):
            hub.publish(str(n))
        response = hub.subscribe(last_event_id=f"{EPOCH}-1")
        hub.publish("4")
        hub.publish("5")
        self.assertEqual(response.code, None)
        decisions[0].callback(True)
        hub.publish("6")
        self.assertEqual(data(response), ["2", "3", "4", "5", "6"])
        self.assertEqual(ids(response), [f"{EPOCH}-{n}" for n in range(2, 7)])

    def test_publishing_during_subscribe(self) -> None:
        """Events that go live before the broker answers arrive once, in order."""
        memory = MemoryBroker(epoch=EPOCH)
        slow = _SlowBroker(memory)
        hub = HubFixture(self, broker=slow)
        hub.memory = memory
        for n in range(1, 4):
            hub.publish(str(n))
        response = hub.subscribe(last_event_id=f"{EPOCH}-1")
        hub.publish("4")
        hub.publish("5")
        self.assertEqual(response.events, [])
        slow.answer()
        hub.publish("6")
        self.assertEqual(data(response), ["2", "3", "4", "5", "6"])

    def catching_up(
        self, **options: Any
    ) -> tuple[HubFixture, _SlowBroker, SSETestResponse, list[int]]:
        """
        A client resuming from the start of 50 events that reads one event
        at a time: it stops reading as each event arrives, until resumed.
        """
        memory = MemoryBroker(epoch=EPOCH, history=options.pop("history", 1000))
        slow = _SlowBroker(memory)
        hub = HubFixture(self, broker=slow, **options)
        hub.memory = memory
        for n in range(1, 51):
            hub.publish(str(n))
        response = hub.subscribe(last_event_id=f"{EPOCH}-0")
        pauses: list[int] = []

        def pause(event: object) -> None:
            pauses.append(len(response.events))
            response.pause_reading()
            wait()

        def wait() -> None:
            # Once the connection is cut, no next event: that is expected.
            response.next_event().addCallbacks(pause, lambda failure: None)

        wait()
        slow.answer()
        return hub, slow, response, pauses

    def test_catch_up_paced(self) -> None:
        """A backlog larger than the queue is fed as fast as the client reads."""
        hub, _, response, pauses = self.catching_up(max_queue_events=5)
        self.assertEqual(data(response), ["1"])
        for _ in range(49):
            response.resume_reading()
        self.assertTrue(response.connected)
        self.assertEqual(data(response), [str(n) for n in range(1, 51)])
        self.assertEqual(pauses, list(range(1, 51)))
        (stream,) = hub.registry.streams
        self.assertEqual(stream.dropped, 0)
        hub.publish("51")
        response.resume_reading()
        self.assertEqual(data(response)[-1], "51")

    def test_catch_up_drop_oldest(self) -> None:
        """Under drop-oldest too, a client catching up loses nothing."""
        _, _, response, _ = self.catching_up(
            max_queue_events=5, policy=SlowClientPolicy.DROP_OLDEST
        )
        for _ in range(49):
            response.resume_reading()
        self.assertEqual(data(response), [str(n) for n in range(1, 51)])

    def test_live_during_catch_up(self) -> None:
        """Live events published during the catch-up follow it, in order."""
        hub, _, response, _ = self.catching_up(max_queue_events=5)
        for n in range(51, 55):
            hub.publish(str(n))
        for _ in range(60):
            response.resume_reading()
        self.assertEqual(data(response), [str(n) for n in range(1, 55)])

    def test_catch_up_holds_a_cursor(self) -> None:
        """A resumer that does not read holds its queue bound, not the history."""
        hub, _, response, _ = self.catching_up(max_queue_events=5)
        (stream,) = hub.registry.streams
        # One event was taken and the client stopped reading: what waits for
        # it is bounded by its queue, the rest of the replay is a cursor.
        self.assertLessEqual(stream.queued, 5)
        for n in range(51, 57):
            hub.publish(str(n))
        self.assertTrue(response.connected)
        self.assertLessEqual(stream.queued, 5)
        for _ in range(60):
            response.resume_reading()
        self.assertEqual(data(response), [str(n) for n in range(1, 57)])

    def test_not_keeping_up(self) -> None:
        """A stalled resumer that the history moves past meets its policy."""
        hub, _, response, _ = self.catching_up(max_queue_events=5, history=60)
        # 50 events, then 10 more: the oldest kept is still after its cursor.
        for n in range(51, 61):
            hub.publish(str(n))
        self.assertTrue(response.connected)
        for n in range(61, 71):
            hub.publish(str(n))
        self.assertFalse(response.connected)
        self.assertEqual(hub.memory.subscriber_count("news"), 0)

    def test_not_keeping_up_drop_oldest(self) -> None:
        """Under drop-oldest, a stalled resumer is told of the loss in-band."""
        hub, _, response, _ = self.catching_up(
            max_queue_events=5, policy=SlowClientPolicy.DROP_OLDEST, history=60
        )
        for n in range(51, 71):
            hub.publish(str(n))
        self.assertTrue(response.connected)
        for _ in range(100):
            response.resume_reading()
        received = [(event.type, event.data) for event in response.events]
        losses = [n for n, (kind, _) in enumerate(received) if kind != "message"]
        first, lost = losses[0], losses[-1]
        self.assertEqual(received[lost], ("history-lost", '{"reason": "trimmed"}'))
        before = [int(text) for _, text in received[:first]]
        after = [int(text) for _, text in received[lost + 1 :]]
        # In order before the signal; after the last one, whose id is
        # exact, everything still kept.
        self.assertEqual(before, sorted(before))
        self.assertEqual(after, list(range(after[0], 71)))
        self.assertLessEqual(after[0], 71 - 60 + 1)
        self.assertEqual(response.events[lost].last_event_id, f"{EPOCH}-{after[0] - 1}")

    def test_gone_during_subscribe(self) -> None:
        """A client that leaves before the broker answers leaves nothing."""
        memory = MemoryBroker(epoch=EPOCH)
        slow = _SlowBroker(memory)
        hub = HubFixture(self, broker=slow)
        hub.memory = memory
        response = hub.subscribe()
        response.disconnect()
        slow.answer()
        self.assertEqual(memory.subscriber_count("news"), 0)
        self.assertEqual(hub.registry.streams, set())
        # The request's finish Deferred failed with the disconnect: it must
        # not be reported as an unhandled error once collected.
        del response
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_publishing_interleaved_with_resumes(self) -> None:
        """Clients resuming between publishes each see every event once."""
        hub = HubFixture(self)
        responses = [hub.subscribe()]
        for n in range(1, 31):
            hub.publish(str(n))
            if n % 3 == 0:
                last = responses[-1]
                last.disconnect()
                hub.publish(f"{n}b")
                responses.append(hub.subscribe(last_event_id=last.last_event_id))
        got = [event for response in responses for event in response.events]
        seqs = [int(event.last_event_id.split("-")[1]) for event in got]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        self.assertEqual(len(seqs), 40)


_OPS = st.lists(
    st.tuples(
        st.sampled_from(
            # Publishing three times as often as anything else keeps events
            # flowing between the changes.
            ["publish"] * 3 + ["connect", "disconnect", "answer", "pause", "resume"]
        ),
        st.integers(min_value=0, max_value=2),
    ),
    max_size=80,
)


@over_both_transports
class ResumePropertyTests(TransportCase):
    """Exactly once, in order, for any interleaving."""

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        # The twin class over TCP runs the same test function.
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
    )
    @given(ops=_OPS, slow_broker=st.booleans(), slow_authorizer=st.booleans())
    def test_exactly_once(
        self,
        ops: list[tuple[str, int]],
        slow_broker: bool,
        slow_authorizer: bool,
    ) -> None:
        """Resuming subscribers get every event once, in order, whatever happens."""
        # Subscribers connect, leave, stop reading (and are cut off) and
        # resume with Last-Event-ID at any moment, while events are
        # published and subscriptions are pending.
        clock = Clock()
        memory = MemoryBroker(epoch=EPOCH)
        slow = _SlowBroker(memory)
        waiting: list[Callable[[], None]] = slow.waiting

        def authorizer(request: Any, channel: str) -> Deferred[bool]:
            decided: Deferred[bool] = Deferred()
            waiting.append(lambda: decided.callback(True))
            return decided

        hub = Hub(
            slow if slow_broker else memory,
            clock=clock,
            authorizer=authorizer if slow_authorizer else None,
            max_queue_events=2,
        )
        client = self.client_for(hub.resource(), clock)
        published: list[str] = []
        connections: list[list[SSETestResponse]] = [[], [], []]

        def connect(who: int) -> None:
            mine = connections[who]
            if mine and mine[-1].connected:
                return
            last_id = mine[-1].last_event_id if mine else ""
            mine.append(client.get("/news", last_event_id=last_id or None))

        def run(op: str, who: int) -> None:
            if op == "publish":
                published.append(str(len(published) + 1))
                hub.publish("news", Event(data=published[-1]))
            elif op == "connect":
                connect(who)
            elif op == "disconnect":
                if connections[who]:
                    connections[who][-1].disconnect()
            elif op == "pause":
                if connections[who]:
                    connections[who][-1].pause_reading()
            elif op == "resume":
                if connections[who]:
                    connections[who][-1].resume_reading()
            elif waiting:
                waiting.pop(who % len(waiting))()
            # The reactor's next turn, after what the test did itself.
            client.flush()

        for who in range(3):
            connect(who)
        for op, who in ops:
            run(op, who)
        # Everyone reads again and comes back at the end (those cut off for
        # not reading too), and every pending answer arrives.
        for mine in connections:
            if mine:
                mine[-1].resume_reading()
        for who in range(3):
            connect(who)
        while waiting:
            waiting.pop(0)()
        published.append(str(len(published) + 1))
        hub.publish("news", Event(data=published[-1]))
        client.flush()

        for who, mine in enumerate(connections):
            opened = [response for response in mine if response.raw]
            self.assertTrue(opened, f"subscriber {who} never got a stream")
            position = first_frame_id(opened[0])
            self.assertRegex(position, f"^{EPOCH}-[0-9]+$", "no position in frame 1")
            start = int(position.split("-")[1])
            got = [event for response in mine for event in response.events]
            self.assertEqual(
                [event.data for event in got],
                published[start:],
                f"subscriber {who}",
            )
            self.assertEqual(
                [event.last_event_id for event in got],
                [f"{EPOCH}-{n}" for n in range(start + 1, len(published) + 1)],
            )
            for response in mine:
                self.assertIsNone(response.header("SSE-History-Lost"))
        client.disconnect_all()
        client.assert_clean(hub.registry, brokers=[memory], testcase=self)
