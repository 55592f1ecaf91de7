"""
The error answers of the hub and of ``twistd sse``: one shape for every
status, ``{"error": "<what is wrong>"}`` with ``Content-Type:
application/json``, so that a client reads every refusal the same way, and
never Twisted's or Klein's HTML pages.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.web.resource import Resource

__all__ = [
    "ErrorResource",
    "error_body",
    "json_error",
    "method_not_allowed",
    "no_channel",
]


def error_body(reason: str) -> bytes:
    """The body of every error answer: ``{"error": reason}`` and a newline."""
    return json.dumps({"error": reason}).encode("utf-8") + b"\n"


def json_error(request: Any, code: int, reason: str) -> bytes:
    """
    Make ``request`` an error answer: set its status ``code`` and the JSON
    headers.

    :returns: The body to write, ``{"error": reason}``.
    """
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return error_body(reason)


def method_not_allowed(request: Any, allowed: Iterable[bytes]) -> bytes:
    """
    Make ``request`` a ``405`` naming the methods that are answered, in the
    ``Allow`` header and in the reason.

    :returns: The body to write.
    """
    methods = b", ".join(allowed)
    request.setHeader(b"Allow", methods)
    method = request.method.decode("latin-1")
    return json_error(
        request,
        405,
        f"method {method} not allowed here: use {methods.decode('latin-1')}",
    )


def no_channel(hub: Sequence[bytes]) -> str:
    """
    The reason of a ``404`` for a path of the hub that names no channel.

    :param hub: The segments of the hub's path (``[b"channels"]``).
    """
    base = "".join("/" + segment.decode("utf-8", "replace") for segment in hub)
    return f"no channel here: a channel is {base}/{{name}}, one path segment"


class ErrorResource(Resource):
    """
    A leaf answering every method, and every path below it, with the same
    JSON error: what a tree hands out for a path it does not serve.

    :param code: The status, such as ``404``.
    :param reason: What is wrong.
    """

    isLeaf = True

    def __init__(self, code: int, reason: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.code = code
        self.reason = reason

    def render(self, request: Any) -> bytes:
        """The error, whatever the method."""
        return json_error(request, self.code, self.reason)
