"""
Brokers: where published events get their ids, their history, and their way
to every subscriber.

:class:`IBroker` is the seam; :class:`MemoryBroker` is the in-process
implementation, and the Redis broker sits behind the same interface.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol, cast

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from twisted.python.threadable import isInIOThread
from zope.interface import Attribute, Interface, implementer

from ._event import Event

__all__ = [
    "DEFAULT_CHANNEL_TTL",
    "DEFAULT_HISTORY",
    "DEFAULT_HISTORY_BYTES",
    "DEFAULT_HISTORY_TOTAL",
    "HISTORY_LOST_EVENT",
    "MAX_KEY_LENGTH",
    "BrokerUnavailable",
    "IBroker",
    "MemoryBroker",
    "Published",
    "Subscription",
    "check_publish",
    "loss_event",
    "publish_from_thread",
    "valid_channel",
]

_log = Logger()

#: Events kept per channel for resuming clients.
DEFAULT_HISTORY = 1000
#: Bytes of encoded events kept per channel for resuming clients.
DEFAULT_HISTORY_BYTES = 16 * 1024 * 1024
#: Bytes of encoded events kept in all, over every channel.
DEFAULT_HISTORY_TOTAL = 16 * 1024 * 1024
#: Seconds after which a channel with no subscriber and no publish is
#: forgotten, its history with it.
DEFAULT_CHANNEL_TTL = 3600.0

#: The longest conflation key a publish may name, in characters.
MAX_KEY_LENGTH = 256
#: The event type that tells a client events may be missing before it.
HISTORY_LOST_EVENT = "history-lost"

_CHANNEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
#: Event ids are ``<epoch>-<sequence>``: the epoch (milliseconds when the
#: broker started, or a Redis stream id's time part) keeps a restarted
#: server's ids from being confused with an earlier run's.
_EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")


def valid_channel(name: str) -> bool:
    """
    Whether ``name`` is a valid channel name: 1 to 128 characters of ASCII
    letters, digits and ``_ . : @ -``, starting with a letter or digit.
    """
    return _CHANNEL.fullmatch(name) is not None


def check_publish(channel: str, event: Event, key: str | None = None) -> None:
    """
    Check what a publish names before any broker takes it: what one broker
    accepts, every broker stores and delivers.  The event's own fields were
    checked when it was made (:class:`Event`).

    :raises ValueError: naming what is wrong: the channel name (see
        :func:`valid_channel`) or the key (a string of 1 to
        :data:`MAX_KEY_LENGTH` characters).
    """
    if not isinstance(channel, str) or not valid_channel(channel):
        raise ValueError(f"invalid channel name: {channel!r}")
    if not isinstance(event, Event):
        raise ValueError(f"event must be an Event, not {type(event).__name__}")
    if key is not None and (
        not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH
    ):
        raise ValueError(f"key must be a string of 1 to {MAX_KEY_LENGTH} characters")


def loss_event(channel: str, position: str, reason: str) -> Published:
    """
    The ``history-lost`` event: events before it may be missing, for
    ``reason`` (``"malformed"``, ``"unknown"`` or ``"trimmed"``), and its
    id, ``position``, is where the client resumes from without a gap.
    """
    frame = Event(
        event=HISTORY_LOST_EVENT,
        id=position,
        data=json.dumps({"reason": reason}),
    ).encode()
    return Published(channel, position, frame, HISTORY_LOST_EVENT)


def parse_event_id(value: str) -> tuple[int, int] | None:
    """Split an ``<epoch>-<sequence>`` id, or ``None`` if malformed."""
    match = _EVENT_ID.fullmatch(value)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


class BrokerUnavailable(Exception):
    """The broker cannot take or deliver events right now (e.g. Redis down)."""


@frozen
class Published:
    """
    An event as the broker stored it: encoded once, with its id, and the
    same bytes go to every subscriber.

    :ivar channel: The channel it was published on.
    :ivar id: Its broker-assigned id.
    :ivar frame: Its wire bytes, ``id:`` included.
    :ivar key: The conflation key: subscribers with the ``latest`` policy
        keep only the newest queued event per key.
    """

    channel: str
    id: str
    frame: bytes
    key: str


#: Called with each event a subscription delivers, in order.
Deliver = Callable[[Published], object]


@define(eq=False)
class Subscription:
    """
    What :meth:`IBroker.subscribe` gives back.

    A broker of your own makes one with ``cancel``, what stops its
    deliveries (called once, by the first :meth:`cancel`); one that paces
    its replays subclasses it, to go on in :meth:`resume_replay`.

    :ivar channel: The channel subscribed to.
    :ivar replayed: How many history events were delivered before live.
    :ivar history_lost: ``None`` when the resume was exact (or none was
        asked); otherwise why events may be missing: ``"malformed"``,
        ``"unknown"`` or ``"trimmed"``.
    :ivar position: The channel's position when the subscription went
        live: the id of the last event published before it (``<epoch>-0``
        for a channel without events), so every event delivered live comes
        after it.  A client that resumes from it misses nothing, even if it
        disconnects before its first event; after a loss, it is where the
        client resumes.  ``""`` if the broker cannot tell.
    """

    channel: str
    replayed: int = 0
    history_lost: str | None = None
    position: str = ""
    _cancel: Callable[[], None] | None = field(default=None, repr=False)

    def cancel(self) -> None:
        """Stop delivering; safe to call more than once."""
        cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()

    def resume_replay(self) -> None:
        """
        The subscriber has room again: go on with a replay that its
        ``deliver`` paused by returning ``False`` (see
        :meth:`IBroker.subscribe`).  Does nothing when no replay is paused.
        """


class IBroker(Interface):
    """
    Channels of events with ids, bounded history and fan-out: all that the
    :class:`Hub` uses of a broker.

    :class:`MemoryBroker` and :class:`RedisBroker` provide it, and so can a
    broker of your own (over another store or message bus): declare it with
    ``@implementer(IBroker)`` and give it every member below; the hub then
    serves it as it serves ours, and a subscriber it answers at once opens
    its stream as fast.  There is no base class to inherit.  What a broker
    must guarantee, whatever it stores events in:

    - **Ids.**  :meth:`publish` gives each event an id, a string that
      increases in publish order within its channel and that the same
      broker recognises when a client resumes after it, even after a
      restart (never reused for another event: the in-memory broker starts
      its ids with the time it started).
    - **Order.**  Every subscriber of a channel gets its events in the order
      they were published, each once, from one call of ``deliver`` at a
      time on the reactor thread; and the frame it gets is the event
      encoded with its id (``Published.frame``), the same bytes for every
      subscriber.
    - **Resumption.**  A subscription after ``last_event_id`` gets exactly
      the events after it, or says why it cannot (``history_lost``) and
      starts from the channel's position, which it reports
      (``Subscription.position``).
    - **Checks.**  Channel names, events and keys are checked with
      :func:`check_publish` (the hub checks before calling, other
      publishers may not), so every broker accepts and refuses the same.

    A broker may also provide ``channel_names()`` and
    ``subscriber_count(channel)`` (see
    :class:`~twisted_sse.testing.SubscriptionCounter`), which
    :func:`~twisted_sse.testing.assert_no_leaks` uses to find subscribers
    left behind and ``/metrics`` to count channels, and ``total_bytes``,
    the bytes of history it keeps; the hub does not use them.
    """

    available: bool = Attribute(
        "Whether publishing works right now (``/health`` and ``/metrics`` "
        "report it; the hub does not ask before subscribing, it is told by "
        "the failure)."
    )

    def publish(channel: str, event: Event, key: str | None = None) -> Deferred[str]:
        """
        Give ``event`` an id, keep it in the channel's history and deliver it
        to every subscriber of the channel.

        :param key: The conflation key; the event type (or ``message``) if
            ``None``.
        :returns: A Deferred firing with the id, or failing with
            :class:`BrokerUnavailable` (the hub answers ``503``) or
            :class:`ValueError` for what :func:`check_publish` refuses
            (``400``).
        """

    def subscribe(
        channel: str, deliver: Deliver, last_event_id: str | None = None
    ) -> Deferred[Subscription]:
        """
        Deliver the channel's events to ``deliver``: first every event of the
        history strictly after ``last_event_id`` (if given), then the live
        ones, with no gap and no duplicate at the handoff.

        The replay is paced by the subscriber, so that one that resumes
        from far back and does not read costs what it holds, not the
        history: when ``deliver`` returns ``False`` for a replayed event
        (it has no room), the broker stops after that event, keeping only a
        cursor, and goes on when the subscriber calls
        :meth:`Subscription.resume_replay`.  A ``deliver`` that never
        returns ``False`` gets the whole replay.  Live events are delivered
        only once the replay has reached the channel's head, and their
        return value is ignored.  If the history is trimmed past the
        cursor while the replay waits, the next event delivered is a
        :func:`loss_event` (reason ``"trimmed"``), and the replay goes on
        from the oldest event kept.  (A broker that ignores ``False``
        still works under the hub, which then holds the rest of the replay
        in memory until the client takes it.)

        ``deliver`` may be called before the Deferred fires: the hub keeps
        those events and sends them first.  A ``deliver`` that raises is
        the subscriber's fault: log it and go on with the others.

        :returns: A Deferred firing with the :class:`Subscription` once the
            resume point has been judged (its ``history_lost``) and the
            replay has begun; failing with :class:`ValueError` for an
            invalid channel, or :class:`BrokerUnavailable` (the hub sends
            the client away to come back later).
        """

    def subscribe_now(
        channel: str, deliver: Deliver, last_event_id: str | None = None
    ) -> Subscription | None:
        """
        :meth:`subscribe` without the Deferred, when the broker can answer
        at once: the hub asks this first, and a subscriber answered here
        has its stream opened before its request's ``render`` returns, with
        no Deferred on the way (a measurable share of the cost of opening a
        connection).  ``None`` means the broker cannot answer at once (it
        must wait for a network, say), and nothing is subscribed: the hub
        then calls :meth:`subscribe`.  A broker that always waits returns
        ``None``; one that changes how :meth:`subscribe` answers (a
        subclass of ours that answers later, for instance) changes this
        too.

        What the subscription delivers, and when, is as :meth:`subscribe`
        says: the replay has begun when this returns.

        :raises ValueError: for an invalid channel name (the hub checks
            names before it subscribes).
        """

    def stop() -> Deferred[None]:
        """Release connections and timers; fires once they are released."""


@define(eq=False)
class _Channel:
    name: str
    #: The id prefix of this channel's events (see MemoryBroker).
    epoch: int
    history: deque[Published] = field(factory=deque)
    history_bytes: int = 0
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


class Forgets(Protocol):
    """A broker that a :class:`TokenSubscription` tells when it leaves."""

    def forget_if_idle(self, state: Any) -> None:
        """Drop the state of a channel that has nothing left to keep."""


@define(eq=False)
class TokenSubscription(Subscription):
    """
    A subscription that is also its own cancel handle (one object per
    subscriber, not a subscription plus a callable), for a broker that
    keeps its subscribers in a channel state's ``subscribers`` by token.
    """

    _broker: Forgets | None = field(default=None, repr=False)
    _state: Any = field(default=None, repr=False)
    _token: int = field(default=0, repr=False)

    def cancel(self) -> None:
        """Stop delivering; safe to call more than once."""
        state, self._state = self._state, None
        if state is not None and self._broker is not None:
            state.subscribers.pop(self._token, None)
            self._broker.forget_if_idle(state)


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


@implementer(IBroker)
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
    ) -> None:
        if history < 0:
            raise ValueError(f"history must be >= 0 events, not {history!r}")
        if history_bytes < 0:
            raise ValueError(f"history_bytes must be >= 0, not {history_bytes!r}")
        if history_total < 0:
            raise ValueError(f"history_total must be >= 0, not {history_total!r}")
        if not channel_ttl >= 0:
            raise ValueError(f"channel_ttl must be >= 0 seconds, not {channel_ttl!r}")
        self.history = history
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

    def channel_names(self) -> list[str]:
        """The channels that have history or subscribers."""
        return list(self._channels)

    def subscriber_count(self, channel: str) -> int:
        """How many subscriptions ``channel`` has."""
        found = self._channels.get(channel)
        return len(found.subscribers) + len(found.replays) if found else 0

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
        return found

    def forget_if_idle(self, channel: Any) -> None:
        """
        A subscription of ``channel`` ended: forget the channel if it has
        no subscriber and never had an event, else start its TTL.
        """
        if channel.subscribers or channel.replays:
            return
        if not channel.last_seq:
            self._channels.pop(channel.name, None)
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
        self._published.pop(state.name, None)
        self._holding.pop(state.name, None)
        self.total_bytes -= state.history_bytes
        # Ids of the forgotten channel must never resume into a new one of
        # the same name: channels made from now on get a new epoch.
        self._channel_epoch = max(int(self._now() * 1000), self._channel_epoch + 1)

    def publish(
        self, channel: str, event: Event, key: str | None = None
    ) -> Deferred[str]:
        """See :meth:`IBroker.publish`."""
        try:
            check_publish(channel, event, key)
            self._sweep()
            state = self._channel(channel)
        except ValueError as error:
            return fail(error)
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
        if not state.delivering:
            self._fan_out(state)
        return succeed(event_id)

    def _keep(self, state: _Channel, published: Published) -> None:
        size = len(published.frame)
        state.history.append(published)
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
        See :meth:`IBroker.subscribe_now`: this broker always answers at
        once, never ``None``.  A subclass whose :meth:`subscribe` answers
        later overrides this too, to return ``None``: otherwise the hub
        subscribes here, without its :meth:`subscribe`.

        :raises ValueError: for an invalid channel name.
        """
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

    def stop(self) -> Deferred[None]:
        """Nothing to release."""
        return succeed(None)


