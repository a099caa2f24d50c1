"""
Readiness: whether this process can issue tokens now, for
C{GET /health/ready} (a load balancer's or Kubernetes' readiness probe).

Ready means the store answers a read within C{[store] timeout} and a
signing key is loaded.  The answer is kept for a second, and probes that
arrive while a check is in flight wait for that check, so a storm of probes
costs the store one read a second at most.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime

from ccserver.interfaces import IClientStore
from ccserver.keys import Keyring

#: Seconds a readiness answer is reused.
CACHE_SECONDS = 1.0

#: The client id read to learn that the store answers: no client has it
#: (registered ids are random), so the read is the cheapest a store has.
PROBE_CLIENT_ID = "ccserver-health-probe"


class Readiness:
    """
    @param store: the store itself, not a cache in front of it.
    @param timeout: seconds the store may take to answer.
    """

    def __init__(
        self,
        store: IClientStore,
        keyring: Keyring,
        clock: IReactorTime,
        timeout: float,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self._store = store
        self._keyring = keyring
        self._clock = clock
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._checked_at = float("-inf")
        self._reason: str | None = None
        self._checking: list[Deferred[str | None]] | None = None

    def check(self) -> Deferred[str | None]:
        """
        Fires with L{None} when ready, or with why not.
        """
        if self._clock.seconds() < self._checked_at + self._cache_seconds:
            return succeed(self._reason)
        waiter: Deferred[str | None] = Deferred()
        if self._checking is not None:
            self._checking.append(waiter)
            return waiter
        self._checking = [waiter]
        ensureDeferred(self._check()).addCallback(self._checked)
        return waiter

    def _checked(self, reason: str | None) -> None:
        self._reason = reason
        self._checked_at = self._clock.seconds()
        waiters, self._checking = self._checking or [], None
        for waiter in waiters:
            waiter.callback(reason)

    async def _check(self) -> str | None:
        read: Deferred[Any] = maybeDeferred(self._store.get_client, PROBE_CLIENT_ID)
        read.addTimeout(self._timeout, self._clock)
        try:
            await read
        except DeferredTimeout:
            return f"the store did not answer within {self._timeout} s"
        except Exception as e:
            # A timeout, or the store's own error: either way it did not answer.
            return f"the store did not answer: {e or type(e).__name__}"
        try:
            _ = self._keyring.current
        except LookupError as e:
            return str(e)
        return None
