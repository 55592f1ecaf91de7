"""
Idempotent publish: a repeat with the same ``Idempotency-Key`` on the same
channel is answered the first id and not delivered again, on the memory
broker and through the hub (over the testing client, on a Clock).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import Event, Hub, MemoryBroker, Published
from twisted_sse._broker import (
    IdempotencyConflict,
    IdempotencyUnavailable,
    Replayed,
    event_digest,
    valid_idempotency_key,
)

from ._helpers import EPOCH, HubFixture, answer


def fired(deferred: Deferred[str]) -> str:
    """The result of a Deferred that has fired with an id."""
    results: list[object] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    assert isinstance(result, str)
    return result


def failure_of(deferred: Deferred[str]) -> Failure:
    """The failure of a Deferred that has failed."""
    results: list[object] = []
    deferred.addBoth(results.append)
    assert results and isinstance(results[0], Failure), results
    return results[0]


class Delayed:
    """
    A broker over a memory broker whose publishes wait until released, as
    Redis's answers do; counts what reaches the memory broker.
    """

    available = True

    def __init__(self, memory: MemoryBroker) -> None:
        self.memory = memory
        self.waiting: list[tuple[Deferred[str], tuple[Any, ...], dict[str, Any]]] = []
        self.calls = 0

    def publish(
        self,
        channel: str,
        event: Event,
        key: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Deferred[str]:
        self.calls += 1
        answer: Deferred[str] = Deferred()
        self.waiting.append(
            (answer, (channel, event, key), {"idempotency_key": idempotency_key})
        )
        return answer

    def release(self, index: int = 0, fail: bool = False) -> None:
        answer, args, kwargs = self.waiting.pop(index)
        if fail:
            answer.errback(ValueError("refused"))
        else:
            self.memory.publish(*args, **kwargs).chainDeferred(answer)

    def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        return self.memory.subscribe(*args, **kwargs)

    def stop(self) -> Deferred[None]:
        return self.memory.stop()


class Unkeyed:
    """A broker written before idempotency keys: its publish takes none."""

    available = True

    def __init__(self, memory: MemoryBroker) -> None:
        self.memory = memory

    def publish(
        self, channel: str, event: Event, key: str | None = None
    ) -> Deferred[str]:
        return self.memory.publish(channel, event, key)

    def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        return self.memory.subscribe(*args, **kwargs)

    def stop(self) -> Deferred[None]:
        return self.memory.stop()


class KeyTests(SynchronousTestCase):
    """What an idempotency key may be."""

    def test_valid(self) -> None:
        """1 to 255 printable ASCII characters."""
        for key in ("a", "x" * 255, "order 12 / shipped", "~!\"'{}"):
            self.assertTrue(valid_idempotency_key(key), key)
        for bad in ("", "x" * 256, "é", "a\tb", "a\nb", "\x7f", None, 5):
            self.assertFalse(valid_idempotency_key(bad), bad)

    def test_digest(self) -> None:
        """Every field of the event and its conflation key count."""
        base = event_digest(Event(data="x"))
        self.assertEqual(base, event_digest(Event(data="x"), "message"))
        self.assertNotEqual(base, event_digest(Event(data="y")))
        self.assertNotEqual(base, event_digest(Event(data="x", event="e")))
        self.assertNotEqual(base, event_digest(Event(data="x", retry=1)))
        self.assertNotEqual(base, event_digest(Event(data="x"), "other"))


class MemoryBrokerTests(SynchronousTestCase):
    """The memory broker remembers keys for its TTL, a bounded number."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = MemoryBroker(epoch=EPOCH, clock=self.clock, idempotency_ttl=10)
        self.got: list[Published] = []
        self.broker.subscribe("news", self.got.append)

    def publish(
        self, data: str = "x", key: str | None = "k", channel: str = "news"
    ) -> Deferred[str]:
        return self.broker.publish(channel, Event(data=data), idempotency_key=key)

    def test_repeat(self) -> None:
        """A repeat is answered the first id, a Replayed, and not delivered."""
        first = fired(self.publish())
        self.assertNotIsInstance(first, Replayed)
        again = fired(self.publish())
        self.assertEqual(again, first)
        self.assertIsInstance(again, Replayed)
        self.assertEqual([published.id for published in self.got], [first])

    def test_other_keys(self) -> None:
        """Other keys, other channels and no key publish anew."""
        ids = {
            ("news", fired(self.publish())),
            ("news", fired(self.publish(key="other"))),
            ("sport", fired(self.publish(channel="sport"))),
            ("news", fired(self.publish(key=None))),
            ("news", fired(self.publish(key=None))),
        }
        self.assertEqual(len(ids), 5)

    def test_conflict(self) -> None:
        """The same key with another event fails, naming the first id."""
        first = fired(self.publish())
        failure = failure_of(self.publish(data="y"))
        self.assertIsInstance(failure.value, IdempotencyConflict)
        assert isinstance(failure.value, IdempotencyConflict)
        self.assertEqual(failure.value.event_id, first)
        self.assertEqual(len(self.got), 1)

    def test_ttl(self) -> None:
        """Past the TTL from the first publish, the key publishes anew."""
        first = fired(self.publish())
        self.clock.advance(9)
        self.assertEqual(fired(self.publish()), first)
        self.clock.advance(1)
        second = fired(self.publish())
        self.assertNotEqual(second, first)
        self.assertEqual(len(self.got), 2)
        self.assertEqual(self.broker.idempotency_keys(), 1)

    def test_bounded(self) -> None:
        """Past the most keys, the oldest is forgotten first."""
        broker = MemoryBroker(epoch=EPOCH, clock=self.clock, max_idempotency_keys=2)
        ids = [
            fired(broker.publish("news", Event(data="x"), idempotency_key=key))
            for key in "abc"
        ]
        self.assertEqual(broker.idempotency_keys(), 2)
        for key, first in zip("bc", ids[1:], strict=True):
            self.assertEqual(
                fired(broker.publish("news", Event(data="x"), idempotency_key=key)),
                first,
            )
        again = fired(broker.publish("news", Event(data="x"), idempotency_key="a"))
        self.assertNotEqual(again, ids[0])

    def test_off(self) -> None:
        """With a TTL of 0, a key is refused and nothing is published."""
        broker = MemoryBroker(epoch=EPOCH, clock=self.clock, idempotency_ttl=0)
        failure = failure_of(
            broker.publish("news", Event(data="x"), idempotency_key="k")
        )
        self.assertIsInstance(failure.value, IdempotencyUnavailable)
        self.assertEqual(broker.history_of("news"), [])
        fired(broker.publish("news", Event(data="x")))

    def test_bad_key(self) -> None:
        """A key that is not 1 to 255 printable ASCII characters fails."""
        for bad in ("", "x" * 256, "é"):
            failure = failure_of(self.publish(key=bad))
            self.assertIsInstance(failure.value, ValueError)
            self.assertIn("idempotency key", str(failure.value))
        self.assertEqual(self.got, [])

    def test_bad_options(self) -> None:
        """A negative TTL or no room for keys is refused."""
        with self.assertRaises(ValueError):
            MemoryBroker(idempotency_ttl=-1)
        with self.assertRaises(ValueError):
            MemoryBroker(max_idempotency_keys=0)


