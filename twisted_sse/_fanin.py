"""
A subscription to several channels and patterns with one cursor: the
channels a ``/subscribe`` stream carries (:class:`Selection`), and how their
events come together on it (:class:`Fanin`), each written with the cursor
of the whole subscription as its id (see :mod:`twisted_sse._cursor`).

A fan-in is made of the broker's own one-channel subscriptions, one per
channel (the one-channel stream of ``/channels/{name}`` is the simplest
subscription, and what each of these is), and of one watch per pattern
(:meth:`~twisted_sse.IPatternBroker.watch`), which tells the fan-in of
each channel under it to subscribe to.  So every guarantee of a broker's
subscription (exact resume, paced replay, the loss signal) holds for each
channel of a fan-in, on every broker.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._broker import (
    HISTORY_LOST_EVENT,
    Deliver,
    IBroker,
    Published,
    Subscription,
    Watch,
    valid_channel,
    valid_pattern,
)
from ._cursor import Cursor, CursorBuilder, decode_cursor
from ._event import Event

__all__ = [
    "DEFAULT_MAX_FOLLOWED",
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "Fanin",
    "Selection",
    "parse_selection",
]

_log = Logger()

#: Channels and patterns one connection may name.
DEFAULT_MAX_SUBSCRIPTIONS = 32
#: Channels one subscription follows at most, those its patterns found
#: included; a channel found beyond is announced as lost (``"limit"``).
DEFAULT_MAX_FOLLOWED = 1024


@frozen
class Selection:
    """
    What a subscription names: channels and patterns, each once, sorted
    (so that the same names in another order make the same selection).
    """

    channels: tuple[str, ...]
    patterns: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The channels, then the patterns."""
        return self.channels + self.patterns


def parse_selection(
    names: Iterable[str], max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
) -> Selection:
    """
    The selection ``names`` make.

    :raises ValueError: naming what is wrong: no name at all, more than
        ``max_subscriptions`` different names, ``*`` (every channel), an
        empty name, or one that is neither a valid channel name nor a
        pattern (a valid channel name followed by ``.*``).
    """
    channels: set[str] = set()
    patterns: set[str] = set()
    for name in map(_name, names):
        if name == "*":
            raise ValueError(
                "channel '*' is refused: subscribing to every channel is not "
                "allowed; name channels or patterns such as 'news.*'"
            )
        if name.endswith("*"):
            if not valid_pattern(name):
                raise ValueError(
                    f"invalid pattern: {name!r} (a pattern is a channel name "
                    "followed by '.*')"
                )
            patterns.add(name)
        elif not name:
            raise ValueError("empty channel name")
        elif not valid_channel(name):
            raise ValueError(
                f"invalid channel name: {name!r} (1 to 128 ASCII letters, digits "
                "and _ . : @ -, starting with a letter or digit)"
            )
        else:
            channels.add(name)
    count = len(channels) + len(patterns)
    if not count:
        raise ValueError("no channel: name at least one with ?channel=")
    if count > max_subscriptions:
        raise ValueError(
            f"too many channels: {count} named, at most {max_subscriptions} "
            "per connection"
        )
    return Selection(tuple(sorted(channels)), tuple(sorted(patterns)))


def _name(name: object) -> str:
    if not isinstance(name, str):
        raise ValueError(f"a channel name must be a string, not {name!r}")
    return sys.intern(name)


