"""
Who may read and publish which channels: what a credential grants
(:class:`Grant`), where a request carries its token, and the decision a
hub takes once per request (:class:`Access`), from a signed token
(:mod:`._jwt`), a static token, the public channels, or the
application's own hook (:mod:`._authhook`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal, Protocol
from weakref import WeakKeyDictionary

from attrs import field, frozen
from twisted.internet.defer import Deferred, maybeDeferred

from ._broker import valid_channel, valid_pattern

__all__ = [
    "ALL",
    "MAX_TOKEN_BYTES",
    "PRESENCE",
    "PUBLISH",
    "REALM",
    "SUBSCRIBE",
    "TOKEN_COOKIE",
    "TOKEN_PARAMETER",
    "Access",
    "Action",
    "AuthHook",
    "AuthRequest",
    "Credentials",
    "Grant",
    "Refused",
    "TokenVerifier",
    "check_claims",
    "covers",
    "credentials",
    "grant_of",
    "identity_hash",
    "remember",
]

#: The things a credential may allow: reading a channel, publishing on
#: it, and reading who is on it (see :class:`Access`).
SUBSCRIBE: Final = "subscribe"
PUBLISH: Final = "publish"
PRESENCE: Final = "presence"
Action = Literal["subscribe", "publish", "presence"]

#: A claim that covers every channel and pattern.
ALL = "*"
#: The longest token read from any carrier: a longer one is refused (401)
#: without being parsed.
MAX_TOKEN_BYTES = 8 * 1024
#: The cookie a browser's ``EventSource`` sends (``withCredentials``).
TOKEN_COOKIE = b"sse_token"
#: The query parameter of clients that can set neither a header nor a
#: cookie (RFC 6750, section 2.3).
TOKEN_PARAMETER = b"access_token"
#: The realm of every ``WWW-Authenticate`` challenge.
REALM = "twisted_sse"


def check_claims(claims: object, what: str) -> tuple[str, ...]:
    """
    ``claims`` as a tuple of channel names and ``.*`` patterns (``"*"``
    alone meaning every channel), never guessed from another type.

    :param what: Names the claims in a message (``"sse.subscribe"``).
    :raises ValueError: naming ``what``, for anything but a list (or tuple)
        of such strings.
    """
    if isinstance(claims, str) or not isinstance(claims, (list, tuple)):
        raise ValueError(f"{what} must be a list of channel names and patterns")
    for claim in claims:
        if not isinstance(claim, str):
            raise ValueError(
                f"{what} must be a list of channel names and patterns, "
                f"not of {type(claim).__name__}"
            )
        if claim != ALL and not valid_channel(claim) and not valid_pattern(claim):
            raise ValueError(
                f"{what} holds {claim[:140]!r}: neither a channel name, a "
                "pattern (news.*) nor *"
            )
    return tuple(claims)


def covers(claims: Iterable[str], name: str) -> bool:
    """
    Whether ``claims`` cover ``name``, a channel or a ``.*`` pattern: ``*``
    covers everything, a channel name itself, and a pattern every channel
    under it and every pattern it contains (``news.*`` covers ``news.eu``,
    ``news.eu.*`` and ``news.*``, not ``news`` nor ``newsroom``).  A
    channel name never covers a pattern.
    """
    pattern = name.endswith(".*")
    # What a claim pattern's prefix must start: "news." for news.eu and for
    # news.eu.*, and news.* itself.
    subject = name[:-1] if pattern else name
    for claim in claims:
        if claim == ALL:
            return True
        if claim.endswith(".*"):
            if subject.startswith(claim[:-1]):
                return True
        elif not pattern and claim == name:
            return True
    return False


def _claims(value: Iterable[str], what: str) -> tuple[str, ...]:
    return check_claims(list(value) if not isinstance(value, str) else value, what)


def _subscribe_claims(value: Iterable[str]) -> tuple[str, ...]:
    return _claims(value, "subscribe")


def _publish_claims(value: Iterable[str]) -> tuple[str, ...]:
    return _claims(value, "publish")


def _presence_claims(value: Iterable[str]) -> tuple[str, ...]:
    return _claims(value, "presence")


@frozen
class Grant:
    """
    What one credential allows, for as long as it lasts.

    :ivar identity: Who holds it (a token's ``sub``), or ``None``.
    :ivar subscribe: The channels and ``.*`` patterns it may read
        (``"*"``: every channel).
    :ivar publish: The channels and patterns it may publish on.
    :ivar presence: The channels and patterns whose presence it may read
        where the hub asks for a claim of its own (``presence_claim``);
        elsewhere, reading presence goes with reading the channel.
    :ivar expires: When it ends, in POSIX seconds on the hub's clock, or
        ``None``: the streams opened with it end then.
    """

    identity: str | None = None
    subscribe: tuple[str, ...] = field(default=(), converter=_subscribe_claims)
    publish: tuple[str, ...] = field(default=(), converter=_publish_claims)
    expires: float | None = None
    presence: tuple[str, ...] = field(default=(), converter=_presence_claims)

    def __attrs_post_init__(self) -> None:
        if self.identity is not None and not isinstance(self.identity, str):
            raise ValueError(
                f"identity must be a str, not {type(self.identity).__name__}"
            )
        expires = self.expires
        if expires is not None and (
            isinstance(expires, bool)
            or not isinstance(expires, (int, float))
            or expires != expires
        ):
            raise ValueError(f"expires must be a number of seconds, not {expires!r}")

    def allows(self, action: Action, name: str) -> bool:
        """Whether it allows ``action`` on ``name`` (a channel or pattern)."""
        if action == SUBSCRIBE:
            return covers(self.subscribe, name)
        if action == PUBLISH:
            return covers(self.publish, name)
        return covers(self.presence, name)


#: What everyone gets where nothing guards subscribing.
_OPEN = Grant(subscribe=(ALL,), presence=(ALL,))
#: What a request gets for public channels, without credentials.
_ANONYMOUS = Grant()
#: What the static tokens allow.
_EVERY_SUBSCRIBE = Grant(subscribe=(ALL,), presence=(ALL,))
_EVERY_PUBLISH = Grant(publish=(ALL,))


class Refused(Exception):
    """
    A request is not allowed: answered with ``code`` and ``{"error":
    reason}``.

    :ivar code: ``401`` (no or bad credentials), ``403`` (credentials that
        do not cover what was asked) or ``503`` (the application's hook is
        down: nothing is allowed while it is).
    :ivar reason: What the client is told; never holds a token.
    :ivar error: The RFC 6750 error code of a ``401``'s challenge
        (``"invalid_token"``, ``"invalid_request"``), or ``None`` when no
        credentials came at all.
    :ivar retry: For a ``503``: seconds after which to try again.
    """

    def __init__(
        self,
        code: int,
        reason: str,
        *,
        error: str | None = None,
        retry: float | None = None,
    ) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.error = error
        self.retry = retry

    def __str__(self) -> str:
        return self.reason

    @property
    def challenge(self) -> bytes | None:
        """The ``WWW-Authenticate`` value of a ``401``, else ``None``."""
        if self.code != 401:
            return None
        if self.error is None:
            return f'Bearer realm="{REALM}"'.encode("ascii")
        return f'Bearer realm="{REALM}", error="{self.error}"'.encode("ascii")


def _invalid(reason: str) -> Refused:
    return Refused(401, reason, error="invalid_token")


@frozen
class Credentials:
    """
    The token a request carries, and where it found it.

    :ivar token: The token, or ``None`` when there is none.
    :ivar carrier: ``"header"`` (``Authorization: Bearer``), ``"cookie"``
        (``sse_token``), ``"query"`` (``access_token``), or ``None``.
    """

    token: bytes | None = None
    carrier: str | None = None


_NONE = Credentials()


def credentials(request: Any, query: bool = True) -> Credentials:
    """
    The token ``request`` carries, looked for in this order: the
    ``Authorization: Bearer`` header, the ``sse_token`` cookie, the
    ``access_token`` query parameter (unless ``query`` is false: a
    publisher can always send a header, and a publish's URL must not
    carry a secret into proxies' logs).

    :raises Refused: ``401`` for an ``Authorization`` header of another
        scheme (``Basic``), an empty ``Bearer``, or a token over
        :data:`MAX_TOKEN_BYTES`, without reading it further.
    """
    header = request.getHeader(b"Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            raise Refused(
                401,
                "the Authorization header must carry a Bearer token",
                error="invalid_request",
            )
        return Credentials(_bounded(token.strip(), "the Bearer token"), "header")
    cookie = request.getCookie(TOKEN_COOKIE)
    if cookie is not None:
        return Credentials(_bounded(cookie, "the sse_token cookie"), "cookie")
    # No args before Twisted has parsed the request line's query.
    values = getattr(request, "args", {}).get(TOKEN_PARAMETER) if query else None
    if values:
        return Credentials(_bounded(values[0], "the access_token parameter"), "query")
    return _NONE


def _bounded(token: bytes, what: str) -> bytes:
    if not token:
        raise Refused(401, f"{what} is empty", error="invalid_request")
    if len(token) > MAX_TOKEN_BYTES:
        raise _invalid(f"{what} is longer than {MAX_TOKEN_BYTES} bytes")
    return bytes(token)


def identity_hash(identity: str) -> str:
    """
    How an identity appears in logs: a short hash, the same for the same
    identity, which names nobody.
    """
    return hashlib.blake2b(identity.encode("utf-8"), digest_size=6).hexdigest()


@frozen
class AuthRequest:
    """
    What an application's hook is asked about: who wants to do what.

    :ivar action: ``"subscribe"``, ``"publish"`` or ``"presence"`` (reading
        who is on the channels).
    :ivar method: The HTTP method (``"GET"``, ``"POST"``).
    :ivar path: The request's path, without its query (which may hold a
        token).
    :ivar channels: The channels and patterns asked for.
    :ivar credentials: The token found, if any (in the header, the
        ``sse_token`` cookie or ``access_token``).
    :ivar request: The :class:`~twisted.web.server.Request` itself, for
        its cookies and headers.
    :ivar presence: The channels whose presence a subscription reads too
        (``presence=1``), where the hub asks for a presence claim: a grant
        must cover them in its ``presence``.
    """

    action: Action
    method: str
    path: str
    channels: tuple[str, ...]
    credentials: Credentials
    request: Any = field(repr=False)
    presence: tuple[str, ...] = ()


#: An application's decision: a :class:`Grant` (whose claims for the
#: action must cover the channels asked for), or ``None`` to refuse
#: (``403``), or a Deferred of either; it may raise (or fail with)
#: :class:`Refused` to answer a ``401`` or ``403`` of its own.
AuthHook = Callable[[AuthRequest], "Grant | Deferred[Grant | None] | None"]


class TokenVerifier(Protocol):
    """
    What checks signed tokens for :class:`Access`:
    :class:`~twisted_sse.JWTVerifier`, or one of the application's own.
    """

    def verify(self, token: bytes) -> Grant:
        """
        The grant of a valid ``token``.

        :raises Refused: ``401`` with ``error="invalid_token"`` for any
            other.
        """


def _looks_like_jwt(token: bytes) -> bool:
    # A JWS in compact form: three base64url parts, two dots.
    return token.count(b".") == 2


class Access:
    """
    Decides, once per request, whether it may subscribe to or publish on
    the channels it names, and answers with a :class:`Grant` or
    :class:`Refused`.

    Where nothing guards subscribing (no verifier, static token or hook),
    everyone may subscribe to everything, whatever they send.  Otherwise:

    - the public channels and patterns can be read by anyone, without a
      token (publishing on them still needs one);
    - a token is looked for (the ``Authorization: Bearer`` header, the
      ``sse_token`` cookie, the ``access_token`` query parameter): a static
      token allows its action on every channel; a JWT is checked by the
      verifier; any other credentials, or none, go to the application's
      hook when there is one;
    - no credentials: ``401`` with a challenge; bad ones: ``401`` with
      ``error="invalid_token"``; credentials that do not cover every
      channel and pattern named: ``403``.

    Reading who is on a channel (``PRESENCE``) is decided as reading
    the channel is, unless ``presence_claim``: then it needs credentials
    whose ``Grant.presence`` covers the channel (a JWT's
    ``sse.presence`` claim), public channels included; the static
    subscribe token still reads every channel's presence.

    :param verifier: Checks signed tokens (see :class:`~twisted_sse.JWTVerifier`).
    :param public: Channels and ``.*`` patterns anyone may read.
    :param hook: The application's decision for requests without a JWT.
    :param subscribe_token: A static token that may read every channel.
    :param publish_token: A static token that may publish on every
        channel; without it, a verifier or a hook, publishing over HTTP is
        off.
    :param presence_claim: Whether reading presence needs a presence
        claim of its own; only with a verifier or a hook.
    """

    def __init__(
        self,
        *,
        verifier: TokenVerifier | None = None,
        public: Iterable[str] = (),
        hook: AuthHook | None = None,
        subscribe_token: str | None = None,
        publish_token: str | None = None,
        presence_claim: bool = False,
    ) -> None:
        if presence_claim and verifier is None and hook is None:
            raise ValueError(
                "presence_claim needs a JWT verifier or an auth hook to grant it"
            )
        for name, token in (
            ("subscribe_token", subscribe_token),
            ("publish_token", publish_token),
        ):
            if token is not None and not token:
                raise ValueError(f"{name} must not be empty (use None to disable)")
        self.verifier = verifier
        self.public = _claims(public, "public")
        self.hook = hook
        self.subscribe_token = (
            subscribe_token.encode("utf-8") if subscribe_token is not None else None
        )
        self.publish_token = (
            publish_token.encode("utf-8") if publish_token is not None else None
        )
        self.presence_claim = presence_claim

    @property
    def guards_subscribing(self) -> bool:
        """Whether subscribing needs anything at all."""
        return (
            self.verifier is not None
            or self.hook is not None
            or self.subscribe_token is not None
        )

    @property
    def takes_publishes(self) -> bool:
        """Whether anything can allow publishing over HTTP."""
        return (
            self.verifier is not None
            or self.hook is not None
            or self.publish_token is not None
        )

    def decide(
        self,
        request: Any,
        action: Action,
        names: Sequence[str],
        presence: Sequence[str] = (),
    ) -> Grant | Deferred[Grant]:
        """
        The decision on ``request``, which asks to ``action`` on ``names``
        (channels and patterns): a :class:`Grant` now, or a Deferred of
        one when the application's hook is asked.

        :param presence: Channels whose presence the request reads too (a
            stream with ``presence=1``): the grant must cover them for
            reading presence as well.
        :raises Refused: (or a Deferred failing with it) when it may not.
        """
        decision = self._decide(request, action, names, True, presence)
        assert decision is not None
        return decision

    def decide_now(
        self,
        request: Any,
        action: Action,
        names: Sequence[str],
        presence: Sequence[str] = (),
    ) -> Grant | None:
        """
        The decision :meth:`decide` would take, if it can be taken without
        asking the application's hook; ``None`` if it cannot.

        :raises Refused: when it may not.
        """
        decision = self._decide(request, action, names, False, presence)
        assert not isinstance(decision, Deferred)
        return decision

    def _decide(
        self,
        request: Any,
        action: Action,
        names: Sequence[str],
        ask: bool,
        presence: Sequence[str] = (),
    ) -> Grant | Deferred[Grant] | None:
        reading = action != PUBLISH
        if reading:
            if not self.guards_subscribing:
                return _OPEN
        elif not self.takes_publishes:
            raise Refused(
                403,
                "publishing over HTTP is disabled: start the server with "
                "--publish-token or a JWT key",
            )
        found = credentials(request, query=reading)
        token = found.token
        if token is None:
            # Publishing is never public: no name is, not even none.
            public = reading and self._all_public(action, names)
            if public and self._all_public(PRESENCE, presence):
                return _ANONYMOUS
            if self.hook is None:
                wanted = PRESENCE if public else action
                raise Refused(401, _wanted(wanted))
            if not ask:
                return None
            return self._ask(request, action, names, found, presence)
        static = self.subscribe_token if reading else self.publish_token
        if static is not None and hmac.compare_digest(token, static):
            return _EVERY_SUBSCRIBE if reading else _EVERY_PUBLISH
        if self.verifier is not None and _looks_like_jwt(token):
            grant: Grant = self.verifier.verify(token)
            self.check(grant, action, names)
            self.check(grant, PRESENCE, presence)
            return grant
        if self.hook is not None:
            if not ask:
                return None
            return self._ask(request, action, names, found, presence)
        raise _invalid(_BAD_TOKEN if reading else _NEEDS_BEARER)

    def check(self, grant: Grant, action: Action, names: Sequence[str]) -> None:
        """
        Whether ``grant`` (with the public channels, for reading) covers
        every one of ``names``.

        :raises Refused: ``403`` naming the first one it does not.
        """
        public = self._public(action)
        claim: Action = action
        if action == PRESENCE and not self.presence_claim:
            claim = SUBSCRIBE
        for name in names:
            if not grant.allows(claim, name) and not covers(public, name):
                raise Refused(
                    403, f"the credentials do not allow to {_VERBS[action]} {name!r}"
                )

    def _all_public(self, action: Action, names: Sequence[str]) -> bool:
        """Whether anyone may do ``action`` on all of ``names``."""
        if not names:
            return True
        public = self._public(action)
        return bool(public) and all(covers(public, name) for name in names)

    def _public(self, action: Action) -> tuple[str, ...]:
        """What anyone may do ``action`` on without credentials."""
        if action == SUBSCRIBE or (action == PRESENCE and not self.presence_claim):
            return self.public
        return ()

    def _ask(
        self,
        request: Any,
        action: Action,
        names: Sequence[str],
        found: Credentials,
        presence: Sequence[str] = (),
    ) -> Deferred[Grant]:
        hook = self.hook
        assert hook is not None
        if action == PRESENCE and not self.presence_claim:
            # Reading who is on a channel goes with reading it.
            action = SUBSCRIBE
        asked = AuthRequest(
            action=action,
            method=request.method.decode("latin-1"),
            path=request.path.decode("utf-8", "replace"),
            channels=tuple(names),
            credentials=found,
            request=request,
            presence=tuple(presence) if self.presence_claim else (),
        )

        def decided(grant: Grant | None) -> Grant:
            if grant is None:
                raise Refused(
                    403, f"the application does not allow to {_VERBS[action]} these"
                )
            if not isinstance(grant, Grant):
                raise TypeError(
                    f"an auth hook must answer a Grant or None, "
                    f"not {type(grant).__name__}"
                )
            self.check(grant, action, names)
            self.check(grant, PRESENCE, presence)
            return grant

        asking: Deferred[Grant | None] = maybeDeferred(hook, asked)  # type: ignore[call-overload]
        return asking.addCallback(decided)


_VERBS: dict[str, str] = {
    SUBSCRIBE: "subscribe to",
    PUBLISH: "publish on",
    PRESENCE: "read the presence on",
}
_BAD_TOKEN = "the token is not valid"
_NEEDS_BEARER = "a valid Authorization: Bearer token is required"


def _wanted(action: Action) -> str:
    if action == PUBLISH:
        return _NEEDS_BEARER
    if action == PRESENCE:
        return (
            "reading the presence here needs a token: an Authorization: "
            "Bearer header, the sse_token cookie or the access_token parameter"
        )
    return (
        "subscribing here needs a token: an Authorization: Bearer header, the "
        "sse_token cookie or the access_token parameter"
    )


#: The grants of requests allowed with an identity or an expiry, for the
#: streams they open (see :func:`remember`).
_GRANTS: WeakKeyDictionary[Any, Grant] = WeakKeyDictionary()


def remember(request: Any, grant: Grant) -> None:
    """
    Keep what ``request`` was allowed with, for the stream it opens: its
    identity (in the logs, hashed) and its expiry (when the stream ends).
    """
    if grant.identity is not None or grant.expires is not None:
        _GRANTS[request] = grant


def grant_of(request: Any) -> Grant | None:
    """What ``request`` was allowed with (see :func:`remember`), if kept."""
    return _GRANTS.get(request)
