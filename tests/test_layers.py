"""
Dependencies point one way, down (docs/architecture.md): every import
between ccserver's modules is read from the source (with L{ast}, so
imports inside functions and under C{TYPE_CHECKING} count too) and checked
against L{LAYERS}; and no modules import each other in a circle, not even
within one part.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import ccserver

#: The parts of ccserver, highest first: part name -> (rank, module
#: prefixes).  A module may import its own part, or a part of a lower rank;
#: an import of a higher rank is upward, one of another part of the same
#: rank sideways, and both fail.  The longest prefix decides a module's part
#: (C{ccserver.oauth.tokens} is C{tokens}, not C{oauth}).
LAYERS: dict[str, tuple[int, tuple[str, ...]]] = {
    # The daemon: composition root, services, the admin command, config.
    "daemon": (
        5,
        (
            "ccserver.tap",
            "ccserver.assembly",
            "ccserver.services",
            "ccserver.listening",
            "ccserver.workers",
            "ccserver.admin",
            "ccserver.firststart",
            "ccserver.config",
            "ccserver.auditlog",
        ),
    ),
    # HTTP in and out; nothing below touches a request.
    "web": (
        4,
        (
            "ccserver.web",
            "ccserver.httpchannel",
            "ccserver.tls",
            "ccserver.tokenjson",
            "ccserver.proxies",
            "ccserver.accesslog",
        ),
    ),
    # The protocol's endpoints.
    "oauth": (3, ("ccserver.oauth",)),
    # Readiness: the store answers and a signing key is loaded.
    "health": (3, ("ccserver.health",)),
    # The plugins: grant handlers and grant types, the plugin package, and
    # the loader that finds them.
    "plugins": (
        2,
        ("ccserver.handlers", "ccserver.grants", "ccserver.plugins", "ccserver.pluginloader"),
    ),
    "tokens": (2, ("ccserver.oauth.tokens",)),
    # JWK sets fetched from elsewhere (a client's jwks_uri; trusted issuers').
    "keysets": (2, ("ccserver.keysets",)),
    "keys": (1, ("ccserver.keys", "ccserver.jose")),
    # Outbound HTTP: the pooled client, bounded bodies, where it may connect.
    "outbound": (1, ("ccserver.outbound",)),
    "credentials": (1, ("ccserver.credentials",)),
    # What the operator's command and the registry share: secret rotation,
    # the public view of a client, paging through all of them.
    "clients": (2, ("ccserver.clients",)),
    # What the metrics count; the web layer and the daemon report to it.
    "metrics": (1, ("ccserver.metrics",)),
    # Beside keys; the layers above reach a store through ccserver.interfaces.
    "stores": (1, ("ccserver.stores",)),
    # The audit trail's schema and emission: every layer says what happened.
    "audit": (0, ("ccserver.audit",)),
    # Where log lines go (a stream, a file that follows logrotate): the
    # access log's and the audit trail's; imports nothing else of ccserver.
    "logfiles": (0, ("ccserver.logfiles",)),
    # OpenTelemetry spans: the traced parts and the outbound request's
    # trace context; imports nothing else of ccserver.
    "tracing": (0, ("ccserver.tracing",)),
    # The domain and its rules, the errors, the interfaces.
    "base": (
        0,
        (
            "ccserver.model",
            "ccserver.errors",
            "ccserver.interfaces",
            "ccserver.strictjson",
            "ccserver.text",
        ),
    ),
}

#: Parts that only the named parts may import, whatever their rank: a store
#: is constructed by the daemon and known to the rest only by its interface.
REACHED_ONLY_FROM: dict[str, frozenset[str]] = {"stores": frozenset({"daemon"})}

_ROOT = Path(ccserver.__file__).parent


def module_names() -> dict[str, Path]:
    """
    Every module under ccserver/, by its dotted name.
    """
    names = {}
    for path in sorted(_ROOT.rglob("*.py")):
        parts = list(path.relative_to(_ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def part_of(module: str) -> str | None:
    """
    The part of L{LAYERS} a module belongs to, or None.  The C{ccserver}
    package itself (its C{__version__}) is in C{base}.
    """
    if module == "ccserver":
        return "base"
    best: tuple[int, str] | None = None
    for part, (_, prefixes) in LAYERS.items():
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), part)
    return None if best is None else best[1]


def imports(module: str, source: str, known: set[str]) -> Iterator[tuple[int, str]]:
    """
    The ccserver modules that C{source} (the text of C{module}) imports,
    with their line numbers.  C{from package import name} is an import of
    the submodule when C{known} has one by that name, else of the package.
    """
    package = module if module in known and _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                yield node.lineno, submodule if submodule in known else target


def _is_package(module: str) -> bool:
    return (_ROOT.parent / module.replace(".", "/") / "__init__.py").exists()


def violations(module: str, source: str, known: set[str]) -> list[str]:
    """
    The imports of C{module} that break L{LAYERS} or L{REACHED_ONLY_FROM},
    each described for a failure message.
    """
    found = []
    here = part_of(module)
    if here is None:
        return [f"{module}: in no layer; add it to LAYERS in tests/test_layers.py"]
    rank = LAYERS[here][0]
    for line, target in imports(module, source, known):
        if target != "ccserver" and not target.startswith("ccserver."):
            continue
        there = part_of(target)
        if there is None or there == here:
            continue
        where = f"{module}:{line} ({here}) imports {target} ({there})"
        allowed = REACHED_ONLY_FROM.get(there)
        if allowed is not None and here not in allowed:
            found.append(f"{where}: only {', '.join(sorted(allowed))} may import {there}")
        elif LAYERS[there][0] > rank:
            found.append(f"{where}: upward")
        elif LAYERS[there][0] == rank:
            found.append(f"{where}: sideways")
    return found


def import_graph(sources: Mapping[str, str]) -> dict[str, set[str]]:
    """
    Which of the modules in C{sources} (name -> text) each one imports.
    """
    known = set(sources)
    return {
        name: {target for _, target in imports(name, source, known) if target in known} - {name}
        for name, source in sources.items()
    }


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """
    The circles of C{graph}: its strongly connected components of more than
    one module (Tarjan's algorithm, iterative), each sorted, in order.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


class LayersTests(SynchronousTestCase):
    def test_every_import_points_down(self) -> None:
        """
        No module under ccserver/ imports a module of a higher part, or of
        another part of the same rank, or a store from outside the daemon.
        """
        modules = module_names()
        known = set(modules)
        found = [
            violation
            for name, path in modules.items()
            for violation in violations(name, path.read_text("utf-8"), known)
        ]
        self.assertEqual(found, [])

    def test_no_import_circles(self) -> None:
        """
        No two modules of the package import each other, directly or through
        others, however the imports are written (inside a function, under
        C{TYPE_CHECKING}): a circle hidden that way is a circle still.
        """
        sources = {name: path.read_text("utf-8") for name, path in module_names().items()}
        self.assertEqual(cycles(import_graph(sources)), [])

    def test_circles_found(self) -> None:
        """
        The circle check finds a circle of three modules, one import of
        which is inside a function, and leaves a chain alone.
        """
        sources = {
            "ccserver.oauth.a": "from ccserver.oauth import b\n",
            "ccserver.oauth.b": "def f():\n    from ccserver.oauth.c import x\n",
            "ccserver.oauth.c": "import ccserver.oauth.a\n",
            "ccserver.oauth.d": "from ccserver.oauth import a\n",
        }
        self.assertEqual(
            cycles(import_graph(sources)),
            [["ccserver.oauth.a", "ccserver.oauth.b", "ccserver.oauth.c"]],
        )
        del sources["ccserver.oauth.c"]
        self.assertEqual(cycles(import_graph(sources)), [])

    def test_every_module_has_a_layer(self) -> None:
        """
        A new module must be placed in the table, not slip past it.
        """
        self.assertEqual([m for m in module_names() if part_of(m) is None], [])

    def test_upward(self) -> None:
        """
        keys is a leaf below the daemon: importing config is upward.
        """
        known = set(module_names())
        self.assertEqual(
            violations("ccserver.keys", "from ccserver.config import Config\n", known),
            ["ccserver.keys:1 (keys) imports ccserver.config (daemon): upward"],
        )

    def test_handlers_import_no_oauth(self) -> None:
        """
        A grant handler imports neither the endpoints above it (upward) nor
        the token minter beside it (sideways).
        """
        known = set(module_names())
        source = (
            "from ccserver.oauth.clientauth import invalid_client\n"
            "from ccserver.oauth import tokens\n"
        )
        self.assertEqual(
            violations("ccserver.handlers.webhook", source, known),
            [
                "ccserver.handlers.webhook:1 (plugins) imports "
                "ccserver.oauth.clientauth (oauth): upward",
                "ccserver.handlers.webhook:2 (plugins) imports "
                "ccserver.oauth.tokens (tokens): sideways",
            ],
        )

    def test_grants_import_no_oauth(self) -> None:
        """
        A grant type (built-in or a third party's) takes its steps through
        the endpoint it is given (ITokenEndpoint), never by reaching into
        the endpoints' modules.
        """
        known = set(module_names())
        source = "from ccserver.oauth.grants import TokenEndpoint\n"
        self.assertEqual(
            violations("ccserver.grants.token_exchange", source, known),
            [
                "ccserver.grants.token_exchange:1 (plugins) imports "
                "ccserver.oauth.grants (oauth): upward",
            ],
        )

    def test_stores_only_from_the_daemon(self) -> None:
        """
        A store is reached through ccserver.interfaces: the endpoints may
        not import one, though it is of a lower rank; the daemon may.
        """
        known = set(module_names())
        source = "from ccserver.stores.memory import MemoryStore\n"
        self.assertEqual(
            violations("ccserver.oauth.grants", source, known),
            [
                "ccserver.oauth.grants:1 (oauth) imports ccserver.stores.memory (stores): "
                "only daemon may import stores"
            ],
        )
        self.assertEqual(violations("ccserver.tap", source, known), [])

    def test_relative_import(self) -> None:
        """
        A relative import is resolved against the module's package.
        """
        known = set(module_names())
        self.assertEqual(
            list(imports("ccserver.stores.sql", "from . import guard\nfrom ..web import x\n", known)),
            [(1, "ccserver.stores.guard"), (2, "ccserver.web")],
        )
