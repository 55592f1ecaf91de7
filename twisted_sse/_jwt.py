"""
Signed tokens (JWT, checked with PyJWT): the keys a hub trusts, the
algorithms they allow, and the :class:`~twisted_sse._auth.Grant` a valid
token's claims make.

The checks are the ones RFC 8725 asks of a verifier: the algorithm comes
from the keys configured, never from the token (so ``none`` and an HMAC
made with a public key are refused), and each key verifies only the
algorithms of its type.  Times are read from an injected clock, so that a
grant ends on the same clock as the streams it opened.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import HMACAlgorithm
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ._auth import MAX_TOKEN_BYTES, Grant, Refused, check_claims

if TYPE_CHECKING:
    # Not at run time: PyJWT before 2.11 has no Options.
    from jwt.types import Options

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_LEEWAY",
    "MIN_SECRET_BYTES",
    "JWTVerifier",
    "PublicKey",
    "load_public_key",
]

#: Seconds of clock skew allowed for ``exp`` and ``nbf``.
DEFAULT_LEEWAY = 1.0
#: Verified tokens remembered, so that a reconnection costs a lookup.
DEFAULT_CACHE_SIZE = 10_000
#: The shortest HMAC secret (RFC 7518, section 3.2).
MIN_SECRET_BYTES = 32

#: The public keys a token's signature can be checked with.
PublicKey = (
    rsa.RSAPublicKey
    | ec.EllipticCurvePublicKey
    | ed25519.Ed25519PublicKey
    | ed448.Ed448PublicKey
)

#: The smallest RSA modulus accepted, in bits (RFC 7518, section 3.3).
_MIN_RSA_BITS = 2048
_RSA = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_CURVES = {
    "secp256r1": frozenset({"ES256"}),
    "secp384r1": frozenset({"ES384"}),
    "secp521r1": frozenset({"ES512"}),
}
_EDDSA = frozenset({"EdDSA"})
# RFC 7518, section 3.2: an HMAC key at least as long as the hash's output.
# A secret too short for HS384 or HS512 is not offered them.
_HMAC = (("HS256", 32), ("HS384", 48), ("HS512", 64))

#: The bytes of a JWS in compact form: base64url (padded by some issuers)
#: and the dots between its parts.
_TOKEN_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=."

_log = Logger()

# What a client is told; fixed, so that no part of a token is echoed.
_TOO_LONG = f"the token is longer than {MAX_TOKEN_BYTES} bytes"
_NOT_ASCII = "the token is not ASCII"
_NOT_COMPACT = "the token is not three dot-separated parts"
_MALFORMED = "the token is malformed"
_NO_ALGORITHM = "the token's header names no algorithm"
_UNSIGNED = "unsigned tokens (alg none) are refused"
_ALGORITHM = "the token's algorithm is not accepted"
_SIGNATURE = "the token's signature does not verify"
_AUDIENCE = "the token's audience (aud) is not accepted"
_ISSUER = "the token's issuer (iss) is not accepted"
_EXPIRED = "the token has expired"
_NOT_YET = "the token is not valid yet"
_SSE = "the sse claim must be an object"


def _invalid(reason: str) -> Refused:
    return Refused(401, reason, error="invalid_token")


def load_public_key(data: bytes, name: str = "key") -> tuple[PublicKey, frozenset[str]]:
    """
    A PEM public key (or the public key of an X.509 certificate in PEM)
    and the algorithms it verifies: ``RS*`` and ``PS*`` for RSA, ``ES256``,
    ``ES384`` or ``ES512`` for an EC key on P-256, P-384 or P-521,
    ``EdDSA`` for Ed25519 and Ed448.

    :param name: Names the key in messages (a file name, ``keys[0]``).
    :raises ValueError: naming ``name``, for anything else: not PEM, a
        private key, an RSA key under 2048 bits, another curve or type.
    """
    if not isinstance(data, bytes) or b"-----BEGIN " not in data:
        raise ValueError(f"{name} is not a PEM public key or certificate")
    if b"PRIVATE KEY-----" in data:
        raise ValueError(
            f"{name} holds a private key: give the public key "
            "(openssl pkey -in private.pem -pubout); the hub never needs "
            "the private one"
        )
    key: object
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{name} is not a PEM public key or certificate that can be read"
        ) from e
    except Exception as e:  # cryptography's UnsupportedAlgorithm, among others
        raise ValueError(f"{name} holds a key of a type that is not supported") from e
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise ValueError(
                f"{name} is an RSA key of {key.key_size} bits: at least "
                f"{_MIN_RSA_BITS} are needed"
            )
        return key, _RSA
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithms = _CURVES.get(key.curve.name)
        if algorithms is None:
            raise ValueError(
                f"{name} is an EC key on {key.curve.name}: only P-256, P-384 "
                "and P-521 are supported (ES256, ES384, ES512)"
            )
        return key, algorithms
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return key, _EDDSA
    raise ValueError(
        f"{name} holds a key of another type ({type(key).__name__}): only RSA, "
        "EC (P-256, P-384, P-521), Ed25519 and Ed448 keys are supported"
    )


def _secret_bytes(secret: str | bytes) -> tuple[bytes, frozenset[str]]:
    """The secret as bytes and the HMAC algorithms it is long enough for."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes):
        raise ValueError(f"secret must be str or bytes, not {type(secret).__name__}")
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"secret is {len(secret)} bytes long: an HMAC secret needs at "
            f"least {MIN_SECRET_BYTES} (RFC 7518, section 3.2)"
        )
    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except jwt.InvalidKeyError:
        # An asymmetric key as an HMAC secret is the key-confusion attack's
        # premise: whoever has the public key could sign.
        raise ValueError(
            "secret is a PEM, SSH or DER key: a public key goes in keys, not in secret"
        ) from None
    return secret, frozenset(alg for alg, least in _HMAC if len(secret) >= least)


