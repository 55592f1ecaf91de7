"""
The state of the channels a process follows, shared by the broker and its
reader: the channel, its local subscribers, the replays on their way to
the fan-out, and how a channel's stream state is read (one script).
"""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import Deferred

from .._broker import Deliver, Subscription
from ._entries import ZERO, EventId, Snapshot, format_id
from ._entries import snapshot as parse_snapshot
from ._link import RedisLink
from ._scripts import SNAPSHOT, run_script

__all__ = ["BATCH", "PAGE_BYTES", "Channel", "Local", "Replay", "read_snapshot"]

#: Stream entries fetched per read (XREAD COUNT, XRANGE COUNT).
BATCH = 1000
#: Bytes of stream fields (names and values) a page of a replay or a
#: catch-up holds at most (one entry more if a single one is larger): a
#: subscriber that resumes from far back costs one page, not the history.
PAGE_BYTES = 512 * 1024


@define(eq=False)
class Local:
    """One local subscriber of a channel, in the live fan-out."""

    deliver: Deliver
    #: Live events up to this id were covered by its replay; ``None`` once
    #: one after it was delivered.
    floor: EventId | None = None


@define(eq=False)
class Replay:
    """
    A resuming subscriber on its way to the live fan-out: a cursor in the
    stream, not the events (see :meth:`~twisted_sse.RedisBroker.subscribe`).
    """

    local: Local
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
class Channel:
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
    #: On a cluster: whether the stream may have entries past
    #: :attr:`position` (its shard channel said so, or it was just
    #: subscribed to).
    fresh: bool = False
    #: Subscribers in the live fan-out.
    subscribers: dict[int, Local] = field(factory=dict)
    #: Subscribers on their way there: new ones waiting for the channel's
    #: first read (a Local), resuming ones replaying (a Replay).
    joining: dict[int, Local | Replay] = field(factory=dict)
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


def read_snapshot(
    link: RedisLink,
    state: Channel,
    after: EventId | None,
    count: int,
    ttl_ms: int,
    want: str = "",
) -> Deferred[Snapshot]:
    """
    Read the channel's epoch and stream state and (if ``after`` is given)
    a page of entries after it, in one script, so that nothing is trimmed
    or added between them.

    :param ttl_ms: The channel's TTL, refreshed by the script (0: none).
    :param want: Read the entries only if the epoch is this one.
    """
    reading = run_script(
        link,
        SNAPSHOT,
        (state.key, state.epoch_key),
        (
            ttl_ms,
            want,
            "" if after is None else format_id(after),
            count,
            PAGE_BYTES,
        ),
    )
    return reading.addCallback(parse_snapshot)
