"""
A request of ``twisted-sse check`` that follows redirects as a browser
does: :class:`Fetch` makes one exchange after another through the
:class:`~twisted_sse._check._connector.Connector`, and hands the final
response to its recorder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred

from .._client import MAX_REDIRECTS
from .._url import URL
from ._connector import Connector
from ._exchange import Exchange
from ._http import Head, Recorder

__all__ = ["Fetch"]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Fetch:
    """
    A request that follows redirects (at most :data:`MAX_REDIRECTS`, the
    caller's headers dropped on a change of origin, as a browser does).

    :ivar done: Fires once the last exchange has ended and the recorder was
        told.
    :ivar redirects: ``(status, location)`` of each redirect followed.
    :ivar url: The URL of the exchange under way, or of the last one.
    """

    def __init__(
        self,
        connector: Connector,
        method: str,
        url: URL,
        headers: Sequence[tuple[str, str]],
        recorder: Recorder,
        *,
        own: Sequence[tuple[str, str]] = (),
        follow: bool = True,
        body: bytes = b"",
    ) -> None:
        """
        Make the request.

        :param headers: The caller's headers, dropped on a change of origin.
        :param recorder: Told of the final response.
        :param own: The checker's headers, kept across origins.
        :param follow: Whether to follow redirects.
        """
        self.done: Deferred[None] = Deferred()
        self.redirects: list[tuple[int, str]] = []
        self.url = url
        self._connector = connector
        self._method = method
        self._headers = tuple(headers)
        self._own = tuple(own)
        self._recorder = recorder
        self._follow = follow
        self._body = body
        self._exchange: Exchange | None = None
        self._aborted: str | None = None
        self._location: str | None = None
        self._request(url)

    def _request(self, url: URL) -> None:
        self.url = url
        self._location = None
        exchange = self._exchange = self._connector.request(
            self._method,
            url,
            (*self._own, *self._headers),
            (
                _Redirects(self._recorder, self._redirected)
                if self._follow
                else self._recorder
            ),
            self._body,
        )
        exchange.done.addCallback(lambda _: self._after())

    def _redirected(self, status: int, location: str) -> None:
        self.redirects.append((status, location))
        self._location = location

    def _after(self) -> None:
        if self._location is None:
            self.done.callback(None)
            return
        location, self._location = self._location, None
        if self._aborted is not None:
            self._recorder.end(self._aborted)
        elif len(self.redirects) > MAX_REDIRECTS:
            self._recorder.end(f"more than {MAX_REDIRECTS} redirects")
        else:
            try:
                target = URL.parse(location, self.url)
            except ValueError as e:
                self._recorder.end(f"a bad redirect: {e}")
            else:
                if target.origin != self.url.origin:
                    self._headers = ()
                self._request(target)
                return
        self.done.callback(None)

    def abort(self, reason: str) -> None:
        """End the request (or the redirect being followed) for ``reason``."""
        self._aborted = reason
        if self._exchange is not None:
            self._exchange.abort(reason)


class _Redirects(Recorder):
    """
    Takes a redirect's head, and tells ``redirected`` of it; passes any
    other response on to ``recorder``.
    """

    def __init__(
        self, recorder: Recorder, redirected: Callable[[int, str], object]
    ) -> None:
        self._recorder = recorder
        self._redirected = redirected
        self._passing = True

    def head(self, head: Head) -> str | None:
        locations = head.get("location")
        if head.status in _REDIRECTS and locations:
            self._passing = False
            self._redirected(head.status, locations[-1])
            return "redirected"
        return self._recorder.head(head)

    def body(self, data: bytes) -> str | None:
        return self._recorder.body(data)

    def extra(self, size: int) -> None:
        if self._passing:
            self._recorder.extra(size)

    def end(self, error: str | None) -> None:
        if self._passing:
            self._recorder.end(error)
