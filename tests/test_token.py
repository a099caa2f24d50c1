"""
The token endpoint (RFC 6749 §4.4, §5) and the access tokens it issues
(RFC 9068).
"""

from __future__ import annotations

import base64
import re
from typing import Any

import jwt
from twisted.internet.defer import fail

from ccserver.errors import StoreUnavailable
from ccserver.stores.memory import MemoryStore
from tests.helpers import ISSUER, MASTER_TOKEN, ServerTestCase, assert_not_echoed, basic


class TokenTests(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client = self.register(client_name="My House App", scope="read write")
        self.auth = basic(self.client["client_id"], self.client["client_secret"])

    def assert_error(self, response, code: int, error: str) -> None:  # type: ignore[no-untyped-def]
        self.assertEqual((response.code, response.json()["error"]), (code, error), response.body)
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertEqual(response.headers["cache-control"], "no-store")
        self.assertIn("error_description", response.json())

    def test_basic(self) -> None:
        response = self.token({"grant_type": "client_credentials"}, self.auth)
        self.assertEqual(response.code, 200, response.body)
        body = response.json()
        self.assertEqual(body["token_type"], "Bearer")
        self.assertEqual(body["expires_in"], 3600)
        self.assertEqual(body["scope"], "read write")
        self.assertNotIn("refresh_token", body)
        self.assertEqual(response.headers["cache-control"], "no-store")
        self.assertEqual(response.headers["pragma"], "no-cache")

    def test_jwt_access_token(self) -> None:
        """
        RFC 9068: typ at+jwt, alg, kid; iss, sub, client_id, aud, iat, exp,
        jti, scope; it verifies with the published JWK set.
        """
        access_token = self.token({"grant_type": "client_credentials"}, self.auth).json()[
            "access_token"
        ]
        header = jwt.get_unverified_header(access_token)
        self.assertEqual(header["typ"], "at+jwt")
        self.assertEqual(header["alg"], "RS256")
        claims = self.verify(access_token)
        client_id = self.client["client_id"]
        self.assertEqual(claims["iss"], ISSUER)
        self.assertEqual(claims["sub"], client_id)
        self.assertEqual(claims["client_id"], client_id)
        self.assertEqual(claims["aud"], ISSUER)
        self.assertEqual(claims["exp"] - claims["iat"], 3600)
        self.assertEqual(claims["iat"], int(self.clock.seconds()))
        self.assertEqual(claims["scope"], "read write")
        self.assertTrue(claims["jti"])

    def test_jti_unique(self) -> None:
        tokens = [
            self.token({"grant_type": "client_credentials"}, self.auth).json()["access_token"]
            for _ in range(3)
        ]
        self.assertEqual(len({self.verify(t)["jti"] for t in tokens}), 3)

    def test_scope_subset(self) -> None:
        response = self.token({"grant_type": "client_credentials", "scope": "read"}, self.auth)
        self.assertEqual(response.json()["scope"], "read")
        self.assertEqual(self.verify(response.json()["access_token"])["scope"], "read")

    def test_scope_outside_whitelist(self) -> None:
        response = self.token(
            {"grant_type": "client_credentials", "scope": "read admin"}, self.auth
        )
        self.assert_error(response, 400, "invalid_scope")
        self.assertIn("admin", response.json()["error_description"])

    def test_scope_malformed(self) -> None:
        response = self.token({"grant_type": "client_credentials", "scope": 'read "x'}, self.auth)
        self.assert_error(response, 400, "invalid_scope")

    def test_client_secret_post(self) -> None:
        client = self.register(scope="read", token_endpoint_auth_method="client_secret_post")
        response = self.token(
            {
                "grant_type": "client_credentials",
                "client_id": client["client_id"],
                "client_secret": client["client_secret"],
            }
        )
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["scope"], "read")

    def test_basic_credentials_are_form_urlencoded(self) -> None:
        """
        RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic;
        a percent-encoded id decodes to the registered one.
        """
        client_id = self.client["client_id"]
        encoded = "".join(f"%{b:02X}" for b in client_id.encode())
        raw = f"{encoded}:{self.client['client_secret']}".encode()
        response = self.token(
            {"grant_type": "client_credentials"}, "Basic " + base64.b64encode(raw).decode()
        )
        self.assertEqual(response.code, 200, response.body)

    def test_wrong_secret(self) -> None:
        response = self.token(
            {"grant_type": "client_credentials"}, basic(self.client["client_id"], "wrong")
        )
        self.assert_error(response, 401, "invalid_client")
        self.assertEqual(
            response.headers["www-authenticate"], 'Basic realm="ccserver", charset="UTF-8"'
        )

    def test_unknown_client_looks_like_wrong_secret(self) -> None:
        wrong_secret = self.token(
            {"grant_type": "client_credentials"}, basic(self.client["client_id"], "wrong")
        )
        unknown = self.token({"grant_type": "client_credentials"}, basic("nobody", "wrong"))
        self.assertEqual(unknown.code, wrong_secret.code)
        self.assertEqual(unknown.body, wrong_secret.body)
        self.assertEqual(unknown.headers["www-authenticate"], wrong_secret.headers["www-authenticate"])

    def post_secret(self, client: dict[str, Any]) -> Any:
        return self.token(
            {
                "grant_type": "client_credentials",
                "client_id": client["client_id"],
                "client_secret": client["client_secret"],
            }
        )

    def test_unnamed_method_takes_either_secret_method(self) -> None:
        """
        A client whose registration named no method is registered with
        client_secret_basic (RFC 7591 §2's default) and may post its secret
        too, as requests-oauth2client and openid-client do by default.
        """
        self.assertEqual(self.client["token_endpoint_auth_method"], "client_secret_basic")
        self.assertEqual(self.post_secret(self.client).code, 200)
        self.assertEqual(self.token({"grant_type": "client_credentials"}, self.auth).code, 200)

    def test_wrong_method(self) -> None:
        """
        A client that named client_secret_basic and sends its secret in the
        body is refused, and told its method once its secret proved it.
        """
        client = self.register(scope="read", token_endpoint_auth_method="client_secret_basic")
        response = self.post_secret(client)
        self.assert_error(response, 401, "invalid_client")
        self.assertEqual(
            response.json()["error_description"],
            "this client must authenticate with client_secret_basic",
        )

    def test_named_post_is_held_to_it(self) -> None:
        client = self.register(scope="read", token_endpoint_auth_method="client_secret_post")
        response = self.token(
            {"grant_type": "client_credentials"}, basic(client["client_id"], client["client_secret"])
        )
        self.assert_error(response, 401, "invalid_client")
        self.assertIn("client_secret_post", response.json()["error_description"])

    def test_two_methods(self) -> None:
        response = self.token(
            {
                "grant_type": "client_credentials",
                "client_id": self.client["client_id"],
                "client_secret": self.client["client_secret"],
            },
            self.auth,
        )
        self.assert_error(response, 400, "invalid_request")

    def test_no_authentication(self) -> None:
        response = self.token({"grant_type": "client_credentials"})
        self.assert_error(response, 401, "invalid_client")

    def test_client_id_without_secret(self) -> None:
        response = self.token(
            {"grant_type": "client_credentials", "client_id": self.client["client_id"]}
        )
        self.assert_error(response, 401, "invalid_client")

    def test_malformed_basic(self) -> None:
        for header in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Basic"):
            response = self.token({"grant_type": "client_credentials"}, header)
            self.assert_error(response, 401, "invalid_client")

    def test_other_scheme(self) -> None:
        response = self.token({"grant_type": "client_credentials"}, "Bearer abc")
        self.assert_error(response, 401, "invalid_client")

    def test_missing_grant_type(self) -> None:
        self.assert_error(self.token({"scope": "read"}, self.auth), 400, "invalid_request")

    def test_empty_parameter_is_omitted(self) -> None:
        """
        RFC 6749 §3.2: a parameter sent without a value is treated as
        omitted.
        """
        self.assert_error(self.token({"grant_type": ""}, self.auth), 400, "invalid_request")
        response = self.token({"grant_type": "client_credentials", "scope": ""}, self.auth)
        self.assertEqual(response.json()["scope"], "read write")

    def test_repeated_parameter(self) -> None:
        response = self.token(
            b"grant_type=client_credentials&scope=read&scope=write", self.auth
        )
        self.assert_error(response, 400, "invalid_request")
        self.assertIn("scope", response.json()["error_description"])

    def test_unsupported_grant_type(self) -> None:
        response = self.token({"grant_type": "password"}, self.auth)
        self.assert_error(response, 400, "unsupported_grant_type")

    def test_unauthorized_client(self) -> None:
        client = self.register(scope="read", grant_types=[])
        response = self.token(
            {"grant_type": "client_credentials"},
            basic(client["client_id"], client["client_secret"]),
        )
        self.assert_error(response, 400, "unauthorized_client")

    def test_get_is_405(self) -> None:
        for method in ("GET", "PUT", "DELETE"):
            response = self.request(method, "/token")
            self.assertEqual(response.code, 405)
            self.assertEqual(response.headers["allow"], "POST")
            self.assertEqual(response.json()["error"], "invalid_request")

    def test_wrong_content_type(self) -> None:
        response = self.request(
            "POST",
            "/token",
            headers={"Authorization": self.auth, "Content-Type": "application/json"},
            data=b'{"grant_type": "client_credentials"}',
        )
        self.assert_error(response, 400, "invalid_request")

    def test_parameters_in_query(self) -> None:
        response = self.request(
            "POST",
            "/token?client_secret=x",
            headers={"Authorization": self.auth, "Content-Type": "application/x-www-form-urlencoded"},
            data=b"grant_type=client_credentials",
        )
        self.assert_error(response, 400, "invalid_request")

    def test_not_utf8(self) -> None:
        response = self.token(b"grant_type=client_credentials&scope=%FF%FE", self.auth)
        self.assert_error(response, 400, "invalid_request")
        response = self.token(b"grant_type=client_credentials\xff", self.auth)
        self.assert_error(response, 400, "invalid_request")

    def test_deleted_client_gets_no_token(self) -> None:
        response = self.request(
            "DELETE",
            f"/client-reg/{self.client['client_id']}",
            headers={"Authorization": f"Bearer {self.client['registration_access_token']}"},
        )
        self.assertEqual(response.code, 204)
        self.assert_error(
            self.token({"grant_type": "client_credentials"}, self.auth), 401, "invalid_client"
        )

    def test_known_client_costs_no_store_round_trip(self) -> None:
        self.token({"grant_type": "client_credentials"}, self.auth)
        calls = []
        original = self.store.get_client
        self.store.get_client = lambda client_id: calls.append(client_id) or original(client_id)  # type: ignore[method-assign]
        self.token({"grant_type": "client_credentials"}, self.auth)
        self.assertEqual(calls, [])
        self.clock.advance(6)
        self.token({"grant_type": "client_credentials"}, self.auth)
        self.assertEqual(calls, [self.client["client_id"]])


