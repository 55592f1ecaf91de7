"""
Exact resume of a subscription to several channels (L{Fanin}) over random
interleavings: publishes on several channels, a client that writes what it
is delivered when it likes (with little room, so replays are paced), drops
its connection and comes back with the last cursor it was sent, naming its
channels in another order and sometimes one more, while the history is
trimmed under it.

The client of these runs is L{Subscriber}: it checks every frame it is
sent against what was published (L{Log}), and the runs are L{play}ed the
same way on every broker: here on a L{MemoryBroker} with patterns
(C{news.*}, with channels made during the run), and in test_fanin_redis.py
on the Redis broker.
"""

from __future__ import annotations

import bisect
import json
import re
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from attrs import define, field, frozen
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._broker import HISTORY_LOST_EVENT, IBroker, Published
from twisted_sse._cursor import decode_cursor
from twisted_sse._event import Event
from twisted_sse._fanin import Fanin, parse_selection
from twisted_sse._memory import MemoryBroker

from ._helpers import EPOCH

#: The retry time of the opening frames.
RETRY = 1000

_POSITION = re.compile(r"(?:([0-9a-z]+):([0-9]+)|([0-9]+))-([0-9]+)")


def order_of(position: str) -> tuple[str, tuple[int, ...]]:
    """
    A channel position split into its epoch and what orders it within the
    epoch: ``<epoch>-<n>`` (the memory broker) or ``<epoch>:<ms>-<n>``
    (Redis).
    """
    match = _POSITION.fullmatch(position)
    if match is None:
        raise AssertionError(f"not a channel position: {position!r}")
    redis_epoch, ms, memory_epoch, n = match.groups()
    if redis_epoch is not None:
        return redis_epoch, (int(ms), int(n))
    return memory_epoch, (int(n),)


def covers(name: str, channel: str) -> bool:
    """Whether the channel or pattern ``name`` carries ``channel``."""
    if name.endswith(".*"):
        return channel.startswith(name[:-1])
    return name == channel


@define
class Log:
    """What was published, by channel, in order: ids and data."""

    ids: dict[str, list[str]] = field(factory=dict)
    data: dict[str, list[str]] = field(factory=dict)
    _orders: dict[str, list[tuple[int, ...]]] = field(factory=dict)

    def add(self, channel: str, event_id: str, data: str) -> None:
        """One more event of ``channel``, later than every other one."""
        epoch, order = order_of(event_id)
        orders = self._orders.setdefault(channel, [])
        ids = self.ids.setdefault(channel, [])
        if ids:
            assert order_of(ids[0])[0] == epoch, (channel, ids[0], event_id)
            assert orders[-1] < order, (channel, ids[-1], event_id)
        orders.append(order)
        ids.append(event_id)
        self.data.setdefault(channel, []).append(data)

    def count(self, channel: str) -> int:
        """How many events ``channel`` has had."""
        return len(self.ids.get(channel, ()))

    def index(self, channel: str, position: str) -> int:
        """How many events of ``channel`` are at or before ``position``."""
        epoch, order = order_of(position)
        ids = self.ids.get(channel, [])
        if ids:
            assert order_of(ids[0])[0] == epoch, (channel, ids[0], position)
        return bisect.bisect_right(self._orders.get(channel, []), order)


def fields(frame: bytes) -> dict[str, str]:
    """The fields of one frame (data lines joined), as written."""
    assert frame.endswith(b"\n\n"), frame
    found: dict[str, str] = {}
    for line in frame.decode("utf-8").split("\n"):
        if not line:
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data" and "data" in found:
            found["data"] += "\n" + value
        else:
            assert name not in found, frame
            found[name] = value
    return found


@define(eq=False)
class Connection:
    """
    One connection of a :class:`Subscriber`: its fan-in, and what was
    delivered to it but not written yet (as a stream's handoff keeps it).
    """

    subscriber: Subscriber
    room: int
    envelope: bool
    fanin: Fanin | None = None
    queue: deque[Published] = field(factory=deque)
    closed: bool = False

    def deliver(self, published: Published) -> bool:
        """The fan-in's deliver: queue it; ``False`` once there is no room."""
        if self.closed:
            self.subscriber.late.append(published)
            return False
        self.queue.append(published)
        return len(self.queue) < self.room


