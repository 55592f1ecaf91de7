"""
The hub's handoff: how a subscription's events reach its stream, from
before the stream exists (while the broker judges the resume point) to the
end, with a long replay paced by the client's reading.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from ._broker import HISTORY_LOST_EVENT, Published
from ._stream import EventStream, SlowClientPolicy

__all__ = ["CountsReplays", "Encode", "Feeding", "Handoff"]

#: Makes the bytes (and the conflation key) an event is written with, at
#: the moment it is written: a subscription to several channels writes
#: each event with its own cursor.
Encode = Callable[[Published], "tuple[bytes, str]"]


class Feeding(Protocol):
    """
    What a handoff feeds its stream from: a broker's
    :class:`~twisted_sse.Subscription`, or a fan-in of several.
    """

    @property
    def replayed(self) -> int:
        """Events replayed so far."""

    def resume_replay(self) -> None:
        """Go on with a paused replay."""

    def cancel(self) -> None:
        """Stop delivering."""


class CountsReplays(Protocol):
    """Where a handoff counts the events replayed to its subscriber."""

    #: Events replayed to resuming subscribers, in all.
    replayed: int


class Handoff:
    """
    Takes a subscription's events before its stream exists (while the
    broker judges the resume point, possibly asynchronously), then feeds
    them to the stream in order, as fast as the client takes them.

    A resuming client may have megabytes of history to catch up on.  Written
    in one go, they would fill the socket at once, pause the stream and
    overflow its queue, and the slow-client policy would cut off (or thin
    out) a client that reads perfectly well, again at every reconnect; and
    held here, they would cost memory for every resumer that does not read.
    So the replay is paced (see :meth:`IBroker.subscribe`): the handoff
    takes history while it has room, up to the stream's queue bound before
    the stream opens and until the stream pauses after, then answers
    ``False`` and asks for more once the client has taken what was sent.
    A resumer that does not read costs its queue bound, not the history.

    Live events that arrive while a backlog remains queue behind it.  If
    the backlog grows past its size at the start plus what the stream's own
    queue allows, the client is not keeping up: it all goes to the stream,
    whose policy decides.  A history-lost event in the middle of a replay
    means the history moved past a client that stopped reading: with the
    ``disconnect`` policy that client is cut off, as a live one would have
    been, and resumes when it comes back; otherwise it gets the event.

    :param max_events: The stream's queue bound in frames.
    :param max_bytes: The stream's queue bound in bytes.
    :param hub: Counts the events replayed.
    :param encode: Makes the bytes each event is written with, when it is
        written; its ``frame`` and ``key`` as they are if ``None``.
    """

    __slots__ = (
        "_hub",
        "_limit_bytes",
        "_limit_events",
        "_max_bytes",
        "_max_events",
        "_replay_counted",
        "backlog",
        "backlog_bytes",
        "encode",
        "stream",
        "subscription",
    )

    def __init__(
        self,
        max_events: int,
        max_bytes: int,
        hub: CountsReplays,
        encode: Encode | None = None,
    ) -> None:
        self._hub = hub
        self.encode = encode
        self._replay_counted = 0
        self.stream: EventStream | None = None
        self.subscription: Feeding | None = None
        # Created when needed and dropped when empty: an empty deque is
        # 600 bytes, and every subscriber has a handoff.
        self.backlog: deque[Published] | None = None
        self.backlog_bytes = 0
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._limit_events = 0
        self._limit_bytes = 0

    def __call__(self, published: Published) -> bool:
        """
        Take one event from the broker (the handoff is the deliver
        callable); ``False`` when a replay should wait for room.
        """
        stream = self.stream
        if stream is not None:
            if stream.paused and _cuts_off(stream, published):
                stream.abort()
                return False
            if not self.backlog:
                # The common case: live, and the client reads.
                encode = self.encode
                if encode is None:
                    written = stream.write(published.frame, published.key)
                else:
                    written = stream.write(*encode(published))
                return written and not stream.paused
        backlog = self.backlog
        if backlog is None:
            backlog = self.backlog = deque()
        backlog.append(published)
        self.backlog_bytes += len(published.frame)
        if stream is None:
            return len(backlog) < self._max_events and (
                self.backlog_bytes < self._max_bytes
            )
        if len(backlog) > self._limit_events or self.backlog_bytes > self._limit_bytes:
            self._flush(stream)
        else:
            self._pump()
        return not self.backlog and not stream.paused and not stream.closed

    def attach(self, stream: EventStream, subscription: Feeding) -> None:
        """
        Start feeding ``stream``: the backlog so far is the catch-up.  The
        subscription is cancelled when the stream closes.
        """
        self.stream = stream
        self.subscription = subscription
        self._replay_counted = subscription.replayed
        self._hub.replayed += subscription.replayed
        self._limit_events = len(self.backlog or ()) + self._max_events
        self._limit_bytes = self.backlog_bytes + self._max_bytes
        # The stream calls stream_resumed and stream_closed: no callback
        # objects per subscriber.
        stream.feeder = self
        self._pump()

    def stream_resumed(self) -> None:
        """The client took what was queued: go on with the backlog."""
        self._pump()

    def stream_closed(self) -> None:
        """The stream ended: stop the subscription."""
        subscription, self.subscription = self.subscription, None
        if subscription is not None:
            subscription.cancel()
            # What a paced replay delivered after the stream opened.
            self._hub.replayed += subscription.replayed - self._replay_counted

    def _pump(self) -> None:
        stream = self.stream
        assert stream is not None
        backlog = self.backlog
        if backlog is not None:
            # Writing may pause the stream (the socket is full): stop
            # there, and go on when the stream resumes.
            while backlog and not stream.paused and not stream.closed:
                published = backlog.popleft()
                self.backlog_bytes -= len(published.frame)
                self._write(stream, published)
            if stream.closed or not backlog:
                self.backlog = None
                self.backlog_bytes = 0
            else:
                return
        subscription = self.subscription
        if subscription is not None and not stream.paused and not stream.closed:
            # Room again: the rest of a paced replay, if one waits.
            subscription.resume_replay()

    def _flush(self, stream: EventStream) -> None:
        backlog, self.backlog = self.backlog, None
        self.backlog_bytes = 0
        for published in backlog or ():
            if not self._write(stream, published):
                break

    def _write(self, stream: EventStream, published: Published) -> bool:
        encode = self.encode
        if encode is None:
            return stream.write(published.frame, published.key)
        return stream.write(*encode(published))


def _cuts_off(stream: EventStream, published: Published) -> bool:
    """
    Whether ``published``, reaching a paused ``stream``, means its client
    fell behind the history and must be cut off (the ``disconnect``
    policy).
    """
    return (
        published.key == HISTORY_LOST_EVENT
        and stream.policy is SlowClientPolicy.DISCONNECT
    )
