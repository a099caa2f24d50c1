"""
Grant handlers, and finding the one the configuration names among the
Twisted plugins of L{ccserver.plugins}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.plugin import getPlugins

from ccserver.errors import ConfigError
from ccserver.interfaces import IClientCredentialsGrantHandler, IGrantHandlerFactory


def available() -> dict[str, IGrantHandlerFactory]:
    """
    Every grant handler factory found, by name.
    """
    import ccserver.plugins

    return {
        factory.name: factory
        for factory in getPlugins(IGrantHandlerFactory, ccserver.plugins)
    }


def make_handler(
    name: str, config: Mapping[str, Any], reactor: Any
) -> IClientCredentialsGrantHandler:
    """
    The handler of the factory called C{name}, made from C{config} with
    C{reactor} (which it uses for any timer or connection it needs).

    @raise ConfigError: no factory has that name, or it refused the
        configuration.
    """
    factories = available()
    factory = factories.get(name)
    if factory is None:
        raise ConfigError(
            f"[grant_handler] name: no grant handler called {name!r}; available: "
            + ", ".join(sorted(factories))
        )
    handler = factory.makeHandler(config, reactor)
    if not IClientCredentialsGrantHandler.providedBy(handler):
        raise ConfigError(
            f"[grant_handler] name: the {name!r} plugin made {handler!r}, "
            "which does not provide IClientCredentialsGrantHandler"
        )
    return handler
