"""
The seams of ccserver: stores and grant handlers.

Third parties code against L{IGrantHandlerFactory} and
L{IClientCredentialsGrantHandler}; these names are stable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from ccserver.model import (
    AttemptKeys,
    AttemptRelease,
    Client,
    GrantAuthorization,
    GrantRequest,
    InitialAccessToken,
    Reservation,
    StoredKey,
    TokenGrant,
    TokenRecord,
)


class IClientStore(Interface):
    """
    Where registered clients are kept.

    Every method returns a L{Deferred}.  A store that cannot be reached, or
    does not answer in time, fails it with L{ccserver.errors.StoreUnavailable}
    (after a write, its outcome is then unknown).  Each write is atomic: a
    client is stored whole or not at all.
    """

    def add_client(client: Client) -> Deferred[None]:
        """
        Store a new client.  Fails with L{ccserver.errors.ClientExists} if
        its C{client_id} is taken.
        """

    def get_client(client_id: str) -> Deferred[Client | None]:
        """
        The client with that identifier, or L{None}.
        """

    def replace_client(client: Client) -> Deferred[bool]:
        """
        Replace the stored client of the same C{client_id} with this one.
        Fires with C{False} (and stores nothing) if there is none.
        """

    def list_clients(cursor: str, count: int) -> Deferred[tuple[list[Client], str]]:
        """
        One page of the registered clients, for the operator's listing:
        start with the cursor C{""}, then pass the cursor each page gives,
        until it is C{""} again.  A page holds about C{count} clients (Redis
        may give a few more, or none while the cursor is not done), so that
        100,000 clients are never read in one reply or held at once.  Every
        client stored for the whole walk is given at least once; Redis'
        C{SCAN} may give one twice, which the caller drops.
        """

    def delete_client(client_id: str, issued_before: int, mark_expires_at: int) -> Deferred[bool]:
        """
        Delete a client and end its tokens, in one atomic write where the
        store allows (otherwise the mark is written first, so that a crash
        half-way never leaves a live token of a deleted client): its opaque
        token records are deleted, and a revocation mark says that its
        tokens issued at or before C{issued_before} are dead (see
        L{ITokenStore.client_revoked_before}).  The mark is kept until
        C{mark_expires_at}, when no token it kills can still be alive; a
        mark already there is kept with the later of each time.

        The mark is written even if there is no such client (another
        request deleted it meanwhile): harmless, as client ids are random.
        Fires with C{False} if there was none.
        """


class IKeyStore(Interface):
    """
    Where signing keys are kept, so that every instance sees the same keys.
    Private keys arrive here encrypted; a store never sees one in clear.
    """

    def list_keys() -> Deferred[list[StoredKey]]:
        """
        Every stored signing key, oldest first.
        """

    def add_key(key: StoredKey) -> Deferred[None]:
        """
        Store a new signing key; one of the same C{kid} already stored is
        replaced.
        """

    def replace_key(key: StoredKey) -> Deferred[bool]:
        """
        Replace the stored key of the same C{kid}.  Fires with C{False} if
        there is none.
        """

    def delete_key(kid: str) -> Deferred[bool]:
        """
        Delete a key.  Fires with C{False} if there was none.
        """


class IRateLimitStore(Interface):
    """
    Token buckets, one per limited client, shared by every process and
    instance (the per-client issuance limit, L{ccserver.oauth.limits}).
    """

    def take_tokens(
        key: str, tokens_per_second: float, burst: int, wanted: int, now: float
    ) -> Deferred[TokenGrant]:
        """
        In one atomic step: fill the bucket C{key} for the time since it was
        last counted (C{tokens_per_second}, up to C{burst}; a bucket never
        counted, or forgotten, is full), then take C{wanted} whole tokens
        from it, or as many as it holds.  C{now} is the caller's clock
        (seconds since the epoch); a clock behind the last count fills
        nothing.  Fires with how many were taken and, when fewer than
        C{wanted}, how long until it holds one more.

        A bucket left alone is full again after C{burst /
        tokens_per_second} seconds, and may be forgotten then: Redis lets it
        expire, the other stores drop it in L{ITokenStore.purge_expired}.
        """


class ILeaseStore(Interface):
    """
    Leases: a name held by one holder at a time across every process and
    instance sharing the store, until it is given up or its time ends
    (so that a holder that died never keeps it), for work that exactly one
    of them must do (the scheduled rotation of the signing keys).  Each
    method is one atomic step.
    """

    def take_lease(name: str, holder: str, now: float, duration: float) -> Deferred[bool]:
        """
        Hold C{name} for C{holder} until C{now + duration} (seconds since
        the epoch, by the caller's clock), if no one else holds it (nobody
        took it, it was given up, or its time has ended); a holder taking
        it again extends it.  Fires with whether C{holder} holds it now.
        """

    def end_lease(name: str, holder: str) -> Deferred[None]:
        """
        Give C{name} up, if C{holder} holds it; otherwise change nothing.
        """


class ITokenStore(Interface):
    """
    Where the token lifecycle keeps its records: opaque access tokens (by
    digest, never in clear), the deny list of revoked JWTs, and the
    revocation marks of deleted clients.

    A record may be forgotten once it has expired: Redis lets it expire
    (TTL); the other stores drop it in L{purge_expired}.  Readers check
    C{expires_at} themselves, so an expired record that is still stored is
    never honoured.
    """

    def add_token(token: TokenRecord) -> Deferred[None]:
        """
        Store an issued opaque token.
        """

    def get_token(token_digest: str) -> Deferred[TokenRecord | None]:
        """
        The token with that digest, or L{None}; L{None} too when its
        client's revocation mark covers it (its C{issued_at} is at or before
        the mark's C{issued_before}), in the same round trip.  Deleting a
        client deletes its tokens, but an instance that still had the client
        in its cache may store one more afterwards.
        """

    def delete_token(token_digest: str) -> Deferred[bool]:
        """
        Delete (revoke) an opaque token.  Fires with C{False} if there was none.
        """

    def revoke_jti(jti: str, expires_at: int) -> Deferred[None]:
        """
        Put a JWT's C{jti} on the deny list until C{expires_at}, the token's
        own expiry, after which the entry may be forgotten.
        """

    def is_revoked(jti: str) -> Deferred[bool]:
        """
        Whether a JWT's C{jti} is on the deny list.
        """

    def client_revoked_before(client_id: str) -> Deferred[int | None]:
        """
        The C{issued_before} of the client's revocation mark (written by
        L{IClientStore.delete_client}): its tokens with an C{iat} at or
        before it are dead.  L{None} when the client has no mark.  A mark
        past its C{mark_expires_at} may still be answered until it is
        purged; it then kills only tokens that have expired anyway.
        """

    def use_once(key: str, expires_at: int) -> Deferred[bool]:
        """
        Record C{key} until C{expires_at} (seconds since the epoch), in one
        atomic step: fires with C{True} if it was not recorded yet (its
        first use), C{False} if it was (a replay).  Every instance sharing
        the store sees the same records, so a one-time value (a client
        assertion's or a DPoP proof's C{jti}) is accepted once across all of
        them.  Callers namespace their keys (C{"assertion:<client_id>:<jti>"},
        C{"dpop:<jkt>:<jti>"}).  A record past C{expires_at} is dropped by
        L{purge_expired} (or by the store itself); until it is, the key
        stays used.
        """

    def purge_expired(now: int) -> Deferred[int]:
        """
        Forget the tokens, deny-list entries, client revocation marks,
        one-time records (L{use_once}), the brute-force limits' ended
        windows and known sources (L{IAuthAttemptStore}), initial access
        tokens (L{IInitialAccessTokenStore}), and token buckets full again
        (L{IRateLimitStore}), that expired before C{now}; fires
        with how many were dropped (a store that expires them by itself may
        fire with 0).
        """


class IAuthAttemptStore(Interface):
    """
    Where the brute-force limits reserve a slot before each credential
    check, so that every instance and worker sharing the store counts
    together (see L{ccserver.oauth.limits}).  Each method is one atomic
    step: a script in Redis, a transaction in SQL.
    """

    def reserve_attempt(keys: AttemptKeys, now: float, window: float) -> Deferred[Reservation]:
        """
        Reserve one slot in C{keys.counter}, and in C{keys.cap} unless
        C{keys.known} is recorded (or C{keys.cap} is None), all or nothing:
        refused, without any change, when the counter holds
        C{keys.budget} slots or the cap C{keys.cap_budget}.

        A counter's window opens at the first reservation after the last
        one ended (C{now}, seconds since the epoch) and lasts C{window}
        seconds; slots are never taken back by the store, only by
        L{release_attempt} or the window's end.  An ended window may be
        forgotten: Redis lets it expire, the other stores drop it in
        L{ITokenStore.purge_expired}.
        """

    def release_attempt(release: AttemptRelease, now: float) -> Deferred[None]:
        """
        Give back the slots of a successful check, each only if its window
        is still the one it was reserved in (never below 0), and record
        C{release.known}, if given, for C{release.known_for} seconds from
        C{now}.
        """


class IInitialAccessTokenStore(Interface):
    """
    Where initial access tokens are kept (RFC 7591 §3), by digest, never in
    clear: the operator makes, lists and revokes them, and each registers
    clients until it expires, is used up or is revoked.  A token past its
    C{expires_at} may be forgotten: Redis lets it expire, the other stores
    drop it in L{ITokenStore.purge_expired}.
    """

    def add_initial_access_token(token: InitialAccessToken) -> Deferred[None]:
        """
        Store a new initial access token (its C{token_id} and
        C{token_digest} are new: random).
        """

    def get_initial_access_token(token_digest: str) -> Deferred[InitialAccessToken | None]:
        """
        The initial access token with that digest, with its uses as now
        counted, or L{None}.
        """

    def list_initial_access_tokens() -> Deferred[list[InitialAccessToken]]:
        """
        Every stored initial access token, oldest first (an operator makes
        tens of them, not thousands: no paging).
        """

    def revoke_initial_access_token(token_id: str, now: int) -> Deferred[bool]:
        """
        Revoke the initial access token C{token_id} at C{now}: it registers
        no client from then on (one revoked already keeps its first
        C{revoked_at}).  Fires with C{False} if there is none.
        """

    def register_with_initial_access_token(
        token_digest: str, client: Client, now: int
    ) -> Deferred[InitialAccessToken | None]:
        """
        Store C{client} as registered with the initial access token of
        C{token_digest}, in one atomic step: if that token exists, is not
        revoked, has not expired at C{now} and has a use left, one use is
        counted and the client stored, and it fires with the token as it
        now is; otherwise nothing is stored, and it fires with L{None}.
        However many registrations arrive at once, a token of N uses
        registers N clients.  Fails with L{ccserver.errors.ClientExists},
        nothing stored and no use counted, if the client's id is taken.
        """


class IStore(
    IClientStore,
    IKeyStore,
    ITokenStore,
    IAuthAttemptStore,
    IInitialAccessTokenStore,
    ILeaseStore,
    IRateLimitStore,
):
    """
    A store chosen by URL: it keeps clients, keys, token records, the
    brute-force limits' slots, initial access tokens, leases and token
    buckets, and has a lifetime.
    """

    url = Attribute("The store's URL, with any password masked.")

    def open() -> Deferred[None]:
        """
        Connect and bring the schema up to date.  Called once, before use.
        """

    def close() -> Deferred[None]:
        """
        Release connections; called once, when the server stops.
        """


class IClientCredentialsGrantHandler(Interface):
    """
    Decides what a client credentials grant authorises.
    """

    def authorize(
        grant: GrantRequest,
    ) -> GrantAuthorization | Deferred[GrantAuthorization] | Awaitable[GrantAuthorization]:
        """
        Decide what the token for this grant carries.

        @return: a L{GrantAuthorization}, or a L{Deferred} or awaitable of one.
        @raise ccserver.errors.OAuthError: to deny the grant, for example
            with C{invalid_scope} or C{unauthorized_client}.
        """


class IGrantHandlerFactory(Interface):
    """
    A Twisted plugin (it also provides L{twisted.plugin.IPlugin}) that makes
    a grant handler from the C{[grant_handler]} table of the configuration.
    """

    name = Attribute("The name that selects this handler, e.g. 'webhook'.")
    description = Attribute("One line saying what the handler decides and how.")

    def makeHandler(config: Mapping[str, Any], reactor: Any) -> IClientCredentialsGrantHandler:
        """
        Make the handler.

        The handler may also provide L{twisted.application.service.IService}:
        the server then starts it before it listens and stops it after its
        last request has been answered (to close connections, for example),
        waiting for any Deferred C{stopService} returns.

        @param config: the C{[grant_handler]} table without its C{name} key.
        @param reactor: the reactor, for the handler's timers and
            connections; a handler never imports the global one.
        @raise ccserver.errors.ConfigError: when the configuration is wrong;
            the message names the key.  Any other exception, a signature
            other than C{(config, reactor)}, or a result that does not
            provide L{IClientCredentialsGrantHandler} stops the start with
            one line naming the plugin and what to change
            (L{ccserver.handlers.PluginError}).
        """