@define(eq=False)
class Subscriber:
    """
    The client of one subscription, over as many connections as it makes,
    checking each frame it is sent against the :class:`Log`:

    - each event of a channel is the one after the last it was sent of
      that channel (so every event once, in order per channel), unless a
      ``history-lost`` event named the channel since, in which case it is
      the one after the position announced (which must skip at least one);
    - a channel it did not carry before starts live: from the events
      published after the connection that first carries it opened;
    - every cursor holds, for each channel in it, the position of the last
      event of that channel it was sent (or the position it starts from).

    :ivar got: For each channel carried, how many of its events the client
        holds (a prefix of them, with gaps only where announced).
    :ivar losses: The losses announced: name and reason.
    :ivar late: What was delivered to a connection after it was closed.
    """

    broker: IBroker
    log: Log
    #: Every channel the run publishes on.
    channels: Sequence[str]
    names: list[str] = field(factory=list)
    got: dict[str, int] = field(factory=dict)
    last_id: str | None = None
    connection: Connection | None = None
    losses: list[tuple[str, str]] = field(factory=list)
    late: list[Published] = field(factory=list)
    #: Events and connections so far.
    events: int = 0
    connections: int = 0
    #: Channels a pattern's loss named, whose next event may follow a gap.
    _loose: set[str] = field(factory=set)

    def covered(self, channel: str) -> bool:
        """Whether the names carry ``channel``."""
        return any(covers(name, channel) for name in self.names)

    async def connect(self, names: Sequence[str], envelope: bool, room: int) -> None:
        """Drop the connection (if any) and make a new one with the last cursor."""
        self.disconnect()
        self.names = list(names)
        for channel in self.channels:
            if channel not in self.got and self.covered(channel):
                self.got[channel] = self.log.count(channel)
        connection = Connection(self, room, envelope)
        fanin = Fanin(
            self.broker,
            parse_selection(self.names),
            self.last_id,
            connection.deliver,
            envelope=envelope,
        )
        connection.fanin = fanin
        self.connection = connection
        self.connections += 1
        opened = await fanin.open()
        assert opened is fanin
        self._opening(fanin.opening_frames(RETRY))

    def disconnect(self) -> None:
        """Close the connection: what was not written is never sent."""
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.closed = True
            assert connection.fanin is not None
            connection.fanin.cancel()

    def write(self, count: int) -> None:
        """Write up to ``count`` events delivered, then ask for more."""
        connection = self.connection
        if connection is None:
            return
        fanin = connection.fanin
        assert fanin is not None
        queue = connection.queue
        for _ in range(min(count, len(queue))):
            frame, _key = fanin.encode(queue.popleft())
            self._receive(frame, connection.envelope)
        if not any(name.endswith(".*") for name in self.names):
            # The cursor is that of the last event written.  (A pattern's
            # channel found meanwhile is in it before its first event.)
            assert fanin.cursor == self.last_id
        if len(queue) < connection.room:
            fanin.resume_replay()

    def missing(self) -> dict[str, tuple[int, int]]:
        """The channels not sent all their events: how many, of how many."""
        return {
            channel: (got, self.log.count(channel))
            for channel, got in self.got.items()
            if got != self.log.count(channel)
        }

    def check_done(self) -> None:
        """Every event of every channel carried was sent."""
        assert not self.missing(), self.missing()

    # What the client is sent

    def _opening(self, frames: list[bytes]) -> None:
        first = fields(frames[0])
        assert first.keys() == {"retry", "id"}, frames[0]
        assert first["retry"] == str(RETRY)
        cursor = first["id"]
        assert len(frames) <= 2, frames
        for frame in frames[1:]:
            loss = fields(frame)
            assert loss.get("event") == HISTORY_LOST_EVENT, frame
            assert loss["id"] == cursor
            self._lost(loss["data"], cursor)
        self._check_cursor(cursor)

    def _receive(self, frame: bytes, envelope: bool) -> None:
        sent = fields(frame)
        cursor = sent["id"]
        if sent.get("event") == HISTORY_LOST_EVENT:
            self._lost(sent["data"], cursor)
        else:
            if envelope:
                assert "event" not in sent, frame
                body = json.loads(sent["data"])
                channel, data = body["channel"], body["data"]
                assert body["event"] is None, frame
            else:
                channel, data = sent["event"], sent["data"]
            assert channel in self.got, f"{channel!r} is not carried: {frame!r}"
            index = self.got[channel]
            published = self.log.data[channel]
            if channel in self._loose:
                self._loose.discard(channel)
                index = published.index(data, index)
            assert index < len(published), f"{frame!r}: {channel} has no more"
            assert data == published[index], (
                f"{channel}: sent {data!r}, expected {published[index]!r}"
            )
            decoded = decode_cursor(cursor)
            assert decoded is not None, cursor
            assert decoded.get(channel) == self.log.ids[channel][index], frame
            self.got[channel] = index + 1
            self.events += 1
        self._check_cursor(cursor)

    def _lost(self, data: str, cursor: str) -> None:
        announced = json.loads(data)
        channels: dict[str, str] = announced["channels"]
        assert announced["reason"] == next(iter(channels.values())), announced
        decoded = decode_cursor(cursor)
        assert decoded is not None, cursor
        for name, reason in channels.items():
            # Nothing here makes a cursor malformed or unknown.
            assert reason == "trimmed", announced
            self.losses.append((name, reason))
            if name.endswith(".*"):
                assert name in self.names, announced
                self._loose.update(
                    channel
                    for channel in self.got
                    if covers(name, channel) and decoded.get(channel) is None
                )
                continue
            assert name in self.got, f"loss of {name!r}, not carried: {announced}"
            position = decoded.get(name)
            assert position is not None, f"loss of {name!r} without its position"
            now = self.log.index(name, position)
            assert now > self.got[name], (
                f"{name}: a loss at {now} skips nothing after {self.got[name]}"
            )
            self.got[name] = now

    def _check_cursor(self, cursor: str) -> None:
        assert cursor.startswith("~"), cursor
        decoded = decode_cursor(cursor)
        assert decoded is not None, cursor
        for name in self.names:
            assert decoded.get(name) is not None, f"{name!r} not in the cursor"
        for channel, got in self.got.items():
            position = decoded.get(channel)
            if position is not None and channel not in self._loose:
                assert self.log.index(channel, position) == got, (
                    f"{channel}: the cursor says {position!r}, the client "
                    f"has {got} of its {self.log.count(channel)} events"
                )
        self.last_id = cursor


