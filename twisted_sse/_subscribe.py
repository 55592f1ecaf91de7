"""
``GET /subscribe?channel=a&channel=b&channel=news.*``: one stream carrying
several channels and patterns, with one cursor (:mod:`._fanin`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from ._auth import SUBSCRIBE, Refused
from ._broker import BrokerUnavailable
from ._errors import json_error, method_not_allowed
from ._fanin import Fanin, Selection, parse_selection
from ._handoff import Handoff
from ._presence import wants_presence
from ._resource import StreamResource, abandon, requested_last_event_id
from ._twisted import forget_notification

if TYPE_CHECKING:
    from ._hub import Hub


__all__ = ["MAX_TARGET_BYTES", "SubscribeResource"]

_log = Logger()

#: The longest request target (path and query) ``/subscribe`` reads; a
#: longer one is answered ``414``.
MAX_TARGET_BYTES = 8 * 1024
#: The event that ends the opening frames of an envelope stream (its id is
#: the cursor the frames before it set).
_OPENED = b"event: cursor\ndata: {}\n\n"
#: The response header that names why history was lost.
_HISTORY_LOST_HEADER = b"SSE-History-Lost"


class SubscribeResource(StreamResource):
    """
    ``GET`` subscribes to the channels and patterns of the ``channel``
    query parameters (see :class:`~twisted_sse._fanin.Fanin`): each event
    is written with the cursor of the whole subscription as its id, and a
    type naming its channel when it was published without one (or, with
    ``envelope=1``, as a JSON envelope naming its channel).  A client that
    comes back with the last cursor (``Last-Event-ID``, or the
    ``lastEventId`` query parameter) gets what it missed on every channel.

    Every stream of it has the hub's slow-client policy and queue bounds
    (the per-channel policies apply to ``/channels/{name}`` only).
    """

    def __init__(self, hub: Hub) -> None:
        super().__init__(**hub.stream_options(hub.policy))
        self.hub = hub

    def render(self, request: Any) -> bytes | int:
        """Dispatch by method; others get a JSON ``405`` with ``Allow``."""
        if request.method in self.allowed_methods:
            return super().render(request)
        return method_not_allowed(request, self.allowed_methods)

    def log_fields(self, request: Any) -> dict[str, object]:
        """Name a stream by the channels it carries in the logs."""
        return {"channels": _names(request)}

    def render_HEAD(self, request: Any) -> bytes:
        """Answer the headers a GET would get (4xx for what GET refuses)."""
        selection = self._judge(request)
        if isinstance(selection, bytes):
            return selection
        try:
            self.hub.access.decide_now(request, SUBSCRIBE, selection.names)
        except Refused as refusal:
            self.set_cors_headers(request)
            return self.hub.refuse(request, refusal)
        return super().render_HEAD(request)

    def render_GET(self, request: Any) -> bytes | int:
        """Subscribe: check the names, authorise, resume, then go live."""
        selection = self._judge(request)
        if isinstance(selection, bytes):
            return selection
        no_presence = self.hub.presence_refusal(request)
        if no_presence is not None:
            return no_presence
        refused = self.refusal(request)
        if refused is not None:
            self.send_away(request, refused)
            return NOT_DONE_YET
        answered = self.hub.decide_subscription(
            self,
            request,
            selection.names,
            lambda request, finished: self._ask_authorizer(
                request, finished, selection
            ),
            self._failed,
            presence=selection.channels if wants_presence(request) else (),
        )
        if answered is not None:
            return answered
        if self.hub.authorizer is None:
            self._subscribe(request, request.notifyFinish(), selection)
        else:
            self._ask_authorizer(request, request.notifyFinish(), selection)
        return NOT_DONE_YET

    def _ask_authorizer(
        self, request: Any, finished: Deferred[None], selection: Selection
    ) -> None:
        authorizer = self.hub.authorizer
        if authorizer is None:
            self._authorized([], request, finished, selection)
            return
        gatherResults(
            [maybeDeferred(authorizer, request, name) for name in selection.names],
            consumeErrors=True,
        ).addCallback(self._authorized, request, finished, selection).addErrback(
            self._failed, request, finished
        )

    def _judge(self, request: Any) -> Selection | bytes:
        """The selection ``request`` names, or the error body refusing it."""
        if len(request.uri) > MAX_TARGET_BYTES:
            return json_error(
                request,
                414,
                f"the request target is longer than {MAX_TARGET_BYTES} bytes",
            )
        try:
            names = [
                value.decode("utf-8") for value in request.args.get(b"channel", [])
            ]
        except UnicodeDecodeError:
            return json_error(request, 400, "a channel name is not UTF-8")
        try:
            return parse_selection(names, self.hub.max_subscriptions)
        except ValueError as error:
            return json_error(request, 400, str(error))

    def _authorized(
        self,
        answers: list[Any],
        request: Any,
        finished: Deferred[None],
        selection: Selection,
    ) -> None:
        if finished.called:
            abandon(finished)
            return
        for name, allowed in zip(selection.names, answers, strict=False):
            if not allowed:
                request.write(
                    json_error(request, 403, f"not allowed to subscribe to {name!r}")
                )
                request.finish()
                return
        refused = self.refusal(request)
        if refused is not None:
            self.send_away(request, refused)
        else:
            self._subscribe(request, finished, selection)

    def _subscribe(
        self, request: Any, finished: Deferred[None], selection: Selection
    ) -> None:
        hub = self.hub
        handoff = Handoff(self.max_queue_events, self.max_queue_bytes, hub)
        fanin = Fanin(
            hub.broker,
            selection,
            requested_last_event_id(request),
            handoff,
            envelope=request.args.get(b"envelope", [b""])[0] in (b"1", b"true"),
            max_followed=hub.max_followed,
        )
        handoff.encode = fanin.encode
        fanin.open().addCallbacks(
            self._opened,
            self._refused,
            callbackArgs=(request, finished, handoff, selection),
            errbackArgs=(request, finished),
        )

    def _opened(
        self,
        fanin: Fanin,
        request: Any,
        finished: Deferred[None],
        handoff: Handoff,
        selection: Selection,
    ) -> None:
        try:
            if finished.called:
                fanin.cancel()
                abandon(finished)
                return
            refused = self.refusal(request)
            if refused is not None:
                fanin.cancel()
                self.send_away(request, refused)
                return
            if fanin.resuming:
                resumes = self.hub.resumes
                if fanin.losses:
                    for reason in fanin.losses.values():
                        resumes[reason] += 1
                else:
                    resumes["exact"] += 1
            if fanin.losses:
                request.setHeader(_HISTORY_LOST_HEADER, fanin.lost_header)
            frames = fanin.opening_frames(self.hub.retry)
            if fanin.envelope:
                # A page's EventSource sees no id of a frame without data:
                # this event gives it the cursor before any other, so that it
                # resumes exactly even if its first connection ends first.
                frames.append(_OPENED)
            opened_with: Deferred[None] | None = finished
            if forget_notification(request, finished):
                # Nothing finished the request while it waited: the stream
                # learns of its end itself, without a Deferred of its own.
                opened_with = None
            stream = self.open_stream(request, *frames, finished=opened_with)
            follow = wants_presence(request)
            # The parsed query is read: an open stream need not keep it (a
            # list of names per subscriber, for as long as it is open).
            request.args = {}
            handoff.attach(stream, fanin)
            # Present on the channels it names (a pattern is no presence).
            self.hub.present(request, stream, selection.channels, follow)
            registry = self.registry

            def broken(failure: Failure) -> None:
                # A channel found later could not be followed: end the
                # stream, and its client resumes (and finds it) next time.
                _log.warn(
                    "Ending a subscription that lost a channel: {reason}",
                    reason=failure.getErrorMessage(),
                )
                retry = registry.jittered_retry() if registry is not None else None
                stream.close(retry)

            fanin.broken = broken
        except Exception:
            fanin.cancel()
            self._failed(Failure(), request, finished)

    def _refused(
        self, failure: Failure, request: Any, finished: Deferred[None]
    ) -> None:
        if finished.called:
            abandon(finished)
        elif failure.check(BrokerUnavailable):
            self.send_away(request, str(failure.value))
        elif failure.check(ValueError):
            request.write(json_error(request, 400, str(failure.value)))
            request.finish()
        else:
            self._failed(failure, request, finished)

    def _failed(self, failure: Failure, request: Any, finished: Deferred[None]) -> None:
        _log.failure(
            "Subscribing to {channels} failed", failure, channels=_names(request)
        )
        if finished.called:
            abandon(finished)
        elif not request.startedWriting:
            request.write(json_error(request, 500, "internal error"))
            request.finish()
        else:
            request.loseConnection()


def _names(request: Any) -> list[str]:
    return [
        value.decode("utf-8", "replace") for value in request.args.get(b"channel", [])
    ][:8]
