"""
The grant handler plugin interface: finding handlers among the Twisted
plugins of L{ccserver.plugins}, choosing one at start-up, third-party
plugins dropped into a C{ccserver/plugins/} folder, and what a handler may
return.  Start-up in a real process is in L{tests.test_handlers_process}.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import attrs
import jwt
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.plugin import IPlugin, pluginPackagePaths
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

import ccserver.plugins
from ccserver.errors import ConfigError, OAuthError
from ccserver.handlers import PluginError, available, make_handler
from ccserver.handlers.registered_scope import RegisteredScopeHandler
from ccserver.interfaces import IClientCredentialsGrantHandler, IGrantHandlerFactory
from ccserver.model import (
    RESERVED_CLAIMS,
    Client,
    GrantAuthorization,
    GrantRequest,
    check_claims,
)
from ccserver.tap import Options
from tests.helpers import ISSUER, Response, ServerTestCase, basic, temp_dir
from tests.process import REPO

BUILT_IN = ("registered-scope", "webhook")

#: The example plugin of docs/grant-handlers.md, as a third party writes it.
PLUGIN_MODULE = "example_read_only"
PLUGIN = """\
from twisted.plugin import IPlugin
from zope.interface import implementer

from ccserver.errors import OAuthError
from ccserver.interfaces import IClientCredentialsGrantHandler, IGrantHandlerFactory
from ccserver.model import GrantAuthorization


@implementer(IPlugin, IGrantHandlerFactory)
class ReadOnly:
    name = "read-only"
    description = "grants 'read' and nothing else, for five minutes"

    def makeHandler(self, config, reactor):
        return ReadOnlyHandler(config.get("tier", "free"))


@implementer(IClientCredentialsGrantHandler)
class ReadOnlyHandler:
    def __init__(self, tier):
        self.tier = tier

    def authorize(self, grant):
        if grant.scope is not None and grant.scope != {"read"}:
            raise OAuthError("invalid_scope", "this server grants read only")
        return GrantAuthorization(scope={"read"}, lifetime=300, claims={"tier": self.tier})


