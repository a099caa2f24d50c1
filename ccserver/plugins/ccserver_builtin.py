"""
The built-in grant handler plugins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from ccserver.interfaces import IClientCredentialsGrantHandler, IGrantHandlerFactory


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
