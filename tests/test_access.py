"""
The access decision (:mod:`twisted_sse._auth`): which claims cover which
channels and patterns, where a request's token is looked for, and what
:class:`~twisted_sse.Access` answers for each kind of credentials.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse import MAX_TOKEN_BYTES, Access, AuthRequest, Grant, Refused
from twisted_sse._auth import (
    PUBLISH,
    SUBSCRIBE,
    check_claims,
    covers,
    credentials,
    grant_of,
    identity_hash,
    remember,
)

#: A token shaped like a JWT (three dot-separated parts).
JWT = b"aaa.bbb.ccc"


class FakeRequest:
    """What the decision reads of a request: headers, cookies, the query."""

    def __init__(
        self,
        headers: dict[bytes, bytes] | None = None,
        cookies: dict[bytes, bytes] | None = None,
        args: dict[bytes, list[bytes]] | None = None,
        method: bytes = b"GET",
        path: bytes = b"/subscribe",
    ) -> None:
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.cookies = cookies or {}
        self.args = args or {}
        self.method = method
        self.path = path

    def getHeader(self, name: bytes) -> bytes | None:
        return self.headers.get(name.lower())

    def getCookie(self, name: bytes) -> bytes | None:
        return self.cookies.get(name)


def bearer(token: bytes) -> FakeRequest:
    return FakeRequest(headers={b"Authorization": b"Bearer " + token})


class FakeVerifier:
    """A verifier that knows a few tokens by heart (the real one: test_jwt)."""

    def __init__(self, grants: dict[bytes, Grant]) -> None:
        self.grants = grants
        self.verified: list[bytes] = []

    def verify(self, token: bytes) -> Grant:
        self.verified.append(token)
        grant = self.grants.get(token)
        if grant is None:
            raise Refused(
                401, "the token's signature does not verify", error="invalid_token"
            )
        return grant


names = st.from_regex(r"[a-z0-9][a-z0-9_]{0,5}(\.[a-z0-9_]{1,5}){0,3}", fullmatch=True)
patterns = names.map(lambda name: name + ".*")
claims = st.one_of(names, patterns, st.just("*"))


class CoversTests(SynchronousTestCase):
    """Which claims cover which channels and patterns."""

    def test_exact_name(self) -> None:
        """A channel name covers itself and nothing else."""
        self.assertTrue(covers(["news"], "news"))
        self.assertFalse(covers(["news"], "newsroom"))
        self.assertFalse(covers(["news"], "news.eu"))

    def test_pattern_covers_channels_below(self) -> None:
        """news.* covers news.eu and news.eu.fr, not news nor newsroom."""
        self.assertTrue(covers(["news.*"], "news.eu"))
        self.assertTrue(covers(["news.*"], "news.eu.fr"))
        self.assertFalse(covers(["news.*"], "news"))
        self.assertFalse(covers(["news.*"], "newsroom"))
        self.assertFalse(covers(["news.*"], "newsroom.eu"))

    def test_pattern_covers_patterns_it_contains(self) -> None:
        """A claim pattern covers itself and narrower patterns, not wider ones."""
        self.assertTrue(covers(["news.*"], "news.*"))
        self.assertTrue(covers(["news.*"], "news.eu.*"))
        self.assertFalse(covers(["news.eu.*"], "news.*"))
        self.assertFalse(covers(["news.*"], "newsroom.*"))

    def test_name_never_covers_pattern(self) -> None:
        """A channel name does not cover the pattern of the channels below it."""
        self.assertFalse(covers(["news"], "news.*"))

    def test_star(self) -> None:
        """* covers every channel and every pattern."""
        self.assertTrue(covers(["*"], "anything"))
        self.assertTrue(covers(["x", "*"], "news.*"))

    def test_nothing(self) -> None:
        """No claims cover nothing."""
        self.assertFalse(covers([], "news"))

    @given(claims)
    def test_reflexive(self, claim: str) -> None:
        """Every claim covers itself."""
        self.assertTrue(covers([claim], claim))

    @given(st.lists(claims, max_size=4), st.lists(claims, max_size=4), claims)
    def test_monotone(self, some: list[str], more: list[str], name: str) -> None:
        """Adding claims never takes coverage away."""
        if covers(some, name):
            self.assertTrue(covers(some + more, name))

    @given(claims, claims, claims)
    def test_transitive(self, first: str, second: str, third: str) -> None:
        """What a covered claim covers, the covering claim covers too."""
        if covers([first], second) and covers([second], third):
            self.assertTrue(covers([first], third))

    @given(names, names)
    def test_pattern_is_a_prefix_rule(self, prefix: str, channel: str) -> None:
        """prefix.* covers a channel exactly when it starts with 'prefix.'."""
        self.assertEqual(
            covers([prefix + ".*"], channel), channel.startswith(prefix + ".")
        )


class ClaimsTests(SynchronousTestCase):
    """Claims are taken as lists of names and patterns, never guessed."""

    def test_valid(self) -> None:
        """A list of names, patterns and * is kept as a tuple."""
        self.assertEqual(
            check_claims(["a", "news.*", "*"], "sse.subscribe"), ("a", "news.*", "*")
        )

    def test_string(self) -> None:
        """A string where a list is expected is refused, naming the claim."""
        with self.assertRaisesRegex(ValueError, "sse.subscribe must be a list"):
            check_claims("news", "sse.subscribe")

    def test_numbers(self) -> None:
        """A list of numbers is refused, naming the type."""
        with self.assertRaisesRegex(ValueError, "not of int"):
            check_claims([1], "sse.publish")

    def test_mapping(self) -> None:
        """An object is refused."""
        with self.assertRaises(ValueError):
            check_claims({"news": True}, "sse.publish")

    def test_bad_names(self) -> None:
        """Invalid names and patterns (*.x, news*, a.*.b, '') are refused."""
        for bad in ["", "news*", "a.*.b", "*.news", "bad name", "x" * 300]:
            with self.assertRaises(ValueError, msg=bad):
                check_claims([bad], "sse.subscribe")

    def test_grant_fields(self) -> None:
        """A Grant checks its fields: ValueErrors name them."""
        with self.assertRaisesRegex(ValueError, "subscribe"):
            Grant(subscribe="news")
        with self.assertRaisesRegex(ValueError, "publish"):
            Grant(publish=[3])  # type: ignore[list-item]
        with self.assertRaisesRegex(ValueError, "identity"):
            Grant(identity=5)  # type: ignore[arg-type]
        with self.assertRaisesRegex(ValueError, "expires"):
            Grant(expires="soon")  # type: ignore[arg-type]
        with self.assertRaisesRegex(ValueError, "expires"):
            Grant(expires=True)

    def test_grant_allows(self) -> None:
        """A grant allows each action on what its own claims cover."""
        grant = Grant(subscribe=["a", "news.*"], publish=["a"])
        self.assertTrue(grant.allows(SUBSCRIBE, "news.eu"))
        self.assertFalse(grant.allows(PUBLISH, "news.eu"))
        self.assertTrue(grant.allows(PUBLISH, "a"))


class CredentialsTests(SynchronousTestCase):
    """Where a request's token is found, and which carriers are refused."""

    def test_none(self) -> None:
        """Without a carrier there is no token."""
        found = credentials(FakeRequest())
        self.assertIsNone(found.token)
        self.assertIsNone(found.carrier)

    def test_order(self) -> None:
        """The header wins over the cookie, the cookie over the query."""
        request = FakeRequest(
            headers={b"Authorization": b"Bearer h"},
            cookies={b"sse_token": b"c"},
            args={b"access_token": [b"q"]},
        )
        self.assertEqual(credentials(request).token, b"h")
        del request.headers[b"authorization"]
        self.assertEqual(credentials(request).token, b"c")
        self.assertEqual(credentials(request).carrier, "cookie")
        request.cookies.clear()
        self.assertEqual(credentials(request).token, b"q")
        self.assertEqual(credentials(request).carrier, "query")

    def test_query_not_for_publishing(self) -> None:
        """With query=False (publishing), access_token is not read."""
        request = FakeRequest(args={b"access_token": [b"q"]})
        self.assertIsNone(credentials(request, query=False).token)

    def test_no_args_yet(self) -> None:
        """A request whose query is not parsed yet has no query token."""
        request = FakeRequest()
        del request.args
        self.assertIsNone(credentials(request).token)

    def test_scheme_case_and_spaces(self) -> None:
        """The Bearer scheme is case-insensitive; spaces around are dropped."""
        request = FakeRequest(headers={b"Authorization": b"  bEaReR   tok  "})
        self.assertEqual(credentials(request).token, b"tok")

    def test_basic(self) -> None:
        """A Basic header is refused at once: 401 invalid_request."""
        with self.assertRaises(Refused) as caught:
            credentials(FakeRequest(headers={b"Authorization": b"Basic dTpw"}))
        self.assertEqual(caught.exception.code, 401)
        self.assertEqual(caught.exception.error, "invalid_request")

    def test_empty(self) -> None:
        """An empty Bearer, cookie or parameter is refused."""
        for request in [
            FakeRequest(headers={b"Authorization": b"Bearer"}),
            FakeRequest(headers={b"Authorization": b"Bearer   "}),
            FakeRequest(cookies={b"sse_token": b""}),
            FakeRequest(args={b"access_token": [b""]}),
        ]:
            with self.assertRaises(Refused) as caught:
                credentials(request)
            self.assertEqual(caught.exception.code, 401)

    def test_oversized(self) -> None:
        """A token over MAX_TOKEN_BYTES is refused in every carrier, unread."""
        big = b"a." + b"b" * MAX_TOKEN_BYTES + b".c"
        for request in [
            bearer(big),
            FakeRequest(cookies={b"sse_token": big}),
            FakeRequest(args={b"access_token": [big]}),
        ]:
            with self.assertRaises(Refused) as caught:
                credentials(request)
            self.assertEqual(caught.exception.error, "invalid_token")
            self.assertIn(str(MAX_TOKEN_BYTES), caught.exception.reason)
            self.assertNotIn("bbbb", caught.exception.reason)

    def test_at_the_bound(self) -> None:
        """A token of exactly MAX_TOKEN_BYTES is read."""
        token = b"t" * MAX_TOKEN_BYTES
        self.assertEqual(credentials(bearer(token)).token, token)


