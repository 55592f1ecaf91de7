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
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from twisted.python.threadable import isInIOThread
from zope.interface import Attribute, Interface, implementer

from ._event import Event

__all__ = [
    "DEFAULT_HISTORY",
    "DEFAULT_CHANNEL_TTL",
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
    Channels of events with ids, bounded history and fan-out.
    """

    available: bool = Attribute("Whether publishing works right now.")

    def publish(channel: str, event: Event, key: str | None = None) -> Deferred[str]:
        """
        Give ``event`` an id, keep it in the channel's history and deliver it
        to every subscriber of the channel.

        :param key: The conflation key; the event type (or ``message``) if
            ``None``.
        :returns: A Deferred firing with the id, or failing with
            :class:`BrokerUnavailable`.
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
        from the oldest event kept.

        :returns: A Deferred firing with the :class:`Subscription` once the
            resume point has been judged (its ``history_lost``) and the
            replay has begun; failing with :class:`ValueError` for an
            invalid channel, or :class:`BrokerUnavailable`.
        """

    def stop() -> Deferred[None]:
        """Release connections and timers."""


@define(eq=False)
class _Channel:
    name: str
    history: deque[Published] = field(factory=deque)
    history_bytes: int = 0
    #: Sequence number of the last event published (0: none yet).
    last_seq: int = 0
    #: The id of that event (``<epoch>-0`` before any), shared by every
    #: subscription made until the next one.
    position: str = ""
    subscribers: dict[int, Deliver] = field(factory=dict)
    #: Events published while an earlier one was being fanned out (a
    #: subscriber publishing from its callback), with the subscribers they
    #: go to; delivered in order once the earlier fan-out is done.
    pending: deque[tuple[Published, list[int]]] = field(factory=deque)
    delivering: bool = False


class _Forgets(Protocol):
    def _forget_if_idle(self, state: Any) -> None: ...


@define(eq=False)
class _TokenSubscription(Subscription):
    """
    A subscription that is also its own cancel handle (one object per
    subscriber, not a subscription plus a callable), for a broker that
    keeps its subscribers in a channel state's ``subscribers`` by token.
    """

    _broker: _Forgets | None = field(default=None, repr=False)
    _state: Any = field(default=None, repr=False)
    _token: int = field(default=0, repr=False)

    def cancel(self) -> None:
        """Stop delivering; safe to call more than once."""
        state, self._state = self._state, None
        if state is not None and self._broker is not None:
            state.subscribers.pop(self._token, None)
            self._broker._forget_if_idle(state)


@implementer(IBroker)
class MemoryBroker:
    """
    The in-process broker: ids ``<epoch>-<n>`` increasing within each
    channel, history bounded by count and bytes, synchronous fan-out.

    :param history: Events kept per channel.
    :param history_bytes: Encoded bytes kept per channel.
    :param epoch: The id prefix; the start time in milliseconds by default,
        so ids of a restarted server never match an earlier run's.
    """

    available = True

    def __init__(
        self,
        history: int = DEFAULT_HISTORY,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        epoch: int | None = None,
    ) -> None:
        if history < 0:
            raise ValueError(f"history must be >= 0 events, not {history!r}")
        if history_bytes < 0:
            raise ValueError(f"history_bytes must be >= 0, not {history_bytes!r}")
        self.history = history
        self.history_bytes = history_bytes
        self.epoch = int(time.time() * 1000) if epoch is None else epoch
        self._channels: dict[str, _Channel] = {}
        self._next_token = 0

    def channel_names(self) -> list[str]:
        """The channels that have history or subscribers."""
        return list(self._channels)

    def subscriber_count(self, channel: str) -> int:
        """How many subscriptions ``channel`` has."""
        found = self._channels.get(channel)
        return len(found.subscribers) if found else 0

    def _channel(self, name: str) -> _Channel:
        """The state of channel ``name``, made if new (then checked first)."""
        found = self._channels.get(name)
        if found is None:
            if not valid_channel(name):
                raise ValueError(f"invalid channel name: {name!r}")
            found = self._channels[name] = _Channel(name, position=f"{self.epoch}-0")
        return found

    def _forget_if_idle(self, channel: _Channel) -> None:
        # A channel that ever had an event is kept (a few hundred bytes), so
        # that its sequence numbers never start over within one epoch.
        if not channel.subscribers and not channel.last_seq:
            self._channels.pop(channel.name, None)

    def publish(
        self, channel: str, event: Event, key: str | None = None
    ) -> Deferred[str]:
        """See :meth:`IBroker.publish`."""
        try:
            state = self._channel(channel)
        except ValueError as error:
            return fail(error)
        state.last_seq += 1
        event_id = state.position = f"{self.epoch}-{state.last_seq}"
        published = Published(
            channel,
            event_id,
            _with_id(event, event_id).encode(),
            key if key is not None else (event.event or "message"),
        )
        if self.history:
            state.history.append(published)
            state.history_bytes += len(published.frame)
            while state.history and (
                len(state.history) > self.history
                or state.history_bytes > self.history_bytes
            ):
                state.history_bytes -= len(state.history.popleft().frame)
        # The subscribers as of now: one that subscribes later got this
        # event from the history, and must not get it twice.
        state.pending.append((published, list(state.subscribers)))
        if not state.delivering:
            self._fan_out(state)
        return succeed(event_id)

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
        self._forget_if_idle(state)

    def subscribe(
        self, channel: str, deliver: Deliver, last_event_id: str | None = None
    ) -> Deferred[Subscription]:
        """See :meth:`IBroker.subscribe`."""
        try:
            return succeed(self.subscribe_now(channel, deliver, last_event_id))
        except ValueError as error:
            return fail(error)

    def subscribe_now(
        self, channel: str, deliver: Deliver, last_event_id: str | None = None
    ) -> Subscription:
        """
        :meth:`subscribe` without the Deferred: this broker answers at once,
        and the hub opens its subscribers' streams before their request's
        ``render`` returns.

        :raises ValueError: for an invalid channel name.
        """
        state = self._channel(channel)
        token = self._next_token
        self._next_token += 1
        subscription = _TokenSubscription(
            channel, broker=self, state=state, token=token
        )
        if last_event_id:
            replay, subscription.history_lost = self._replay(state, last_event_id)
            for published in replay:
                deliver(published)
            subscription.replayed = len(replay)
        subscription.position = state.position
        # Same reactor turn as the replay: nothing can be published between
        # the two, so there is no gap and no duplicate at the handoff.
        state.subscribers[token] = deliver
        return subscription

    def _replay(
        self, state: _Channel, last_event_id: str
    ) -> tuple[list[Published], str | None]:
        parsed = parse_event_id(last_event_id)
        if parsed is None:
            return [], "malformed"
        epoch, seq = parsed
        if epoch != self.epoch or seq > state.last_seq:
            return [], "unknown"
        first_kept = state.last_seq - len(state.history) + 1
        if seq < first_kept - 1:
            return [], "trimmed"
        # History holds consecutive sequence numbers first_kept..last_seq.
        skip = seq - first_kept + 1
        return list(state.history)[skip:], None

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
