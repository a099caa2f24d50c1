"""
The built-in plugins: the grant handlers and the grant types ccserver ships,
plugins like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from ccserver.errors import GrantNotConfigured, GrantUnavailable
from ccserver.interfaces import (
    IClientCredentialsGrantHandler,
    IGrantHandlerFactory,
    IGrantType,
    IGrantTypeFactory,
    ITokenEndpoint,
    ITokenExchangeHandler,
)
from ccserver.model import CLIENT_CREDENTIALS, JWT_BEARER_GRANT, TOKEN_EXCHANGE


@implementer(IPlugin, IGrantHandlerFactory)
class _RegisteredScope:
    name = "registered-scope"
    description = "grants the scope the client registered (the default)"

    def makeHandler(self, config: Mapping[str, Any], reactor: Any) -> IClientCredentialsGrantHandler:
        from ccserver.handlers.registered_scope import make_handler

        return make_handler(config)


registered_scope = _RegisteredScope()


@implementer(IPlugin, IGrantHandlerFactory)
class _Webhook:
    name = "webhook"
    description = "asks an external web service ([grant_handler] url) for each grant"

    def makeHandler(self, config: Mapping[str, Any], reactor: Any) -> IClientCredentialsGrantHandler:
        from ccserver.handlers.webhook import WebhookHandler, parse_config
        from ccserver.outbound import AddressPolicy, http_client

        settings = parse_config(config)
        # the operator wrote the URL: it may point anywhere, a private
        # network included
        http, pool = http_client(
            reactor, connect_timeout=settings.timeout, policy=AddressPolicy.any_address()
        )
        return WebhookHandler(settings, http, reactor, pool)


webhook = _Webhook()


@implementer(IPlugin, IGrantTypeFactory)
class _ClientCredentials:
    grant_type = CLIENT_CREDENTIALS
    description = "a client trades its own credentials for a token (RFC 6749 §4.4)"

    def makeGrant(self, endpoint: ITokenEndpoint) -> IGrantType:
        from ccserver.grants.client_credentials import ClientCredentialsGrant

        return ClientCredentialsGrant(endpoint)


client_credentials = _ClientCredentials()


@implementer(IPlugin, IGrantTypeFactory)
class _TokenExchange:
    grant_type = TOKEN_EXCHANGE
    description = (
        "a client trades a token it was given for one to call another service "
        "on its subject's behalf (RFC 8693)"
    )

    def makeGrant(self, endpoint: ITokenEndpoint) -> IGrantType:
        from ccserver.grants.token_exchange import TokenExchangeGrant

        if not ITokenExchangeHandler.providedBy(endpoint.handler):
            raise GrantUnavailable(
                f"the grant handler {endpoint.handler!r} does not decide token exchanges "
                "(it does not provide ccserver.interfaces.ITokenExchangeHandler); give it "
                "authorize_exchange(exchange), see docs/grant-handlers.md"
            )
        return TokenExchangeGrant(endpoint)


token_exchange = _TokenExchange()


@implementer(IPlugin, IGrantTypeFactory)
class _JWTBearer:
    grant_type = JWT_BEARER_GRANT
    description = (
        "a workload trades the token its platform gave it (Kubernetes, SPIFFE, CI) "
        "for its bound client's token (RFC 7523 §2.1; [[trusted_issuers]])"
    )

    def makeGrant(self, endpoint: ITokenEndpoint) -> IGrantType:
        from ccserver.grants.jwt_bearer import JWTBearerGrant

        if not endpoint.federated:
            raise GrantNotConfigured(
                "this server trusts no issuer of workload tokens: add [[trusted_issuers]] "
                "to offer it (docs/workload-identity.md)"
            )
        return JWTBearerGrant(endpoint)


jwt_bearer = _JWTBearer()
