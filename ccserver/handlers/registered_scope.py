"""
The default grant handler: a client gets what it registered.

For a client credentials grant:

  - scope: none requested, every registered value; a subset of the
    registered values, that subset; any value outside them, C{invalid_scope};
  - audience: none requested (RFC 8707 C{resource}), every registered
    C{audience} (or the server's default when none is registered); requested
    ones, those, if each is registered, else C{invalid_target};
  - lifetime: the client's C{access_token_lifetime}, else the server's
    (capped by the server's C{max_lifetime} either way).

For a token exchange (RFC 8693), the same, within what the subject token
carries (docs/token-exchange.md):

  - scope: within both the subject token's scope and the exchanging
    client's registered scope: none requested, every value of both;
    a value outside either, C{invalid_scope};
  - audience: the C{audience} and C{resource} values requested, each
    among the exchanging client's registered C{audience} (else
    C{invalid_target}); none requested, all of them;
  - lifetime: as above (the server ends the token no later than the
    subject token);
  - claims: the subject token's own extra claims (a handler's, such as a
    tenant), carried over for this server's access tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zope.interface import implementer

from ccserver.errors import ConfigError, OAuthError
from ccserver.interfaces import IClientCredentialsGrantHandler, ITokenExchangeHandler
from ccserver.model import (
    ACCESS_TOKEN_TYPE,
    RESERVED_CLAIMS,
    Client,
    GrantAuthorization,
    GrantRequest,
    TokenExchangeRequest,
)


def _registered_targets(client: Client, name: str, requested: tuple[str, ...]) -> None:
    unregistered = [target for target in requested if target not in client.audience]
    if unregistered:
        raise OAuthError(
            "invalid_target",
            f"{name}: not registered for this client: " + " ".join(unregistered),
        )


@implementer(IClientCredentialsGrantHandler, ITokenExchangeHandler)
class RegisteredScopeHandler:
    def authorize(self, grant: GrantRequest) -> GrantAuthorization:
        client = grant.client
        scope = client.scope if grant.scope is None else grant.scope
        outside = scope - client.scope
        if outside:
            raise OAuthError(
                "invalid_scope",
                "scope: not registered for this client: " + " ".join(sorted(outside)),
            )
        audience = grant.resource or client.audience or None
        _registered_targets(client, "resource", grant.resource)
        lifetime = client.metadata.get("access_token_lifetime")
        return GrantAuthorization(scope=scope, audience=audience, lifetime=lifetime)

    def authorize_exchange(self, exchange: TokenExchangeRequest) -> GrantAuthorization:
        client = exchange.client
        carried = exchange.subject.scope
        if exchange.scope is None:
            scope = carried & client.scope
        else:
            beyond = exchange.scope - carried
            if beyond:
                raise OAuthError(
                    "invalid_scope",
                    "scope: more than the subject token carries: " + " ".join(sorted(beyond)),
                )
            outside = exchange.scope - client.scope
            if outside:
                raise OAuthError(
                    "invalid_scope",
                    "scope: not registered for this client: " + " ".join(sorted(outside)),
                )
            scope = exchange.scope
        _registered_targets(client, "audience", exchange.audience)
        _registered_targets(client, "resource", exchange.resource)
        claims: dict[str, Any] = {}
        if exchange.subject.token_type == ACCESS_TOKEN_TYPE:
            claims = {
                name: value
                for name, value in exchange.subject.claims.items()
                if name not in RESERVED_CLAIMS
            }
        return GrantAuthorization(
            scope=scope,
            audience=exchange.targets or client.audience or None,
            lifetime=client.metadata.get("access_token_lifetime"),
            claims=claims,
        )


def make_handler(config: Mapping[str, Any]) -> RegisteredScopeHandler:
    if config:
        raise ConfigError(
            f"[grant_handler] {sorted(config)[0]}: unknown key; "
            "the registered-scope handler takes no configuration"
        )
    return RegisteredScopeHandler()
