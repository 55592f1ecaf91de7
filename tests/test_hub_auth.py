"""
Authorization on the hub's resources, with real signed tokens (PyJWT,
HS256): ``GET /channels/{name}``, ``GET /subscribe`` and ``POST
/channels/{name}`` decide once per request from the token's claims, the
public channels or the application's hook; the answers (401 with a
challenge, 403, 503 with ``Retry-After``); streams that end when their
credentials expire; CORS with credentials; and what the logs never show.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import AuthRequest, Grant, JWTVerifier, Refused, SSECollector
from twisted_sse._auth import identity_hash

from ._helpers import TOKEN, answer
from ._redis_fakes import Logs
from .test_subscribe import SubscribeHub

SECRET = "a-secret-of-at-least-32-bytes-long!!"


class _Clock:
    """The fixture's clock, read through once it exists."""

    def __init__(self) -> None:
        self.fixture: Any = None

    def seconds(self) -> float:
        seconds: float = self.fixture.clock.seconds()
        return seconds


class AuthHub(SubscribeHub):
    """A hub whose verifier and expiries run on the fixture's clock."""

    def __init__(self, testcase: SynchronousTestCase, **options: Any) -> None:
        clock = _Clock()
        verifier = JWTVerifier(secret=SECRET, clock=clock, leeway=0)  # type: ignore[arg-type]
        options.setdefault("jwt", verifier)
        super().__init__(testcase, **options)
        clock.fixture = self

    def token(self, **claims: Any) -> str:
        """A token signed with the hub's secret, on the hub's clock."""
        claims.setdefault("sub", "alice")
        return jwt.encode(claims, SECRET, algorithm="HS256")

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


def logged(logs: Logs) -> str:
    """Every log event recorded, formatted, with its fields."""
    return "\n".join(
        f"{formatEvent(event)} {sorted(event.items(), key=str)!r}"
        for event in logs.events
    )


