"""
``GET /presence/{channel}``: who is on a channel, in JSON (see
:meth:`Hub.presence <twisted_sse.Hub.presence>`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from ._auth import PRESENCE, Grant, Refused
from ._broker import BrokerUnavailable, valid_channel
from ._errors import ErrorResource, json_error, method_not_allowed
from ._hub import UNAVAILABLE_RETRY_AFTER
from ._presence import NoPresence, PresenceInfo
from ._resource import StreamResource

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["PresenceResource", "PresenceRoot"]

_log = Logger()


def _no_channel(prepath: list[bytes]) -> str:
    where = b"/".join(prepath).decode("utf-8", "replace") or "presence"
    return f"no channel named: use /{where}/{{channel}}"


class PresenceRoot(Resource):
    """``/presence``: a channel one segment below it; a JSON ``404`` else."""

    def __init__(self, hub: Hub) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.hub = hub

    def getChild(self, path: bytes, request: Any) -> IResource:
        if not path or request.postpath:
            return ErrorResource(404, _no_channel(request.prepath[:-1]))
        return PresenceResource(self.hub, path.decode("utf-8", "replace"))

    def render(self, request: Any) -> bytes:
        """The path without a channel: 404, whatever the method."""
        return json_error(request, 404, _no_channel(request.prepath))


class PresenceResource(StreamResource):
    """
    One channel's presence: ``GET`` answers ``{"channel", "count",
    "members": [{"sub", "connections"}], "truncated"}`` (see
    :meth:`PresenceInfo.to_json <twisted_sse.PresenceInfo.to_json>`); the
    ``limit`` query parameter lists fewer members than the hub's
    ``presence_members`` (never more; ``0`` counts only).

    Readable by whoever may subscribe to the channel, or with the
    presence claim where the hub asks for one (see
    :class:`~twisted_sse.Access`).  ``400`` for an invalid channel name or
    limit, ``401``/``403`` as for subscribing, ``404`` where the hub keeps
    no presence, ``503`` with ``Retry-After`` while the broker is down.
    """

    allowed_methods = (b"GET", b"HEAD", b"OPTIONS")

    def __init__(self, hub: Hub, channel: str) -> None:
        super().__init__(**hub.stream_options(hub.policy))
        self.hub = hub
        self.channel = channel

    def render(self, request: Any) -> bytes | int:
        """Dispatch by method; others get a JSON ``405`` with ``Allow``."""
        if request.method in self.allowed_methods:
            return super().render(request)
        return method_not_allowed(request, self.allowed_methods)

    def render_HEAD(self, request: Any) -> bytes:
        """The headers of a GET's answer, without asking the broker."""
        judged = self._judge(request)
        if isinstance(judged, bytes):
            return judged
        try:
            self.hub.access.decide_now(request, PRESENCE, (self.channel,))
        except Refused as refusal:
            return self.hub.refuse(request, refusal)
        _json_headers(request)
        return b""

    def render_GET(self, request: Any) -> bytes | int:
        """Decide, ask the broker, answer."""
        judged = self._judge(request)
        if isinstance(judged, bytes):
            return judged
        limit = judged
        try:
            decision = self.hub.access.decide(request, PRESENCE, (self.channel,))
        except Refused as refusal:
            return self.hub.refuse(request, refusal)
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))
        if isinstance(decision, Grant):
            self._ask(request, limit, gone)
            return NOT_DONE_YET

        def refused(failure: Failure) -> None:
            if not gone:
                self.hub.answer_refusal(
                    request, failure, "a presence read", self.channel
                )

        decision.addCallbacks(lambda _: self._ask(request, limit, gone), refused)
        return NOT_DONE_YET

    def _judge(self, request: Any) -> int | bytes:
        """The limit ``request`` asks for, or the body of its refusal."""
        self.set_cors_headers(request)
        hub = self.hub
        if not valid_channel(self.channel):
            return json_error(request, 400, f"invalid channel name: {self.channel!r}")
        if hub.presence_broker is None:
            return json_error(request, 404, "presence is turned off on this server")
        values = request.args.get(b"limit")
        if not values:
            return hub.presence_members
        text = values[0]
        if not (text.isdigit() and len(text) <= 6):
            return json_error(
                request, 400, "limit must be a whole number of members, from 0"
            )
        return min(int(text), hub.presence_members)

    def _ask(self, request: Any, limit: int, gone: list[bool]) -> None:
        def answer(body: bytes) -> None:
            if not gone:
                request.write(body)
                request.finish()

        def found(info: PresenceInfo) -> None:
            _json_headers(request)
            answer(json.dumps(info.to_json()).encode("utf-8") + b"\n")

        def failed(failure: Failure) -> None:
            if failure.check(BrokerUnavailable):
                request.setHeader(b"Retry-After", b"%d" % UNAVAILABLE_RETRY_AFTER)
                answer(json_error(request, 503, f"broker unavailable: {failure.value}"))
            elif failure.check(NoPresence):
                answer(json_error(request, 404, str(failure.value)))
            else:
                _log.failure(
                    "Reading the presence on {channel} failed",
                    failure,
                    channel=self.channel,
                )
                answer(json_error(request, 500, "internal error"))

        asked: Deferred[PresenceInfo] = self.hub.presence(self.channel, limit)
        asked.addCallbacks(found, failed)


def _json_headers(request: Any) -> None:
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
