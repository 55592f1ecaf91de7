"""
Tests for L{twisted_sse._jwt}: real keys made by ``openssl`` and real
tokens (signed by PyJWT, by ``openssl dgst`` and by hand) are accepted with
the algorithms of their key and refused otherwise; the attacks on JWT
verifiers (``alg: none``, an HMAC made with a public key, a token of
another key type) are refused; claims are checked on an injected clock
and turned into grants; every refusal is a ``401`` whose reason holds no
part of the token; verified tokens are remembered until they expire.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import jwt
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._auth import (
    MAX_TOKEN_BYTES,
    PUBLISH,
    SUBSCRIBE,
    Grant,
    Refused,
    check_claims,
)
from twisted_sse._jwt import (
    DEFAULT_LEEWAY,
    MIN_SECRET_BYTES,
    JWTVerifier,
    load_public_key,
)

from ._keys import (
    Keys,
    b64url,
    hs256_by_hand,
    keys,
    openssl_es256,
    openssl_rs256,
    part,
    unsigned,
)

#: The hub's clock in these tests (POSIX seconds).
NOW = 1_800_000_000.0
#: An HMAC secret long enough for HS256, HS384 and HS512.
SECRET = bytes(range(64))
#: A valid token's claims.
CLAIMS: dict[str, Any] = {"sub": "alice", "sse": {"subscribe": ["news.*"]}}

_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")


def signed_raw(header: bytes, payload: bytes, secret: bytes = SECRET) -> bytes:
    """A token of raw ``header`` and ``payload`` JSON texts, HS256-signed."""
    signing = b64url(header) + b"." + b64url(payload)
    return signing + b"." + b64url(hmac.new(secret, signing, hashlib.sha256).digest())


def hs(payload: dict[str, Any], alg: str = "HS256", secret: bytes = SECRET) -> bytes:
    """A token of ``payload`` signed by PyJWT with an HMAC ``secret``."""
    with warnings.catch_warnings():
        # PyJWT warns of a secret short for its algorithm: that is the case
        # some tests make on purpose.
        warnings.simplefilter("ignore")
        return jwt.encode(payload, secret, algorithm=alg).encode("ascii")


def signed(payload: dict[str, Any], private_pem: bytes, alg: str) -> bytes:
    """A token of ``payload`` signed by PyJWT with a private key."""
    return jwt.encode(payload, private_pem, algorithm=alg).encode("ascii")


@contextmanager
def logged() -> Iterator[list[LogEvent]]:
    """The log events emitted while in the block."""
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def assert_discreet(token: bytes, reason: str) -> None:
    """
    ``reason`` holds neither ``token`` nor any of its parts (the signature
    above all) long enough to mean something.
    """
    text = reason.encode("utf-8", "replace")
    for piece in (token, *token.split(b".")):
        if len(piece) >= 8:
            assert piece not in text, f"the reason {reason!r} holds the token"


class VerifierCase(SynchronousTestCase):
    """A clock at L{NOW}, the shared keys, and refusals checked as such."""

    def setUp(self) -> None:
        self.keys: Keys = keys()
        self.clock = Clock()
        self.clock.advance(NOW)

    def verifier(self, **options: Any) -> JWTVerifier:
        """A verifier on this test's clock."""
        options.setdefault("clock", self.clock)
        return JWTVerifier(**options)

    def assertRefused(
        self, verifier: JWTVerifier, token: bytes, reason: str
    ) -> Refused:
        """
        C{verifier} refuses C{token}: a C{401} with C{error="invalid_token"}
        and exactly C{reason}, which holds no part of the token, raised
        without a chained exception and without logging the token or a
        failure.
        """
        with logged() as events, self.assertRaises(Refused) as raised:
            verifier.verify(token)
        refused: Refused = raised.exception
        self.assertEqual(
            (refused.code, refused.error, refused.reason),
            (401, "invalid_token", reason),
        )
        self.assertIsNone(refused.__cause__)
        assert_discreet(token, refused.reason)
        for event in events:
            self.assertNotIn("log_failure", event)
            assert_discreet(token, formatEvent(event))
            for value in event.values():
                if isinstance(value, (str, bytes)) and len(value) >= 8:
                    as_bytes = value if isinstance(value, bytes) else value.encode()
                    self.assertNotIn(as_bytes, token)
        return refused


