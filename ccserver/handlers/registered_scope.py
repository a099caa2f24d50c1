"""
The default grant handler: a client gets the scope it registered.

  - no scope requested: every registered scope value;
  - a subset of the registered values: that subset;
  - any value outside them: C{invalid_scope}.
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
        registered = grant.client.scope
        if grant.scope is None:
            return GrantAuthorization(scope=registered)
        outside = grant.scope - registered
        if outside:
            raise OAuthError(
                "invalid_scope",
                "scope: not registered for this client: " + " ".join(sorted(outside)),
            )
        return GrantAuthorization(scope=grant.scope)


def make_handler(config: Mapping[str, Any]) -> RegisteredScopeHandler:
    if config:
        raise ConfigError(
            f"[grant_handler] {sorted(config)[0]}: unknown key; "
            "the registered-scope handler takes no configuration"
        )
    return RegisteredScopeHandler()
