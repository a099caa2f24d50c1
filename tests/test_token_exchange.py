"""
Token exchange (RFC 8693) at the token endpoint, in memory: the chain
A -> B -> C, every refusal RFC 8693 §2.2.2 and the default policy name, and
the ways a client could try to get more from an exchange than its subject
token carries (docs/token-exchange.md).  Real clients, real processes and
every store: L{tests.test_token_exchange_process}.

The services:

  - A, a client (client credentials) whose tokens are for B's API;
  - B, a resource server (B_API) that calls C: registered for token exchange,
    and for tokens for C_API;
  - C, a resource server (C_API) that introspects what it is given;
  - D, a client registered for token exchange that A's tokens are not for.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import jwt
from attrs import define
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from ccserver.config import Config
from ccserver.handlers.registered_scope import RegisteredScopeHandler
from ccserver.interfaces import IClientCredentialsGrantHandler, ITokenExchangeHandler
from ccserver.model import (
    ACCESS_TOKEN_TYPE,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    GrantAuthorization,
    GrantRequest,
    TokenExchangeRequest,
)
from tests.helpers import ISSUER, MASTER_TOKEN, Response, ServerTestCase, TokenLifecycle, basic
from tests.test_dpop import Key

B_API = "https://b.example/api"
C_API = "https://c.example/api"
D_API = "https://d.example/api"


class ExchangeTestCase(TokenLifecycle, ServerTestCase):
    """
    A, B, C and D registered; A's token for B in hand.
    """

    signing_alg = "ES256"
    token_format = "jwt"

    def make_config(self, **tokens: Any) -> Config:
        return super().make_config(format=self.token_format, **tokens)

    def setUp(self) -> None:
        super().setUp()
        self.a = self.register(
            client_name="A", scope="orders:read orders:write", audience=[B_API]
        )
        self.b = self.register(
            client_name="B",
            scope="orders:read inventory:read",
            grant_types=[TOKEN_EXCHANGE],
            resource_server_uris=[B_API],
            audience=[C_API, D_API],
        )
        self.c = self.register(
            client_name="C",
            scope="orders:read",
            grant_types=[TOKEN_EXCHANGE],
            resource_server_uris=[C_API],
            audience=[D_API],
        )
        self.d = self.register(
            client_name="D", scope="orders:read", grant_types=[TOKEN_EXCHANGE], audience=[C_API]
        )
        self.a_token = self.client_token(self.a)

    def client_token(self, client: dict[str, Any], **form: str) -> str:
        response = self.token({"grant_type": "client_credentials", **form}, self.auth(client))
        self.assertEqual(response.code, 200, response.body)
        return str(response.json()["access_token"])

    def exchange(
        self,
        client: dict[str, Any],
        subject_token: str | None,
        subject_token_type: str | None = ACCESS_TOKEN_TYPE,
        *,
        audience: list[str] = (),  # type: ignore[assignment]
        resource: list[str] = (),  # type: ignore[assignment]
        dpop: str | None = None,
        **form: str,
    ) -> Response:
        pairs: list[tuple[str, str]] = [("grant_type", TOKEN_EXCHANGE)]
        if subject_token is not None:
            pairs.append(("subject_token", subject_token))
        if subject_token_type is not None:
            pairs.append(("subject_token_type", subject_token_type))
        pairs += [("audience", value) for value in audience]
        pairs += [("resource", value) for value in resource]
        pairs += list(form.items())
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": self.auth(client),
        }
        if dpop is not None:
            headers["DPoP"] = dpop
        return self.request("POST", "/token", headers=headers, data=urlencode(pairs).encode())

    def exchanged(self, client: dict[str, Any], subject_token: str, **kwargs: Any) -> str:
        response = self.exchange(client, subject_token, **kwargs)
        self.assertEqual(response.code, 200, response.body)
        return str(response.json()["access_token"])

    def reregister(self, client: dict[str, Any], **metadata: Any) -> dict[str, Any]:
        """
        Replace a client's registration with the master token (the
        operator), and wait out the client cache.
        """
        response = self.request(
            "PUT",
            f"/client-reg/{client['client_id']}",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
            json_body={"client_id": client["client_id"], **metadata},
        )
        self.assertEqual(response.code, 200, response.body)
        self.clock.advance(6)  # past the client cache
        return client

    def b_cc(self) -> dict[str, Any]:
        """
        B, also registered for client credentials (for its own tokens).
        """
        return self.reregister(
            self.b,
            client_name="B",
            scope="orders:read inventory:read",
            grant_types=[TOKEN_EXCHANGE, "client_credentials"],
            resource_server_uris=[B_API],
            audience=[C_API, D_API],
        )

    def refused(self, response: Response, error: str, status: int = 400) -> str:
        self.assertEqual(response.code, status, response.body)
        self.assertEqual(response.json()["error"], error, response.body)
        self.assertEqual(response.headers["cache-control"], "no-store")
        return str(response.json()["error_description"])

    def revoke(self, token: str, caller: dict[str, Any]) -> None:
        response = self.request(
            "POST",
            "/token/revoke",
            headers={
                "Authorization": self.auth(caller),
                "Content-Type": "application/x-www-form-urlencoded",
            },
            data=urlencode({"token": token}).encode(),
        )
        self.assertEqual(response.code, 200, response.body)

    def claims(self, token: str, audience: str = C_API) -> dict[str, Any]:
        """
        What a resource server sees: the token verified (JWT), or
        introspected by C (opaque).
        """
        if token.count(".") == 2:
            return self.verify(token, audience=audience)
        info = self.introspect(token, self.c)
        self.assertIs(info["active"], True, info)
        return info


class ChainTests(ExchangeTestCase):
    """
    A -> B -> C: B exchanges the token A sent it for one C accepts.
    """

    def test_chain(self) -> None:
        response = self.exchange(self.b, self.a_token, audience=[C_API], scope="orders:read")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.headers["cache-control"], "no-store")
        answer = response.json()
        # RFC 8693 §2.2.1
        self.assertEqual(
            set(answer), {"access_token", "issued_token_type", "token_type", "expires_in", "scope"}
        )
        self.assertEqual(answer["issued_token_type"], ACCESS_TOKEN_TYPE)
        self.assertEqual(answer["token_type"], "Bearer")
        self.assertEqual(answer["scope"], "orders:read")
        claims = self.claims(answer["access_token"])
        subject = self.verify(self.a_token, audience=B_API)
        self.assertEqual(claims["sub"], self.a["client_id"])
        self.assertEqual(claims["client_id"], self.b["client_id"])
        self.assertEqual(claims["act"], {"sub": self.b["client_id"]})
        self.assertEqual(claims["aud"], C_API)
        self.assertEqual(claims["scope"], "orders:read")
        self.assertLessEqual(claims["exp"], subject["exp"])
        self.assertEqual(
            claims["exchanged_from"], [{"client_id": self.a["client_id"], "jti": subject["jti"]}]
        )
        # C, a resource server, sees the same by introspection
        info = self.introspect(answer["access_token"], self.c)
        self.assertIs(info["active"], True)
        self.assertEqual((info["sub"], info["act"]["sub"]), (self.a["client_id"], self.b["client_id"]))

    def test_nested_act(self) -> None:
        """
        RFC 8693 §4.1: C exchanges what B gave it; the new token's act names
        C, with B, the prior actor, nested in it.
        """
        for_c = self.exchanged(self.b, self.a_token, audience=[C_API], scope="orders:read")
        for_d = self.exchanged(self.c, for_c, audience=[D_API])
        claims = self.verify(for_d, audience=D_API)
        self.assertEqual(claims["sub"], self.a["client_id"])
        self.assertEqual(claims["client_id"], self.c["client_id"])
        self.assertEqual(
            claims["act"], {"sub": self.c["client_id"], "act": {"sub": self.b["client_id"]}}
        )
        self.assertEqual(
            [ref["client_id"] for ref in claims["exchanged_from"]],
            [self.b["client_id"], self.a["client_id"]],
        )

    def test_defaults(self) -> None:
        """
        No scope, no audience asked: the scope both the subject token and the
        client have, the client's registered audience.
        """
        claims = self.claims(self.exchanged(self.b, self.a_token), audience=C_API)
        self.assertEqual(claims["scope"], "orders:read")
        self.assertEqual(claims["aud"], [C_API, D_API])

    def test_subject_token_reused(self) -> None:
        """
        A subject token is not used up: B exchanges it for every call it makes.
        """
        first = self.exchanged(self.b, self.a_token, audience=[C_API])
        second = self.exchanged(self.b, self.a_token, audience=[C_API])
        self.assertNotEqual(first, second)

    def test_other_parameters_reach_the_handler_only(self) -> None:
        """
        A sub (or act, or client_id) in the form is a parameter for the
        handler: the token's are the server's.
        """
        token = self.exchanged(self.b, self.a_token, sub="admin", act="admin", may_act="x")
        claims = self.verify(token, audience=C_API)
        self.assertEqual(claims["sub"], self.a["client_id"])
        self.assertEqual(claims["act"], {"sub": self.b["client_id"]})
        self.assertNotIn("may_act", claims)


class OpaqueChainTests(ChainTests):
    """
    The same, with opaque tokens: the store keeps sub, act and what a token
    dies with.
    """

    token_format = "opaque"

    def verify(self, access_token: str, audience: str = ISSUER) -> dict[str, Any]:
        info = self.introspect(access_token, self.c if audience != B_API else self.b)
        self.assertIs(info["active"], True, info)
        return info

    def test_requested_jwt(self) -> None:
        """
        RFC 8693 §2.1 requested_token_type: a JWT, when asked, from a server
        whose tokens are opaque; the answer says so.
        """
        response = self.exchange(
            self.b, self.a_token, audience=[C_API], requested_token_type=JWT_TOKEN_TYPE
        )
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["issued_token_type"], JWT_TOKEN_TYPE)
        token = response.json()["access_token"]
        claims = ServerTestCase.verify(self, token, audience=C_API)
        self.assertEqual((claims["sub"], claims["act"]), (self.a["client_id"], {"sub": self.b["client_id"]}))
        # and that JWT is a subject token in turn, for an opaque one
        again = self.exchange(self.c, token, audience=[D_API])
        self.assertEqual(again.json()["issued_token_type"], ACCESS_TOKEN_TYPE)
        self.assertEqual(again.json()["access_token"].count("."), 0)


class RequestTests(ExchangeTestCase):
    """
    RFC 8693 §2.1: the parameters, each refused as §2.2.2 says.
    """

    def test_not_registered_for_exchange(self) -> None:
        """
        A client whose grant_types do not include token exchange gets
        unauthorized_client, even with a token meant for it.
        """
        other = self.register(scope="orders:read", resource_server_uris=[B_API])
        description = self.refused(self.exchange(other, self.a_token), "unauthorized_client")
        self.assertIn(TOKEN_EXCHANGE, description)

    def test_client_authentication(self) -> None:
        response = self.exchange({**self.b, "client_secret": "wrong"}, self.a_token)
        self.refused(response, "invalid_client", 401)

    def test_subject_token_missing(self) -> None:
        description = self.refused(self.exchange(self.b, None), "invalid_request")
        self.assertEqual(description, "subject_token: missing")

    def test_subject_token_type_missing(self) -> None:
        description = self.refused(self.exchange(self.b, self.a_token, None), "invalid_request")
        self.assertEqual(description, "subject_token_type: missing")

    def test_subject_token_type_unsupported(self) -> None:
        for token_type in (
            JWT_TOKEN_TYPE,
            "urn:ietf:params:oauth:token-type:id_token",
            "urn:ietf:params:oauth:token-type:refresh_token",
            "access_token",
        ):
            description = self.refused(self.exchange(self.b, self.a_token, token_type), "invalid_request")
            self.assertIn("subject_token: token type", description)
            self.assertIn(ACCESS_TOKEN_TYPE, description)

    def test_actor_token_type_without_actor_token(self) -> None:
        response = self.exchange(self.b, self.a_token, actor_token_type=ACCESS_TOKEN_TYPE)
        self.assertEqual(
            self.refused(response, "invalid_request"), "actor_token_type: given without actor_token"
        )

    def test_actor_token_without_type(self) -> None:
        response = self.exchange(self.b, self.a_token, actor_token=self.client_token(self.b_cc()))
        self.assertIn("actor_token_type: missing", self.refused(response, "invalid_request"))

    def test_requested_token_type_unsupported(self) -> None:
        for token_type in ("urn:ietf:params:oauth:token-type:id_token", "urn:x:saml2"):
            response = self.exchange(self.b, self.a_token, requested_token_type=token_type)
            self.assertIn("requested_token_type", self.refused(response, "invalid_request"))

    def test_subject_token_too_long(self) -> None:
        response = self.exchange(self.b, "a" * 9000)
        self.assertEqual(
            self.refused(response, "invalid_request"), "subject_token: longer than 8192 bytes"
        )

    def test_malformed_scope(self) -> None:
        self.refused(self.exchange(self.b, self.a_token, scope='a"b'), "invalid_scope")

    def test_malformed_resource(self) -> None:
        self.refused(self.exchange(self.b, self.a_token, resource=["not a uri#x"]), "invalid_target")

    def test_repeated_parameter(self) -> None:
        response = self.token(
            urlencode(
                [
                    ("grant_type", TOKEN_EXCHANGE),
                    ("subject_token", self.a_token),
                    ("subject_token", self.a_token),
                    ("subject_token_type", ACCESS_TOKEN_TYPE),
                ]
            ).encode(),
            self.auth(self.b),
        )
        self.assertEqual(self.refused(response, "invalid_request"), "subject_token: given more than once")



class SubjectTokenTests(ExchangeTestCase):
    """
    RFC 8693 §2.2.2: an invalid, expired or revoked subject token is
    invalid_request; checked as introspection checks it.
    """

    def assert_invalid_subject(self, token: str, client: dict[str, Any] | None = None) -> str:
        description = self.refused(self.exchange(client or self.b, token), "invalid_request")
        self.assertTrue(description.startswith("subject_token: "), description)
        return description

    def test_garbage(self) -> None:
        for token in ("x", "a.b.c", "not-a-token-at-all", "e30.e30.e30"):
            self.assert_invalid_subject(token)

    def test_tampered(self) -> None:
        header, payload, signature = self.a_token.split(".")
        claims = jwt.decode(self.a_token, options={"verify_signature": False})
        forged = jwt.utils.base64url_encode(
            jwt.api_jws.json.dumps({**claims, "scope": "orders:read admin"}).encode()
        ).decode()
        self.assert_invalid_subject(f"{header}.{forged}.{signature}")

    def test_other_signer(self) -> None:
        """
        A token of the same shape, signed by another key (another server,
        or a client's own): refused.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        claims = jwt.decode(self.a_token, options={"verify_signature": False})
        header = jwt.get_unverified_header(self.a_token)
        forged = jwt.encode(claims, key, algorithm="ES256", headers=header)
        self.assert_invalid_subject(forged)

    def test_expired(self) -> None:
        self.clock.advance(3601)
        self.assert_invalid_subject(self.a_token)

    def test_revoked(self) -> None:
        self.revoke(self.a_token, self.a)
        self.assert_invalid_subject(self.a_token)

    def test_client_deleted(self) -> None:
        response = self.request(
            "DELETE",
            f"/client-reg/{self.a['client_id']}",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
        )
        self.assertEqual(response.code, 204)
        self.assert_invalid_subject(self.a_token)

    def test_not_for_this_client(self) -> None:
        """
        D is registered for exchange, but A's token is not for D: neither
        its audience nor a may_act names D.
        """
        description = self.assert_invalid_subject(self.a_token, self.d)
        self.assertIn("is not for this client", description)

    def test_own_token_not_for_itself(self) -> None:
        """
        A client's own token, for another audience, is not its to exchange.
        """
        c_token = self.exchanged(self.b, self.a_token, audience=[C_API])
        description = self.assert_invalid_subject(c_token, self.b)
        self.assertIn("is not for this client", description)


class DerivedTokenTests(ExchangeTestCase):
    """
    A token made by exchange dies with the token it was made from
    (docs/token-exchange.md, "Revocation").
    """

    def test_revoking_the_subject_token_ends_the_derived(self) -> None:
        for_c = self.exchanged(self.b, self.a_token, audience=[C_API], scope="orders:read")
        for_d = self.exchanged(self.c, for_c, audience=[D_API])
        self.assertIs(self.introspect(for_c, self.c)["active"], True)
        self.revoke(self.a_token, self.a)
        self.assertEqual(self.introspect(for_c, self.c), {"active": False})
        self.assertEqual(self.introspect(for_d, self.c), {"active": False})
        description = self.refused(self.exchange(self.c, for_c, audience=[D_API]), "invalid_request")
        self.assertTrue(description.startswith("subject_token: not an active access token"))

    def test_revoking_a_link_ends_what_follows(self) -> None:
        for_c = self.exchanged(self.b, self.a_token, audience=[C_API], scope="orders:read")
        for_d = self.exchanged(self.c, for_c, audience=[D_API])
        self.revoke(for_c, self.b)
        self.assertEqual(self.introspect(for_c, self.c), {"active": False})
        self.assertEqual(self.introspect(for_d, self.c), {"active": False})
        # the token it was made from lives on
        self.assertIs(self.introspect(self.a_token, self.b)["active"], True)

    def test_deleting_the_subject_client_ends_the_derived(self) -> None:
        for_c = self.exchanged(self.b, self.a_token, audience=[C_API])
        response = self.request(
            "DELETE",
            f"/client-reg/{self.a['client_id']}",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
        )
        self.assertEqual(response.code, 204)
        self.assertEqual(self.introspect(for_c, self.c), {"active": False})

    def test_deleting_the_exchanging_client_ends_its_tokens(self) -> None:
        for_c = self.exchanged(self.b, self.a_token, audience=[C_API])
        self.request(
            "DELETE",
            f"/client-reg/{self.b['client_id']}",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
        )
        self.assertEqual(self.introspect(for_c, self.c), {"active": False})
        self.assertIs(self.introspect(self.a_token, self.c)["active"], False)  # not C's to see

    def test_master_token_revokes_the_subject(self) -> None:
        for_c = self.exchanged(self.b, self.a_token, audience=[C_API])
        response = self.request(
            "POST",
            "/token/revoke",
            headers={
                "Authorization": f"Bearer {MASTER_TOKEN}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
            data=urlencode({"token": self.a_token}).encode(),
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(self.introspect(for_c, self.c), {"active": False})

    def test_chain_length(self) -> None:
        """
        A token exchanged over and over: at most MAX_CHAIN links.
        """
        from ccserver.grants.token_exchange import MAX_CHAIN

        # B, C and D pass the token around among themselves
        self.register_ring()
        token, holders = self.a_token, [self.b, self.c]
        for link in range(MAX_CHAIN):
            holder = holders[link % 2]
            target = C_API if holder is self.b else B_API
            token = self.exchanged(holder, token, audience=[target])
        response = self.exchange(holders[MAX_CHAIN % 2], token)
        self.assertIn("exchanged at most 8 times", self.refused(response, "invalid_request"))

    def register_ring(self) -> None:
        """
        B may exchange for C's API, and C for B's.
        """
        for client, api, other in ((self.c, C_API, B_API), (self.b, B_API, C_API)):
            self.reregister(
                client,
                scope="orders:read",
                grant_types=[TOKEN_EXCHANGE],
                resource_server_uris=[api],
                audience=[other],
            )


class OpaqueDerivedTokenTests(DerivedTokenTests):
    token_format = "opaque"


class ScopeTests(ExchangeTestCase):
    """
    The default policy: the new token's scope is within the subject token's
    and the exchanging client's registered scope.
    """

    def test_more_than_the_subject_token(self) -> None:
        """
        B is registered for inventory:read; A's token does not carry it.
        """
        description = self.refused(
            self.exchange(self.b, self.a_token, scope="inventory:read"), "invalid_scope"
        )
        self.assertEqual(description, "scope: more than the subject token carries: inventory:read")

    def test_more_than_the_client_registered(self) -> None:
        """
        A's token carries orders:write; B is not registered for it.
        """
        description = self.refused(
            self.exchange(self.b, self.a_token, scope="orders:read orders:write"), "invalid_scope"
        )
        self.assertEqual(description, "scope: not registered for this client: orders:write")

    def test_narrowed_token_cannot_be_widened_again(self) -> None:
        """
        A token narrowed by one exchange carries no more into the next.
        """
        narrowed = self.exchanged(self.b, self.a_token, audience=[C_API], scope="orders:read")
        self.register_c_for_write()
        self.refused(self.exchange(self.c, narrowed, scope="orders:write"), "invalid_scope")
        claims = self.verify(self.exchanged(self.c, narrowed), audience=D_API) if self.token_format == "jwt" else None
        if claims is not None:
            self.assertEqual(claims["scope"], "orders:read")

    def test_nothing_in_common(self) -> None:
        """
        No scope asked, none shared: a token without scope, still for its
        audience (the handler's to refuse, if it would).
        """
        other = self.register(scope="metrics:read", audience=[B_API])
        answer = self.exchange(self.b, self.client_token(other)).json()
        self.assertEqual(answer["scope"], "")
        self.assertNotIn("scope", self.verify(answer["access_token"], audience=C_API))

    def register_c_for_write(self) -> None:
        self.reregister(
            self.c,
            scope="orders:read orders:write",
            grant_types=[TOKEN_EXCHANGE],
            resource_server_uris=[C_API],
            audience=[D_API],
        )


class TargetTests(ExchangeTestCase):
    """
    The new token's audience is one the exchanging client may ask for (its
    registered audience): invalid_target otherwise (RFC 8693 §2.2.2).
    """

    def test_audience_not_registered(self) -> None:
        description = self.refused(
            self.exchange(self.b, self.a_token, audience=["https://bank.example"]), "invalid_target"
        )
        self.assertEqual(description, "audience: not registered for this client: https://bank.example")

    def test_logical_name(self) -> None:
        """
        RFC 8693 audience may be a logical name; only registered URIs are
        granted here.
        """
        self.refused(self.exchange(self.b, self.a_token, audience=["payments"]), "invalid_target")

    def test_resource_not_registered(self) -> None:
        description = self.refused(
            self.exchange(self.b, self.a_token, resource=["https://bank.example"]), "invalid_target"
        )
        self.assertEqual(description, "resource: not registered for this client: https://bank.example")

    def test_subject_tokens_audience_is_not_a_target(self) -> None:
        """
        B cannot get a token for its own API (A's token's audience) without
        having registered it.
        """
        self.refused(self.exchange(self.b, self.a_token, audience=[B_API]), "invalid_target")

    def test_several(self) -> None:
        token = self.exchanged(self.b, self.a_token, audience=[C_API], resource=[D_API, C_API])
        self.assertEqual(self.verify(token, audience=C_API)["aud"], [C_API, D_API])


class LifetimeTests(ExchangeTestCase):
    """
    The new token ends no later than its subject token, whatever the
    client's lifetime or the handler's decision.
    """

    def test_capped_by_the_subject_token(self) -> None:
        subject = self.verify(self.a_token, audience=B_API)
        self.clock.advance(3000)
        answer = self.exchange(self.b, self.a_token, audience=[C_API]).json()
        self.assertEqual(answer["expires_in"], subject["exp"] - int(self.clock.seconds()))
        self.assertEqual(answer["expires_in"], 600)
        self.assertEqual(self.verify(answer["access_token"], audience=C_API)["exp"], subject["exp"])

    def test_shorter_lifetime_kept(self) -> None:
        short = self.register(
            scope="orders:read",
            grant_types=[TOKEN_EXCHANGE],
            resource_server_uris=[B_API],
            access_token_lifetime=60,
        )
        answer = self.exchange(short, self.a_token).json()
        self.assertEqual(answer["expires_in"], 60)


class ActorTokenTests(ExchangeTestCase):
    """
    RFC 8693 §2.1 actor_token: a token of the acting party; here, an access
    token of this server issued to the exchanging client.
    """

    def setUp(self) -> None:
        super().setUp()
        self.b_cc()

    def test_own_token(self) -> None:
        actor = self.client_token(self.b)
        token = self.exchanged(
            self.b, self.a_token, audience=[C_API], actor_token=actor, actor_token_type=ACCESS_TOKEN_TYPE
        )
        claims = self.verify(token, audience=C_API)
        self.assertEqual(claims["act"], {"sub": self.b["client_id"]})

    def test_another_clients_token(self) -> None:
        """
        B cannot name A (or anyone) as the actor with their token.
        """
        response = self.exchange(
            self.b, self.a_token, actor_token=self.a_token, actor_token_type=ACCESS_TOKEN_TYPE
        )
        self.assertEqual(
            self.refused(response, "invalid_request"), "actor_token: was not issued to this client"
        )

    def test_invalid(self) -> None:
        response = self.exchange(
            self.b, self.a_token, actor_token="garbage", actor_token_type=ACCESS_TOKEN_TYPE
        )
        self.assertTrue(self.refused(response, "invalid_request").startswith("actor_token: "))

    def test_revoked(self) -> None:
        actor = self.client_token(self.b)
        self.revoke(actor, self.b)
        response = self.exchange(
            self.b, self.a_token, actor_token=actor, actor_token_type=ACCESS_TOKEN_TYPE
        )
        self.assertTrue(self.refused(response, "invalid_request").startswith("actor_token: not an active"))

    def test_delegated_token(self) -> None:
        """
        A token made by exchange speaks for its subject: it is not its
        holder's own identity.
        """
        other = self.register(scope="orders:read", audience=[B_API])
        delegated = self.exchanged(self.b, self.client_token(other), audience=[C_API])
        # issued to B, but with act: refused as an actor token
        response = self.exchange(
            self.b, self.a_token, actor_token=delegated, actor_token_type=ACCESS_TOKEN_TYPE
        )
        self.assertIn("was made by a token exchange", self.refused(response, "invalid_request"))


@implementer(IClientCredentialsGrantHandler, ITokenExchangeHandler)
@define
class Policy(RegisteredScopeHandler):
    """
    The default policy, with what a handler of one's own adds: extra
    claims, may_act, audiences of its choosing, another lifetime or format.
    """

    claims: dict[str, Any] = {}
    may_act: dict[str, str] | None = None
    audience: list[str] | None = None
    exchange_lifetime: int | None = None
    exchange_format: str | None = None
    seen: list[TokenExchangeRequest] = []

    def authorize(self, grant: GrantRequest) -> GrantAuthorization:
        decision = super().authorize(grant)
        return GrantAuthorization(
            scope=decision.scope,
            audience=self.audience or decision.audience,
            claims=self.claims,
            may_act=self.may_act,
        )

    def authorize_exchange(self, exchange: TokenExchangeRequest) -> GrantAuthorization:
        self.seen.append(exchange)
        decision = super().authorize_exchange(exchange)
        return GrantAuthorization(
            scope=decision.scope,
            audience=decision.audience,
            claims=decision.claims,
            lifetime=self.exchange_lifetime or decision.lifetime,
            token_format=self.exchange_format,
        )


class HandlerTests(ExchangeTestCase):
    """
    The grant handler decides exchanges too (ITokenExchangeHandler), within
    what the server enforces.
    """

    def make_handler(self) -> IClientCredentialsGrantHandler:
        self.policy = Policy(claims={"tenant": "t1"}, seen=[])
        return self.policy

    def test_sees_the_exchange(self) -> None:
        self.exchanged(
            self.b, self.a_token, audience=[C_API], scope="orders:read", purpose="audit"
        )
        [exchange] = self.policy.seen
        self.assertEqual(exchange.client.client_id, self.b["client_id"])
        self.assertEqual(exchange.subject.token_type, ACCESS_TOKEN_TYPE)
        self.assertEqual(exchange.subject.subject, self.a["client_id"])
        self.assertEqual(exchange.subject.claims["tenant"], "t1")
        self.assertIsNone(exchange.actor)
        self.assertEqual((exchange.scope, exchange.audience), ({"orders:read"}, (C_API,)))
        self.assertEqual(exchange.requested_token_type, ACCESS_TOKEN_TYPE)
        self.assertEqual(dict(exchange.params), {"purpose": "audit"})
        self.assertEqual(exchange.issuer, ISSUER)

    def test_claims_carried(self) -> None:
        """
        The subject token's handler claims go on to the new token.
        """
        claims = self.verify(self.exchanged(self.b, self.a_token), audience=C_API)
        self.assertEqual(claims["tenant"], "t1")

    def test_lifetime_still_capped(self) -> None:
        self.policy.exchange_lifetime = 86400
        subject = self.verify(self.a_token, audience=B_API)
        claims = self.verify(self.exchanged(self.b, self.a_token), audience=C_API)
        self.assertEqual(claims["exp"], subject["exp"])

    def test_opaque_decided_but_jwt_asked(self) -> None:
        self.policy.exchange_format = "opaque"
        response = self.exchange(self.b, self.a_token, requested_token_type=JWT_TOKEN_TYPE)
        self.assertIn("requested_token_type", self.refused(response, "invalid_request"))
        self.assertEqual(self.exchange(self.b, self.a_token).json()["access_token"].count("."), 0)


class MayActTests(ExchangeTestCase):
    """
    RFC 8693 §4.4: a subject token's may_act names who may exchange it and
    act for its subject, though the token is not for them.
    """

    def make_handler(self) -> IClientCredentialsGrantHandler:
        self.policy = Policy(seen=[])
        return self.policy

    def test_named_party_may_exchange(self) -> None:
        self.policy.may_act = {"sub": self.d["client_id"]}
        token = self.client_token(self.a)
        self.assertEqual(
            self.verify(token, audience=B_API)["may_act"], {"sub": self.d["client_id"]}
        )
        claims = self.verify(self.exchanged(self.d, token), audience=C_API)
        self.assertEqual((claims["sub"], claims["act"]), (self.a["client_id"], {"sub": self.d["client_id"]}))
        self.assertNotIn("may_act", claims)

    def test_others_may_not(self) -> None:
        self.policy.may_act = {"sub": self.c["client_id"]}
        token = self.client_token(self.a)
        self.refused(self.exchange(self.d, token), "invalid_request")

    def test_every_member_must_match(self) -> None:
        self.policy.may_act = {"sub": self.d["client_id"], "iss": "https://other.example"}
        self.refused(self.exchange(self.d, self.client_token(self.a)), "invalid_request")
        self.policy.may_act = {"sub": self.d["client_id"], "iss": ISSUER}
        self.exchanged(self.d, self.client_token(self.a))

    def test_audience_by_client_id(self) -> None:
        """
        An audience may name the client by its client_id (a handler's
        choice: registered audiences are URIs).
        """
        self.policy.audience = [self.d["client_id"]]
        self.exchanged(self.d, self.client_token(self.a))

    def test_bad_may_act(self) -> None:
        for may_act in ({}, {"sub": ""}, {"sub": 1}, {"sub": "x", "iss": ["y"]}, "x"):
            with self.assertRaises(ValueError):
                GrantAuthorization(scope=(), may_act=may_act)  # type: ignore[arg-type]


class BindingTests(ExchangeTestCase):
    """
    An exchanged token is bound as any token of its client is: DPoP when
    the client sends a proof (and must, if registered so).
    """

    def setUp(self) -> None:
        super().setUp()
        self.key = Key()
        self.bound = self.register(
            scope="orders:read",
            grant_types=[TOKEN_EXCHANGE],
            resource_server_uris=[B_API],
            audience=[C_API],
            dpop_bound_access_tokens=True,
        )

    def test_proof_binds(self) -> None:
        response = self.exchange(self.b, self.a_token, dpop=self.key.proof(self.clock.seconds()))
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["token_type"], "DPoP")
        claims = self.verify(response.json()["access_token"], audience=C_API)
        self.assertEqual(claims["cnf"], {"jkt": self.key.jkt})

    def test_bound_client_needs_a_proof(self) -> None:
        description = self.refused(self.exchange(self.bound, self.a_token), "invalid_request")
        self.assertIn("dpop_bound_access_tokens", description)

    def test_bad_proof(self) -> None:
        proof = self.key.proof(self.clock.seconds(), htm="GET")
        self.refused(self.exchange(self.b, self.a_token, dpop=proof), "invalid_dpop_proof")

    def test_bound_subject_token(self) -> None:
        """
        A DPoP-bound subject token is exchanged by the client it is for,
        which holds no key of its subject's; the new token is bound to the
        exchanging client's own proof, if any, not to the subject's key.
        """
        a_key = Key()
        response = self.request(
            "POST",
            "/token",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": self.auth(self.a),
                "DPoP": a_key.proof(self.clock.seconds()),
            },
            data=b"grant_type=client_credentials",
        )
        bound_subject = response.json()["access_token"]
        claims = self.verify(self.exchanged(self.b, bound_subject), audience=C_API)
        self.assertNotIn("cnf", claims)


class UnavailableTests(ServerTestCase):
    """
    A third-party handler that decides client credentials only keeps
    working for them; the server then offers no token exchange, and says
    why at start.
    """

    def make_handler(self) -> IClientCredentialsGrantHandler:
        @implementer(IClientCredentialsGrantHandler)
        class OldHandler:
            def __repr__(self) -> str:
                return "<OldHandler>"

            def authorize(self, grant: GrantRequest) -> GrantAuthorization:
                return GrantAuthorization(scope=grant.client.scope)

        return OldHandler()

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        super().setUp()

    def test_not_offered(self) -> None:
        [event] = [e for e in self.events if e.get("grant_type") == TOKEN_EXCHANGE]
        self.assertEqual(
            event["reason"],
            "the grant handler <OldHandler> does not decide token exchanges (it does not "
            "provide ccserver.interfaces.ITokenExchangeHandler); give it "
            "authorize_exchange(exchange), see docs/grant-handlers.md",
        )
        document = self.request("GET", "/.well-known/openid-configuration").json()
        self.assertEqual(document["grant_types_supported"], ["client_credentials"])
        response = self.request(
            "POST",
            "/client-reg",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
            json_body={"grant_types": [TOKEN_EXCHANGE]},
        )
        self.assertEqual(response.json()["error"], "invalid_client_metadata")
        client = self.register(scope="read")
        auth = basic(client["client_id"], client["client_secret"])
        self.assertEqual(self.token({"grant_type": "client_credentials"}, auth).code, 200)
        response = self.token(
            {"grant_type": TOKEN_EXCHANGE, "subject_token": "x", "subject_token_type": ACCESS_TOKEN_TYPE},
            auth,
        )
        self.assertEqual(response.json()["error"], "unsupported_grant_type")


class RegistrationTests(ExchangeTestCase):
    """
    Token exchange is a privileged grant: the operator grants it.
    """

    def test_own_token_cannot_add_it(self) -> None:
        other = self.register(client_name="X", scope="orders:read")
        response = self.request(
            "PUT",
            f"/client-reg/{other['client_id']}",
            headers={"Authorization": f"Bearer {other['registration_access_token']}"},
            json_body={
                "client_id": other["client_id"],
                "client_name": "X",
                "scope": "orders:read",
                "grant_types": ["client_credentials", TOKEN_EXCHANGE],
            },
        )
        self.assertEqual(response.code, 400, response.body)
        self.assertEqual(response.json()["error"], "invalid_client_metadata")
        self.assertIn("grant_types", response.json()["error_description"])

    def test_unknown_grant_type_refused(self) -> None:
        response = self.request(
            "POST",
            "/client-reg",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
            json_body={"grant_types": ["urn:ietf:params:oauth:grant-type:jwt-bearer"]},
        )
        self.assertEqual(response.json()["error"], "invalid_client_metadata")
        self.assertIn(TOKEN_EXCHANGE, response.json()["error_description"])


class ClientCredentialsAudienceTests(ExchangeTestCase):
    """
    RFC 8693 made audience repeatable; for client credentials it is what it
    was, one parameter the handler reads from params.
    """

    def make_handler(self) -> IClientCredentialsGrantHandler:
        self.grants: list[GrantRequest] = []
        grants = self.grants

        class Recording(RegisteredScopeHandler):
            def authorize(self, grant: GrantRequest) -> GrantAuthorization:
                grants.append(grant)
                return super().authorize(grant)

        return Recording()

    def test_once(self) -> None:
        self.client_token(self.a, audience="https://x.example")
        self.assertEqual(self.grants[-1].params["audience"], "https://x.example")
        self.assertEqual(self.grants[-1].grant_type, "client_credentials")

    def test_twice(self) -> None:
        response = self.token(
            b"grant_type=client_credentials&audience=x&audience=y", self.auth(self.a)
        )
        self.assertEqual(self.refused(response, "invalid_request"), "audience: given more than once")


def now() -> int:
    return int(time.time())


class TracedExchangeTests(ChainTests):
    """
    The chain with [tracing] on: the same tokens, and the exchange's
    request is a span with the grant handler's decision under it.
    """

    def make_tracing(self) -> Any:
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from ccserver.tracing import Tracing

        self.exporter = InMemorySpanExporter()
        return Tracing.to(self.exporter, batch=False)

    def test_exchange_traced(self) -> None:
        self.exporter.clear()
        response = self.exchange(self.b, self.a_token, audience=[C_API], scope="orders:read")
        self.assertEqual(response.code, 200, response.body)
        names = [span.name for span in self.exporter.get_finished_spans()]
        self.assertIn("POST /token", names)
        self.assertIn("grant handler", names)
        self.assertIn("client authentication", names)