class KeyTypeTests(VerifierCase):
    """Each type of key verifies the algorithms of its type."""

    def test_rsa(self) -> None:
        """An RSA 2048 key verifies RS256/384/512 and PS256/384/512."""
        verifier = self.verifier(keys=[self.keys.rsa.public_pem])
        self.assertEqual(verifier.algorithms, frozenset(_RSA_ALGORITHMS))
        for alg in _RSA_ALGORITHMS:
            grant = verifier.verify(signed(CLAIMS, self.keys.rsa.private_pem, alg))
            self.assertEqual(grant.identity, "alice", alg)
            self.assertEqual(grant.subscribe, ("news.*",))

    def test_ec(self) -> None:
        """EC keys verify ES256 (P-256), ES384 (P-384) and ES512 (P-521)."""
        for name, alg in (("ec256", "ES256"), ("ec384", "ES384"), ("ec521", "ES512")):
            pair = self.keys.pair(name)
            verifier = self.verifier(keys=[pair.public_pem])
            self.assertEqual(verifier.algorithms, {alg})
            grant = verifier.verify(signed(CLAIMS, pair.private_pem, alg))
            self.assertEqual(grant.identity, "alice")

    def test_eddsa(self) -> None:
        """Ed25519 and Ed448 keys verify EdDSA."""
        for name in ("ed25519", "ed448"):
            pair = self.keys.pair(name)
            verifier = self.verifier(keys=[pair.public_pem])
            self.assertEqual(verifier.algorithms, {"EdDSA"})
            grant = verifier.verify(signed(CLAIMS, pair.private_pem, "EdDSA"))
            self.assertEqual(grant.identity, "alice")

    def test_hmac(self) -> None:
        """A 64-byte secret verifies HS256, HS384 and HS512."""
        verifier = self.verifier(secret=SECRET)
        self.assertEqual(verifier.algorithms, {"HS256", "HS384", "HS512"})
        for alg in ("HS256", "HS384", "HS512"):
            self.assertEqual(verifier.verify(hs(CLAIMS, alg)).identity, "alice")

    def test_short_secret_offers_only_hs256(self) -> None:
        """
        A secret of 32 bytes is offered HS256 only: RFC 7518 asks HS384
        and HS512 for keys as long as their hash.
        """
        secret = SECRET[:MIN_SECRET_BYTES]
        verifier = self.verifier(secret=secret)
        self.assertEqual(verifier.algorithms, {"HS256"})
        self.assertEqual(verifier.verify(hs(CLAIMS, secret=secret)).identity, "alice")
        self.assertRefused(
            verifier,
            hs(CLAIMS, "HS512", secret),
            "the token's algorithm is not accepted",
        )

    def test_text_secret(self) -> None:
        """A str secret is its UTF-8 bytes: 16 e-acutes make 32 bytes."""
        verifier = self.verifier(secret="\u00e9" * 16)
        token = hs(CLAIMS, secret=("\u00e9" * 16).encode("utf-8"))
        self.assertEqual(verifier.verify(token).identity, "alice")

    def test_openssl_rs256(self) -> None:
        """An RS256 token signed by C{openssl dgst -sign} verifies."""
        verifier = self.verifier(keys=[self.keys.rsa.public_pem])
        token = openssl_rs256(CLAIMS, self.keys.rsa.private_path)
        self.assertEqual(verifier.verify(token).subscribe, ("news.*",))

    def test_openssl_es256(self) -> None:
        """
        An ES256 token signed by C{openssl dgst -sign}, its DER signature
        made raw, verifies.
        """
        verifier = self.verifier(keys=[self.keys.ec256.public_pem])
        token = openssl_es256(CLAIMS, self.keys.ec256.private_path)
        self.assertEqual(verifier.verify(token).subscribe, ("news.*",))

    def test_certificate(self) -> None:
        """A certificate's PEM gives its public key and that key's algorithms."""
        verifier = self.verifier(keys=[self.keys.certificate("ec384")])
        self.assertEqual(verifier.algorithms, {"ES384"})
        token = signed(CLAIMS, self.keys.ec384.private_pem, "ES384")
        self.assertEqual(verifier.verify(token).identity, "alice")

    def test_every_algorithm(self) -> None:
        """C{algorithms} is every algorithm of the secret and each key."""
        verifier = self.verifier(
            secret=SECRET,
            keys=[self.keys.rsa.public_pem, self.keys.ec256.public_pem],
        )
        self.assertEqual(
            verifier.algorithms,
            {"HS256", "HS384", "HS512", "ES256", *_RSA_ALGORITHMS},
        )

    def test_load_public_key(self) -> None:
        """C{load_public_key} gives each type of key its algorithms."""
        for name, algorithms in (
            ("rsa", set(_RSA_ALGORITHMS)),
            ("ec256", {"ES256"}),
            ("ec384", {"ES384"}),
            ("ec521", {"ES512"}),
            ("ed25519", {"EdDSA"}),
            ("ed448", {"EdDSA"}),
        ):
            _, found = load_public_key(self.keys.pair(name).public_pem)
            self.assertEqual(found, algorithms, name)


class RotationTests(VerifierCase):
    """Several keys: a token of any of them verifies, of no other key not."""

    def test_two_keys(self) -> None:
        """Tokens of either configured RSA key verify; a third key's do not."""
        first, second = self.keys.rsa, self.keys.pair("rsa-b", "rsa")
        third = self.keys.pair("rsa-c", "rsa")
        verifier = self.verifier(keys=[first.public_pem, second.public_pem])
        for pair in (first, second):
            token = signed(CLAIMS, pair.private_pem, "RS256")
            self.assertEqual(verifier.verify(token).identity, "alice")
        self.assertRefused(
            verifier,
            signed(CLAIMS, third.private_pem, "RS256"),
            "the token's signature does not verify",
        )

    def test_keys_of_two_types(self) -> None:
        """An RSA and an EC key: each verifies its own algorithms."""
        verifier = self.verifier(
            keys=[self.keys.rsa.public_pem, self.keys.ec256.public_pem]
        )
        for token in (
            signed(CLAIMS, self.keys.rsa.private_pem, "PS384"),
            signed(CLAIMS, self.keys.ec256.private_pem, "ES256"),
        ):
            self.assertEqual(verifier.verify(token).identity, "alice")


