"""
Grant types as plugins: the built-in ones (client credentials, token
exchange) are plugins like any other; a third party's, dropped into a
C{ccserver/plugins/} folder, is found, loaded and used through the token
endpoint; every way one can fail at start is one line.  In a real
C{twist ccserver}: L{tests.test_grant_plugins_process}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ccserver.assembly import make_jwks_fetcher, make_site
from ccserver.errors import ConfigError, OAuthError
from ccserver.grants import builtin_grant_types, find_grant_types
from ccserver.interfaces import IGrantTypeFactory
from ccserver.model import CLIENT_CREDENTIALS, JWT_BEARER_GRANT, TOKEN_EXCHANGE, is_grant_type
from ccserver.oauth.grants import OfferedGrants
from ccserver.oauth.tokens import sign_inline
from ccserver.pluginloader import PluginError, scan_plugins
from ccserver.tap import Options
from tests.helpers import ServerTestCase, basic, temp_dir
from tests.process import REPO
from tests.test_handlers import use_plugin_folder, write_plugins

BUILT_IN = (CLIENT_CREDENTIALS, TOKEN_EXCHANGE, JWT_BEARER_GRANT)

#: The example grant type plugin of docs/grant-handlers.md, as a third
#: party writes it.
GRANT_PLUGIN_MODULE = "example_break_glass.py"
GRANT_PLUGIN = """\
import re

from twisted.plugin import IPlugin
from zope.interface import implementer

from ccserver.errors import invalid_request
from ccserver.interfaces import IGrantType, IGrantTypeFactory
from ccserver.model import GrantRequest

BREAK_GLASS = "urn:example:params:oauth:grant-type:break-glass"
INCIDENT = re.compile(r"INC-[0-9]{1,10}")


@implementer(IPlugin, IGrantTypeFactory)
class BreakGlass:
    grant_type = BREAK_GLASS
    description = "an on-call client's token for an open incident, named in the request"

    def makeGrant(self, endpoint):
        return BreakGlassGrant(endpoint)


@implementer(IGrantType)
class BreakGlassGrant:
    def __init__(self, endpoint):
        self.endpoint = endpoint

    async def token(self, request):
        # who the client is, and that it is registered for this grant type
        client = await self.endpoint.authenticate(request)
        incident = request.form.get("incident", "")
        if not INCIDENT.fullmatch(incident):
            raise invalid_request("incident: expected an incident number, such as INC-1234")
        # what the token is bound to: the client's DPoP proof or certificate
        binding = await self.endpoint.bind(request, client)
        # the grant handler decides, as for client credentials
        decision = await self.endpoint.decide(
            GrantRequest(
                client=client,
                scope=None,
                params={"incident": incident},
                issuer=self.endpoint.issuer,
                grant_type=BREAK_GLASS,
            )
        )
        return await self.endpoint.mint(request, client, decision, binding)


break_glass = BreakGlass()
"""
BREAK_GLASS = "urn:example:params:oauth:grant-type:break-glass"

_FACTORY = """\
from twisted.plugin import IPlugin
from zope.interface import implementer

from ccserver.errors import GrantUnavailable
from ccserver.interfaces import IGrantType, IGrantTypeFactory


@implementer({interfaces})
class Grant:
{body}


