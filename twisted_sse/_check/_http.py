"""
An HTTP exchange of ``twisted-sse check``, as values: the :class:`Request`
it sends, the response :class:`Head` as it came, and the :class:`Recorder`
the response is reported to, head, body and end, as each comes.
"""

from __future__ import annotations

from attrs import frozen

from .._url import URL

__all__ = ["HTTPError", "Head", "Recorder", "Request"]


@frozen
class Request:
    """
    A request, as it goes out.

    :ivar method: The method.
    :ivar url: Where to.
    :ivar headers: ``(name, value)`` pairs, sent in order after ``Host``.
    :ivar body: The body (a ``Content-Length`` is sent with one, and with
        any ``POST``).
    """

    method: str
    url: URL
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    @property
    def authority(self) -> str:
        """The ``Host`` (HTTP/1.1) or ``:authority`` (HTTP/2)."""
        return self.url.origin.split("://", 1)[1]

    def http1(self) -> bytes:
        """The request as HTTP/1.1 bytes."""
        lines = [f"{self.method} {self.url.target} HTTP/1.1", f"Host: {self.authority}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.body or self.method == "POST":
            lines.append(f"Content-Length: {len(self.body)}")
        text = "\r\n".join(lines) + "\r\n\r\n"
        return text.encode("utf-8") + self.body


@frozen
class Head:
    """
    A response head.

    :ivar status: The status code.
    :ivar reason: The reason phrase (none over HTTP/2).
    :ivar version: ``HTTP/1.1``, ``HTTP/1.0`` or ``HTTP/2``.
    :ivar headers: ``(name, value)`` pairs in order, names in lower case,
        values decoded as Latin-1.
    :ivar framing: How the body is delimited: ``chunked``, ``length``
        (Content-Length), ``close`` (by closing the connection), ``h2``
        (HTTP/2 frames) or ``none`` (no body: HEAD, 204, 304).
    """

    status: int
    reason: str = ""
    version: str = "HTTP/1.1"
    headers: tuple[tuple[str, str], ...] = ()
    framing: str = "chunked"

    def get(self, name: str) -> list[str]:
        """The values of header ``name`` (any case), in order."""
        name = name.lower()
        return [value for key, value in self.headers if key == name]


class HTTPError(Exception):
    """A response that breaks HTTP, or is bigger than the caps allow."""


class Recorder:
    """What an exchange tells about its response; override what matters."""

    def head(self, head: Head) -> str | None:
        """
        The head came.

        :returns: A reason to stop reading, or ``None`` to read the body.
        """
        return None

    def body(self, data: bytes) -> str | None:
        """
        A piece of the body came.

        :returns: A reason to stop reading, or ``None`` to go on.
        """
        return None

    def extra(self, size: int) -> None:
        """``size`` bytes came after a response that was complete (a HEAD's)."""

    def end(self, error: str | None) -> None:
        """The exchange ended: ``error`` says why, ``None`` if it completed."""
