"""
The in-process broker, :class:`MemoryBroker`: channels with ids
``<epoch>-<n>``, bounded history (per channel by count and bytes, in all by
bytes, and in time by a TTL, least recently published first), synchronous
fan-out, and replays paced by their subscriber, which hold a cursor rather
than the events.
"""

from __future__ import annotations

import bisect
import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any, cast

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ._broker import (
    DEFAULT_CHANNEL_TTL,
    DEFAULT_HISTORY,
    DEFAULT_IDEMPOTENCY_TTL,
    Deliver,
    Found,
    IdempotencyConflict,
    IdempotencyUnavailable,
    IPatternBroker,
    Published,
    Replayed,
    Subscription,
    TokenSubscription,
    Watch,
    check_publish,
    event_digest,
    loss_event,
    parse_event_id,
    valid_channel,
)
from ._event import Event
from ._presence import (
    JOIN_EVENT,
    LEAVE_EVENT,
    IPresenceBroker,
    LocalPresence,
    PresenceChange,
    PresenceFollow,
    PresenceInfo,
    Told,
    tell_one,
)

__all__ = [
    "DEFAULT_HISTORY_BYTES",
    "DEFAULT_HISTORY_TOTAL",
    "MAX_IDEMPOTENCY_KEYS",
    "MemoryBroker",
]

_log = Logger()

#: Bytes of encoded events kept per channel for resuming clients.
DEFAULT_HISTORY_BYTES = 16 * 1024 * 1024
#: Bytes of encoded events kept in all, over every channel.
DEFAULT_HISTORY_TOTAL = 16 * 1024 * 1024
#: Idempotency keys remembered at most, over all channels: past it the
#: oldest go first, before their TTL.
MAX_IDEMPOTENCY_KEYS = 100_000
#: Forgotten channels remembered (their names and when their last event
#: was published), so that a pattern resuming tells which lost events.
_FORGOTTEN = 10_000


@define(eq=False)
class _Channel:
    name: str
    #: The id prefix of this channel's events (see MemoryBroker).
    epoch: int
    history: deque[Published] = field(factory=deque)
    #: The broker-wide publish order of each event of ``history``.
    orders: deque[int] = field(factory=deque)
    history_bytes: int = 0
    #: The order of the last event published, and of the last one trimmed.
    last_order: int = 0
    trimmed_order: int = 0
    #: Sequence number of the last event published (0: none yet).
    last_seq: int = 0
    #: The id of that event (``<epoch>-0`` before any), shared by every
    #: subscription made until the next one.
    position: str = ""
    subscribers: dict[int, Deliver] = field(factory=dict)
    #: Subscriptions still replaying history, by token: they join
    #: ``subscribers`` when their replay reaches the last event.
    replays: dict[int, _ReplayingSubscription] = field(factory=dict)
    #: Events published while an earlier one was being fanned out (a
    #: subscriber publishing from its callback), with the subscribers they
    #: go to; delivered in order once the earlier fan-out is done.
    pending: deque[tuple[Published, list[int]]] = field(factory=deque)
    delivering: bool = False
    #: When an event was last published, and when the last subscriber left.
    published_at: float = 0.0
    left_at: float = 0.0


