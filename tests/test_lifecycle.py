"""
The token lifecycle: opaque tokens, introspection (RFC 7662), revocation
(RFC 7009), audiences (RFC 8707) and lifetimes.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import jwt
from zope.interface import implementer

from ccserver import credentials
from ccserver.config import Config
from ccserver.interfaces import IClientCredentialsGrantHandler
from ccserver.model import GrantAuthorization, GrantRequest
from tests.helpers import ISSUER, MASTER_TOKEN, ServerTestCase, TokenLifecycle, basic

API = "https://api.example.com"
BILLING = "https://billing.example.com"


class LifecycleMixin(TokenLifecycle):
    """
    Introspection and revocation behave the same for both token formats.
    """

    token_format = "jwt"

    def make_config(self, **tokens: Any) -> Config:
        return super().make_config(format=self.token_format, max_lifetime=7200, **tokens)  # type: ignore[misc, no-any-return]

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.alice = self.register(client_name="alice", scope="read write")  # type: ignore[attr-defined]
        self.bob = self.register(client_name="bob", scope="read")  # type: ignore[attr-defined]

    def revoke(self, token: str, caller: dict[str, Any]) -> Any:
        return self.request(  # type: ignore[attr-defined]
            "POST",
            "/token/revoke",
            headers={"Authorization": self.auth(caller), "Content-Type": "application/x-www-form-urlencoded"},
            data=f"token={token}&token_type_hint=access_token".encode(),
        )

    def test_introspect_active(self) -> None:
        token = self.issue(self.alice, scope="read")
        info = self.introspect(token, self.alice)
        self.assertIs(info["active"], True)  # type: ignore[attr-defined]
        self.assertEqual(info["scope"], "read")  # type: ignore[attr-defined]
        self.assertEqual(info["client_id"], self.alice["client_id"])  # type: ignore[attr-defined]
        self.assertEqual(info["sub"], self.alice["client_id"])  # type: ignore[attr-defined]
        self.assertEqual(info["aud"], ISSUER)  # type: ignore[attr-defined]
        self.assertEqual(info["iss"], ISSUER)  # type: ignore[attr-defined]
        self.assertEqual(info["token_type"], "Bearer")  # type: ignore[attr-defined]
        self.assertEqual(info["exp"] - info["iat"], 3600)  # type: ignore[attr-defined]
        self.assertTrue(info["jti"])  # type: ignore[attr-defined]

    def test_expired(self) -> None:
        token = self.issue(self.alice)
        self.clock.advance(3601)  # type: ignore[attr-defined]
        self.assertEqual(self.introspect(token, self.alice), {"active": False})  # type: ignore[attr-defined]

    def test_unknown_and_malformed(self) -> None:
        for token in ("nothing", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "x" * 500):
            self.assertEqual(self.introspect(token, self.alice), {"active": False})  # type: ignore[attr-defined]

    def test_other_clients_token_not_visible(self) -> None:
        token = self.issue(self.alice)
        self.assertEqual(self.introspect(token, self.bob), {"active": False})  # type: ignore[attr-defined]

    def test_audience_names_the_caller(self) -> None:
        api = self.register(client_name="api", resource_server_uris=[API])  # type: ignore[attr-defined]
        client = self.register(scope="read", audience=[API, BILLING])  # type: ignore[attr-defined]
        token = self.issue(client, resource=API)
        self.assertIs(self.introspect(token, api)["active"], True)  # type: ignore[attr-defined]
        billing_only = self.issue(client, resource=BILLING)
        self.assertEqual(self.introspect(billing_only, api), {"active": False})  # type: ignore[attr-defined]

    def test_no_introspection_oracle(self) -> None:
        """
        Issue 9, item 2: a client cannot make itself a resource server for
        the default audience with its own registration access token; a
        client that the token's aud does not name, and that is not its
        owner, sees exactly {"active": false}.
        """
        token = self.issue(self.alice)
        path = f"/client-reg/{self.bob['client_id']}"
        response = self.request(  # type: ignore[attr-defined]
            "PUT",
            path,
            headers={"Authorization": f"Bearer {self.bob['registration_access_token']}"},
            json_body={"client_id": self.bob["client_id"], "scope": "read", "resource_server_uris": [ISSUER]},
        )
        self.assertEqual((response.code, response.json()["error"]), (400, "invalid_client_metadata"))  # type: ignore[attr-defined]
        self.assertIn("resource_server_uris", response.json()["error_description"])  # type: ignore[attr-defined]
        self.assertEqual(self.introspect(token, self.bob), {"active": False})  # type: ignore[attr-defined]
        api = self.register(client_name="api", resource_server_uris=[API])  # type: ignore[attr-defined]
        self.assertEqual(self.introspect(token, api), {"active": False})  # type: ignore[attr-defined]
        # The operator may name the issuer for a resource server.
        response = self.request(  # type: ignore[attr-defined]
            "PUT",
            path,
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
            json_body={"client_id": self.bob["client_id"], "scope": "read", "resource_server_uris": [ISSUER]},
        )
        self.assertEqual(response.code, 200, response.body)  # type: ignore[attr-defined]
        self.assertIs(self.introspect(token, self.bob)["active"], True)  # type: ignore[attr-defined]

    def test_bad_credentials(self) -> None:
        token = self.issue(self.alice)
        response = self.request(  # type: ignore[attr-defined]
            "POST",
            "/token/introspect",
            headers={"Authorization": basic(self.alice["client_id"], "wrong"), "Content-Type": "application/x-www-form-urlencoded"},
            data=f"token={token}".encode(),
        )
        self.assertEqual(response.code, 401)  # type: ignore[attr-defined]
        self.assertEqual(response.json()["error"], "invalid_client")  # type: ignore[attr-defined]
        self.assertEqual(self.revoke(token, {**self.alice, "client_secret": "wrong"}).code, 401)  # type: ignore[attr-defined]

    def test_missing_token(self) -> None:
        response = self.request(  # type: ignore[attr-defined]
            "POST",
            "/token/introspect",
            headers={"Authorization": self.auth(self.alice), "Content-Type": "application/x-www-form-urlencoded"},
            data=b"token_type_hint=access_token",
        )
        self.assertEqual((response.code, response.json()["error"]), (400, "invalid_request"))  # type: ignore[attr-defined]

    def test_revoke_takes_effect_at_once(self) -> None:
        token = self.issue(self.alice)
        response = self.revoke(token, self.alice)
        self.assertEqual(response.code, 200)  # type: ignore[attr-defined]
        self.assertEqual(self.introspect(token, self.alice), {"active": False})  # type: ignore[attr-defined]
        other = self.issue(self.alice)
        self.assertIs(self.introspect(other, self.alice)["active"], True)  # type: ignore[attr-defined]

    def test_revoke_other_clients_token(self) -> None:
        token = self.issue(self.alice)
        self.assertEqual(self.revoke(token, self.bob).code, 200)  # type: ignore[attr-defined]
        self.assertIs(self.introspect(token, self.alice)["active"], True)  # type: ignore[attr-defined]

    def test_revoke_unknown(self) -> None:
        self.assertEqual(self.revoke("nothing-like-a-token", self.alice).code, 200)  # type: ignore[attr-defined]

    def test_purge_forgets_expired(self) -> None:
        token = self.issue(self.alice)
        self.revoke(self.issue(self.alice), self.alice)
        # the brute-force limits' windows of these requests end after a
        # minute: dropped first, so that what follows counts tokens only
        self.clock.advance(61)  # type: ignore[attr-defined]
        self.successResultOf(self.store.purge_expired(int(self.clock.seconds())))  # type: ignore[attr-defined]
        self.clock.advance(3540)  # type: ignore[attr-defined]
        purged = self.successResultOf(self.store.purge_expired(int(self.clock.seconds())))  # type: ignore[attr-defined]
        # the revoked one's deny-list entry (where the tokens exchanged from
        # it look), and an opaque live token's record (the revoked one's
        # went at revocation)
        self.assertEqual(purged, 2 if self.token_format == "opaque" else 1)  # type: ignore[attr-defined]
        self.assertEqual(self.introspect(token, self.alice), {"active": False})  # type: ignore[attr-defined]


class JWTLifecycleTests(LifecycleMixin, ServerTestCase):
    def test_revoked_jwt_still_verifies_offline_but_not_by_introspection(self) -> None:
        """
        RFC 7009 §2: a JWT cannot be recalled from resource servers that
        verify offline; its jti goes on a deny list that introspection checks.
        """
        token = self.issue(self.alice)
        self.revoke(token, self.alice)
        self.verify(token)
        self.assertEqual(self.introspect(token, self.alice), {"active": False})


class OpaqueLifecycleTests(LifecycleMixin, ServerTestCase):
    token_format = "opaque"

    def test_opaque_token(self) -> None:
        response = self.token({"grant_type": "client_credentials"}, self.auth(self.alice))
        token = response.json()["access_token"]
        self.assertEqual(response.json()["token_type"], "Bearer")
        self.assertGreaterEqual(len(token), 43)
        self.assertNotIn(".", token)
        with self.assertRaises(jwt.DecodeError):
            jwt.get_unverified_header(token)

    def test_token_made_before_the_time_was_added(self) -> None:
        """
        A token of 256 random bits alone, stored under its digest (as
        before opaque tokens carried their time), is still found, revoked
        and deleted with its client.
        """
        from ccserver import credentials
        from ccserver.model import TokenRecord

        old = credentials.new_secret()
        now = int(self.clock.seconds())
        record = TokenRecord(
            token_digest=credentials.digest(old),
            client_id=self.alice["client_id"],
            scope=("read",),
            audience=(ISSUER,),
            issued_at=now,
            expires_at=now + 3600,
            jti="old-jti",
            claims={},
        )
        self.successResultOf(self.store.add_token(record))
        info = self.introspect(old, self.alice)
        self.assertIs(info["active"], True)
        self.assertEqual(info["client_id"], self.alice["client_id"])
        self.revoke(old, self.alice)
        self.assertEqual(self.introspect(old, self.alice), {"active": False})

    def test_tokens_keyed_in_time_order(self) -> None:
        """
        Opaque tokens are stored under keys that sort by when they were
        made (the time in front of the token), so that a store's index
        takes them at its end; the token itself is never stored.
        """
        from ccserver import credentials

        first = self.issue(self.alice)
        self.clock.advance(0.002)
        second = self.issue(self.alice)
        keys = [credentials.opaque_token_key(first), credentials.opaque_token_key(second)]
        self.assertEqual(keys, sorted(keys))
        self.assertEqual(keys[0][:12], f"{int((self.clock.seconds() - 0.002) * 1000):012x}")
        self.assertEqual(len(first), 51)
        for token in (first, second):
            record = self.stored(token)
            self.assertIsNotNone(record)
            self.assertNotIn(token, repr(record))

    def test_stored_only_as_digest(self) -> None:
        token = self.issue(self.alice)
        record = self.stored(token)
        self.assertIsNotNone(record)
        self.assertNotIn(token, repr(record))
        self.assertNotIn(token, credentials.opaque_token_key(token))

    def test_revoke_deletes(self) -> None:
        token = self.issue(self.alice)
        self.assertIsNotNone(self.stored(token))
        self.revoke(token, self.alice)
        self.assertTrue(self.gone(token))


#: What a handler that got past the reserved-claims check would forge.
FORGED = {
    "active": False,
    "token_type": "forged",
    "client_id": "mallory",
    "sub": "mallory",
    "iss": "https://evil.example.com",
    "aud": "https://evil.example.com",
    "scope": "admin",
    "username": "root",
    "cnf": {"jkt": "forged"},
}


@implementer(IClientCredentialsGrantHandler)
class SlippedClaimsHandler:
    """
    A handler whose reserved claims slipped past L{GrantAuthorization}'s
    check (which no honest handler can do): what the server's own members
    must still win against.
    """

    def authorize(self, grant: GrantRequest) -> GrantAuthorization:
        decision = GrantAuthorization(
            scope=grant.client.scope, claims={"tier": "gold", "roles": ["reader"]}
        )
        object.__setattr__(
            decision, "claims", MappingProxyType({**decision.claims, **FORGED})
        )
        return decision


class HandlerClaimsMixin:
    """
    Introspection answers with the server's members whatever claims a token
    carries: a handler's extra claims beside them, never over them.
    """

    token_format = "jwt"

    def make_config(self, **tokens: Any) -> Config:
        return super().make_config(format=self.token_format)  # type: ignore[misc, no-any-return]

    def make_handler(self) -> IClientCredentialsGrantHandler:
        return SlippedClaimsHandler()

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.client = self.register(scope="read")  # type: ignore[attr-defined]
        self.auth = basic(self.client["client_id"], self.client["client_secret"])

    def introspect(self, token: str) -> dict[str, Any]:
        response = self.request(  # type: ignore[attr-defined]
            "POST",
            "/token/introspect",
            headers={"Authorization": self.auth, "Content-Type": "application/x-www-form-urlencoded"},
            data=f"token={token}".encode(),
        )
        self.assertEqual(response.code, 200, response.body)  # type: ignore[attr-defined]
        return response.json()  # type: ignore[no-any-return]

    def assert_server_members(self, info: dict[str, Any]) -> None:
        expected = {
            "active": True,
            "token_type": "Bearer",
            "client_id": self.client["client_id"],
            "sub": self.client["client_id"],
            "iss": ISSUER,
            "aud": ISSUER,
            "scope": "read",
        }
        self.assertEqual({name: info.get(name) for name in expected}, expected)  # type: ignore[attr-defined]

    def test_slipped_claims_never_override(self) -> None:
        response = self.token({"grant_type": "client_credentials"}, self.auth)  # type: ignore[attr-defined]
        self.assertEqual(response.code, 200, response.body)  # type: ignore[attr-defined]
        info = self.introspect(response.json()["access_token"])
        self.assert_server_members(info)
        self.assertNotIn("username", info)  # type: ignore[attr-defined]
        self.assertNotIn("cnf", info)  # type: ignore[attr-defined]
        self.assertEqual((info["tier"], info["roles"]), ("gold", ["reader"]))  # type: ignore[attr-defined]


class JWTHandlerClaimsTests(HandlerClaimsMixin, ServerTestCase):
    def test_jwt_carries_no_forged_claim(self) -> None:
        response = self.token({"grant_type": "client_credentials"}, self.auth)
        claims = self.verify(response.json()["access_token"])
        self.assertEqual(claims["client_id"], self.client["client_id"])
        for name in ("active", "token_type", "username", "cnf"):
            self.assertNotIn(name, claims)

    def test_signed_active_false_cannot_override(self) -> None:
        """
        A JWT signed with C{active} and C{token_type} claims (as an earlier
        release let a handler add) still introspects as active and Bearer:
        the server's members are written last.
        """
        now = int(self.clock.seconds())
        token = self.keyring.current.sign(
            {
                "iss": ISSUER,
                "sub": self.client["client_id"],
                "client_id": self.client["client_id"],
                "aud": ISSUER,
                "iat": now,
                "exp": now + 60,
                "jti": "signed-before",
                "scope": "read",
                "active": False,
                "token_type": "forged",
            }
        )
        self.assert_server_members(self.introspect(token))


class OpaqueHandlerClaimsTests(HandlerClaimsMixin, ServerTestCase):
    token_format = "opaque"


class AnyClientIntrospectionTests(ServerTestCase):
    def make_config(self, **tokens: Any) -> Config:
        return super().make_config(introspection="any")

    def test_any_client_sees(self) -> None:
        alice, bob = self.register(scope="read"), self.register(scope="read")
        token = self.token({"grant_type": "client_credentials"}, basic(alice["client_id"], alice["client_secret"])).json()["access_token"]
        response = self.request(
            "POST",
            "/token/introspect",
            headers={"Authorization": basic(bob["client_id"], bob["client_secret"]), "Content-Type": "application/x-www-form-urlencoded"},
            data=f"token={token}".encode(),
        )
        self.assertIs(response.json()["active"], True)


class AudienceAndLifetimeTests(ServerTestCase):
    def make_config(self, **tokens: Any) -> Config:
        return super().make_config(max_lifetime=7200, audience=("https://default.example.com",))

    def claims(self, client: dict[str, Any], body: bytes = b"grant_type=client_credentials") -> dict[str, Any]:
        response = self.token(body, basic(client["client_id"], client["client_secret"]))
        self.assertEqual(response.code, 200, response.body)
        token = response.json()["access_token"]
        return jwt.decode(token, options={"verify_signature": False}) | {"expires_in": response.json()["expires_in"]}

    def test_registered_audiences(self) -> None:
        client = self.register(scope="read", audience=[API, BILLING])
        self.assertEqual(self.claims(client)["aud"], [API, BILLING])

    def test_resource_narrows(self) -> None:
        client = self.register(scope="read", audience=[API, BILLING])
        self.assertEqual(self.claims(client, b"grant_type=client_credentials&resource=" + API.encode())["aud"], API)
        both = b"grant_type=client_credentials&resource=" + BILLING.encode() + b"&resource=" + API.encode()
        self.assertEqual(self.claims(client, both)["aud"], [BILLING, API])

    def test_resource_outside(self) -> None:
        client = self.register(scope="read", audience=[API])
        for resource in (BILLING, "not-a-uri", API + "#fragment"):
            response = self.token(
                {"grant_type": "client_credentials", "resource": resource},
                basic(client["client_id"], client["client_secret"]),
            )
            self.assertEqual((response.code, response.json()["error"]), (400, "invalid_target"), resource)

    def test_server_default_audience(self) -> None:
        client = self.register(scope="read")
        self.assertEqual(self.claims(client)["aud"], "https://default.example.com")

    def test_client_lifetime(self) -> None:
        client = self.register(scope="read", access_token_lifetime=600)
        claims = self.claims(client)
        self.assertEqual((claims["exp"] - claims["iat"], claims["expires_in"]), (600, 600))

    def test_lifetime_capped(self) -> None:
        client = self.register(scope="read", access_token_lifetime=100_000)
        claims = self.claims(client)
        self.assertEqual((claims["exp"] - claims["iat"], claims["expires_in"]), (7200, 7200))

    def test_bad_metadata(self) -> None:
        from tests.helpers import MASTER_TOKEN

        for body in ({"audience": "https://x"}, {"audience": ["relative"]}, {"access_token_lifetime": 0}, {"access_token_lifetime": "60"}, {"resource_server_uris": ["x#y"]}):
            response = self.request("POST", "/client-reg", headers={"Authorization": f"Bearer {MASTER_TOKEN}"}, json_body=body)
            self.assertEqual(response.code, 400, body)
            self.assertIn(next(iter(body)), response.json()["error_description"])


class DiscoveryLifecycleTests(ServerTestCase):
    def test_endpoints_advertised(self) -> None:
        document = self.request("GET", "/.well-known/oauth-authorization-server").json()
        self.assertEqual(document["introspection_endpoint"], f"{ISSUER}/token/introspect")
        self.assertEqual(document["revocation_endpoint"], f"{ISSUER}/token/revoke")