class CredentialsNotEchoedTests(ServerTestCase):
    """
    Issue 9, item 7: no error description repeats a credential, however the
    Authorization header is malformed.
    """

    def setUp(self) -> None:
        super().setUp()
        self.client = self.register(client_name="App", scope="read")
        self.client_id = self.client["client_id"]
        self.secret = self.client["client_secret"]
        self.rat = self.client["registration_access_token"]
        self.encoded = base64.b64encode(f"{self.client_id}:{self.secret}".encode()).decode()
        self.secrets = (self.secret, self.encoded, f"{self.client_id}:{self.secret}", self.rat, MASTER_TOKEN)

    def post(self, path: str, authorization: str):  # type: ignore[no-untyped-def]
        body = b"grant_type=client_credentials" if path == "/token" else b"token=" + self.rat.encode()
        return self.request(
            "POST",
            path,
            headers={"Authorization": authorization, "Content-Type": "application/x-www-form-urlencoded"},
            data=body,
        )

    def test_malformed_headers(self) -> None:
        e, secret, rat = self.encoded, self.secret, self.rat
        headers = [
            f"Basic{e}",
            e,
            f"Basic\x0b{e}",
            f"Basic\x0c{e}",
            f"Basic,{e}",
            f"Basic;{e}",
            f"Basic={e}",
            f"Basic:{e}",
            f"Basic {e} {e}",
            f"Basic {e}\t{e}",
            f"Basic {e[:-2]}",
            f"Basic {self.client_id}:{secret}",
            f"{self.client_id}:{secret}",
            secret,
            f"{secret} {secret}",
            f"Basic\t{secret}",
            f"Bearer\t{e}",
            f"Digest\t{e}",
            f"Bearer {secret}",
            rat,
            f"Bearer{rat}",
            f"Bearer\t{rat}",
            f"Bearer\x0b{rat}",
            f"Bearer {rat}",
            f"{MASTER_TOKEN}",
            f"Bearer\t{MASTER_TOKEN}",
        ]
        for path in ("/token", "/token/introspect", "/token/revoke"):
            for header in headers:
                response = self.post(path, header)
                assert_not_echoed(self, response, *self.secrets)
                if path == "/token/revoke" and re.match(r"Bearer[ \t]", header):
                    # The revocation endpoint takes the master token as a
                    # bearer token: a wrong one is invalid_token.
                    if header.endswith(MASTER_TOKEN):
                        self.assertEqual(response.code, 200, header)
                    else:
                        self.assertEqual(
                            (response.code, response.json()["error"]), (401, "invalid_token")
                        )
                    continue
                self.assertEqual(
                    (response.code, response.json()["error"]), (401, "invalid_client"), (path, header)
                )

    def test_tab_after_scheme(self) -> None:
        """
        A tab between the scheme and the credentials is taken for a space
        (the review's header, which used to come back whole in the 401).
        """
        for header in (f"Basic\t{self.encoded}", f"basic \t {self.encoded}\t"):
            response = self.post("/token", header)
            self.assertEqual(response.code, 200, (header, response.body))
            assert_not_echoed(self, response, *self.secrets)

    def test_no_part_of_the_header_echoed(self) -> None:
        """
        No word of the header comes back, not even a short first one that
        looks like a scheme: it may be a credential sent without one
        ("the 'S3CR3TzzQQ' authentication scheme is not supported here"
        once told it back).
        """
        for header in (
            "S3CR3TzzQQ abc",
            "S3CR3TzzQQ",
            "Bearer S3CR3TzzQQ",
            "Digest username=S3CR3TzzQQ",
            "a-very-long-scheme-name-that-may-be-a-secret abc",
        ):
            for path in ("/token", "/token/introspect"):
                response = self.post(path, header)
                self.assertEqual(response.code, 401, (path, header))
                self.assertEqual(response.json()["error"], "invalid_client")
                for word in re.split(r"[ =]", header):
                    self.assertNotIn(word, response.body.decode(), (path, header))
                    self.assertNotIn(word, repr(response.headers), (path, header))


