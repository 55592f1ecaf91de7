"""
The Redis broker: :class:`RedisBroker`, :class:`~twisted_sse.IBroker` over
Redis Streams (the design is in :mod:`twisted_sse._redis`).  Two
:class:`~twisted_sse._redis._link.RedisLink`\\ s per process: one for
commands (publish, replay pages, checks), one for the reader loop.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._broker import (
    DEFAULT_CHANNEL_TTL,
    DEFAULT_HISTORY,
    BrokerUnavailable,
    Deliver,
    IBroker,
    Published,
    Subscription,
    TokenSubscription,
    check_publish,
    loss_event,
    parse_event_id,
    valid_channel,
)
from .._event import Event
from ._address import RedisAddress
from ._entries import (
    EPOCH_FIELD,
    LAST_ID,
    ZERO,
    Entry,
    EventId,
    Snapshot,
    as_list,
    before,
    event_fields,
    field_value,
    format_id,
    newer,
    parse_position,
    published_from_fields,
    restart_point,
    text_id,
)
from ._entries import entries as reply_entries
from ._entries import snapshot as parse_snapshot
from ._entries import text as reply_text
from ._link import RedisLink
from ._protocol import COMMAND_TIMEOUT, Arg, RedisCommandError, Reply
from ._scripts import PUBLISH, REFRESH, ROTATE, SCRIPTS, SNAPSHOT, run_script

__all__ = ["BATCH", "DEFAULT_PREFIX", "PAGE_BYTES", "RedisBroker"]

_log = Logger()

#: Key prefix of the channel streams: channel ``news`` is the stream
#: ``sse:news``.
DEFAULT_PREFIX = "sse:"

#: Stream entries fetched per read (XREAD COUNT, XRANGE COUNT).
BATCH = 1000
#: Bytes of stream fields (names and values) a page of a replay or a
#: catch-up holds at most (one entry more if a single one is larger): a
#: subscriber that resumes from far back costs one page, not the history.
PAGE_BYTES = 512 * 1024
#: Milliseconds a reader's XREAD blocks when nothing arrives.  A new channel
#: wakes the reader at once with CLIENT UNBLOCK; this bound only matters when
#: that is refused (ACLs of some managed services) or races the XREAD, and it
#: is how often an idle reader proves its connection still works.
BLOCK_MS = 2000
#: Seconds between two checks of the channels a process follows (their
#: TTL refreshed, their epoch compared), at most.
_CHECK_INTERVAL = 60.0
#: Channels per refresh script.
_REFRESH_BATCH = 500
#: Seconds before a replay page that failed (Redis down) is read again.
_RETRY_PAGE = 1.0
#: Seconds the reader waits after Redis refused its read.
_PAUSE = 5.0


@define(eq=False)
class _Local:
    """One local subscriber of a channel, in the live fan-out."""

    deliver: Deliver
    #: Live events up to this id were covered by its replay; ``None`` once
    #: one after it was delivered.
    floor: EventId | None = None


@define(eq=False)
class _Replay:
    """
    A resuming subscriber on its way to the live fan-out: a cursor in the
    stream, not the events (see :meth:`RedisBroker.subscribe`).
    """

    local: _Local
    subscription: Subscription
    token: int
    #: The epoch and stream id of the last entry delivered (or skipped).
    epoch: str = ""
    cursor: EventId = ZERO
    #: Its deliver said it had no room: resume_replay goes on.
    paused: bool = False
    #: At the stream's end, in an epoch the reader has not reached yet: the
    #: reader picks it up when it has checked the channel.
    parked: bool = False
    #: resume_replay was called during the current deliver call.
    resumed: bool = False


@define(eq=False)
class _Channel:
    """A channel with local subscribers, as the reader follows it."""

    name: str
    key: str
    epoch_key: str
    #: The last stream id the reader has handled; ``None`` until known.
    position: EventId | None = None
    #: The channel's epoch as the reader knows it.
    epoch: str = ""
    #: Whether the next read must check the stream's state (after a
    #: reconnect, when the reader fell behind, or when its epoch may have
    #: changed).
    check: bool = False
    #: Subscribers in the live fan-out.
    subscribers: dict[int, _Local] = field(factory=dict)
    #: Subscribers on their way there: new ones waiting for the channel's
    #: first read (a _Local), resuming ones replaying (a _Replay).
    joining: dict[int, _Local | _Replay] = field(factory=dict)
    #: New subscribers waiting for the channel's snapshot that is read once
    #: for all of them at the end of this reactor turn; ``None`` when none.
    waiting: list[Deferred[Snapshot]] | None = None
    #: The last position given out, as epoch, id and text.
    _position_text: tuple[str, EventId, str] | None = field(default=None, init=False)

    def text(self, position: EventId) -> str:
        """``position`` as an event id, one string for all who get it."""
        cached = self._position_text
        if cached is None or cached[1] != position or cached[0] != self.epoch:
            text = f"{self.epoch}:{position[0]}-{position[1]}"
            cached = self._position_text = (self.epoch, position, text)
        return cached[2]


@define(eq=False)
class _RedisSubscription(TokenSubscription):
    """A Redis broker subscription: its own cancel handle and replay pacer."""

    def cancel(self) -> None:
        """Stop replaying and delivering; safe to call more than once."""
        state = self._state
        if state is not None:
            state.joining.pop(self._token, None)
        super().cancel()

    def resume_replay(self) -> None:
        """Go on with the replay where ``deliver`` paused it."""
        state, broker = self._state, self._broker
        if state is not None and isinstance(broker, RedisBroker):
            broker._resume_replay(state, self._token)


@implementer(IBroker)
class RedisBroker(Service):
    """
    A broker over Redis Streams that any number of processes share: events
    published on any of them reach the subscribers of all of them, and a
    client can resume on any of them with ``Last-Event-ID``.

    Start it with :meth:`startService` (or as a child of your application's
    service) and stop it with :meth:`stop`/:meth:`stopService`.  Until it is
    connected, and whenever Redis is unreachable, :attr:`available` is false,
    publishing fails with :class:`BrokerUnavailable` and new subscriptions
    are refused the same way; open subscriptions stay and resume, from the
    last stream id this process handled, when Redis is back.

    Event ids are ``<epoch>:<stream entry id>``; see the module docstring.

    Memory: the history is bounded per channel by ``history`` events (each
    at most the publisher's event size), channels by ``channel_ttl``, and
    Redis as a whole by its ``maxmemory`` (with ``noeviction``, a full
    Redis refuses publishes: visible, nothing lost silently).  There is no
    per-channel byte bound as the memory broker has: counting bytes exactly
    would take the trimming out of ``XADD MAXLEN ~`` into the publish
    script (reading the oldest entries' sizes as it trims), other programs'
    ``XADD``\\ s would escape the count, and a stream trimmed below
    ``history`` entries would let a reader that fell behind skip trimmed
    entries unseen (its check relies on at least ``history`` being kept).

    :param reactor: Provides ``IReactorTCP`` and ``IReactorTime``.
    :param address: Where Redis is (see :func:`parse_redis_url`).
    :param history: Events kept per channel: ``XADD MAXLEN ~ history`` (at
        least 1: the stream is also how events reach the other processes).
        Use the same value on every process.
    :param prefix: Prepended to the channel name to make the stream key
        (and, with ``#epoch`` after the name, the epoch's).
    :param block_ms: Milliseconds an idle reader's ``XREAD`` blocks.
    :param timeout: Seconds a Redis reply may take before the connection is
        deemed dead.
    :param channel_ttl: Seconds after which Redis forgets a channel (its
        stream and epoch) that nobody published on and no process followed
        meanwhile; 0 for never.  Use the same value on every process.
    """

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        *,
        history: int = DEFAULT_HISTORY,
        prefix: str = DEFAULT_PREFIX,
        block_ms: int = BLOCK_MS,
        timeout: float = COMMAND_TIMEOUT,
        channel_ttl: float = DEFAULT_CHANNEL_TTL,
    ) -> None:
        if history < 0:
            raise ValueError(f"history must be >= 0 events, not {history!r}")
        if block_ms < 1:
            raise ValueError(f"block_ms must be >= 1, not {block_ms!r}")
        if not channel_ttl >= 0:
            raise ValueError(f"channel_ttl must be >= 0 seconds, not {channel_ttl!r}")
        self.address = address
        self.history = history
        self.maxlen = max(history, 1)
        self.prefix = prefix
        self.block_ms = block_ms
        self.channel_ttl = channel_ttl
        self._ttl_ms = max(1, round(channel_ttl * 1000)) if channel_ttl else 0
        #: Seconds between two checks of the followed channels.
        self.check_interval = (
            min(channel_ttl / 3, _CHECK_INTERVAL) if channel_ttl else _CHECK_INTERVAL
        )
        scripts = [script.source for script in SCRIPTS]
        self._commands = RedisLink(
            reactor, address, "twisted_sse:commands", timeout=timeout, scripts=scripts
        )
        self._reader = RedisLink(
            reactor,
            address,
            "twisted_sse:reader",
            on_ready=self._reader_ready,
            on_lost=self._reader_lost,
            timeout=timeout,
            scripts=scripts,
        )
        self._clock: IReactorTime = reactor
        self._pause: Deferred[None] | None = None
        self._channels: dict[str, _Channel] = {}
        self._by_key: dict[bytes, _Channel] = {}
        self._tokens = itertools.count()
        #: Bumped on every reader connection: a loop of an older one ends.
        self._generation = 0
        self._reader_id: int | None = None
        self._reading: Deferred[None] | None = None
        self._idle: Deferred[None] | None = None
        self._blocked = False
        self._warned: deque[str] = deque(maxlen=1024)
        self._check_call: IDelayedCall | None = None
        self._retry_call: IDelayedCall | None = None
        #: Replays whose last page read failed, to read again.
        self._failed: list[tuple[_Channel, _Replay]] = []

    # Life cycle

    @property
    def available(self) -> bool:
        """Whether publishing and subscribing work right now."""
        return self._commands.ready and self._reader.ready

    def startService(self) -> None:
        """Connect to Redis (in the background; see :attr:`available`)."""
        super().startService()  # type: ignore[no-untyped-call]
        self._commands.start()
        self._reader.start()
        if self._check_call is None:
            self._check_call = self._clock.callLater(
                self.check_interval, self._check_channels
            )

    def stopService(self) -> Deferred[None]:
        """Close the connections; see :meth:`stop`."""
        super().stopService()  # type: ignore[no-untyped-call]
        return self.stop()

    def stop(self) -> Deferred[None]:
        """Close both connections and stop the timers; fires when closed."""
        self.running = False
        for call in (self._check_call, self._retry_call):
            if call is not None and call.active():
                call.cancel()
        self._check_call = self._retry_call = None

        async def stop() -> None:
            await self._commands.stop()
            await self._reader.stop()
            self._wake_idle()
            if self._pause is not None:
                self._pause.cancel()
            reading, self._reading = self._reading, None
            if reading is not None:
                await reading

        return Deferred.fromCoroutine(stop())

    # Publishing

    def key(self, channel: str) -> str:
        """The stream key of ``channel``."""
        return self.prefix + channel

    def epoch_key(self, channel: str) -> str:
        """The key of the hash that holds ``channel``'s epoch."""
        return self.prefix + channel + "#epoch"

    def publish(
        self, channel: str, event: Event, key: str | None = None
    ) -> Deferred[str]:
        """
        See :meth:`IBroker.publish`: one script (the epoch, ``XADD``, the
        TTLs); the id is ``<epoch>:<stream entry id>``.
        """
        try:
            check_publish(channel, event, key)
        except ValueError as error:
            return fail(error)
        added = run_script(
            self._commands,
            PUBLISH,
            (self.key(channel), self.epoch_key(channel)),
            (self.maxlen, self._ttl_ms, *event_fields(event, key)),
        )
        return added.addCallback(reply_text)

    # Subscribing

    def subscribe(
        self, channel: str, deliver: Deliver, last_event_id: str | None = None
    ) -> Deferred[Subscription]:
        """
        See :meth:`IBroker.subscribe`.

        A new subscriber of a channel this process follows joins its
        fan-out at once, at the reader's position; of another channel, once
        the channel's state is read (shared by every new subscriber of the
        reactor turn).  A resuming subscriber's replay is read in pages
        (with the stream's state each time, so that a trim or an epoch
        change after its cursor is seen), delivered as its ``deliver``
        takes them, and joins the fan-out once it reaches the reader's
        position, with no gap and no duplicate.
        """
        if not valid_channel(channel):
            return fail(ValueError(f"invalid channel name: {channel!r}"))
        if not self.available:
            return fail(BrokerUnavailable("Redis is not connected"))
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel(
                channel, self.key(channel), self.epoch_key(channel)
            )
            self._by_key[state.key.encode("utf-8")] = state
        token = next(self._tokens)
        local = _Local(deliver)
        subscription = _RedisSubscription(
            channel, broker=self, state=state, token=token
        )
        if last_event_id:
            return Deferred.fromCoroutine(
                self._resume(state, local, subscription, token, last_event_id)
            )
        if state.position is not None:
            # Followed: every event after the reader's position reaches
            # this subscriber, and none before.
            subscription.position = state.text(state.position)
            state.subscribers[token] = local
            return succeed(subscription)
        return Deferred.fromCoroutine(self._join(state, local, subscription, token))

    def channel_names(self) -> list[str]:
        """The channels that have local subscribers."""
        return list(self._channels)

    def subscriber_count(self, channel: str) -> int:
        """How many local subscriptions ``channel`` has."""
        found = self._channels.get(channel)
        return len(found.subscribers) + len(found.joining) if found else 0

    async def _join(
        self, state: _Channel, local: _Local, subscription: Subscription, token: int
    ) -> Subscription:
        """A new subscriber of a channel not followed yet."""
        state.joining[token] = local
        try:
            snapshot = await self._shared_snapshot(state)
        except BaseException:
            state.joining.pop(token, None)
            self.forget_if_idle(state)
            raise
        if state.joining.pop(token, None) is None:
            return subscription  # cancelled meanwhile
        self._follow(state, snapshot)
        if state.position is not None:
            subscription.position = state.text(state.position)
        else:
            subscription.position = text_id(snapshot.epoch, snapshot.last_generated)
        state.subscribers[token] = local
        return subscription

    async def _resume(
        self,
        state: _Channel,
        local: _Local,
        subscription: Subscription,
        token: int,
        last_event_id: str,
    ) -> Subscription:
        """A subscriber resuming after ``last_event_id``: judge, first page."""
        replay = _Replay(local, subscription, token)
        state.joining[token] = replay
        parsed = parse_position(last_event_id)
        try:
            if parsed is None or parsed[1] == LAST_ID:
                page = await self._shared_snapshot(state)
            else:
                page = await self._read_snapshot(
                    self._commands, state, parsed[1], BATCH, want=parsed[0]
                )
        except BaseException:
            state.joining.pop(token, None)
            self.forget_if_idle(state)
            raise
        if state.joining.get(token) is not replay:
            return subscription  # cancelled meanwhile
        self._follow(state, page)
        head = page.last_generated
        subscription.position = (
            state.text(head) if page.epoch == state.epoch else text_id(page.epoch, head)
        )
        if parsed is None:
            # An id of a stream without epochs (before them) may be known:
            # it is not garbage, but cannot be judged.
            old = parse_event_id(last_event_id) is not None
            lost: str | None = "unknown" if old else "malformed"
        elif parsed[0] != page.epoch or parsed[1] > head:
            lost = "unknown"
        elif page.lost_after(parsed[1]):
            lost = "trimmed"
        else:
            lost = None
        subscription.history_lost = lost
        replay.epoch = page.epoch
        if lost is None and parsed is not None:
            replay.cursor = parsed[1]
            self._replay_page(state, replay, page)
        else:
            # Live from the channel's position, as the hub tells the client.
            replay.cursor = head
            self._replay_onwards(state, replay, more=False)
        return subscription

    def _replay_page(self, state: _Channel, replay: _Replay, page: Snapshot) -> None:
        """Go on with ``replay`` from ``page``, read after its cursor."""
        if state.joining.get(replay.token) is not replay:
            return
        self._follow(state, page)
        entries, more = page.entries, page.more
        loss: Published | None = None
        if page.epoch != replay.epoch:
            # Redis lost the channel (or its tail) since the last page.
            start = restart_point(page, replay.cursor, replay.epoch)
            if start != replay.cursor:
                entries, more = [], True
            replay.epoch, replay.cursor = page.epoch, start
            loss = loss_event(state.name, text_id(page.epoch, start), "unknown")
        elif page.lost_after(replay.cursor):
            # Trimmed past the cursor while the replay waited.
            replay.cursor = max(replay.cursor, page.lost_up_to())
            loss = loss_event(state.name, text_id(page.epoch, replay.cursor), "trimmed")
        if loss is not None and not self._give(state, replay, loss):
            return
        prefix = page.epoch + ":"
        last = len(entries) - 1
        for index, (text, event_id, fields) in enumerate(entries):
            if event_id <= replay.cursor:
                continue
            replay.cursor = event_id
            published = self._decode(state.name, prefix + text, fields)
            if published is None:
                continue
            replay.subscription.replayed += 1
            if not self._give(state, replay, published):
                if replay.paused and index == last and not more:
                    # It has no room, but the replay is done: live events
                    # go to it whatever it answers.
                    self._try_join(state, replay)
                return
        self._replay_onwards(state, replay, more)

    def _give(self, state: _Channel, replay: _Replay, published: Published) -> bool:
        """Deliver one replayed event; whether to go on."""
        replay.resumed = False
        try:
            taken = replay.local.deliver(published)
        except Exception:
            _log.failure("A subscriber failed to take an event")
            taken = None
        if state.joining.get(replay.token) is not replay:
            return False  # cancelled by its deliver
        if taken is False and not replay.resumed:
            replay.paused = True
            return False
        return True

    def _replay_onwards(self, state: _Channel, replay: _Replay, more: bool) -> None:
        """After a page: the next one, or the live fan-out, or a wait."""
        if more:
            self._read_page(state, replay)
        elif self._try_join(state, replay):
            pass
        elif state.position is not None and replay.epoch == state.epoch:
            # The reader has gone on since the page was read.
            self._read_page(state, replay)
        else:
            # The reader has not seen this epoch yet: it checks the
            # channel now, and then picks the replay up (_unpark).
            replay.parked = True
            if state.position is not None and not state.check:
                state.check = True
                self._wake_reader()

    def _try_join(self, state: _Channel, replay: _Replay) -> bool:
        """Join the live fan-out if the replay has reached the reader."""
        position = state.position
        if position is None or replay.epoch != state.epoch or replay.cursor < position:
            return False
        del state.joining[replay.token]
        local = replay.local
        # Events up to the cursor that the reader has yet to handle were
        # replayed: skip them.
        local.floor = replay.cursor if replay.cursor > position else None
        state.subscribers[replay.token] = local
        replay.paused = replay.parked = False
        return True

    def _read_page(self, state: _Channel, replay: _Replay) -> None:
        """Read the page after the replay's cursor, and go on from it."""
        replay.parked = False

        def failed(failure: Failure) -> None:
            if state.joining.get(replay.token) is not replay:
                return
            _log.warn(
                "Reading the history of channel {channel} failed: {error}; "
                "trying again",
                channel=state.name,
                error=failure.getErrorMessage(),
            )
            self._failed.append((state, replay))
            if self._retry_call is None and self.running:
                self._retry_call = self._clock.callLater(_RETRY_PAGE, self._retry_pages)

        reading = self._read_snapshot(self._commands, state, replay.cursor, BATCH)
        # A failed read is tried again; a failure while delivering is not
        # (it would deliver twice), only logged.
        reading.addCallbacks(
            lambda page: self._replay_page(state, replay, page), failed
        ).addErrback(lambda failure: _log.failure("A replay failed", failure))

    def _retry_pages(self) -> None:
        self._retry_call = None
        failed, self._failed = self._failed, []
        for state, replay in failed:
            if state.joining.get(replay.token) is replay:
                self._read_page(state, replay)

    def _resume_replay(self, state: _Channel, token: int) -> None:
        replay = state.joining.get(token)
        if not isinstance(replay, _Replay):
            return
        replay.resumed = True
        if replay.paused:
            replay.paused = False
            self._read_page(state, replay)

    def _unpark(self, state: _Channel) -> None:
        """The reader has checked ``state``: the replays waiting for it go on."""
        for replay in list(state.joining.values()):
            if (
                isinstance(replay, _Replay)
                and replay.parked
                and state.joining.get(replay.token) is replay
                and not self._try_join(state, replay)
            ):
                self._read_page(state, replay)

    def _read_snapshot(
        self,
        link: RedisLink,
        state: _Channel,
        after: EventId | None,
        count: int,
        want: str = "",
    ) -> Deferred[Snapshot]:
        """
        Read the channel's epoch and stream state and (if ``after`` is
        given) a page of entries after it, in one script, so that nothing
        is trimmed or added between them.

        :param want: Read the entries only if the epoch is this one.
        """
        reading = run_script(
            link,
            SNAPSHOT,
            (state.key, state.epoch_key),
            (
                self._ttl_ms,
                want,
                "" if after is None else format_id(after),
                count,
                PAGE_BYTES,
            ),
        )
        return reading.addCallback(parse_snapshot)

    def _shared_snapshot(self, state: _Channel) -> Deferred[Snapshot]:
        """
        The channel's state (no entries), read once for every subscriber
        that asks during this reactor turn: a burst of new subscribers (a
        deploy, a network blip) costs Redis one script per channel and
        turn instead of one each.
        """
        answer: Deferred[Snapshot] = Deferred()
        if state.waiting is None:
            state.waiting = []
            self._clock.callLater(0, self._read_shared_snapshot, state)
        state.waiting.append(answer)
        return answer

    def _read_shared_snapshot(self, state: _Channel) -> None:
        waiting, state.waiting = state.waiting or [], None

        def answer(result: Snapshot | Failure) -> None:
            for each in waiting:
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(result)

        self._read_snapshot(self._commands, state, None, 0).addBoth(answer)

    def _follow(self, state: _Channel, snapshot: Snapshot) -> None:
        """Have the reader follow ``state`` from the snapshot on, if new."""
        if self._channels.get(state.name) is not state:
            return
        if state.position is None:
            state.position = snapshot.last_generated if snapshot.exists else ZERO
            state.epoch = snapshot.epoch
            self._wake_reader()
        elif snapshot.epoch != state.epoch and not state.check:
            # The reader is behind this read, or this read behind the
            # reader: the reader's own check tells which.
            state.check = True
            self._wake_reader()

    def forget_if_idle(self, state: _Channel) -> None:
        """A subscription of ``state`` ended: stop following it if idle."""
        if (
            not state.subscribers
            and not state.joining
            and self._channels.get(state.name) is state
        ):
            del self._channels[state.name]
            self._by_key.pop(state.key.encode("utf-8"), None)

    # Fan-out

    def _call(self, local: _Local, published: Published) -> None:
        try:
            local.deliver(published)
        except Exception:
            _log.failure("A subscriber failed to take an event")

    def _offer(self, local: _Local, event_id: EventId, published: Published) -> None:
        if local.floor is not None:
            if event_id <= local.floor:
                return
            local.floor = None
        self._call(local, published)

    def _fan_out(self, state: _Channel, entries: Iterable[Entry]) -> None:
        for text, event_id, fields in entries:
            position = state.position
            if position is None or event_id <= position:
                continue
            if fields and fields[0] == EPOCH_FIELD and len(fields) > 1:
                self._marked(state, event_id, fields[1])
            state.position = event_id
            published = self._decode(state.name, f"{state.epoch}:{text}", fields)
            if published is None:
                continue
            # The same Published, encoded once, goes to every local
            # subscriber, each with its own queue and slow-client policy.
            for local in list(state.subscribers.values()):
                floor = local.floor
                if floor is None:
                    self._call(local, published)
                elif event_id > floor:
                    local.floor = None
                    self._call(local, published)

    def _marked(self, state: _Channel, event_id: EventId, value: Reply) -> None:
        """An entry that made a new epoch: if not the one followed, switch."""
        epoch = reply_text(value)
        if not newer(epoch, state.epoch):
            # The mark of this epoch, or of an older one, read again.
            return
        _log.warn(
            "Channel {channel} has a new epoch {epoch} (was {old}): Redis lost "
            "its history",
            channel=state.name,
            epoch=epoch,
            old=state.epoch,
        )
        self._switch_epoch(state, epoch, before(event_id))
        self._unpark(state)

    def _switch_epoch(self, state: _Channel, epoch: str, start: EventId) -> None:
        """
        Follow ``state`` in ``epoch`` from ``start`` on; its subscribers
        first get the loss event, whose id resumes from there.
        """
        state.epoch = epoch
        state.position = start
        loss = loss_event(state.name, state.text(start), "unknown")
        for local in list(state.subscribers.values()):
            # What their replays covered was in the old epoch.
            local.floor = None
            self._call(local, loss)

    def _decode(
        self, channel: str, event_id: str, fields: Sequence[Reply]
    ) -> Published | None:
        try:
            return published_from_fields(
                channel, event_id, [field_value(value) for value in fields]
            )
        except ValueError as error:
            # A foreign publisher wrote something that cannot be sent: skip
            # it (once per entry in the log), never break the stream.
            if event_id not in self._warned:
                self._warned.append(event_id)
                _log.warn(
                    "Skipping stream entry {id} of channel {channel}: {error}",
                    id=event_id,
                    channel=channel,
                    error=str(error),
                )
            return None

    # Checking the followed channels

    def _check_channels(self) -> None:
        """
        Refresh the TTL of the channels this process follows, and check
        their epochs (a flush with no publish since is seen here).
        """
        self._check_call = self._clock.callLater(
            self.check_interval, self._check_channels
        )
        if not self._commands.ready:
            return
        followed = [s for s in self._channels.values() if s.position is not None]
        for start in range(0, len(followed), _REFRESH_BATCH):
            batch = followed[start : start + _REFRESH_BATCH]
            keys = [key for state in batch for key in (state.key, state.epoch_key)]
            run_script(self._commands, REFRESH, keys, (self._ttl_ms,)).addCallback(
                self._checked, batch
            ).addErrback(_check_failed)

    def _checked(self, reply: Reply, batch: list[_Channel]) -> None:
        changed = False
        for state, epoch in zip(batch, as_list(reply), strict=True):
            if (
                self._channels.get(state.name) is state
                and state.position is not None
                and (epoch is None or reply_text(epoch) != state.epoch)
            ):
                state.check = changed = True
        if changed:
            self._wake_reader()

    # The reader

    def _wake_reader(self) -> None:
        if self._wake_idle():
            return
        if self._blocked and self._reader_id is not None and self._commands.ready:
            # The blocking XREAD does not name the new stream: end it now
            # rather than after block_ms.
            self._commands.execute("CLIENT", "UNBLOCK", self._reader_id).addErrback(
                _unblock_failed
            )

    def _wake_idle(self) -> bool:
        idle, self._idle = self._idle, None
        if idle is None:
            return False
        idle.callback(None)
        return True

    def _reader_ready(self) -> None:
        self._generation += 1
        self._reader_id = None
        for state in self._channels.values():
            state.check = True
        previous = self._reading
        generation = self._generation

        async def read() -> None:
            if previous is not None:
                await previous
            await self._read(generation)

        self._reading = Deferred.fromCoroutine(read())

    def _reader_lost(self) -> None:
        self._reader_id = None
        self._wake_idle()

    async def _read(self, generation: int) -> None:
        try:
            reply = await self._reader.execute("CLIENT", "ID")
            self._reader_id = int(reply_text(reply))
            while self._generation == generation and self._reader.ready:
                try:
                    await self._read_once()
                except RedisCommandError as error:
                    _log.error("The Redis reader failed: {error}", error=str(error))
                    if "WRONGTYPE" in str(error) and await self._drop_non_streams():
                        continue
                    # Keep the connection, try again now and then.
                    self._pause = deferLater(self._clock, _PAUSE, lambda: None)
                    try:
                        await self._pause
                    except CancelledError:
                        return
                    finally:
                        self._pause = None
        except BrokerUnavailable:
            # The connection is gone; the link reconnects and starts again.
            pass
        except Exception:
            _log.failure("The Redis reader failed; reconnecting")
            self._reader.drop()

    async def _drop_non_streams(self) -> bool:
        """
        Stop reading the channels whose key is no longer a stream (another
        program replaced it): one such key fails every XREAD, and so every
        channel of this process.  Their subscribers stay, without events.

        :returns: Whether any was dropped.
        """
        followed = [s for s in self._channels.values() if s.position is not None]
        types = [self._reader.execute("TYPE", state.key) for state in followed]
        dropped = False
        for state, checking in zip(followed, types, strict=True):
            kind = reply_text(await checking)
            if kind not in ("stream", "none"):
                _log.error(
                    "Channel {channel} is no longer read: its key {key} holds a "
                    "{kind}, not a stream",
                    channel=state.name,
                    key=state.key,
                    kind=kind,
                )
                state.position = None
                dropped = True
        return dropped

    async def _read_once(self) -> None:
        followed = [s for s in self._channels.values() if s.position is not None]
        due = [state for state in followed if state.check]
        if due:
            await self._catch_up(due)
            return
        if not followed:
            self._idle = Deferred()
            await self._idle
            return
        keys: list[Arg] = [state.key for state in followed]
        ids: list[Arg] = [format_id(state.position or ZERO) for state in followed]
        self._blocked = True
        try:
            reply = await self._reader.execute(
                "XREAD",
                "COUNT",
                BATCH,
                "BLOCK",
                self.block_ms,
                "STREAMS",
                *keys,
                *ids,
                timeout=self.block_ms / 1000 + self._reader.timeout,
            )
        finally:
            self._blocked = False
        if reply is None:
            return
        full = min(BATCH, self.maxlen)
        for item in as_list(reply):
            key, entries = as_list(item)
            state = self._by_key.get(key if isinstance(key, bytes) else b"")
            if state is None:
                continue
            batch = reply_entries(entries)
            if len(batch) >= full:
                # Behind by a full batch: Redis may have trimmed entries not
                # read yet, which XREAD would skip without a word.  Read this
                # stream again with a check (a batch shorter than MAXLEN ~
                # cannot have a hole: trimming keeps at least that many).
                state.check = True
                continue
            self._fan_out(state, batch)

    async def _catch_up(self, states: list[_Channel]) -> None:
        # One script per stream, all sent at once (pipelined).
        reads = [
            (
                state,
                position,
                self._read_snapshot(self._reader, state, position, BATCH),
            )
            for state in states
            if (position := state.position) is not None
        ]
        rotate: list[_Channel] = []
        try:
            for state, position, reading in reads:
                if self._caught_up(state, position, await reading):
                    rotate.append(state)
        finally:
            for _, _, reading in reads:
                reading.addErrback(lambda _: None)
        for state in rotate:
            await run_script(
                self._reader,
                ROTATE,
                (state.key, state.epoch_key),
                (state.epoch, self._ttl_ms),
            )
            # The next check sees the new epoch, and goes on from there.
            state.check = True

    def _caught_up(
        self, state: _Channel, position: EventId, snapshot: Snapshot
    ) -> bool:
        """
        Go on with ``state`` from a check of its stream.

        :returns: Whether Redis holds less of the stream than this process
            read, under the same epoch: it lost writes (a failover to a
            replica that missed them), and the epoch must change so that
            the ids given out before are refused.
        """
        if state.position != position:
            return False
        state.check = snapshot.more
        if snapshot.epoch != state.epoch:
            start = restart_point(snapshot, position, state.epoch)
            _log.warn(
                "Channel {channel} has a new epoch {epoch} (was {old}): Redis "
                "lost its history; going on from {start}",
                channel=state.name,
                epoch=snapshot.epoch,
                old=state.epoch,
                start=format_id(start),
            )
            self._switch_epoch(state, snapshot.epoch, start)
            if start == position:
                self._fan_out(state, snapshot.entries)
            else:
                state.check = True  # read again from the new start
            self._unpark(state)
            return False
        if (snapshot.last_generated if snapshot.exists else ZERO) < position:
            _log.warn(
                "Stream {key} ends before {position}, which this process read: "
                "Redis lost data; a new epoch follows",
                key=state.key,
                position=format_id(position),
            )
            return True
        if snapshot.lost_after(position):
            lost_up_to = snapshot.lost_up_to()
            _log.warn(
                "Events of channel {channel} after {position} were trimmed "
                "before this process read them",
                channel=state.name,
                position=format_id(position),
            )
            loss = loss_event(state.name, state.text(lost_up_to), "trimmed")
            for local in list(state.subscribers.values()):
                self._offer(local, lost_up_to, loss)
            # Resuming from the loss event's id is exact: it is just
            # before the first entry left.
            state.position = max(position, lost_up_to)
        self._fan_out(state, snapshot.entries)
        self._unpark(state)
        return False


def _unblock_failed(failure: Failure) -> None:
    # Refused (ACL) or the command connection is down: the reader's XREAD
    # ends by itself after block_ms.
    _log.debug("CLIENT UNBLOCK failed: {error}", error=failure.getErrorMessage())


def _check_failed(failure: Failure) -> None:
    # Redis is down: the reader checks every channel when it reconnects.
    _log.debug(
        "Checking the followed channels failed: {error}",
        error=failure.getErrorMessage(),
    )
