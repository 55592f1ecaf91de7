"""
Brokers: where published events get their ids, their history, and their way
to every subscriber.

This module is the contract: :class:`IBroker`, what the hub uses of a broker
and what one of your own implements, and the values brokers and the hub
exchange (:class:`Published`, :class:`Subscription`, the loss event, the
checks of a publish).  The in-process broker is in :mod:`._memory`, the
Redis one in :mod:`._redis`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any, Protocol

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import blockingCallFromThread
from twisted.python.threadable import isInIOThread
from zope.interface import Attribute, Interface

from ._event import Event

__all__ = [
    "DEFAULT_CHANNEL_TTL",
    "DEFAULT_HISTORY",
    "DEFAULT_IDEMPOTENCY_TTL",
    "HISTORY_LOST_EVENT",
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "MAX_KEY_LENGTH",
    "BrokerUnavailable",
    "Deliver",
    "Forgets",
    "Found",
    "IBroker",
    "IPatternBroker",
    "IdempotencyConflict",
    "IdempotencyUnavailable",
    "Published",
    "Replayed",
    "Subscription",
    "TokenSubscription",
    "Watch",
    "check_publish",
    "event_digest",
    "loss_event",
    "parse_event_id",
    "publish_from_thread",
    "valid_channel",
    "valid_idempotency_key",
    "valid_pattern",
]

#: Events kept per channel for resuming clients.
DEFAULT_HISTORY = 1000
#: Seconds after which a channel with no subscriber and no publish is
#: forgotten, its history with it.
DEFAULT_CHANNEL_TTL = 3600.0

#: The longest conflation key a publish may name, in characters.
MAX_KEY_LENGTH = 256
#: The event type that tells a client events may be missing before it.
HISTORY_LOST_EVENT = "history-lost"
#: The longest idempotency key a publish may carry, in characters.
MAX_IDEMPOTENCY_KEY_LENGTH = 255
#: Seconds a broker remembers an idempotency key after the publish that
#: first carried it: a repeat within them is answered the first id.
DEFAULT_IDEMPOTENCY_TTL = 300.0

_IDEMPOTENCY_KEY = re.compile(rf"[\x20-\x7e]{{1,{MAX_IDEMPOTENCY_KEY_LENGTH}}}")

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


def valid_pattern(name: str) -> bool:
    """
    Whether ``name`` is a valid pattern: a valid channel name followed by
    ``.*`` (``news.*``), which matches every channel under it at any depth
    (``news.eu``, ``news.eu.fr``; not ``news`` nor ``newsroom``).
    """
    return name.endswith(".*") and valid_channel(name[:-2])


def valid_idempotency_key(key: object) -> bool:
    """
    Whether ``key`` is a valid idempotency key: a string of 1 to 255
    printable ASCII characters (space to ``~``).
    """
    return isinstance(key, str) and _IDEMPOTENCY_KEY.fullmatch(key) is not None


def check_publish(
    channel: str,
    event: Event,
    key: str | None = None,
    idempotency_key: str | None = None,
) -> None:
    """
    Check what a publish names before any broker takes it: what one broker
    accepts, every broker stores and delivers.  The event's own fields were
    checked when it was made (:class:`Event`).

    :raises ValueError: naming what is wrong: the channel name (see
        :func:`valid_channel`), the key (a string of 1 to
        :data:`MAX_KEY_LENGTH` characters) or the idempotency key (1 to 255
        printable ASCII characters).
    """
    if not isinstance(channel, str) or not valid_channel(channel):
        raise ValueError(f"invalid channel name: {channel!r}")
    if not isinstance(event, Event):
        raise ValueError(f"event must be an Event, not {type(event).__name__}")
    if key is not None and (
        not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH
    ):
        raise ValueError(f"key must be a string of 1 to {MAX_KEY_LENGTH} characters")
    if idempotency_key is not None and not valid_idempotency_key(idempotency_key):
        raise ValueError(
            f"the idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} "
            "printable ASCII characters"
        )


def event_digest(event: Event, key: str | None = None) -> str:
    """
    What an idempotency key is remembered with besides the id, to tell a
    repeat from another event under the same key: the SHA-256 (in hex) of
    the event's fields (``data``, ``event``, ``retry``, ``comment``; its
    ``id`` is the broker's) and its conflation key (``key``, else the event
    type, else ``message``, as it is stored).  The same for every broker
    and process.
    """
    conflation = key if key is not None else (event.event or "message")
    fields = [event.data, event.event, event.retry, event.comment, conflation]
    text = json.dumps(fields, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Replayed(str):
    """
    The id a broker answers a repeat with: a publish whose idempotency key
    an earlier publish of the same event on the same channel carried, within
    the broker's TTL.  It is that publish's id (a ``str`` like any other),
    and nothing was published again; the hub tells its publisher so
    (``Idempotency-Replayed: true``).
    """

    __slots__ = ()


class IdempotencyConflict(ValueError):
    """
    A publish carried an idempotency key that an earlier publish on the
    same channel carried, within the broker's TTL, with another event: it is
    refused (the hub answers ``422``), and nothing is published.

    :ivar event_id: The id of the earlier publish.
    """

    def __init__(self, message: str, event_id: str) -> None:
        super().__init__(message)
        self.event_id = event_id


class IdempotencyUnavailable(NotImplementedError):
    """
    A publish carried an idempotency key that the broker cannot honour: it
    remembers no keys (its TTL is 0), or it was written before keys (its
    ``publish`` takes no ``idempotency_key``).  Nothing is published; the
    hub answers ``501``.
    """


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


#: Called by a :class:`Watch` with a channel it found, the position to
#: subscribe from so as to miss nothing, and ``None`` or why events of it
#: may be missing (see :meth:`IPatternBroker.watch`).
Found = Callable[[str, str, "str | None"], object]


@define(eq=False)
class Watch:
    """
    What :meth:`IPatternBroker.watch` gives back: the channels under a
    prefix, told as they get events.

    :ivar prefix: What the names of the channels watched start with
        (``news.`` for the pattern ``news.*``).
    :ivar history_lost: ``None``, or why channels under the prefix may
        have had events since ``since`` that the watch cannot tell
        (``"malformed"``, ``"unknown"``, ``"trimmed"``).
    """

    prefix: str
    history_lost: str | None = None
    _marker: str | Callable[[], str] = field(default="", repr=False)
    _cancel: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def marker(self) -> str:
        """
        How far the watch has got, for a later watch to go on from (its
        ``since``); opaque.  Every channel under the prefix with an event
        up to here has been told to ``found``.  A broker gives it as a
        string that it moves (:meth:`moved`), or as a function asked each
        time.
        """
        marker = self._marker
        return marker if isinstance(marker, str) else marker()

    def moved(self, marker: str) -> None:
        """The watch has got to ``marker`` (for a broker that tells it so)."""
        self._marker = marker

    def stopped_by(self, cancel: Callable[[], None]) -> None:
        """What :meth:`cancel` calls (for a broker that sets it after)."""
        self._cancel = cancel

    def cancel(self) -> None:
        """Stop telling; safe to call more than once."""
        cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()


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

        A broker may also take a keyword argument ``idempotency_key``
        (``publish(channel, event, key, *, idempotency_key=None)``, as
        :class:`MemoryBroker` and :class:`RedisBroker` do).  With it, a
        repeat (the same key on the same channel, within the time the
        broker remembers keys) publishes nothing: it fires with the first
        publish's id, as a ``Replayed`` (a ``str``), when it carries the
        same event (the same ``event_digest``), and fails with
        ``IdempotencyConflict`` when it carries another.  That must hold
        however the repeats arrive: at once, or on processes sharing the
        broker's store (one atomic step there).  It is optional: a broker
        without it (one written before it was added) is never passed one,
        and the hub refuses the publishes that carry a key (``501``).  A
        broker that takes it but remembers no keys fails them with
        ``IdempotencyUnavailable``.

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

        Optional: a broker without this method (one written before it was
        added) is asked :meth:`subscribe` alone, as one that always answers
        ``None`` is.

        :raises ValueError: for an invalid channel name (the hub checks
            names before it subscribes).
        """

    def stop() -> Deferred[None]:
        """Release connections and timers; fires once they are released."""


