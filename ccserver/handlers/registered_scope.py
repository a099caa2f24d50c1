"""
The default grant handler: a client gets what it registered.

  - scope: none requested, every registered value; a subset of the
    registered values, that subset; any value outside them, C{invalid_scope};
  - audience: none requested (RFC 8707 C{resource}), every registered
    C{audience} (or the server's default when none is registered); requested
    ones, those, if each is registered, else C{invalid_target};
  - lifetime: the client's C{access_token_lifetime}, else the server's
    (capped by the server's C{max_lifetime} either way).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zope.interface import implementer

from ccserver.errors import ConfigError, OAuthError
from ccserver.interfaces import IClientCredentialsGrantHandler
from ccserver.model import GrantAuthorization, GrantRequest


@implementer(IClientCredentialsGrantHandler)
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
        if grant.resource:
            unregistered = [r for r in grant.resource if r not in client.audience]
            if unregistered:
                raise OAuthError(
                    "invalid_target",
                    "resource: not registered for this client: " + " ".join(unregistered),
                )
        lifetime = client.metadata.get("access_token_lifetime")
        return GrantAuthorization(scope=scope, audience=audience, lifetime=lifetime)


def make_handler(config: Mapping[str, Any]) -> RegisteredScopeHandler:
    if config:
        raise ConfigError(
            f"[grant_handler] {sorted(config)[0]}: unknown key; "
            "the registered-scope handler takes no configuration"
        )
    return RegisteredScopeHandler()