# A run


@frozen
class Publish:
    """Publish ``count`` events on ``channel``."""

    channel: str
    count: int


@frozen
class Write:
    """The client writes up to ``count`` events delivered."""

    count: int


@frozen
class Reconnect:
    """
    The client drops its connection and makes another with its last
    cursor: its names shuffled by ``shuffle``, with ``add`` added (if not
    there yet).
    """

    shuffle: int
    add: str | None
    envelope: bool
    room: int


@frozen
class Settle:
    """Let what is on its way arrive (a broker that answers later)."""


Step = Publish | Write | Reconnect | Settle


@frozen
class Run:
    """The names a client starts with, its room, and what happens."""

    names: tuple[str, ...]
    room: int
    steps: tuple[Step, ...]


def publishes(
    channels: Sequence[str], counts: st.SearchStrategy[int]
) -> st.SearchStrategy[Publish]:
    """Publishes of ``counts`` events on one of ``channels``."""
    return st.builds(Publish, st.sampled_from(channels), counts)


def runs(
    first: Sequence[str],
    more: Sequence[str],
    publish: st.SearchStrategy[Publish],
    settle: bool = False,
) -> st.SearchStrategy[Run]:
    """
    Runs whose client starts with some of ``first`` and may add any of
    ``first`` and ``more``, with ``publish``'s publishes.
    """
    rooms = st.sampled_from([1, 2, 3, 5, 1000])
    kinds: list[st.SearchStrategy[Step]] = [
        publish,
        st.builds(Write, st.sampled_from([1, 2, 3, 1000])),
        st.builds(
            Reconnect,
            st.integers(0, 2**16),
            st.none() | st.sampled_from([*first, *more]),
            st.booleans(),
            rooms,
        ),
    ]
    if settle:
        kinds.append(st.just(Settle()))
    return st.builds(
        Run,
        st.lists(st.sampled_from(first), min_size=1, unique=True).map(tuple),
        rooms,
        st.lists(st.one_of(kinds), min_size=6, max_size=30).map(tuple),
    )


def shuffled(names: Sequence[str], shuffle: int) -> list[str]:
    """``names`` in the order ``shuffle`` picks (without ``random``)."""
    left = list(names)
    order = []
    while left:
        shuffle, at = divmod(shuffle, len(left))
        order.append(left.pop(at))
    return order


