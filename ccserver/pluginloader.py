"""
Finding the Twisted plugins of L{ccserver.plugins}, of every kind ccserver
has (grant handlers, grant types), with every way one can fail at start
said in one line.

Plugins are found as L{twisted.plugin.getPlugins} finds them: every module
of the package's folders (C{ccserver/plugins/} anywhere on C{sys.path}),
each module-level object that provides L{IPlugin} and the kind's factory
interface.  The modules are imported here rather than by C{getPlugins},
which logs a traceback for every module that fails to import, at every
start: a plugin written against another version of the plugin API would
greet its operator with one.  Here each module is imported once per start
(L{scan_plugins}), and every way a plugin can fail (its module does not
import, its factory has no name, two share one, the factory method has the
wrong signature, raises, or makes something of the wrong kind) is one line,
L{PluginError}, naming the plugin and saying what to change.
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Callable, Mapping
from types import ModuleType, TracebackType
from typing import Any

from attrs import frozen
from twisted.plugin import IPlugin
from twisted.python.modules import getModule
from zope.interface.interface import InterfaceClass

from ccserver.errors import ConfigError


class PluginError(ConfigError):
    """
    A plugin cannot be used: the message is one line that names the plugin
    (its name and file) and says what to change.
    """


@frozen
class PluginKind:
    """
    One kind of plugin: what its factories provide, what selects one, and
    what its factory method makes.  The words here go into the one-line
    messages.

    @ivar what: what a plugin of the kind is called, C{"grant handler"}.
    @ivar key: the factory attribute that names it (C{name}, C{grant_type}).
    @ivar key_help: how to fix a factory without a usable C{key}.
    @ivar check_key: None for a usable key, else what is wrong with it.
    @ivar make: the factory method, C{makeHandler}.
    @ivar parameters: what it is called with, C{("config", "reactor")}.
    @ivar signature_hint: after "define <signature>" in a signature error.
    @ivar legacy: what a one-argument factory method lacks (C{"reactor"}),
        for the one earlier signature a plugin may still have; or None.
    @ivar failure_hint: after "fix the plugin" when the method raised.
    @ivar passes: the exception the method may raise with its own message
        (L{ConfigError}: a mistake in the plugin's configuration).
    @ivar product: the interface of what the method makes.
    @ivar product_method: the method what it makes must have, C{authorize}.
    @ivar product_parameters: that method's parameters after self.
    @ivar clash: how two plugins share a key, C{"are called"}.
    @ivar clash_fix: what to do about it.
    """

    interface: InterfaceClass
    what: str
    key: str
    key_help: str
    make: str
    parameters: tuple[str, ...]
    product: InterfaceClass
    product_method: str
    product_parameters: tuple[str, ...]
    clash: str
    clash_fix: str
    signature_hint: str = " (docs/grant-handlers.md)"
    failure_hint: str = ""
    legacy: str | None = None
    check_key: Callable[[str], str | None] = lambda key: None
    passes: type[Exception] = ConfigError

    @property
    def called_as(self) -> str:
        """
        How ccserver calls the factory method, C{makeHandler(config, reactor)}.
        """
        return f"{self.make}({', '.join(self.parameters)})"

    @property
    def define(self) -> str:
        return f"def {self.make}({', '.join(('self', *self.parameters))})"


@frozen
class Plugin:
    """
    A factory found among the plugins.

    @ivar origin: the file of the module that defines it.
    """

    kind: PluginKind
    name: str
    factory: Any
    origin: str

    def __str__(self) -> str:
        return f"{self.kind.what} plugin {self.name!r} ({self.origin})"

    def make(self, *arguments: Any) -> Any:
        """
        Call the factory method with C{arguments}, and check what it made.

        @raise ConfigError: (or the kind's L{PluginKind.passes}) the factory
            refused, with its own message.
        @raise PluginError: for anything else that goes wrong.
        """
        kind = self.kind
        make = getattr(self.factory, kind.make, None)
        if not callable(make):
            raise PluginError(f"{self}: has no {kind.make} method; define {kind.define}")
        _check_signature(self, make)
        try:
            made = make(*arguments)
        except kind.passes:
            raise
        except Exception as e:
            raise PluginError(
                f"{self}: {kind.make} failed: {one_line(e)}"
                f"{_where(e.__traceback__, self.origin)}; fix the plugin{kind.failure_hint}"
            ) from None
        product = kind.product.__name__
        if not kind.product.providedBy(made):
            raise PluginError(
                f"{self}: {kind.make} returned {_short_repr(made)}, which does not provide "
                f"{product}: return an object whose class is declared @implementer({product}) "
                f"and has {kind.product_method}({', '.join(kind.product_parameters)})"
            )
        if not callable(getattr(made, kind.product_method, None)):
            raise PluginError(
                f"{self}: {kind.make} returned {_short_repr(made)}, which has no "
                f"{kind.product_method} method: give its class "
                f"{kind.product_method}({', '.join(('self', *kind.product_parameters))})"
            )
        return made


def _check_signature(plugin: Plugin, make: Any) -> None:
    """
    Refuse a factory method that cannot take the kind's parameters, before
    calling it: a L{TypeError} from the call could as well come from inside.

    The plugin API has no second signature to fall back on: a plugin with
    an earlier one is told exactly what to change instead of being run
    without what it should use.
    """
    kind = plugin.kind
    try:
        signature = inspect.signature(make)
    except (TypeError, ValueError):  # a callable Python cannot describe: call it
        return
    try:
        signature.bind(*(object() for _ in kind.parameters))
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
        f"takes no {kind.legacy}"
        if kind.legacy is not None and len(positional) == 1 and len(signature.parameters) == 1
        else f"cannot be called as {kind.called_as}"
    )
    plain = signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=signature.empty,
    )
    raise PluginError(
        f"{plugin}: its {kind.make}{plain} {what}: ccserver calls {kind.called_as}; "
        f"define {kind.define}{kind.signature_hint}"
    )


def one_line(error: BaseException) -> str:
    """
    An exception as one line: its class and its message, spaces collapsed.
    """
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
    The plugins of one kind found, by their key, and one line for each
    thing that kept a plugin from being found.

    @ivar unimportable: the modules that could not be imported (of which
        kind they are, nobody can tell).
    @ivar broken: the factories of this kind that cannot be used: no
        L{IPlugin}, no usable key.
    @ivar clashes: the keys more than one plugin claims, with the problem
        line for each.
    """

    plugins: Mapping[str, Plugin]
    unimportable: tuple[str, ...]
    broken: tuple[str, ...]
    clashes: Mapping[str, str]

    @property
    def problems(self) -> tuple[str, ...]:
        """
        Every line, in the order found: the modules, then the factories,
        then the clashes.
        """
        return (*self.unimportable, *self.broken, *self.clashes.values())


@frozen
class PluginScan:
    """
    The modules of the plugin package, each imported once: every kind of
    plugin is found among the same modules.

    @ivar modules: (its file, the module) for each module that imported.
    @ivar unimportable: one line for each module that did not.
    """

    modules: tuple[tuple[str, ModuleType], ...]
    unimportable: tuple[str, ...]

    def find(self, kind: PluginKind) -> Found:
        """
        Every plugin of C{kind}.
        """
        plugins: dict[str, list[Plugin]] = {}
        broken: list[str] = []
        seen: set[int] = set()  # a factory another module imported is found once
        interface = kind.interface.__name__
        for origin, module in self.modules:
            for value in vars(module).values():
                if id(value) in seen or not kind.interface.providedBy(value):
                    continue
                seen.add(id(value))
                what = f"{origin}: {type(value).__qualname__}"
                if not IPlugin.providedBy(value):
                    broken.append(
                        f"{what} provides {interface} but not twisted.plugin.IPlugin: "
                        f"declare both, @implementer(IPlugin, {interface})"
                    )
                    continue
                key = getattr(value, kind.key, None)
                if not isinstance(key, str) or not key:
                    broken.append(f"{what} has no {kind.key}: {kind.key_help}")
                    continue
                problem = kind.check_key(key)
                if problem is not None:
                    broken.append(f"{what}: its {kind.key} {key!r} {problem}")
                    continue
                plugins.setdefault(key, []).append(Plugin(kind, key, value, origin))
        clashes = {
            key: f"{len(same)} {kind.what} plugins {kind.clash} {key!r} ("
            + ", ".join(plugin.origin for plugin in same)
            + f"): {kind.clash_fix}"
            for key, same in plugins.items()
            if len(same) > 1
        }
        return Found(
            {key: same[0] for key, same in plugins.items() if len(same) == 1},
            self.unimportable,
            tuple(broken),
            clashes,
        )


def scan_plugins(package: ModuleType | None = None) -> PluginScan:
    """
    Import every module of C{package} [default: L{ccserver.plugins}].
    """
    if package is None:
        import ccserver.plugins

        package = ccserver.plugins
    modules: list[tuple[str, ModuleType]] = []
    unimportable: list[str] = []
    for module_info in getModule(package.__name__).iterModules():
        origin = module_info.filePath.path
        try:
            module = module_info.load()
        except Exception as e:
            unimportable.append(
                f"{origin} could not be imported: {one_line(e)}"
                f"{_where(e.__traceback__, origin)}; fix or remove it"
            )
            continue
        modules.append((origin, module))
    return PluginScan(tuple(modules), tuple(unimportable))