class AttackTests(VerifierCase):
    """The known attacks on JWT verifiers are refused."""

    def test_alg_none(self) -> None:
        """An unsigned token is refused, however C{none} is spelled."""
        for verifier in (
            self.verifier(keys=[self.keys.rsa.public_pem]),
            self.verifier(secret=SECRET),
        ):
            for alg in ("none", "None", "NONE", "nOnE"):
                self.assertRefused(
                    verifier,
                    unsigned(CLAIMS, alg),
                    "unsigned tokens (alg none) are refused",
                )

    def test_alg_none_with_a_signature(self) -> None:
        """A token saying C{alg: none} is refused even with a signature."""
        token = hs256_by_hand(CLAIMS, SECRET, {"alg": "none"})
        self.assertRefused(
            self.verifier(secret=SECRET),
            token,
            "unsigned tokens (alg none) are refused",
        )

    def test_key_confusion(self) -> None:
        """
        An HS256 token whose HMAC key is the RSA public key's PEM is
        refused by a verifier of that key: it accepts no HMAC at all.
        """
        token = hs256_by_hand(CLAIMS, self.keys.rsa.public_pem)
        self.assertRefused(
            self.verifier(keys=[self.keys.rsa.public_pem]),
            token,
            "the token's algorithm is not accepted",
        )

    def test_key_confusion_with_a_secret(self) -> None:
        """
        With a secret and the RSA key, an HMAC made with the key's PEM is
        checked against the secret only, and does not verify.
        """
        token = hs256_by_hand(CLAIMS, self.keys.rsa.public_pem)
        self.assertRefused(
            self.verifier(secret=SECRET, keys=[self.keys.rsa.public_pem]),
            token,
            "the token's signature does not verify",
        )

    def test_rs_token_secret_only(self) -> None:
        """An RS256 token is refused by a verifier of a secret only."""
        token = signed(CLAIMS, self.keys.rsa.private_pem, "RS256")
        self.assertRefused(
            self.verifier(secret=SECRET),
            token,
            "the token's algorithm is not accepted",
        )

    def test_es384_on_p256(self) -> None:
        """An ES384 token is refused by a verifier of a P-256 key only."""
        token = signed(CLAIMS, self.keys.ec384.private_pem, "ES384")
        self.assertRefused(
            self.verifier(keys=[self.keys.ec256.public_pem]),
            token,
            "the token's algorithm is not accepted",
        )

    def test_unknown_algorithm(self) -> None:
        """An algorithm nobody knows is not accepted."""
        token = hs256_by_hand(CLAIMS, SECRET, {"alg": "HS257"})
        self.assertRefused(
            self.verifier(secret=SECRET), token, "the token's algorithm is not accepted"
        )

    def test_no_algorithm(self) -> None:
        """A header without a string C{alg} is refused."""
        for header in ({"typ": "JWT"}, {"alg": 256}, {"alg": None}, {"alg": ["HS256"]}):
            self.assertRefused(
                self.verifier(secret=SECRET),
                hs256_by_hand(CLAIMS, SECRET, header),
                "the token's header names no algorithm",
            )

    def test_wrong_key(self) -> None:
        """A token signed by another key of the same type does not verify."""
        other = self.keys.pair("ec256-b", "ec256")
        self.assertRefused(
            self.verifier(keys=[self.keys.ec256.public_pem]),
            signed(CLAIMS, other.private_pem, "ES256"),
            "the token's signature does not verify",
        )

    def test_wrong_secret(self) -> None:
        """A token of another secret does not verify."""
        self.assertRefused(
            self.verifier(secret=SECRET),
            hs(CLAIMS, secret=bytes(64)),
            "the token's signature does not verify",
        )

    def test_tampered_payload(self) -> None:
        """A token whose payload was changed after signing does not verify."""
        verifier = self.verifier(keys=[self.keys.rsa.public_pem])
        header, _, signature = signed(CLAIMS, self.keys.rsa.private_pem, "RS256").split(
            b"."
        )
        forged = {"sub": "alice", "sse": {"subscribe": ["*"], "publish": ["*"]}}
        self.assertRefused(
            verifier,
            header + b"." + part(forged) + b"." + signature,
            "the token's signature does not verify",
        )

    def test_tampered_signature(self) -> None:
        """A token whose signature lost a byte does not verify."""
        token = hs(CLAIMS)
        header, payload, signature = token.split(b".")
        flipped = signature[:-2] + (b"AA" if signature[-2:] != b"AA" else b"BA")
        self.assertRefused(
            self.verifier(secret=SECRET),
            b".".join((header, payload, flipped)),
            "the token's signature does not verify",
        )