class HubTests(SynchronousTestCase):
    """POST /channels/{name} with an Idempotency-Key."""

    def setUp(self) -> None:
        self.fixture = HubFixture(self)
        self.stream = self.fixture.subscribe()

    def post(self, data: str = "x", key: str | None = "k", **headers: str) -> Any:
        sent = dict(headers)
        sent.setdefault("Content-Type", "application/json")
        sent["Authorization"] = "Bearer s3cret-token"
        if key is not None:
            sent["Idempotency-Key"] = key
        return self.fixture.client.request(
            "POST", "/channels/news", sent, b'{"data": "%s"}' % data.encode()
        )

    def delivered(self) -> list[str]:
        self.fixture.client.flush()
        return [event.data for event in self.stream.events]

    def test_repeat(self) -> None:
        """The repeat gets the first id and Idempotency-Replayed: true."""
        first = self.post()
        again = self.post()
        self.assertEqual((first.code, again.code), (200, 200))
        self.assertEqual(answer(first), answer(again))
        self.assertIsNone(first.header("Idempotency-Replayed"))
        self.assertEqual(again.header("Idempotency-Replayed"), "true")
        self.assertEqual(
            again.header("Access-Control-Expose-Headers"), "Idempotency-Replayed"
        )
        self.assertEqual(self.delivered(), ["x"])
        hub = self.fixture.hub
        self.assertEqual((hub.published, hub.replays), (1, 1))

    def test_quoted(self) -> None:
        """A key as a structured-field string is the same key."""
        first = answer(self.post(key="abc"))
        self.assertEqual(answer(self.post(key='"abc"')), first)
        self.assertNotEqual(answer(self.post(key='"a\\"b"')), first)
        self.assertEqual(answer(self.post(key='a"b')), answer(self.post(key='"a\\"b"')))

    def test_conflict(self) -> None:
        """Another body under the key is 422, with a JSON reason."""
        first = answer(self.post())["id"]
        refused = self.post(data="y")
        self.assertEqual(refused.code, 422)
        self.assertIn(first, answer(refused)["error"])
        self.assertIn("Idempotency-Key", answer(refused)["error"])
        self.assertEqual(self.delivered(), ["x"])

    def test_bad_key(self) -> None:
        """A key too long or not printable ASCII is 400 naming the header."""
        for bad in ("x" * 256, "caf\xe9"):
            refused = self.post(key=bad)
            self.assertEqual(refused.code, 400)
            self.assertIn("Idempotency-Key", answer(refused)["error"])
        self.assertEqual(self.post(key="x" * 255).code, 200)
        self.assertEqual(self.delivered(), ["x"])

    def test_no_key(self) -> None:
        """Without a key, every publish is new."""
        ids = {answer(self.post(key=None))["id"] for _ in range(3)}
        self.assertEqual(len(ids), 3)

    def test_unkeyed_broker(self) -> None:
        """A broker without keys: 501 with a key, publishing without one."""
        self.fixture.hub.broker = Unkeyed(self.fixture.memory)  # type: ignore[assignment]
        refused = self.post()
        self.assertEqual(refused.code, 501)
        self.assertIn("idempotently", answer(refused)["error"])
        self.assertEqual(self.post(key=None).code, 200)
        self.assertEqual(self.delivered(), ["x"])

    def test_turned_off(self) -> None:
        """A broker that keeps no keys: 501, nothing published."""
        self.fixture.memory.idempotency_ttl = 0
        self.assertEqual(self.post().code, 501)
        self.assertEqual(self.delivered(), [])

    def test_metrics(self) -> None:
        """/metrics counts the replays."""
        from twisted_sse import SSECollector

        self.post()
        self.post()
        families = {
            family.name: family
            for family in SSECollector(
                self.fixture.registry, hub=self.fixture.hub
            ).collect()
        }
        self.assertEqual(families["sse_publish_replays"].samples[0].value, 1)


