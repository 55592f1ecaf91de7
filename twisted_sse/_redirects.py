"""
The request an :class:`~twisted_sse.EventSource` makes for a stream, and
the redirects it follows, as the WHATWG HTML standard ("Server-sent
events") and the Fetch standard say:

- ``GET`` with ``Accept: text/event-stream``, ``Cache-Control: no-cache``
  and ``Last-Event-ID`` when the last event id is not empty;
- redirects (301, 302, 303, 307, 308) followed, at most
  :data:`MAX_REDIRECTS`; the caller's extra headers (credentials) never
  follow a redirect to another origin.

Redirects are followed here rather than by
:class:`~twisted.web.client.RedirectAgent`, which keeps every non-sensitive
header (``X-Api-Key``, say) across origins and does not say which URL it
ended at.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from attrs import frozen
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from ._agent import discard
from ._url import URL

__all__ = ["MAX_REDIRECTS", "Fetched", "RedirectRefused", "fetch", "request_headers"]

#: Redirects followed before the connection fails (the Fetch standard's limit).
MAX_REDIRECTS: Final = 20

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


class RedirectRefused(Exception):
    """
    A redirect that is not followed: one too many, or to a URL that cannot
    be used.  The source fails for good.

    :ivar status: The HTTP status of the redirect.
    :ivar url: The URL that answered with it.
    """

    def __init__(self, message: str, status: int, url: str) -> None:
        super().__init__(message)
        self.status = status
        self.url = url


@frozen
class Fetched:
    """The response a request ended at, after its redirects."""

    response: IResponse
    #: The URL that gave the response: the events' origin is its origin.
    url: URL


def request_headers(extra: Sequence[tuple[str, str]], last_event_id: str) -> Headers:
    """
    The headers of a request for a stream: ``extra`` (the caller's), then
    the ones a client must send, which replace any of the same name.
    """
    headers = Headers()
    for name, value in extra:
        headers.addRawHeader(name.encode("ascii"), value.encode("utf-8"))
    headers.setRawHeaders(b"Accept", [b"text/event-stream"])
    headers.setRawHeaders(b"Cache-Control", [b"no-cache"])
    if last_event_id:
        headers.setRawHeaders(b"Last-Event-ID", [last_event_id.encode()])
    else:
        headers.removeHeader(b"Last-Event-ID")
    return headers


async def fetch(
    agent: IAgent,
    url: URL,
    extra: Sequence[tuple[str, str]],
    last_event_id: str,
) -> Fetched:
    """
    ``GET`` ``url`` through ``agent``, following redirects.

    The response of each redirect followed is discarded unread.  A redirect
    without a ``Location`` is not one: it is the response.

    :param extra: The caller's headers, sent to ``url``'s origin only:
        dropped for good once a redirect leaves it.
    :param last_event_id: Sent as ``Last-Event-ID`` unless empty.
    :raises RedirectRefused: after :data:`MAX_REDIRECTS` redirects, or for
        a ``Location`` that is not an http(s) URL.
    """
    redirects = 0
    while True:
        response = await agent.request(
            b"GET", url.text.encode("ascii"), request_headers(extra, last_event_id)
        )
        locations = response.headers.getRawHeaders(b"location")
        if response.code not in _REDIRECT_CODES or not locations:
            return Fetched(response, url)
        discard(response)
        if redirects == MAX_REDIRECTS:
            raise RedirectRefused(
                f"more than {MAX_REDIRECTS} redirects", response.code, url.text
            )
        redirects += 1
        try:
            target = URL.parse(locations[-1].decode("utf-8", "replace"), url)
        except ValueError as e:
            raise RedirectRefused(
                f"bad redirect: {e}", response.code, url.text
            ) from None
        if target.origin != url.origin:
            # Fetch: credentials never cross to another origin, and stay
            # dropped if a later hop comes back.
            extra = ()
        url = target
