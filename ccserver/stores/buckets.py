"""
The token bucket of L{ccserver.interfaces.IRateLimitStore}, as the memory
and SQL stores count it (the Redis store counts the same in Lua).
"""

from __future__ import annotations

from attrs import frozen

from ccserver.model import TokenGrant

#: What a float sum may miss a whole token by (1.0 counted as 0.9999...).
_ROUNDING = 1e-9


@frozen
class Bucket:
    """
    A bucket as a store keeps it: the tokens it holds (a fraction: it fills
    continuously), when they were counted, and when it is full again if
    left alone (seconds since the epoch), after which it may be forgotten.
    """

    tokens: float
    counted: float
    full_at: float


def take(
    bucket: Bucket | None,
    tokens_per_second: float,
    burst: int,
    wanted: int,
    now: float,
) -> tuple[Bucket, TokenGrant]:
    """
    The bucket filled for the time since it was counted (a bucket never
    counted is full; a clock behind its count fills nothing), then
    C{wanted} whole tokens taken, or as many as it holds; the bucket as it
    is then, and what was taken.
    """
    if bucket is None:
        tokens, counted = float(burst), now
    else:
        tokens, counted = bucket.tokens, bucket.counted
        if now > counted:
            tokens += (now - counted) * tokens_per_second
            counted = now
    tokens = min(tokens, float(burst))
    taken = min(wanted, int(tokens + _ROUNDING))
    tokens = max(0.0, tokens - taken)
    retry_after = 0.0 if taken == wanted else max(0.0, 1 - tokens) / tokens_per_second
    full_at = counted + (burst - tokens) / tokens_per_second
    return Bucket(tokens, counted, full_at), TokenGrant(taken, retry_after)
