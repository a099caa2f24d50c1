"""
Discovery (RFC 8414, OpenID Connect Discovery) and the JWK set.
"""

from __future__ import annotations

from typing import Any

import jwt
from attrs import evolve
from twisted.internet.defer import ensureDeferred

from ccserver.config import Config, DiscoveryConfig
from tests.helpers import ISSUER, ServerTestCase


class DiscoveryTests(ServerTestCase):
    def test_both_paths_identical(self) -> None:
        openid = self.request("GET", "/.well-known/openid-configuration")
        oauth = self.request("GET", "/.well-known/oauth-authorization-server")
        self.assertEqual(openid.code, 200)
        self.assertEqual(openid.body, oauth.body)
        self.assertEqual(openid.headers["content-type"], "application/json")

    def test_metadata(self) -> None:
        document = self.request("GET", "/.well-known/openid-configuration").json()
        self.assertEqual(document["issuer"], ISSUER)
        self.assertEqual(document["token_endpoint"], f"{ISSUER}/token")
        self.assertEqual(document["registration_endpoint"], f"{ISSUER}/client-reg")
        self.assertEqual(document["jwks_uri"], f"{ISSUER}/jwks.json")
        self.assertEqual(
            document["grant_types_supported"],
            ["client_credentials", "urn:ietf:params:oauth:grant-type:token-exchange"],
        )
        self.assertEqual(
            document["token_endpoint_auth_methods_supported"],
            ["client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt"],
        )
        for endpoint in ("token", "introspection", "revocation"):
            self.assertEqual(
                document[f"{endpoint}_endpoint_auth_methods_supported"],
                document["token_endpoint_auth_methods_supported"],
            )
            self.assertEqual(
                document[f"{endpoint}_endpoint_auth_signing_alg_values_supported"],
                ["RS256", "PS256", "ES256", "EdDSA", "HS256", "HS384", "HS512"],
            )
        self.assertEqual(document["response_types_supported"], [])

    def test_no_scopes_supported_by_default(self) -> None:
        """
        Left out unless the operator lists them: never the union of the
        registered scopes, which would show every caller every client's.
        """
        self.register(scope="secret-project")
        document = self.request("GET", "/.well-known/openid-configuration").json()
        self.assertNotIn("scopes_supported", document)

    def test_post_not_allowed(self) -> None:
        self.assertEqual(self.request("POST", "/.well-known/openid-configuration").code, 405)


class ScopesSupportedTests(ServerTestCase):
    def make_config(self, **tokens: Any) -> Config:
        config = super().make_config(**tokens)
        return evolve(config, discovery=DiscoveryConfig(scopes_supported=("write", "read")))

    def test_listed(self) -> None:
        """
        RFC 8414 §2: the operator's [discovery] scopes_supported, listed.
        """
        document = self.request("GET", "/.well-known/oauth-authorization-server").json()
        self.assertEqual(document["scopes_supported"], ["read", "write"])


class JWKSTests(ServerTestCase):
    def test_public_keys_only(self) -> None:
        response = self.request("GET", "/jwks.json")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers["content-type"], "application/jwk-set+json")
        keys = response.json()["keys"]
        self.assertEqual(len(keys), 1)
        key = keys[0]
        self.assertEqual(key["kid"], self.keyring.current.kid)
        self.assertEqual((key["kty"], key["alg"], key["use"]), ("RSA", "RS256", "sig"))
        for private_member in ("d", "p", "q", "dp", "dq", "qi"):
            self.assertNotIn(private_member, key)
        jwt.PyJWK(key)

    def test_use_without_key_ops(self) -> None:
        """
        Every key says C{use: "sig"} and no C{key_ops}: RFC 7517 §4.3, the
        two SHOULD NOT be used together.
        """
        for alg in ("RS256", "PS256", "ES256", "EdDSA"):
            self.successResultOf(ensureDeferred(self.keyring.add_key(alg, 0)))
        self.successResultOf(ensureDeferred(self.keyring.refresh()))
        keys = self.request("GET", "/jwks.json").json()["keys"]
        self.assertEqual({key["alg"] for key in keys}, {"RS256", "PS256", "ES256", "EdDSA"})
        for key in keys:
            self.assertEqual(key["use"], "sig", key["alg"])
            self.assertNotIn("key_ops", key, key["alg"])

    def test_unknown_path(self) -> None:
        response = self.request("GET", "/nothing-here")
        self.assertEqual(response.code, 404)
        self.assertEqual(response.json()["error"], "not_found")