class ChallengeTests(SynchronousTestCase):
    """The WWW-Authenticate of each refusal."""

    def test_no_credentials(self) -> None:
        """A 401 for missing credentials challenges with the realm only."""
        self.assertEqual(Refused(401, "x").challenge, b'Bearer realm="twisted_sse"')

    def test_invalid(self) -> None:
        """A 401 for bad credentials names the error."""
        self.assertEqual(
            Refused(401, "x", error="invalid_token").challenge,
            b'Bearer realm="twisted_sse", error="invalid_token"',
        )

    def test_forbidden(self) -> None:
        """A 403 has no challenge."""
        self.assertIsNone(Refused(403, "x").challenge)
        self.assertEqual(str(Refused(403, "why")), "why")


class DecideTests(SynchronousTestCase):
    """What Access answers."""

    def refused(self, decision: Any) -> Refused:
        """The refusal of a decision taken by calling ``decision()``."""
        with self.assertRaises(Refused) as caught:
            decision()
        refused: Refused = caught.exception
        return refused

    def test_open(self) -> None:
        """With nothing guarding it, anyone subscribes, whatever they send."""
        access = Access()
        request = FakeRequest(headers={b"Authorization": b"Basic x"})
        grant = access.decide(request, SUBSCRIBE, ["anything", "news.*"])
        self.assertIsInstance(grant, Grant)

    def test_publishing_off(self) -> None:
        """With nothing allowing it, publishing is refused: 403."""
        refused = self.refused(lambda: Access().decide(FakeRequest(), PUBLISH, ["a"]))
        self.assertEqual(refused.code, 403)
        self.assertIn("--publish-token", refused.reason)

    def test_no_credentials(self) -> None:
        """A guarded channel without credentials: 401 without error."""
        access = Access(verifier=FakeVerifier({}))
        refused = self.refused(lambda: access.decide(FakeRequest(), SUBSCRIBE, ["a"]))
        self.assertEqual(refused.code, 401)
        self.assertIsNone(refused.error)
        self.assertIn("sse_token", refused.reason)

    def test_public(self) -> None:
        """Public channels and patterns are read without credentials."""
        access = Access(verifier=FakeVerifier({}), public=["lobby", "news.*"])
        grant = access.decide(
            FakeRequest(), SUBSCRIBE, ["lobby", "news.eu", "news.x.*"]
        )
        self.assertIsInstance(grant, Grant)

    def test_public_and_private(self) -> None:
        """One non-public name among public ones needs credentials."""
        access = Access(verifier=FakeVerifier({}), public=["lobby"])
        refused = self.refused(
            lambda: access.decide(FakeRequest(), SUBSCRIBE, ["lobby", "inbox"])
        )
        self.assertEqual(refused.code, 401)

    def test_public_does_not_open_publishing(self) -> None:
        """--public is for reading: publishing there still needs a token."""
        access = Access(verifier=FakeVerifier({}), public=["lobby"])
        refused = self.refused(lambda: access.decide(FakeRequest(), PUBLISH, ["lobby"]))
        self.assertEqual(refused.code, 401)

    def test_public_with_a_token(self) -> None:
        """A token that covers the private names reads the public ones too."""
        verifier = FakeVerifier({JWT: Grant(subscribe=["inbox"])})
        access = Access(verifier=verifier, public=["lobby"])
        grant = access.decide(bearer(JWT), SUBSCRIBE, ["lobby", "inbox"])
        self.assertEqual(grant, Grant(subscribe=["inbox"]))

    def test_token_covers(self) -> None:
        """A verified token covering every name is granted."""
        grant = Grant(identity="alice", subscribe=["user.alice", "news.*"])
        access = Access(verifier=FakeVerifier({JWT: grant}))
        self.assertIs(
            access.decide(bearer(JWT), SUBSCRIBE, ["user.alice", "news.eu.*"]), grant
        )

    def test_token_does_not_cover(self) -> None:
        """A list with one name the token does not cover: 403 naming it."""
        access = Access(verifier=FakeVerifier({JWT: Grant(subscribe=["news.eu.*"])}))
        refused = self.refused(
            lambda: access.decide(bearer(JWT), SUBSCRIBE, ["news.eu.fr", "news.*"])
        )
        self.assertEqual(refused.code, 403)
        self.assertIn("'news.*'", refused.reason)

    def test_valid_token_without_claims(self) -> None:
        """A valid token without sse claims grants nothing: 403."""
        access = Access(verifier=FakeVerifier({JWT: Grant(identity="x")}))
        self.assertEqual(
            self.refused(lambda: access.decide(bearer(JWT), SUBSCRIBE, ["a"])).code, 403
        )

    def test_subscribe_claims_do_not_publish(self) -> None:
        """A subscribe-only token cannot publish: 403."""
        access = Access(verifier=FakeVerifier({JWT: Grant(subscribe=["*"])}))
        self.assertEqual(
            self.refused(lambda: access.decide(bearer(JWT), PUBLISH, ["a"])).code, 403
        )

    def test_bad_token(self) -> None:
        """The verifier's refusal is the answer: 401 invalid_token."""
        access = Access(verifier=FakeVerifier({}))
        refused = self.refused(lambda: access.decide(bearer(JWT), SUBSCRIBE, ["a"]))
        self.assertEqual((refused.code, refused.error), (401, "invalid_token"))

    def test_not_a_jwt(self) -> None:
        """A token that is no JWT, without a hook, is invalid: 401."""
        verifier = FakeVerifier({})
        access = Access(verifier=verifier)
        refused = self.refused(
            lambda: access.decide(bearer(b"opaque"), SUBSCRIBE, ["a"])
        )
        self.assertEqual((refused.code, refused.error), (401, "invalid_token"))
        self.assertEqual(verifier.verified, [])

    def test_static_tokens(self) -> None:
        """The static tokens allow their own action on every channel."""
        access = Access(subscribe_token="s" * 8, publish_token="p" * 8)
        self.assertTrue(
            access.decide(bearer(b"s" * 8), SUBSCRIBE, ["x.*"]).allows(SUBSCRIBE, "x.*")  # type: ignore[union-attr]
        )
        publisher = FakeRequest(headers={b"Authorization": b"Bearer " + b"p" * 8})
        self.assertIsInstance(access.decide(publisher, PUBLISH, ["x"]), Grant)
        self.assertEqual(
            self.refused(
                lambda: access.decide(bearer(b"p" * 8), SUBSCRIBE, ["x"])
            ).code,
            401,
        )
        self.assertEqual(
            self.refused(lambda: access.decide(bearer(b"s" * 8), PUBLISH, ["x"])).code,
            401,
        )

    def test_static_token_beside_jwt(self) -> None:
        """With a verifier, the static token still works, and JWTs too."""
        verifier = FakeVerifier({JWT: Grant(subscribe=["a"])})
        access = Access(verifier=verifier, subscribe_token="static")
        self.assertIsInstance(access.decide(bearer(b"static"), SUBSCRIBE, ["b"]), Grant)
        self.assertIsInstance(access.decide(bearer(JWT), SUBSCRIBE, ["a"]), Grant)

    def test_publish_ignores_query(self) -> None:
        """A publish's access_token parameter is not read: 401."""
        access = Access(publish_token="p" * 8)
        request = FakeRequest(args={b"access_token": [b"p" * 8]}, method=b"POST")
        self.assertEqual(
            self.refused(lambda: access.decide(request, PUBLISH, ["a"])).code, 401
        )

    def test_publish_head_without_token(self) -> None:
        """
        A publish without credentials is refused on its head alone (no
        channel named yet), public channels or not: publishing is never
        public.
        """
        access = Access(publish_token="p" * 8, public=["lobby", "news.*"])
        request = FakeRequest(method=b"POST")
        for names in ([], ["lobby"]):
            refused = self.refused(
                lambda names=names: access.decide_now(request, PUBLISH, names)
            )
            self.assertEqual(refused.code, 401)

    def test_publish_cookie(self) -> None:
        """A publish may carry its token in the cookie."""
        access = Access(verifier=FakeVerifier({JWT: Grant(publish=["a"])}))
        request = FakeRequest(cookies={b"sse_token": JWT}, method=b"POST")
        self.assertIsInstance(access.decide(request, PUBLISH, ["a"]), Grant)

    def test_empty_static_tokens(self) -> None:
        """Empty static tokens are refused, naming the parameter."""
        with self.assertRaisesRegex(ValueError, "subscribe_token"):
            Access(subscribe_token="")
        with self.assertRaisesRegex(ValueError, "publish_token"):
            Access(publish_token="")

    def test_bad_public(self) -> None:
        """An invalid public name is refused, naming the parameter."""
        with self.assertRaisesRegex(ValueError, "public"):
            Access(public=["bad name"])


