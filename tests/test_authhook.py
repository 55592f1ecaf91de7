"""
The application's hook over HTTP (:class:`twisted_sse._authhook.HTTPAuthHook`),
driven in memory: treq's ``StubTreq`` over a small application that records
what it is sent and answers what the test says, on a ``Clock``.
"""

from __future__ import annotations

import json
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyRequest

from twisted_sse._auth import (
    Access,
    Action,
    AuthRequest,
    Grant,
    Refused,
    credentials,
)
from twisted_sse._authhook import (
    DEFAULT_HOOK_CACHE,
    DEFAULT_HOOK_CACHE_SIZE,
    DEFAULT_HOOK_RETRY,
    DEFAULT_HOOK_TIMEOUT,
    MAX_HOOK_BODY,
    HTTPAuthHook,
)

from ._redis_fakes import Logs as AllLogs

URL = "http://app.example/sse-auth"
NOW = 1_700_000_000.0
SECRET = "cookie-s3cret"
TOKEN = "opaque-t0ken"


class Incoming(DummyRequest):
    """
    A request to the hub as ``Access`` reads it: its path, query, headers,
    cookies and client address.
    """

    def __init__(
        self,
        path: bytes = b"/subscribe",
        query: bytes = b"",
        headers: dict[bytes, bytes] | None = None,
        method: bytes = b"GET",
        client: str = "203.0.113.9",
    ) -> None:
        super().__init__([path.lstrip(b"/")])
        self.method = method
        self.path = path
        self.uri = path + (b"?" + query if query else b"")
        self.args = parse_qs(query, keep_blank_values=True)
        self.client = IPv4Address("TCP", client, 50123)
        for name, value in (headers or {}).items():
            self.requestHeaders.addRawHeader(name, value)

    def getCookie(self, key: bytes) -> bytes | None:
        jar: SimpleCookie = SimpleCookie()
        for raw in self.requestHeaders.getRawHeaders(b"cookie") or []:
            jar.load(raw.decode("latin-1"))
        morsel = jar.get(key.decode("latin-1"))
        return None if morsel is None else morsel.value.encode("latin-1")


def asking(
    request: Incoming | None = None,
    action: Action = "subscribe",
    channels: tuple[str, ...] = ("a", "news.*"),
    presence: tuple[str, ...] = (),
) -> AuthRequest:
    """What ``Access`` would ask the hook about ``request``."""
    request = Incoming() if request is None else request
    return AuthRequest(
        action=action,
        method=request.method.decode("ascii"),
        path=request.path.decode("ascii"),
        channels=channels,
        credentials=credentials(request),
        request=request,
        presence=presence,
    )


class Got:
    """One POST the application received."""

    def __init__(self, request: Request, body: bytes) -> None:
        self.request = request
        self.uri: bytes = request.uri
        self.body = json.loads(body)
        self.ended: list[Failure | None] = []
        request.notifyFinish().addBoth(self.ended.append)

    def header(self, name: str) -> str | None:
        values = self.request.requestHeaders.getRawHeaders(name)
        return None if values is None else values[-1]


class Application(Resource):
    """
    The application's auth endpoint: records each POST, answers ``code``
    and ``body``, or holds the request when ``hold`` is set.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.got: list[Got] = []
        self.code = 200
        self.body = b""
        self.hold = False
        self.set_cookie: bytes | None = None
        self.location: bytes | None = None

    def answer(self, code: int, body: object = b"") -> None:
        """Answer ``code`` from now on, with ``body`` (JSON unless bytes)."""
        self.code = code
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        self.got.append(Got(request, request.content.read()))
        if self.set_cookie is not None:
            request.setHeader(b"Set-Cookie", self.set_cookie)
        if self.location is not None:
            request.setHeader(b"Location", self.location)
        if self.hold:
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        return self.body


class Logs(AllLogs):
    """The hook's log events emitted while a test runs."""

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == "twisted_sse._authhook":
            self.events.append(event)

    def texts(self) -> list[str]:
        return [formatEvent(event) for event in self.events]


