"""
Secrets: generation, digests and constant-time checks.

Every secret ccserver makes has at least 256 random bits, so a SHA-256 digest
compared with L{hmac.compare_digest} is as safe as a slow key-derivation
function and far cheaper on the token path (bench/README.md, "Measurements
behind design choices").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence

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


#: An opaque access token: the milliseconds since the epoch when it was made
#: (6 bytes), then 256 random bits, as URL-safe base64 without padding.
OPAQUE_TOKEN = re.compile(r"[A-Za-z0-9_-]{51}\Z")


def new_opaque_token(now: float) -> str:
    """
    A new opaque access token, made at C{now} (seconds since the epoch).

    The time in front makes L{opaque_token_key} ordered by time, so that the
    tokens stored together land together at the end of the store's index,
    instead of each on a page of its own at random: far fewer pages written
    a commit (bench/README.md, "Measurements behind design choices").  It
    tells the holder when the token was made, as C{expires_in} nearly does.
    """
    stamp = int(now * 1000).to_bytes(6, "big")
    raw = stamp + secrets.token_bytes(SECRET_BYTES)
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def opaque_token_key(token: str) -> str:
    """
    The key an opaque access token is stored under: its time (12 hex
    digits) and its digest, for a token of L{new_opaque_token}; its digest
    alone for anything else (tokens made before the time was added, and any
    string a client sends), which is then simply not found.
    """
    if OPAQUE_TOKEN.match(token):
        return base64.urlsafe_b64decode(token[:8]).hex() + digest(token)
    return digest(token)


def check(secret: str, expected_digest: str | None) -> bool:
    """
    Whether C{secret} has the digest C{expected_digest}, in constant time
    (L{matches} of one digest).  With no expected digest the same work is
    done and the answer is False.
    """
    return matches(secret, (expected_digest,))[0]


def matches(secret: str, expected_digests: Sequence[str | None]) -> tuple[bool, ...]:
    """
    Whether C{secret} has each of C{expected_digests}: the secret digested
    once, every digest compared in constant time
    (None against the stand-in), so that the time taken shows neither
    which matched nor which was None.
    """
    presented = digest(secret)
    return tuple(
        [
            hmac.compare_digest(presented, expected or _NO_DIGEST) and expected is not None
            for expected in expected_digests
        ]
    )
