"""
The shared heartbeat: one timer that keeps every idle stream of a server
alive, however many there are.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

if TYPE_CHECKING:
    # For the annotations only: the stream imports this module.
    from ._stream import EventStream

__all__ = ["DEFAULT_HEARTBEAT", "Heartbeat"]

#: Seconds of silence after which a stream gets a heartbeat comment: well
#: under nginx's default ``proxy_read_timeout`` of 60 s.
DEFAULT_HEARTBEAT = 15.0


class Heartbeat:
    """
    One shared timer that keeps every idle stream of a server alive.

    It ticks every ``interval / 2`` seconds, only while at least one stream is
    registered, and writes a comment frame to each stream that wrote nothing
    since the previous tick: a stream gets a heartbeat after at least
    ``interval / 2`` and at most ``interval`` seconds of silence, and a busy
    stream gets none.  One timer for all streams costs one
    :class:`~twisted.internet.interfaces.IDelayedCall` however many clients
    are connected.

    :param clock: The time source.
    :param interval: Seconds of silence tolerated; ``0`` disables heartbeats.
    """

    def __init__(self, clock: IReactorTime, interval: float = DEFAULT_HEARTBEAT):
        if interval < 0:
            raise ValueError(f"heartbeat must be >= 0 seconds, not {interval!r}")
        self.clock = clock
        self.interval = interval
        self._streams: set[EventStream] = set()
        # Live collections of streams (a resource's open streams), by id:
        # watching a resource's set costs nothing per stream.
        self._groups: dict[int, Collection[EventStream]] = {}
        self._loop: LoopingCall | None = None

    def add(self, stream: EventStream) -> None:
        """Watch ``stream`` until :meth:`discard` is called for it."""
        if self.interval:
            self._streams.add(stream)
            self._start()

    def discard(self, stream: EventStream) -> None:
        """Stop watching ``stream``; the timer stops with the last stream."""
        self._streams.discard(stream)
        self._stop_if_idle()

    def watch(self, streams: Collection[EventStream]) -> None:
        """
        Watch every stream in the live collection ``streams`` (such as a
        :class:`StreamResource`'s open streams) until :meth:`unwatch`; call
        it again whenever a stream is added, so that the timer runs.
        """
        if self.interval:
            self._groups[id(streams)] = streams
            self._start()

    def unwatch(self, streams: Collection[EventStream]) -> None:
        """Stop watching ``streams``; the timer stops with the last stream."""
        self._groups.pop(id(streams), None)
        self._stop_if_idle()

    @property
    def running(self) -> bool:
        """Whether the timer is scheduled."""
        return self._loop is not None

    def _start(self) -> None:
        if self._loop is None:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self.clock
            self._loop.start(self.interval / 2, now=False)

    def _stop_if_idle(self) -> None:
        if (
            self._loop is not None
            and not self._streams
            and not any(self._groups.values())
        ):
            self._loop.stop()
            self._loop = None

    def _tick(self) -> None:
        for stream in list(self._streams):
            stream.heartbeat_tick()
        for group in list(self._groups.values()):
            for stream in list(group):
                stream.heartbeat_tick()