class Fanin:
    """
    One subscription to the channels and patterns of a ``Selection``,
    with one cursor, delivering to one ``deliver`` (a ``Handoff``, for
    a stream) the broker's events, then writing each with ``encode``.

    Positions move when an event is written (``encode``), not when the
    broker delivers it, so the cursor of each frame is exactly what its
    client has been sent.

    :param broker: The broker of every channel.
    :param selection: What to subscribe to.
    :param last_event_id: The cursor to resume from, or ``None``.
    :param deliver: Where the events go.
    :param envelope: Write each event's data as a JSON envelope naming its
        channel (and no ``event:`` field), rather than with its channel as
        its type when it has none.
    :param max_followed: Channels followed at most.

    :ivar losses: What could not be resumed exactly when the subscription
        opened: the reason (``"malformed"``, ``"unknown"``, ``"trimmed"``)
        by channel or pattern.
    :ivar broken: Called with the failure when a channel that a pattern
        found after the subscription opened cannot be subscribed to (the
        broker is unavailable): the subscription can no longer carry every
        channel, and whoever set this ends it, so that its client comes
        back and resumes.  Unset, the failure is logged.
    """

    __slots__ = (
        "_builder",
        "_cancelled",
        "_children",
        "_cursor",
        "_deliver",
        "_failure",
        "_later",
        "_limited",
        "_opened",
        "_replayed_done",
        "_waiting",
        "_watches",
        "broken",
        "broker",
        "envelope",
        "losses",
        "max_followed",
        "resuming",
        "selection",
    )

    def __init__(
        self,
        broker: IBroker,
        selection: Selection,
        last_event_id: str | None,
        deliver: Deliver,
        *,
        envelope: bool = False,
        max_followed: int = DEFAULT_MAX_FOLLOWED,
    ) -> None:
        self.broker = broker
        self.selection = selection
        self.envelope = envelope
        self.max_followed = max_followed
        self.losses: dict[str, str] = {}
        self._deliver = deliver
        self._cursor: Cursor | None = None
        self.resuming = bool(last_event_id)
        if last_event_id:
            self._cursor = decode_cursor(last_event_id)
            if self._cursor is None:
                for name in selection.names:
                    self.losses[name] = "malformed"
        self._children: dict[str, Subscription | None] = {}
        self._watches: dict[str, Watch] = {}
        self._waiting = 0
        self._opened: Deferred[Fanin] | None = None
        self._failure: Failure | None = None
        self._cancelled = False
        self._limited: set[str] | None = None
        #: Events replayed by the channels' subscriptions once cancelled.
        self._replayed_done = 0
        self._builder = CursorBuilder()
        #: Channels named that wait for the patterns' watches to answer.
        self._later: list[str] | None = None
        self.broken: Callable[[Failure], object] | None = None

    # Opening

    def open(self) -> Deferred[Fanin]:
        """
        Subscribe to every channel and watch every pattern.

        :returns: A Deferred firing with this fan-in once every channel has
            answered (at once on a broker that answers at once), failing
            with the first failure of one (``ValueError`` for patterns on a
            broker that cannot watch); then every subscription made is
            cancelled.
        """
        opened = self._opened = Deferred()
        self._waiting += 1
        patterns = self.selection.patterns
        cursor = self._cursor
        for channel in self.selection.channels:
            resume = self._resume_from(channel)
            if resume is None and any(
                channel.startswith(pattern[:-1])
                and cursor is not None
                and cursor.get(pattern) is not None
                for pattern in patterns
            ):
                # Named now, carried by a resumed pattern before: that
                # pattern's watch finds it if the client missed events of
                # it; otherwise it starts live once the watches answered.
                self._later = self._later or []
                self._later.append(channel)
            else:
                self._follow(channel, resume, None)
        watch = getattr(self.broker, "watch", None)
        if patterns and watch is None:
            self._fail(
                Failure(
                    ValueError(
                        f"pattern {patterns[0]!r} is refused: this server's "
                        "broker cannot watch channels; name channels"
                    )
                )
            )
        else:
            for pattern in patterns:
                self._watch(watch, pattern)
        self._answered()
        return opened

    def _resume_from(self, name: str) -> str | None:
        cursor = self._cursor
        return cursor.get(name) if cursor is not None else None

    def _watch(self, watch: Any, pattern: str) -> None:
        since = self._resume_from(pattern)

        def found(channel: str, position: str, lost: str | None) -> None:
            self._found(channel, position, lost)

        cursor = self._cursor

        def known(channel: str) -> bool:
            # A channel the cursor holds: resumed from its position, even
            # if the marker has passed its events (delivered, not written).
            return cursor is not None and cursor.get(channel) is not None

        self._waiting += 1
        maybeDeferred(
            watch, pattern[:-1], found, since, known if cursor is not None else None
        ).addCallbacks(
            self._watching,
            self._child_failed,
            callbackArgs=(pattern, since),
        )

    def _watching(self, watching: Watch, pattern: str, since: str | None) -> None:
        if self._cancelled:
            watching.cancel()
            return
        self._watches[pattern] = watching
        self._move(pattern, watching.marker)
        if since is not None and watching.history_lost is not None:
            self.losses[pattern] = watching.history_lost
        if len(self._watches) == len(self.selection.patterns):
            later, self._later = self._later or [], None
            for channel in later:
                if channel not in self._children:
                    self._follow(channel, None, None)
        self._answered()

    def _found(self, channel: str, position: str, lost: str | None) -> None:
        """A watch found ``channel``: follow it, from where nothing is missed."""
        if channel in self._children or self._cancelled:
            return
        if len(self._children) >= self.max_followed:
            limited = self._limited = self._limited or set()
            if channel not in limited:
                limited.add(channel)
                _log.warn(
                    "A subscription follows {limit} channels: {channel} is not "
                    "followed",
                    limit=self.max_followed,
                    channel=channel,
                )
                self._tell_loss(channel, "limit")
            return
        resume = self._resume_from(channel)
        if resume is None:
            if lost is not None:
                if self._opened is not None:
                    self.losses[channel] = lost
                else:
                    self._tell_loss(channel, lost)
            resume = position or None
        if resume is not None:
            # In the cursor at once: the watch's marker may move past this
            # channel's first event before the broker answers.
            self._move(channel, resume)
        self._follow(channel, resume, lost)

    def _follow(self, channel: str, resume: str | None, lost: str | None) -> None:
        self._children[channel] = None
        self._waiting += 1
        try:
            answer = maybeDeferred(
                self.broker.subscribe, channel, self._deliver, resume
            )
        except Exception:
            answer = Deferred()
            answer.errback(Failure())
        answer.addCallbacks(
            self._subscribed,
            self._child_failed,
            callbackArgs=(channel, resume, lost),
        )

    def _subscribed(
        self,
        subscription: Subscription,
        channel: str,
        resume: str | None,
        lost: str | None,
    ) -> None:
        if self._cancelled:
            subscription.cancel()
            return
        self._children[channel] = subscription
        if resume is None or subscription.history_lost is None:
            if channel not in self._builder.positions:
                self._move(channel, resume or subscription.position)
        elif self._opened is not None:
            # What the client held cannot be resumed: it goes on from the
            # channel's position, said by the opening loss event.
            if self._builder.positions.get(channel, resume) == resume:
                self._move(channel, subscription.position)
            self.losses.setdefault(channel, subscription.history_lost)
        else:
            # Opened already: the cursor moves to the channel's position
            # when the loss event is written, not before (a cursor written
            # before it must still hold what the client holds).
            self._tell_loss(channel, subscription.history_lost, subscription.position)
        self._answered()

    def _child_failed(self, failure: Failure) -> None:
        if self._opened is None and not self._cancelled:
            broken = self.broken
            if broken is None:
                _log.failure("A subscription lost a channel", failure)
            else:
                broken(failure)
        self._fail(failure)
        self._answered()

    def _fail(self, failure: Failure) -> None:
        if self._failure is None:
            self._failure = failure

    def _answered(self) -> None:
        self._waiting -= 1
        opened = self._opened
        if self._waiting or opened is None:
            return
        self._opened = None
        failure = self._failure
        if failure is not None:
            self.cancel()
            opened.errback(failure)
        else:
            opened.callback(self)

    def _tell_loss(
        self, channel: str, reason: str, position: str | None = None
    ) -> None:
        """
        A loss found after the subscription opened, as the next event: the
        channel goes on from ``position`` (where it is, if ``None``).
        """
        if position is None:
            position = self._builder.positions.get(channel, "")
        frame = Event(
            event=HISTORY_LOST_EVENT, id=position, data=json.dumps({"reason": reason})
        ).encode()
        self._deliver(Published(channel, position, frame, HISTORY_LOST_EVENT))

    # What the stream sends

    @property
    def cursor(self) -> str:
        """The cursor as of the last event written."""
        return self._builder.text()

    def _move(self, name: str, position: str) -> None:
        self._builder.set(name, position)

    def opening_frames(self, retry: int | None) -> list[bytes]:
        """
        The first frames of the stream: the retry time and the cursor, and
        the ``history-lost`` event if there were losses.
        """
        cursor = self.cursor
        frames = [Event(retry=retry, id=cursor).encode()]
        if self.losses:
            frames.append(self._loss_frame(cursor, self.losses))
        return frames

    @property
    def lost_header(self) -> str:
        """The ``SSE-History-Lost`` header value: the reasons, each once."""
        return ", ".join(dict.fromkeys(self.losses.values()))

    def encode(self, published: Published) -> tuple[bytes, str]:
        """
        The bytes ``published`` is written with, now: its id replaced by
        the cursor (with its channel's position moved to it), and its
        channel named.  (The :data:`~twisted_sse._handoff.Encode` of the
        stream's handoff.)

        Subscribers of the same channels in the same state, written the
        same event one after the other, get the same cursor: the first
        makes it, the others take it (and the same bytes) from it.
        """
        global _LAST
        builder = self._builder
        before = builder.text()
        last = _LAST
        if (
            last is not None
            and last.published is published
            and last.before == before
            and last.selection == self.selection
            and last.envelope == self.envelope
        ):
            builder.adopt(last.moves, last.after)
            return last.frame, last.key
        channel = published.channel
        moves: list[tuple[str, str]] = []
        if published.id:
            self._move(channel, published.id)
            moves.append((channel, published.id))
        for pattern, watching in self._watches.items():
            marker = watching.marker
            if builder.positions.get(pattern) != marker:
                self._move(pattern, marker)
                moves.append((pattern, marker))
        stable = builder.head_known
        cursor = builder.text()
        key = published.key
        if key == HISTORY_LOST_EVENT:
            reason = _loss_reason(published.frame)
            return self._loss_frame(cursor, {channel: reason}), f"{channel} {key}"
        frame = _rewrite(published, cursor, self.envelope)
        conflation = f"{channel} {key}"
        if stable:
            _LAST = _Written(
                published,
                before,
                self.selection,
                self.envelope,
                tuple(
                    (name, position, builder.entry(name)) for name, position in moves
                ),
                cursor,
                frame,
                conflation,
            )
        return frame, conflation

    def _loss_frame(self, cursor: str, losses: dict[str, str]) -> bytes:
        first = next(iter(losses.values()))
        data = json.dumps({"reason": first, "channels": losses})
        return Event(event=HISTORY_LOST_EVENT, id=cursor, data=data).encode()

    # The subscription, as a handoff sees it

    @property
    def replayed(self) -> int:
        """Events replayed so far, over every channel."""
        return self._replayed_done + sum(
            child.replayed for child in self._children.values() if child is not None
        )

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled

    @property
    def followed(self) -> list[str]:
        """The channels followed, those patterns found included."""
        return list(self._children)

    def resume_replay(self) -> None:
        """The client has room again: go on with every paused replay."""
        for child in list(self._children.values()):
            if child is not None:
                child.resume_replay()

    def cancel(self) -> None:
        """Stop every channel and watch; safe to call more than once."""
        self._cancelled = True
        watches, self._watches = self._watches, {}
        for watching in watches.values():
            watching.cancel()
        children = list(self._children.values())
        self._children = {}
        for child in children:
            if child is not None:
                child.cancel()
                self._replayed_done += child.replayed


