"""
The application's hook over HTTP (``twistd sse --auth-url URL``): a request
without a JWT is decided by ``POST``-ing what it asks, with its cookies and
``Authorization`` header, to the application, which answers with a grant
(``2xx``), ``401`` or ``403``.

Anything else (another status, no answer in time, an answer that cannot be
read) refuses with ``503``: nothing is allowed while the application cannot
say.  Answers are remembered for a few seconds, keyed by a hash of what was
asked and the credentials sent, and identical asks in flight share one
``POST``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import (
    Deferred,
    TimeoutError,
    fail,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss

from ._auth import PRESENCE, PUBLISH, AuthRequest, Grant, Refused, check_claims
from ._stream import client_ip

__all__ = [
    "DEFAULT_HOOK_CACHE",
    "DEFAULT_HOOK_CACHE_SIZE",
    "DEFAULT_HOOK_RETRY",
    "DEFAULT_HOOK_TIMEOUT",
    "MAX_HOOK_BODY",
    "HTTPAuthHook",
]

_log = Logger()

#: Seconds the application has to answer.
DEFAULT_HOOK_TIMEOUT = 5.0
#: Seconds an answer is remembered.
DEFAULT_HOOK_CACHE = 5.0
#: How many answers are remembered.
DEFAULT_HOOK_CACHE_SIZE = 1024
#: The ``Retry-After`` (seconds) of a ``503`` while the application is down.
DEFAULT_HOOK_RETRY = 5.0
#: The most bytes of an answer read: a longer one is a failure.
MAX_HOOK_BODY = 64 * 1024

#: The longest reason taken from the application's ``{"error": ...}``.
_MAX_REASON = 200
_UNAVAILABLE = "the authorization service is unavailable"
_EXPIRED = "the application's grant has expired"
_UNAUTHORIZED = "the application refused the credentials"
_FORBIDDEN = "the application does not allow it"

#: An answer as remembered and shared: a grant or a refusal.
_Answer = Grant | Refused


class _BadAnswer(Exception):
    """The application answered something that is not a decision."""


class _TooLarge(Exception):
    """The application's answer is longer than :data:`MAX_HOOK_BODY`."""