class AudienceIssuerTests(VerifierCase):
    """A configured C{aud} and C{iss} are required and must match."""

    def test_audience(self) -> None:
        """The configured audience, alone or in a list, is accepted."""
        verifier = self.verifier(secret=SECRET, audience="hub")
        for aud in ("hub", ["other", "hub"]):
            grant = verifier.verify(hs({**CLAIMS, "aud": aud}))
            self.assertEqual(grant.identity, "alice")

    def test_wrong_audience(self) -> None:
        """Another audience, a list without ours, or a bad type is refused."""
        verifier = self.verifier(secret=SECRET, audience="hub")
        for aud in ("other", ["a", "b"], 5, ["hub", 5]):
            self.assertRefused(
                verifier,
                hs({**CLAIMS, "aud": aud}),
                "the token's audience (aud) is not accepted",
            )

    def test_missing_audience(self) -> None:
        """A token without C{aud} (or an empty one) is refused when required."""
        verifier = self.verifier(secret=SECRET, audience="hub")
        for claims in (CLAIMS, {**CLAIMS, "aud": []}, {**CLAIMS, "aud": None}):
            self.assertRefused(
                verifier, hs(claims), "the token's audience (aud) is not accepted"
            )

    def test_audience_unchecked(self) -> None:
        """Without a configured audience, a token's C{aud} is not looked at."""
        grant = self.verifier(secret=SECRET).verify(hs({**CLAIMS, "aud": "x"}))
        self.assertEqual(grant.identity, "alice")

    def test_issuer(self) -> None:
        """The configured issuer is accepted."""
        verifier = self.verifier(secret=SECRET, issuer="https://id.example")
        grant = verifier.verify(hs({**CLAIMS, "iss": "https://id.example"}))
        self.assertEqual(grant.identity, "alice")

    def test_wrong_or_missing_issuer(self) -> None:
        """Another issuer, one of another type, or none is refused."""
        verifier = self.verifier(secret=SECRET, issuer="https://id.example")
        for claims in (
            {**CLAIMS, "iss": "https://evil.example"},
            {**CLAIMS, "iss": ["https://id.example"]},
            # A part of the issuer is not the issuer (CVE-2024-53861).
            {**CLAIMS, "iss": "id.example"},
            {**CLAIMS, "iss": None},
            CLAIMS,
        ):
            # PyJWT will not encode an iss of another type: sign by hand.
            self.assertRefused(
                verifier,
                hs256_by_hand(claims, SECRET),
                "the token's issuer (iss) is not accepted",
            )

    def test_both(self) -> None:
        """Audience and issuer together: both must be right."""
        verifier = self.verifier(secret=SECRET, audience="hub", issuer="id")
        good = {**CLAIMS, "aud": "hub", "iss": "id"}
        self.assertEqual(verifier.verify(hs(good)).identity, "alice")
        self.assertRefused(
            verifier,
            hs({**good, "iss": "other"}),
            "the token's issuer (iss) is not accepted",
        )
        self.assertRefused(
            verifier,
            hs({**good, "aud": "other"}),
            "the token's audience (aud) is not accepted",
        )


class TimeTests(VerifierCase):
    """C{exp} and C{nbf} are read on the injected clock, with leeway."""

    def test_expires(self) -> None:
        """A grant expires when its token stops being accepted: exp + leeway."""
        grant = self.verifier(secret=SECRET).verify(hs({**CLAIMS, "exp": NOW + 60}))
        self.assertEqual(grant.expires, NOW + 60 + DEFAULT_LEEWAY)
        self.assertIsInstance(grant.expires, float)
        grant = self.verifier(secret=SECRET, leeway=0).verify(
            hs({**CLAIMS, "exp": NOW + 60})
        )
        self.assertEqual(grant.expires, NOW + 60)

    def test_no_expiry(self) -> None:
        """A token without C{exp} makes a grant that does not expire."""
        self.assertIsNone(self.verifier(secret=SECRET).verify(hs(CLAIMS)).expires)

    def test_expired(self) -> None:
        """A token past its C{exp} and the leeway is refused."""
        self.assertRefused(
            self.verifier(secret=SECRET),
            hs({**CLAIMS, "exp": NOW - 10}),
            "the token has expired",
        )

    def test_expired_within_leeway(self) -> None:
        """A token expired less than the leeway ago is accepted."""
        token = hs({**CLAIMS, "exp": NOW - DEFAULT_LEEWAY / 2})
        self.assertEqual(self.verifier(secret=SECRET).verify(token).identity, "alice")

    def test_expired_at_the_leeway(self) -> None:
        """At C{exp} plus the leeway exactly, the token has expired."""
        token = hs({**CLAIMS, "exp": NOW - 5})
        self.assertRefused(
            self.verifier(secret=SECRET, leeway=5), token, "the token has expired"
        )
        self.assertEqual(
            self.verifier(secret=SECRET, leeway=5.5).verify(token).identity, "alice"
        )

    def test_not_before(self) -> None:
        """A token whose C{nbf} is beyond now and the leeway is refused."""
        self.assertRefused(
            self.verifier(secret=SECRET),
            hs({**CLAIMS, "nbf": NOW + 10}),
            "the token is not valid yet",
        )

    def test_not_before_within_leeway(self) -> None:
        """A token valid in less than the leeway is accepted."""
        token = hs({**CLAIMS, "nbf": NOW + DEFAULT_LEEWAY / 2})
        self.assertEqual(self.verifier(secret=SECRET).verify(token).identity, "alice")

    def test_issued_in_the_future(self) -> None:
        """C{iat} is not a time check: one in the future is accepted."""
        token = hs({**CLAIMS, "iat": NOW + 3600})
        self.assertEqual(self.verifier(secret=SECRET).verify(token).identity, "alice")

    def test_clock(self) -> None:
        """The time is the injected clock's, not the wall clock's."""
        verifier = self.verifier(secret=SECRET)
        token = hs({**CLAIMS, "nbf": NOW + 100, "exp": NOW + 200})
        self.assertRefused(verifier, token, "the token is not valid yet")
        self.clock.advance(100)
        self.assertEqual(verifier.verify(token).expires, NOW + 200 + DEFAULT_LEEWAY)

    def test_wall_clock_by_default(self) -> None:
        """Without a clock, the time is the wall clock's."""
        verifier = JWTVerifier(secret=SECRET)
        now = time.time()
        self.assertEqual(
            verifier.verify(hs({"exp": now + 3600})).expires,
            now + 3600 + DEFAULT_LEEWAY,
        )
        self.assertRefused(verifier, hs({"exp": now - 3600}), "the token has expired")