read_only = ReadOnly()
"""


def write_plugin(root: Path) -> Path:
    """
    Drop the example plugin into C{root/ccserver/plugins/}, a folder with
    no C{__init__.py}, as a third party would.
    """
    folder = root / "ccserver" / "plugins"
    folder.mkdir(parents=True)
    (folder / f"{PLUGIN_MODULE}.py").write_text(PLUGIN)
    return root


def make_grant(scope: frozenset[str] | None = None) -> GrantRequest:
    client = Client(
        client_id="client-1",
        client_id_issued_at=1_800_000_000,
        metadata={"scope": "read write", "grant_types": ["client_credentials"]},
        client_secret_digest="5e" * 32,
        registration_access_token_digest="7a" * 32,
    )
    return GrantRequest(client=client, scope=scope, issuer=ISSUER)


class DocumentationTests(SynchronousTestCase):
    def test_example_plugin_documented(self) -> None:
        """
        The plugin these tests run is the one docs/grant-handlers.md shows.
        """
        self.assertIn(PLUGIN, (REPO / "docs" / "grant-handlers.md").read_text())


class BuiltInTests(SynchronousTestCase):
    """
    The built-in handlers are plugins like any other.
    """

    def test_available(self) -> None:
        factories = available()
        for name in BUILT_IN:
            self.assertIn(name, factories)
            factory = factories[name]
            self.assertTrue(IPlugin.providedBy(factory))
            self.assertTrue(verifyObject(IGrantHandlerFactory, factory))
            self.assertEqual(factory.name, name)
            self.assertIsInstance(factory.description, str)
            self.assertTrue(factory.description)

    def test_registered_scope(self) -> None:
        handler = make_handler("registered-scope", {}, Clock())
        self.assertTrue(verifyObject(IClientCredentialsGrantHandler, handler))
        decision = handler.authorize(make_grant())
        assert isinstance(decision, GrantAuthorization)
        self.assertEqual(decision.scope, frozenset({"read", "write"}))
        with self.assertRaises(OAuthError) as raised:
            handler.authorize(make_grant(frozenset({"admin"})))
        self.assertEqual(raised.exception.error, "invalid_scope")

    def test_unknown_name(self) -> None:
        with self.assertRaises(ConfigError) as raised:
            make_handler("nope", {}, Clock())
        message = str(raised.exception)
        self.assertTrue(message.startswith("[grant_handler] name: "), message)
        self.assertIn("'nope'", message)
        for name in BUILT_IN:
            self.assertIn(name, message)

    def test_config_error_names_key(self) -> None:
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("registered-scope", {"lifetime": 60}, "lifetime"),
            ("webhook", {}, "url"),
            ("webhook", {"url": "http://127.0.0.1:9/", "timeout": "soon"}, "timeout"),
            ("webhook", {"url": "http://127.0.0.1:9/", "colour": "red"}, "colour"),
        ]
        for name, config, key in cases:
            with self.assertRaises(ConfigError) as raised:
                make_handler(name, config, Clock())
            self.assertTrue(
                str(raised.exception).startswith(f"[grant_handler] {key}: "), str(raised.exception)
            )


def use_plugin_folder(test: SynchronousTestCase, root: Path) -> None:
    """
    Put C{root} (which holds C{ccserver/plugins/}) on C{sys.path} for the
    test, as C{PYTHONPATH} would for a process.  C{ccserver.plugins}
    extends its C{__path__} with L{pluginPackagePaths} when it is imported;
    this process imported it long ago, so the path is extended the same
    way here, and everything is restored after.
    """
    saved_sys_path = sys.path[:]
    saved_package_path = list(ccserver.plugins.__path__)
    saved_modules = set(sys.modules)

    def restore() -> None:
        sys.path[:] = saved_sys_path
        ccserver.plugins.__path__[:] = saved_package_path
        for name in set(sys.modules) - saved_modules:
            if name.startswith("ccserver.plugins."):
                del sys.modules[name]

    test.addCleanup(restore)
    sys.path.insert(0, str(root))
    ccserver.plugins.__path__.extend(
        path
        for path in pluginPackagePaths(ccserver.plugins.__name__)
        if path not in ccserver.plugins.__path__
    )


class ThirdPartyPluginTests(SynchronousTestCase):
    """
    A module in a C{ccserver/plugins/} folder anywhere on C{sys.path} is a
    plugin.
    """

    def setUp(self) -> None:
        use_plugin_folder(self, write_plugin(temp_dir(self)))

    def test_found(self) -> None:
        factories = available()
        self.assertEqual(set(factories), {*BUILT_IN, "read-only"})
        self.assertTrue(verifyObject(IGrantHandlerFactory, factories["read-only"]))
        self.assertTrue(IPlugin.providedBy(factories["read-only"]))

    def test_used(self) -> None:
        handler = make_handler("read-only", {"tier": "gold"}, Clock())
        self.assertEqual(
            handler.authorize(make_grant()),
            GrantAuthorization(scope={"read"}, lifetime=300, claims={"tier": "gold"}),
        )
        with self.assertRaises(OAuthError) as raised:
            handler.authorize(make_grant(frozenset({"write"})))
        self.assertEqual(raised.exception.error, "invalid_scope")


#: What the broken plugins below are made of: a handler, and a factory whose
#: class declares C{{interfaces}} and has C{{body}}.
_POLICY = """\
from twisted.plugin import IPlugin
from zope.interface import implementer

from ccserver.errors import ConfigError
from ccserver.interfaces import IClientCredentialsGrantHandler, IGrantHandlerFactory
from ccserver.model import GrantAuthorization


@implementer(IClientCredentialsGrantHandler)
class Handler:
    def authorize(self, grant):
        return GrantAuthorization(scope={{"read"}})


@implementer({interfaces})
class Policy:
{body}


