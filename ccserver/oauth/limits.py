"""
Brute-force limits: how many credential checks one credential may be put
to, from one source and from everyone, and the optional per-client limit
on token issuance.  Nothing here knows of HTTP: the source address arrives
as a plain string (L{ccserver.web} finds it, believing C{X-Forwarded-For}
only from C{[limits] trusted_proxies}).

What is limited (a "credential" below):

  - a client's authentication (secret, assertion, certificate) at the
    token, introspection and revocation endpoints, by C{client_id};
  - a client's registration access token at C{/client-reg/{id}}, by
    C{client_id}, apart from the master token, so that guessing one never
    uses the other's budget;
  - the master token (at C{/client-reg}, the rotation endpoint, and as a
    bearer token at introspection and revocation).  It is also accepted at
    C{/client-reg/{id}}: tried there, it has a counter per source of its
    own and shares the master token's cap, so that the many client ids do
    not multiply the guesses it can be put to.

The rules, each kept in the store (L{IAuthAttemptStore}) so that every
worker and instance sharing it keeps them together:

  1. Reserve, then check.  Each check first reserves a slot in the
     counter of (credential, source): at most C{budget} slots in a window
     (C{[limits] failed_auth_per_minute}, a minute).  Over budget, the
     request is refused with 429 and its credentials are not checked: a
     refused attacker learns nothing, not even whether a guess was right.
     However many requests arrive at once, no more than C{budget} checks
     happen in a window for one (credential, source).
  2. A failed check keeps its slot; a successful one gives it back.
  3. A cap across sources: each check from a source not known for the
     credential also reserves a slot in the credential's cap (C{[limits]
     failed_auth_per_client_per_minute}); past it, such sources are refused
     until the window ends.  A source is known for C{known_for} seconds
     (C{[limits] known_source_seconds}) after it used the credential
     successfully, recorded in the store: distributed guessing cannot lock a
     service out of its usual addresses.

What it costs (the hot path: a cached client's successful request):

  - Slots a process has reserved and that succeeded are kept by it until
    their window ends (less L{LEASE_MARGIN}): its next checks of that
    (credential, source) take one of them, with no store round trip, and
    give it back to itself.  A slot is kept only if the counter held no
    more than C{budget // 2} slots once it was reserved, so the slots kept
    by all processes together are at most half the budget.  In the
    window's last L{LEASE_MARGIN} seconds no slot is kept: the kept slots
    nobody uses are parked for the checks of those seconds, as is each
    slot reserved then once its check has succeeded (under the same two
    conditions, and only without a slot of the cap), and the process
    forgets them as the window ends, when the store does too
    (L{AuthLimits._hand_on}).  Those seconds once cost a reservation and
    a release a request, one after another in the store, and every request
    of a steady client queued behind them once a minute.  A slot given
    back counts as in use here until the store has it, so that a request
    woken meanwhile waits rather than being refused for it.  A client
    authenticating from one address thus costs one reservation per
    process per minute, and one release when it records the known source.
    The slots it keeps count against the budget like checks under way: an
    attacker at the same address as the client gets the rest.
  - Within a process, one reservation per counter is under way at a time;
    requests that find no free slot wait for one (a burst of a client's
    own requests is not refused for being many), and fail with the
    refusal once the store refuses and no check of theirs is under way.
  - A refusal is remembered for L{RECHECK_SECONDS}, so that a refused
    attacker's next requests cost no round trip.
  - When the store cannot be reached, the process counts on its own
    (C{fallback}, the same rules per process) for L{STORE_RETRY_SECONDS},
    then tries the store again: clients keep authenticating through a store
    outage, each process within its own budget.

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
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ccserver import audit
from ccserver.errors import OAuthError, StoreUnavailable
from ccserver.interfaces import IAuthAttemptStore, IRateLimitStore
from ccserver.model import (
    AttemptKeys,
    AttemptRelease,
    Client,
    Reservation,
    TokenGrant,
    TokenRateLimit,
)

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

#: What was limited, as C{ccserver_rate_limited_total{what}} names it.
CLIENT_AUTH = "client_auth"
BEARER_TOKEN = "bearer_token"
TOKEN_ISSUANCE = "token_issuance"

#: The most entries a per-process table keeps (each a key and a few numbers).
MAX_ENTRIES = 100_000

#: A process stops keeping slots this many seconds before their window
#: ends; in those seconds the slots it holds are parked, each used by one
#: check at a time and forgotten at the window's end (L{AuthLimits._hand_on}).
#: Instances whose clocks differ by less may take a parked slot after
#: another has begun the next window: such a check counts in the window
#: its slot was reserved in.  A failed check uses its slot up, so this
#: lets at most C{budget // 2} failures a window end go uncounted in the
#: next (the slots parked by all processes together), and only between
#: instances whose clocks differ.
LEASE_MARGIN = 2.0

#: How long a process remembers a refusal before it asks the store again.
RECHECK_SECONDS = 1.0

#: How long a process counts on its own after the store failed to answer.
STORE_RETRY_SECONDS = 5.0


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


@frozen
class Credential:
    """
    A credential as the limits count it.
    """

    #: names its counters (one per source)
    name: str
    #: names its cap and known sources: the routes to one credential share them
    cap_name: str
    #: the C{OAuthError.error} of a failed check
    counted_error: str
    #: the C{what} of C{ccserver_rate_limited_total}
    what: str
    #: the 429's description when the counter refuses
    this_address: str
    #: the 429's description when the cap refuses
    new_addresses: str
    #: the audit trail's C{credential} of its blocks
    audit_name: str


CLIENT = Credential(
    "client",
    "client",
    "invalid_client",
    CLIENT_AUTH,
    "too many failed authentication attempts for this client from this address",
    "too many failed authentication attempts for this client from addresses "
    "it has not authenticated from recently",
    "client",
)
REGISTRATION_ACCESS_TOKEN = Credential(
    "registration",
    "registration",
    "invalid_token",
    BEARER_TOKEN,
    "too many failed registration access token attempts for this client from this address",
    "too many failed registration access token attempts for this client from addresses "
    "it has not been used from recently",
    "registration_access_token",
)
MASTER_TOKEN = Credential(
    "master",
    "master",
    "invalid_token",
    BEARER_TOKEN,
    "too many failed master token attempts from this address",
    "too many failed master token attempts from addresses it has not been used from recently",
    "master_token",
)
#: the master token tried at C{/client-reg/{id}}
MASTER_TOKEN_AT_CLIENT = Credential(
    "master at /client-reg/{id}",
    "master",
    "invalid_token",
    BEARER_TOKEN,
    "too many failed master token attempts from this address",
    "too many failed master token attempts from addresses it has not been used from recently",
    "master_token",
)
#: initial access tokens (RFC 7591 §3), tried at C{POST /client-reg} with the
#: master token: one counter per source for all of them (no identity is
#: known before the token is found), and one cap
INITIAL_ACCESS_TOKEN = Credential(
    "initial access token",
    "initial access token",
    "invalid_token",
    BEARER_TOKEN,
    "too many failed initial access token attempts from this address",
    "too many failed initial access token attempts from addresses none has been used "
    "from recently",
    "initial_access_token",
)


def _digest(*parts: str) -> str:
    """
    A store key: a digest, so that a client id of any length or character,
    chosen by a stranger, costs the store 64 bytes.
    """
    text = "\x00".join(parts)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _bounded(table: dict[K, V], now: float, until: Callable[[V], float]) -> None:
    """
    Keep a per-process table under L{MAX_ENTRIES}: drop what has ended
    (C{until} of an entry tells when it does), then, if still full, the
    oldest entries (insertion order is age order).
    """
    if len(table) < MAX_ENTRIES:
        return
    for key in [k for k, value in table.items() if until(value) <= now]:
        del table[key]
    while len(table) >= MAX_ENTRIES:
        del table[next(iter(table))]


@frozen
class _Refusal:
    """
    Why a counter or a cap refused, and until when.
    """

    credential: Credential
    capped: bool
    retry_at: float


class _Share:
    """
    This process's slots of one counter (a credential from one source),
    and the counter's store keys, made once.
    """

    __slots__ = (
        "name", "keys", "ends", "leased", "free", "busy", "reserving", "waiters",
        "releasing", "handed",
    )

    def __init__(self, name: tuple[str, str, str], keys: AttemptKeys) -> None:
        self.name = name
        self.keys = keys
        #: the end of the window the kept slots are counted in
        self.ends = 0.0
        #: slots kept between checks, and those of them not in use
        self.leased = 0
        self.free = 0
        #: slots in use by checks under way, kept ones or not
        self.busy = 0
        #: whether a reservation is under way
        self.reserving = False
        #: requests waiting for a slot
        self.waiters: deque[Deferred[None]] = deque()
        #: slots of successful checks being given back to the store: they
        #: count as in use until the store has them back
        self.releasing = 0
        #: slots of successful checks handed to the requests waiting here,
        #: or parked for the next, and the kept slots parked, in a window's
        #: last L{LEASE_MARGIN} seconds (where slots are not kept): the next
        #: check uses one as it is, still counted in the store, rather than
        #: reserve one and give the other back (L{AuthLimits._hand_on})
        self.handed: deque[_Slot] = deque()

    def idle(self) -> bool:
        return not (
            self.leased or self.busy or self.reserving or self.waiters or self.releasing
            or self.handed
        )


class _Slot:
    """
    A slot a check runs in: one this process keeps (C{reservation} None),
    or one just reserved in C{store}.
    """

    __slots__ = ("credential", "share", "ends", "store", "reservation")

    def __init__(
        self,
        credential: Credential,
        share: _Share,
        ends: float,
        store: IAuthAttemptStore,
        reservation: Reservation | None = None,
    ) -> None:
        self.credential = credential
        self.share = share
        self.ends = ends
        self.store = store
        self.reservation = reservation


#: How the client credential's counters name a workload identity (a
#: workload token's failures are counted by the identity it names, whichever
#: client it aims at): this, its issuer and its subject, joined by NULs.
_WORKLOAD = "federated"


def workload_key(issuer: str, subject: str) -> str:
    """
    The identity the client credential's counters count a workload
    token's failures by.
    """
    return f"{_WORKLOAD}\x00{issuer}\x00{subject}"


def _identity_fields(identity: str) -> dict[str, object]:
    """
    What the audit trail says a block is about: the client, or the
    workload identity (L{workload_key}).
    """
    kind, nul, rest = identity.partition("\x00")
    if nul and kind == _WORKLOAD:
        issuer, _, subject = rest.partition("\x00")
        return {"workload": audit.workload(issuer, subject or None)}
    return {"client_id": identity or None}


class AuthLimits:
    """
    Reserves a slot before each credential check, within the budgets.

    @param store: where the slots are counted, or None for no limits.
    @param budget: slots per (credential, source) in a window.
    @param window: seconds.
    @param cap: slots per credential from sources not known for it, in a
        window; 0 for no cap.
    @param known_for: seconds a source stays known after a success.
    @param on_limited: called with L{CLIENT_AUTH} or L{BEARER_TOKEN} for
        every refusal (the metrics' C{rate_limited(what)}).
    @param fallback: where this process counts on its own while C{store}
        cannot be reached (a L{ccserver.stores.memory.MemoryStore}); None
        to fail such requests with the store's error instead.
    @param clock: tells the audit trail when a block ends (its
        C{limits.block_ended}); without one, only its start is told.

    The audit trail hears of each block once per process: the first
    refusal of a counter (a credential from one source) or a cap in a
    window is a C{limits.block_started}, and its window's end a
    C{limits.block_ended}.
    """

    _log = Logger()

    def __init__(
        self,
        store: IAuthAttemptStore | None,
        now: Callable[[], float],
        budget: int = 10,
        window: float = 60.0,
        on_limited: Callable[[str], None] | None = None,
        *,
        cap: int = 0,
        known_for: float = 86400.0,
        fallback: IAuthAttemptStore | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self._store = store
        self._now = now
        self._budget = budget
        self._window = window
        self._cap = cap
        self._known_for = known_for
        self._on_limited = on_limited
        self._fallback = fallback
        #: the most slots of one counter this process holds at once
        self._per_process = max(1, budget // 2)
        #: (credential, identity, source) -> this process's slots of its counter
        self._shares: dict[tuple[str, str, str], _Share] = {}
        #: (credential, identity, source) -> a refusal remembered, and until when
        self._refusals: dict[tuple[str, str, str], tuple[_Refusal, float]] = {}
        #: known-source key -> until when this process has recorded it
        self._known: dict[str, float] = {}
        #: when L{_share} next drops the counters whose kept slots have ended
        self._next_sweep = 0.0
        #: until when the store is taken as unreachable (0: it answers)
        self._store_down_until = 0.0
        #: whether a reservation is trying the store again after an outage
        self._probing = False
        self._clock = clock
        #: the blocks this process has told the audit trail of -> until when
        self._blocks: dict[tuple[str, ...], float] = {}

    # the credentials

    def client(
        self, client_id: str, source: str, attempt: Callable[[], Awaitable[T]]
    ) -> Coroutine[Any, Any, T]:
        """
        C{attempt}'s result (client authentication), within C{client_id}'s
        budgets from C{source}; an C{invalid_client} failure keeps its slot.
        (L{_guarded}'s coroutine itself: a coroutine that only awaited it
        was a layer more on every request.)
        """
        return self._guarded(CLIENT, client_id, source, attempt)

    async def master(self, source: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """
        C{attempt}'s result (a master-token check), within the master
        token's budgets from C{source}; an C{invalid_token} failure keeps
        its slot.
        """
        return await self._guarded(MASTER_TOKEN, "", source, attempt)

    async def registration(
        self,
        client_id: str,
        source: str,
        attempt: Callable[[bool, bool], Awaitable[tuple[T, bool]]],
    ) -> tuple[T, bool]:
        """
        A check at C{/client-reg/{client_id}}, where the client's
        registration access token and the master token are both accepted:
        C{attempt(registration_access_token, master_token)} is told which
        of the two may be tried (the other's budget may be spent), and
        returns its result and whether the master token matched.

        Refused only when neither may be tried.  A failure keeps both
        slots; if one of the two could not be tried, the failure is
        answered with that one's refusal (429), since its credential may
        have been the right one.
        """
        return await self._either(
            REGISTRATION_ACCESS_TOKEN, client_id, MASTER_TOKEN_AT_CLIENT, source, attempt
        )

    async def initial_registration(
        self,
        source: str,
        attempt: Callable[[bool, bool], Awaitable[tuple[T, bool]]],
    ) -> tuple[T, bool]:
        """
        A check at C{POST /client-reg}, where an initial access token and
        the master token are both accepted: as L{registration}, with
        C{attempt(initial_access_token, master_token)}.  A wrong token
        counts against both: the initial access tokens' counter from
        C{source}, and the master token's own (the one its other routes
        share).
        """
        return await self._either(INITIAL_ACCESS_TOKEN, "", MASTER_TOKEN, source, attempt)

    async def _either(
        self,
        first: Credential,
        identity: str,
        master: Credential,
        source: str,
        attempt: Callable[[bool, bool], Awaitable[tuple[T, bool]]],
    ) -> tuple[T, bool]:
        if self._store is None:
            return await attempt(True, True)
        own = await self._slot(first, identity, source)
        try:
            other = await self._slot(master, "", source)
        except BaseException:
            if isinstance(own, _Slot):
                await self._give_back(own)
            raise
        slots = [slot for slot in (own, other) if isinstance(slot, _Slot)]
        refusals = [refusal for refusal in (own, other) if isinstance(refusal, _Refusal)]
        if not slots:
            raise self._limited(refusals[0])
        try:
            result, is_master = await attempt(isinstance(own, _Slot), isinstance(other, _Slot))
        except OAuthError as error:
            if error.error != "invalid_token":
                for slot in slots:
                    await self._give_back(slot)
                raise
            for slot in slots:
                self._failed(slot)
            if refusals:
                raise self._limited(refusals[0]) from None
            raise
        except BaseException:
            for slot in slots:
                await self._give_back(slot)
            raise
        for slot in slots:
            matched = (slot.credential is master) == is_master
            recording = self._succeeded(slot, known=matched)
            if recording is not None:
                await recording
        return result, is_master

    async def _guarded(
        self,
        credential: Credential,
        identity: str,
        source: str,
        attempt: Callable[[], Awaitable[T]],
    ) -> T:
        if self._store is None:
            return await attempt()
        share = self._share(credential, identity, source)
        # the hot path: a slot this process keeps, taken without a wait
        slot = self._kept_slot(credential, share, self._now())
        if slot is None:
            got = await self._acquire(credential, share)
            if isinstance(got, _Refusal):
                raise self._limited(got)
            slot = got
        try:
            result = await attempt()
        except OAuthError as error:
            if error.error != credential.counted_error:
                await self._give_back(slot)
                raise
            self._failed(slot)
            raise
        except BaseException:
            await self._give_back(slot)
            raise
        recording = self._succeeded(slot, known=True)
        if recording is not None:
            await recording
        return result

    async def _slot(self, credential: Credential, identity: str, source: str) -> _Slot | _Refusal:
        share = self._share(credential, identity, source)
        return self._kept_slot(credential, share, self._now()) or await self._acquire(
            credential, share
        )

    def _limited(self, refusal: _Refusal) -> OAuthError:
        if self._on_limited is not None:
            self._on_limited(refusal.credential.what)
        credential = refusal.credential
        description = credential.new_addresses if refusal.capped else credential.this_address
        return too_many_requests(description, refusal.retry_at - self._now())

    # slots

    def keys(self, credential: Credential, identity: str, source: str) -> AttemptKeys:
        """
        The store keys of C{credential} (whose C{identity}) tried from
        C{source}.
        """
        return AttemptKeys(
            counter=_digest("counter", credential.name, identity, source),
            budget=self._budget,
            cap=_digest("cap", credential.cap_name, identity) if self._cap else None,
            cap_budget=self._cap,
            known=_digest("known", credential.cap_name, identity, source),
        )

    def counters(self) -> int:
        """
        How many counters this process holds now: those with slots kept or
        checks under way (and those whose kept slots ended less than a
        window ago).
        """
        return len(self._shares)

    def _share(self, credential: Credential, identity: str, source: str) -> _Share:
        name = (credential.name, identity, source)
        share = self._shares.get(name)
        if share is None:
            now = self._now()
            if now >= self._next_sweep:
                self._sweep(now)
            if len(self._shares) >= MAX_ENTRIES:
                self._forget_shares()
            share = self._shares[name] = _Share(name, self.keys(credential, identity, source))
        return share

    def _sweep(self, now: float) -> None:
        """
        Drop the counters whose kept slots have ended and that nothing here
        uses, once a window: a credential seen once (a client since
        deleted, a secret since rotated, a source gone) would otherwise
        keep its counter in this process until the table is full.  Their
        next use would start afresh anyway (L{_kept_slot}).
        """
        self._next_sweep = now + self._window
        for name in [name for name, share in self._shares.items() if self._ended(share, now)]:
            del self._shares[name]

    @staticmethod
    def _ended(share: _Share, now: float) -> bool:
        if share.busy or share.reserving or share.waiters or share.releasing:
            return False
        if share.handed and now < share.handed[-1].ends:
            # slots parked for the window's last seconds
            return False
        return not share.leased or now >= share.ends - LEASE_MARGIN

    def _forget_shares(self) -> None:
        """
        Make room in the table: forget counters nothing here uses, those
        whose kept slots have ended first.  Slots kept by a counter
        forgotten stay counted in the store until their window ends.
        """
        now = self._now()
        idle = [s for s in self._shares.values() if not (s.busy or s.reserving or s.waiters)]
        idle.sort(key=lambda share: share.ends > now)
        for share in idle[: max(1, len(idle) // 2)]:
            del self._shares[share.name]

    def _kept_slot(self, credential: Credential, share: _Share, now: float) -> _Slot | None:
        """
        A slot this process keeps and nobody here uses, if any.
        """
        if share.leased and now >= share.ends - LEASE_MARGIN:
            # their window is ending: the kept slots nobody uses are parked
            # for the checks of its last seconds (L{_hand_on}), and
            # forgotten with it (the store forgets them then); those in use
            # go back to the store as their checks succeed
            # (kept slots are the store's alone, never the fallback's)
            store = self._store
            if now < share.ends and store is not None:
                parked = Reservation(True, 1, share.ends)
                for _ in range(share.free):
                    share.handed.append(_Slot(credential, share, share.ends, store, parked))
            share.leased = share.free = 0
        if not share.free:
            return None
        share.free -= 1
        share.busy += 1
        return _Slot(credential, share, share.ends, self._store_for(now))

    async def _acquire(self, credential: Credential, share: _Share) -> _Slot | _Refusal:
        """
        A slot for one check: one this process keeps, or one reserved in
        the store (or a refusal).  One reservation per counter is under way
        at a time in this process, and it holds at most C{budget // 2}
        slots of a counter at once; a request that can have neither waits
        until a slot is given back, or a check fails, and tries again.
        """
        while True:
            now = self._now()
            kept = self._kept_slot(credential, share, now)
            if kept is not None:
                return kept
            handed = self._handed_slot(share, now)
            if handed is not None:
                return handed
            remembered = self._refusals.get(share.name)
            if remembered is not None:
                if remembered[1] > now:
                    return remembered[0]
                del self._refusals[share.name]
            if not share.reserving and share.busy + share.releasing < self._per_process:
                reserved, store = await self._reserve(share, now)
                if reserved.granted:
                    share.busy += 1
                    self._wake(share)
                    return _Slot(credential, share, reserved.ends, store, reserved)
                if not (share.busy or share.releasing):
                    ends = reserved.cap_ends if reserved.capped else None
                    refusal = _Refusal(credential, reserved.capped, ends or reserved.ends)
                    self._tell_block(share, refusal, now)
                    _bounded(self._refusals, now, lambda entry: entry[1])
                    self._refusals[share.name] = (
                        refusal,
                        min(refusal.retry_at, now + RECHECK_SECONDS),
                    )
                    self._wake(share)
                    self._forget_if_idle(share)
                    return refusal
                # a check under way here may give its slot back (or one
                # given back may reach the store): wait for it
            waiter: Deferred[None] = Deferred()
            share.waiters.append(waiter)
            await waiter

    @staticmethod
    def _handed_slot(share: _Share, now: float) -> _Slot | None:
        """
        A reserved slot a successful check handed on (L{_hand_on}), if one
        is still in its window; those whose window has ended are dropped
        (the store counts them no more).
        """
        while share.handed:
            slot = share.handed.popleft()
            if now < slot.ends:
                share.busy += 1
                return slot
        return None

    def _hand_on(self, slot: _Slot, now: float) -> bool:
        """
        Whether a successful check's reserved slot goes on to a request
        waiting here, rather than back to the store: in the last
        L{LEASE_MARGIN} seconds of its window, where no slot is kept, every
        check would otherwise reserve a slot and give it back, one
        reservation at a time, two store round trips each, and the requests
        of a busy client queued behind them for those seconds (a p99 of
        1-2 s once a minute on SQLite and PostgreSQL, bench/README.md).
        The slot stays counted in the store, in the window it was reserved
        in, as it would have been for the waiting check's own reservation
        (which, in those seconds, is counted in the same window); its cap
        slot goes with it.  The last check to use it gives it back.

        With no request waiting, the slot waits for the next (parked, in
        C{share.handed}) rather than go back: a client whose requests
        come one after another, each checked before the next arrives,
        otherwise reserved and gave back a slot for each, two store writes
        a request for those seconds, every one of the client's requests
        queued behind them (and on SQLite every token's write too).  The
        store forgets it as the window ends, when L{_handed_slot} drops it.
        Only as slots are kept (L{_succeeded}): a slot of a known source
        (no cap slot to give back), reserved while the counter held no
        more than C{budget // 2}, so that the slots parked by every process
        stay within half the budget.
        """
        share = slot.share
        in_margin = slot.ends - LEASE_MARGIN <= now < slot.ends
        if not (in_margin and slot.store is self._store):
            return False
        if not share.waiters:
            reserved = slot.reservation
            parkable = (
                reserved is not None
                and reserved.cap_ends is None
                and reserved.count <= self._per_process
            )
            if not parkable:
                return False
        share.handed.append(slot)
        return True

    async def _reserve(
        self, share: _Share, now: float
    ) -> tuple[Reservation, IAuthAttemptStore]:
        """
        A reservation in the store, or in the fallback while the store
        cannot be reached; and which of the two it is in.
        """
        share.reserving = True
        try:
            store = self._store_for(now)
            # after an outage, one reservation at a time tries the store
            probe = store is self._store and self._store_down_until > 0
            self._probing = self._probing or probe
            try:
                reserved = await store.reserve_attempt(share.keys, now, self._window)
            except StoreUnavailable:
                if self._fallback is None or store is self._fallback:
                    raise
                self._store_down_until = self._now() + STORE_RETRY_SECONDS
                self._log.warn(
                    "The brute-force limits count in this process alone for {seconds:g} s: "
                    "the store did not answer",
                    seconds=STORE_RETRY_SECONDS,
                )
                reserved = await self._fallback.reserve_attempt(
                    share.keys, self._now(), self._window
                )
                return reserved, self._fallback
            finally:
                if probe:
                    self._probing = False
            if probe:
                self._store_down_until = 0.0
            return reserved, store
        except BaseException as error:
            share.reserving = False
            self._wake(share, error)
            raise
        finally:
            share.reserving = False

    def _tell_block(self, share: _Share, refusal: _Refusal, now: float) -> None:
        """
        Tell the audit trail that a block began, unless this process has
        told it of this one (the same counter, or cap, until the same end).
        """
        name, identity, source = share.name
        credential = refusal.credential
        if refusal.capped:
            key: tuple[str, ...] = ("cap", credential.cap_name, identity)
        else:
            key = ("per_source", name, identity, source)
        if self._blocks.get(key, 0.0) >= refusal.retry_at:
            return
        _bounded(self._blocks, now, float)
        self._blocks[key] = refusal.retry_at
        fields = {
            "credential": credential.audit_name,
            "limit": key[0],
            "until": math.ceil(refusal.retry_at),
            **_identity_fields(identity),
        }
        audit.emit(audit.BLOCK_STARTED, audit.UNAUTHENTICATED, source, **fields)
        if self._clock is not None:
            self._clock.callLater(
                max(0.0, refusal.retry_at - now), self._block_ended, key, refusal.retry_at,
                source, fields,
            )

    def _block_ended(
        self, key: tuple[str, ...], until: float, source: str, fields: dict[str, object]
    ) -> None:
        if self._blocks.get(key) == until:
            del self._blocks[key]
        audit.emit(audit.BLOCK_ENDED, audit.SERVER, source, **fields)

    def _store_for(self, now: float) -> IAuthAttemptStore:
        assert self._store is not None
        if self._fallback is not None and (now < self._store_down_until or self._probing):
            return self._fallback
        return self._store

    def _wake(self, share: _Share, error: BaseException | None = None) -> None:
        """
        Let every waiting request look again (or fail with C{error}).
        """
        if not share.waiters:
            return
        waiters, share.waiters = share.waiters, deque()
        for waiter in waiters:
            if error is None:
                waiter.callback(None)
            else:
                waiter.errback(error)

    def _failed(self, slot: _Slot) -> None:
        """
        A failed check: its slot stays counted in the store.
        """
        share = slot.share
        share.busy -= 1
        if slot.reservation is None and share.leased and slot.ends == share.ends:
            share.leased -= 1
        self._wake(share)
        self._forget_if_idle(share)

    def _succeeded(self, slot: _Slot, known: bool) -> Awaitable[None] | None:
        """
        A successful check: its slot is kept here for the next, or given
        back to the store; its cap slot is given back; the source is
        recorded as known for the credential (unless it is already, for
        more than half of C{known_for}).  What must be written to the
        store (nothing, on the hot path) is returned, to be awaited.
        """
        share, reserved, now = slot.share, slot.reservation, self._now()
        share.busy -= 1
        slots: list[tuple[str, float]] = []
        handed = False
        if reserved is None:
            if share.leased and slot.ends == share.ends and now < share.ends - LEASE_MARGIN:
                share.free += 1
            elif slot.store is self._store and now < slot.ends:
                # a kept slot whose lease ended while it was in use
                if share.leased and slot.ends == share.ends:
                    share.leased -= 1
                slots.append((share.keys.counter, slot.ends))
        else:
            keep = (
                slot.store is self._store
                and now < reserved.ends - LEASE_MARGIN
                and (not share.leased or share.ends == reserved.ends)
                # the slots kept by every process together stay within half
                # the budget (each kept one was counted when this one was
                # reserved): however many processes keep slots, a process
                # holding none always finds room for its client's checks
                and reserved.count <= self._per_process
            )
            if keep:
                share.ends = reserved.ends
                share.leased += 1
                share.free += 1
            elif self._hand_on(slot, now):
                handed = True
            else:
                slots.append((share.keys.counter, reserved.ends))
            if not handed and reserved.cap_ends is not None and share.keys.cap is not None:
                slots.append((share.keys.cap, reserved.cap_ends))
        returned = any(key == share.keys.counter for key, _ in slots)
        # until the store has it back, the slot counts as in use here: a
        # request woken now waits for it rather than be refused for it
        share.releasing += returned
        if handed:
            # one request takes the slot handed on; the others wait on, for
            # it to be handed on again (with none waiting, it is parked for
            # the next)
            if share.waiters:
                share.waiters.popleft().callback(None)
        else:
            self._wake(share)
        self._forget_if_idle(share)
        known_key = share.keys.known
        remember = known and self._known.get(known_key, 0.0) < now + self._known_for / 2
        if not (slots or remember):
            return None
        if not returned and not remember:
            # only the cap's slot: nothing here waits for it
            return self._record_success(None, slot.store, AttemptRelease(tuple(slots)), now)
        if remember:
            # taken as recorded at once: the successes that come while the
            # write is under way do not write it again
            _bounded(self._known, now, float)
            self._known[known_key] = now + self._known_for
        release = AttemptRelease(tuple(slots), known_key if remember else None, self._known_for)
        return self._record_success(share if returned else None, slot.store, release, now)

    async def _record_success(
        self,
        share: _Share | None,
        store: IAuthAttemptStore,
        release: AttemptRelease,
        now: float,
    ) -> None:
        """
        Write a success's release.  A known address is recorded again only
        after half of C{known_for}, unless this write fails or goes only to
        the fallback (during an outage): then at its next success.
        """
        try:
            taken = await self._release(store, release, now)
        finally:
            if share is not None:
                self._released(share)
        if release.known is not None and not (taken and store is self._store):
            self._known.pop(release.known, None)

    async def _give_back(self, slot: _Slot) -> None:
        """
        A check that neither failed nor succeeded (another error): its
        slots go back where they came from.
        """
        share, reserved, now = slot.share, slot.reservation, self._now()
        share.busy -= 1
        if reserved is None:
            if share.leased and slot.ends == share.ends and now < share.ends - LEASE_MARGIN:
                share.free += 1
                self._wake(share)
                return
            # a kept slot whose lease ended while it was in use
            if share.leased and slot.ends == share.ends:
                share.leased -= 1
            slots = [(share.keys.counter, slot.ends)]
        else:
            slots = [(share.keys.counter, reserved.ends)]
            if reserved.cap_ends is not None and share.keys.cap is not None:
                slots.append((share.keys.cap, reserved.cap_ends))
        share.releasing += 1
        self._wake(share)
        try:
            await self._release(slot.store, AttemptRelease(tuple(slots)), now)
        finally:
            self._released(share)

    def _released(self, share: _Share) -> None:
        """
        A slot given back has reached the store (or will not): the
        requests waiting for it look again.
        """
        share.releasing -= 1
        self._wake(share)
        self._forget_if_idle(share)

    async def _release(
        self, store: IAuthAttemptStore, release: AttemptRelease, now: float
    ) -> bool:
        """
        Whether the store took the release.  A store that cannot take it
        keeps the slots counted until their window ends: the request has
        been answered already, and is not failed for it.
        """
        try:
            await store.release_attempt(release, now)
        except StoreUnavailable:
            return False
        return True

    def _forget_if_idle(self, share: _Share) -> None:
        if share.idle() and self._shares.get(share.name) is share:
            del self._shares[share.name]


#: How long a process keeps the tokens it took from a client's bucket in
#: the store and has not handed out yet: the bound on how far it may run
#: ahead of the bucket (docs/governance-ops.md, "Per-client rate limits").
SHARE_SECONDS = 0.1

#: A client's issuance refused (C{on_limited}): per process, once when its
#: requests begin to be refused, again only after one was let through.
LimitedClient = Callable[[str, TokenRateLimit, float], None]


def audit_rate_limited(client_id: str, limit: TokenRateLimit, until: float) -> None:
    """
    A client's token requests began to be refused by its rate limit, as
    the audit trail tells it (C{limits.rate_limited}).
    """
    audit.emit(
        audit.RATE_LIMITED,
        audit.client(client_id),
        None,
        client_id=client_id,
        tokens_per_second=limit.tokens_per_second,
        burst=limit.burst,
        until=math.ceil(until),
    )


class _Allowance:
    """
    What this process holds of one client's bucket: tokens taken from the
    store and not handed out yet (until C{ends}), the requests waiting for
    the store, and a refusal remembered until the bucket has a token again.
    """

    __slots__ = ("key", "tokens", "ends", "refused_until", "taking", "waiters", "blocked")

    def __init__(self, key: str) -> None:
        self.key = key
        self.tokens = 0
        self.ends = 0.0
        self.refused_until = 0.0
        #: whether a request to the store is under way
        self.taking = False
        self.waiters: deque[Deferred[None]] = deque()
        #: whether its refusals have been told (L{LimitedClient})
        self.blocked = False

    def idle(self, now: float) -> bool:
        return not (self.taking or self.waiters) and now >= max(self.ends, self.refused_until)


class IssuanceLimit:
    """
    How many tokens each client may be issued: its own C{token_rate_limit}
    (L{Client.token_rate_limit}, set by the operator), else the server's
    default (C{[limits] tokens_per_client_per_second}), else none.

    A client's limit is a token bucket in the store (L{IRateLimitStore}),
    one for every process and instance sharing it.  A process takes tokens
    from it a few at a time, enough for L{SHARE_SECONDS} at the limit's
    rate (at least one, at most the burst, and as many as requests are
    waiting), and hands them out to the client's next requests with no
    round trip; what it has not handed out when that time is over is
    dropped.  So, for a client at its limit, each process asks the store
    at most about 1 / L{SHARE_SECONDS} times a second, and a client whose
    rate is below that once per token.  Within a process, one request to
    the store per client is under way at a time; the requests that come
    meanwhile wait for its answer (a burst of them costs one round trip).
    A refusal is remembered until the bucket has a token again: a client
    over its limit costs no round trip.

    The error, with N processes: no more tokens are issued than the
    bucket allows, except that tokens taken up to L{SHARE_SECONDS} before
    are handed out after (over any interval of T seconds, at most C{burst +
    rate x (T + SHARE_SECONDS)}) and clocks that differ by d seconds add up
    to d x rate once; and a client may be refused while up to N - 1
    processes each hold up to C{rate x SHARE_SECONDS} (or its burst, if
    lower) of its tokens that they drop unused.

    While the store cannot be reached, each process counts on its own
    (C{fallback}, a full bucket per process) for L{STORE_RETRY_SECONDS}:
    clients keep getting tokens through an outage, up to N times their
    limit.

    @param on_limited: called with L{TOKEN_ISSUANCE} for every refusal
        (C{ccserver_rate_limited_total{what}}).
    @param on_client_limited: called with the client id for every refusal
        (C{ccserver_token_rate_limited_total{client_id}}).
    @param on_blocked: told (L{LimitedClient}) when a client's requests
        begin to be refused in this process (the audit trail).
    """

    _log = Logger()

    def __init__(
        self,
        store: IRateLimitStore,
        default: TokenRateLimit | None,
        now: Callable[[], float],
        *,
        on_limited: Callable[[str], None] | None = None,
        on_client_limited: Callable[[str], None] | None = None,
        on_blocked: LimitedClient | None = None,
        fallback: IRateLimitStore | None = None,
        share_seconds: float = SHARE_SECONDS,
    ) -> None:
        self._store = store
        self._default = default
        self._now = now
        self._on_limited = on_limited
        self._on_client_limited = on_client_limited
        self._on_blocked = on_blocked
        self._fallback = fallback
        self._share_seconds = share_seconds
        #: client_id -> what this process holds of its bucket
        self._allowances: dict[str, _Allowance] = {}
        #: until when the store is taken as unreachable (0: it answers)
        self._store_down_until = 0.0

    def take(self, client: Client) -> Deferred[None] | None:
        """
        One token for C{client}: None when it may have it now (with no
        round trip), or a Deferred that fires once it may (or fails with
        the refusal, or the store's error).

        @raise OAuthError: 429 with C{Retry-After}, when the client is over
            its limit (and this process knows it already).
        """
        limit = client.token_rate_limit or self._default
        if limit is None:
            return None
        allowance = self._allowances.get(client.client_id)
        now = self._now()
        if allowance is None:
            if len(self._allowances) >= MAX_ENTRIES:
                self._forget_idle(now)
            allowance = self._allowances[client.client_id] = _Allowance(
                _digest("issuance", client.client_id)
            )
        elif allowance.tokens and now < allowance.ends:
            # the hot path: a token this process holds
            allowance.tokens -= 1
            allowance.blocked = False
            return None
        elif now < allowance.refused_until and not allowance.taking:
            raise self._refusal(client.client_id, limit, allowance, allowance.refused_until - now)
        waiter: Deferred[None] = Deferred()
        allowance.waiters.append(waiter)
        if not allowance.taking:
            Deferred.fromCoroutine(self._take_from_store(client.client_id, limit, allowance))
        return waiter

    async def _take_from_store(
        self, client_id: str, limit: TokenRateLimit, allowance: _Allowance
    ) -> None:
        """
        Take tokens from the client's bucket for the requests waiting, and
        for the next L{SHARE_SECONDS}; hand them out; refuse the requests
        the bucket had no token for.
        """
        allowance.taking = True
        share = max(1, math.ceil(limit.tokens_per_second * self._share_seconds))
        try:
            while allowance.waiters:
                wanted = min(limit.burst, max(share, len(allowance.waiters)))
                now = self._now()
                grant = await self._ask(allowance.key, limit, wanted, now)
                left = grant.taken
                while left and allowance.waiters:
                    left -= 1
                    allowance.blocked = False
                    allowance.waiters.popleft().callback(None)
                allowance.tokens, allowance.ends = left, now + self._share_seconds
                if allowance.waiters and grant.taken < wanted:
                    allowance.refused_until = self._now() + grant.retry_after
                    waiters, allowance.waiters = allowance.waiters, deque()
                    for waiter in waiters:
                        waiter.errback(
                            self._refusal(client_id, limit, allowance, grant.retry_after)
                        )
        except BaseException as error:
            waiters, allowance.waiters = allowance.waiters, deque()
            for waiter in waiters:
                waiter.errback(error)
        finally:
            allowance.taking = False

    async def _ask(
        self, key: str, limit: TokenRateLimit, wanted: int, now: float
    ) -> TokenGrant:
        """
        Tokens from the store, or from the fallback while the store cannot
        be reached.
        """
        store = self._store
        if self._fallback is not None and now < self._store_down_until:
            store = self._fallback
        try:
            return await store.take_tokens(key, limit.tokens_per_second, limit.burst, wanted, now)
        except StoreUnavailable:
            if self._fallback is None or store is self._fallback:
                raise
            self._store_down_until = self._now() + STORE_RETRY_SECONDS
            self._log.warn(
                "The token rate limits count in this process alone for {seconds:g} s: "
                "the store did not answer",
                seconds=STORE_RETRY_SECONDS,
            )
            return await self._fallback.take_tokens(
                key, limit.tokens_per_second, limit.burst, wanted, now
            )

    def _refusal(
        self, client_id: str, limit: TokenRateLimit, allowance: _Allowance, retry_after: float
    ) -> OAuthError:
        if self._on_limited is not None:
            self._on_limited(TOKEN_ISSUANCE)
        if self._on_client_limited is not None:
            self._on_client_limited(client_id)
        if not allowance.blocked:
            allowance.blocked = True
            if self._on_blocked is not None:
                self._on_blocked(client_id, limit, self._now() + retry_after)
        rate = limit.tokens_per_second
        return too_many_requests(
            f"this client may be issued {rate:g} tokens a second (at most {limit.burst} at once)",
            retry_after,
        )

    def _forget_idle(self, now: float) -> None:
        """
        Make room in the table: forget the clients nothing here holds or
        waits for; if none, the oldest (what they held is dropped, as
        when its time ends).
        """
        for client_id in [c for c, a in self._allowances.items() if a.idle(now)]:
            del self._allowances[client_id]
        excess = len(self._allowances) - MAX_ENTRIES + 1
        if excess > 0:
            unused = [c for c, a in self._allowances.items() if not (a.taking or a.waiters)]
            for client_id in unused[:excess]:
                del self._allowances[client_id]