class ClaimTypeTests(VerifierCase):
    """Claims of the wrong type are refused with a reason saying which."""

    def check_table(self, table: list[tuple[dict[str, Any], str]]) -> None:
        """Each token of claims in C{table} is refused with its reason."""
        verifier = self.verifier(secret=SECRET)
        for claims, reason in table:
            self.assertRefused(verifier, hs(claims), reason)

    def test_times(self) -> None:
        """C{exp}, C{nbf} and C{iat} must be numbers, not booleans."""
        self.check_table(
            [
                ({"exp": "tomorrow"}, "the exp claim must be a number, not a string"),
                ({"exp": True}, "the exp claim must be a number, not a boolean"),
                ({"exp": None}, "the exp claim must be a number, not null"),
                ({"exp": [NOW]}, "the exp claim must be a number, not an array"),
                ({"nbf": "x"}, "the nbf claim must be a number, not a string"),
                ({"nbf": {}}, "the nbf claim must be a number, not an object"),
                ({"iat": "now"}, "the iat claim must be a number, not a string"),
            ]
        )

    def test_not_finite(self) -> None:
        """C{NaN}, C{Infinity} and integers beyond a float are refused."""
        self.check_table(
            [
                ({"exp": math.nan}, "the exp claim must be a finite number"),
                ({"exp": math.inf}, "the exp claim must be a finite number"),
                ({"nbf": -math.inf}, "the nbf claim must be a finite number"),
                ({"exp": 10**400}, "the exp claim must be a finite number"),
            ]
        )

    def test_subject(self) -> None:
        """C{sub} must be a string."""
        self.check_table(
            [
                ({"sub": 5}, "the sub claim must be a string, not a number"),
                ({"sub": None}, "the sub claim must be a string, not null"),
                ({"sub": ["a"]}, "the sub claim must be a string, not an array"),
            ]
        )

    def test_sse_not_an_object(self) -> None:
        """C{sse} must be an object."""
        self.check_table(
            [
                ({"sse": "*"}, "the sse claim must be an object"),
                ({"sse": ["news"]}, "the sse claim must be an object"),
                ({"sse": None}, "the sse claim must be an object"),
            ]
        )

    def test_sse_lists(self) -> None:
        """C{sse.subscribe} and C{sse.publish} are refused as C{check_claims} does."""
        table: list[tuple[dict[str, Any], str]] = []
        for key, value in (
            ("subscribe", "news"),
            ("subscribe", [1]),
            ("publish", {}),
            ("subscribe", ["bad name!"]),
            ("publish", None),
        ):
            what = f"sse.{key}"
            with self.assertRaises(ValueError) as raised:
                check_claims(value, what)
            self.assertTrue(str(raised.exception).startswith(what))
            table.append(({"sse": {key: value}}, str(raised.exception)))
        self.check_table(table)


class GrantTests(VerifierCase):
    """A valid token's claims make its grant."""

    def test_without_sse(self) -> None:
        """A valid token without C{sse} allows nothing."""
        grant = self.verifier(secret=SECRET).verify(hs({"sub": "bob"}))
        self.assertEqual(grant, Grant(identity="bob"))
        self.assertFalse(grant.allows(SUBSCRIBE, "news"))
        self.assertFalse(grant.allows(PUBLISH, "news"))

    def test_everything(self) -> None:
        """C{["*"]} covers every channel and pattern."""
        token = hs({"sse": {"subscribe": ["*"], "publish": ["*"]}})
        grant = self.verifier(secret=SECRET).verify(token)
        for action in (SUBSCRIBE, PUBLISH):
            for name in ("news", "news.eu", "news.*", "a.b.c.*"):
                self.assertTrue(grant.allows(action, name), (action, name))
        self.assertIsNone(grant.identity)

    def test_claims(self) -> None:
        """Each list allows its own action, other keys of C{sse} are ignored."""
        token = hs(
            {
                "sub": "carol",
                "sse": {
                    "subscribe": ["news.*", "weather"],
                    "publish": ["chat.carol"],
                    "colour": "blue",
                },
            }
        )
        grant = self.verifier(secret=SECRET).verify(token)
        self.assertEqual(
            grant,
            Grant(
                identity="carol",
                subscribe=("news.*", "weather"),
                publish=("chat.carol",),
            ),
        )
        self.assertTrue(grant.allows(SUBSCRIBE, "news.eu"))
        self.assertFalse(grant.allows(PUBLISH, "news.eu"))
        self.assertTrue(grant.allows(PUBLISH, "chat.carol"))
        self.assertFalse(grant.allows(SUBSCRIBE, "chat.carol"))

    def test_empty_sse(self) -> None:
        """An empty C{sse} object allows nothing."""
        grant = self.verifier(secret=SECRET).verify(hs({"sse": {}}))
        self.assertEqual((grant.subscribe, grant.publish), ((), ()))

    def test_jti_ignored(self) -> None:
        """Claims the hub does not use (C{jti}, C{typ} of any type) are ignored."""
        grant = self.verifier(secret=SECRET).verify(hs({**CLAIMS, "jti": 7}))
        self.assertEqual(grant.identity, "alice")