grant = Grant()
"""


def grant_module(body: str, interfaces: str = "IPlugin, IGrantTypeFactory") -> str:
    return _FACTORY.format(interfaces=interfaces, body=body)


_TYPED = '    grant_type = "urn:example:grant"\n    description = "a grant"\n'


def _make(returns: str, signature: str = "self, endpoint") -> str:
    return f"{_TYPED}\n    def makeGrant({signature}):\n        {returns}\n"


#: Grant type plugins that cannot be loaded, one for each way: the modules,
#: and what the one line that stops the start must say.
BROKEN_GRANTS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "no grant_type": (
        {"grant.py": grant_module(_make("return None").replace('grant_type = "urn:example:grant"', "pass"))},
        (
            "a grant type plugin cannot be loaded: ",
            "/ccserver/plugins/grant.py: Grant has no grant_type: give its class a "
            "grant_type attribute",
        ),
    ),
    "bad grant_type": (
        {"grant.py": grant_module(_make("return None").replace("urn:example:grant", "two words"))},
        ("/ccserver/plugins/grant.py: Grant: its grant_type 'two words' is not a grant type",),
    ),
    "not IPlugin": (
        {"grant.py": grant_module(_make("return None"), "IGrantTypeFactory")},
        (
            "Grant provides IGrantTypeFactory but not twisted.plugin.IPlugin: declare both, "
            "@implementer(IPlugin, IGrantTypeFactory)",
        ),
    ),
    "a built-in's grant type": (
        {"grant.py": grant_module(_make("return None").replace("urn:example:grant", "client_credentials"))},
        (
            "2 grant type plugins are for 'client_credentials' (",
            "ccserver_builtin.py",
            "/ccserver/plugins/grant.py): remove all but one",
        ),
    ),
    "signature": (
        {"grant.py": grant_module(_make("return None", "self, endpoint, config"))},
        (
            "grant type plugin 'urn:example:grant' (",
            "its makeGrant(endpoint, config) cannot be called as makeGrant(endpoint): "
            "ccserver calls makeGrant(endpoint); define def makeGrant(self, endpoint)",
        ),
    ),
    "no makeGrant": (
        {"grant.py": grant_module(_TYPED)},
        ("grant type plugin 'urn:example:grant' (", "has no makeGrant method"),
    ),
    "exception": (
        {"grant.py": grant_module(_make('raise RuntimeError("no policy")'))},
        (
            "grant type plugin 'urn:example:grant' (",
            "makeGrant failed: RuntimeError: no policy (line 14); fix the plugin, or have it "
            "raise ccserver.errors.GrantUnavailable('...') when the grant cannot be offered",
        ),
    ),
    "not a grant": (
        {"grant.py": grant_module(_make("return 'token'"))},
        (
            "makeGrant returned 'token', which does not provide IGrantType: return an object "
            "whose class is declared @implementer(IGrantType) and has token(request)",
        ),
    ),
}


class BuiltInTests(SynchronousTestCase):
    def test_builtin_are_plugins(self) -> None:
        found = find_grant_types()
        for grant_type in BUILT_IN:
            factory = found.plugins[grant_type].factory
            self.assertTrue(IPlugin.providedBy(factory))
            self.assertTrue(verifyObject(IGrantTypeFactory, factory))
            self.assertTrue(is_grant_type(factory.grant_type))
        self.assertEqual(set(builtin_grant_types().plugins), set(BUILT_IN))

    def test_help_lists_them(self) -> None:
        usage = Options().getUsage()
        self.assertIn("Grant types (every one found", usage)
        for grant_type in BUILT_IN:
            self.assertIn(grant_type, usage)

    def test_grant_type_rule(self) -> None:
        for good in ("client_credentials", "password", "a.b-c_d", TOKEN_EXCHANGE, "https://x.example/g"):
            self.assertTrue(is_grant_type(good), good)
        for bad in ("", " x", "two words", "urn:x\u00e9", "ü", 3, None, "/relative"):
            self.assertFalse(is_grant_type(bad), bad)


class DocumentationTests(SynchronousTestCase):
    def test_example_plugin_documented(self) -> None:
        self.assertIn(GRANT_PLUGIN, (REPO / "docs" / "grant-handlers.md").read_text())


class ThirdPartyGrantTests(ServerTestCase):
    """
    The example plugin, dropped into a plugin folder, through the token
    endpoint in memory.
    """

    def setUp(self) -> None:
        use_plugin_folder(self, write_plugins(temp_dir(self), {GRANT_PLUGIN_MODULE: GRANT_PLUGIN}))
        self.found = find_grant_types(scan_plugins())
        super().setUp()

    def make_grant_types(self) -> Any:
        return self.found

    def test_used(self) -> None:
        document = self.request("GET", "/.well-known/openid-configuration").json()
        self.assertEqual(
            document["grant_types_supported"], [CLIENT_CREDENTIALS, BREAK_GLASS, TOKEN_EXCHANGE]
        )
        client = self.register(scope="ops", grant_types=[BREAK_GLASS])
        auth = basic(client["client_id"], client["client_secret"])
        response = self.token({"grant_type": BREAK_GLASS, "incident": "INC-42"}, auth)
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["scope"], "ops")
        self.assertEqual(self.verify(response.json()["access_token"])["client_id"], client["client_id"])
        refused = self.token({"grant_type": BREAK_GLASS, "incident": "yesterday"}, auth)
        self.assertEqual(refused.json()["error"], "invalid_request")
        # a client not registered for it
        other = self.register(scope="ops")
        response = self.token(
            {"grant_type": BREAK_GLASS, "incident": "INC-42"},
            basic(other["client_id"], other["client_secret"]),
        )
        self.assertEqual(response.json()["error"], "unauthorized_client")
        # and client credentials are not it
        self.assertEqual(
            self.token({"grant_type": CLIENT_CREDENTIALS}, auth).json()["error"],
            "unauthorized_client",
        )


#: A grant whose client presents no credentials but a token that speaks
#: for it, as RFC 7523 §2.1's JWT bearer grant does: the endpoint's
#: verify_token and identify steps in place of authenticate.
RENEW = "urn:example:params:oauth:grant-type:renew"
RENEW_PLUGIN = f"""\
from twisted.plugin import IPlugin
from zope.interface import implementer

