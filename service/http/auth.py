"""Bearer tokens: which configured token, if any, a request's `Authorization` header carries."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence


def _digest(token: bytes) -> bytes:
    # Comparing fixed-size digests keeps the comparison's time independent of the tokens' lengths too.
    return hashlib.sha256(token).digest()


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token or b" " in token:
        return None
    return token


class Authenticator:
    """Knows the configured tokens by digest only and compares in constant time."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("an Authenticator needs at least one token")
        self._digests = tuple(_digest(token.encode()) for token in tokens)

    def identify(self, authorization: bytes | None) -> int | None:
        """The 1-based index of the token the header carries, or None (missing, malformed or unknown)."""
        token = bearer_token(authorization)
        if token is None:
            return None
        presented = _digest(token)
        found: int | None = None
        # every token is compared, a match or not, so the time taken does not tell which one matched
        for index, digest in enumerate(self._digests, 1):
            if hmac.compare_digest(presented, digest) and found is None:
                found = index
        return found