class MalformedTests(VerifierCase):
    """Whatever a client sends is refused as a 401, never a traceback."""

    def setUp(self) -> None:
        super().setUp()
        self.secret_verifier = self.verifier(secret=SECRET)

    def test_oversized(self) -> None:
        """A token one byte over the limit is refused before it is parsed."""
        calls: list[object] = []
        self.patch(jwt, "get_unverified_header", calls.append)
        self.patch(jwt, "decode", calls.append)
        valid = hs({**CLAIMS, "pad": ""})
        header, _, signature = valid.split(b".")
        token = header + b"." + b"A" * MAX_TOKEN_BYTES + b"." + signature
        self.assertRefused(
            self.secret_verifier,
            token[: MAX_TOKEN_BYTES + 1],
            f"the token is longer than {MAX_TOKEN_BYTES} bytes",
        )
        self.assertEqual(calls, [])

    def test_parts(self) -> None:
        """Anything but three dot-separated parts is refused."""
        token = hs(CLAIMS)
        for bad in (b"", b"abc", token.replace(b".", b"", 1), token + b".e30"):
            self.assertRefused(
                self.secret_verifier, bad, "the token is not three dot-separated parts"
            )

    def test_not_ascii(self) -> None:
        """A token with a byte beyond ASCII is refused."""
        token = hs(CLAIMS)
        for bad in (token + b"\xff", "\u00e9".encode() + token, b"\x80.\x80.\x80"):
            self.assertRefused(self.secret_verifier, bad, "the token is not ASCII")

    def test_malformed(self) -> None:
        """Bad base64, JSON that is not an object, or no JSON, is malformed."""
        signature = hs(CLAIMS).split(b".")[2]
        payload = part(CLAIMS)
        for bad in (
            b"..",
            b"!!!.!!!.!!!",
            b"e30.e30.!!!",
            b"eyJhbGci.e30." + signature,
            b64url(b"not json") + b"." + payload + b"." + signature,
            part(["HS256"]) + b"." + payload + b"." + signature,
            part("HS256") + b"." + payload + b"." + signature,
            part({"alg": "HS256"}) + b".%%%." + signature,
            part({"alg": "HS256", "crit": ["exp"]}) + b"." + payload + b"." + signature,
            part({"alg": "HS256", "kid": 5}) + b"." + payload + b"." + signature,
            part({"alg": "HS256", "crit": ["b64"]}) + b"." + payload + b"." + signature,
            part({"alg": "HS256"}) + b"." + payload + b"." + signature + b"+",
            part({"alg": "HS256"}) + b" ." + payload + b"." + signature,
        ):
            self.assertRefused(self.secret_verifier, bad, "the token is malformed")

    def test_nested_header(self) -> None:
        """A header nested deeper than the JSON parser goes is malformed."""
        header = b"[" * 3000 + b"]" * 3000
        token = b64url(header) + b"." + part(CLAIMS) + b"." + b64url(b"x" * 32)
        self.assertLessEqual(len(token), MAX_TOKEN_BYTES)
        self.assertRefused(self.secret_verifier, token, "the token is malformed")

    def test_nested_signed_payload(self) -> None:
        """A correctly signed payload nested too deep is malformed."""
        token = signed_raw(b'{"alg":"HS256"}', b"[" * 3000 + b"]" * 3000)
        self.assertRefused(self.secret_verifier, token, "the token is malformed")

    def test_signed_payload_not_an_object(self) -> None:
        """A correctly signed payload that is not a JSON object is malformed."""
        for payload in (b"[]", b'"sub"', b"5", b"null", b"{", b"\xff\xfe"):
            token = signed_raw(b'{"alg":"HS256"}', payload)
            self.assertRefused(self.secret_verifier, token, "the token is malformed")

    def test_detached_payload(self) -> None:
        """A token asking for a detached payload (C{b64: false}) is malformed."""
        header = b'{"alg":"HS256","b64":false,"crit":["b64"]}'
        token = signed_raw(header, b"").replace(part({}), b"")
        self.assertRefused(self.secret_verifier, token, "the token is malformed")


