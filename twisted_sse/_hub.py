"""
The broadcast hub: subscribe to and publish on channels over HTTP, on top of
any :class:`~twisted_sse.IBroker`.

``GET /channels/{name}`` subscribes (resuming after ``Last-Event-ID``, with
an explicit signal when history was lost); ``POST /channels/{name}``
publishes.  Flow control, admission and the drain come from
:mod:`twisted_sse._stream`; ids, history and fan-out from the broker.
"""

from __future__ import annotations

import hmac
import inspect
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from ._auth import (
    PUBLISH,
    SUBSCRIBE,
    Access,
    AuthHook,
    Grant,
    Refused,
    TokenVerifier,
    grant_of,
    remember,
)
from ._broker import (
    HISTORY_LOST_EVENT,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    BrokerUnavailable,
    IBroker,
    IdempotencyConflict,
    IdempotencyUnavailable,
    Published,
    Replayed,
    Subscription,
    check_publish,
    event_digest,
    loss_event,
    valid_channel,
    valid_idempotency_key,
)
from ._errors import ErrorResource, json_error, method_not_allowed, no_channel
from ._event import Event
from ._fanin import (
    DEFAULT_MAX_FOLLOWED,
    DEFAULT_MAX_SUBSCRIPTIONS,
    Fanin,
    parse_selection,
)
from ._handoff import Handoff
from ._heartbeat import DEFAULT_HEARTBEAT, Heartbeat
from ._presence import (
    DEFAULT_PRESENCE_MEMBERS,
    MAX_PRESENCE_MEMBERS,
    IPresenceBroker,
    NoPresence,
    PresenceChange,
    PresenceFollow,
    PresenceInfo,
    wants_presence,
)
from ._publish_body import MAX_JSON_DEPTH, BadPublish, read_publish
from ._registry import StreamRegistry
from ._resource import (
    StreamResource,
    abandon,
    default_clock,
    requested_last_event_id,
)
from ._stream import EventStream, SlowClientPolicy
from ._twisted import answer_first, forget_notification

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "HISTORY_LOST_EVENT",
    "HISTORY_LOST_HEADER",
    "IDEMPOTENCY_KEY_HEADER",
    "IDEMPOTENCY_REPLAYED_HEADER",
    "MAX_JSON_DEPTH",
    "Authorizer",
    "ChannelResource",
    "Hub",
    "bearer_token_authorizer",
]

_log = Logger()

#: Largest publish body accepted over HTTP.
DEFAULT_MAX_EVENT_BYTES = 64 * 1024
#: The response header that says the same, with the reason as its value.
HISTORY_LOST_HEADER = b"SSE-History-Lost"
#: Seconds a publisher (or a presence reader) is told to wait, in
#: ``Retry-After``, when the broker cannot answer (``503``).
UNAVAILABLE_RETRY_AFTER = 1
#: The request header of a publish that may be repeated safely: a repeat
#: with the same key on the same channel is answered the first id.
IDEMPOTENCY_KEY_HEADER = b"Idempotency-Key"
#: The response header (``true``) of a publish answered as a repeat.
IDEMPOTENCY_REPLAYED_HEADER = b"Idempotency-Replayed"
#: An Idempotency-Key sent as a structured-field string: quoted, with
#: ``\"`` and ``\\`` escaped.
_QUOTED_KEY = re.compile(rb'"((?:[^"\\]|\\["\\])*)"')

#: A repeat waiting for the first publish with its idempotency key: its
#: event's digest, its answer, its event and its conflation key.
_Waiting = tuple[str, Deferred[str], Event, "str | None"]

#: Decides whether ``request`` may subscribe to ``channel``: returns a bool
#: or a Deferred that fires with one.
Authorizer = Callable[[Any, str], "bool | Deferred[bool]"]


def bearer_token_authorizer(tokens: Mapping[str, str] | str) -> Authorizer:
    """
    An :data:`Authorizer` that lets a subscriber in when it presents a
    token, as ``Authorization: Bearer <token>`` (clients that can send
    headers) or as the ``access_token`` query parameter (a browser's
    ``EventSource`` cannot send headers).

    :param tokens: One token for every channel, or a mapping from channel
        name to its token (channels not in it are refused).
    """

    def authorize(request: Any, channel: str) -> bool:
        expected = tokens if isinstance(tokens, str) else tokens.get(channel)
        if expected is None:
            return False
        presented = _bearer(request)
        if presented is None:
            values = request.args.get(b"access_token") or [b""]
            presented = values[0]
        return hmac.compare_digest(presented, expected.encode("utf-8"))

    return authorize