class InFlightTests(SynchronousTestCase):
    """Repeats while the first publish is under way wait for it."""

    def setUp(self) -> None:
        self.memory = MemoryBroker(epoch=EPOCH, clock=Clock())
        self.broker = Delayed(self.memory)
        self.hub = Hub(self.broker, clock=Clock())  # type: ignore[arg-type]
        self.got: list[Published] = []
        self.memory.subscribe("news", self.got.append)

    def publish(self, data: str = "x", key: str = "k") -> Deferred[str]:
        return self.hub.publish("news", Event(data=data), idempotency_key=key)

    def test_chained(self) -> None:
        """Repeats at once ask the broker once, and get the first id."""
        answers = [self.publish() for _ in range(5)]
        self.assertEqual(self.broker.calls, 1)
        self.broker.release()
        ids = [fired(each) for each in answers]
        self.assertEqual(len(set(ids)), 1)
        self.assertEqual([type(each) for each in ids], [str] + [Replayed] * 4)
        self.assertEqual(len(self.got), 1)
        self.assertEqual((self.hub.published, self.hub.replays), (1, 4))

    def test_chained_conflict(self) -> None:
        """A waiting repeat with another event fails once the first is known."""
        first = self.publish()
        other = self.publish(data="y")
        self.broker.release()
        self.assertIsInstance(failure_of(other).value, IdempotencyConflict)
        fired(first)
        self.assertEqual(self.hub.publish_failures, 1)

    def test_first_fails(self) -> None:
        """When the first fails, the waiting repeats publish themselves."""
        first = self.publish()
        second = self.publish()
        third = self.publish()
        self.broker.release(fail=True)
        failure_of(first)
        self.assertEqual(self.broker.calls, 2)
        self.broker.release()
        self.assertEqual(fired(second), fired(third))
        self.assertEqual(len(self.got), 1)

    def test_other_keys_not_chained(self) -> None:
        """Other keys and channels do not wait."""
        self.publish(key="a")
        self.publish(key="b")
        self.hub.publish("sport", Event(data="x"), idempotency_key="a")
        self.assertEqual(self.broker.calls, 3)


