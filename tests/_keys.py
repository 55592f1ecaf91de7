"""
Keys and tokens for the signed-token tests, made the way an operator and a
token issuer outside Python would make them: key pairs with the
``openssl`` command (``genpkey``, then ``pkey -pubout``), and tokens signed
by ``openssl dgst`` or by hand (an HMAC over any bytes, an unsigned token),
for the attacks a library would refuse to encode.

:func:`keys` makes the pairs once per process, in a temporary directory
removed at exit; without ``openssl`` it skips the test (fails it under CI).
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import hmac
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from attrs import frozen

from ._tools import require_program

#: ``openssl genpkey`` arguments of each kind of key :meth:`Keys.pair` makes.
KINDS: dict[str, tuple[str, ...]] = {
    "rsa": ("-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"),
    "rsa1024": ("-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"),
    "ec256": ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"),
    "ec384": ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"),
    "ec521": ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"),
    "secp256k1": ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:secp256k1"),
    "ed25519": ("-algorithm", "ED25519"),
    "ed448": ("-algorithm", "ED448"),
    "x25519": ("-algorithm", "X25519"),
}


@frozen
class KeyPair:
    """
    A private key and its public key, as PEM files and their bytes.

    :ivar private_path: The private key (PKCS #8 PEM).
    :ivar public_path: Its public key (SubjectPublicKeyInfo PEM).
    """

    private_path: Path
    public_path: Path
    private_pem: bytes
    public_pem: bytes


def _openssl(*arguments: str | Path, given: bytes = b"") -> bytes:
    """What ``openssl arguments`` writes, fed ``given``; raises if it fails."""
    program = require_program("openssl", "apt-get install openssl")
    return subprocess.run(
        [program, *map(str, arguments)],
        input=given,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout


class Keys:
    """
    Key pairs made by ``openssl`` in ``directory``, each made the first
    time it is asked for and kept.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._pairs: dict[str, KeyPair] = {}

    def pair(self, name: str, kind: str | None = None) -> KeyPair:
        """
        The key pair called ``name``, of ``kind`` (a key of :data:`KINDS`;
        ``name`` itself when ``None``): another name makes another key of
        the same kind (``pair("rsa-b", "rsa")``, for rotation).
        """
        found = self._pairs.get(name)
        if found is None:
            private = self.directory / f"{name}.pem"
            public = self.directory / f"{name}.pub.pem"
            _openssl("genpkey", *KINDS[kind or name], "-out", private)
            _openssl("pkey", "-in", private, "-pubout", "-out", public)
            found = KeyPair(private, public, private.read_bytes(), public.read_bytes())
            self._pairs[name] = found
        return found

    def certificate(self, name: str) -> bytes:
        """A self-signed X.509 certificate (PEM) of the pair ``name``."""
        pair = self.pair(name)
        path = self.directory / f"{name}.crt.pem"
        if not path.exists():
            _openssl(
                "req",
                "-new",
                "-x509",
                "-key",
                pair.private_path,
                "-subj",
                "/CN=tokens.example",
                "-days",
                "1",
                "-out",
                path,
            )
        return path.read_bytes()

    @property
    def rsa(self) -> KeyPair:
        """An RSA 2048 pair."""
        return self.pair("rsa")

    @property
    def ec256(self) -> KeyPair:
        """An EC pair on P-256."""
        return self.pair("ec256")

    @property
    def ec384(self) -> KeyPair:
        """An EC pair on P-384."""
        return self.pair("ec384")

    @property
    def ed25519(self) -> KeyPair:
        """An Ed25519 pair."""
        return self.pair("ed25519")


_shared: list[Keys] = []


def keys() -> Keys:
    """
    The keys this process's tests share, in a directory removed at exit.

    :raises unittest.SkipTest: without ``openssl`` (an ``AssertionError``
        under CI).
    """
    require_program("openssl", "apt-get install openssl")
    if not _shared:
        directory = Path(tempfile.mkdtemp(prefix="twisted-sse-keys-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        _shared.append(Keys(directory))
    return _shared[0]


def b64url(data: bytes) -> bytes:
    """``data`` in unpadded base64url, as JWS writes every part."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def part(value: Any) -> bytes:
    """A JSON value as a token's header or payload part."""
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def signing_input(payload: Any, header: Any) -> bytes:
    """What a JWS signs: the header's part, a dot, the payload's part."""
    return part(header) + b"." + part(payload)


def openssl_rs256(payload: Any, key_path: Path) -> bytes:
    """An RS256 token of ``payload`` signed by ``openssl dgst -sign``."""
    signed = signing_input(payload, {"alg": "RS256", "typ": "JWT"})
    signature = _openssl("dgst", "-sha256", "-sign", key_path, given=signed)
    return signed + b"." + b64url(signature)


def openssl_es256(payload: Any, key_path: Path) -> bytes:
    """
    An ES256 token of ``payload`` signed by ``openssl dgst -sign``, whose
    DER signature becomes JWS's raw ``r || s`` (RFC 7518, section 3.4).
    """
    from cryptography.hazmat.primitives.asymmetric.utils import (
        decode_dss_signature,
    )

    signed = signing_input(payload, {"alg": "ES256", "typ": "JWT"})
    der = _openssl("dgst", "-sha256", "-sign", key_path, given=signed)
    r, s = decode_dss_signature(der)
    return signed + b"." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def hs256_by_hand(payload: Any, secret: bytes, header: Any | None = None) -> bytes:
    """
    A token of ``payload`` whose signature is the HMAC-SHA256 of any
    ``secret`` (a public key's PEM, for the key-confusion attack), under
    ``header`` (``{"alg": "HS256", "typ": "JWT"}`` by default).
    """
    if header is None:
        header = {"alg": "HS256", "typ": "JWT"}
    signed = signing_input(payload, header)
    signature = hmac.new(secret, signed, hashlib.sha256).digest()
    return signed + b"." + b64url(signature)


def unsigned(payload: Any, alg: str = "none") -> bytes:
    """An unsigned token of ``payload`` (an empty signature) under ``alg``."""
    return signing_input(payload, {"alg": alg, "typ": "JWT"}) + b"."