policy = Policy()
"""

_NAMED = '    name = "policy"\n    description = "a policy"\n'


def policy_module(body: str, interfaces: str = "IPlugin, IGrantHandlerFactory") -> str:
    """
    A plugin module whose factory class has C{body} (indented by four).
    """
    return _POLICY.format(interfaces=interfaces, body=body)


def _make(returns: str, signature: str = "self, config, reactor") -> str:
    return f"{_NAMED}\n    def makeHandler({signature}):\n        {returns}\n"


#: Plugins that fail at start, one for each way, as a third party might
#: write them: the modules to drop into C{ccserver/plugins/}, the name to
#: select, and what the one line that stops the start must say.
BROKEN_PLUGINS: dict[str, tuple[dict[str, str], str, tuple[str, ...]]] = {
    "earlier signature": (
        {"policy.py": policy_module(_make("return Handler()", "self, config"))},
        "policy",
        (
            "grant handler plugin 'policy' (",
            "/ccserver/plugins/policy.py)",
            "its makeHandler(config) takes no reactor: ccserver calls makeHandler(config, reactor); "
            "define def makeHandler(self, config, reactor)",
        ),
    ),
    "other signature": (
        {"policy.py": policy_module(_make("return Handler()", "self, config, reactor, pool"))},
        "policy",
        (
            "grant handler plugin 'policy' (",
            "its makeHandler(config, reactor, pool) cannot be called as makeHandler(config, reactor)",
        ),
    ),
    "no makeHandler": (
        {"policy.py": policy_module(_NAMED)},
        "policy",
        ("grant handler plugin 'policy' (", "has no makeHandler method; define def makeHandler"),
    ),
    "exception": (
        {"policy.py": policy_module(_make('raise RuntimeError("no policy file")'))},
        "policy",
        (
            "grant handler plugin 'policy' (",
            "makeHandler failed: RuntimeError: no policy file (line 21); fix the plugin, "
            "or have it raise ccserver.errors.ConfigError(",
        ),
    ),
    "not a handler": (
        {"policy.py": policy_module(_make('return {"scope": "read"}'))},
        "policy",
        (
            "grant handler plugin 'policy' (",
            "makeHandler returned {'scope': 'read'}, which does not provide "
            "IClientCredentialsGrantHandler: return an object whose class is declared "
            "@implementer(IClientCredentialsGrantHandler)",
        ),
    ),
    "no authorize": (
        {
            "policy.py": policy_module(_make("return Handler()")).replace(
                "    def authorize(self, grant):", "    def authorise(self, grant):"
            )
        },
        "policy",
        ("grant handler plugin 'policy' (", "which has no authorize method"),
    ),
    "no name": (
        {"policy.py": policy_module(_make("return Handler()").replace('name = "policy"', "pass"))},
        "policy",
        (
            "[grant_handler] name: no grant handler called 'policy'; available: "
            "registered-scope, webhook; ",
            "/ccserver/plugins/policy.py: Policy has no name: give its class a name attribute",
        ),
    ),
    "not IPlugin": (
        {"policy.py": policy_module(_make("return Handler()"), "IGrantHandlerFactory")},
        "policy",
        (
            "no grant handler called 'policy'",
            "/ccserver/plugins/policy.py: Policy provides IGrantHandlerFactory but not "
            "twisted.plugin.IPlugin: declare both, @implementer(IPlugin, IGrantHandlerFactory)",
        ),
    ),
    "import error": (
        {
            "policy.py": policy_module(_make("return Handler()")).replace(
                "IGrantHandlerFactory\n", "IGrantHandlerFactory, IGrantHandlerFactoryV2\n", 1
            )
        },
        "policy",
        (
            "no grant handler called 'policy'",
            "/ccserver/plugins/policy.py could not be imported: ImportError: cannot import "
            "name 'IGrantHandlerFactoryV2' from 'ccserver.interfaces'",
            "(line 5); fix or remove it",
        ),
    ),
    "two of a name": (
        {
            "policy.py": policy_module(_make("return Handler()")),
            "policy_copy.py": policy_module(_make("return Handler()")),
        },
        "policy",
        ("2 grant handler plugins are called 'policy' (", "policy_copy.py): rename all but one"),
    ),
    "unknown name": (
        {"policy.py": policy_module(_make("return Handler()"))},
        "polisy",
        (
            "[grant_handler] name: no grant handler called 'polisy'; "
            "available: policy, registered-scope, webhook",
        ),
    ),
    "configuration refused": (
        {
            "policy.py": policy_module(
                _make('raise ConfigError("[grant_handler] tier: must be gold or free")')
            )
        },
        "policy",
        ("[grant_handler] tier: must be gold or free",),
    ),
}


#: A handler that holds something to release, as a service: it records its
#: start and stop in the file its configuration names.  Not called
#: "webhook": any handler that provides IService is started and stopped
#: with the server.
RECORDER_PLUGIN = """\
from twisted.application.service import Service
from twisted.plugin import IPlugin
from zope.interface import implementer

