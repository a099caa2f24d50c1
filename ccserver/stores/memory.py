"""
An in-memory store: for tests and throwaway servers.  Nothing survives a
restart.
"""

from __future__ import annotations

from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from ccserver.errors import BindingTaken, ClientExists
from ccserver.interfaces import IStore
from ccserver.model import (
    AttemptKeys,
    AttemptRelease,
    Client,
    InitialAccessToken,
    Reservation,
    StoredKey,
    TokenGrant,
    TokenRecord,
    binding_key,
)
from ccserver.stores import buckets
from ccserver.stores.buckets import Bucket
from ccserver.stores.codec import TOKENS

_CLIENT_ID = TOKENS.position("client_id")
_ISSUED_AT = TOKENS.position("issued_at")
_EXPIRES_AT = TOKENS.position("expires_at")


@implementer(IStore)
class MemoryStore:
    url = "memory://"

    def __init__(self) -> None:
        self._clients: dict[str, Client] = {}
        self._keys: dict[str, StoredKey] = {}
        #: token_digest -> the token's tuple (L{TOKENS}); clients and keys,
        #: few, are kept as they are
        self._tokens: dict[str, tuple[Any, ...]] = {}
        #: use_once keys -> when they may be forgotten
        self._used: dict[str, int] = {}
        self._revoked: dict[str, int] = {}
        #: client_id -> (issued_before, mark_expires_at)
        self._revoked_clients: dict[str, tuple[int, int]] = {}
        #: counter or cap key -> (slots, window ends at)
        self._attempts: dict[str, tuple[int, float]] = {}
        #: known-source key -> until when
        self._known: dict[str, float] = {}
        #: binding key -> conditions key -> client_id (federated identities)
        self._bindings: dict[str, dict[str, str]] = {}
        #: lease name -> (holder, until when)
        self._leases: dict[str, tuple[str, float]] = {}
        #: token bucket key -> the bucket
        self._buckets: dict[str, Bucket] = {}
        #: token_digest -> initial access token
        self._initial_access_tokens: dict[str, InitialAccessToken] = {}

    def open(self) -> Deferred[None]:
        return succeed(None)

    def close(self) -> Deferred[None]:
        return succeed(None)

    def add_client(self, client: Client) -> Deferred[None]:
        if client.client_id in self._clients:
            return fail(ClientExists(client.client_id))
        taken = self._taken_binding(client)
        if taken is not None:
            return fail(taken)
        self._clients[client.client_id] = client
        self._bind(client)
        return succeed(None)

    def _taken_binding(self, client: Client) -> BindingTaken | None:
        for identity in client.federated_identities:
            owner = self._bindings.get(identity.key, {}).get(identity.conditions_key)
            if owner is not None and owner != client.client_id:
                return BindingTaken(identity)
        return None

    def _bind(self, client: Client) -> None:
        for identity in client.federated_identities:
            self._bindings.setdefault(identity.key, {})[identity.conditions_key] = (
                client.client_id
            )

    def _unbind(self, client: Client) -> None:
        for identity in client.federated_identities:
            bound = self._bindings.get(identity.key, {})
            if bound.get(identity.conditions_key) == client.client_id:
                del bound[identity.conditions_key]
            if not bound:
                self._bindings.pop(identity.key, None)

    def clients_bound_to(self, issuer: str, subject: str) -> Deferred[list[str]]:
        return succeed(list(self._bindings.get(binding_key(issuer, subject), {}).values()))

    def get_client(self, client_id: str) -> Deferred[Client | None]:
        return succeed(self._clients.get(client_id))

    def replace_client(self, client: Client) -> Deferred[bool]:
        current = self._clients.get(client.client_id)
        if current is None:
            return succeed(False)
        taken = self._taken_binding(client)
        if taken is not None:
            return fail(taken)
        self._unbind(current)
        self._clients[client.client_id] = client
        self._bind(client)
        return succeed(True)

    def list_clients(self, cursor: str, count: int) -> Deferred[tuple[list[Client], str]]:
        # Keyset paging by client_id, as the SQL store does.
        ids = sorted(i for i in self._clients if i > cursor)[: max(1, count)]
        page = [self._clients[i] for i in ids]
        return succeed((page, ids[-1] if len(ids) == max(1, count) else ""))

    def delete_client(
        self, client_id: str, issued_before: int, mark_expires_at: int
    ) -> Deferred[bool]:
        before, until = self._revoked_clients.get(client_id, (issued_before, mark_expires_at))
        self._revoked_clients[client_id] = (
            max(before, issued_before),
            max(until, mark_expires_at),
        )
        # A scan: deleting a client is rare, and an index per client would
        # cost every opaque token issued.
        for digest in [d for d, t in self._tokens.items() if t[_CLIENT_ID] == client_id]:
            del self._tokens[digest]
        client = self._clients.pop(client_id, None)
        if client is not None:
            self._unbind(client)
        return succeed(client is not None)

    def add_token(self, token: TokenRecord) -> Deferred[None]:
        # A tuple of strings and numbers, which the garbage collector
        # stops tracking: a million tokens held as objects would make every
        # full collection walk them, a pause of hundreds of milliseconds.
        self._tokens[token.token_digest] = TOKENS.to_tuple(token)
        return succeed(None)

    def get_token(self, token_digest: str) -> Deferred[TokenRecord | None]:
        row = self._tokens.get(token_digest)
        if row is None:
            return succeed(None)
        mark = self._revoked_clients.get(row[_CLIENT_ID])
        if mark is not None and row[_ISSUED_AT] <= mark[0]:
            return succeed(None)
        return succeed(TOKENS.from_tuple(row))

    def delete_token(self, token_digest: str) -> Deferred[bool]:
        return succeed(self._tokens.pop(token_digest, None) is not None)

    def revoke_jti(self, jti: str, expires_at: int) -> Deferred[None]:
        self._revoked[jti] = max(expires_at, self._revoked.get(jti, 0))
        return succeed(None)

    def is_revoked(self, jti: str) -> Deferred[bool]:
        return succeed(jti in self._revoked)

    def use_once(self, key: str, expires_at: int) -> Deferred[bool]:
        if key in self._used:
            return succeed(False)
        self._used[key] = expires_at
        return succeed(True)

    def client_revoked_before(self, client_id: str) -> Deferred[int | None]:
        mark = self._revoked_clients.get(client_id)
        return succeed(None if mark is None else mark[0])

    def purge_expired(self, now: int) -> Deferred[int]:
        expired_used = [k for k, until in self._used.items() if until < now]
        for key in expired_used:
            del self._used[key]
        expired_tokens = [d for d, t in self._tokens.items() if t[_EXPIRES_AT] < now]
        expired_jtis = [j for j, until in self._revoked.items() if until < now]
        expired_marks = [c for c, mark in self._revoked_clients.items() if mark[1] < now]
        for digest in expired_tokens:
            del self._tokens[digest]
        for jti in expired_jtis:
            del self._revoked[jti]
        for client_id in expired_marks:
            del self._revoked_clients[client_id]
        expired_attempts = [k for k, (_, until) in self._attempts.items() if until < now]
        for key in expired_attempts:
            del self._attempts[key]
        expired_known = [k for k, until in self._known.items() if until < now]
        for key in expired_known:
            del self._known[key]
        expired_iats = [
            d for d, t in self._initial_access_tokens.items() if t.expires_at < now
        ]
        for digest in expired_iats:
            del self._initial_access_tokens[digest]
        full_buckets = [k for k, bucket in self._buckets.items() if bucket.full_at < now]
        for key in full_buckets:
            del self._buckets[key]
        return succeed(
            len(expired_tokens) + len(expired_jtis) + len(expired_marks) + len(expired_used)
            + len(expired_attempts) + len(expired_known) + len(expired_iats)
            + len(full_buckets)
        )

    def _window(self, key: str, now: float, window: float) -> tuple[int, float]:
        slots, ends = self._attempts.get(key, (0, now))
        return (0, now + window) if ends <= now else (slots, ends)

    def reserve_attempt(self, keys: AttemptKeys, now: float, window: float) -> Deferred[Reservation]:
        # synchronous, hence atomic: nothing else runs in between
        count, ends = self._window(keys.counter, now, window)
        if count >= keys.budget:
            return succeed(Reservation(False, count, ends))
        cap_ends = None
        if keys.cap is not None and self._known.get(keys.known, 0.0) <= now:
            cap_count, cap_ends = self._window(keys.cap, now, window)
            if cap_count >= keys.cap_budget:
                return succeed(Reservation(False, count, ends, cap_ends, capped=True))
            self._attempts[keys.cap] = (cap_count + 1, cap_ends)
        self._attempts[keys.counter] = (count + 1, ends)
        return succeed(Reservation(True, count + 1, ends, cap_ends))

    def release_attempt(self, release: AttemptRelease, now: float) -> Deferred[None]:
        for key, ends in release.slots:
            count, current = self._attempts.get(key, (0, 0.0))
            if current == ends and count > 0:
                self._attempts[key] = (count - 1, ends)
        if release.known is not None:
            until = self._known.get(release.known, 0.0)
            self._known[release.known] = max(until, now + release.known_for)
        return succeed(None)

    # IInitialAccessTokenStore

    def add_initial_access_token(self, token: InitialAccessToken) -> Deferred[None]:
        self._initial_access_tokens[token.token_digest] = token
        return succeed(None)

    def get_initial_access_token(self, token_digest: str) -> Deferred[InitialAccessToken | None]:
        return succeed(self._initial_access_tokens.get(token_digest))

    def list_initial_access_tokens(self) -> Deferred[list[InitialAccessToken]]:
        tokens = self._initial_access_tokens.values()
        return succeed(sorted(tokens, key=lambda t: (t.created_at, t.token_id)))

    def revoke_initial_access_token(self, token_id: str, now: int) -> Deferred[bool]:
        for token in self._initial_access_tokens.values():
            if token.token_id == token_id:
                if token.revoked_at is None:
                    revoked = evolve(token, revoked_at=now)
                    self._initial_access_tokens[token.token_digest] = revoked
                return succeed(True)
        return succeed(False)

    def register_with_initial_access_token(
        self, token_digest: str, client: Client, now: int
    ) -> Deferred[InitialAccessToken | None]:
        # synchronous, hence atomic
        token = self._initial_access_tokens.get(token_digest)
        if token is None or token.unusable(now) is not None:
            return succeed(None)
        if client.client_id in self._clients:
            return fail(ClientExists(client.client_id))
        taken = self._taken_binding(client)
        if taken is not None:
            return fail(taken)
        used = evolve(token, uses=token.uses + 1)
        self._initial_access_tokens[token_digest] = used
        self._clients[client.client_id] = client
        self._bind(client)
        return succeed(used)

    def list_keys(self) -> Deferred[list[StoredKey]]:
        return succeed(sorted(self._keys.values(), key=lambda k: (k.created_at, k.kid)))

    def add_key(self, key: StoredKey) -> Deferred[None]:
        self._keys[key.kid] = key
        return succeed(None)

    def replace_key(self, key: StoredKey) -> Deferred[bool]:
        if key.kid not in self._keys:
            return succeed(False)
        self._keys[key.kid] = key
        return succeed(True)

    def delete_key(self, kid: str) -> Deferred[bool]:
        return succeed(self._keys.pop(kid, None) is not None)

    def take_lease(self, name: str, holder: str, now: float, duration: float) -> Deferred[bool]:
        current, until = self._leases.get(name, (holder, 0.0))
        if current != holder and until > now:
            return succeed(False)
        self._leases[name] = (holder, now + duration)
        return succeed(True)

    def end_lease(self, name: str, holder: str) -> Deferred[None]:
        if self._leases.get(name, ("", 0.0))[0] == holder:
            del self._leases[name]
        return succeed(None)

    def take_tokens(
        self, key: str, tokens_per_second: float, burst: int, wanted: int, now: float
    ) -> Deferred[TokenGrant]:
        # synchronous, hence atomic
        bucket, grant = buckets.take(self._buckets.get(key), tokens_per_second, burst, wanted, now)
        self._buckets[key] = bucket
        return succeed(grant)