class HookCase(SynchronousTestCase):
    """An application served in memory, and a hook asking it on a clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.app = Application()
        self.stub = StubTreq(self.app)
        self.logs = Logs(self)

    def hook(self, url: str = URL, **options: Any) -> HTTPAuthHook:
        return HTTPAuthHook(url, clock=self.clock, client=self.stub, **options)

    def grant(self, decision: Deferred[Grant | None]) -> Grant | None:
        return self.successResultOf(decision)

    def refused(self, decision: Deferred[Any]) -> Refused:
        refused = self.failureResultOf(decision, Refused).value
        assert isinstance(refused, Refused)
        return refused

    def assertUnavailable(self, decision: Deferred[Any]) -> Refused:
        refused = self.refused(decision)
        self.assertEqual(
            (refused.code, refused.reason, refused.retry),
            (503, "the authorization service is unavailable", DEFAULT_HOOK_RETRY),
        )
        return refused


class RequestTests(HookCase):
    """What the application is sent."""

    def test_body(self) -> None:
        """The body is the action, method, path and channels, as JSON."""
        request = Incoming(b"/channels/a", method=b"POST")
        self.hook()(asking(request, "publish", ("a",)))
        (got,) = self.app.got
        self.assertEqual(
            got.body,
            {
                "action": "publish",
                "method": "POST",
                "path": "/channels/a",
                "channels": ["a"],
            },
        )
        self.assertEqual(got.uri, b"/sse-auth")
        self.assertEqual(got.header("Content-Type"), "application/json")
        self.assertEqual(got.header("Accept"), "application/json")

    def test_forwarded(self) -> None:
        """Cookie and Authorization go along, with the client, method and path."""
        request = Incoming(
            headers={
                b"Cookie": f"sid={SECRET}".encode(),
                b"Authorization": f"Bearer {TOKEN}".encode(),
                b"X-Other": b"not forwarded",
            },
        )
        self.hook()(asking(request))
        (got,) = self.app.got
        self.assertEqual(
            [
                got.header(name)
                for name in (
                    "Cookie",
                    "Authorization",
                    "X-Forwarded-For",
                    "X-Forwarded-Method",
                    "X-Forwarded-Uri",
                    "X-Other",
                )
            ],
            [
                f"sid={SECRET}",
                f"Bearer {TOKEN}",
                "203.0.113.9",
                "GET",
                "/subscribe",
                None,
            ],
        )

    def test_nothing_to_forward(self) -> None:
        """Without cookies or credentials, neither header is sent."""
        self.hook()(asking())
        (got,) = self.app.got
        self.assertEqual(
            (got.header("Cookie"), got.header("Authorization")), (None, None)
        )

    def test_query_never_sent(self) -> None:
        """The query string goes nowhere; a token in it goes as a Bearer."""
        request = Incoming(query=f"channel=a&access_token={TOKEN}".encode())
        self.hook()(asking(request))
        (got,) = self.app.got
        self.assertEqual(got.header("X-Forwarded-Uri"), "/subscribe")
        self.assertEqual(got.body["path"], "/subscribe")
        self.assertEqual(got.uri, b"/sse-auth")
        self.assertEqual(got.header("Authorization"), f"Bearer {TOKEN}")
        sent = json.dumps(got.body) + repr(got.request.requestHeaders)
        self.assertNotIn("access_token", sent)

    def test_cookie_token_not_bearer(self) -> None:
        """A token from the sse_token cookie goes in the Cookie header only."""
        request = Incoming(headers={b"Cookie": f"sse_token={TOKEN}".encode()})
        self.hook()(asking(request))
        (got,) = self.app.got
        self.assertEqual(got.header("Cookie"), f"sse_token={TOKEN}")
        self.assertIsNone(got.header("Authorization"))

    def test_url_query_kept(self) -> None:
        """The hook's own URL, query included, is the one POSTed to."""
        self.hook(URL + "?tenant=7")(asking())
        (got,) = self.app.got
        self.assertEqual(got.uri, b"/sse-auth?tenant=7")