def _number(claims: dict[str, Any], claim: str) -> float | None:
    """
    The NumericDate ``claim`` as a finite float, or ``None`` when absent.

    :raises Refused: for any other JSON value.
    """
    value = claims.get(claim)
    if value is None and claim not in claims:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return number
        raise _invalid(f"the {claim} claim must be a finite number")
    raise _invalid(f"the {claim} claim must be a number, not {_json_type(value)}")


def _json_type(value: object) -> str:
    """A JSON value's type, as the client wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a number"


class JWTVerifier:
    """
    Checks signed tokens (JWS compact form) with the keys it is given and
    turns their claims into grants.

    A token is accepted when its signature verifies with a configured key
    of its algorithm, its ``aud`` and ``iss`` are the ones configured (when
    they are), it has not expired (``exp``) and is valid already
    (``nbf``), with ``leeway`` seconds of skew for both.  Its ``sse`` claim
    says what it allows::

        {"sub": "alice", "exp": 1767225600,
         "sse": {"subscribe": ["news.*"], "publish": ["chat.alice"]}}

    ``sse.presence`` lists the channels whose presence it may read, where
    the hub asks for that claim (``presence_claim``).  A valid token
    without ``sse`` allows nothing.  The grant's ``expires``
    is when the token stops being accepted: its ``exp`` plus the leeway;
    the streams it opened end then.  Verified tokens are
    remembered (up to ``cache_size``, by a hash of the token) until they
    expire, so that a client reconnecting with the same token costs a
    lookup.

    :param secret: An HMAC secret (HS256; HS384 and HS512 when it is at
        least 48 and 64 bytes long), ``str`` ones encoded as UTF-8.
    :param keys: PEM public keys or certificates (see
        :func:`~twisted_sse.load_public_key`); several for key rotation.
    :param audience: The ``aud`` a token must name, or ``None`` to not look
        at ``aud``.
    :param issuer: The ``iss`` a token must have, or ``None``.
    :param leeway: Seconds of clock skew allowed for ``exp`` and ``nbf``.
    :param clock: Tells the time; the wall clock when ``None``.
    :param cache_size: How many verified tokens are remembered.
    :raises ValueError: naming the parameter, for neither a secret nor a
        key, a secret shorter than :data:`~twisted_sse.MIN_SECRET_BYTES`, a key that
        :func:`~twisted_sse.load_public_key` refuses, an empty ``audience`` or
        ``issuer``, a negative or infinite ``leeway``, a ``cache_size``
        under 1.
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        keys: Sequence[bytes] = (),
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = DEFAULT_LEEWAY,
        clock: IReactorTime | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if secret is None and not keys:
            raise ValueError(
                "secret or keys is needed: an HMAC secret or a public key to "
                "verify tokens with"
            )
        if isinstance(keys, (bytes, str)):
            raise ValueError("keys must be a sequence of PEM keys, not one key")
        for field, value in (("audience", audience), ("issuer", issuer)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{field} must be a non-empty string (or None)")
        if (
            isinstance(leeway, bool)
            or not isinstance(leeway, (int, float))
            or not math.isfinite(leeway)
            or leeway < 0
        ):
            raise ValueError("leeway must be a finite number of seconds, 0 or more")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int):
            raise ValueError("cache_size must be an integer")
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")

        candidates: dict[str, list[PublicKey | bytes]] = {}
        if secret is not None:
            prepared, hmacs = _secret_bytes(secret)
            for alg in sorted(hmacs):
                candidates.setdefault(alg, []).append(prepared)
        for index, data in enumerate(keys):
            key, algorithms = load_public_key(data, f"keys[{index}]")
            for alg in sorted(algorithms):
                candidates.setdefault(alg, []).append(key)
        #: The keys to try for each algorithm, in the order configured.
        self._candidates = {alg: tuple(found) for alg, found in candidates.items()}
        self._algorithms = frozenset(self._candidates)

        self.audience = audience
        self.issuer = issuer
        self.leeway = float(leeway)
        self.clock = clock
        self.cache_size = cache_size
        self._seconds: Callable[[], float] = (
            clock.seconds if clock is not None else time.time
        )
        # PyJWT checks the signature and aud; iss and the times are checked
        # here, the times on self.clock.  Claims the hub does not use (sub is checked
        # here, jti not at all) are not PyJWT's to refuse.
        self._options: Options = {
            "verify_signature": True,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": audience is not None,
            # iss is compared here: PyJWT 2.10.0 took a str issuer for a
            # sequence and accepted any substring of it (CVE-2024-53861).
            "verify_iss": False,
            "verify_sub": False,
            "verify_jti": False,
            "require": ["aud"] if audience is not None else [],
            "enforce_minimum_key_length": True,
        }
        #: blake2b(token) -> (its grant, the time it stops being accepted),
        #: oldest inserted first.
        self._cache: dict[bytes, tuple[Grant, float]] = {}

    @classmethod
    def from_files(cls, paths: Sequence[str], **options: Any) -> JWTVerifier:
        """
        A verifier of the PEM public keys (or certificates) in the files
        at ``paths``, with the other ``options`` of :class:`JWTVerifier`.

        :raises ValueError: naming the file, for one that cannot be read
            or holds no key that :func:`~twisted_sse.load_public_key` accepts.
        """
        keys = []
        for path in paths:
            name = os.path.basename(path) or path
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise ValueError(f"{name} cannot be read: {e.strerror}") from None
            load_public_key(data, name)
            keys.append(data)
        return cls(keys=keys, **options)

    @property
    def algorithms(self) -> frozenset[str]:
        """Every algorithm some key (or the secret) accepts."""
        return self._algorithms

    def verify(self, token: bytes) -> Grant:
        """
        The grant of ``token``, once its signature and claims are checked.

        :raises Refused: ``401`` with ``error="invalid_token"`` and a short
            reason that holds no part of the token.
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise self._refused(_TOO_LONG)
        digest = hashlib.blake2b(token, digest_size=16).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            if self._seconds() < cached[1]:
                return cached[0]
            del self._cache[digest]
            raise self._refused(_EXPIRED)
        grant = self._check(token)
        cache = self._cache
        if len(cache) >= self.cache_size:
            del cache[next(iter(cache))]
        expires = grant.expires
        cache[digest] = (grant, math.inf if expires is None else expires)
        return grant

    def _refused(self, reason: str) -> Refused:
        _log.debug("A JWT is refused: {reason}", reason=reason)
        return _invalid(reason)

    def _check(self, token: bytes) -> Grant:
        """Everything :meth:`verify` checks of a token it has not seen."""
        if not token.isascii():
            raise self._refused(_NOT_ASCII)
        if token.count(b".") != 2:
            raise self._refused(_NOT_COMPACT)
        if token.translate(None, _TOKEN_BYTES):
            # Checked here, not left to PyJWT: before 2.10.1 it decoded
            # base64 leniently, skipping what is not of the alphabet.
            raise self._refused(_MALFORMED)
        try:
            header = jwt.get_unverified_header(token)
        except Exception:
            raise self._refused(_MALFORMED) from None
        if not isinstance(header, dict):
            raise self._refused(_MALFORMED)
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise self._refused(_NO_ALGORITHM)
        if "crit" in header:
            # RFC 7515, section 4.1.11: a token whose critical extensions
            # are not understood is invalid, and none are here (b64: false
            # needs a payload sent apart).  PyJWT 2.10 did not look.
            raise self._refused(_MALFORMED)
        if alg.lower() == "none":
            raise self._refused(_UNSIGNED)
        keys = self._candidates.get(alg)
        if keys is None:
            raise self._refused(_ALGORITHM)
        try:
            claims = self._decode(token, alg, keys)
            return self._grant(claims)
        except Refused as refused:
            _log.debug("A JWT is refused: {reason}", reason=refused.reason)
            raise

    def _decode(
        self, token: bytes, alg: str, keys: tuple[PublicKey | bytes, ...]
    ) -> dict[str, Any]:
        """
        The claims of ``token``, whose signature one of ``keys`` verifies
        and whose ``aud`` names the audience configured.

        :raises Refused: otherwise.
        """
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    audience=self.audience,
                    options=self._options,
                )
            except jwt.InvalidSignatureError:
                continue  # Perhaps the next key (rotation).
            except (jwt.MissingRequiredClaimError, jwt.InvalidAudienceError):
                raise _invalid(_AUDIENCE) from None
            except jwt.InvalidAlgorithmError:
                raise _invalid(_ALGORITHM) from None
            except Exception:
                # Hostile input gets as far as PyJWT's parsers: whatever
                # they raise (DecodeError, but also RecursionError or
                # binascii.Error on some inputs) is a malformed token.
                raise _invalid(_MALFORMED) from None
            if not isinstance(claims, dict):
                raise _invalid(_MALFORMED)
            return claims
        raise _invalid(_SIGNATURE)

    def _grant(self, claims: dict[str, Any]) -> Grant:
        """
        The grant of verified ``claims``, once their ``iss``, times,
        ``sub`` and ``sse`` are checked.

        :raises Refused: for another issuer, claims of the wrong type, or
            out of time.
        """
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise _invalid(_ISSUER)
        expires = _number(claims, "exp")
        not_before = _number(claims, "nbf")
        _number(claims, "iat")
        subject = claims.get("sub")
        if "sub" in claims and not isinstance(subject, str):
            raise _invalid(f"the sub claim must be a string, not {_json_type(subject)}")
        now = self._seconds()
        if expires is not None and now >= expires + self.leeway:
            raise _invalid(_EXPIRED)
        if not_before is not None and now + self.leeway < not_before:
            raise _invalid(_NOT_YET)
        # The grant ends when the token stops being accepted, so that a
        # stream it opened ends exactly when a reconnection with it would be
        # refused.
        if expires is not None:
            expires += self.leeway
        if "sse" not in claims:
            return Grant(identity=subject, expires=expires)
        sse = claims["sse"]
        if not isinstance(sse, dict):
            raise _invalid(_SSE)
        try:
            subscribe = check_claims(sse.get("subscribe", ()), "sse.subscribe")
            publish = check_claims(sse.get("publish", ()), "sse.publish")
            presence = check_claims(sse.get("presence", ()), "sse.presence")
        except ValueError as e:
            raise _invalid(str(e)) from None
        return Grant(
            identity=subject,
            subscribe=subscribe,
            publish=publish,
            presence=presence,
            expires=expires,
        )