@frozen
class _Written:
    """
    The event a fan-in wrote last, from which state, and how: the next
    subscriber in that same state takes it as it is.
    """

    published: Published
    before: str
    selection: Selection
    envelope: bool
    moves: tuple[tuple[str, str, str | None], ...]
    after: str
    frame: bytes
    key: str


_LAST: _Written | None = None


def _loss_reason(frame: bytes) -> str:
    _, _, data = frame.partition(b"\ndata: ")
    try:
        reason = json.loads(data.strip())["reason"]
    except (ValueError, KeyError, TypeError):
        return "trimmed"
    return str(reason)


def _rewrite(published: Published, cursor: str, envelope: bool) -> bytes:
    """``published.frame`` with ``cursor`` for its id, naming its channel."""
    global _SPLIT
    split = _SPLIT
    if split is None or split[0] is not published or split[1] != envelope:
        split = _SPLIT = (published, envelope, *_split(published, envelope))
    return split[2] + b"id: " + cursor.encode("ascii") + b"\n" + split[3]


#: The event last split, and how: every subscriber of its channel writes it
#: next, each with its own cursor.
_SPLIT: tuple[Published, bool, bytes, bytes] | None = None


def _split(published: Published, envelope: bool) -> tuple[bytes, bytes]:
    """
    What comes before the id line of ``published``'s frame on
    ``/subscribe`` (a comment, a ``retry:``), and what comes after.
    """
    frame = published.frame
    id_line = b"id: " + published.id.encode("utf-8") + b"\n"
    if not published.id:
        at = -1
    elif frame.startswith(id_line):
        at = 0
    else:
        at = frame.find(b"\n" + id_line)
        if at != -1:
            at += 1
    if at == -1:
        head, rest = b"", frame
    else:
        head, rest = frame[:at], frame[at + len(id_line) :]
    if not envelope:
        if rest.startswith(b"event: "):
            return head, rest
        return head, b"event: " + published.channel.encode("ascii") + b"\n" + rest
    event_type = None
    data_lines: list[str] = []
    for line in rest.decode("utf-8").split("\n"):
        if line.startswith("event: "):
            event_type = line[len("event: ") :]
        elif line.startswith("data: "):
            data_lines.append(line[len("data: ") :])
        elif line == "data:":
            data_lines.append("")
    body = json.dumps(
        {
            "channel": published.channel,
            "event": event_type,
            "data": "\n".join(data_lines) if data_lines else None,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return head, b"data: " + body.encode("utf-8") + b"\n\n"
