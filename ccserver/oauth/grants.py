"""
The token endpoint's grant (RFC 6749 §4.4): a token request, in form
parameters, to an issued token.

    form -> client authentication -> GrantRequest -> grant handler
         -> GrantAuthorization -> token
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from twisted.internet.defer import maybeDeferred

from ccserver.errors import OAuthError, invalid_request
from ccserver.interfaces import IClientCredentialsGrantHandler, IClientStore
from ccserver.model import CLIENT_CREDENTIALS, GrantAuthorization, GrantRequest, IssuedToken
from ccserver.oauth.clientauth import authenticate, presented_credentials
from ccserver.oauth.registration import SCOPE_TOKEN, is_resource_uri
from ccserver.oauth.tokens import TokenMinter

#: Form parameters that are about authentication, not the grant.
_CREDENTIAL_PARAMS = frozenset({"client_id", "client_secret"})


def requested_scope(form: Mapping[str, str]) -> frozenset[str] | None:
    """
    RFC 6749 §3.3: the scope values of the request, or None when it named
    none.
    """
    scope = form.get("scope")
    if scope is None or not scope.strip(" "):
        return None
    values = scope.split(" ")
    if not all(SCOPE_TOKEN.fullmatch(v) for v in values if v):
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
    ) -> None:
        self._clients = clients
        self._handler = handler
        self._minter = minter
        self._issuer = issuer

    async def token(
        self,
        form: Mapping[str, str],
        authorization: str | None,
        resources: Sequence[str] = (),
    ) -> IssuedToken:
        """
        @param form: the request's form parameters, each given once.
        @param authorization: its C{Authorization} header, if any.
        @param resources: its RFC 8707 C{resource} parameters (repeatable).
        """
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise invalid_request("grant_type: missing")
        if grant_type != CLIENT_CREDENTIALS:
            raise OAuthError(
                "unsupported_grant_type", f"grant_type: {grant_type!r} is not supported here"
            )
        client = await authenticate(
            self._clients, presented_credentials(authorization, form), now=self._minter.now
        )
        if CLIENT_CREDENTIALS not in client.grant_types:
            raise OAuthError(
                "unauthorized_client", "this client is not registered for client_credentials"
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
        return await self._minter.mint(client, decision)