class GrantTests(HookCase):
    """A 2xx grants."""

    def test_empty(self) -> None:
        """An empty 200 grants exactly the channels asked for, to nobody."""
        grant = self.grant(self.hook()(asking(channels=("a", "news.*"))))
        self.assertEqual(grant, Grant(subscribe=("a", "news.*")))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_presence(self) -> None:
        """
        A subscription that reads presence too names those channels in
        the body; the answer grants both, and is remembered apart from
        the same subscription without presence.
        """
        hook = self.hook()
        grant = self.grant(hook(asking(channels=("a",), presence=("a",))))
        self.assertEqual(grant, Grant(subscribe=("a",), presence=("a",)))
        self.assertEqual(self.app.got[0].body["presence"], ["a"])
        self.app.answer(200)
        plain = self.grant(hook(asking(channels=("a",))))
        self.assertEqual(plain, Grant(subscribe=("a",)))
        self.assertNotIn("presence", self.app.got[1].body)
        self.app.answer(200)
        read = self.grant(hook(asking(action="presence", channels=("a",))))
        self.assertEqual(read, Grant(presence=("a",)))
        self.assertEqual(self.app.got[2].body["action"], "presence")

    def test_empty_publish(self) -> None:
        """An empty 204 for a publish grants publishing on the channels."""
        self.app.answer(204)
        grant = self.grant(self.hook()(asking(action="publish", channels=("a",))))
        self.assertEqual(grant, Grant(publish=("a",)))

    def test_object(self) -> None:
        """sub, channels and exp become the identity, claims and expiry."""
        self.app.answer(
            200, {"sub": "ada", "channels": ["news.*", "b"], "exp": NOW + 60}
        )
        grant = self.grant(self.hook()(asking(channels=("news.eu",))))
        self.assertEqual(
            grant,
            Grant(identity="ada", subscribe=("news.*", "b"), expires=NOW + 60),
        )

    def test_object_without_keys(self) -> None:
        """An empty object, or nulls, grant the channels asked for."""
        for body in ({}, {"sub": None, "exp": None}):
            self.app.answer(201, body)
            grant = self.grant(self.hook(cache_ttl=0)(asking(channels=("a",))))
            self.assertEqual(grant, Grant(subscribe=("a",)))

    def test_content_type_ignored(self) -> None:
        """JSON is read whatever the Content-Type says."""
        self.app.answer(200, b'{"sub": "ada"}')
        grant = self.grant(self.hook()(asking(channels=("a",))))
        self.assertEqual(grant, Grant(identity="ada", subscribe=("a",)))

    def test_past_exp(self) -> None:
        """An exp already past refuses with 401 invalid_token."""
        for exp in (NOW, NOW - 1):
            self.app.answer(200, {"exp": exp})
            refused = self.refused(self.hook()(asking()))
            self.assertEqual(
                (refused.code, refused.reason, refused.error),
                (401, "the application's grant has expired", "invalid_token"),
            )


class RefusalTests(HookCase):
    """A 401 or 403 refuses, with the application's reason."""

    def test_401_with_credentials(self) -> None:
        """A 401 for a token is invalid_token, with the default reason."""
        self.app.answer(401)
        request = Incoming(headers={b"Authorization": f"Bearer {TOKEN}".encode()})
        refused = self.refused(self.hook()(asking(request)))
        self.assertEqual(
            (refused.code, refused.reason, refused.error),
            (401, "the application refused the credentials", "invalid_token"),
        )
        self.assertEqual(
            refused.challenge, b'Bearer realm="twisted_sse", error="invalid_token"'
        )

    def test_401_without_credentials(self) -> None:
        """A 401 with no token found (a login cookie) challenges plainly."""
        self.app.answer(401, {"error": "log in first"})
        request = Incoming(headers={b"Cookie": f"sid={SECRET}".encode()})
        refused = self.refused(self.hook()(asking(request)))
        self.assertEqual(
            (refused.code, refused.reason, refused.error),
            (401, "log in first", None),
        )
        self.assertEqual(refused.challenge, b'Bearer realm="twisted_sse"')

    def test_403_reason(self) -> None:
        """A 403's JSON error is the reason, cut to 200 characters."""
        self.app.answer(403, {"error": "x" * 500})
        refused = self.refused(self.hook()(asking()))
        self.assertEqual((refused.code, refused.reason), (403, "x" * 200))

    def test_403_default_reason(self) -> None:
        """A 403 whose body holds no error string has the default reason."""
        for body in (b"", b"nope", b'{"error": 5}', b'["error"]', b'{"error": ""}'):
            self.app.answer(403, body)
            refused = self.refused(self.hook(cache_ttl=0)(asking()))
            self.assertEqual(
                (refused.code, refused.reason, refused.error),
                (403, "the application does not allow it", None),
            )