class CacheTests(VerifierCase):
    """Verified tokens are remembered until they expire, and only they."""

    def spy(self) -> list[bytes]:
        """The tokens C{jwt.decode} is called with from now on."""
        calls: list[bytes] = []
        decode = jwt.decode

        def spying(token: bytes, *args: Any, **kwargs: Any) -> Any:
            calls.append(token)
            return decode(token, *args, **kwargs)

        self.patch(jwt, "decode", spying)
        return calls

    def test_hit(self) -> None:
        """A token seen before gives the same grant without being decoded."""
        verifier = self.verifier(keys=[self.keys.rsa.public_pem])
        calls = self.spy()
        token = signed({**CLAIMS, "exp": NOW + 60}, self.keys.rsa.private_pem, "RS256")
        grant = verifier.verify(token)
        self.assertIs(verifier.verify(token), grant)
        self.assertIs(verifier.verify(bytes(token)), grant)
        self.assertEqual(calls, [token])

    def test_expired_hit(self) -> None:
        """A remembered token is refused once the clock passes C{exp} + leeway."""
        verifier = self.verifier(secret=SECRET, leeway=2)
        token = hs({**CLAIMS, "exp": NOW + 60})
        grant = verifier.verify(token)
        self.clock.advance(61.5)
        self.assertIs(verifier.verify(token), grant)
        self.clock.advance(0.5)
        self.assertRefused(verifier, token, "the token has expired")
        self.assertRefused(verifier, token, "the token has expired")

    def test_no_expiry(self) -> None:
        """A token without C{exp} stays remembered."""
        verifier = self.verifier(secret=SECRET)
        calls = self.spy()
        grant = verifier.verify(hs(CLAIMS))
        self.clock.advance(10 * 365 * 86400)
        self.assertIs(verifier.verify(hs(CLAIMS)), grant)
        self.assertEqual(len(calls), 1)

    def test_refusals_not_remembered(self) -> None:
        """A refused token is checked again: one not valid yet becomes valid."""
        verifier = self.verifier(secret=SECRET)
        calls = self.spy()
        token = hs({**CLAIMS, "nbf": NOW + 30})
        self.assertRefused(verifier, token, "the token is not valid yet")
        self.assertRefused(verifier, token, "the token is not valid yet")
        self.clock.advance(30)
        self.assertEqual(verifier.verify(token).identity, "alice")
        self.assertEqual(calls, [token] * 3)

    def test_bounded(self) -> None:
        """
        The cache holds C{cache_size} tokens at most, forgetting the
        oldest first.
        """
        verifier = self.verifier(secret=SECRET, cache_size=3)
        calls = self.spy()
        tokens = [hs({"sub": str(n)}) for n in range(10)]
        for token in tokens:
            verifier.verify(token)
            self.assertLessEqual(len(verifier._cache), 3)
        self.assertEqual(len(verifier._cache), 3)
        del calls[:]
        for token in tokens[-3:]:
            verifier.verify(token)
        self.assertEqual(calls, [])
        verifier.verify(tokens[0])
        self.assertEqual(calls, [tokens[0]])
        verifier.verify(tokens[8])
        self.assertEqual(calls, [tokens[0]])
        verifier.verify(tokens[7])
        self.assertEqual(calls, [tokens[0], tokens[7]])


class ConstructionTests(VerifierCase):
    """A verifier that cannot work is refused when made, naming why."""

    def assertConfigError(self, words: tuple[str, ...], **options: Any) -> None:
        """Making a verifier of C{options} raises a ValueError with C{words}."""
        with self.assertRaises(ValueError) as raised:
            JWTVerifier(**options)
        for word in words:
            self.assertIn(word, str(raised.exception))

    def test_neither(self) -> None:
        """Neither a secret nor a key is refused."""
        self.assertConfigError(("secret or keys",))
        self.assertConfigError(("secret or keys",), keys=[])

    def test_short_secret(self) -> None:
        """A secret under 32 bytes is refused, and never shown."""
        for secret in (SECRET[: MIN_SECRET_BYTES - 1], "s" * 31, b"", "\u00e9" * 15):
            with self.assertRaises(ValueError) as raised:
                JWTVerifier(secret=secret)
            self.assertIn("secret", str(raised.exception))
            self.assertIn("32", str(raised.exception))
            if len(secret) >= 8:
                self.assertNotIn(str(secret[:8]), str(raised.exception))

    def test_public_key_as_secret(self) -> None:
        """A public key's PEM given as the secret is refused."""
        self.assertConfigError(("secret", "keys"), secret=self.keys.rsa.public_pem)

    def test_private_key(self) -> None:
        """A private key is refused: the public one is asked for."""
        self.assertConfigError(
            ("keys[1]", "private", "public key"),
            keys=[self.keys.rsa.public_pem, self.keys.ec256.private_pem],
        )

    def test_small_rsa(self) -> None:
        """An RSA key under 2048 bits is refused."""
        self.assertConfigError(
            ("keys[0]", "1024", "2048"), keys=[self.keys.pair("rsa1024").public_pem]
        )

    def test_other_curve_or_type(self) -> None:
        """An EC key on another curve, or an X25519 key, is refused."""
        self.assertConfigError(
            ("keys[0]", "secp256k1"), keys=[self.keys.pair("secp256k1").public_pem]
        )
        self.assertConfigError(
            ("keys[0]", "X25519"), keys=[self.keys.pair("x25519").public_pem]
        )

    def test_garbage(self) -> None:
        """Bytes that are no PEM key are refused."""
        for data in (
            b"",
            b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA",
            b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n",
            self.keys.rsa.public_pem[:200],
        ):
            self.assertConfigError(("keys[0]",), keys=[data])

    def test_one_key_not_in_a_list(self) -> None:
        """A single PEM given as C{keys} (not in a list) is refused."""
        self.assertConfigError(("keys",), keys=self.keys.rsa.public_pem)

    def test_audience_issuer(self) -> None:
        """An empty audience or issuer is refused."""
        self.assertConfigError(("audience",), secret=SECRET, audience="")
        self.assertConfigError(("issuer",), secret=SECRET, issuer="")

    def test_leeway(self) -> None:
        """A negative or non-finite leeway is refused."""
        for leeway in (-1.0, math.inf, math.nan):
            self.assertConfigError(("leeway",), secret=SECRET, leeway=leeway)

    def test_cache_size(self) -> None:
        """A cache size under 1 is refused."""
        for size in (0, -5):
            self.assertConfigError(("cache_size",), secret=SECRET, cache_size=size)

    def test_load_public_key_names(self) -> None:
        """C{load_public_key} names the key it refuses as told."""
        with self.assertRaises(ValueError) as raised:
            load_public_key(b"nothing", "hub.pem")
        self.assertIn("hub.pem", str(raised.exception))


