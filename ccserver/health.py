"""
Readiness: whether this process can issue tokens now, for
C{GET /health/ready} (a load balancer's or Kubernetes' readiness probe).

Ready means the store answers a read within C{[store] timeout} and a
signing key is loaded.  The answer is kept for a second, and probes that
arrive while a check is in flight wait for that check, so a storm of probes
costs the store one read a second at most.

The public listener serves the probe, so its answer says only what is
wrong ("store unavailable", "no signing key"): the store's error names its
host, port and database, which are no one else's business.  The detail
goes to the log, once each time readiness is lost, and a line when it is
back.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ccserver.interfaces import IClientStore
from ccserver.keys import Keyring

#: Seconds a readiness answer is reused.
CACHE_SECONDS = 1.0

#: The client id read to learn that the store answers: no client has it
#: (registered ids are random), so the read is the cheapest a store has.
PROBE_CLIENT_ID = "ccserver-health-probe"

#: The public reasons for not being ready.
STORE_UNAVAILABLE = "store unavailable"
NO_SIGNING_KEY = "no signing key"


@frozen
class NotReady:
    """
    Why this process cannot issue tokens now.

    @ivar reason: what the probe's answer says (L{STORE_UNAVAILABLE},
        L{NO_SIGNING_KEY}).
    @ivar detail: what the log says: the store's own error, which may name
        its address and database.
    """

    reason: str
    detail: str


class Readiness:
    """
    @param store: the store itself, not a cache in front of it.
    @param timeout: seconds the store may take to answer.
    """

    _log = Logger()

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
        self._not_ready: NotReady | None = None
        self._checking: list[Deferred[NotReady | None]] | None = None

    def check(self) -> Deferred[NotReady | None]:
        """
        Fires with L{None} when ready, or with why not.
        """
        if self._clock.seconds() < self._checked_at + self._cache_seconds:
            return succeed(self._not_ready)
        waiter: Deferred[NotReady | None] = Deferred()
        if self._checking is not None:
            self._checking.append(waiter)
            return waiter
        self._checking = [waiter]
        ensureDeferred(self._check()).addCallback(self._checked)
        return waiter

    def _checked(self, not_ready: NotReady | None) -> None:
        if not_ready != self._not_ready:
            if not_ready is not None:
                self._log.warn(
                    "Not ready ({reason}): {detail}",
                    reason=not_ready.reason,
                    detail=not_ready.detail,
                )
            else:
                self._log.info("Ready again: the store answers and a signing key is loaded")
        self._not_ready = not_ready
        self._checked_at = self._clock.seconds()
        waiters, self._checking = self._checking or [], None
        for waiter in waiters:
            waiter.callback(not_ready)

    async def _check(self) -> NotReady | None:
        read: Deferred[Any] = maybeDeferred(self._store.get_client, PROBE_CLIENT_ID)
        read.addTimeout(self._timeout, self._clock)
        try:
            await read
        except DeferredTimeout:
            return NotReady(
                STORE_UNAVAILABLE, f"the store did not answer within {self._timeout} s"
            )
        except Exception as e:
            # A timeout, or the store's own error: either way it did not answer.
            return NotReady(STORE_UNAVAILABLE, f"the store did not answer: {e or type(e).__name__}")
        try:
            _ = self._keyring.current
        except LookupError as e:
            return NotReady(NO_SIGNING_KEY, str(e))
        return None