class UnavailableTests(HookCase):
    """Anything but a decision is a 503, never a grant, and is logged."""

    def test_statuses(self) -> None:
        """Another status (5xx, 404, a redirect not followed) is a 503."""
        for code in (500, 502, 404, 302, 418):
            self.app.answer(code, {"sub": "ada"})
            self.assertUnavailable(self.hook()(asking()))
        self.assertEqual(len(self.app.got), 5)
        self.assertIn("status 302", self.logs.texts()[3])

    def test_redirect_not_followed(self) -> None:
        """A 307 is not followed: the credentials would go along."""
        self.app.answer(307)
        self.app.location = URL.encode()
        self.assertUnavailable(self.hook()(asking()))
        self.assertEqual(len(self.app.got), 1)

    def test_malformed(self) -> None:
        """A 2xx that is not a JSON object of the right types is a 503."""
        for body in (
            b"not json",
            b"\xff\xfe{",
            b"[1]",
            b'"a"',
            b"null",
            b'{"sub": 5}',
            b'{"channels": "a"}',
            b'{"channels": [1]}',
            b'{"channels": null}',
            b'{"channels": ["bad name!"]}',
            b'{"exp": "x"}',
            b'{"exp": true}',
            b'{"exp": NaN}',
            b'{"exp": Infinity}',
            b"[" * 50_000,
        ):
            self.app.answer(200, body)
            self.assertUnavailable(self.hook()(asking()))
        self.assertEqual(len(self.logs.events), 15)

    def test_log(self) -> None:
        """The warning names the URL and the problem, never a secret."""
        self.app.answer(200, {"channels": "a"})
        request = Incoming(
            query=f"access_token={TOKEN}".encode(),
            headers={b"Cookie": f"sid={SECRET}".encode()},
        )
        self.assertUnavailable(self.hook(URL + "?key=k3y")(asking(request)))
        (event,) = self.logs.events
        self.assertEqual(event["log_level"].name, "warn")
        self.assertEqual(event["url"], URL)
        self.assertEqual(
            event["reason"],
            "bad answer: channels must be a list of channel names and patterns",
        )
        text = formatEvent(event) + repr(event)
        for secret in (TOKEN, SECRET, "k3y"):
            self.assertNotIn(secret, text)

    def test_too_long(self) -> None:
        """An answer longer than MAX_HOOK_BODY is a 503, read no further."""
        self.app.hold = True
        decision = self.hook()(asking())
        (got,) = self.app.got
        got.request.write(b" " * (MAX_HOOK_BODY + 1))
        self.stub.flush()
        self.assertUnavailable(decision)
        self.assertIn("longer than", self.logs.events[0]["reason"])
        self.stub.flush()
        self.assertEqual(len(got.ended), 1)
        self.assertIsInstance(got.ended[0], Failure)

    def test_longest(self) -> None:
        """An answer of exactly MAX_HOOK_BODY bytes is read."""
        body = b'{"sub": "ada"}'
        self.app.answer(200, body + b" " * (MAX_HOOK_BODY - len(body)))
        grant = self.grant(self.hook()(asking(channels=("a",))))
        self.assertEqual(grant, Grant(identity="ada", subscribe=("a",)))

    def test_timeout(self) -> None:
        """No answer within the timeout is a 503, and the POST is abandoned."""
        self.app.hold = True
        decision = self.hook(timeout=2)(asking())
        self.clock.advance(1.9)
        self.assertNoResult(decision)
        self.clock.advance(0.1)
        self.assertUnavailable(decision)
        self.stub.flush()
        (got,) = self.app.got
        self.assertEqual(len(got.ended), 1)
        self.assertIsInstance(got.ended[0], Failure)
        self.assertEqual(self.logs.events[0]["reason"], "timed out")

    def test_timeout_in_body(self) -> None:
        """A body that stops coming is cut off at the timeout too."""
        self.app.hold = True
        decision = self.hook()(asking())
        (got,) = self.app.got
        got.request.write(b'{"sub":')
        self.stub.flush()
        self.assertNoResult(decision)
        self.clock.advance(DEFAULT_HOOK_TIMEOUT)
        self.assertUnavailable(decision)
        self.stub.flush()
        self.assertIsInstance(got.ended[0], Failure)

    def test_client_raises(self) -> None:
        """A client that raises is a 503 too, logged by the error's class."""

        class Broken:
            def post(self, url: str, **options: object) -> Deferred[Any]:
                raise ConnectionRefusedError()

        hook = HTTPAuthHook(URL, clock=self.clock, client=Broken())
        self.assertUnavailable(hook(asking()))
        self.assertEqual(self.logs.events[0]["reason"], "ConnectionRefusedError")