class FromFilesTests(VerifierCase):
    """Keys read from PEM files, each file named in what is refused."""

    def test_files(self) -> None:
        """A verifier of key files verifies their tokens, with the options."""
        verifier = JWTVerifier.from_files(
            [str(self.keys.rsa.public_path), str(self.keys.ed25519.public_path)],
            audience="hub",
            clock=self.clock,
        )
        self.assertEqual(verifier.algorithms, {"EdDSA", *_RSA_ALGORITHMS})
        token = signed({**CLAIMS, "aud": "hub"}, self.keys.ed25519.private_pem, "EdDSA")
        self.assertEqual(verifier.verify(token).identity, "alice")

    def test_missing_file(self) -> None:
        """A file that cannot be read is refused, named."""
        directory = Path(tempfile.mkdtemp(prefix="twisted-sse-jwt-"))
        self.addCleanup(os.rmdir, directory)
        with self.assertRaises(ValueError) as raised:
            JWTVerifier.from_files(
                [str(self.keys.rsa.public_path), str(directory / "gone.pem")]
            )
        self.assertIn("gone.pem", str(raised.exception))

    def test_private_key_file(self) -> None:
        """A file holding a private key is refused, named."""
        with self.assertRaises(ValueError) as raised:
            JWTVerifier.from_files([str(self.keys.rsa.private_path)])
        self.assertIn(self.keys.rsa.private_path.name, str(raised.exception))
        self.assertIn("private", str(raised.exception))


def _json() -> st.SearchStrategy[Any]:
    """Any JSON value."""
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )


def _claims() -> st.SearchStrategy[dict[str, Any]]:
    """Claims whose registered names come often, with values of any type."""
    names = st.sampled_from(["exp", "nbf", "iat", "sub", "aud", "iss", "sse", "jti"])
    sse = st.fixed_dictionaries(
        {},
        optional={
            "subscribe": _json() | st.lists(st.text(max_size=10), max_size=3),
            "publish": _json() | st.lists(st.sampled_from(["*", "a", "a.*"])),
        },
    )
    values = _json() | sse | st.floats(NOW - 10, NOW + 10)
    return st.dictionaries(names | st.text(max_size=6), values, max_size=6)


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=."


class HostileTests(SynchronousTestCase):
    """Whatever the token, the verifier answers a grant or a 401 refusal."""

    def setUp(self) -> None:
        clock = Clock()
        clock.advance(NOW)
        self.verifier = JWTVerifier(
            secret=SECRET, audience="hub", issuer="id", clock=clock
        )
        self.open_verifier = JWTVerifier(secret=SECRET, clock=clock)

    def check(self, verifier: JWTVerifier, token: bytes) -> Grant | None:
        """C{verifier}'s answer to C{token}: a grant, or None for a 401."""
        try:
            return verifier.verify(token)
        except Refused as refused:
            self.assertEqual((refused.code, refused.error), (401, "invalid_token"))
            assert_discreet(token, refused.reason)
            return None

    @settings(max_examples=300, deadline=None)
    @given(token=st.binary(max_size=300))
    def test_bytes(self, token: bytes) -> None:
        """Arbitrary bytes are refused with a 401."""
        self.assertIsNone(self.check(self.verifier, token))

    @settings(max_examples=300, deadline=None)
    @given(token=st.text(max_size=200))
    def test_text(self, token: str) -> None:
        """Arbitrary text, as UTF-8, is refused with a 401."""
        self.assertIsNone(self.check(self.verifier, token.encode("utf-8")))

    @settings(max_examples=300, deadline=None)
    @given(token=st.text(alphabet=_ALPHABET, max_size=200))
    def test_token_alphabet(self, token: str) -> None:
        """Text of a token's characters, dots included, is refused with a 401."""
        self.assertIsNone(self.check(self.verifier, token.encode("ascii")))

    @settings(max_examples=300, deadline=None)
    @given(header=_json(), payload=_json())
    def test_signed_json(self, header: Any, payload: Any) -> None:
        """Any JSON header and payload, correctly signed, is a grant or a 401."""
        if isinstance(header, dict):
            header["alg"] = "HS256"
        token = signed_raw(
            json.dumps(header).encode("utf-8"), json.dumps(payload).encode("utf-8")
        )
        self.check(self.open_verifier, token)
        self.check(self.verifier, token)

    @settings(max_examples=500, deadline=None)
    @given(claims=_claims())
    def test_signed_claims(self, claims: dict[str, Any]) -> None:
        """
        Any claims, correctly signed, make a grant or a 401; a grant only
        for claims of the right types, on time.
        """
        token = signed_raw(b'{"alg":"HS256"}', json.dumps(claims).encode("utf-8"))
        grant = self.check(self.open_verifier, token)
        if grant is not None:
            self.assertEqual(grant.identity, claims.get("sub"))
            exp = claims.get("exp")
            if exp is not None:
                self.assertGreater(exp + DEFAULT_LEEWAY, NOW)
            self.assertIsInstance(claims.get("sse", {}), dict)
        self.check(self.verifier, token)
