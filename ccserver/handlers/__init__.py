"""
Grant handlers, and finding the one the configuration names among the
Twisted plugins of L{ccserver.plugins} (L{ccserver.pluginloader}: every way
a plugin can fail at start is one line, L{PluginError}, naming it and
saying what to change).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

from twisted.logger import Logger

from ccserver.interfaces import IClientCredentialsGrantHandler, IGrantHandlerFactory
from ccserver.pluginloader import Found, Plugin, PluginError, PluginKind, PluginScan, scan_plugins

__all__ = [
    "CALLED_AS",
    "GRANT_HANDLERS",
    "PluginError",
    "available",
    "find_plugins",
    "make_handler",
    "plugin",
]

_log = Logger()

#: Grant handler plugins: chosen by name, made with the C{[grant_handler]}
#: table and the reactor.
GRANT_HANDLERS = PluginKind(
    interface=IGrantHandlerFactory,
    what="grant handler",
    key="name",
    key_help="give its class a name attribute (the name that selects it) and a description",
    make="makeHandler",
    parameters=("config", "reactor"),
    signature_hint=(
        " and use that reactor for timers and connections (docs/grant-handlers.md)"
    ),
    legacy="reactor",
    failure_hint=(
        ", or have it raise ccserver.errors.ConfigError('[grant_handler] <key>: ...') "
        "for a mistake in its configuration"
    ),
    product=IClientCredentialsGrantHandler,
    product_method="authorize",
    product_parameters=("grant",),
    clash="are called",
    clash_fix="rename all but one",
)

#: What a factory's C{makeHandler} is called with, for the messages.
CALLED_AS = GRANT_HANDLERS.called_as


def find_plugins(package: ModuleType | None = None) -> Found:
    """
    Every grant handler plugin of C{package} [default: L{ccserver.plugins}].
    """
    return scan_plugins(package).find(GRANT_HANDLERS)


def plugin(found: Found, name: str) -> Plugin:
    """
    The grant handler plugin called C{name}.

    @raise PluginError: no plugin, or more than one, has that name; the
        message lists the ones there are, and why any others could not be
        loaded.
    """
    if name in found.clashes:
        raise PluginError(found.clashes[name])
    chosen = found.plugins.get(name)
    if chosen is None:
        raise PluginError(
            f"[grant_handler] name: no grant handler called {name!r}; available: "
            + ", ".join(sorted(found.plugins))
            + "".join(f"; {problem}" for problem in found.problems)
        )
    return chosen


def available() -> dict[str, IGrantHandlerFactory]:
    """
    Every grant handler factory found, by name.
    """
    return {name: plugin.factory for name, plugin in find_plugins().plugins.items()}


def make_handler(
    name: str, config: Mapping[str, Any], reactor: Any, scan: PluginScan | None = None
) -> IClientCredentialsGrantHandler:
    """
    The handler of the plugin called C{name}, made from C{config} with
    C{reactor} (which it uses for any timer or connection it needs).  What
    kept other plugins from loading is logged, one line each.

    @param scan: the plugin modules, when the caller has imported them
        already; what kept a module from importing is then the caller's to
        log.
    @raise ConfigError: the plugin refused the configuration.
    @raise PluginError: no plugin has that name, or it failed in any other
        way (L{Plugin.make}).
    """
    found = (scan or scan_plugins()).find(GRANT_HANDLERS)
    chosen = plugin(found, name)
    problems = found.problems if scan is None else (*found.broken, *found.clashes.values())
    for problem in problems:
        _log.warn("A grant handler plugin was not loaded: {problem}", problem=problem)
    handler: IClientCredentialsGrantHandler = chosen.make(config, reactor)
    return handler
