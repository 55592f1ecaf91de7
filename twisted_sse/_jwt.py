"""
Signed tokens (JWT, checked with PyJWT): the keys a hub trusts, the
algorithms they allow, and the :class:`~twisted_sse._auth.Grant` a valid
token's claims make.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime

from ._auth import Grant, Refused

__all__ = ["DEFAULT_CACHE_SIZE", "DEFAULT_LEEWAY", "JWTVerifier", "load_public_key"]

#: Seconds of clock skew allowed for ``exp`` and ``nbf``.
DEFAULT_LEEWAY = 1.0
#: Verified tokens remembered, so that a reconnection costs a lookup.
DEFAULT_CACHE_SIZE = 10_000
#: The shortest HMAC secret (RFC 7518, section 3.2).
MIN_SECRET_BYTES = 32


def load_public_key(data: bytes, name: str = "key") -> tuple[Any, frozenset[str]]:
    """A PEM public key and the algorithms it verifies."""
    raise NotImplementedError


class JWTVerifier:
    """Checks signed tokens and turns their claims into grants."""

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
        raise NotImplementedError

    @property
    def algorithms(self) -> frozenset[str]:
        """Every algorithm some key accepts."""
        raise NotImplementedError

    def verify(self, token: bytes) -> Grant:
        """The grant of a valid ``token``."""
        raise Refused(401, "not implemented", error="invalid_token")
