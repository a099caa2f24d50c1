"""
Grant handlers, and finding the one the configuration names among the
Twisted plugins of L{ccserver.plugins}.

Plugins are found as L{twisted.plugin.getPlugins} finds them: every module
of the package's folders (C{ccserver/plugins/} anywhere on C{sys.path}),
each module-level object that provides L{IPlugin} and
L{IGrantHandlerFactory}.  The modules are imported here rather than by
C{getPlugins}, which logs a traceback for every module that fails to import,
at every start, chosen or not: a plugin written against another version of
the plugin API would greet its operator with one.  Here every way a plugin
can fail at start (its module does not import, its factory has no name,
two share one, C{makeHandler} has the wrong signature, raises, or makes
something that is not a handler) is one line, L{PluginError}, naming the
plugin and saying what to change.
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Mapping
from types import ModuleType, TracebackType
from typing import Any

from attrs import frozen
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.modules import getModule

from ccserver.errors import ConfigError
from ccserver.interfaces import IClientCredentialsGrantHandler, IGrantHandlerFactory

_log = Logger()

#: What a factory's C{makeHandler} is called with, for the messages.
CALLED_AS = "makeHandler(config, reactor)"


class PluginError(ConfigError):
    """
    A grant handler plugin cannot be used: the message is one line that
    names the plugin (its name and file) and says what to change.
    """


@frozen
class Plugin:
    """
    A grant handler factory found among the plugins.

    @ivar origin: the file of the module that defines it.
    """

    name: str
    factory: IGrantHandlerFactory
    origin: str

    def __str__(self) -> str:
        return f"grant handler plugin {self.name!r} ({self.origin})"

    def make_handler(self, config: Mapping[str, Any], reactor: Any) -> IClientCredentialsGrantHandler:
        """
        Call the factory, and check what it made.

        @raise ConfigError: the factory refused its configuration (its own
            message, naming the key).
        @raise PluginError: for anything else that goes wrong.
        """
        make = getattr(self.factory, "makeHandler", None)
        if not callable(make):
            raise PluginError(f"{self}: has no makeHandler method; define {_DEFINE}")
        _check_signature(self, make)
        try:
            handler = make(config, reactor)
        except ConfigError:
            raise
        except Exception as e:
            raise PluginError(
                f"{self}: makeHandler failed: {_one_line(e)}"
                f"{_where(e.__traceback__, self.origin)}; fix the plugin, or have it raise "
                "ccserver.errors.ConfigError('[grant_handler] <key>: ...') for a mistake "
                "in its configuration"
            ) from None
        if not IClientCredentialsGrantHandler.providedBy(handler):
            raise PluginError(
                f"{self}: makeHandler returned {_short_repr(handler)}, which does not provide "
                "IClientCredentialsGrantHandler: return an object whose class is declared "
                "@implementer(IClientCredentialsGrantHandler) and has authorize(grant)"
            )
        if not callable(getattr(handler, "authorize", None)):
            raise PluginError(
                f"{self}: makeHandler returned {_short_repr(handler)}, which has no "
                "authorize method: give its class authorize(self, grant)"
            )
        return handler


_DEFINE = "def makeHandler(self, config, reactor)"


def _check_signature(plugin: Plugin, make: Any) -> None:
    """
    Refuse a C{makeHandler} that cannot take C{(config, reactor)}, before
    calling it: a L{TypeError} from the call could as well come from inside.

    The plugin API has no second signature to fall back on: no release of
    ccserver ever called C{makeHandler(config)} (the reactor came in before
    the first), so a plugin with the earlier signature is told exactly what
    to change instead of being run without the reactor it should use.
    """
    try:
        signature = inspect.signature(make)
    except (TypeError, ValueError):  # a callable Python cannot describe: call it
        return
    try:
        signature.bind(object(), object())
    except TypeError:
        pass
    else:
        return
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    what = (
        "takes no reactor"
        if len(positional) == 1 and len(signature.parameters) == 1
        else f"cannot be called as {CALLED_AS}"
    )
    plain = signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=signature.empty,
    )
    raise PluginError(
        f"{plugin}: its makeHandler{plain} {what}: ccserver calls {CALLED_AS}; "
        f"define {_DEFINE} and use that reactor for timers and connections "
        "(docs/grant-handlers.md)"
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _short_repr(value: object) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def _where(tb: TracebackType | None, origin: str) -> str:
    """
    Where an error was raised: C{" (line N)"} of the plugin's own file if
    that is on the way (its innermost line there), else C{" (at file:line)"}
    of the innermost line.
    """
    frames = traceback.extract_tb(tb)
    own = [frame for frame in frames if frame.filename == origin]
    if own:
        return f" (line {own[-1].lineno})"
    if frames:
        return f" (at {frames[-1].filename}:{frames[-1].lineno})"
    return ""


@frozen
class Found:
    """
    The grant handler plugins found, by name, and one line for each thing
    that kept a plugin from being found.
    """

    plugins: Mapping[str, Plugin]
    problems: tuple[str, ...]
    #: The names more than one plugin claims, with the problem line for each.
    clashes: Mapping[str, str]

    def plugin(self, name: str) -> Plugin:
        """
        The plugin called C{name}.

        @raise PluginError: no plugin, or more than one, has that name; the
            message lists the ones there are, and why any others could not
            be loaded.
        """
        if name in self.clashes:
            raise PluginError(self.clashes[name])
        plugin = self.plugins.get(name)
        if plugin is None:
            raise PluginError(
                f"[grant_handler] name: no grant handler called {name!r}; available: "
                + ", ".join(sorted(self.plugins))
                + "".join(f"; {problem}" for problem in self.problems)
            )
        return plugin


def find_plugins(package: ModuleType | None = None) -> Found:
    """
    Every grant handler plugin of C{package} [default: L{ccserver.plugins}].
    """
    if package is None:
        import ccserver.plugins

        package = ccserver.plugins
    plugins: dict[str, list[Plugin]] = {}
    problems: list[str] = []
    seen: set[int] = set()  # a factory another module imported is found once
    for module_info in getModule(package.__name__).iterModules():
        origin = module_info.filePath.path
        try:
            module = module_info.load()
        except Exception as e:
            problems.append(
                f"{origin} could not be imported: {_one_line(e)}"
                f"{_where(e.__traceback__, origin)}; fix or remove it"
            )
            continue
        for value in vars(module).values():
            if id(value) in seen or not IGrantHandlerFactory.providedBy(value):
                continue
            seen.add(id(value))
            what = f"{origin}: {type(value).__qualname__}"
            if not IPlugin.providedBy(value):
                problems.append(
                    f"{what} provides IGrantHandlerFactory but not twisted.plugin.IPlugin: "
                    "declare both, @implementer(IPlugin, IGrantHandlerFactory)"
                )
                continue
            name = getattr(value, "name", None)
            if not isinstance(name, str) or not name:
                problems.append(
                    f"{what} has no name: give its class a name attribute (the name "
                    "that selects it) and a description"
                )
                continue
            plugins.setdefault(name, []).append(Plugin(name, value, origin))
    clashes = {
        name: f"{len(same)} grant handler plugins are called {name!r} ("
        + ", ".join(plugin.origin for plugin in same)
        + "): rename all but one"
        for name, same in plugins.items()
        if len(same) > 1
    }
    return Found(
        {name: same[0] for name, same in plugins.items() if len(same) == 1},
        (*problems, *clashes.values()),
        clashes,
    )


def available() -> dict[str, IGrantHandlerFactory]:
    """
    Every grant handler factory found, by name.
    """
    return {name: plugin.factory for name, plugin in find_plugins().plugins.items()}


def make_handler(
    name: str, config: Mapping[str, Any], reactor: Any
) -> IClientCredentialsGrantHandler:
    """
    The handler of the plugin called C{name}, made from C{config} with
    C{reactor} (which it uses for any timer or connection it needs).  What
    kept other plugins from loading is logged, one line each.

    @raise ConfigError: the plugin refused the configuration.
    @raise PluginError: no plugin has that name, or it failed in any other
        way (L{Plugin.make_handler}).
    """
    found = find_plugins()
    plugin = found.plugin(name)
    for problem in found.problems:
        _log.warn("A grant handler plugin was not loaded: {problem}", problem=problem)
    return plugin.make_handler(config, reactor)
