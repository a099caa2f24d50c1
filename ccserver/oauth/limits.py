"""
Brute-force limits: failed authentication counted per source, and an
optional per-client limit on token issuance.  Nothing here knows of HTTP:
the source address arrives as a plain string (L{ccserver.web} finds it,
believing C{X-Forwarded-For} only from C{[limits] trusted_proxies}).

What is counted, and under which key:

  - a failed client authentication (C{invalid_client}: a wrong secret, an
    unknown client, the wrong method) per (C{client_id}, source): another
    client behind the same address, or the same client elsewhere, is not
    affected, and a success of one client resets nothing of another's;
  - a failed master-token or registration-access-token attempt per source.

Past C{budget} failures in a window (C{[limits] failed_auth_per_minute}),
that key is refused with 429 until the window ends, before its credentials
are checked: a refused attacker learns nothing more, not even whether a
guess was right.

Where the counts live, and what it costs:

  - the count is the store's (L{IAuthFailureStore.count_failure}: Redis
    C{INCR} with an expiry in one script, an upsert in SQL, a dict in
    memory), so instances and workers sharing a store count together;
  - only a failure writes.  The check before authenticating reads a
    per-process "blocked until" table, filled when a failure's count
    reaches the budget: a success costs a dict lookup, no round trip.
  - The trade-off: a key blocked through instance A is blocked on B only
    at B's next failure from it (which counts past the budget and is
    refused).  An attacker spreading guesses over N processes gets at most
    N - 1 guesses more than the budget per window, not N times the budget.

The 429 answer (RFC 6585 §4: "the user has sent too many requests in a
given amount of time"; C{Retry-After} says how long to wait) carries the
error code C{invalid_request}.  RFC 6749 §5.2 and RFC 6750 §3.1 (the bearer
endpoints) both register it, so every client library can read it; the
status and C{Retry-After} say what it is.  No registered code fits better:
C{slow_down} (RFC 8628 §3.5) tells a device-flow client to poll 5 s more
slowly, and C{temporarily_unavailable} (RFC 6749 §4.1.2.1) is the
authorization endpoint's stand-in for 503, a server condition, not the
caller's.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ccserver.errors import OAuthError
from ccserver.interfaces import IAuthFailureStore

T = TypeVar("T")

#: What was limited, as C{ccserver_rate_limited_total{what}} names it.
CLIENT_AUTH = "client_auth"
BEARER_TOKEN = "bearer_token"
TOKEN_ISSUANCE = "token_issuance"

#: The most entries a per-process table keeps (about 100 bytes each).
MAX_ENTRIES = 100_000


def too_many_requests(description: str, retry_after: float) -> OAuthError:
    """
    RFC 6585 §4: 429, with C{Retry-After} in whole seconds (RFC 9110
    §10.2.3), never less than 1.
    """
    seconds = max(1, math.ceil(retry_after))
    return OAuthError(
        "invalid_request",
        f"{description}; try again in {seconds} s",
        status=429,
        headers={"Retry-After": str(seconds)},
    )


def _failure_key(kind: str, *parts: str) -> str:
    """
    The store's key for a count: a digest, so that a client id of any
    length or character, chosen by a stranger, costs the store 64 bytes.
    """
    text = "\x00".join((kind, *parts))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _bounded(table: dict[str, float], now: float) -> None:
    """
    Keep a per-process table under L{MAX_ENTRIES}: drop what has ended,
    then, if still full, the oldest entries (insertion order is age order).
    """
    if len(table) < MAX_ENTRIES:
        return
    for key in [k for k, until in table.items() if until <= now]:
        del table[key]
    while len(table) >= MAX_ENTRIES:
        del table[next(iter(table))]


class AuthLimits:
    """
    Counts failed authentication and refuses a key past its budget.

    @param store: where failures are counted, or None for no limits.
    @param on_limited: called with L{CLIENT_AUTH} or L{BEARER_TOKEN} for
        every refusal (the metrics' C{rate_limited(what)}).
    """

    def __init__(
        self,
        store: IAuthFailureStore | None,
        now: Callable[[], float],
        budget: int = 10,
        window: float = 60.0,
        on_limited: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._now = now
        self._budget = budget
        self._window = window
        self._on_limited = on_limited
        #: failure key -> when its block ends, in this process
        self._blocked: dict[str, float] = {}

    async def client(
        self, client_id: str, source: str, attempt: Callable[[], Awaitable[T]]
    ) -> T:
        """
        C{attempt}'s result (client authentication), unless C{client_id}
        from C{source} is over its budget; an C{invalid_client} failure is
        counted.
        """
        return await self._guarded(
            _failure_key(CLIENT_AUTH, client_id, source),
            CLIENT_AUTH,
            "too many failed authentication attempts for this client from this address",
            "invalid_client",
            attempt,
        )

    async def bearer(self, source: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """
        C{attempt}'s result (a master-token or registration-access-token
        check), unless C{source} is over its budget; an C{invalid_token}
        failure is counted.
        """
        return await self._guarded(
            _failure_key(BEARER_TOKEN, source),
            BEARER_TOKEN,
            "too many failed bearer token attempts from this address",
            "invalid_token",
            attempt,
        )

    async def _guarded(
        self,
        key: str,
        what: str,
        description: str,
        counted_error: str,
        attempt: Callable[[], Awaitable[T]],
    ) -> T:
        if self._store is None:
            return await attempt()
        until = self._blocked.get(key)
        if until is not None:
            left = until - self._now()
            if left > 0:
                raise self._refused(what, description, left)
            del self._blocked[key]
        try:
            return await attempt()
        except OAuthError as error:
            if error.error != counted_error:
                raise
            failures, until = await self._store.count_failure(key, self._now(), self._window)
            if failures < self._budget:
                raise
            now = self._now()
            _bounded(self._blocked, now)
            self._blocked[key] = until
            if failures == self._budget:
                # the last failure the budget allows is answered as itself
                raise
            raise self._refused(what, description, until - now) from None

    def _refused(self, what: str, description: str, left: float) -> OAuthError:
        if self._on_limited is not None:
            self._on_limited(what)
        return too_many_requests(description, left)


class IssuanceLimit:
    """
    C{[limits] tokens_per_client_per_second}: a token bucket per client, in
    this process, refilled at C{rate} tokens a second and holding at most
    C{max(1, rate)}.

    Per process, not in the store: counting in the store would cost every
    token a round trip, which is what the limit protects.  With N processes
    (C{--workers}, instances) a client may get up to N times the rate.

    @param on_limited: called with L{TOKEN_ISSUANCE} for every refusal.
    """

    def __init__(
        self,
        rate: float,
        now: Callable[[], float],
        on_limited: Callable[[str], None] | None = None,
    ) -> None:
        self._rate = rate
        self._burst = max(1.0, rate)
        self._now = now
        self._on_limited = on_limited
        #: client_id -> (tokens left, when last counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client_id: str) -> None:
        """
        Take one token from the client's bucket.

        @raise OAuthError: 429 with C{Retry-After} when it is empty.
        """
        now = self._now()
        left, then = self._buckets.get(client_id, (self._burst, now))
        left = min(self._burst, left + (now - then) * self._rate)
        if left < 1:
            self._buckets[client_id] = (left, now)
            if self._on_limited is not None:
                self._on_limited(TOKEN_ISSUANCE)
            raise too_many_requests(
                f"this client may be issued {self._rate:g} tokens a second",
                (1 - left) / self._rate,
            )
        if client_id not in self._buckets and len(self._buckets) >= MAX_ENTRIES:
            # a full bucket is the same as none: forget those first
            for key in [k for k, (n, t) in self._buckets.items()
                        if n + (now - t) * self._rate >= self._burst]:
                del self._buckets[key]
            while len(self._buckets) >= MAX_ENTRIES:
                del self._buckets[next(iter(self._buckets))]
        self._buckets[client_id] = (left - 1, now)