class _BodyReader(Protocol):
    """
    Reads a response's body up to ``limit`` bytes into :attr:`done`, and
    drops the connection when there is more or when :attr:`done` is
    cancelled (treq's ``collect`` cannot be cancelled, so a hook that sent
    its headers and then stalled would keep its connection).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._parts: list[bytes] = []
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop())

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._parts.clear()
            self._stop()
            self.done.errback(_TooLarge())
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


def _checked_url(url: str) -> str:
    """
    ``url`` as it may be logged: without its query or fragment.

    :raises ValueError: naming ``url`` (never echoing it) unless it is an
        absolute http:// or https:// URL without a user or password:
        Twisted's agent would take them for the host name, and send them
        in the ``Host`` header.
    """
    wrong = ValueError(
        "url must be an http:// or https:// URL, without a user or password"
    )
    if not isinstance(url, str) or any(c.isspace() or ord(c) < 32 for c in url):
        raise wrong
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a port that is not a number raises)
    except ValueError:
        raise wrong from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise wrong
    if "@" in parts.netloc:
        raise wrong
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _number(value: object) -> bool:
    """Whether ``value`` is a finite number (JSON's ``true`` is not one)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _copy(refused: Refused) -> Refused:
    # A failure passed to several waiters would be one object, its
    # traceback growing with each: each gets its own.
    return Refused(
        refused.code, refused.reason, error=refused.error, retry=refused.retry
    )


def _why(failure: Failure) -> str:
    """What to log of a failed exchange: never its text (it may quote)."""
    if failure.check(TimeoutError):
        return "timed out"
    if failure.check(_TooLarge):
        return f"the answer is longer than {MAX_HOOK_BODY} bytes"
    if failure.check(_BadAnswer):
        return f"bad answer: {failure.value}"
    name = type(failure.value).__name__
    # ResponseFailed and its kin carry the failures that caused them.
    inner = getattr(failure.value, "reasons", None)
    if isinstance(inner, list) and inner:
        causes = ", ".join(type(getattr(f, "value", f)).__name__ for f in inner[:3])
        return f"{name}({causes})"
    return name


class HTTPAuthHook:
    """
    An auth hook (see :data:`~twisted_sse.AuthHook`) that asks the
    application at ``url``, like nchan's ``nchan_authorize_request``.

    It ``POST``-s ``{"action", "method", "path", "channels"}`` as JSON, with
    the request's ``Cookie`` and ``Authorization`` headers (a token from the
    query string goes as ``Authorization: Bearer``) and
    ``X-Forwarded-For``, ``X-Forwarded-Method`` and ``X-Forwarded-Uri``
    (the path, never the query).  A ``2xx`` grants: an empty body the
    channels asked for, or a JSON object's ``"sub"`` (identity),
    ``"channels"`` (the claims, which must cover what was asked) and
    ``"exp"`` (POSIX seconds).  The action is ``"subscribe"``,
    ``"publish"``, or ``"presence"`` where the hub asks for a presence
    claim of its own; there, a subscription that also reads presence
    (``presence=1``) names those channels in ``"presence"``, and a ``2xx``
    grants both.  A ``401`` or ``403`` refuses, with the
    answer's ``"error"`` as the reason when it has one.  Anything else is a
    ``503``.

    :param url: The application's endpoint, http:// or https://.
    :param clock: Times the answers and the cache; when ``client`` is
        ``None`` it must be a real reactor, which the default client
        connects with.
    :param client: Anything with treq's ``post(url, data=, headers=)``
        (a :class:`treq.client.HTTPClient`, :class:`treq.testing.StubTreq`);
        it should keep no cookies, or one that the application sets could
        go out with another client's ask.  ``None``: an
        :class:`~treq.client.HTTPClient` over a persistent connection
        pool, keeping no cookies (see :meth:`close`).
    :param timeout: Seconds the application has to answer in full.
    :param cache_ttl: Seconds a grant, ``401`` or ``403`` is remembered
        (a grant no longer than its ``exp``); ``0``: never.
    :param cache_size: How many answers are remembered, and how many
        different asks share a ``POST`` while in flight.
    :param retry: The ``Retry-After`` of the ``503`` while it is down.
    :raises ValueError: naming the parameter that is out of range.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: IReactorTime,
        client: Any = None,
        timeout: float = DEFAULT_HOOK_TIMEOUT,
        cache_ttl: float = DEFAULT_HOOK_CACHE,
        cache_size: int = DEFAULT_HOOK_CACHE_SIZE,
        retry: float = DEFAULT_HOOK_RETRY,
    ) -> None:
        self._shown = _checked_url(url)
        for name, value, low, equal in (
            ("timeout", timeout, 0, False),
            ("cache_ttl", cache_ttl, 0, True),
            ("retry", retry, 0, True),
        ):
            if not _number(value) or value < low or (value == low and not equal):
                relation = "at least" if equal else "more than"
                raise ValueError(f"{name} must be a number {relation} {low}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int):
            raise ValueError("cache_size must be a whole number")
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.url = url
        self.clock = clock
        self.timeout = float(timeout)
        self.cache_ttl = float(cache_ttl)
        self.cache_size = cache_size
        self.retry = float(retry)
        self._pool: HTTPConnectionPool | None = None
        if client is None:
            self._pool = HTTPConnectionPool(clock, persistent=True)
            client = _default_client(Agent(clock, pool=self._pool))
        self.client = client
        #: key -> (remembered until, answer), oldest first.
        self._cache: OrderedDict[bytes, tuple[float, _Answer]] = OrderedDict()
        #: key -> the Deferreds waiting for the POST in flight.
        self._flight: dict[bytes, list[Deferred[Grant | None]]] = {}

    def close(self) -> Deferred[None]:
        """
        Close the connections the default client keeps open (nothing to
        do for a client given).

        :returns: A Deferred that fires once they are closed.
        """
        if self._pool is None:
            return succeed(None)
        closing: Deferred[None] = self._pool.closeCachedConnections()
        return closing

    def __call__(self, asked: AuthRequest) -> Deferred[Grant | None]:
        """
        The application's answer to ``asked``: a Deferred of a
        :class:`~twisted_sse._auth.Grant`, or failing with
        :class:`~twisted_sse._auth.Refused` (``401``, ``403``, ``503``).
        """
        headers, key = self._outgoing(asked)
        cached = self._cache.get(key)
        if cached is not None:
            until, answer = cached
            if until > self.clock.seconds():
                return self._deliver(answer)
            del self._cache[key]
        waiting = self._flight.get(key)
        if waiting is not None:
            return _wait(waiting)
        waiting = []
        # Past cache_size different asks in flight, the next go out alone:
        # the map stays bounded, each ask still has its own answer.
        if len(self._flight) < self.cache_size:
            self._flight[key] = waiting
        waiter = _wait(waiting)
        self._exchange(asked, headers).addCallback(self._settle, key, waiting)
        return waiter

    def _outgoing(self, asked: AuthRequest) -> tuple[dict[bytes, list[bytes]], bytes]:
        """The headers to send for ``asked``, and its key in the cache."""
        request = asked.request
        cookies = request.requestHeaders.getRawHeaders(b"cookie") or []
        cookie = b"; ".join(cookies) if cookies else None
        authorization = request.getHeader(b"authorization")
        token = asked.credentials.token
        query = token if asked.credentials.carrier == "query" else None
        headers: dict[bytes, list[bytes]] = {
            b"Content-Type": [b"application/json"],
            b"Accept": [b"application/json"],
            b"X-Forwarded-For": [client_ip(request).encode("utf-8", "replace")],
            b"X-Forwarded-Method": [asked.method.encode("latin-1", "replace")],
            b"X-Forwarded-Uri": [
                asked.path.partition("?")[0].encode("utf-8", "replace")
            ],
        }
        if cookie is not None:
            headers[b"Cookie"] = [cookie]
        if authorization is not None:
            headers[b"Authorization"] = [authorization]
        elif query is not None:
            headers[b"Authorization"] = [b"Bearer " + query]
        key = hashlib.blake2b(digest_size=16)
        for part in (
            asked.action.encode("ascii"),
            *(channel.encode("utf-8") for channel in asked.channels),
            b"presence",
            *(channel.encode("utf-8") for channel in asked.presence),
        ):
            key.update(b"%d:" % len(part) + part)
        for secret in (cookie, authorization, query):
            key.update(b"-" if secret is None else b"%d:" % len(secret) + secret)
        return headers, key.digest()

    def _deliver(self, answer: _Answer) -> Deferred[Grant | None]:
        """A remembered answer, a refusal as a new :class:`Refused`."""
        if isinstance(answer, Refused):
            return fail(_copy(answer))
        return succeed(answer)

    def _settle(
        self,
        answer: _Answer,
        key: bytes,
        waiting: list[Deferred[Grant | None]],
    ) -> None:
        """Remember ``answer`` if it may be, and hand it to every waiter."""
        if self._flight.get(key) is waiting:
            del self._flight[key]
        until = self._remember_until(answer)
        if until is not None:
            self._cache[key] = (until, answer)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        for waiter in list(waiting):
            if isinstance(answer, Refused):
                waiter.errback(_copy(answer))
            else:
                waiter.callback(answer)
        waiting.clear()

    def _remember_until(self, answer: _Answer) -> float | None:
        """Until when ``answer`` may be reused, or ``None``: not at all."""
        if self.cache_ttl == 0:
            return None
        now = self.clock.seconds()
        if isinstance(answer, Refused):
            if answer.code not in (401, 403) or answer.reason == _EXPIRED:
                return None
            return now + self.cache_ttl
        until = now + self.cache_ttl
        if answer.expires is not None:
            until = min(until, answer.expires)
        return until if until > now else None

    def _exchange(
        self, asked: AuthRequest, headers: dict[bytes, list[bytes]]
    ) -> Deferred[_Answer]:
        """One ``POST``: its answer, which never fails (a ``503`` instead)."""
        question: dict[str, object] = {
            "action": asked.action,
            "method": asked.method,
            "path": asked.path.partition("?")[0],
            "channels": list(asked.channels),
        }
        if asked.presence:
            question["presence"] = list(asked.presence)
        body = json.dumps(question, separators=(",", ":")).encode("utf-8")
        try:
            # Redirects are not followed: the credentials would go along.
            posting: Deferred[Any] = self.client.post(
                self.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                unbuffered=True,
            )
        except Exception:
            posting = fail()
        posting.addCallback(self._read)
        # Cancelling the agent's request fails with ResponseNeverReceived,
        # not CancelledError: say it timed out whatever the cancel left.
        posting.addTimeout(self.timeout, self.clock, _timed_out)
        answering: Deferred[_Answer] = posting.addCallback(self._decide, asked)
        return answering.addErrback(self._unavailable)

    def _read(self, response: Any) -> Deferred[tuple[int, bytes]]:
        """The status and body of ``response``, the body read in full."""
        reader = _BodyReader(MAX_HOOK_BODY)
        response.deliverBody(reader)
        code: int = response.code
        return reader.done.addCallback(lambda body: (code, body))

    def _decide(self, answered: tuple[int, bytes], asked: AuthRequest) -> _Answer:
        """The decision in an answer (``code``, ``body``)."""
        code, body = answered
        if code in (401, 403):
            reason = _reason(body)
            if code == 401:
                error = "invalid_token" if asked.credentials.token is not None else None
                return Refused(401, reason or _UNAUTHORIZED, error=error)
            return Refused(403, reason or _FORBIDDEN)
        if not 200 <= code < 300:
            raise _BadAnswer(f"status {code}")
        return self._grant(body, asked)

    def _grant(self, body: bytes, asked: AuthRequest) -> _Answer:
        """The grant of a ``2xx``'s ``body``."""
        channels: tuple[str, ...] = asked.channels
        identity: str | None = None
        expires: float | None = None
        if body.strip():
            try:
                answer = json.loads(body)
            except (ValueError, RecursionError):
                raise _BadAnswer("not JSON") from None
            if not isinstance(answer, dict):
                raise _BadAnswer(f"a JSON {type(answer).__name__}, not an object")
            identity = answer.get("sub")
            if identity is not None and not isinstance(identity, str):
                raise _BadAnswer("sub must be a string or null")
            if "channels" in answer:
                try:
                    channels = check_claims(answer["channels"], "channels")
                except ValueError as e:
                    raise _BadAnswer(str(e)[:200]) from None
            exp = answer.get("exp")
            if exp is not None:
                if not _number(exp):
                    raise _BadAnswer("exp must be a number of POSIX seconds")
                expires = float(exp)
                if expires <= self.clock.seconds():
                    return Refused(401, _EXPIRED, error="invalid_token")
        if asked.action == PUBLISH:
            return Grant(identity=identity, publish=channels, expires=expires)
        if asked.action == PRESENCE:
            return Grant(identity=identity, presence=channels, expires=expires)
        return Grant(
            identity=identity,
            subscribe=channels,
            # A subscription that also reads presence (presence=1) was asked
            # about both: the answer's channels grant both.
            presence=channels if asked.presence else (),
            expires=expires,
        )

    def _unavailable(self, failure: Failure) -> Refused:
        _log.warn(
            "The auth hook at {url} cannot decide: {reason}",
            url=self._shown,
            reason=_why(failure),
        )
        return Refused(503, _UNAVAILABLE, retry=self.retry)


def _timed_out(result: object, timeout: float) -> Failure:
    """The failure of an exchange cancelled by its timeout."""
    return Failure(TimeoutError(f"no answer within {timeout} seconds"))


def _default_client(agent: Agent) -> Any:
    """
    A treq client over ``agent`` whose cookie jar keeps nothing: a cookie
    the application sets while answering for one client must never go out
    with another's ask.  (treq is imported here, when it is used.)
    """
    from http.cookiejar import CookieJar

    from treq.client import HTTPClient

    class NoCookies(CookieJar):
        def extract_cookies(self, response: Any, request: Any) -> None:
            return None

        def set_cookie(self, cookie: Any) -> None:
            return None

    # A plain CookieJar: treq before 24.9 has no IndexableCookieJar, and
    # every version takes one.
    return HTTPClient(agent, cookiejar=NoCookies())  # type: ignore[arg-type]


def _wait(waiting: list[Deferred[Grant | None]]) -> Deferred[Grant | None]:
    """A new Deferred among ``waiting``, which leaves it when cancelled."""

    def cancel(waiter: Deferred[Grant | None]) -> None:
        if waiter in waiting:
            waiting.remove(waiter)

    waiter: Deferred[Grant | None] = Deferred(cancel)
    waiting.append(waiter)
    return waiter


def _reason(body: bytes) -> str | None:
    """The ``"error"`` string of a refusal's JSON body, if it has one."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return None
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, str) and error:
        return error[:_MAX_REASON]
    return None
