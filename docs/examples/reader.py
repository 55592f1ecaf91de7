"""
A Python client that follows a channel across reconnects and restarts, and
resynchronises when the hub says events were lost.
"""

from __future__ import annotations

import json

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IAgent

from twisted_sse import EventSource, MessageEvent


class NewsReader:
    """
    Keep a list of the news published on a channel.

    :param url: The channel's URL, such as ``http://localhost:3000/channels/news``.
    :param last_event_id: Where a previous run stopped (its
        :attr:`last_event_id`); ``""`` to start with what comes next.
    """

    def __init__(
        self,
        url: str,
        last_event_id: str = "",
        *,
        reactor: IReactorTime | None = None,
        agent: IAgent | None = None,
    ) -> None:
        self.items: list[str] = []
        self.lost: list[str] = []
        self.source = EventSource(
            url, last_event_id=last_event_id, reactor=reactor, agent=agent
        )
        self.source.on_message = self._news
        self.source.add_listener("history-lost", self._history_lost)

    def _news(self, event: MessageEvent) -> None:
        self.items.append(event.data)

    def _history_lost(self, event: MessageEvent) -> None:
        # Events between our last id and this one are gone from the hub's
        # history: reload the full state from wherever it is kept.
        self.lost.append(json.loads(event.data)["reason"])

    @property
    def last_event_id(self) -> str:
        """Save this when the program stops; pass it back when it starts."""
        return self.source.last_event_id

    def stop(self) -> None:
        """Close the connection for good."""
        self.source.close()
