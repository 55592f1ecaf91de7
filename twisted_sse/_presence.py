"""
Presence: who is on a channel right now.

A subscriber connection on a channel is *present* there from the moment its
stream opens until it closes.  The hub tells its broker of each one
(:meth:`IPresenceBroker.enter`, :meth:`IPresenceBroker.leave`), with the
identity its credentials name (a token's ``sub``, see
:attr:`~twisted_sse.Grant.identity`) or ``None`` for an anonymous one, and
asks the broker what it knows (:meth:`IPresenceBroker.presence`) and to be
told of arrivals and departures (:meth:`IPresenceBroker.follow_presence`).

This module is the contract and the values exchanged, and
:class:`LocalPresence`, the tally of one process that the in-memory broker
answers from and the Redis broker keeps in Redis under a lease.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._broker import IBroker
from ._event import Event

__all__ = [
    "DEFAULT_PRESENCE_MEMBERS",
    "JOIN_EVENT",
    "LEAVE_EVENT",
    "MAX_PRESENCE_MEMBERS",
    "PRESENCE_EVENT",
    "IPresenceBroker",
    "LocalPresence",
    "Member",
    "NoPresence",
    "PresenceChange",
    "PresenceFollow",
    "PresenceInfo",
    "Told",
    "tell_one",
    "wants_presence",
]

_log = Logger()

#: Members listed by default in an answer about presence.
DEFAULT_PRESENCE_MEMBERS: Final = 100
#: The most members an answer may be asked to list.
MAX_PRESENCE_MEMBERS: Final = 10_000
#: The event types of presence on a stream: an identity arrived, an
#: identity left, and the whole of a channel's presence (sent first, and
#: again when changes were missed).
JOIN_EVENT: Final = "join"
LEAVE_EVENT: Final = "leave"
PRESENCE_EVENT: Final = "presence"


class NoPresence(Exception):
    """This hub keeps no presence: it was turned off, or its broker has
    none (it does not provide :class:`IPresenceBroker`)."""


@frozen
class Member:
    """
    An identity present on a channel.

    :ivar sub: The identity (a token's ``sub``).
    :ivar connections: How many of its connections are open on the channel.
    """

    sub: str
    connections: int


def _members(value: Iterable[Member]) -> tuple[Member, ...]:
    return tuple(value)


@frozen
class PresenceInfo:
    """
    Who is on a channel.

    :ivar channel: The channel.
    :ivar count: Open subscriber connections on it, anonymous ones
        included; ``0`` for a channel nobody has opened.
    :ivar members: The identities on it, most connections first (then by
        name), at most the number asked for.
    :ivar truncated: Whether there are more identities than ``members``
        lists.
    """

    channel: str
    count: int
    members: tuple[Member, ...] = field(default=(), converter=_members)
    truncated: bool = False

    def to_json(self) -> dict[str, object]:
        """
        The JSON object that ``GET /presence/{channel}`` answers and the
        ``presence`` event carries: ``channel``, ``count``, ``members`` (each
        ``{"sub", "connections"}``) and, when some are left out,
        ``"truncated": true``.
        """
        answer: dict[str, object] = {
            "channel": self.channel,
            "count": self.count,
            "members": [
                {"sub": member.sub, "connections": member.connections}
                for member in self.members
            ],
        }
        if self.truncated:
            answer["truncated"] = True
        return answer

    def frame(self) -> bytes:
        """The ``presence`` event giving all of it, encoded (no id)."""
        return Event(
            event=PRESENCE_EVENT, data=json.dumps(self.to_json(), separators=(",", ":"))
        ).encode()

    @classmethod
    def of(
        cls, channel: str, count: int, identities: dict[str, int], limit: int
    ) -> PresenceInfo:
        """
        The answer for ``channel`` from ``count`` connections and the
        connections of each identity, listing at most ``limit`` of them.
        """
        ordered = sorted(identities.items(), key=_by_connections)
        return cls(
            channel,
            count,
            [Member(sub, connections) for sub, connections in ordered[:limit]],
            len(ordered) > limit,
        )


def _by_connections(item: tuple[str, int]) -> tuple[int, str]:
    return (-item[1], item[0])


@frozen
class PresenceChange:
    """
    An identity arrived on a channel (its first connection there opened)
    or left it (its last one closed), over all the processes sharing the
    broker.

    :ivar channel: The channel.
    :ivar kind: ``"join"`` or ``"leave"``.
    :ivar sub: The identity.
    """

    channel: str
    kind: str
    sub: str

    def frame(self) -> bytes:
        """The ``join`` or ``leave`` event, encoded: no id, so that a
        client's resume cursor does not move."""
        data = json.dumps(
            {"channel": self.channel, "sub": self.sub}, separators=(",", ":")
        )
        return Event(event=self.kind, data=data).encode()


#: What :meth:`IPresenceBroker.follow_presence` tells.
Told = Callable[[PresenceInfo | PresenceChange], object]


@define(eq=False)
class PresenceFollow:
    """What :meth:`IPresenceBroker.follow_presence` gives back."""

    channel: str
    _cancel: Callable[[], None] | None = field(default=None, repr=False)

    def stopped_by(self, cancel: Callable[[], None]) -> None:
        """What :meth:`cancel` calls (for a broker that sets it after)."""
        self._cancel = cancel

    def cancel(self) -> None:
        """Stop telling; safe to call more than once."""
        cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()


class IPresenceBroker(IBroker):
    """
    A broker that can also tell who is on a channel: the hub's presence
    (``GET /presence/{channel}``, ``join`` and ``leave`` events) needs it,
    and is off on a broker without it.  :class:`~twisted_sse.MemoryBroker`
    and :class:`~twisted_sse.RedisBroker` provide it.

    What it must guarantee:

    - **Counts.**  ``count`` is the number of connections entered and not
      yet left, over every process sharing the broker that is alive; a
      process that stops without leaving (killed, its machine gone) drops
      out of every count within 30 seconds.
    - **Changes.**  A ``join`` is told when an identity's connections on a
      channel go from none to one or more, a ``leave`` when they go back
      to none (its last connection left, or its last process died), over
      all processes; each follower is told them in the order they
      happened, after the :class:`PresenceInfo` they change.
    """

    def enter(channel: str, identity: str | None) -> None:
        """
        A subscriber connection opened on ``channel``, for ``identity``
        (``None``: anonymous).  Called on the reactor thread, once per
        connection and channel; must be cheap (it is on the path of every
        connection's set-up): a broker that keeps presence elsewhere
        batches.
        """

    def leave(channel: str, identity: str | None) -> None:
        """The connection :meth:`enter` was told of closed."""

    def presence(channel: str, limit: int) -> Deferred[PresenceInfo]:
        """
        Who is on ``channel``, listing at most ``limit`` identities.

        :returns: A Deferred firing with the answer, or failing with
            :class:`~twisted_sse.BrokerUnavailable`.
        """

    def follow_presence(channel: str, limit: int, told: Told) -> PresenceFollow:
        """
        Tell ``told`` who is on ``channel`` (a :class:`PresenceInfo`,
        listing at most ``limit`` identities), then each
        :class:`PresenceChange` after it, in order.  A broker that cannot
        tell some changes (it fell behind, its store was lost) tells a new
        :class:`PresenceInfo`, from which the changes go on.

        The first answer may come before this returns (a broker that knows
        at once) or later.
        """


@define(eq=False)
class _Tally:
    count: int = 0
    anonymous: int = 0
    identities: dict[str, int] = field(factory=dict)


class LocalPresence:
    """
    The connections of one process on each channel, with their identities,
    and the followers of each channel: what :class:`~twisted_sse.MemoryBroker`
    answers from, and what :class:`~twisted_sse.RedisBroker` writes to Redis.
    A channel without connections or followers is not kept.
    """

    def __init__(self) -> None:
        self._tallies: dict[str, _Tally] = {}
        self._followers: dict[str, dict[int, Told]] = {}
        self._next = 0

    def enter(self, channel: str, identity: str | None) -> bool:
        """
        Count a connection in.

        :returns: Whether it is the first of ``identity`` on ``channel``
            here (never for an anonymous one).
        """
        tally = self._tallies.get(channel)
        if tally is None:
            tally = self._tallies[channel] = _Tally()
        tally.count += 1
        if identity is None:
            tally.anonymous += 1
            return False
        identities = tally.identities
        before = identities.get(identity, 0)
        identities[identity] = before + 1
        return before == 0

    def leave(self, channel: str, identity: str | None) -> bool:
        """
        Count a connection out.

        :returns: Whether it was the last of ``identity`` on ``channel``
            here (never for an anonymous one).  A connection never entered
            changes nothing.
        """
        tally = self._tallies.get(channel)
        if tally is None:
            return False
        last = False
        if identity is None:
            if not tally.anonymous:
                return False
            tally.anonymous -= 1
        else:
            identities = tally.identities
            left = identities.get(identity, 0) - 1
            if left < 0:
                return False
            if left:
                identities[identity] = left
            else:
                del identities[identity]
                last = True
        tally.count -= 1
        if tally.count == 0:
            del self._tallies[channel]
        return last

    def count(self, channel: str) -> int:
        """Connections on ``channel`` here."""
        tally = self._tallies.get(channel)
        return 0 if tally is None else tally.count

    def identities(self, channel: str) -> dict[str, int]:
        """The connections of each identity on ``channel`` here (a copy)."""
        tally = self._tallies.get(channel)
        return {} if tally is None else dict(tally.identities)

    def info(self, channel: str, limit: int) -> PresenceInfo:
        """Who is on ``channel`` here, listing at most ``limit``."""
        tally = self._tallies.get(channel)
        if tally is None:
            return PresenceInfo(channel, 0)
        return PresenceInfo.of(channel, tally.count, tally.identities, limit)

    def channels(self) -> list[str]:
        """The channels with connections here."""
        return list(self._tallies)

    def follow(self, channel: str, told: Told) -> PresenceFollow:
        """
        Keep ``told`` as a follower of ``channel`` (:meth:`tell` tells it),
        until the answer's ``cancel``.
        """
        token = self._next
        self._next += 1
        followers = self._followers.setdefault(channel, {})
        followers[token] = told

        def cancel() -> None:
            followers.pop(token, None)
            if not followers and self._followers.get(channel) is followers:
                del self._followers[channel]

        return PresenceFollow(channel, cancel)

    def is_followed(self, channel: str) -> bool:
        """Whether ``channel`` has followers."""
        return channel in self._followers

    def followed(self) -> list[str]:
        """The channels with followers."""
        return list(self._followers)

    def followers(self, channel: str) -> Iterator[Told]:
        """The followers of ``channel`` (a copy, safe to tell while they go)."""
        return iter(list(self._followers.get(channel, {}).values()))

    def tell(self, told: PresenceInfo | PresenceChange) -> None:
        """
        Tell every follower of the channel ``told`` is about; one that
        raises is logged, and the others are told all the same.
        """
        for follower in self.followers(told.channel):
            tell_one(follower, told)


def tell_one(follower: Told, told: PresenceInfo | PresenceChange) -> None:
    """Tell ``follower``; log what it raises instead of raising it."""
    try:
        follower(told)
    except Exception:
        _log.failure(
            "A follower of the presence on {channel} failed",
            Failure(),
            channel=told.channel,
        )


def wants_presence(request: Any) -> bool:
    """Whether ``request`` asks for presence events (``presence=1``)."""
    values = request.args.get(b"presence")
    return bool(values) and values[0] in (b"1", b"true")