@define(eq=False)
class _ReplayingSubscription(TokenSubscription):
    """
    A memory-broker subscription whose replay is under way: it holds a
    cursor (the sequence number of the last event delivered), not the
    events, until it has caught up with the channel.
    """

    _deliver: Deliver | None = field(default=None, repr=False)
    _cursor: int = field(default=0, repr=False)
    #: ``deliver`` said it had no room; ``resume_replay`` goes on.
    _paused: bool = field(default=False, repr=False)
    _running: bool = field(default=False, repr=False)
    #: A loss was delivered since the subscriber last asked for more: a
    #: further trim moves the cursor without another one.
    _told_loss: bool = field(default=False, repr=False)
    #: The cursor moved past trimmed events after that loss was told.
    _skipped: bool = field(default=False, repr=False)

    def cancel(self) -> None:
        """Stop replaying and delivering; safe to call more than once."""
        state = self._state
        if state is not None:
            state.replays.pop(self._token, None)
        super().cancel()

    def resume_replay(self) -> None:
        """Go on with the replay where ``deliver`` paused it."""
        if not self._paused or self._state is None:
            return
        self._paused = False
        self._told_loss = False
        if not self._running:
            self.run()

    def trimmed(self, first_kept: int) -> None:
        """
        The history was trimmed to begin at ``first_kept``: a paused replay
        whose cursor it passed hears of it now, not when it next reads, so
        that its slow-client policy can act (see :meth:`IBroker.subscribe`).
        """
        if not self._paused or self._running or self._cursor >= first_kept - 1:
            return
        if self._told_loss:
            # Its client has not read the loss yet: one is enough for now,
            # and another, exact one follows when it reads (run).
            self._cursor = first_kept - 1
            self._skipped = True
            return
        self._paused = False
        self.run()

    def run(self) -> None:
        """
        Deliver from the cursor until ``deliver`` has no room, the replay
        reaches the channel's last event (then it is live, in the same
        turn) or it is cancelled.
        """
        state: _Channel = self._state
        deliver = self._deliver
        assert deliver is not None
        self._running = True
        try:
            while self._state is not None and not self._paused:
                cursor = self._cursor
                first_kept = state.last_seq - len(state.history) + 1
                if cursor < first_kept - 1 or self._skipped:
                    # Trimmed while the replay waited: say so, with the id
                    # just before the oldest event kept, and go on there.
                    cursor = self._cursor = max(cursor, first_kept - 1)
                    self._told_loss = True
                    self._skipped = False
                    published = loss_event(
                        state.name, f"{state.epoch}-{cursor}", "trimmed"
                    )
                elif cursor >= state.last_seq:
                    # Caught up, in the same reactor turn as the last event
                    # delivered: live from here, with no gap.
                    state.replays.pop(self._token, None)
                    state.subscribers[self._token] = deliver
                    self._deliver = None
                    return
                else:
                    published = state.history[cursor - first_kept + 1]
                    self._cursor = cursor + 1
                    self.replayed += 1
                try:
                    taken = deliver(published)
                except Exception:
                    _log.failure("A subscriber failed to take an event")
                    taken = None
                if taken is False:
                    self._paused = True
        finally:
            self._running = False