class HookTests(SynchronousTestCase):
    """Requests without a JWT go to the application's hook."""

    def setUp(self) -> None:
        self.asked: list[AuthRequest] = []
        self.answer: Any = Grant(subscribe=["a", "b"])

    def hook(self, asked: AuthRequest) -> Any:
        self.asked.append(asked)
        return self.answer

    def test_asked_without_credentials(self) -> None:
        """No credentials: the hook is asked, with what the request wants."""
        access = Access(hook=self.hook)
        request = FakeRequest(cookies={b"session": b"s1"}, path=b"/subscribe")
        decision = access.decide(request, SUBSCRIBE, ["a", "b"])
        assert isinstance(decision, Deferred)
        self.assertEqual(self.successResultOf(decision), self.answer)
        [asked] = self.asked
        self.assertEqual(
            (asked.action, asked.method, asked.path, asked.channels),
            ("subscribe", "GET", "/subscribe", ("a", "b")),
        )
        self.assertIsNone(asked.credentials.token)
        self.assertIs(asked.request, request)

    def test_opaque_token(self) -> None:
        """A token that is not a JWT goes to the hook, with where it was."""
        access = Access(verifier=FakeVerifier({}), hook=self.hook)
        access.decide(
            FakeRequest(args={b"access_token": [b"opaque"]}), SUBSCRIBE, ["a"]
        )
        self.assertEqual(self.asked[0].credentials.token, b"opaque")
        self.assertEqual(self.asked[0].credentials.carrier, "query")

    def test_jwt_not_asked(self) -> None:
        """A JWT is checked by the verifier, never forwarded to the hook."""
        access = Access(verifier=FakeVerifier({}), hook=self.hook)
        with self.assertRaises(Refused):
            access.decide(bearer(JWT), SUBSCRIBE, ["a"])
        self.assertEqual(self.asked, [])

    def test_none_refuses(self) -> None:
        """A hook answering None refuses: 403."""
        self.answer = None
        decision = Access(hook=self.hook).decide(FakeRequest(), SUBSCRIBE, ["a"])
        assert isinstance(decision, Deferred)
        self.assertEqual(self.failureResultOf(decision, Refused).value.code, 403)

    def test_narrowed(self) -> None:
        """A grant that does not cover every name asked: 403."""
        self.answer = Grant(subscribe=["a"])
        decision = Access(hook=self.hook).decide(FakeRequest(), SUBSCRIBE, ["a", "b"])
        assert isinstance(decision, Deferred)
        refused = self.failureResultOf(decision, Refused).value
        self.assertIn("'b'", refused.reason)

    def test_deferred(self) -> None:
        """A hook may answer later, with a Deferred."""
        later: Deferred[Grant | None] = Deferred()
        self.answer = later
        decision = Access(hook=self.hook).decide(FakeRequest(), PUBLISH, ["a"])
        assert isinstance(decision, Deferred)
        self.assertNoResult(decision)
        later.callback(Grant(publish=["*"]))
        self.assertEqual(self.successResultOf(decision), Grant(publish=["*"]))

    def test_refusal_of_its_own(self) -> None:
        """A hook's own Refused (raised or failed) is the answer."""
        self.answer = fail(Refused(401, "log in first"))
        decision = Access(hook=self.hook).decide(FakeRequest(), SUBSCRIBE, ["a"])
        assert isinstance(decision, Deferred)
        self.assertEqual(
            self.failureResultOf(decision, Refused).value.reason, "log in first"
        )

    def test_wrong_answer(self) -> None:
        """A hook answering something else than a Grant fails with TypeError."""
        self.answer = succeed(True)
        decision = Access(hook=self.hook).decide(FakeRequest(), SUBSCRIBE, ["a"])
        assert isinstance(decision, Deferred)
        self.failureResultOf(decision, TypeError)

    def test_decide_now_does_not_ask(self) -> None:
        """decide_now answers None where the hook would be asked."""
        access = Access(hook=self.hook)
        self.assertIsNone(access.decide_now(FakeRequest(), SUBSCRIBE, ["a"]))
        self.assertEqual(self.asked, [])

    def test_decide_now_refuses_without_asking(self) -> None:
        """decide_now still refuses what it can on its own (a Basic header)."""
        access = Access(hook=self.hook)
        request = FakeRequest(headers={b"Authorization": b"Basic x"})
        with self.assertRaises(Refused):
            access.decide_now(request, PUBLISH, ())


class RememberTests(SynchronousTestCase):
    """What a request was allowed with is kept for its stream."""

    def test_kept_with_identity_or_expiry(self) -> None:
        """A grant with an identity or an expiry is remembered."""
        request = FakeRequest()
        grant = Grant(identity="alice")
        remember(request, grant)
        self.assertIs(grant_of(request), grant)

    def test_not_kept_otherwise(self) -> None:
        """A grant without either is not kept: nothing to do with it."""
        request = FakeRequest()
        remember(request, Grant(subscribe=["*"]))
        self.assertIsNone(grant_of(request))

    def test_identity_hash(self) -> None:
        """The logged identity is a stable hash that does not spell it."""
        self.assertEqual(identity_hash("alice"), identity_hash("alice"))
        self.assertNotEqual(identity_hash("alice"), identity_hash("bob"))
        self.assertNotIn("alice", identity_hash("alice"))