async def play(
    run: Run,
    subscriber: Subscriber,
    publish: Callable[[str, list[str]], Awaitable[list[str]]],
    settle: Callable[[], Awaitable[None]],
    drained: Callable[[Callable[[], bool], str], Awaitable[None]],
) -> None:
    """
    Play ``run`` with ``subscriber``, then write everything that is left
    and check that every event of every channel carried was sent.

    :param publish: Publishes data on a channel, in order; their ids.
    :param settle: Lets what is on its way arrive.
    :param drained: Waits until a condition holds (as long as it may).
    """
    log = subscriber.log

    async def publish_some(channel: str, count: int) -> None:
        start = log.count(channel)
        data = [f"{channel}/{start + n}" for n in range(count)]
        for event_id, each in zip(await publish(channel, data), data, strict=True):
            log.add(channel, event_id, each)

    await subscriber.connect(run.names, False, run.room)
    for step in run.steps:
        if isinstance(step, Publish):
            await publish_some(step.channel, step.count)
        elif isinstance(step, Write):
            subscriber.write(step.count)
        elif isinstance(step, Reconnect):
            names = shuffled(subscriber.names, step.shuffle)
            # A channel added may be one a resumed pattern carried: it
            # goes on exactly from where the pattern left it.
            if step.add is not None and step.add not in names:
                names.insert(step.shuffle % (len(names) + 1), step.add)
            await subscriber.connect(names, step.envelope, step.room)
        else:
            await settle()
    # The last connection takes all that is left.
    connection = subscriber.connection
    assert connection is not None
    connection.room = 10**9

    def done() -> bool:
        subscriber.write(10**9)
        return not subscriber.missing()

    try:
        await drained(done, "every event of every channel")
    except AssertionError as error:
        raise AssertionError(f"{error}; missing: {subscriber.missing()}") from None
    subscriber.check_done()
    subscriber.disconnect()


def run_now(coroutine: Any) -> None:
    """Run a coroutine that waits only for what has happened already."""
    result = Deferred.fromCoroutine(coroutine)
    failures: list[Any] = []
    result.addErrback(failures.append)
    assert result.called, "the memory broker answers at once"
    if failures:
        failures[0].raiseException()


# The memory broker, with patterns

#: Channels and patterns a client starts with, and those it may add.
MEMORY_FIRST = ("a", "b", "news.*")
MEMORY_MORE = ("c", "news.eu")
#: Channels published on: some under news.*, some beside it.
MEMORY_CHANNELS = (
    "a",
    "b",
    "c",
    "news.eu",
    "news.us",
    "news.eu.fr",
    "news",
    "newsroom",
)


def play_memory(run: Run, history: int) -> Subscriber:
    """Play ``run`` on a memory broker keeping ``history`` events a channel."""
    broker = MemoryBroker(history=history, epoch=EPOCH, clock=Clock())
    subscriber = Subscriber(broker, Log(), MEMORY_CHANNELS)

    async def publish(channel: str, data: list[str]) -> list[str]:
        return [await broker.publish(channel, Event(data=each)) for each in data]

    async def settle() -> None:
        pass

    async def drained(done: Callable[[], bool], what: str) -> None:
        # Every answer comes at once: what is not there now never comes.
        for _ in range(100):
            if done():
                return
        raise AssertionError(f"never sent {what}")

    run_now(play(run, subscriber, publish, settle, drained))
    # The memory broker stops delivering when a fan-in is cancelled.
    assert not subscriber.late, subscriber.late
    return subscriber


class MemoryPropertyTests(SynchronousTestCase):
    """
    On the memory broker, with patterns: one cursor resumes every channel
    exactly, channels added start live, losses are announced per channel.
    """

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(
        run=runs(
            MEMORY_FIRST, MEMORY_MORE, publishes(MEMORY_CHANNELS, st.integers(1, 4))
        ),
        history=st.integers(1, 6),
    )
    @example(
        # A channel made under the pattern while the client is away.
        run=Run(
            ("news.*", "a"),
            1000,
            (Publish("news.eu", 1), Write(1), Reconnect(0, None, False, 1000)),
        ),
        history=3,
    )
    def test_exact_resume(self, run: Run, history: int) -> None:
        """
        Over any interleaving of publishes, writes, reconnections (names
        in another order, sometimes one more) and trims, each channel's
        events are sent once each, in order, with gaps only where a
        ``history-lost`` event announced them, and all of them in the end.
        """
        play_memory(run, history)

    def test_paths(self) -> None:
        """
        The runs reach what they check: a loss announced on resume and
        during a paced replay, an added channel, a channel a pattern finds
        during the run, a pattern resumed.
        """
        subscriber = play_memory(
            Run(
                ("a", "news.*"),
                2,
                (
                    Publish("a", 2),
                    Publish("news.eu", 1),
                    Write(1000),
                    Reconnect(1, None, False, 2),
                    # Away: trimmed past the client, and a new channel.
                    Publish("a", 5),
                    Publish("news.us", 2),
                    Reconnect(0, "b", True, 1),
                    Publish("b", 1),
                    Publish("c", 1),
                    Write(1),
                    # Trimmed while the replay waits for room.
                    Publish("news.us", 4),
                    Write(1000),
                ),
            ),
            history=3,
        )
        self.assertEqual(
            subscriber.got,
            {"a": 7, "b": 1, "news.eu": 1, "news.us": 6, "news.eu.fr": 0},
        )
        self.assertEqual(subscriber.connections, 3)
        self.assertIn(("a", "trimmed"), subscriber.losses)
        self.assertIn(("news.us", "trimmed"), subscriber.losses)