class CacheTests(HookCase):
    """Answers are remembered for a while; asks in flight share a POST."""

    def test_hit(self) -> None:
        """A second identical ask is answered without a POST."""
        hook = self.hook()
        self.app.answer(200, {"sub": "ada"})
        first = self.grant(hook(asking()))
        second = self.grant(hook(asking()))
        self.assertEqual(first, second)
        self.assertEqual(len(self.app.got), 1)

    def test_expiry(self) -> None:
        """An answer is forgotten after cache_ttl seconds of the clock."""
        hook = self.hook(cache_ttl=3)
        hook(asking())
        self.clock.advance(2.9)
        hook(asking())
        self.assertEqual(len(self.app.got), 1)
        self.clock.advance(0.1)
        hook(asking())
        self.assertEqual(len(self.app.got), 2)

    def test_default_ttl(self) -> None:
        """By default an answer is remembered DEFAULT_HOOK_CACHE seconds."""
        hook = self.hook()
        hook(asking())
        self.clock.advance(DEFAULT_HOOK_CACHE - 0.5)
        hook(asking())
        self.clock.advance(0.5)
        hook(asking())
        self.assertEqual(len(self.app.got), 2)

    def test_exp_bounds(self) -> None:
        """A grant is remembered no longer than its exp."""
        hook = self.hook(cache_ttl=60)
        self.app.answer(200, {"exp": NOW + 2})
        hook(asking())
        self.clock.advance(1)
        hook(asking())
        self.assertEqual(len(self.app.got), 1)
        self.clock.advance(1)
        self.app.answer(200, {"exp": NOW + 100})
        grant = self.grant(hook(asking()))
        self.assertEqual(len(self.app.got), 2)
        assert grant is not None
        self.assertEqual(grant.expires, NOW + 100)

    def test_refusals_kept(self) -> None:
        """A 401 or 403 is remembered, and each ask gets its own Refused."""
        for code in (401, 403):
            hook = self.hook()
            self.app.answer(code, {"error": "no"})
            first = self.refused(hook(asking()))
            second = self.refused(hook(asking()))
            self.assertIsNot(first, second)
            self.assertEqual(
                (first.code, first.reason, first.error, first.retry),
                (second.code, second.reason, second.error, second.retry),
            )
        self.assertEqual(len(self.app.got), 2)

    def test_unavailable_not_kept(self) -> None:
        """A 503 is never remembered: the next ask POSTs again."""
        hook = self.hook()
        self.app.answer(500)
        self.assertUnavailable(hook(asking()))
        self.app.answer(200)
        self.grant(hook(asking()))
        self.assertEqual(len(self.app.got), 2)

    def test_expired_not_kept(self) -> None:
        """A grant whose exp has passed is not remembered."""
        hook = self.hook()
        self.app.answer(200, {"exp": NOW - 1})
        self.refused(hook(asking()))
        self.app.answer(200)
        self.grant(hook(asking()))
        self.assertEqual(len(self.app.got), 2)

    def test_disabled(self) -> None:
        """cache_ttl=0 asks every time."""
        hook = self.hook(cache_ttl=0)
        for _ in range(3):
            self.grant(hook(asking()))
        self.assertEqual(len(self.app.got), 3)

    def test_key_separates(self) -> None:
        """Another action, channel order, cookie, header or query token asks again."""
        hook = self.hook()
        variants = [
            asking(),
            asking(action="publish"),
            asking(channels=("news.*", "a")),
            asking(Incoming(headers={b"Cookie": b"sid=1"})),
            asking(Incoming(headers={b"Cookie": b"sid=2"})),
            asking(Incoming(headers={b"Authorization": b"Bearer x"})),
            asking(Incoming(query=b"access_token=x")),
            asking(Incoming(query=b"access_token=y")),
        ]
        for asked in variants:
            hook(asked)
        self.assertEqual(len(self.app.got), len(variants))
        for asked in variants:
            hook(asked)
        self.assertEqual(len(self.app.got), len(variants))

    def test_not_keyed_on_other(self) -> None:
        """The same credentials from another address or path share the answer."""
        hook = self.hook()
        hook(asking(Incoming(client="198.51.100.1")))
        hook(asking(Incoming(b"/other", client="198.51.100.2")))
        self.assertEqual(len(self.app.got), 1)

    def test_bounded(self) -> None:
        """Past cache_size answers, the oldest is forgotten first."""
        hook = self.hook(cache_size=2)
        for channel in ("a", "b", "c"):
            hook(asking(channels=(channel,)))
        self.assertEqual(len(hook._cache), 2)
        hook(asking(channels=("c",)))
        hook(asking(channels=("b",)))
        self.assertEqual(len(self.app.got), 3)
        hook(asking(channels=("a",)))
        self.assertEqual(len(self.app.got), 4)

    def test_coalesce(self) -> None:
        """Identical asks while one is in flight share its single POST."""
        hook = self.hook()
        self.app.hold = True
        asks = [hook(asking()) for _ in range(3)]
        self.assertEqual(len(self.app.got), 1)
        for decision in asks:
            self.assertNoResult(decision)
        got = self.app.got[0]
        got.request.setResponseCode(200)
        got.request.write(b'{"sub": "ada"}')
        got.request.finish()
        self.stub.flush()
        grants = {self.grant(decision) for decision in asks}
        self.assertEqual(grants, {Grant(identity="ada", subscribe=("a", "news.*"))})
        self.assertEqual(hook._flight, {})

    def test_coalesce_failure(self) -> None:
        """Asks sharing a POST that times out each get their own 503."""
        hook = self.hook(cache_ttl=0)
        self.app.hold = True
        asks = [hook(asking()) for _ in range(2)]
        self.clock.advance(DEFAULT_HOOK_TIMEOUT)
        first, second = (self.assertUnavailable(decision) for decision in asks)
        self.assertIsNot(first, second)
        self.assertEqual(len(self.app.got), 1)
        self.assertEqual(len(self.logs.events), 1)

    def test_waiter_cancelled(self) -> None:
        """A waiter cancelled leaves; the others still get the answer."""
        hook = self.hook()
        self.app.hold = True
        first, second = hook(asking()), hook(asking())
        second.cancel()
        self.failureResultOf(second)
        got = self.app.got[0]
        got.request.finish()
        self.stub.flush()
        self.grant(first)
        self.assertEqual(hook._flight, {})

    def test_flight_bounded(self) -> None:
        """Past cache_size different asks in flight, more go out alone."""
        hook = self.hook(cache_size=2)
        self.app.hold = True
        asks = [hook(asking(channels=(channel,))) for channel in "abcd"]
        self.assertEqual(len(hook._flight), 2)
        self.assertEqual(len(self.app.got), 4)
        for got in self.app.got:
            got.request.finish()
        self.stub.flush()
        self.assertEqual(
            [self.grant(decision) for decision in asks],
            [Grant(subscribe=(channel,)) for channel in "abcd"],
        )
        self.assertEqual(hook._flight, {})

    @settings(max_examples=100, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["subscribe", "publish"]),
                st.lists(st.sampled_from(["a", "b", "news.*"]), min_size=1),
                st.sampled_from([None, b"s=1", b"s=2"]),
            ),
            max_size=12,
        )
    )
    def test_one_post_per_key(
        self, asks: list[tuple[Action, list[str], bytes | None]]
    ) -> None:
        """Each ask gets the grant for its own channels; one POST per distinct ask."""
        app = Application()
        hook = HTTPAuthHook(URL, clock=self.clock, client=StubTreq(app))
        for action, channels, cookie in asks:
            request = Incoming(headers={b"Cookie": cookie} if cookie else None)
            grant = self.successResultOf(hook(asking(request, action, tuple(channels))))
            assert grant is not None
            mine = grant.subscribe if action == "subscribe" else grant.publish
            self.assertEqual(mine, tuple(channels))
        distinct = {(a, tuple(c), k) for a, c, k in asks}
        self.assertEqual(len(app.got), len(distinct))