def _bearer(request: Any) -> bytes | None:
    header = request.getHeader(b"Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return bytes(token.strip())


class Hub:
    """
    Channels over HTTP on top of a broker.

    :param broker: Where events get ids and history and fan out.
    :param clock: The time source; the global reactor if ``None``.
    :param registry: Open streams for admission and the drain; a new one
        without limits if ``None``.
    :param heartbeat_timer: A shared heartbeat; a new one with ``heartbeat``
        seconds if ``None``.
    :param heartbeat: Seconds of silence before a heartbeat comment.
    :param retry: The reconnection time sent first, in milliseconds.
    :param allow_origin: Who may read the channels from another origin:
        ``"*"``, an origin or a sequence of them (a listed origin gets
        credentialed access), or ``None`` (see
        :class:`~twisted_sse.StreamResource`).
    :param publish_token: A static bearer token that may publish on every
        channel; with ``None`` (and no ``jwt`` nor ``auth_hook``),
        publishing over HTTP is off (403).
    :param max_event_bytes: Largest publish body (413 beyond).
    :param policy: The slow-client policy of every channel...
    :param channel_policies: ...except those named here.
    :param max_queue_events: Frames a non-reading subscriber may have queued.
    :param max_queue_bytes: Bytes a non-reading subscriber may have queued.
    :param jwt: Checks signed tokens whose ``sse`` claim lists the
        channels their holder may read and publish (see
        :class:`~twisted_sse.JWTVerifier`); with it, every channel but the
        public ones needs a token.
    :param public: Channels and ``.*`` patterns anyone may read without a
        token, when something else guards the others.
    :param auth_hook: The application's decision for requests without a
        JWT (see :data:`~twisted_sse.AuthHook`, :class:`~twisted_sse.HTTPAuthHook`).
    :param subscribe_token: A static bearer token that may read every
        channel.
    :param authorizer: A simpler check, asked after the decision above for
        each channel (on ``/subscribe``, for each channel and pattern
        named: all must be allowed); everyone if ``None``.
    :param max_subscriptions: Channels and patterns one ``/subscribe``
        connection may name (``400`` beyond).
    :param max_followed: Channels one ``/subscribe`` connection follows at
        most, those its patterns found included; one found beyond is
        announced with a ``history-lost`` event (reason ``"limit"``).
    :param presence: Whether to keep who is on each channel (see
        :meth:`presence`), when the broker can
        (:class:`~twisted_sse.IPresenceBroker`).
    :param presence_members: The most identities an answer about presence
        lists (``GET /presence/{channel}``, the ``presence`` event).
    :param presence_claim: Whether reading presence needs a claim of its
        own (a JWT's ``sse.presence``) rather than going with reading the
        channel (see :class:`~twisted_sse.Access`).
    :param stream_log: Whether the hub's streams log an info line when they
        open, when they close and when their credentials expire (see
        :class:`~twisted_sse.StreamResource`).
    """

    def __init__(
        self,
        broker: IBroker,
        *,
        clock: IReactorTime | None = None,
        registry: StreamRegistry | None = None,
        heartbeat_timer: Heartbeat | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        retry: int | None = 1000,
        allow_origin: str | Sequence[str] | None = None,
        publish_token: str | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        policy: SlowClientPolicy = SlowClientPolicy.DISCONNECT,
        channel_policies: Mapping[str, SlowClientPolicy] | None = None,
        max_queue_events: int = 1000,
        max_queue_bytes: int = 1024 * 1024,
        authorizer: Authorizer | None = None,
        max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS,
        max_followed: int = DEFAULT_MAX_FOLLOWED,
        jwt: TokenVerifier | None = None,
        public: Iterable[str] = (),
        auth_hook: AuthHook | None = None,
        subscribe_token: str | None = None,
        presence: bool = True,
        presence_members: int = DEFAULT_PRESENCE_MEMBERS,
        presence_claim: bool = False,
        stream_log: bool = True,
    ) -> None:
        if not 0 <= presence_members <= MAX_PRESENCE_MEMBERS:
            raise ValueError(
                f"presence_members must be 0 to {MAX_PRESENCE_MEMBERS}, "
                f"not {presence_members!r}"
            )
        if max_event_bytes < 1:
            raise ValueError(f"max_event_bytes must be >= 1, not {max_event_bytes!r}")
        if max_subscriptions < 1:
            raise ValueError(
                f"max_subscriptions must be >= 1, not {max_subscriptions!r}"
            )
        if max_followed < 1:
            raise ValueError(f"max_followed must be >= 1, not {max_followed!r}")
        #: Who may read and publish what (see :class:`~twisted_sse.Access`).
        self.access = Access(
            verifier=jwt,
            public=public,
            hook=auth_hook,
            subscribe_token=subscribe_token,
            publish_token=publish_token,
            presence_claim=presence_claim,
        )
        self.broker = broker
        #: The broker's presence, or ``None`` where there is none (turned
        #: off, or a broker without it).
        self.presence_broker: IPresenceBroker | None = (
            broker if presence and IPresenceBroker.providedBy(broker) else None
        )
        self.presence_members = presence_members
        self.clock = clock if clock is not None else default_clock()
        self.registry = registry if registry is not None else StreamRegistry(self.clock)
        self.heartbeat = (
            heartbeat_timer
            if heartbeat_timer is not None
            else Heartbeat(self.clock, heartbeat)
        )
        self.retry = retry
        self.allow_origin = allow_origin
        self.publish_token = publish_token
        self.max_event_bytes = max_event_bytes
        self.policy = policy
        self.channel_policies = dict(channel_policies or {})
        self.max_queue_events = max_queue_events
        self.max_queue_bytes = max_queue_bytes
        self.authorizer = authorizer
        self.max_subscriptions = max_subscriptions
        self.max_followed = max_followed
        self.stream_log = stream_log
        self._subscribe_resource: Resource | None = None
        self._presence_resource: Resource | None = None
        # The channel resources with open streams, so that every subscriber
        # of a channel shares one (and its set of streams).
        self._live: dict[str, ChannelResource] = {}
        #: Counters for metrics: events published, publishes that failed,
        #: resumes by outcome ("exact" or the history-lost reason), and
        #: events replayed to resuming subscribers.
        self.published = 0
        self.publish_failures = 0
        #: Publishes failed because the broker was unavailable (a 503).
        self.publish_unavailable = 0
        #: Publishes answered as repeats of an earlier one with the same
        #: idempotency key (nothing published again).
        self.replays = 0
        # The publishes with an idempotency key under way, by channel and
        # key: their event's digest and the repeats waiting for them.
        self._in_flight: dict[
            tuple[str, str],
            tuple[str, list[tuple[str, Deferred[str], Event, str | None]]],
        ] = {}
        # Whether the broker's publish takes an idempotency key: (the
        # broker asked, the answer).
        self._takes_key: tuple[object, bool] | None = None
        self.resumes: Counter[str] = Counter()
        self.replayed = 0
        #: Requests refused by the access decision, by status ("401",
        #: "403", "503").
        self.refusals: Counter[str] = Counter()

    def refuse(self, request: Any, refused: Refused) -> bytes:
        """
        Count ``refused`` and make ``request`` its answer: its status, a
        ``WWW-Authenticate`` challenge for a ``401``, ``Retry-After`` for a
        ``503``, and ``{"error": reason}``.

        :returns: The body to write.
        """
        self.refusals[str(refused.code)] += 1
        challenge = refused.challenge
        if challenge is not None:
            request.setHeader(b"WWW-Authenticate", challenge)
        if refused.retry is not None:
            request.setHeader(b"Retry-After", b"%d" % max(1, round(refused.retry)))
        return json_error(request, refused.code, refused.reason)

    def publish(
        self,
        channel: str,
        event: Event,
        key: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Deferred[str]:
        """
        Publish ``event`` on ``channel`` from Python (on the reactor thread;
        see :func:`~twisted_sse.publish_from_thread` for other threads).

        With ``idempotency_key`` (1 to 255 printable ASCII characters), a
        repeat of the publish (the same key on the same channel, while the
        broker remembers it) publishes nothing and fires with the first
        id; a repeat carrying another event fails with a
        ``ValueError`` (an ``IdempotencyConflict``).  Repeats made while
        the first is under way wait for it.  A broker that cannot keep
        keys fails the publish with a ``NotImplementedError`` (an
        ``IdempotencyUnavailable``).

        :returns: A Deferred firing with the event's id (for a repeat, a
            ``Replayed``: a ``str`` that says so).
        """

        try:
            check_publish(channel, event, key, idempotency_key)
        except ValueError as error:
            self.publish_failures += 1
            return fail(error)

        def counted(event_id: str) -> str:
            if isinstance(event_id, Replayed):
                self.replays += 1
            else:
                self.published += 1
            return event_id

        def failed(failure: Failure) -> Failure:
            self.publish_failures += 1
            if failure.check(BrokerUnavailable):
                self.publish_unavailable += 1
            return failure

        if idempotency_key is None:
            published = self.broker.publish(channel, event, key)
        else:
            published = self._publish_once(channel, event, key, idempotency_key)
        return published.addCallbacks(counted, failed)

    def _broker_takes_key(self) -> bool:
        """Whether the broker's ``publish`` takes ``idempotency_key``."""
        broker = self.broker
        known = self._takes_key
        if known is not None and known[0] is broker:
            return known[1]
        try:
            parameters = inspect.signature(broker.publish).parameters.values()
        except (TypeError, ValueError):
            takes = True  # cannot tell: it says so itself if it does not
        else:
            takes = any(
                parameter.name == "idempotency_key"
                or parameter.kind is inspect.Parameter.VAR_KEYWORD
                for parameter in parameters
            )
        self._takes_key = (broker, takes)
        return takes

    def _publish_once(
        self, channel: str, event: Event, key: str | None, idempotency_key: str
    ) -> Deferred[str]:
        """
        Publish with ``idempotency_key``; a repeat while the first publish
        with it is under way waits for that one's answer instead of asking
        the broker too.
        """
        if not self._broker_takes_key():
            return fail(
                IdempotencyUnavailable("this broker cannot publish idempotently")
            )
        name = (channel, idempotency_key)
        digest = event_digest(event, key)
        first = self._in_flight.get(name)
        if first is not None:
            answer: Deferred[str] = Deferred()
            first[1].append((digest, answer, event, key))
            return answer
        waiting: list[_Waiting] = []
        self._in_flight[name] = (digest, waiting)

        def settled(result: str | Failure) -> str | Failure:
            del self._in_flight[name]
            for their_digest, answer, their_event, their_key in waiting:
                if isinstance(result, Failure):
                    # The key may not be kept: each repeat publishes in
                    # turn (those after the first waiting again).
                    self._publish_once(
                        channel, their_event, their_key, idempotency_key
                    ).chainDeferred(answer)
                elif their_digest == digest:
                    answer.callback(Replayed(result))
                else:
                    answer.errback(
                        IdempotencyConflict(
                            "the Idempotency-Key was used for another event on "
                            f"this channel (published as {result})",
                            str(result),
                        )
                    )
            return result

        # Optional in IBroker (see _broker_takes_key).
        publish: Callable[..., Deferred[str]] = self.broker.publish
        return maybeDeferred(
            publish,
            channel,
            event,
            key,
            idempotency_key=idempotency_key,
        ).addBoth(settled)

    def decide_subscription(
        self,
        resource: StreamResource,
        request: Any,
        names: Sequence[str],
        granted: Callable[[Any, Deferred[None]], object],
        failed: Callable[[Failure, Any, Deferred[None]], object],
        presence: Sequence[str] = (),
    ) -> bytes | int | None:
        """
        Decide whether ``request`` may subscribe to ``names`` (see
        :class:`~twisted_sse.Access`), for ``resource``, and read the
        presence on the channels ``presence`` names (``presence=1``).

        :returns: ``None`` when it may, now (its grant is kept for the
            stream it opens); the body of the refusal to answer now; or
            ``NOT_DONE_YET`` when the application's hook is asked: then
            ``granted(request, finished)`` is called once it allows (unless
            the client has gone), ``failed(failure, request, finished)``
            for an unexpected error, and a refusal is answered here.
        """
        access = self.access
        if not access.guards_subscribing:
            return None
        try:
            decision = access.decide(request, SUBSCRIBE, names, presence)
        except Refused as refusal:
            resource.set_cors_headers(request)
            return self.refuse(request, refusal)
        if isinstance(decision, Grant):
            remember(request, decision)
            return None
        finished = request.notifyFinish()

        def allowed(grant: Grant) -> None:
            if finished.called:
                abandon(finished)
                return
            remember(request, grant)
            granted(request, finished)

        def refused(failure: Failure) -> None:
            if finished.called:
                abandon(finished)
            elif isinstance(failure.value, Refused):
                resource.set_cors_headers(request)
                request.write(self.refuse(request, failure.value))
                request.finish()
            else:
                failed(failure, request, finished)

        decision.addCallbacks(allowed, refused)
        return NOT_DONE_YET

    def answer_refusal(
        self, request: Any, failure: Failure, what: str, channel: str
    ) -> None:
        """
        Answer ``request`` with what the application's hook decided late:
        its refusal (see :meth:`refuse`), or a logged ``500`` for any other
        error of the decision on ``what`` (``"a publish"``) on ``channel``.
        """
        if isinstance(failure.value, Refused):
            request.write(self.refuse(request, failure.value))
        else:
            _log.failure(
                "Authorising {what} on {channel} failed",
                failure,
                what=what,
                channel=channel,
            )
            request.write(json_error(request, 500, "internal error"))
        request.finish()

    def publish_refusal(
        self, request: Any, length: int | None = None
    ) -> tuple[int, str] | None:
        """
        Whether a publish must be refused on its head alone, and why (see
        :meth:`publish_refused`).

        :returns: ``None``, or the status code and the reason.
        """
        refused = self.publish_refused(request, length)
        return None if refused is None else (refused.code, refused.reason)

    def publish_refused(
        self, request: Any, length: int | None = None
    ) -> Refused | None:
        """
        Whether a publish must be refused on its head alone: no publishing
        over HTTP (403), missing, malformed or invalid credentials (401), a
        declared body ``length`` over ``max_event_bytes`` (413).  A server
        can ask this as soon as a request's headers arrive, before it reads
        (or asks for, with ``100 Continue``) a body that it would refuse.
        What needs the channel's name (whether the credentials cover it)
        or the application's hook is decided when the request is rendered.
        """
        try:
            self.access.decide_now(request, PUBLISH, ())
        except Refused as refused:
            self.refusals[str(refused.code)] += 1
            return refused
        if length is not None and length > self.max_event_bytes:
            return Refused(413, f"the body is larger than {self.max_event_bytes} bytes")
        return None

    def subscribe(
        self,
        names: Iterable[str],
        deliver: Callable[[Published], object],
        last_event_id: str | None = None,
        *,
        envelope: bool = False,
    ) -> Deferred[Fanin]:
        """
        Subscribe from Python to several channels and patterns with one
        cursor, as ``/subscribe`` does: ``deliver`` gets each event as it
        would be sent there (its ``id`` the cursor, its ``frame`` the
        bytes), first what was missed after ``last_event_id`` (a cursor
        given before), then the live ones.

        :returns: A Deferred firing with the subscription (its ``losses``,
            its ``cursor``; ``cancel()`` ends it) once every channel has
            answered; events reach ``deliver`` from then on.
        :raises ValueError: for what ``/subscribe`` refuses with ``400``.
        """
        selection = parse_selection(list(names), self.max_subscriptions)
        sink = _Sink(deliver)
        fanin = Fanin(
            self.broker,
            selection,
            last_event_id,
            sink,
            envelope=envelope,
            max_followed=self.max_followed,
        )
        sink.fanin = fanin
        return fanin.open().addCallback(sink.opened)

    # Presence

    def presence(
        self, channel: str, limit: int | None = None
    ) -> Deferred[PresenceInfo]:
        """
        Who is on ``channel``, over every process sharing the broker: the
        data of ``GET /presence/{channel}``.

        :param limit: The most identities listed; the hub's
            ``presence_members`` if ``None`` (and never more).
        :returns: A Deferred firing with the answer, or failing with
            :class:`ValueError` for an invalid channel name,
            :class:`~twisted_sse.NoPresence` where the hub keeps none, or
            :class:`~twisted_sse.BrokerUnavailable`.
        """
        broker = self.presence_broker
        if broker is None:
            return fail(NoPresence("presence is turned off on this hub"))
        if not isinstance(channel, str) or not valid_channel(channel):
            return fail(ValueError(f"invalid channel name: {channel!r}"))
        if limit is None or limit > self.presence_members:
            limit = self.presence_members
        if limit < 0:
            return fail(ValueError(f"limit must be >= 0, not {limit!r}"))
        return maybeDeferred(broker.presence, channel, limit)

    def presence_refusal(self, request: Any) -> bytes | None:
        """
        The answer to a subscription asking for ``presence=1`` where the
        hub keeps no presence (a JSON ``400``), or ``None``.
        """
        if self.presence_broker is None and wants_presence(request):
            return json_error(
                request, 400, "presence=1: presence is turned off on this server"
            )
        return None

    def present(
        self,
        request: Any,
        stream: EventStream,
        channels: Sequence[str],
        follow: bool,
    ) -> None:
        """
        Count ``stream``, just opened for ``request``, as present on
        ``channels`` until it closes, under the identity its credentials
        named; with ``follow``, write the presence of each channel on it,
        then the ``join`` and ``leave`` events.
        """
        broker = self.presence_broker
        if broker is None or not channels or stream.closed:
            return
        grant = grant_of(request)
        identity = grant.identity if grant is not None else None
        for channel in channels:
            broker.enter(channel, identity)
        present = _Present(broker, channels, identity)
        if follow:

            def told(news: PresenceInfo | PresenceChange) -> None:
                stream.write(news.frame())

            present.follows = [
                broker.follow_presence(channel, self.presence_members, told)
                for channel in channels
            ]
        stream.on_close(present)

    def presence_resource(self) -> Resource:
        """
        The resource of ``GET /presence/{channel}``, for a plain
        ``twisted.web`` tree: ``root.putChild(b"presence",
        hub.presence_resource())``.
        """
        if self._presence_resource is None:
            from ._presence_http import PresenceRoot

            self._presence_resource = PresenceRoot(self)
        return self._presence_resource

    def stream_options(self, policy: SlowClientPolicy) -> dict[str, Any]:
        """
        What the hub's stream resources are made with: its clock, retry,
        heartbeat, CORS origin, queue bounds, registry and stream log, and
        ``policy``.
        """
        return {
            "clock": self.clock,
            "retry": self.retry,
            "heartbeat_timer": self.heartbeat,
            "allow_origin": self.allow_origin,
            "max_queue_events": self.max_queue_events,
            "max_queue_bytes": self.max_queue_bytes,
            "policy": policy,
            "registry": self.registry,
            "stream_log": self.stream_log,
        }

    def subscribe_resource(self) -> Resource:
        """
        The resource of ``GET /subscribe?channel=...`` (one stream carrying
        several channels), for a plain ``twisted.web`` tree:
        ``root.putChild(b"subscribe", hub.subscribe_resource())``.
        """
        if self._subscribe_resource is None:
            from ._subscribe import SubscribeResource

            self._subscribe_resource = SubscribeResource(self)
        return self._subscribe_resource

    def channel_resource(self, channel: str) -> ChannelResource:
        """The resource serving ``channel`` (GET subscribes, POST publishes)."""
        live = self._live.get(channel)
        return live if live is not None else ChannelResource(self, channel)

    def went_live(self, resource: ChannelResource) -> None:
        """
        ``resource`` opened a stream: it serves its channel's subscribers
        from now on (see :meth:`channel_resource`), unless another does.
        """
        self._live.setdefault(resource.channel, resource)

    def went_idle(self, resource: ChannelResource) -> None:
        """``resource`` has no stream left: the next subscriber gets a new one."""
        if self._live.get(resource.channel) is resource:
            del self._live[resource.channel]

    @property
    def live_channels(self) -> list[str]:
        """The channels with open streams, each served by one resource."""
        return list(self._live)

    def resource(self) -> Resource:
        """
        A resource whose children are the channels, for a plain
        ``twisted.web`` tree: ``root.putChild(b"channels", hub.resource())``.
        """
        return _ChannelsResource(self)


class _Present:
    """
    What a stream's end takes away: its connection on each channel, and
    its follows of their presence.  One small object per stream (it is on
    the path of every connection), not a closure and its cells.
    """

    __slots__ = ("broker", "channels", "follows", "identity")

    def __init__(
        self, broker: IPresenceBroker, channels: Sequence[str], identity: str | None
    ) -> None:
        self.broker = broker
        self.channels = channels
        self.identity = identity
        self.follows: list[PresenceFollow] | None = None

    def __call__(self) -> None:
        follows = self.follows
        if follows is not None:
            for following in follows:
                following.cancel()
        broker, identity = self.broker, self.identity
        for channel in self.channels:
            broker.leave(channel, identity)


class _Sink:
    """
    Where a Python subscription's events wait until it has opened, then
    go to its ``deliver``, each written with the cursor as it goes.
    """

    def __init__(self, deliver: Callable[[Published], object]) -> None:
        self.deliver = deliver
        self.fanin: Fanin | None = None
        self.waiting: list[Published] | None = []

    @property
    def cancelled(self) -> bool:
        """Whether the subscription was cancelled: nothing more is given."""
        fanin = self.fanin
        return fanin is not None and fanin.cancelled

    def __call__(self, published: Published) -> bool:
        if self.cancelled:
            return False
        waiting = self.waiting
        if waiting is not None:
            waiting.append(published)
            return True
        self._give(published)
        return True

    def _give(self, published: Published) -> None:
        fanin = self.fanin
        assert fanin is not None
        frame, _ = fanin.encode(published)
        self.deliver(Published(published.channel, fanin.cursor, frame, published.key))

    def opened(self, fanin: Fanin) -> Fanin:
        waiting, self.waiting = self.waiting, None
        if fanin.losses:
            frame = fanin.opening_frames(None)[1]
            self.deliver(Published("", fanin.cursor, frame, HISTORY_LOST_EVENT))
        for published in waiting or ():
            self._give(published)
        return fanin


class _ChannelsResource(Resource):
    """
    The hub in a ``twisted.web`` tree: a channel one segment below it, and
    a JSON ``404`` for its own path, an empty name and deeper paths.
    """

    def __init__(self, hub: Hub) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.hub = hub

    def getChild(self, path: bytes, request: Any) -> IResource:
        if not path or request.postpath:
            # A channel resource is a leaf: /channels/news/x is not "news".
            return ErrorResource(404, no_channel(request.prepath[:-1]))
        return self.hub.channel_resource(path.decode("utf-8", "replace"))

    def render(self, request: Any) -> bytes:
        """The hub's own path is no channel: 404, whatever the method."""
        return json_error(request, 404, no_channel(request.prepath))


class ChannelResource(StreamResource):
    """
    One channel: ``GET`` subscribes, ``POST`` publishes.

    A subscriber that sends ``Last-Event-ID`` (or the ``lastEventId`` query
    parameter of EventSource polyfills) gets every event after it, then the
    live stream.  If the broker cannot replay from that id (it is malformed,
    unknown or already trimmed from history), the response carries the
    ``SSE-History-Lost`` header with the reason, and the stream starts with
    an event of type ``history-lost`` whose data is ``{"reason": ...}`` and
    whose id is the channel's current position, so that the client resumes
    from there next time.  The client's id is never echoed back.
    """

    allowed_methods = (b"GET", b"HEAD", b"OPTIONS", b"POST")

    def __init__(self, hub: Hub, channel: str) -> None:
        super().__init__(
            **hub.stream_options(hub.channel_policies.get(channel, hub.policy))
        )
        self.hub = hub
        self.channel = channel
        self._valid = valid_channel(channel)
        self._opening: tuple[str, bytes] | None = None
        # The handoff whose broker subscription is being made right now
        # (see _subscribe).
        self._answering: Handoff | None = None

    def log_fields(self, request: Any) -> dict[str, object]:
        """Name a subscriber's stream by its channel in the logs."""
        return {"channel": self.channel}

    def render(self, request: Any) -> bytes | int:
        """Dispatch by method; others get a JSON ``405`` with ``Allow``."""
        method = request.method
        if method in self.allowed_methods:
            handler = getattr(self, "render_" + method.decode("ascii"))
            result: bytes | int = handler(request)
            return result
        return method_not_allowed(request, self.allowed_methods)

    # Subscribing

    def render_GET(self, request: Any) -> bytes | int:
        """Subscribe: authorise, replay after Last-Event-ID, then go live."""
        if not self._valid:
            return json_error(request, 400, f"invalid channel name: {self.channel!r}")
        hub = self.hub
        no_presence = hub.presence_refusal(request)
        if no_presence is not None:
            return no_presence
        refused = self.refusal(request)
        if refused is not None:
            self.send_away(request, refused)
            return NOT_DONE_YET
        channels = (self.channel,)
        answered = hub.decide_subscription(
            self,
            request,
            channels,
            self._granted,
            self._subscribe_failed,
            presence=channels if wants_presence(request) else (),
        )
        if answered is not None:
            return answered
        # Without an authoriser, on a broker that answers at once, the
        # stream opens before this method returns.  Otherwise, `finished`
        # fires once the client has gone (nothing finishes the request
        # before the stream opens), and then it ends the stream.
        authorizer = self.hub.authorizer
        if authorizer is None:
            if not self._subscribe_now(request):
                self._subscribe(request, request.notifyFinish())
        else:
            self._ask_authorizer(request, request.notifyFinish())
        return NOT_DONE_YET

    def _granted(self, request: Any, finished: Deferred[None]) -> None:
        if self.hub.authorizer is None:
            self._authorized(True, request, finished)
        else:
            self._ask_authorizer(request, finished)

    def _ask_authorizer(self, request: Any, finished: Deferred[None]) -> None:
        authorizer = self.hub.authorizer
        assert authorizer is not None
        maybeDeferred(authorizer, request, self.channel).addCallback(
            self._authorized, request, finished
        ).addErrback(self._subscribe_failed, request, finished)

    def _authorized(
        self, allowed: object, request: Any, finished: Deferred[None]
    ) -> None:
        if finished.called:
            abandon(finished)
        elif not allowed:
            request.write(json_error(request, 403, "not allowed to subscribe"))
            request.finish()
        else:
            # Admission again: while the authoriser took its time, other
            # streams may have opened, or the drain begun.
            refused = self.refusal(request)
            if refused is not None:
                self.send_away(request, refused)
            else:
                self._subscribe(request, finished)

    def _subscribe_now(self, request: Any) -> bool:
        """
        Subscribe and open the stream now if the broker answers at once
        (:meth:`IBroker.subscribe_now`); ``False`` if it cannot.
        """
        # Optional: a broker written before subscribe_now is asked subscribe.
        subscribe_now = getattr(self.hub.broker, "subscribe_now", None)
        if subscribe_now is None:
            return False
        last_event_id = requested_last_event_id(request)
        handoff = Handoff(self.max_queue_events, self.max_queue_bytes, self.hub)
        subscription = subscribe_now(self.channel, handoff, last_event_id)
        if subscription is None:
            return False
        try:
            self._go_live(request, None, subscription, handoff, bool(last_event_id))
        except Exception:
            subscription.cancel()
            self._subscribe_failed(Failure(), request, None)
        return True

    def _subscribe(self, request: Any, finished: Deferred[None]) -> None:
        last_event_id = requested_last_event_id(request)
        handoff = Handoff(self.max_queue_events, self.max_queue_bytes, self.hub)
        # A broker that answers at once calls _subscribed before this
        # returns: the admission decided just before still holds.
        self._answering = handoff
        try:
            self.hub.broker.subscribe(self.channel, handoff, last_event_id).addBoth(
                self._subscribed, request, finished, handoff, bool(last_event_id)
            )
        finally:
            self._answering = None

    def _subscribed(
        self,
        result: Subscription | Failure,
        request: Any,
        finished: Deferred[None],
        handoff: Handoff,
        resuming: bool,
    ) -> None:
        if isinstance(result, Failure):
            if not result.check(BrokerUnavailable):
                self._subscribe_failed(result, request, finished)
            elif finished.called:
                abandon(finished)
            else:
                self.send_away(request, str(result.value))
            return
        try:
            if finished.called:
                result.cancel()
                abandon(finished)
                return
            if self._answering is not handoff:
                # Admission again: while the broker took its time, other
                # streams may have opened, or the drain begun.
                refused = self.refusal(request)
                if refused is not None:
                    result.cancel()
                    self.send_away(request, refused)
                    return
            self._go_live(request, finished, result, handoff, resuming)
        except Exception:
            result.cancel()
            self._subscribe_failed(Failure(), request, finished)

    def _subscribe_failed(
        self, failure: Failure, request: Any, finished: Deferred[None] | None
    ) -> None:
        _log.failure("Subscribing to {channel} failed", failure, channel=self.channel)
        if finished is not None and finished.called:
            abandon(finished)
        elif not request.startedWriting:
            request.write(json_error(request, 500, "internal error"))
            request.finish()
        else:
            # The stream had started: end the connection, and its client
            # comes back.
            request.loseConnection()

    def _go_live(
        self,
        request: Any,
        finished: Deferred[None] | None,
        subscription: Subscription,
        handoff: Handoff,
        resuming: bool,
    ) -> None:
        if resuming:
            self.hub.resumes[subscription.history_lost or "exact"] += 1
        frames = [self.first_frame]
        if not resuming and subscription.position:
            # A new subscriber learns the channel's position at once, so that
            # if it reconnects before its first event it resumes from there
            # instead of starting over and missing what came in between.
            frames = [self._opening_frame(subscription.position)]
        if subscription.history_lost is not None:
            request.setHeader(HISTORY_LOST_HEADER, subscription.history_lost)
            frames.append(
                loss_event(
                    self.channel, subscription.position, subscription.history_lost
                ).frame
            )
        if finished is not None and forget_notification(request, finished):
            # Nothing finished the request while it waited: the stream now
            # learns of its end itself (on the direct path, without a
            # Deferred of its own).
            finished = None
        stream = self.open_stream(request, *frames, finished=finished)
        handoff.attach(stream, subscription)
        hub = self.hub
        hub.went_live(self)
        hub.present(request, stream, (self.channel,), wants_presence(request))

    def _opening_frame(self, position: str) -> bytes:
        # Subscribers arriving between two publishes share one position:
        # encode its frame once for them all.
        cached = self._opening
        if cached is None or cached[0] != position:
            frame = Event(retry=self.hub.retry, id=position).encode()
            cached = self._opening = (position, frame)
        return cached[1]

    def stream_closed(self, stream: EventStream) -> None:
        """Forget ``stream``, and the channel's resource with its last stream."""
        super().stream_closed(stream)
        if not self.streams:
            self.hub.went_idle(self)

    def render_HEAD(self, request: Any) -> bytes:
        """
        Answer the headers a GET would get: 400 for a bad name, the
        refusal of missing or bad credentials (what the application's hook
        would decide is not asked).
        """
        if not self._valid:
            return json_error(request, 400, f"invalid channel name: {self.channel!r}")
        try:
            self.hub.access.decide_now(request, SUBSCRIBE, (self.channel,))
        except Refused as refusal:
            self.set_cors_headers(request)
            return self.hub.refuse(request, refusal)
        return super().render_HEAD(request)

    # Publishing

    def render_POST(self, request: Any) -> bytes | int:
        """Publish the body as an event; answer ``{"id": ...}``."""
        self.set_cors_headers(request)
        # The publisher hears its answer before the event is fanned out, so
        # that its next event is on its way meanwhile.
        answer_first(request)
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))
        try:
            decision = self.hub.access.decide(request, PUBLISH, (self.channel,))
        except Refused as refusal:
            return self.hub.refuse(request, refusal)
        if isinstance(decision, Grant):
            return self._publish(request, gone)

        def refused(failure: Failure) -> None:
            if not gone:
                self.hub.answer_refusal(request, failure, "a publish", self.channel)

        def granted(_: Grant) -> None:
            if gone:
                return
            body = self._publish(request, gone)
            if body is not NOT_DONE_YET:
                assert isinstance(body, bytes)
                request.write(body)
                request.finish()

        decision.addCallbacks(granted, refused)
        return NOT_DONE_YET

    def _publish(self, request: Any, gone: list[bool]) -> bytes | int:
        try:
            if not self._valid:
                raise BadPublish(400, f"invalid channel name: {self.channel!r}")
            idempotency_key = _idempotency_key(request)
            event, key = read_publish(request, self.hub.max_event_bytes)
        except BadPublish as error:
            return json_error(request, error.code, error.message)

        def answer(body: bytes) -> None:
            # The event is published whether or not the publisher stayed to
            # hear its id; only the answer is skipped for one that left.
            if not gone:
                request.write(body)
                request.finish()

        def published(event_id: str) -> None:
            request.setHeader(b"Content-Type", b"application/json")
            if isinstance(event_id, Replayed):
                request.setHeader(IDEMPOTENCY_REPLAYED_HEADER, b"true")
                # A page publishing from another origin may read it too.
                request.setHeader(
                    b"Access-Control-Expose-Headers", IDEMPOTENCY_REPLAYED_HEADER
                )
            answer(json.dumps({"id": str(event_id)}).encode("utf-8") + b"\n")

        def failed(failure: Failure) -> None:
            if failure.check(BrokerUnavailable):
                # Down for now (Redis restarting, a failover): the same
                # publish, again later, may work.
                request.setHeader(b"Retry-After", b"%d" % UNAVAILABLE_RETRY_AFTER)
                answer(json_error(request, 503, f"broker unavailable: {failure.value}"))
            elif failure.check(IdempotencyConflict):
                answer(json_error(request, 422, str(failure.value)))
            elif failure.check(IdempotencyUnavailable):
                answer(json_error(request, 501, str(failure.value)))
            elif failure.check(ValueError):
                answer(json_error(request, 400, str(failure.value)))
            else:
                _log.failure(
                    "Publishing on {channel} failed", failure, channel=self.channel
                )
                answer(json_error(request, 500, "internal error"))

        maybeDeferred(
            self.hub.publish, self.channel, event, key, idempotency_key=idempotency_key
        ).addCallbacks(published, failed)
        return NOT_DONE_YET


def _idempotency_key(request: Any) -> str | None:
    """
    The ``Idempotency-Key`` of a publish, or ``None``: as it is, or as a
    structured-field string (``"..."``, as the IETF draft writes it).

    :raises BadPublish: ``400`` for several of them, or one that is not
        1 to 255 printable ASCII characters.
    """
    values = request.requestHeaders.getRawHeaders(IDEMPOTENCY_KEY_HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise BadPublish(400, "the Idempotency-Key header must be given once")
    value = values[0].strip(b" \t")
    quoted = _QUOTED_KEY.fullmatch(value)
    if quoted is not None:
        value = re.sub(rb"\\(.)", rb"\1", quoted.group(1))
    text: str = value.decode("latin-1")
    if not valid_idempotency_key(text):
        raise BadPublish(
            400,
            f"the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} "
            "printable ASCII characters",
        )
    return text
