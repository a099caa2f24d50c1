"""
Dependencies point one way, down (docs/architecture.md): every import
between ccserver's modules is read from the source (with L{ast}, so
imports inside functions and under C{TYPE_CHECKING} count too) and checked
against L{LAYERS}; and no modules import each other in a circle, not even
within one part.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

import ccserver
from tests.process import UnmarkedProcessTest, child_env, runs_ccserver

#: The parts of ccserver, highest first: part name -> (rank, module
#: prefixes).  A module may import its own part, or a part of a lower rank;
#: an import of a higher rank is upward, one of another part of the same
#: rank sideways, and both fail.  The longest prefix decides a module's part
#: (C{ccserver.oauth.tokens} is C{tokens}, not C{oauth}).
LAYERS: dict[str, tuple[int, tuple[str, ...]]] = {
    # Helpers for tests, shipped with the package (throwaway store servers,
    # the deadline poll): for ccserver's tests, its benchmark, and a third
    # party's tests; above everything, and imported by none of it.
    "testing": (6, ("ccserver.testing",)),
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
            "ccserver.coroutines",
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
#: is constructed by the daemon and known to the rest only by its interface;
#: the testing helpers are for tests and the benchmark, never the server.
REACHED_ONLY_FROM: dict[str, frozenset[str]] = {
    "stores": frozenset({"daemon"}),
    "testing": frozenset(),
}

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
            who = f"only {', '.join(sorted(allowed))}" if allowed else "no part of the server"
            found.append(f"{where}: {who} may import {there}")
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

    def test_testing_from_no_part_of_the_server(self) -> None:
        """
        The testing helpers (throwaway servers that run programs) are
        imported by tests and the benchmark only: not even by the daemon,
        which is below them.
        """
        known = set(module_names())
        source = "from ccserver.testing.servers import RedisServer\n"
        self.assertEqual(
            violations("ccserver.tap", source, known),
            [
                "ccserver.tap:1 (daemon) imports ccserver.testing.servers (testing): "
                "no part of the server may import testing"
            ],
        )

    def test_bench_imports_no_tests(self) -> None:
        """
        The benchmark imports nothing from tests/: what both need (the
        throwaway store servers) lives in ccserver.testing.
        """
        bench = _ROOT.parent / "bench"
        found = [
            f"{path.name}:{line} imports {target}"
            for path in [*sorted(bench.glob("*.py")), bench / "run"]
            for line, target in imports(f"bench.{path.stem}", path.read_text("utf-8"), set())
            if target == "tests" or target.startswith("tests.")
        ]
        self.assertEqual(found, [])

    def test_relative_import(self) -> None:
        """
        A relative import is resolved against the module's package.
        """
        known = set(module_names())
        self.assertEqual(
            list(imports("ccserver.stores.sql", "from . import guard\nfrom ..web import x\n", known)),
            [(1, "ccserver.stores.guard"), (2, "ccserver.web")],
        )


class ProcessMarkerTests(SynchronousTestCase):
    """
    The tests are of two kinds (docs/development.md): a test that runs
    ccserver in a process of its own carries the C{process} marker, and
    one that does not never starts such a process (tests/conftest.py
    refuses to, through L{tests.process.audit}).
    """

    def test_what_runs_ccserver(self) -> None:
        for argv in (
            [sys.executable, "-m", "twisted", "--log-format=text", "ccserver", "--listen", "tcp:0"],
            ["twist", "ccserver"],
            [sys.executable, "-m", "ccserver.admin", "keys", "list"],
            [sys.executable, "-m", "ccserver.tap", "--version"],
            [sys.executable, "-c", "from ccserver.tap import main; main([])"],
            [sys.executable, "-c", "import os, signal, sys\nimport ccserver\n"],
            ["sh", "-euc", "twist ccserver --config ccserver.toml"],
            ["ccserver", "clients", "list"],
        ):
            self.assertTrue(runs_ccserver(argv), argv)
        for argv in (
            ["redis-server", "--dir", "/tmp/ccserver-run-1a/ccserver-redis-xyz", "--port", "1"],
            ["/usr/lib/postgresql/15/bin/postgres", "-D", "/tmp/ccserver-pg-1/data"],
            [sys.executable, "policy.py"],
            ["curl", "-sS", "http://127.0.0.1:1/client-reg"],
            ["psql", "ccserver_12_3"],
            ["pgrep", "-P", "12"],
            ["git", "ls-files", "ccserver"],
            [sys.executable, "-m", "pip", "install", "--target", "/tmp/ccserver-x", "."],
            [sys.executable, "-m", "towncrier", "build", "--draft"],
        ):
            self.assertFalse(runs_ccserver(argv), argv)

    def test_unmarked_test_refused(self) -> None:
        """
        This test has no marker: starting ccserver from it fails before
        any process starts, naming the test and the marker to add.
        """
        with self.assertRaises(UnmarkedProcessTest) as refused:
            subprocess.Popen([sys.executable, "-c", "import ccserver"])
        self.assertIn("ProcessMarkerTests::test_unmarked_test_refused", str(refused.exception))
        self.assertIn("pytestmark = pytest.mark.process", str(refused.exception))
        # anything else starts as ever
        done = subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True)
        self.assertEqual(done.stdout, "ok\n")

    @pytest.mark.process
    def test_marked_test_allowed(self) -> None:
        done = subprocess.run(
            [sys.executable, "-c", "import ccserver; print(ccserver.__name__)"],
            env=child_env(),
            capture_output=True,
            text=True,
        )
        self.assertEqual(done.stdout, "ccserver\n")


#: Every reach into a library's private API, each one small adapter with
#: a comment: (module, what it reaches) -> the test that fails if the
#: library changes under it (docs/architecture.md, "Private APIs").
PRIVATE_REACHES: dict[tuple[str, str], str] = {
    ("ccserver.outbound", "twisted.web._newclient"): "tests.test_outbound.TwistedNamesTests",
    (
        "ccserver.httpchannel",
        "twisted.web.http.HTTPChannel._respondToBadRequestAndDisconnect",
    ): "tests.test_http_channel.PrivateAPITests",
    (
        "ccserver.stores.redisprotocol",
        "txredisapi._blocking_command",
    ): "tests.test_store_redis.OwnConnectionTests",
    # not found by the scan below: a name without an underscore, but no
    # documented part of adbapi
    (
        "ccserver.stores.sqlpool",
        "twisted.enterprise.adbapi.ConnectionPool.connections",
    ): "tests.test_store_sql.AdbapiAdapterTests",
}


#: Names with a leading underscore that are documented, public API.
DOCUMENTED = frozenset({"os._exit"})


def private_reaches(module: str, source: str) -> Iterator[str]:
    """
    What C{source} reaches of other packages' private names: a private
    module imported, or a private attribute of an imported module.
    """
    imported: dict[str, str] = {}
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith("ccserver"):
                    imported[(alias.asname or alias.name).split(".")[0]] = alias.name
                    if any(part.startswith("_") for part in alias.name.split(".")):
                        yield alias.name
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.startswith("ccserver") or node.module == "__future__":
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                imported[alias.asname or alias.name] = full
                if any(part.startswith("_") for part in full.split(".")):
                    yield full
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in imported
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            yield f"{imported[node.value.id]}.{node.attr}"


def private_overrides() -> Iterator[tuple[str, str]]:
    """
    The private names of a library's class that a class of ccserver
    defines again (overriding a method, or replacing an attribute).
    """
    import importlib
    import inspect

    for name in module_names():
        if name.startswith("ccserver.testing"):
            continue
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != name:
                continue
            for base in cls.__mro__[1:]:
                if base.__module__.split(".")[0] in ("ccserver", "builtins", "typing"):
                    continue
                for attribute in vars(cls):
                    if attribute.startswith("_") and not attribute.startswith("__"):
                        if attribute in vars(base):
                            yield name, f"{base.__module__}.{base.__qualname__}.{attribute}"


class PrivateReachTests(SynchronousTestCase):
    def test_every_reach_listed(self) -> None:
        """
        Every private name of another package that ccserver imports, reads
        or overrides is in L{PRIVATE_REACHES}, with its test; a new one
        fails here until it is an adapter with a test of its own.
        """
        found = {
            (name, reached)
            for name, path in module_names().items()
            if not name.startswith("ccserver.testing")
            for reached in private_reaches(name, path.read_text("utf-8"))
            if reached not in DOCUMENTED
        } | set(private_overrides())
        self.assertEqual(found - set(PRIVATE_REACHES), set())
        self.assertEqual(
            {reach for reach in PRIVATE_REACHES if reach not in found},
            {("ccserver.stores.sqlpool", "twisted.enterprise.adbapi.ConnectionPool.connections")},
        )

    def test_each_has_its_test(self) -> None:
        import importlib

        for test in PRIVATE_REACHES.values():
            module, _, name = test.rpartition(".")
            self.assertTrue(hasattr(importlib.import_module(module), name), test)

    def test_scan(self) -> None:
        source = (
            "from twisted.web import _newclient\n"
            "import txredisapi\n"
            "from twisted.enterprise import adbapi\n"
            "x = txredisapi._blocking_command\n"
            "y = adbapi.ConnectionPool\n"
            "from ccserver import _own\n"
        )
        self.assertEqual(
            sorted(private_reaches("ccserver.x", source)),
            ["twisted.web._newclient", "txredisapi._blocking_command"],
        )