class UnavailableStoreTests(ServerTestCase):
    """
    A store that cannot be reached: 503 temporarily_unavailable.
    """

    def test_store_down(self) -> None:
        client = self.register(scope="read")
        self.clock.advance(10)
        store: MemoryStore = self.store  # type: ignore[assignment]
        store.get_client = lambda client_id: fail(StoreUnavailable("down"))  # type: ignore[method-assign]
        response = self.token(
            {"grant_type": "client_credentials"},
            basic(client["client_id"], client["client_secret"]),
        )
        self.assertEqual(response.code, 503)
        self.assertEqual(response.json()["error"], "temporarily_unavailable")


class SigningAlgorithmTests(ServerTestCase):
    signing_alg = "ES256"

    def test_signs_with_configured_algorithm(self) -> None:
        client = self.register(scope="read")
        access_token = self.token(
            {"grant_type": "client_credentials"},
            basic(client["client_id"], client["client_secret"]),
        ).json()["access_token"]
        self.assertEqual(jwt.get_unverified_header(access_token)["alg"], self.signing_alg)
        self.assertEqual(self.verify(access_token)["scope"], "read")


class PS256Tests(SigningAlgorithmTests):
    signing_alg = "PS256"


class EdDSATests(SigningAlgorithmTests):
    signing_alg = "EdDSA"