def _with_id(event: Event, event_id: str) -> Event:
    return Event(
        data=event.data,
        event=event.event,
        id=event_id,
        retry=event.retry,
        comment=event.comment,
    )


def publish_from_thread(
    reactor: IReactorFromThreads,
    broker: IBroker,
    channel: str,
    event: Event,
    key: str | None = None,
) -> str:
    """
    Publish from a thread that is not the reactor's (a worker, a thread
    pool, a blocking library's callback), blocking that thread until the
    broker has assigned the id.  The publish itself runs on the reactor
    thread, so it is ordered with every other publish.

    :param reactor: The running reactor.
    :param broker: The broker to publish on.
    :raises RuntimeError: when called on the reactor thread, where it would
        deadlock: call ``broker.publish`` there.
    :raises BrokerUnavailable: and any error of the publish.
    :returns: The event's id.
    """
    if isInIOThread():
        raise RuntimeError(
            "publish_from_thread blocks: call broker.publish on the reactor thread"
        )

    def publish() -> Deferred[str]:
        return broker.publish(channel, event, key)

    # mypy cannot solve blockingCallFromThread's union of callables for a
    # Deferred-returning function; the result is the Deferred's value.
    result: str = blockingCallFromThread(reactor, publish)  # type: ignore[arg-type]
    return result
