"""
Secrets: generation, digests and constant-time checks.

Every secret ccserver makes has at least 256 random bits, so a SHA-256 digest
compared with L{hmac.compare_digest} is as safe as a slow key-derivation
function and thousands of times cheaper on the token path.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

#: Random bytes in a client secret or a registration access token.
SECRET_BYTES = 32

#: A digest that no secret has, compared against when there is no client, so
#: that an unknown client costs the same as a wrong secret.
_NO_DIGEST = "0" * 64


def new_secret(nbytes: int = SECRET_BYTES) -> str:
    """
    A new secret of C{nbytes} random bytes (256 bits by default), URL-safe
    base64 without padding.
    """
    return secrets.token_urlsafe(nbytes)


def new_client_id() -> str:
    """
    A new client identifier: 128 random bits, URL-safe.
    """
    return secrets.token_urlsafe(16)


def digest(secret: str) -> str:
    """
    The SHA-256 digest of a secret, as hex.
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check(secret: str, expected_digest: str | None) -> bool:
    """
    Whether C{secret} has the digest C{expected_digest}, in constant time.
    With no expected digest the same work is done and the answer is False.
    """
    matches = hmac.compare_digest(digest(secret), expected_digest or _NO_DIGEST)
    return matches and expected_digest is not None