class AccessTests(HookCase):
    """The hook behind Access: the decision a hub takes once per request."""

    def access(self) -> Access:
        return Access(hook=self.hook())

    def test_grant(self) -> None:
        """A login cookie the application accepts subscribes."""
        self.app.answer(200, {"sub": "ada", "channels": ["news.*"]})
        request = Incoming(headers={b"Cookie": f"sid={SECRET}".encode()})
        decision = self.access().decide(request, "subscribe", ["news.eu"])
        assert isinstance(decision, Deferred)
        grant = self.successResultOf(decision)
        self.assertEqual(grant.identity, "ada")
        self.assertEqual(self.app.got[0].header("Cookie"), f"sid={SECRET}")

    def test_narrowing(self) -> None:
        """Channels granted that do not cover every one asked refuse 403."""
        self.app.answer(200, {"channels": ["a"]})
        decision = self.access().decide(Incoming(), "subscribe", ["a", "b"])
        assert isinstance(decision, Deferred)
        refused = self.refused(decision)
        self.assertEqual(refused.code, 403)
        self.assertIn("'b'", refused.reason)

    def test_opaque_bearer(self) -> None:
        """An opaque bearer token (not a JWT) is the application's to judge."""
        self.app.answer(401, {"error": "unknown token"})
        request = Incoming(
            b"/channels/a",
            method=b"POST",
            headers={b"Authorization": f"Bearer {TOKEN}".encode()},
        )
        decision = self.access().decide(request, "publish", ["a"])
        assert isinstance(decision, Deferred)
        refused = self.refused(decision)
        self.assertEqual(
            (refused.code, refused.reason, refused.error),
            (401, "unknown token", "invalid_token"),
        )
        self.assertEqual(self.app.got[0].body["action"], "publish")

    def test_down(self) -> None:
        """While the application is down, nothing is allowed: 503."""
        self.app.answer(502)
        decision = self.access().decide(Incoming(), "subscribe", ["a"])
        assert isinstance(decision, Deferred)
        self.assertUnavailable(decision)