@implementer(IPatternBroker, IPresenceBroker)
class MemoryBroker:
    """
    The in-process broker: ids ``<epoch>-<n>`` increasing within each
    channel, history bounded per channel by count and bytes and in all by
    bytes, synchronous fan-out.

    Every bound holds whatever publishers do: a channel with no subscriber
    and no publish for ``channel_ttl`` seconds is forgotten with its
    history, and when the history of all channels passes
    ``history_total`` bytes the oldest events of the channels published
    least recently go first.  A subscriber resuming from an event no
    longer kept gets the usual loss signal.  A channel made again after one
    was forgotten gets a new epoch, so that ids given out before never
    resume into it silently.

    :param history: Events kept per channel.
    :param history_bytes: Encoded bytes kept per channel.
    :param history_total: Encoded bytes kept over all channels.
    :param channel_ttl: Seconds after which a channel without subscribers
        and publishes is forgotten (``0``: never).
    :param clock: The time source for ``channel_ttl``; the global reactor
        if ``None``.
    :param epoch: The id prefix; the start time in milliseconds by default,
        so ids of a restarted server never match an earlier run's.
    :param idempotency_ttl: Seconds an idempotency key is remembered after
        the publish that first carried it (see :meth:`IBroker.publish`);
        ``0`` remembers none, and a publish carrying one fails.
    :param max_idempotency_keys: Keys remembered at most, over all
        channels (100,000); past it the oldest are forgotten first, before
        their TTL.
    """

    available = True

    def __init__(
        self,
        history: int = DEFAULT_HISTORY,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        epoch: int | None = None,
        *,
        history_total: int = DEFAULT_HISTORY_TOTAL,
        channel_ttl: float = DEFAULT_CHANNEL_TTL,
        clock: IReactorTime | None = None,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        max_idempotency_keys: int = MAX_IDEMPOTENCY_KEYS,
    ) -> None:
        if history < 0:
            raise ValueError(f"history must be >= 0 events, not {history!r}")
        if history_bytes < 0:
            raise ValueError(f"history_bytes must be >= 0, not {history_bytes!r}")
        if history_total < 0:
            raise ValueError(f"history_total must be >= 0, not {history_total!r}")
        if not channel_ttl >= 0:
            raise ValueError(f"channel_ttl must be >= 0 seconds, not {channel_ttl!r}")
        if not idempotency_ttl >= 0:
            raise ValueError(
                f"idempotency_ttl must be >= 0 seconds, not {idempotency_ttl!r}"
            )
        if max_idempotency_keys < 1:
            raise ValueError(
                f"max_idempotency_keys must be >= 1, not {max_idempotency_keys!r}"
            )
        self.history = history
        self.idempotency_ttl = idempotency_ttl
        self.max_idempotency_keys = max_idempotency_keys
        #: The idempotency keys remembered, by the SHA-256 of channel and
        #: key, oldest first: when each expires, the id, the event's digest.
        self._idempotency: OrderedDict[bytes, tuple[float, str, str]] = OrderedDict()
        self.history_bytes = history_bytes
        self.history_total = history_total
        self.channel_ttl = channel_ttl
        self.epoch = int(time.time() * 1000) if epoch is None else epoch
        self._clock = clock
        #: The epoch of channels made from now on: the broker's, until a
        #: channel that had events is forgotten.
        self._channel_epoch = self.epoch
        self._channels: dict[str, _Channel] = {}
        self._next_token = 0
        #: Bytes of history over all channels.
        self.total_bytes = 0
        #: Channels that ever had an event, least recently published first
        #: (for channel_ttl), and those of them holding history (for
        #: history_total).
        self._published: OrderedDict[str, _Channel] = OrderedDict()
        self._holding: OrderedDict[str, _Channel] = OrderedDict()
        self._next_sweep = 0.0
        #: Publishes so far, over all channels: the order that watches'
        #: markers count in.
        self._order = 0
        #: Channel names by every prefix ending with a dot (``a.``,
        #: ``a.b.`` for ``a.b.c``), and the watches of each prefix.
        self._under: dict[str, set[str]] = {}
        self._watches: dict[str, dict[int, _Watching]] = {}
        #: Channels forgotten after an event, with that event's order; and
        #: the latest order of one no longer remembered.
        self._forgotten: OrderedDict[str, int] = OrderedDict()
        self._forgotten_floor = 0
        self._marker_text = (-1, "")
        #: Who is on each channel (see :meth:`enter`).
        self.present = LocalPresence()

    def channel_names(self) -> list[str]:
        """The channels that have history or subscribers."""
        return list(self._channels)

    def subscriber_count(self, channel: str) -> int:
        """How many subscriptions ``channel`` has."""
        found = self._channels.get(channel)
        return len(found.subscribers) + len(found.replays) if found else 0

    def watch_prefixes(self) -> dict[str, int]:
        """How many watches (of patterns) each watched prefix has."""
        return {prefix: len(watches) for prefix, watches in self._watches.items()}

    def history_of(self, channel: str) -> list[Published]:
        """The events kept for ``channel``, oldest first."""
        found = self._channels.get(channel)
        return list(found.history) if found else []

    def _now(self) -> float:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = cast(IReactorTime, reactor)
        return self._clock.seconds()

    def _channel(self, name: str) -> _Channel:
        """The state of channel ``name``, made if new (then checked first)."""
        found = self._channels.get(name)
        if found is None:
            if not valid_channel(name):
                raise ValueError(f"invalid channel name: {name!r}")
            epoch = self._channel_epoch
            found = self._channels[name] = _Channel(name, epoch, position=f"{epoch}-0")
            for prefix in _prefixes(name):
                self._under.setdefault(prefix, set()).add(name)
        return found

    def _unindex(self, name: str) -> None:
        for prefix in _prefixes(name):
            names = self._under.get(prefix)
            if names is not None:
                names.discard(name)
                if not names:
                    del self._under[prefix]

    def forget_if_idle(self, channel: Any) -> None:
        """
        A subscription of ``channel`` ended: forget the channel if it has
        no subscriber and never had an event, else start its TTL.
        """
        if channel.subscribers or channel.replays:
            return
        if not channel.last_seq:
            name = channel.name
            if self._channels.get(name) is channel:
                del self._channels[name]
                self._unindex(name)
            return
        # A channel that had events is kept until channel_ttl has passed.
        if self.channel_ttl:
            channel.left_at = self._now()

    def _sweep(self) -> None:
        """
        Forget the channels idle for ``channel_ttl``: looked at when the
        broker is used, at most every quarter of the TTL, so an idle server
        keeps no timer.
        """
        if not self.channel_ttl:
            return
        now = self._now()
        if now < self._next_sweep:
            return
        self._next_sweep = now + max(self.channel_ttl / 4, 1.0)
        expired = now - self.channel_ttl
        for state in list(self._published.values()):
            if state.published_at > expired:
                break  # the rest were published more recently
            if state.subscribers or state.replays or state.left_at > expired:
                continue
            if state.delivering:
                continue
            self._drop(state)

    def _drop(self, state: _Channel) -> None:
        if self._channels.get(state.name) is not state:
            return
        del self._channels[state.name]
        self._unindex(state.name)
        if state.last_order:
            forgotten = self._forgotten
            forgotten.pop(state.name, None)
            forgotten[state.name] = state.last_order
            if len(forgotten) > _FORGOTTEN:
                _, order = forgotten.popitem(last=False)
                self._forgotten_floor = max(self._forgotten_floor, order)
        self._published.pop(state.name, None)
        self._holding.pop(state.name, None)
        self.total_bytes -= state.history_bytes
        # Ids of the forgotten channel must never resume into a new one of
        # the same name: channels made from now on get a new epoch.
        self._channel_epoch = max(int(self._now() * 1000), self._channel_epoch + 1)

    def idempotency_keys(self) -> int:
        """How many idempotency keys are remembered (expired ones included
        until a publish with a key looks)."""
        return len(self._idempotency)

    def publish(
        self,
        channel: str,
        event: Event,
        key: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Deferred[str]:
        """
        See :meth:`IBroker.publish`.  Idempotency keys are remembered for
        ``idempotency_ttl`` seconds, ``max_idempotency_keys`` at most.
        """
        try:
            check_publish(channel, event, key, idempotency_key)
        except ValueError as error:
            return fail(error)
        try:
            if idempotency_key is None:
                return succeed(self._publish(channel, event, key))
            return succeed(self._publish_once(channel, event, key, idempotency_key))
        except (ValueError, IdempotencyUnavailable) as error:
            return fail(error)

    def _publish_once(
        self, channel: str, event: Event, key: str | None, idempotency_key: str
    ) -> str:
        """Publish unless ``idempotency_key`` was seen: the first id, then."""
        if not self.idempotency_ttl:
            raise IdempotencyUnavailable(
                "idempotency keys are turned off on this broker"
            )
        remembered = self._idempotency
        now = self._now()
        while remembered:
            oldest = next(iter(remembered.values()))
            if oldest[0] > now:
                break
            remembered.popitem(last=False)
        name = hashlib.sha256(f"{channel}\0{idempotency_key}".encode()).digest()
        digest = event_digest(event, key)
        found = remembered.get(name)
        if found is not None:
            _, first_id, first_digest = found
            if first_digest != digest:
                raise _conflict(first_id)
            return Replayed(first_id)
        event_id = self._publish(channel, event, key)
        remembered[name] = (now + self.idempotency_ttl, event_id, digest)
        while len(remembered) > self.max_idempotency_keys:
            remembered.popitem(last=False)
        return event_id

    def _publish(self, channel: str, event: Event, key: str | None) -> str:
        self._sweep()
        state = self._channel(channel)
        if self._watches:
            self._tell_watches(state)
        self._order += 1
        state.last_order = self._order
        state.last_seq += 1
        event_id = state.position = f"{state.epoch}-{state.last_seq}"
        published = Published(
            channel,
            event_id,
            _with_id(event, event_id).encode(),
            key if key is not None else (event.event or "message"),
        )
        if self.channel_ttl:
            state.published_at = self._now()
        self._published[channel] = state
        self._published.move_to_end(channel)
        # The subscribers as of now: one that subscribes later, or whose
        # replay catches up while the history is trimmed below, gets this
        # event from the history, and must not get it twice.
        state.pending.append((published, list(state.subscribers)))
        if self.history:
            self._keep(state, published)
        else:
            state.trimmed_order = state.last_order
        if not state.delivering:
            self._fan_out(state)
        return event_id

    def _keep(self, state: _Channel, published: Published) -> None:
        size = len(published.frame)
        state.history.append(published)
        state.orders.append(state.last_order)
        state.history_bytes += size
        self.total_bytes += size
        history = state.history
        while history and (
            len(history) > self.history or state.history_bytes > self.history_bytes
        ):
            self._trim(state)
        if history:
            self._holding[state.name] = state
            self._holding.move_to_end(state.name)
        # Over the total: the oldest events of the channels published least
        # recently go first.
        holding = self._holding
        while self.total_bytes > self.history_total and holding:
            oldest = next(iter(holding.values()))
            self._trim(oldest)

    def _trim(self, state: _Channel) -> None:
        state.trimmed_order = state.orders.popleft()
        size = len(state.history.popleft().frame)
        state.history_bytes -= size
        self.total_bytes -= size
        if not state.history:
            self._holding.pop(state.name, None)
            if not state.subscribers and not state.replays and not state.delivering:
                # Nothing left to keep it for: forgotten now rather than at
                # its TTL, so that channels without history or subscribers
                # cost nothing, however many a publisher makes.
                self._drop(state)
                return
        if state.replays:
            first_kept = state.last_seq - len(state.history) + 1
            for replaying in list(state.replays.values()):
                replaying.trimmed(first_kept)

    def _fan_out(self, state: _Channel) -> None:
        # A subscriber may publish from its callback: that event waits for
        # this one to reach every subscriber, so all see the same order.
        state.delivering = True
        try:
            while state.pending:
                published, tokens = state.pending.popleft()
                for token in tokens:
                    deliver = state.subscribers.get(token)
                    if deliver is None:
                        continue  # cancelled meanwhile
                    try:
                        deliver(published)
                    except Exception:
                        _log.failure("A subscriber failed to take an event")
        finally:
            state.delivering = False

    def subscribe(
        self, channel: str, deliver: Deliver, last_event_id: str | None = None
    ) -> Deferred[Subscription]:
        """See :meth:`IBroker.subscribe`."""
        try:
            return succeed(self._subscribe(channel, deliver, last_event_id))
        except ValueError as error:
            return fail(error)

    def subscribe_now(
        self, channel: str, deliver: Deliver, last_event_id: str | None = None
    ) -> Subscription | None:
        """
        See :meth:`IBroker.subscribe_now`: this broker answers at once.  A
        subclass that overrides :meth:`subscribe` (to answer later, say) is
        answered ``None`` here, so that the hub asks its :meth:`subscribe`.

        :raises ValueError: for an invalid channel name.
        """
        if type(self).subscribe is not MemoryBroker.subscribe:
            return None
        return self._subscribe(channel, deliver, last_event_id)

    def _subscribe(
        self, channel: str, deliver: Deliver, last_event_id: str | None
    ) -> Subscription:
        self._sweep()
        state = self._channel(channel)
        token = self._next_token
        self._next_token += 1
        if last_event_id:
            cursor, lost = self._resume_point(state, last_event_id)
            if cursor is not None and cursor < state.last_seq:
                replaying = _ReplayingSubscription(
                    channel,
                    position=state.position,
                    broker=self,
                    state=state,
                    token=token,
                    deliver=deliver,
                    cursor=cursor,
                )
                state.replays[token] = replaying
                replaying.run()
                return replaying
            subscription = TokenSubscription(
                channel,
                history_lost=lost,
                position=state.position,
                broker=self,
                state=state,
                token=token,
            )
        else:
            subscription = TokenSubscription(
                channel, position=state.position, broker=self, state=state, token=token
            )
        state.subscribers[token] = deliver
        return subscription

    def _resume_point(
        self, state: _Channel, last_event_id: str
    ) -> tuple[int | None, str | None]:
        """
        Where a replay after ``last_event_id`` starts (a sequence number),
        or ``None`` and why it cannot.
        """
        parsed = parse_event_id(last_event_id)
        if parsed is None:
            return None, "malformed"
        epoch, seq = parsed
        if epoch != state.epoch or seq > state.last_seq:
            return None, "unknown"
        first_kept = state.last_seq - len(state.history) + 1
        if seq < first_kept - 1:
            return None, "trimmed"
        return seq, None

    def watch(
        self,
        prefix: str,
        found: Found,
        since: str | None = None,
        known: Callable[[str], bool] | None = None,
    ) -> Watch:
        """
        See :meth:`IPatternBroker.watch`.  Markers are ``<epoch>-<n>``, ``n``
        counting publishes over all channels; a publish looks up only the
        prefixes of its own channel's name, however many watches there are.

        :raises ValueError: if ``prefix`` is not a valid channel name
            followed by a dot.
        """
        if not prefix.endswith(".") or not valid_channel(prefix[:-1]):
            raise ValueError(f"invalid prefix: {prefix!r}")
        self._sweep()
        token = self._next_token
        self._next_token += 1
        watching = _Watching(found)
        lost = None
        if since is not None:
            lost = self._tell_since(prefix, watching, since)
        if known is not None:
            self._tell_known(prefix, watching, known)
        watches = self._watches.setdefault(prefix, {})
        watches[token] = watching

        marker = self._marker
        made = Watch(prefix, lost, marker=marker)

        def cancel() -> None:
            # Told nothing more: the marker stays where the watch stopped.
            made.moved(marker())
            found = self._watches.get(prefix)
            if found is not None:
                found.pop(token, None)
                if not found:
                    del self._watches[prefix]

        made.stopped_by(cancel)
        return made

    def _marker(self) -> str:
        """
        Where every watch has got: every publish tells the watches first,
        so a watch has been told of every channel with an event up to now.
        (One text per publish, shared by every subscription that asks.)
        """
        cached = self._marker_text
        if cached[0] != self._order:
            cached = self._marker_text = (self._order, f"{self.epoch}-{self._order}")
        return cached[1]

    def _tell_known(
        self, prefix: str, watching: _Watching, known: Callable[[str], bool]
    ) -> None:
        """Tell ``watching`` of the channels under ``prefix`` that ``known`` accepts."""
        names = set(self._under.get(prefix, ()))
        names.update(name for name in self._forgotten if name.startswith(prefix))
        for name in sorted(names - watching.told):
            if known(name):
                watching.told.add(name)
                state = self._channels.get(name)
                watching.found(name, state.position if state is not None else "", None)

    def _tell_since(self, prefix: str, watching: _Watching, since: str) -> str | None:
        """
        Tell ``watching`` of the channels under ``prefix`` with events after
        the marker ``since``; why the marker cannot be honoured, if so.
        """
        parsed = parse_event_id(since)
        if parsed is None:
            return "malformed"
        epoch, after = parsed
        if epoch != self.epoch or after > self._order:
            return "unknown"
        names = set(self._under.get(prefix, ()))
        names.update(
            name
            for name, order in self._forgotten.items()
            if order > after and name.startswith(prefix)
        )
        for name in sorted(names):
            forgot = self._forgotten.get(name, 0) > after
            state = self._channels.get(name)
            if state is not None and state.last_order > after:
                position, lost = _first_after(state, after)
                if forgot:
                    lost = "unknown"
            elif forgot:
                position = state.position if state is not None else ""
                lost = "unknown"
            else:
                continue
            watching.told.add(name)
            watching.found(name, position, lost)
        return "trimmed" if self._forgotten_floor > after else None

    def _tell_watches(self, state: _Channel) -> None:
        """``state`` is about to get an event: tell the watches under it."""
        name = state.name
        for prefix in _prefixes(name):
            watches = self._watches.get(prefix)
            if not watches:
                continue
            for watching in list(watches.values()):
                if name in watching.told:
                    continue
                watching.told.add(name)
                try:
                    watching.found(name, state.position, None)
                except Exception:
                    _log.failure("A watch failed to take a channel")

    # Presence: one process, so the tally is the whole truth.

    def enter(self, channel: str, identity: str | None) -> None:
        """A subscriber connection opened on ``channel`` (see
        :class:`~twisted_sse.IPresenceBroker`)."""
        present = self.present
        if present.enter(channel, identity) and present.is_followed(channel):
            assert identity is not None
            present.tell(PresenceChange(channel, JOIN_EVENT, identity))

    def leave(self, channel: str, identity: str | None) -> None:
        """The connection :meth:`enter` was told of closed."""
        present = self.present
        if present.leave(channel, identity) and present.is_followed(channel):
            assert identity is not None
            present.tell(PresenceChange(channel, LEAVE_EVENT, identity))

    def presence(self, channel: str, limit: int) -> Deferred[PresenceInfo]:
        """Who is on ``channel``, at once."""
        return succeed(self.present.info(channel, limit))

    def follow_presence(self, channel: str, limit: int, told: Told) -> PresenceFollow:
        """Tell ``told`` who is on ``channel`` now, then each change."""
        tell_one(told, self.present.info(channel, limit))
        return self.present.follow(channel, told)

    def stop(self) -> Deferred[None]:
        """Nothing to release."""
        return succeed(None)


@define(eq=False)
class _Watching:
    """A watch of the memory broker: who to tell, and what it was told."""

    found: Found
    told: set[str] = field(factory=set)


def _prefixes(name: str) -> Iterator[str]:
    """Every prefix of ``name`` that ends with a dot: ``a.``, ``a.b.``..."""
    at = name.find(".")
    while at != -1:
        yield name[: at + 1]
        at = name.find(".", at + 1)


def _first_after(state: _Channel, after: int) -> tuple[str, str | None]:
    """
    The position just before ``state``'s first event published after the
    order ``after``, and ``"trimmed"`` if some of those are gone.
    """
    first_kept = state.last_seq - len(state.history) + 1
    if state.trimmed_order > after:
        return f"{state.epoch}-{first_kept - 1}", "trimmed"
    index = bisect.bisect_right(state.orders, after)
    return f"{state.epoch}-{first_kept + index - 1}", None


def _conflict(event_id: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        "the Idempotency-Key was used for another event on this channel "
        f"(published as {event_id})",
        event_id,
    )


def _with_id(event: Event, event_id: str) -> Event:
    return Event(
        data=event.data,
        event=event.event,
        id=event_id,
        retry=event.retry,
        comment=event.comment,
    )
