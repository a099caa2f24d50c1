"""
The token endpoint (RFC 6749 §3.2): a token request, in form parameters,
to the grant its C{grant_type} selects (L{TokenGrants}), and the steps
every grant takes (L{TokenEndpoint}):

    form -> grant (by grant_type) -> authenticate -> bind -> grant handler
         -> token

The grants themselves are plugins (L{ccserver.grants}).

The audit trail hears of every token request here, whichever grant took
it (a third party's plugin included, which does nothing for it): a
C{token.issued} or a C{token.refused}, with the request's C{grant_type}.
What the endpoint's steps learn on the way (the client once it has
authenticated, the workload token that authenticated it, the subject and
actor tokens of an exchange, verified) they note on the request's
L{TokenAttempt}, found through a context variable: the steps' signatures
are the plugin interface, and do not carry it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any

from attrs import frozen
from twisted.internet.defer import maybeDeferred
from zope.interface import implementer

from ccserver import audit
from ccserver.errors import OAuthError, invalid_request
from ccserver.grants import make_grants
from ccserver.interfaces import (
    IClientCredentialsGrantHandler,
    IClientStore,
    IGrantType,
    ISubjectTokenValidator,
    ITokenEndpoint,
)
from ccserver.model import (
    Authenticated,
    Binding,
    Client,
    Delegation,
    GrantAuthorization,
    GrantRequest,
    IssuedToken,
    TokenExchangeRequest,
    TokenRequest,
    VerifiedToken,
    WorkloadIdentity,
)
from ccserver.oauth.clientauth import ClientAuthenticator, workload_of
from ccserver.oauth.dpop import DPoPVerifier
from ccserver.oauth.jwtbearer import assertion_caller
from ccserver.oauth.limits import IssuanceLimit
from ccserver.oauth.mtls import BOUND_TOKENS, bound_thumbprint
from ccserver.oauth.tokens import TokenMinter
from ccserver.pluginloader import Found


def binding(token: IssuedToken) -> str:
    """
    What a token is bound to, as the audit trail says it: C{bearer}
    (nothing), C{dpop} (RFC 9449), C{mtls} (RFC 8705), or C{dpop+mtls}.
    """
    kinds = [kind for kind, bound in (("dpop", token.jkt), ("mtls", token.x5t_s256)) if bound]
    return "+".join(kinds) or "bearer"


#: What an RFC 8693 subject or actor token's claims say of it, as the audit
#: trail's C{subject_token} and C{actor_token} name them: never the token.
_PRESENTED_CLAIMS = (("id", "jti"), ("subject", "sub"), ("issuer", "iss"), ("client_id", "client_id"))


def presented_token(token: VerifiedToken) -> dict[str, str]:
    """
    A verified subject or actor token as the audit trail names it: its
    type, and the claims that say which token it is and whose (those that
    are strings).
    """
    named = {"type": token.token_type}
    for name, claim in _PRESENTED_CLAIMS:
        value = token.claims.get(claim)
        if isinstance(value, str):
            named[name] = value
    return named


class TokenAttempt:
    """
    A token request under way, as the audit trail will tell it: what the
    endpoint's steps learnt of it.
    """

    __slots__ = ("request", "client", "workload", "assertion", "subject", "actor")

    def __init__(self, request: TokenRequest) -> None:
        self.request = request
        #: the client, once it has authenticated (or a token spoke for it)
        self.client: Client | None = None
        #: the workload token that authenticated it, verified
        self.workload: WorkloadIdentity | None = None
        #: whether the JWT bearer grant's assertion was the credential
        self.assertion = False
        #: an exchange's subject and actor tokens, verified
        self.subject: VerifiedToken | None = None
        self.actor: VerifiedToken | None = None

    @property
    def caller(self) -> Authenticated | None:
        """
        Who the request authenticated as, if it got that far.
        """
        return None if self.client is None else Authenticated(self.client, self.workload)

    def presented(self) -> dict[str, Any]:
        """
        The audit fields of the exchange's tokens verified.
        """
        subject, actor = self.subject, self.actor
        return {
            "subject_token": None if subject is None else presented_token(subject),
            "actor_token": None if actor is None else presented_token(actor),
        }


#: The token request this coroutine serves (each request's runs in a
#: context of its own: Twisted runs a coroutine in a copy of the context it
#: was started in).
_ATTEMPT: ContextVar[TokenAttempt | None] = ContextVar("ccserver_token_attempt", default=None)


class TokenGrants:
    """
    The grant types the token endpoint offers, by C{grant_type}; the token
    route, audited.
    """

    def __init__(self, grants: Mapping[str, IGrantType], endpoint: TokenEndpoint) -> None:
        """
        @param endpoint: the steps the grants take, whose authenticator
            says who a refused request claimed to be.
        """
        self._grants = dict(grants)
        self._endpoint = endpoint
        #: The grant types offered, in order: discovery's
        #: C{grant_types_supported}, and what registration accepts.
        self.grant_types: tuple[str, ...] = tuple(self._grants)

    async def token(self, request: TokenRequest) -> IssuedToken:
        """
        The token the grant the request's C{grant_type} selects issues; the
        audit trail told of it (C{token.issued}) or of its refusal
        (C{token.refused}).

        @raise OAuthError: the refusal, as the grant or the endpoint's
            steps raised it.
        """
        attempt = TokenAttempt(request)
        reset = _ATTEMPT.set(attempt)
        try:
            grant = self.grant_for(request.form)
            issued = await grant.token(request)
            if not isinstance(issued, IssuedToken):
                raise TypeError(f"grant type {grant!r} returned {issued!r}")
        except Exception as error:
            request = attempt.request
            self._endpoint.authenticator.tell_refusal(
                audit.TOKEN_REFUSED,
                error,
                attempt.caller,
                request.authorization,
                request.form,
                request.source,
                assertion=request.form.get("assertion") if attempt.assertion else None,
                grant_type=request.form.get("grant_type"),
                **attempt.presented(),
            )
            raise
        finally:
            _ATTEMPT.reset(reset)
        client_id = issued.client_id
        caller = attempt.caller
        audit.emit(
            audit.TOKEN_ISSUED,
            audit.client(client_id),
            request.source or None,
            client_id=client_id,
            grant_type=request.form["grant_type"],
            scope=issued.scope,
            audience=issued.audience,
            token_id=issued.token_id,
            token_format=issued.token_format,
            expires_at=issued.expires_at,
            binding=binding(issued),
            auth_method=issued.auth_method,
            jkt=issued.jkt,
            x5t_s256=issued.x5t_s256,
            workload=None if caller is None else workload_of(caller),
            **attempt.presented(),
        )
        return issued

    def grant_for(self, form: Mapping[str, str]) -> IGrantType:
        """
        The grant the request's C{grant_type} selects.

        @raise OAuthError: C{invalid_request} without one,
            C{unsupported_grant_type} for one this server does not offer.
        """
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise invalid_request("grant_type: missing")
        grant = self._grants.get(grant_type)
        if grant is None:
            raise OAuthError(
                "unsupported_grant_type", f"grant_type: {grant_type!r} is not supported here"
            )
        return grant


@implementer(ITokenEndpoint)
class TokenEndpoint:
    """
    The steps of the token endpoint, as every grant takes them (see
    L{ITokenEndpoint}).

    It is made in two steps: first with what identifies it (the issuer,
    the reactor, the grant handler), so that the grant type plugins are
    made over it, and fail, before the server makes any file
    (L{ccserver.tap.prepare}); then L{connect}ed to what its steps use,
    with the rest of the object graph (L{ccserver.assembly}).
    """

    _authenticator: ClientAuthenticator
    _minter: TokenMinter
    _dpop: DPoPVerifier
    _issuance: IssuanceLimit | None
    _validators: dict[str, ISubjectTokenValidator]

    def __init__(
        self,
        issuer: str,
        handler: IClientCredentialsGrantHandler,
        reactor: Any = None,
        federated: bool = False,
    ) -> None:
        """
        @param federated: whether the server trusts issuers of workload
            tokens (C{[[trusted_issuers]]}); its authenticator, once
            connected, has their federation.
        """
        self.issuer = issuer
        self.reactor = reactor
        self.handler = handler
        self.federated = federated
        #: RFC 9449 §4.3 9.: the htu of a proof is the token endpoint's URL
        #: as clients know it (discovery's token_endpoint), whatever a proxy
        #: in front rewrote.
        self._token_endpoint = f"{issuer}/token"

    def connect(
        self,
        clients: IClientStore,
        minter: TokenMinter,
        dpop: DPoPVerifier,
        authenticator: ClientAuthenticator | None = None,
        issuance: IssuanceLimit | None = None,
        *,
        validators: Iterable[ISubjectTokenValidator] = (),
        handler: IClientCredentialsGrantHandler | None = None,
    ) -> None:
        """
        Give the steps what they use.

        @param authenticator: who is calling (within the brute-force
            limits); by default, the secret methods only (over C{clients}).
        @param issuance: the per-client issuance limits (each client's
            C{token_rate_limit}, and C{[limits] tokens_per_client_per_second}).
        @param validators: the token types accepted as RFC 8693 subject and
            actor tokens, one validator each.
        @param handler: the grant handler as the steps ask it, if not the
            one made with (the same, timed for the metrics).
        """
        self._dpop = dpop
        self._authenticator = authenticator or ClientAuthenticator(clients, now=minter.now)
        self._minter = minter
        self._issuance = issuance
        self._validators = {validator.token_type: validator for validator in validators}
        if handler is not None:
            self.handler = handler

    @property
    def authenticator(self) -> ClientAuthenticator:
        """
        Who is calling, once connected.
        """
        return self._authenticator

    @property
    def token_types(self) -> tuple[str, ...]:
        """
        The token types accepted as subject and actor tokens.
        """
        return tuple(self._validators)

    async def authenticate(self, request: TokenRequest) -> Client:
        return (await self.authenticated(request)).client

    async def authenticated(self, request: TokenRequest) -> Authenticated:
        caller = await self._authenticator.caller(
            request.authorization, request.form, request.certificate, request.source
        )
        _noted(caller)
        self.admit(request, caller.client)
        return caller

    async def authenticate_assertion(self, request: TokenRequest) -> Authenticated:
        attempt = _ATTEMPT.get()
        if attempt is not None:
            attempt.assertion = True
        caller = await assertion_caller(
            self._authenticator, request.form, request.authorization, request.source
        )
        _noted(caller)
        self.admit(request, caller.client)
        return caller

    def admit(self, request: TokenRequest, client: Client) -> None:
        grant_type = request.form["grant_type"]
        if grant_type not in client.metadata.get("grant_types", ()):
            raise OAuthError(
                "unauthorized_client", f"this client is not registered for {grant_type}"
            )

    async def identify(self, request: TokenRequest, token: VerifiedToken) -> Client:
        validator = self._validators.get(token.token_type)
        client = None if validator is None else await maybeDeferred(validator.client_for, token)
        if client is None:
            # RFC 7523 §3.1: the assertion is not valid for this server
            raise OAuthError("invalid_grant", "the token speaks for no registered client")
        if not isinstance(client, Client):
            raise TypeError(f"token validator {validator!r} returned {client!r}")
        attempt = _ATTEMPT.get()
        if attempt is not None:
            attempt.client = client
        self.admit(request, client)
        return client

    async def bind(self, request: TokenRequest, client: Client) -> Binding | None:
        if self._issuance is not None:
            waiting = self._issuance.take(client)
            if waiting is not None:
                await waiting
        metadata = client.metadata
        x5t_s256 = bound_thumbprint(metadata, request.certificate)
        if x5t_s256 is None and metadata.get(BOUND_TOKENS) is True:
            # RFC 8705 §3.4: the client said it wants bound tokens; a bearer
            # token issued instead would quietly weaken it.
            raise invalid_request(
                f"this client's tokens are bound to its TLS certificate ({BOUND_TOKENS}); "
                "present one"
            )
        # no coroutine for the request without a proof: the common case
        proof = (
            await self._dpop.check(request.dpop, "POST", self._token_endpoint)
            if request.dpop
            else None
        )
        if proof is None:
            if metadata.get("dpop_bound_access_tokens") is True:
                # RFC 9449 §5.2: "the authorization server MUST reject token
                # requests from the client that do not contain the DPoP
                # header", naming no error code; invalid_dpop_proof is for a
                # proof that is "invalid" (§5), and a request without one
                # lacks a required parameter: RFC 6749 §5.2 invalid_request.
                raise invalid_request(
                    "DPoP: this client is registered with dpop_bound_access_tokens; "
                    "send a DPoP proof"
                )
            return None if x5t_s256 is None else Binding(x5t_s256=x5t_s256)
        return Binding(jkt=proof.jkt, x5t_s256=x5t_s256, dpop_nonce=self._dpop.fresh_nonce())

    async def verify_token(self, token: str, token_type: str) -> VerifiedToken:
        validator = self._validators.get(token_type)
        if validator is None:
            raise invalid_request(
                f"token type {token_type!r} is not accepted here; it accepts "
                + ", ".join(self._validators)
            )
        verified = await maybeDeferred(validator.verify, token)
        if not isinstance(verified, VerifiedToken):
            raise TypeError(f"token validator {validator!r} returned {verified!r}")
        attempt = _ATTEMPT.get()
        if attempt is not None:
            # which of the request's tokens it is, for the audit trail
            form = attempt.request.form
            if token == form.get("subject_token"):
                attempt.subject = verified
            elif token == form.get("actor_token"):
                attempt.actor = verified
        return verified

    async def decide(self, grant: GrantRequest | TokenExchangeRequest) -> GrantAuthorization:
        authorize: Callable[[Any], Any] = (
            self.handler.authorize_exchange  # type: ignore[attr-defined]
            if isinstance(grant, TokenExchangeRequest)
            else self.handler.authorize
        )
        decision = await maybeDeferred(authorize, grant)
        if not isinstance(decision, GrantAuthorization):
            raise TypeError(f"grant handler {self.handler!r} returned {decision!r}")
        return decision

    def mint(
        self,
        request: TokenRequest,
        client: Client,
        decision: GrantAuthorization,
        binding: Binding | None,
        delegation: Delegation | None = None,
    ) -> Awaitable[IssuedToken]:
        attempt = _ATTEMPT.get()
        if attempt is not None:
            attempt.client = client
        # a client that named no method may post its secret: the metrics
        # count the method it used, not the one it was registered with
        auth_method = "client_secret_post" if "client_secret" in request.form else None
        # the minter's coroutine itself: no frame of its own here
        if binding is None:
            return self._minter.mint(
                client, decision, delegation=delegation, auth_method=auth_method
            )
        return self._minter.mint(
            client,
            decision,
            binding.jkt,
            x5t_s256=binding.x5t_s256,
            dpop_nonce=binding.dpop_nonce,
            delegation=delegation,
            auth_method=auth_method,
        )



def _noted(caller: Authenticated) -> None:
    """
    Note who the token request under way authenticated as, for the audit
    trail (L{TokenAttempt}).
    """
    attempt = _ATTEMPT.get()
    if attempt is not None:
        attempt.client = caller.client
        attempt.workload = caller.workload


@frozen
class OfferedGrants:
    """
    The grant types a server offers, made over its token endpoint (not yet
    connected).
    """

    endpoint: TokenEndpoint
    grants: TokenGrants

    @classmethod
    def made(
        cls,
        found: Found,
        issuer: str,
        handler: IClientCredentialsGrantHandler,
        reactor: Any,
        federated: bool = False,
    ) -> OfferedGrants:
        """
        Make the grants of the plugins found over a new endpoint.

        @param federated: whether the server trusts issuers of workload
            tokens (the JWT bearer grant is offered only then).
        @raise ccserver.pluginloader.PluginError: a plugin failed.
        """
        endpoint = TokenEndpoint(issuer, handler, reactor, federated)
        return cls(endpoint, TokenGrants(make_grants(found, endpoint), endpoint))