class ConstructorTests(SynchronousTestCase):
    """The hook refuses settings it cannot work with, naming them."""

    def make(
        self, url: str = URL, options: dict[str, Any] | None = None
    ) -> HTTPAuthHook:
        return HTTPAuthHook(url, clock=Clock(), client=object(), **(options or {}))

    def test_defaults(self) -> None:
        """The defaults are the documented ones."""
        hook = self.make()
        self.assertEqual(
            (hook.timeout, hook.cache_ttl, hook.cache_size, hook.retry),
            (
                DEFAULT_HOOK_TIMEOUT,
                DEFAULT_HOOK_CACHE,
                DEFAULT_HOOK_CACHE_SIZE,
                DEFAULT_HOOK_RETRY,
            ),
        )

    def test_urls(self) -> None:
        """Only an absolute http(s) URL without a password; never echoed."""
        for url in (
            "",
            "/auth",
            "app.example/auth",
            "ftp://app.example/auth",
            "http:///auth",
            "http://app.example:port/auth",
            "http://app .example/auth",
            "http://user:hunter2@app.example/auth",
        ):
            with self.assertRaises(ValueError) as raised:
                self.make(url)
            self.assertIn("url", str(raised.exception))
            self.assertNotIn("hunter2", str(raised.exception))
        self.make("https://app.example:8443/auth?x=1")
        self.make("http://[::1]:8080/auth")

    def test_ranges(self) -> None:
        """timeout > 0, cache_ttl >= 0, cache_size >= 1, retry >= 0."""
        for name, value in (
            ("timeout", 0),
            ("timeout", -1),
            ("timeout", float("nan")),
            ("cache_ttl", -0.1),
            ("cache_size", 0),
            ("cache_size", 1.5),
            ("retry", -1),
        ):
            with self.assertRaises(ValueError) as raised:
                self.make(options={name: value})
            self.assertIn(name, str(raised.exception))
        self.make(options={"cache_ttl": 0, "cache_size": 1, "retry": 0, "timeout": 0.1})
