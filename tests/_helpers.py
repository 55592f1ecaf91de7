"""
Small pieces several test modules share: a broker subscriber that records
what it is given, and the context-manager half of the test's own clients.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from twisted_sse import Published
from twisted_sse.testing import parse_events


class Collector:
    """A broker subscriber (a ``deliver`` callable) that keeps what it gets."""

    def __init__(self) -> None:
        self.got: list[Published] = []

    def __call__(self, published: Published) -> None:
        self.got.append(published)

    @property
    def ids(self) -> list[str]:
        """The ids delivered, in order."""
        return [published.id for published in self.got]

    @property
    def data(self) -> list[str]:
        """The data of the events delivered, as a client would parse them."""
        events = parse_events(b"".join(published.frame for published in self.got))
        return [event.data for event in events]


class Closing:
    """``with thing:`` closes ``thing`` at the end; subclasses define close()."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
