"""
Resumption in your own stream, without the hub: give each event an id, and
replay what the client missed when it comes back with ``Last-Event-ID``.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from twisted_sse import Event, EventStream, EventStreamResource


class Journal:
    """An append-only list of entries, streamed with their number as the id."""

    def __init__(self, clock: IReactorTime) -> None:
        self.entries: list[str] = []
        self.resource = EventStreamResource(self._follow, clock=clock, retry=1000)
        self._streams: set[EventStream] = set()

    def add(self, text: str) -> None:
        """Append an entry and send it to every open stream."""
        self.entries.append(text)
        event = Event(id=str(len(self.entries)), data=text)
        for stream in list(self._streams):
            stream.send(event)

    def _follow(self, stream: EventStream) -> None:
        # Never trust the client's id: anything but the number of an entry
        # we have starts from the beginning.
        last = stream.last_event_id or ""
        seen = int(last) if last.isdecimal() and len(last) < 10 else 0
        if seen > len(self.entries):
            seen = 0
        for number in range(seen + 1, len(self.entries) + 1):
            stream.send(Event(id=str(number), data=self.entries[number - 1]))
        # Replay and subscription happen in the same reactor turn: nothing
        # can be added in between, so there is no gap and no duplicate.
        self._streams.add(stream)
        stream.on_close(lambda: self._streams.discard(stream))