_KEYS = ("a", "b", "c")


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("publish"), st.sampled_from(_KEYS)),
            st.tuples(st.just("release"), st.integers(0, 20)),
        ),
        max_size=30,
    )
)
def test_exactly_once(steps: list[tuple[str, Any]]) -> None:
    """
    However publishes with keys and the broker's answers interleave, each
    key's event is delivered once and every publish answers its first id.
    """
    memory = MemoryBroker(epoch=EPOCH, clock=Clock())
    broker = Delayed(memory)
    hub = Hub(broker, clock=Clock())  # type: ignore[arg-type]
    got: list[Published] = []
    memory.subscribe("news", got.append)
    answers: list[tuple[str, list[object]]] = []
    for action, value in steps:
        if action == "publish":
            results: list[object] = []
            hub.publish("news", Event(data=value), idempotency_key=value).addBoth(
                results.append
            )
            answers.append((value, results))
        elif broker.waiting:
            broker.release(value % len(broker.waiting))
    while broker.waiting:
        broker.release()
    published = {event.frame.split(b"data: ")[1].split(b"\n")[0] for event in got}
    keys = [key for key, _ in answers]
    assert sorted(published) == sorted({key.encode() for key in keys})
    assert len(got) == len(set(keys))
    first_ids = {
        event.frame.split(b"data: ")[1].split(b"\n")[0].decode(): event.id
        for event in got
    }
    for key, results in answers:
        assert results == [first_ids[key]], (key, results)


class PublisherTests(SynchronousTestCase):
    """The stdlib publish() checks its idempotency_key before any request."""

    def test_checked_first(self) -> None:
        """A bad key is a ValueError or TypeError naming the argument."""
        from twisted_sse import publish

        # Port 9 (discard): nothing is sent, the checks come first.
        for bad in ("", "x" * 256, "caf\xe9", " padded"):
            with self.assertRaises(ValueError) as raised:
                publish("http://127.0.0.1:9", "news", "x", idempotency_key=bad)
            self.assertIn("idempotency_key", str(raised.exception))
        with self.assertRaises(TypeError):
            publish("http://127.0.0.1:9", "news", "x", idempotency_key=5)  # type: ignore[arg-type]