from ccserver.errors import invalid_request
from ccserver.interfaces import IGrantType, IGrantTypeFactory
from ccserver.model import ACCESS_TOKEN_TYPE, GrantRequest


@implementer(IPlugin, IGrantTypeFactory)
class Renew:
    grant_type = "{RENEW}"
    description = "a token for the client an access token of its own speaks for"

    def makeGrant(self, endpoint):
        return RenewGrant(endpoint)


@implementer(IGrantType)
class RenewGrant:
    def __init__(self, endpoint):
        self.endpoint = endpoint

    async def token(self, request):
        assertion = request.form.get("assertion")
        if assertion is None:
            raise invalid_request("assertion: missing")
        verified = await self.endpoint.verify_token(assertion, ACCESS_TOKEN_TYPE)
        client = await self.endpoint.identify(request, verified)
        binding = await self.endpoint.bind(request, client)
        decision = await self.endpoint.decide(
            GrantRequest(client=client, scope=None, issuer=self.endpoint.issuer, grant_type="{RENEW}")
        )
        return await self.endpoint.mint(request, client, decision, binding)


renew = Renew()
"""


class ClientFromAssertionTests(ServerTestCase):
    """
    A grant that finds its client from a token rather than by client
    authentication (the shape of RFC 7523's JWT bearer grant): the token
    is verified by the validator of its type, which says which client it
    speaks for; that client must be registered for the grant.
    """

    def setUp(self) -> None:
        use_plugin_folder(self, write_plugins(temp_dir(self), {"renew.py": RENEW_PLUGIN}))
        self.found = find_grant_types(scan_plugins())
        super().setUp()

    def make_grant_types(self) -> Any:
        return self.found

    def own_token(self, **metadata: Any) -> tuple[dict[str, Any], str]:
        client = self.register(scope="read", **metadata)
        response = self.token(
            {"grant_type": CLIENT_CREDENTIALS}, basic(client["client_id"], client["client_secret"])
        )
        return client, response.json()["access_token"]

    def test_identified(self) -> None:
        client, token = self.own_token(grant_types=[CLIENT_CREDENTIALS, RENEW])
        response = self.token({"grant_type": RENEW, "assertion": token})
        self.assertEqual(response.code, 200, response.body)
        claims = self.verify(response.json()["access_token"])
        self.assertEqual(claims["client_id"], client["client_id"])

    def test_not_registered_for_the_grant(self) -> None:
        _, token = self.own_token()
        response = self.token({"grant_type": RENEW, "assertion": token})
        self.assertEqual(response.json()["error"], "unauthorized_client")

    def test_invalid_token(self) -> None:
        response = self.token({"grant_type": RENEW, "assertion": "forged"})
        self.assertEqual(response.json()["error"], "invalid_request")

    def test_speaks_for_no_client(self) -> None:
        """
        RFC 7523 §3.1: invalid_grant, for a token whose type has no
        validator to name a client, or whose validator names none.
        """
        from ccserver.model import TokenRequest, VerifiedToken

        offered = self.offered
        request = TokenRequest({"grant_type": RENEW}, None)
        for token in (
            VerifiedToken("urn:example:token-type:unknown", {"sub": "x"}),
            VerifiedToken("urn:ietf:params:oauth:token-type:access_token", {"client_id": "nobody"}),
            VerifiedToken("urn:ietf:params:oauth:token-type:access_token", {}),
        ):
            failure = self.failureResultOf(
                ensureDeferred(offered.endpoint.identify(request, token)), OAuthError
            )
            self.assertEqual(failure.value.error, "invalid_grant")


class BrokenGrantTests(SynchronousTestCase):
    """
    A grant type plugin that is found but cannot be loaded stops the start
    with one line (every grant type found is loaded, so none is left out
    quietly); a module that does not import at all is one log line, as it
    may be any kind of plugin.
    """

    def refused(self, case: str) -> None:
        modules, expected = BROKEN_GRANTS[case]
        use_plugin_folder(self, write_plugins(temp_dir(self), modules))
        with self.assertRaises(PluginError) as raised:
            found = find_grant_types(scan_plugins())
            make_site_with(self, found)
        message = str(raised.exception)
        self.assertNotIn("\n", message)
        for fragment in expected:
            self.assertIn(fragment, message)

    def test_no_grant_type(self) -> None:
        self.refused("no grant_type")

    def test_bad_grant_type(self) -> None:
        self.refused("bad grant_type")

    def test_not_iplugin(self) -> None:
        self.refused("not IPlugin")

    def test_a_builtins_grant_type(self) -> None:
        """
        A plugin cannot quietly replace a built-in grant.
        """
        self.refused("a built-in's grant type")

    def test_signature(self) -> None:
        self.refused("signature")

    def test_no_make_grant(self) -> None:
        self.refused("no makeGrant")

    def test_exception(self) -> None:
        self.refused("exception")

    def test_not_a_grant(self) -> None:
        self.refused("not a grant")

    def test_unavailable(self) -> None:
        """
        GrantUnavailable: the server starts without the grant, and logs why.
        """
        module = grant_module(_make('raise GrantUnavailable("needs [trusted_issuers]")'))
        use_plugin_folder(self, write_plugins(temp_dir(self), {"grant.py": module}))
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        site = make_site_with(self, find_grant_types(scan_plugins()))
        self.assertIsNotNone(site)
        [event] = [e for e in events if e.get("grant_type") == "urn:example:grant"]
        self.assertEqual(event["reason"], "needs [trusted_issuers]")

    def test_module_that_does_not_import(self) -> None:
        use_plugin_folder(
            self, write_plugins(temp_dir(self), {"broken.py": "raise ValueError('half')\n"})
        )
        scan = scan_plugins()
        found = find_grant_types(scan)
        self.assertEqual(set(found.plugins), set(BUILT_IN))
        [line] = scan.unimportable
        self.assertIn("broken.py could not be imported: ValueError: half (line 1)", line)

    def test_is_a_config_error(self) -> None:
        self.assertTrue(issubclass(PluginError, ConfigError))


def make_site_with(test: SynchronousTestCase, found: Any) -> Any:
    """
    A whole server in memory with these grant type plugins.
    """
    from ccserver import credentials
    from ccserver.config import Config, StoreConfig
    from ccserver.handlers.registered_scope import RegisteredScopeHandler
    from ccserver.keys import KeyEncryptor
    from ccserver.stores.memory import MemoryStore

    reactor = MemoryReactorClock()
    config = Config(issuer="https://as.example.com", store=StoreConfig(url="memory://"))
    handler = RegisteredScopeHandler()
    site, _ = make_site(
        reactor,
        config,
        MemoryStore(),
        handler,
        credentials.digest("m" * 32),
        KeyEncryptor.ephemeral(),
        sign_inline,
        make_jwks_fetcher(reactor, config),
        offered=OfferedGrants.made(found, config.issuer, handler, reactor),
    )
    return site
