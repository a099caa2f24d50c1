"""
The token endpoint's grant (RFC 6749 §4.4): a token request, in form
parameters, to an issued token.

    form -> client authentication -> GrantRequest -> grant handler
         -> GrantAuthorization -> token
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from attrs import evolve
from twisted.internet.defer import maybeDeferred

from ccserver import audit
from ccserver.errors import OAuthError, invalid_request
from ccserver.interfaces import IClientCredentialsGrantHandler, IClientStore
from ccserver.model import (
    CLIENT_CREDENTIALS,
    Client,
    GrantAuthorization,
    GrantRequest,
    IssuedToken,
    is_resource_uri,
    is_scope_token,
)
from ccserver.oauth.clientauth import CREDENTIAL_PARAMS, ClientAuthenticator, tell_refusal
from ccserver.oauth.dpop import DPoPVerifier
from ccserver.oauth.limits import IssuanceLimit
from ccserver.oauth.mtls import BOUND_TOKENS, PresentedCertificate, bound_thumbprint
from ccserver.oauth.tokens import TokenMinter

#: Form parameters that are about authentication, not the grant.
_CREDENTIAL_PARAMS = CREDENTIAL_PARAMS


def requested_scope(form: Mapping[str, str]) -> frozenset[str] | None:
    """
    RFC 6749 §3.3: the scope values of the request, or None when it named
    none.
    """
    scope = form.get("scope")
    if scope is None or not scope.strip(" "):
        return None
    values = scope.split(" ")
    if not all(is_scope_token(v) for v in values if v):
        raise OAuthError("invalid_scope", "scope: malformed; scope values are separated by spaces")
    return frozenset(v for v in values if v)


def requested_resources(resources: Sequence[str]) -> tuple[str, ...]:
    """
    RFC 8707 §2: each C{resource} is an absolute URI without a fragment.
    """
    for resource in resources:
        if not is_resource_uri(resource):
            raise OAuthError(
                "invalid_target", f"resource: {resource!r} is not an absolute URI without fragment"
            )
    return tuple(dict.fromkeys(resources))


def binding(token: IssuedToken) -> str:
    """
    What a token is bound to, as the audit trail says it: C{bearer}
    (nothing), C{dpop} (RFC 9449), C{mtls} (RFC 8705), or C{dpop+mtls}.
    """
    kinds = [kind for kind, bound in (("dpop", token.jkt), ("mtls", token.x5t_s256)) if bound]
    return "+".join(kinds) or "bearer"


class _Attempt:
    """
    A token request under way, as its refusal is told: the client, once
    it has authenticated.
    """

    __slots__ = ("client",)

    def __init__(self) -> None:
        self.client: Client | None = None


class ClientCredentialsGrant:
    """
    Issues access tokens to clients that authenticate with their own
    credentials.
    """

    def __init__(
        self,
        clients: IClientStore,
        handler: IClientCredentialsGrantHandler,
        minter: TokenMinter,
        issuer: str,
        dpop: DPoPVerifier,
        authenticator: ClientAuthenticator | None = None,
        issuance: IssuanceLimit | None = None,
    ) -> None:
        """
        @param authenticator: who is calling (within the brute-force
            limits); by default, the secret methods only (over C{clients}).
        @param issuance: the per-client issuance limits (each client's
            C{token_rate_limit}, and C{[limits] tokens_per_client_per_second}).
        """
        self._dpop = dpop
        #: RFC 9449 §4.3 9.: the htu of a proof is the token endpoint's URL
        #: as clients know it (discovery's token_endpoint), whatever a proxy
        #: in front rewrote.
        self._token_endpoint = f"{issuer}/token"
        self._clients = clients
        self._authenticator = authenticator or ClientAuthenticator(clients, now=minter.now)
        self._handler = handler
        self._minter = minter
        self._issuer = issuer
        self._issuance = issuance

    async def token(
        self,
        form: Mapping[str, str],
        authorization: str | None,
        resources: Sequence[str] = (),
        dpop: Sequence[str] = (),
        certificate: PresentedCertificate | None = None,
        source: str = "",
    ) -> IssuedToken:
        """
        @param form: the request's form parameters, each given once.
        @param authorization: its C{Authorization} header, if any.
        @param resources: its RFC 8707 C{resource} parameters (repeatable).
        @param dpop: its C{DPoP} header values (RFC 9449), each one given.
        @param certificate: its TLS client certificate, if any (RFC 8705).
        @param source: the caller's address, which the limits count by.
        """
        attempt = _Attempt()
        try:
            issued = await self._issue(
                attempt, form, authorization, resources, dpop, certificate, source
            )
        except Exception as error:
            tell_refusal(
                audit.TOKEN_REFUSED,
                error,
                attempt.client,
                authorization,
                form,
                source,
                grant_type=form.get("grant_type"),
            )
            raise
        assert attempt.client is not None  # it was issued a token
        client_id = attempt.client.client_id
        audit.emit(
            audit.TOKEN_ISSUED,
            audit.client(client_id),
            source or None,
            client_id=client_id,
            grant_type=CLIENT_CREDENTIALS,
            scope=issued.scope,
            audience=issued.audience,
            token_id=issued.token_id,
            token_format=issued.token_format,
            expires_at=issued.expires_at,
            binding=binding(issued),
            auth_method=issued.auth_method,
            jkt=issued.jkt,
            x5t_s256=issued.x5t_s256,
        )
        return issued

    async def _issue(
        self,
        attempt: _Attempt,
        form: Mapping[str, str],
        authorization: str | None,
        resources: Sequence[str],
        dpop: Sequence[str],
        certificate: PresentedCertificate | None,
        source: str,
    ) -> IssuedToken:
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise invalid_request("grant_type: missing")
        if grant_type != CLIENT_CREDENTIALS:
            raise OAuthError(
                "unsupported_grant_type", f"grant_type: {grant_type!r} is not supported here"
            )
        client = attempt.client = await self._authenticator.authenticate(
            authorization, form, certificate, source
        )
        if self._issuance is not None:
            waiting = self._issuance.take(client)
            if waiting is not None:
                await waiting
        x5t_s256 = bound_thumbprint(client.metadata, certificate)
        if x5t_s256 is None and client.metadata.get(BOUND_TOKENS) is True:
            # RFC 8705 §3.4: the client said it wants bound tokens; a bearer
            # token issued instead would quietly weaken it.
            raise invalid_request(
                f"this client's tokens are bound to its TLS certificate ({BOUND_TOKENS}); "
                "present one"
            )
        if CLIENT_CREDENTIALS not in client.grant_types:
            raise OAuthError(
                "unauthorized_client", "this client is not registered for client_credentials"
            )
        proof = await self._dpop.check(dpop, "POST", self._token_endpoint)
        if proof is None and client.metadata.get("dpop_bound_access_tokens") is True:
            # RFC 9449 §5.2: "the authorization server MUST reject token
            # requests from the client that do not contain the DPoP header",
            # naming no error code; invalid_dpop_proof is for a proof that
            # is "invalid" (§5), and a request without one lacks a required
            # parameter: RFC 6749 §5.2 invalid_request.
            raise invalid_request(
                "DPoP: this client is registered with dpop_bound_access_tokens; "
                "send a DPoP proof"
            )
        grant = GrantRequest(
            client=client,
            scope=requested_scope(form),
            params={
                k: v
                for k, v in form.items()
                if k not in _CREDENTIAL_PARAMS and k not in ("grant_type", "scope")
            },
            issuer=self._issuer,
            resource=requested_resources(resources),
        )
        decision = await maybeDeferred(self._handler.authorize, grant)
        if not isinstance(decision, GrantAuthorization):
            raise TypeError(f"grant handler {self._handler!r} returned {decision!r}")
        issued = await self._minter.mint(
            client, decision, None if proof is None else proof.jkt, x5t_s256=x5t_s256
        )
        if "client_secret" in form and issued.auth_method != "client_secret_post":
            # a client that named no method posted its secret: the metrics
            # count the method it used, not the one it was registered with
            issued = evolve(issued, auth_method="client_secret_post")
        if proof is None:
            return issued
        return evolve(issued, dpop_nonce=self._dpop.fresh_nonce())
