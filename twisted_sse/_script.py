"""
The browser client's files, served from the package: ``sse.js`` (the ES
module) and ``sse.d.ts`` (its TypeScript declarations), with a validator so
that a page revalidates them on every load for the cost of a ``304``.
"""

from __future__ import annotations

from hashlib import sha256
from importlib.resources import files
from typing import Any

from twisted.web.resource import Resource

from ._errors import method_not_allowed

__all__ = ["ClientScriptResource"]

#: The files of ``twisted_sse/static`` that may be served, and their types.
_CONTENT_TYPES = {
    "sse.js": b"text/javascript; charset=utf-8",
    "sse.d.ts": b"application/typescript; charset=utf-8",
}

#: The methods a client file answers.
_METHODS = (b"GET", b"HEAD")


def _tags(header: bytes) -> list[bytes]:
    """
    The entity tags of an ``If-None-Match`` header, weak ones without their
    ``W/``: the header is compared weakly (RFC 9110, 13.1.2).
    """
    tags = []
    for part in header.split(b","):
        tag = part.strip()
        if tag[:2] == b"W/":
            tag = tag[2:]
        if tag:
            tags.append(tag)
    return tags


class ClientScriptResource(Resource):
    """
    One file of the browser client, read from the package once, when made.

    It is sent with ``Cache-Control: no-cache`` and an ``ETag``: browsers
    ask every time, get a bodiless ``304`` while the file is unchanged, and
    see a new version at once after an upgrade.  It answers any origin
    (``Access-Control-Allow-Origin: *``) because a module imported by a
    page of another origin needs CORS, and the file holds no secret.

    Mount it beside an :class:`~twisted_sse.EventStreamResource` or a hub::

        root.putChild(b"sse.js", ClientScriptResource("sse.js"))

    :param name: ``"sse.js"`` or ``"sse.d.ts"``.
    :raises ValueError: for any other name.
    """

    isLeaf = True

    #: The methods answered; any other gets a JSON ``405``.
    allowed_methods = _METHODS

    def __init__(self, name: str = "sse.js") -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if name not in _CONTENT_TYPES:
            raise ValueError(
                f"not a file of the browser client: {name!r} "
                f"(one of {', '.join(sorted(_CONTENT_TYPES))})"
            )
        #: The file's name in ``twisted_sse/static``.
        self.name = name
        #: The file's bytes.
        self.body = files("twisted_sse").joinpath("static", name).read_bytes()
        #: Its ``Content-Type``.
        self.content_type = _CONTENT_TYPES[name]
        #: Its strong validator: a quoted prefix of the SHA-256 of the bytes.
        self.etag = b'"' + sha256(self.body).hexdigest()[:16].encode("ascii") + b'"'

    def render(self, request: Any) -> bytes:
        """A JSON ``405`` naming GET and HEAD for any other method."""
        if request.method not in self.allowed_methods:
            return method_not_allowed(request, self.allowed_methods)
        result: bytes = super().render(request)  # type: ignore[no-untyped-call]
        return result

    def _unchanged(self, request: Any) -> bool:
        """
        Set the headers of every answer; whether the client's copy is this
        one (a ``304`` then).
        """
        request.setHeader(b"ETag", self.etag)
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        header = request.getHeader(b"If-None-Match")
        if header is None:
            return False
        tags = _tags(header)
        if b"*" in tags or self.etag in tags:
            request.setResponseCode(304)
            return True
        return False

    def render_GET(self, request: Any) -> bytes:
        """The file, or a ``304`` with no body if ``If-None-Match`` lists it."""
        if self._unchanged(request):
            return b""
        request.setHeader(b"Content-Type", self.content_type)
        return self.body

    def render_HEAD(self, request: Any) -> bytes:
        """The headers of :meth:`render_GET`, with the file's length."""
        if self._unchanged(request):
            return b""
        request.setHeader(b"Content-Type", self.content_type)
        request.setHeader(b"Content-Length", str(len(self.body)).encode("ascii"))
        return b""
