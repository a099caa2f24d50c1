"""
The seams of ccserver: stores, grant handlers and grant types.

Third parties code against L{IGrantHandlerFactory},
L{IClientCredentialsGrantHandler}, L{ITokenExchangeHandler},
L{IGrantTypeFactory}, L{IGrantType} and L{ITokenEndpoint}; these names are
stable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from ccserver.model import (
    AttemptKeys,
    AttemptRelease,
    Authenticated,
    Binding,
    Client,
    Delegation,
    GrantAuthorization,
    GrantRequest,
    InitialAccessToken,
    IssuedToken,
    Reservation,
    StoredKey,
    TokenExchangeRequest,
    TokenGrant,
    TokenRecord,
    TokenRequest,
    VerifiedToken,
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
        its C{client_id} is taken, and with L{ccserver.errors.BindingTaken}
        (storing nothing) if one of its L{Client.federated_identities} (the
        issuer, subject and conditions together) is another client's: the
        check and the write are one atomic step, so that of two clients
        registered at once with the same binding, one is refused.
        """

    def get_client(client_id: str) -> Deferred[Client | None]:
        """
        The client with that identifier, or L{None}.
        """

    def replace_client(client: Client) -> Deferred[bool]:
        """
        Replace the stored client of the same C{client_id} with this one,
        and its federated identities with the new one's.  Fires with
        C{False} (and stores nothing) if there is none; fails with
        L{ccserver.errors.BindingTaken} (storing nothing) if one of its new
        federated identities is another client's.
        """

    def clients_bound_to(issuer: str, subject: str) -> Deferred[list[str]]:
        """
        The ids of the clients with a federated identity of this issuer and
        subject (whatever its conditions), in no particular order: one
        lookup by L{ccserver.model.binding_key}, never a scan.  A deleted
        client's bindings are gone with it.
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


class ITokenExchangeHandler(Interface):
    """
    Decides what a token exchange (RFC 8693) authorises, as
    L{IClientCredentialsGrantHandler} decides a client credentials grant.
    A grant handler provides both to decide both; one that provides only
    L{IClientCredentialsGrantHandler} keeps working for client credentials,
    and the server then offers no token exchange (docs/grant-handlers.md).
    """

    def authorize_exchange(
        exchange: TokenExchangeRequest,
    ) -> GrantAuthorization | Deferred[GrantAuthorization] | Awaitable[GrantAuthorization]:
        """
        Decide what the token made by this exchange carries: its scope,
        lifetime, audience, extra claims, format, C{may_act}.

        The server has already checked the subject and actor tokens and that
        the client may present them; whatever is decided here, the new
        token's C{sub} is the subject token's, its C{act} names the actor,
        and it ends no later than the subject token.

        @return: a L{GrantAuthorization}, or a L{Deferred} or awaitable of one.
        @raise ccserver.errors.OAuthError: to refuse: C{invalid_scope},
            C{invalid_target}, C{invalid_request} (RFC 8693 §2.2.2), ...
        """


class ISubjectTokenValidator(Interface):
    """
    Checks the tokens of one RFC 8693 token type presented in a token
    exchange, as a subject or an actor token.
    """

    token_type = Attribute("The RFC 8693 §3 token type URI it checks.")

    def verify(token: str) -> Deferred[VerifiedToken] | Awaitable[VerifiedToken]:
        """
        The token, verified.

        @raise ccserver.errors.OAuthError: C{invalid_request} (RFC 8693
            §2.2.2) when it is not valid: malformed, not signed by whom it
            must be, expired, revoked.
        """

    def client_for(
        token: VerifiedToken,
    ) -> Deferred[Client | None] | Awaitable[Client | None]:
        """
        The registered client a token it verified speaks for, or None: for
        a grant whose client presents no credentials of its own but such a
        token (RFC 7523 §2.1, the JWT bearer grant; see
        L{ITokenEndpoint.identify}).  This server's access tokens name
        theirs by C{client_id}; a token from elsewhere would name it by the
        client's binding to its issuer and subject.
        """


class ITokenEndpoint(Interface):
    """
    What the token endpoint offers a grant type (L{IGrantType}): the steps
    every grant takes, in this order: who the client is (L{authenticate};
    L{identify} for a grant whose client presents a token that speaks for
    it, after L{verify_token}; L{admit} for a grant that finds its client
    yet another way), what the token will be bound to (L{bind}), what the
    grant handler decides (L{decide}), and the token (L{mint}).  Every step
    raises L{ccserver.errors.OAuthError} for a refusal.
    """

    issuer = Attribute("This server's issuer identifier.")
    reactor = Attribute("The reactor, for any timer or connection a grant needs.")
    federated = Attribute(
        "Whether the server trusts issuers of workload tokens ([[trusted_issuers]]): "
        "only then can authenticate_assertion find a client."
    )
    handler = Attribute(
        "The grant handler; it may provide ITokenExchangeHandler as well as "
        "IClientCredentialsGrantHandler."
    )

    def authenticate(request: TokenRequest) -> Awaitable[Client]:
        """
        The client the request authenticates as (every method the server
        has, within the brute-force limits), once L{admit} has let it use
        the request's grant type.

        @raise ccserver.errors.OAuthError: C{invalid_client},
            C{unauthorized_client}, ...
        """

    def authenticated(request: TokenRequest) -> Awaitable[Authenticated]:
        """
        L{authenticate}'s client, and for a client that authenticated with
        its workload's token (C{federated_jwt}) that token, verified: what
        a grant passes on to the grant handler (L{GrantRequest.workload}).
        """

    def authenticate_assertion(request: TokenRequest) -> Awaitable[Authenticated]:
        """
        For a grant whose assertion authenticates the client (RFC 7521
        §4.1, the JWT bearer grant of RFC 7523 §2.1): the client the
        request's C{assertion} parameter, a workload's token from a trusted
        issuer, is bound to, and that token, verified; within the
        brute-force limits, counted by the workload identity it names; once
        L{admit} has let the client use the request's grant type.  The
        request may name the client with C{client_id}, and carry no other
        client credentials.

        @raise ccserver.errors.OAuthError: C{invalid_grant} for an assertion
            that is not valid (RFC 7521 §4.1.1), C{invalid_request} without
            one, C{unauthorized_client}, ...
        """

    def admit(request: TokenRequest, client: Client) -> None:
        """
        Let the client use the request's grant type: it must have it among
        its registered C{grant_types}.

        @raise ccserver.errors.OAuthError: C{unauthorized_client}.
        """

    def identify(request: TokenRequest, token: VerifiedToken) -> Awaitable[Client]:
        """
        The client a verified token speaks for (the validator of its type
        says which, L{ISubjectTokenValidator.client_for}), once L{admit}
        has let it use the request's grant type: how a grant finds a client
        that authenticates with an assertion instead of credentials (RFC
        7523 §2.1), in place of L{authenticate}.

        @raise ccserver.errors.OAuthError: C{invalid_grant} (RFC 7523 §3.1)
            when it speaks for no registered client; C{unauthorized_client}.
        """

    def bind(request: TokenRequest, client: Client) -> Awaitable[Binding | None]:
        """
        What a token issued to the client on this request is bound to (its
        DPoP proof, its TLS certificate), or None for a bearer token; and
        the per-client issuance limit.

        @raise ccserver.errors.OAuthError: C{invalid_dpop_proof}, a bound
            client without its proof or certificate (C{invalid_request}),
            429 past the issuance limit.
        """

    def verify_token(token: str, token_type: str) -> Awaitable[VerifiedToken]:
        """
        A token presented in the request (an RFC 8693 subject or actor
        token), checked by the validator of its type.

        @raise ccserver.errors.OAuthError: C{invalid_request} for an unknown
            type or a token that is not valid.
        """

    def decide(
        grant: GrantRequest | TokenExchangeRequest,
    ) -> Awaitable[GrantAuthorization]:
        """
        What the grant handler decides: C{authorize(grant)} for a
        L{GrantRequest}, C{authorize_exchange(exchange)} for a
        L{TokenExchangeRequest}.
        """

    def mint(
        request: TokenRequest,
        client: Client,
        decision: GrantAuthorization,
        binding: Binding | None,
        delegation: Delegation | None = None,
    ) -> Awaitable[IssuedToken]:
        """
        The access token: signed, or stored if opaque.

        @param delegation: for a token made by exchange, whose it is, who
            acts, what it dies with and when it ends at the latest.
        """


class IGrantType(Interface):
    """
    One grant type of the token endpoint: what C{grant_type} selects.
    """

    def token(
        request: TokenRequest,
    ) -> Deferred[IssuedToken] | Coroutine[Any, Any, IssuedToken]:
        """
        Read the grant's parameters from the request, take the endpoint's
        steps (L{ITokenEndpoint}), and return the token: a coroutine (an
        C{async def token}) or a L{Deferred}.

        @raise ccserver.errors.OAuthError: to refuse, with the RFC 6749 §5.2
            error code (or the grant's own RFC's).
        """


class IGrantTypeFactory(Interface):
    """
    A Twisted plugin (it also provides L{twisted.plugin.IPlugin}) that adds a
    grant type to the token endpoint.  Every grant type plugin found is
    loaded; discovery lists them (C{grant_types_supported}), and clients
    registered for one (C{grant_types}, which the operator sets) may use it.
    """

    grant_type = Attribute(
        "The grant_type value that selects it: a name, or an absolute URI "
        "(RFC 6749 §4.5)."
    )
    description = Attribute("One line saying what the grant is.")

    def makeGrant(endpoint: ITokenEndpoint) -> IGrantType:
        """
        Make the grant, over the endpoint's steps.

        @raise ccserver.errors.GrantUnavailable: when the grant cannot be
            offered with this server (its handler cannot decide it): the
            server starts without it and logs the message.  Anything else
            stops the start with one line naming the plugin
            (L{ccserver.pluginloader.PluginError}).
        """