class ChannelAuthTests(SynchronousTestCase):
    """GET /channels/{name} with tokens."""

    def setUp(self) -> None:
        self.hub = AuthHub(self, public=["lobby", "news.*"])

    def test_token_covers(self) -> None:
        """A token whose sse.subscribe covers the channel opens the stream."""
        token = self.hub.token(sse={"subscribe": ["user.alice"]})
        response = self.hub.subscribe("user.alice", headers=self.hub.bearer(token))
        self.assertEqual(response.code, 200)
        self.hub.publish("hello", "user.alice")
        self.assertEqual([e.data for e in response.events], ["hello"])

    def test_no_token(self) -> None:
        """No credentials: 401 with the realm's challenge and a JSON reason."""
        response = self.hub.subscribe("user.alice")
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.header("WWW-Authenticate"), 'Bearer realm="twisted_sse"'
        )
        self.assertIn("sse_token", answer(response)["error"])

    def test_expired(self) -> None:
        """An expired token: 401 invalid_token; the token is never echoed."""
        self.hub.clock.advance(1000)
        token = self.hub.token(exp=900, sse={"subscribe": ["*"]})
        response = self.hub.subscribe("user.alice", headers=self.hub.bearer(token))
        self.assertEqual(response.code, 401)
        self.assertIn('error="invalid_token"', response.header("WWW-Authenticate"))
        self.assertIn("expired", answer(response)["error"])
        for part in token.split("."):
            self.assertNotIn(part.encode(), response.raw)

    def test_forged(self) -> None:
        """A token signed with another secret: 401 invalid_token."""
        token = jwt.encode(
            {"sse": {"subscribe": ["*"]}}, "another-secret-also-32-bytes-long", "HS256"
        )
        response = self.hub.subscribe("user.alice", headers=self.hub.bearer(token))
        self.assertEqual(response.code, 401)
        self.assertIn("invalid_token", response.header("WWW-Authenticate"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_not_covered(self) -> None:
        """A valid token that does not cover the channel: 403, no challenge."""
        token = self.hub.token(sse={"subscribe": ["user.alice"]})
        response = self.hub.subscribe("user.bob", headers=self.hub.bearer(token))
        self.assertEqual(response.code, 403)
        self.assertIsNone(response.header("WWW-Authenticate"))
        self.assertIn("'user.bob'", answer(response)["error"])

    def test_without_sse_claim(self) -> None:
        """A valid token without an sse claim grants nothing: 403."""
        response = self.hub.subscribe(
            "user.alice", headers=self.hub.bearer(self.hub.token())
        )
        self.assertEqual(response.code, 403)

    def test_wrong_claim_type(self) -> None:
        """A claim of the wrong type is refused, never guessed: 401."""
        for sse in ["*", {"subscribe": "user.alice"}, {"subscribe": [1]}]:
            token = self.hub.token(sse=sse)
            response = self.hub.subscribe("user.alice", headers=self.hub.bearer(token))
            self.assertEqual(response.code, 401, sse)

    def test_cookie(self) -> None:
        """The token in the sse_token cookie opens the stream."""
        token = self.hub.token(sse={"subscribe": ["user.*"]})
        response = self.hub.subscribe(
            "user.alice", headers={"Cookie": f"sse_token={token}"}
        )
        self.assertEqual(response.code, 200)

    def test_query(self) -> None:
        """The token in ?access_token= opens the stream."""
        token = self.hub.token(sse={"subscribe": ["user.alice"]})
        response = self.hub.subscribe("user.alice", query=f"?access_token={token}")
        self.assertEqual(response.code, 200)

    def test_header_first(self) -> None:
        """The header is read before the cookie: its token decides."""
        good = self.hub.token(sse={"subscribe": ["user.alice"]})
        other = self.hub.token(sse={"subscribe": ["user.bob"]})
        headers = {**self.hub.bearer(other), "Cookie": f"sse_token={good}"}
        self.assertEqual(self.hub.subscribe("user.alice", headers=headers).code, 403)

    def test_basic(self) -> None:
        """A Basic Authorization header is refused: 401 invalid_request."""
        response = self.hub.subscribe(
            "user.alice", headers={"Authorization": "Basic dTpw"}
        )
        self.assertEqual(response.code, 401)
        self.assertIn("invalid_request", response.header("WWW-Authenticate"))

    def test_oversized(self) -> None:
        """A token over 8 KiB is refused without being parsed: 401."""
        token = "a." + "b" * 9000 + ".c"
        response = self.hub.subscribe("user.alice", headers=self.hub.bearer(token))
        self.assertEqual(response.code, 401)
        self.assertIn("8192", answer(response)["error"])

    def test_public(self) -> None:
        """A public channel, or one under a public pattern, needs no token."""
        self.assertEqual(self.hub.subscribe("lobby").code, 200)
        self.assertEqual(self.hub.subscribe("news.eu").code, 200)

    def test_public_with_bad_token(self) -> None:
        """A bad token is refused even on a public channel: 401."""
        response = self.hub.subscribe("lobby", headers=self.hub.bearer("x.y.z"))
        self.assertEqual(response.code, 401)

    def test_head(self) -> None:
        """HEAD answers what GET would: 401 without a token, 200 with one."""
        head = self.hub.client.request("HEAD", "/channels/user.alice")
        self.assertEqual(head.code, 401)
        token = self.hub.token(sse={"subscribe": ["user.alice"]})
        head = self.hub.client.request(
            "HEAD", "/channels/user.alice", self.hub.bearer(token)
        )
        self.assertEqual(head.code, 200)

    def test_preflight_open(self) -> None:
        """A CORS preflight needs no credentials (browsers send none)."""
        response = self.hub.client.request("OPTIONS", "/channels/user.alice")
        self.assertEqual(response.code, 204)


class ExpiryTests(SynchronousTestCase):
    """A stream opened with credentials that expire ends when they do."""

    def setUp(self) -> None:
        self.hub = AuthHub(self, retry=1500)

    def test_channel_stream_ends_at_exp(self) -> None:
        """At exp the stream gets a retry and the terminating chunk."""
        token = self.hub.token(exp=30, sse={"subscribe": ["user.alice"]})
        response = self.hub.subscribe("user.alice", headers=self.hub.bearer(token))
        self.assertEqual(response.code, 200)
        self.hub.client.advance(29.9)
        self.assertFalse(response.finished)
        self.hub.client.advance(0.2)
        self.assertTrue(response.finished)
        self.assertTrue(response.raw.endswith(b"retry: 1500\n\n"))

    def test_subscribe_stream_ends_at_exp(self) -> None:
        """The same on /subscribe."""
        token = self.hub.token(exp=10, sse={"subscribe": ["a", "b.*"]})
        response = self.hub.get("a", "b.*", headers=self.hub.bearer(token))
        self.assertEqual(response.code, 200)
        self.hub.client.advance(10)
        self.assertTrue(response.finished)

    def test_without_exp(self) -> None:
        """A token without exp keeps its stream open."""
        token = self.hub.token(sse={"subscribe": ["a"]})
        response = self.hub.subscribe("a", headers=self.hub.bearer(token))
        self.hub.client.advance(10_000)
        self.assertFalse(response.finished)

    def test_client_leaves_first(self) -> None:
        """A stream whose client left leaves no expiry timer behind."""
        token = self.hub.token(exp=60, sse={"subscribe": ["a"]})
        response = self.hub.subscribe("a", headers=self.hub.bearer(token))
        response.disconnect()
        self.hub.client.flush()
        self.assertEqual(self.hub.clock.getDelayedCalls(), [])

    def test_reconnect_with_fresh_token(self) -> None:
        """After the end, a fresh token resumes where the old one stopped."""
        token = self.hub.token(exp=5, sse={"subscribe": ["a"]})
        response = self.hub.subscribe("a", headers=self.hub.bearer(token))
        self.hub.publish("one", "a")
        self.hub.client.advance(5)
        self.assertTrue(response.finished)
        self.hub.publish("two", "a")
        fresh = self.hub.token(exp=60, sse={"subscribe": ["a"]})
        again = self.hub.subscribe(
            "a", headers=self.hub.bearer(fresh), last_event_id=response.last_event_id
        )
        self.assertEqual([e.data for e in again.events], ["two"])


class SubscribeAuthTests(SynchronousTestCase):
    """GET /subscribe decides for every channel and pattern named."""

    def setUp(self) -> None:
        self.hub = AuthHub(self, public=["lobby"])

    def test_all_covered(self) -> None:
        """Names and patterns all covered (or public): the stream opens."""
        token = self.hub.token(sse={"subscribe": ["user.alice", "news.*"]})
        response = self.hub.get(
            "user.alice",
            "news.eu.*",
            "news.eu",
            "lobby",
            headers=self.hub.bearer(token),
        )
        self.assertEqual(response.code, 200)

    def test_one_not_covered(self) -> None:
        """One name not covered refuses the whole subscription: 403 naming it."""
        token = self.hub.token(sse={"subscribe": ["user.alice", "news.eu.*"]})
        response = self.hub.get("user.alice", "news.*", headers=self.hub.bearer(token))
        self.assertEqual(response.code, 403)
        self.assertIn("'news.*'", answer(response)["error"])

    def test_name_does_not_cover_pattern(self) -> None:
        """A claim naming a channel does not cover its pattern."""
        token = self.hub.token(sse={"subscribe": ["news"]})
        response = self.hub.get("news.*", headers=self.hub.bearer(token))
        self.assertEqual(response.code, 403)

    def test_star(self) -> None:
        """["*"] covers any list."""
        token = self.hub.token(sse={"subscribe": ["*"]})
        response = self.hub.get("a", "b.*", headers=self.hub.bearer(token))
        self.assertEqual(response.code, 200)

    def test_no_token(self) -> None:
        """A list that is not all public, without a token: 401."""
        self.assertEqual(self.hub.get("lobby", "x").code, 401)

    def test_bad_list_before_auth(self) -> None:
        """An invalid list is a 400 whatever the credentials."""
        self.assertEqual(self.hub.get("bad name").code, 400)

    def test_head(self) -> None:
        """HEAD /subscribe refuses what GET refuses."""
        response = self.hub.client.request("HEAD", "/subscribe?channel=x")
        self.assertEqual(response.code, 401)


class PublishAuthTests(SynchronousTestCase):
    """POST /channels/{name} with a JWT publish claim, or the static token."""

    def setUp(self) -> None:
        self.hub = AuthHub(self, public=["lobby"])
        self.listener = self.hub.subscribe(
            "user.alice",
            headers=self.hub.bearer(self.hub.token(sse={"subscribe": ["*"]})),
        )

    def post(self, token: str | None, channel: str = "user.alice") -> Any:
        return self.hub.post(b'{"data": "hi"}', channel, token=token)

    def test_claim_covers(self) -> None:
        """A publish claim covering the channel: 200 with the id."""
        token = self.hub.token(sse={"publish": ["user.*"]})
        response = self.post(token)
        self.assertEqual(response.code, 200)
        self.assertIn("id", answer(response))
        self.assertEqual([e.data for e in self.listener.events], ["hi"])

    def test_other_claim(self) -> None:
        """A publish claim for another channel: 403, nothing published."""
        token = self.hub.token(sse={"publish": ["user.bob"]})
        self.assertEqual(self.post(token).code, 403)
        self.assertEqual(self.listener.events, [])

    def test_subscribe_only(self) -> None:
        """A subscribe-only token cannot publish: 403."""
        token = self.hub.token(sse={"subscribe": ["*"]})
        self.assertEqual(self.post(token).code, 403)

    def test_bad_signature(self) -> None:
        """A forged token: 401 with invalid_token."""
        token = jwt.encode(
            {"sse": {"publish": ["*"]}}, "another-secret-also-32-bytes-long", "HS256"
        )
        response = self.post(token)
        self.assertEqual(response.code, 401)
        self.assertIn("invalid_token", response.header("WWW-Authenticate"))

    def test_static_token(self) -> None:
        """The static publish token keeps working beside JWTs."""
        self.assertEqual(self.post(TOKEN).code, 200)

    def test_public_does_not_publish(self) -> None:
        """A public channel still needs a token to publish on: 401."""
        self.assertEqual(self.post(None, "lobby").code, 401)


class HookHubTests(SynchronousTestCase):
    """The application's hook, through the hub's resources."""

    def setUp(self) -> None:
        self.asked: list[tuple[AuthRequest, Deferred[Grant | None]]] = []
        self.hub = AuthHub(self, auth_hook=self.hook)

    def hook(self, asked: AuthRequest) -> Deferred[Grant | None]:
        answer: Deferred[Grant | None] = Deferred()
        self.asked.append((asked, answer))
        return answer

    def test_granted_later(self) -> None:
        """The stream opens once the hook allows it, and ends at its expiry."""
        response = self.hub.subscribe("room.1", headers={"Cookie": "session=s1"})
        self.assertIsNone(response.code)
        [(asked, answer)] = self.asked
        self.assertEqual(asked.channels, ("room.1",))
        answer.callback(Grant(identity="carol", subscribe=["room.*"], expires=20))
        self.assertEqual(response.code, 200)
        self.hub.client.advance(20)
        self.assertTrue(response.finished)

    def test_refused_later(self) -> None:
        """A hook's refusal is the answer."""
        response = self.hub.subscribe("room.1")
        self.asked[0][1].errback(Refused(401, "log in"))
        self.assertEqual(response.code, 401)
        self.assertEqual(answer(response), {"error": "log in"})

    def test_down(self) -> None:
        """A hook that is down: 503 with Retry-After, never a stream."""
        response = self.hub.subscribe("room.1")
        self.asked[0][1].errback(
            Refused(503, "the authorization service is unavailable", retry=5)
        )
        self.assertEqual(response.code, 503)
        self.assertEqual(response.header("Retry-After"), "5")

    def test_client_leaves_while_asked(self) -> None:
        """A client that leaves while the hook thinks leaves nothing behind."""
        response = self.hub.subscribe("room.1")
        response.disconnect()
        self.hub.client.flush()
        self.asked[0][1].callback(Grant(subscribe=["room.1"]))
        self.assertEqual(self.hub.memory.subscriber_count("room.1"), 0)
        self.assertFalse(response.finished)

    def test_publish_granted_later(self) -> None:
        """A publish the hook allows is published."""
        response = self.hub.post(b'{"data": "x"}', "room.1", token=None)
        [(asked, answer)] = self.asked
        self.assertEqual(asked.action, "publish")
        answer.callback(Grant(publish=["room.1"]))
        self.assertEqual(response.code, 200)

    def test_publish_hook_fails(self) -> None:
        """A hook that raises something else: 500, logged once."""
        response = self.hub.post(b'{"data": "x"}', "room.1", token=None)
        self.asked[0][1].errback(RuntimeError("bug"))
        self.assertEqual(response.code, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_jwt_beside_hook(self) -> None:
        """A JWT is checked by the verifier; the hook is not asked."""
        token = self.hub.token(sse={"subscribe": ["room.1"]})
        response = self.hub.subscribe("room.1", headers=self.hub.bearer(token))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.asked, [])


class CorsTests(SynchronousTestCase):
    """CORS with credentials for listed origins only."""

    def test_listed_origin(self) -> None:
        """A listed origin is echoed with Access-Control-Allow-Credentials."""
        hub = AuthHub(self, allow_origin=["https://app.example", "https://b.example"])
        token = hub.token(sse={"subscribe": ["a"]})
        response = hub.subscribe(
            "a", headers={"Origin": "https://b.example", "Cookie": f"sse_token={token}"}
        )
        self.assertEqual(
            response.header("Access-Control-Allow-Origin"), "https://b.example"
        )
        self.assertEqual(response.header("Access-Control-Allow-Credentials"), "true")
        self.assertEqual(response.header("Vary"), "Origin")

    def test_refusal_readable(self) -> None:
        """A refusal to a listed origin carries the CORS headers too."""
        hub = AuthHub(self, allow_origin=["https://app.example"])
        response = hub.subscribe("a", headers={"Origin": "https://app.example"})
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.header("Access-Control-Allow-Origin"), "https://app.example"
        )

    def test_other_origin(self) -> None:
        """Another origin gets no Access-Control-Allow-Origin from a list."""
        hub = AuthHub(self, allow_origin=["https://app.example", "https://b.example"])
        token = hub.token(sse={"subscribe": ["a"]})
        response = hub.subscribe(
            "a", headers={"Origin": "https://evil.example", **hub.bearer(token)}
        )
        self.assertIsNone(response.header("Access-Control-Allow-Origin"))
        self.assertIsNone(response.header("Access-Control-Allow-Credentials"))

    def test_star_never_credentials(self) -> None:
        """With *, never Access-Control-Allow-Credentials."""
        hub = AuthHub(self, allow_origin="*")
        response = hub.subscribe("a", headers={"Origin": "https://app.example"})
        self.assertEqual(response.header("Access-Control-Allow-Origin"), "*")
        self.assertIsNone(response.header("Access-Control-Allow-Credentials"))

    def test_preflight(self) -> None:
        """The preflight of a listed origin allows credentials and Authorization."""
        hub = AuthHub(self, allow_origin=["https://app.example"])
        response = hub.client.request(
            "OPTIONS", "/channels/a", {"Origin": "https://app.example"}
        )
        self.assertEqual(response.header("Access-Control-Allow-Credentials"), "true")
        self.assertIn("Authorization", response.header("Access-Control-Allow-Headers"))

    def test_bad_origins(self) -> None:
        """Origins with a path, or * among others, are refused."""
        for bad in [["https://a.example/x"], ["*", "https://a.example"], ["nope"]]:
            with self.assertRaises(ValueError):
                AuthHub(self, allow_origin=bad)


class SecretsTests(SynchronousTestCase):
    """No token or identity in the logs; no traceback for a bad token."""

    def test_logs(self) -> None:
        """Granted, refused and expired streams log no token and no identity."""
        logs = Logs(self)
        hub = AuthHub(self)
        good = hub.token(sub="alice@example.org", exp=5, sse={"subscribe": ["a"]})
        forged = jwt.encode({"sse": {"subscribe": ["*"]}}, "x" * 40, "HS256")
        hub.subscribe("a", headers=hub.bearer(good))
        hub.subscribe("a", headers=hub.bearer(forged))
        hub.subscribe("a", query=f"?access_token={forged}")
        hub.client.advance(5)
        text = logged(logs)
        for token in (good, forged):
            for part in token.split("."):
                self.assertNotIn(part, text)
        self.assertNotIn("alice@example.org", text)
        self.assertIn(identity_hash("alice@example.org"), text)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_garbage_tokens(self) -> None:
        """Hostile tokens get 401s, never a 500 or a traceback."""
        hub = AuthHub(self)
        for token in ["..", "a.b.c", "e30.e30.", "\u00e9.\u00e9.\u00e9", "x" * 100]:
            response = hub.subscribe("a", headers={"Authorization": f"Bearer {token}"})
            self.assertEqual(response.code, 401, token)
            self.assertEqual(json.loads(response.raw).keys(), {"error"})
        self.assertEqual(self.flushLoggedErrors(), [])


def registry_of(collector: SSECollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


class RefusalMetricsTests(SynchronousTestCase):
    """Refusals are counted, by status, for /metrics."""

    def test_counted(self) -> None:
        """401s and 403s are counted, and exported with fixed labels."""
        hub = AuthHub(self)
        hub.subscribe("a")
        hub.subscribe("a", headers=hub.bearer(hub.token(sse={"subscribe": ["b"]})))
        hub.post(b'{"data": "x"}', "a", token=None)
        self.assertEqual(hub.hub.refusals, {"401": 2, "403": 1})
        text = generate_latest(
            registry_of(SSECollector(hub.registry, hub.hub))
        ).decode()
        self.assertIn('sse_auth_refusals_total{status="401"} 2.0', text)
        self.assertIn('sse_auth_refusals_total{status="503"} 0.0', text)


class LegacyAuthorizerTests(SynchronousTestCase):
    """The simpler per-channel authorizer still applies after the decision."""

    def test_asked_after_grant(self) -> None:
        """A granted request is still refused by the authorizer: 403."""
        hub = AuthHub(self, authorizer=lambda request, channel: channel != "b")
        token = hub.token(sse={"subscribe": ["*"]})
        self.assertEqual(hub.subscribe("a", headers=hub.bearer(token)).code, 200)
        self.assertEqual(hub.subscribe("b", headers=hub.bearer(token)).code, 403)
        self.assertEqual(hub.get("a", "b", headers=hub.bearer(token)).code, 403)