from ccserver.interfaces import IClientCredentialsGrantHandler, IGrantHandlerFactory
from ccserver.model import GrantAuthorization


@implementer(IClientCredentialsGrantHandler)
class Recorder(Service):
    def __init__(self, path):
        self.path = path

    def record(self, what):
        with open(self.path, "a") as f:
            f.write(what + "\\n")

    def startService(self):
        super().startService()
        self.record("started")

    def stopService(self):
        super().stopService()
        self.record("stopped")

    def authorize(self, grant):
        return GrantAuthorization(scope={"read"})


@implementer(IPlugin, IGrantHandlerFactory)
class Recording:
    name = "recording"
    description = "grants read, and records when it starts and stops"

    def makeHandler(self, config, reactor):
        return Recorder(config["record"])


recording = Recording()
"""


def write_plugins(root: Path, modules: dict[str, str]) -> Path:
    """
    Drop C{modules} (file name -> source) into C{root/ccserver/plugins/}.
    """
    folder = root / "ccserver" / "plugins"
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (folder / name).write_text(source)
    return root


class BrokenPluginTests(SynchronousTestCase):
    """
    Every way a plugin can fail at start is one L{ConfigError} (a
    L{PluginError} unless the plugin itself refused its configuration),
    whose message names the plugin and says what to change; the process
    tests (L{tests.test_handlers_process}) see it as the one line that ends
    C{twist ccserver}.
    """

    def assert_refused(self, case: str) -> None:
        modules, name, expected = BROKEN_PLUGINS[case]
        use_plugin_folder(self, write_plugins(temp_dir(self), modules))
        with self.assertRaises(ConfigError) as raised:
            make_handler(name, {}, Clock())
        message = str(raised.exception)
        self.assertNotIn("\n", message)
        for fragment in expected:
            self.assertIn(fragment, message)
        plugin_error = case != "configuration refused"
        self.assertEqual(isinstance(raised.exception, PluginError), plugin_error)

    def test_earlier_signature(self) -> None:
        """
        A plugin written for C{makeHandler(config)}, before the reactor was
        passed: told exactly what to change, and never called without the
        reactor it should use (no release of ccserver called it so).
        """
        self.assert_refused("earlier signature")

    def test_other_signature(self) -> None:
        self.assert_refused("other signature")

    def test_no_make_handler(self) -> None:
        self.assert_refused("no makeHandler")

    def test_exception(self) -> None:
        self.assert_refused("exception")

    def test_not_a_handler(self) -> None:
        self.assert_refused("not a handler")

    def test_no_authorize(self) -> None:
        self.assert_refused("no authorize")

    def test_no_name(self) -> None:
        self.assert_refused("no name")

    def test_not_iplugin(self) -> None:
        self.assert_refused("not IPlugin")

    def test_import_error(self) -> None:
        self.assert_refused("import error")

    def test_two_of_a_name(self) -> None:
        self.assert_refused("two of a name")

    def test_unknown_name(self) -> None:
        self.assert_refused("unknown name")

    def test_configuration_refused(self) -> None:
        self.assert_refused("configuration refused")

    def test_broken_module_beside_the_chosen_one(self) -> None:
        """
        A module that does not import keeps no other plugin from being
        chosen; what is wrong with it is logged in one line.
        """
        modules = {
            "policy.py": policy_module(_make("return Handler()")),
            "broken.py": "from ccserver.interfaces import IGrantHandlerFactoryV2\n",
        }
        use_plugin_folder(self, write_plugins(temp_dir(self), modules))
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        handler = make_handler("policy", {}, Clock())
        self.assertTrue(IClientCredentialsGrantHandler.providedBy(handler))
        [problem] = [e["problem"] for e in events if "problem" in e]
        self.assertIn("/ccserver/plugins/broken.py could not be imported: ImportError", problem)
        self.assertNotIn("log_failure", {key for e in events for key in e})

    def test_help_lists_what_was_not_loaded(self) -> None:
        use_plugin_folder(
            self, write_plugins(temp_dir(self), {"broken.py": "raise ValueError('half-written')\n"})
        )
        usage = Options().getUsage()
        self.assertIn("registered-scope", usage)
        self.assertIn("\n  not loaded: ", usage)
        self.assertIn("broken.py could not be imported: ValueError: half-written (line 1)", usage)


class ServiceHandlerTests(SynchronousTestCase):
    def test_started_and_stopped_with_the_tree(self) -> None:
        """
        A third-party handler that provides IService is started before
        the server listens and stopped with it, whatever its name.
        """
        from twisted.internet.testing import MemoryReactorClock

        from ccserver.tap import makeService
        from tests.test_service import in_memory, options

        folder = temp_dir(self)
        use_plugin_folder(self, write_plugins(folder, {"recording.py": RECORDER_PLUGIN}))
        record = folder / "record"
        config = folder / "ccserver.toml"
        config.write_text(f'[grant_handler]\nname = "recording"\nrecord = "{record}"\n')
        reactor = MemoryReactorClock()
        service = makeService(options("--config", str(config), "--listen", "tcp:8080"), in_memory(reactor))
        service.startService()
        self.assertEqual(record.read_text(), "started\n")
        self.successResultOf(service.stopService())
        self.assertEqual(record.read_text(), "started\nstopped\n")


class ModelTests(SynchronousTestCase):
    """
    L{GrantRequest} and L{GrantAuthorization}: frozen, converted, checked.
    """

    def test_reserved_claims(self) -> None:
        """
        A reserved claim cannot come from a handler: a clear error naming
        it, not a silent overwrite.
        """
        for claim in RESERVED_CLAIMS:
            with self.assertRaises(ValueError) as raised:
                GrantAuthorization(scope={"read"}, claims={claim: "x", "tier": "gold"})
            self.assertIn("GrantAuthorization.claims: reserved claims", str(raised.exception))
            self.assertIn(claim, str(raised.exception))

    def test_reserved_claims_are_the_rfc_members(self) -> None:
        """
        Every introspection member (RFC 7662 §2.2), every claim RFC 9068 has
        the server set (§2.2, §2.2.1, §2.2.3), the RFC 8693 §4 claims and
        RFC 7800 C{cnf} are reserved, and C{exchanged_from}, the server's
        own claim naming the tokens an exchanged token dies with; the RFC
        9068 §2.2.3.1 authorization attributes are the handler's to decide.
        """
        rfc7662 = {"active", "scope", "client_id", "username", "token_type"}
        rfc7662 |= {"exp", "iat", "nbf", "sub", "aud", "iss", "jti"}
        rfc9068 = {"iss", "exp", "aud", "sub", "client_id", "iat", "jti"}
        rfc9068 |= {"auth_time", "acr", "amr", "scope"}
        rfc8693 = {"act", "scope", "client_id", "may_act"}
        self.assertEqual(
            RESERVED_CLAIMS, rfc7662 | rfc9068 | rfc8693 | {"cnf"} | {"exchanged_from"}
        )
        decision = GrantAuthorization(
            scope={"read"},
            claims={"roles": ["reader"], "groups": ["ops"], "entitlements": ["x"], "tier": "gold"},
        )
        self.assertEqual(decision.claims["roles"], ["reader"])

    def test_forged_introspection_members(self) -> None:
        """
        The claims a handler once used to rewrite the introspection answer
        are refused, all of them named at once.
        """
        with self.assertRaises(ValueError) as raised:
            GrantAuthorization(scope={"read"}, claims={"active": False, "token_type": "forged"})
        self.assertEqual(
            str(raised.exception),
            "GrantAuthorization.claims: reserved claims are set by the server only: "
            "active, token_type",
        )

    def test_check_claims(self) -> None:
        """
        L{check_claims}, the one check the webhook uses too: passes other
        names, and names every reserved one it finds, sorted.
        """
        check_claims({})
        check_claims({"tier": "gold", "roles": []})
        with self.assertRaises(ValueError) as raised:
            check_claims({"cnf": {}, "act": {}, "tier": "gold", "amr": []})
        self.assertEqual(
            str(raised.exception), "reserved claims are set by the server only: act, amr, cnf"
        )

    def test_scope_any_iterable(self) -> None:
        expected = frozenset({"read", "write"})
        for scope in (["read", "write"], ("write", "read"), {"read", "write"}, "read write"):
            self.assertEqual(GrantAuthorization(scope=scope).scope, expected)
        self.assertEqual(GrantAuthorization(scope=(v for v in ("read", "write"))).scope, expected)

    def test_optional_fields(self) -> None:
        decision = GrantAuthorization(scope=())
        self.assertEqual(
            (decision.lifetime, decision.audience, dict(decision.claims)), (None, None, {})
        )
        self.assertEqual(
            GrantAuthorization(scope=(), audience=["https://a"]).audience, ("https://a",)
        )

    def test_lifetime(self) -> None:
        self.assertEqual(GrantAuthorization(scope=(), lifetime=60).lifetime, 60)
        for lifetime in (0, -1, 1.5, True, "60"):
            with self.assertRaises(ValueError):
                GrantAuthorization(scope=(), lifetime=lifetime)  # type: ignore[arg-type]

    def test_frozen(self) -> None:
        grant = make_grant(frozenset({"read"}))
        decision = GrantAuthorization(scope={"read"}, claims={"tier": "gold"})
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            grant.scope = None  # type: ignore[misc]
        with self.assertRaises(TypeError):
            decision.claims["tier"] = "platinum"  # type: ignore[index]
        self.assertIsNone(make_grant().scope)
        self.assertNotIn("5e" * 32, repr(grant))


@implementer(IClientCredentialsGrantHandler)
@attrs.define
class LaterHandler:
    """
    Decides a second later, through a L{Deferred}.
    """

    clock: Clock

    def authorize(self, grant: GrantRequest) -> Deferred[GrantAuthorization]:
        return deferLater(
            self.clock,
            1,
            lambda: GrantAuthorization(scope=grant.client.scope, claims={"via": "deferred"}),
        )


@implementer(IClientCredentialsGrantHandler)
@attrs.define
class AsyncHandler:
    """
    Decides a second later, as a coroutine.
    """

    clock: Clock

    async def authorize(self, grant: GrantRequest) -> GrantAuthorization:
        await deferLater(self.clock, 1, lambda: None)
        if grant.scope is not None and "write" in grant.scope:
            raise OAuthError("invalid_scope", "not on weekends")
        return GrantAuthorization(scope={"read"}, lifetime=60, claims={"via": "coroutine"})


class HandlerResultTests(ServerTestCase):
    """
    Through the whole token endpoint: a handler may answer later.
    """

    def setUp(self) -> None:
        super().setUp()
        self.client = self.register(client_name="My House App", scope="read write")
        self.auth = basic(self.client["client_id"], self.client["client_secret"])

    def pending_token(self, **form: str) -> Deferred[Any]:
        return self.treq.request(  # type: ignore[no-any-return,attr-defined]
            "POST",
            ISSUER + "/token",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": self.auth,
            },
            data=urlencode({"grant_type": "client_credentials", **form}).encode(),
        )

    def answered_later(self, **form: str) -> Response:
        pending = self.pending_token(**form)
        self.treq.flush()
        self.assertNoResult(pending)
        self.clock.advance(1)
        self.treq.flush()
        response = self.successResultOf(pending)
        return Response(response.code, {}, self.successResultOf(response.content()))


def claims_of(response: Response) -> dict[str, Any]:
    # The test clock ran ahead of the wall clock, which PyJWT checks iat
    # against; the signature is tested elsewhere.
    return jwt.decode(response.json()["access_token"], options={"verify_signature": False})


class DeferredHandlerTests(HandlerResultTests):
    def make_handler(self) -> IClientCredentialsGrantHandler:
        return LaterHandler(self.clock)

    def test_deferred(self) -> None:
        response = self.answered_later()
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["scope"], "read write")
        self.assertEqual(claims_of(response)["via"], "deferred")


class AsyncHandlerTests(HandlerResultTests):
    def make_handler(self) -> IClientCredentialsGrantHandler:
        return AsyncHandler(self.clock)

    def test_coroutine(self) -> None:
        response = self.answered_later()
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual((response.json()["scope"], response.json()["expires_in"]), ("read", 60))
        self.assertEqual(claims_of(response)["via"], "coroutine")

    def test_coroutine_denies(self) -> None:
        response = self.answered_later(scope="write")
        self.assertEqual(response.code, 400)
        self.assertEqual(
            response.json(), {"error": "invalid_scope", "error_description": "not on weekends"}
        )


class DefaultHandlerTests(ServerTestCase):
    def test_default(self) -> None:
        self.assertIsInstance(self.make_handler(), RegisteredScopeHandler)