class IPatternBroker(IBroker):
    """
    A broker that can also watch the channels under a prefix, which the
    hub's patterns (``news.*`` on ``/subscribe``) need: the hub refuses
    patterns on a broker without :meth:`watch`.  :class:`MemoryBroker`
    provides it.
    """

    def watch(
        prefix: str,
        found: Found,
        since: str | None = None,
        known: Callable[[str], bool] | None = None,
    ) -> Watch | Deferred[Watch]:
        """
        Tell ``found`` of the channels whose names start with ``prefix``
        (it ends with a dot): the hub's patterns (``news.*``) are made of
        this.

        ``found(channel, position, history_lost)`` is called once per
        channel per watch:

        - before this returns, for each channel under the prefix with
          events after ``since`` (a :attr:`Watch.marker` this broker gave
          earlier), with the id just before its first such event, so that
          a subscription from it (:meth:`IBroker.subscribe`) misses none; or with
          ``history_lost`` set when some of them are gone (``"trimmed"``:
          ``position`` is where what is kept begins; ``"unknown"``: the
          channel was forgotten, ``position`` is ``""``);
        - from then on, for each channel under the prefix that gets an
          event, before that event reaches any subscriber, with the
          position just before it.

        With ``known``, ``found`` is also told, before this returns, of
        every channel under the prefix (existing or forgotten) that
        ``known(name)`` accepts, whatever its events: the channels a
        resuming subscription holds positions for, which it resumes from
        those (``position`` is then the channel's head, or ``""``).  A
        subscription's cursor may hold a channel at a position the marker
        has passed (its events were delivered but not yet written, or a
        replay of it was paused): this is how it finds them again.

        If ``since`` cannot be honoured at all (malformed, from another
        broker or run, or older than the broker remembers), the watch
        says so in ``Watch.history_lost`` and starts from now.

        :returns: The watch, or a Deferred firing with it for a broker
            that must ask a network first: then the calls of ``found`` for
            the channels with events after ``since`` come before it fires,
            and ``found`` goes on being called (live) after.
        """


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


def publish_from_thread(
    reactor: IReactorFromThreads,
    broker: IBroker,
    channel: str,
    event: Event,
    key: str | None = None,
    *,
    idempotency_key: str | None = None,
) -> str:
    """
    Publish from a thread that is not the reactor's (a worker, a thread
    pool, a blocking library's callback), blocking that thread until the
    broker has assigned the id.  The publish itself runs on the reactor
    thread, so it is ordered with every other publish.

    :param reactor: The running reactor.
    :param broker: The broker to publish on.
    :param idempotency_key: Passed on to the broker (see
        :meth:`IBroker.publish`), and only when given.
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
        if idempotency_key is None:
            return broker.publish(channel, event, key)
        keyed: Callable[..., Deferred[str]] = broker.publish
        return keyed(channel, event, key, idempotency_key=idempotency_key)

    # mypy cannot solve blockingCallFromThread's union of callables for a
    # Deferred-returning function; the result is the Deferred's value.
    result: str = blockingCallFromThread(reactor, publish)  # type: ignore[arg-type]
    return result
