"""
Client registration (RFC 7591) and client configuration (RFC 7592).
"""

from __future__ import annotations

from typing import Any

import attrs

from ccserver import credentials
from ccserver.oauth.registration import NO_SUCH_CLIENT
from tests.helpers import ISSUER, MASTER_TOKEN, ServerTestCase, assert_not_echoed, basic

MASTER = {"Authorization": f"Bearer {MASTER_TOKEN}"}

#: A public EC P-256 key (RFC 7517 appendix A.1).
EC_JWK = {
    "kty": "EC",
    "crv": "P-256",
    "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
    "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
    "kid": "2",
}


class RegistrationTests(ServerTestCase):
    def post(self, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None):  # type: ignore[no-untyped-def]
        if raw is not None:
            return self.request(
                "POST", "/client-reg", headers={**MASTER, **(headers or {})}, data=raw
            )
        return self.request(
            "POST", "/client-reg", headers=dict(MASTER) if headers is None else headers, json_body=body
        )

    def assert_metadata_error(self, response, field: str, error: str = "invalid_client_metadata") -> None:  # type: ignore[no-untyped-def]
        self.assertEqual(response.code, 400, response.body)
        self.assertEqual(response.json()["error"], error)
        self.assertIn(field, response.json()["error_description"])

    def test_register(self) -> None:
        """
        The seed's request gets 201 with everything the seed shows.
        """
        response = self.post({"client_name": "My House App", "scope": "read write"})
        self.assertEqual(response.code, 201)
        self.assertEqual(response.headers["cache-control"], "no-store")
        self.assertEqual(response.headers["pragma"], "no-cache")
        body = response.json()
        client_id = body["client_id"]
        self.assertEqual(body["client_name"], "My House App")
        self.assertEqual(body["scope"], "read write")
        self.assertEqual(body["grant_types"], ["client_credentials"])
        self.assertEqual(body["response_types"], [])
        self.assertEqual(body["token_endpoint_auth_method"], "client_secret_basic")
        self.assertEqual(body["application_type"], "web")
        self.assertEqual(body["client_secret_expires_at"], 0)
        self.assertEqual(body["client_id_issued_at"], int(self.clock.seconds()))
        self.assertEqual(body["registration_client_uri"], f"{ISSUER}/client-reg/{client_id}")
        self.assertEqual(response.headers["location"], body["registration_client_uri"])
        # 256 random bits, URL-safe base64: 43 characters.
        self.assertGreaterEqual(len(body["client_secret"]), 43)
        self.assertGreaterEqual(len(body["registration_access_token"]), 43)

    def test_secrets_differ(self) -> None:
        a, b = self.register(), self.register()
        self.assertNotEqual(a["client_id"], b["client_id"])
        self.assertNotEqual(a["client_secret"], b["client_secret"])
        self.assertNotEqual(a["client_secret"], a["registration_access_token"])

    def test_only_digests_are_stored(self) -> None:
        body = self.register(scope="read")
        client = self.successResultOf(self.store.get_client(body["client_id"]))
        self.assertEqual(client.client_secret_digest, credentials.digest(body["client_secret"]))
        self.assertEqual(
            client.registration_access_token_digest,
            credentials.digest(body["registration_access_token"]),
        )
        stored = repr(client) + repr(dict(client.metadata))
        self.assertNotIn(body["client_secret"], stored)
        self.assertNotIn(body["registration_access_token"], stored)
        self.assertNotIn(client.client_secret_digest, repr(client))

    def test_rfc7591_fields_echoed(self) -> None:
        metadata = {
            "client_name": "My House App",
            "client_name#fr": "Mon appli maison",
            "client_uri": "https://house.example.com",
            "logo_uri": "https://house.example.com/logo.png",
            "tos_uri": "https://house.example.com/tos",
            "policy_uri": "https://house.example.com/policy",
            "contacts": ["ops@example.com"],
            "software_id": "4NRB1-0XZABZI9E6-5SM3R",
            "software_version": "2.1",
            "jwks_uri": "https://house.example.com/jwks.json",
        }
        body = self.register(**metadata)
        for name, value in metadata.items():
            self.assertEqual(body[name], value, name)

    def test_unknown_metadata_ignored(self) -> None:
        """
        RFC 7591 §2: the server ignores metadata it does not understand.
        """
        body = self.register(scope="read", frobnicate=True)
        self.assertNotIn("frobnicate", body)

    def test_client_chosen_id_and_secret_ignored(self) -> None:
        body = self.register(client_id="mine", client_secret="chosen-secret")
        self.assertNotEqual(body["client_id"], "mine")
        self.assertNotEqual(body["client_secret"], "chosen-secret")

    def test_client_secret_post_method(self) -> None:
        body = self.register(token_endpoint_auth_method="client_secret_post")
        self.assertEqual(body["token_endpoint_auth_method"], "client_secret_post")

    def test_no_token(self) -> None:
        response = self.post({"client_name": "x"}, headers={})
        self.assertEqual(response.code, 401)
        self.assertTrue(response.headers["www-authenticate"].startswith("Bearer "))
        self.assertEqual(response.json()["error"], "invalid_token")

    def test_wrong_token(self) -> None:
        for header in ("Bearer wrong", "Basic abc", "Bearer"):
            response = self.post({"client_name": "x"}, headers={"Authorization": header})
            self.assertEqual(response.code, 401)
            self.assertTrue(response.headers["www-authenticate"].startswith("Bearer "))

    def test_unauthorised_caller_learns_nothing_of_the_body(self) -> None:
        response = self.request(
            "POST", "/client-reg", headers={"Content-Type": "application/json"}, data=b"{"
        )
        self.assertEqual(response.code, 401)

    def test_malformed_json(self) -> None:
        response = self.post(None, raw=b'{"client_name": ', headers={"Content-Type": "application/json"})
        self.assert_metadata_error(response, "JSON")

    def test_duplicate_member(self) -> None:
        response = self.post(
            None, raw=b'{"scope": "a", "scope": "b"}', headers={"Content-Type": "application/json"}
        )
        self.assert_metadata_error(response, "scope")

    def test_not_an_object(self) -> None:
        for body in ([], "x", 1, None):
            self.assert_metadata_error(self.post(None, raw=__import__("json").dumps(body).encode(), headers={"Content-Type": "application/json"}), "object")

    def test_non_json_body(self) -> None:
        response = self.post(
            None, raw=b"client_name=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        self.assert_metadata_error(response, "application/json", error="invalid_request")

    def test_wrong_types(self) -> None:
        for field, value in [
            ("scope", 1),
            ("client_name", ["x"]),
            ("grant_types", "client_credentials"),
            ("response_types", [1]),
            ("contacts", "ops@example.com"),
            ("token_endpoint_auth_method", 3),
            ("client_uri", "not a uri"),
            ("redirect_uris", ["relative/path"]),
            ("jwks", "x"),
        ]:
            self.assert_metadata_error(self.post({field: value}), field)

    def test_bad_scope(self) -> None:
        for scope in ("", "a  b", 'a "b"', " a"):
            self.assert_metadata_error(self.post({"scope": scope}), "scope")

    def test_unknown_auth_method(self) -> None:
        for method in ("none", "tls_client_auth_san_dns", "client_secret"):
            self.assert_metadata_error(
                self.post({"token_endpoint_auth_method": method}), "token_endpoint_auth_method"
            )

    def test_grant_type_not_issued(self) -> None:
        for grant_type in ("authorization_code", "password", "refresh_token"):
            self.assert_metadata_error(
                self.post({"grant_types": ["client_credentials", grant_type]}), "grant_types"
            )

    def test_response_types(self) -> None:
        self.assert_metadata_error(self.post({"response_types": ["code"]}), "response_types")

    def test_software_statement(self) -> None:
        response = self.post({"software_statement": "eyJ..."})
        self.assertEqual(response.code, 400)
        self.assertEqual(response.json()["error"], "invalid_software_statement")

    def test_method_not_allowed(self) -> None:
        response = self.request("GET", "/client-reg", headers=MASTER)
        self.assertEqual(response.code, 405)


#: The registration of a client of each method that proves itself without
#: a secret.
KEY_AND_CERTIFICATE_CLIENTS = {
    "private_key_jwt": {"jwks": {"keys": [EC_JWK]}},
    "tls_client_auth": {"tls_client_auth_subject_dn": "CN=client-one,O=Example,C=GB"},
    "self_signed_tls_client_auth": {"jwks_uri": "https://app.example.com/certs.json"},
}


class NoSecretTests(ServerTestCase):
    """
    A client that proves itself with its keys or its certificate gets no
    client secret: none in its registration answer, none stored, none to
    rotate.
    """

    def make_config(self, **tokens: Any) -> Any:
        from ccserver.config import MTLSConfig, TLSConfig

        config = super().make_config(**tokens)
        return attrs.evolve(
            config,
            tls=TLSConfig(base_url="https://mtls.example"),
            mtls=MTLSConfig(proxy_header="X-Client-Cert", trusted_proxies=("127.0.0.1",)),
        )

    def test_no_secret_given_or_stored(self) -> None:
        for method, metadata in KEY_AND_CERTIFICATE_CLIENTS.items():
            body = self.register(token_endpoint_auth_method=method, scope="read", **metadata)
            self.assertNotIn("client_secret", body, method)
            self.assertNotIn("client_secret_expires_at", body, method)
            self.assertIn("registration_access_token", body)
            client = self.successResultOf(self.store.get_client(body["client_id"]))
            self.assertEqual(client.client_secret_digest, "", method)
            self.assertIsNone(client.encrypted_secret, method)
            read = self.request("GET", f"/client-reg/{body['client_id']}", headers=MASTER)
            self.assertNotIn("client_secret_expires_at", read.json(), method)

    def test_secret_methods_get_one(self) -> None:
        for method in ("client_secret_basic", "client_secret_post", "client_secret_jwt"):
            body = self.register(token_endpoint_auth_method=method)
            self.assertTrue(body["client_secret"], method)
            self.assertEqual(body["client_secret_expires_at"], 0, method)

    def test_rotate_secret_refused(self) -> None:
        for method, metadata in KEY_AND_CERTIFICATE_CLIENTS.items():
            client_id = self.register(token_endpoint_auth_method=method, **metadata)["client_id"]
            response = self.request("POST", f"/client-reg/{client_id}/rotate-secret", headers=MASTER)
            self.assertEqual(response.code, 400, method)
            self.assertEqual(response.json()["error"], "invalid_request")
            self.assertIn(
                f"authenticates with {method} and has no client secret to rotate",
                response.json()["error_description"],
            )
            client = self.successResultOf(self.store.get_client(client_id))
            self.assertEqual(client.client_secret_digest, "", method)

    def test_operator_change_to_a_certificate_drops_the_secret(self) -> None:
        """
        A secret client the operator moves to tls_client_auth keeps no
        secret: the old one would otherwise be a credential nobody uses.
        """
        client = self.register(scope="read")
        response = self.request(
            "PUT",
            f"/client-reg/{client['client_id']}",
            headers=MASTER,
            json_body={
                "client_id": client["client_id"],
                "scope": "read",
                "token_endpoint_auth_method": "tls_client_auth",
                **KEY_AND_CERTIFICATE_CLIENTS["tls_client_auth"],
            },
        )
        self.assertEqual(response.code, 200, response.body)
        self.assertNotIn("client_secret_expires_at", response.json())
        stored = self.successResultOf(self.store.get_client(client["client_id"]))
        self.assertEqual(stored.client_secret_digest, "")


class NamedMethodTests(ServerTestCase):
    """
    Whether a registration named its token_endpoint_auth_method: one that
    did not may present its secret either way, one that did is held to
    its method; an operator's replacement says again, a client's own keeps it.
    """

    def post_secret(self, client_id: str, secret: str) -> int:
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
        return int(self.token(form).code)

    def put(self, client_id: str, headers: dict[str, str], **metadata: Any) -> None:
        response = self.request(
            "PUT",
            f"/client-reg/{client_id}",
            headers=headers,
            json_body={"client_id": client_id, "scope": "read", **metadata},
        )
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["token_endpoint_auth_method"], "client_secret_basic")

    def test_recorded(self) -> None:
        unnamed = self.register(scope="read")
        named = self.register(scope="read", token_endpoint_auth_method="client_secret_basic")
        for body, expected in ((unnamed, False), (named, True)):
            self.assertEqual(body["token_endpoint_auth_method"], "client_secret_basic")
            stored = self.successResultOf(self.store.get_client(body["client_id"]))
            self.assertIs(stored.auth_method_named, expected)
        self.assertEqual(self.post_secret(unnamed["client_id"], unnamed["client_secret"]), 200)
        self.assertEqual(self.post_secret(named["client_id"], named["client_secret"]), 401)

    def test_operator_replacement_says_again(self) -> None:
        client = self.register(scope="read")
        client_id, secret = client["client_id"], client["client_secret"]
        self.put(client_id, MASTER, token_endpoint_auth_method="client_secret_basic")
        self.assertEqual(self.post_secret(client_id, secret), 401)
        self.put(client_id, MASTER)
        self.assertEqual(self.post_secret(client_id, secret), 200)

    def test_clients_own_replacement_keeps_it(self) -> None:
        for named in (False, True):
            method = {"token_endpoint_auth_method": "client_secret_basic"} if named else {}
            client = self.register(scope="read", **method)
            client_id, secret = client["client_id"], client["client_secret"]
            own = {"Authorization": f"Bearer {client['registration_access_token']}"}
            # the opposite of what it registered, both ways
            self.put(client_id, own, **({} if named else {"token_endpoint_auth_method": "client_secret_basic"}))
            self.assertEqual(self.post_secret(client_id, secret), 401 if named else 200)


class ConfigurationTests(ServerTestCase):
    """
    RFC 7592: reading, replacing and deleting a registration with its
    registration access token.
    """

    def setUp(self) -> None:
        super().setUp()
        self.client = self.register(client_name="My House App", scope="read")
        self.path = f"/client-reg/{self.client['client_id']}"
        self.rat = {"Authorization": f"Bearer {self.client['registration_access_token']}"}

    def test_read(self) -> None:
        response = self.request("GET", self.path, headers=self.rat)
        self.assertEqual(response.code, 200)
        body = response.json()
        self.assertEqual(body["client_id"], self.client["client_id"])
        self.assertEqual(body["client_name"], "My House App")
        self.assertEqual(body["scope"], "read")
        self.assertEqual(body["registration_client_uri"], self.client["registration_client_uri"])
        self.assertNotIn("client_secret", body)
        self.assertNotIn("registration_access_token", body)
        self.assertEqual(response.headers["cache-control"], "no-store")

    def test_master_token_also_manages(self) -> None:
        response = self.request("GET", self.path, headers=MASTER)
        self.assertEqual(response.code, 200)

    def test_no_or_wrong_token(self) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            for method in ("GET", "PUT", "DELETE"):
                response = self.request(method, self.path, headers=headers, json_body={} if method == "PUT" else None)
                self.assertEqual(response.code, 401, (method, headers))
                self.assertIn("Bearer", response.headers["www-authenticate"])

    def test_other_clients_token(self) -> None:
        other = self.register(client_name="Other")
        headers = {"Authorization": f"Bearer {other['registration_access_token']}"}
        self.assertEqual(self.request("GET", self.path, headers=headers).code, 401)
        body = {"client_id": self.client["client_id"], "scope": "read write"}
        self.assertEqual(self.request("PUT", self.path, headers=headers, json_body=body).code, 401)
        self.assertEqual(self.request("DELETE", self.path, headers=headers).code, 401)
        self.assertEqual(self.request("GET", self.path, headers=self.rat).json()["scope"], "read")

    def test_unknown_client(self) -> None:
        response = self.request("GET", "/client-reg/nobody", headers=self.rat)
        self.assertEqual(response.code, 401)

    def test_replace(self) -> None:
        """
        The seed's update, an operator action: with the master token, add
        the client_credentials grant to a client that had none, and widen
        its scope; the new metadata replaces the old, whole.
        """
        client = self.register(client_name="Old", scope="read", grant_types=[])
        auth = basic(client["client_id"], client["client_secret"])
        self.assertEqual(self.token({"grant_type": "client_credentials"}, auth).json()["error"], "unauthorized_client")
        response = self.request(
            "PUT",
            f"/client-reg/{client['client_id']}",
            headers=MASTER,
            json_body={
                "client_id": client["client_id"],
                "client_name": "New",
                "scope": "read write",
                "grant_types": ["client_credentials"],
            },
        )
        self.assertEqual(response.code, 200, response.body)
        body = response.json()
        self.assertEqual(body["client_name"], "New")
        self.assertEqual(body["scope"], "read write")
        self.assertEqual(body["grant_types"], ["client_credentials"])
        self.assertEqual(body["client_id_issued_at"], client["client_id_issued_at"])
        token = self.token({"grant_type": "client_credentials"}, auth)
        self.assertEqual(token.code, 200, token.body)
        self.assertEqual(token.json()["scope"], "read write")
        read = self.request("GET", f"/client-reg/{client['client_id']}", headers={"Authorization": f"Bearer {client['registration_access_token']}"})
        self.assertEqual(read.json()["client_name"], "New")

    def test_seed_update_with_own_token_refused(self) -> None:
        """
        The same update with the client's own registration access token is
        a client granting itself a grant type and scope: refused, naming
        both fields, and nothing changes.
        """
        client = self.register(client_name="Old", scope="read", grant_types=[])
        path = f"/client-reg/{client['client_id']}"
        own = {"Authorization": f"Bearer {client['registration_access_token']}"}
        body = {"client_id": client["client_id"], "client_name": "New", "scope": "read write", "grant_types": ["client_credentials"]}
        response = self.request("PUT", path, headers=own, json_body=body)
        self.assert_metadata_error(response, "scope")
        self.assertIn("grant_types", response.json()["error_description"])
        self.assertIn("master token", response.json()["error_description"])
        read = self.request("GET", path, headers=own).json()
        self.assertEqual((read["client_name"], read["scope"], read["grant_types"]), ("Old", "read", []))

    def test_replace_drops_omitted_fields(self) -> None:
        """
        RFC 7592 §2.2: a field left out is deleted.  With the master token
        that includes the privileged ones.
        """
        response = self.request(
            "PUT", self.path, headers=MASTER, json_body={"client_id": self.client["client_id"]}
        )
        self.assertEqual(response.code, 200)
        self.assertNotIn("client_name", response.json())
        self.assertNotIn("scope", response.json())

    def test_client_drops_descriptive_fields(self) -> None:
        response = self.request(
            "PUT", self.path, headers=self.rat, json_body={"client_id": self.client["client_id"], "scope": "read"}
        )
        self.assertEqual(response.code, 200, response.body)
        self.assertNotIn("client_name", response.json())
        self.assertEqual(response.json()["scope"], "read")

    def assert_metadata_error(self, response, field: str) -> None:  # type: ignore[no-untyped-def]
        self.assertEqual(response.code, 400, response.body)
        self.assertEqual(response.json()["error"], "invalid_client_metadata")
        self.assertIn(field, response.json()["error_description"])

    def test_replace_client_id_mismatch(self) -> None:
        for body in ({"client_id": "other", "scope": "read"}, {"scope": "read"}):
            response = self.request("PUT", self.path, headers=self.rat, json_body=body)
            self.assertEqual(response.code, 400)
            self.assertEqual(response.json()["error"], "invalid_request")
            self.assertIn("client_id", response.json()["error_description"])

    def test_replace_with_wrong_secret(self) -> None:
        body = {"client_id": self.client["client_id"], "client_secret": "my-own"}
        response = self.request("PUT", self.path, headers=self.rat, json_body=body)
        self.assertEqual(response.code, 400)
        self.assertIn("client_secret", response.json()["error_description"])

    def test_replace_echoing_read_response(self) -> None:
        """
        A client may PUT back what GET gave it, server-set fields included.
        """
        current = self.request("GET", self.path, headers=self.rat).json()
        current["client_name"] = "Renamed"
        current["client_secret"] = self.client["client_secret"]
        response = self.request("PUT", self.path, headers=self.rat, json_body=current)
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["client_name"], "Renamed")
        current["scope"] = "read write"
        response = self.request("PUT", self.path, headers=self.rat, json_body=current)
        self.assert_metadata_error(response, "scope")

    def test_replace_invalid_metadata_keeps_old(self) -> None:
        body = {"client_id": self.client["client_id"], "grant_types": ["password"]}
        response = self.request("PUT", self.path, headers=self.rat, json_body=body)
        self.assertEqual(response.code, 400)
        self.assertEqual(response.json()["error"], "invalid_client_metadata")
        self.assertEqual(self.request("GET", self.path, headers=self.rat).json()["scope"], "read")

    def test_delete(self) -> None:
        response = self.request("DELETE", self.path, headers=self.rat)
        self.assertEqual(response.code, 204)
        self.assertEqual(response.body, b"")
        self.assertEqual(self.request("GET", self.path, headers=self.rat).code, 401)
        self.assertEqual(self.request("DELETE", self.path, headers=self.rat).code, 401)
        self.assertIsNone(self.successResultOf(self.store.get_client(self.client["client_id"])))

    def test_deleted_client_named_to_the_master_token(self) -> None:
        """
        The master token at a deleted (or never registered) client's
        configuration endpoint gets RFC 7592's 401, saying there is no such
        client rather than that its token is wrong; a registration access
        token learns nothing more than before.
        """
        self.assertEqual(self.request("DELETE", self.path, headers=MASTER).code, 204)
        for method, path in (
            ("GET", self.path),
            ("PUT", self.path),
            ("DELETE", self.path),
            ("POST", self.path + "/rotate-secret"),
            ("GET", "/client-reg/never-registered"),
        ):
            body = {"client_id": self.client["client_id"]} if method == "PUT" else None
            response = self.request(method, path, headers=MASTER, json_body=body)
            self.assertEqual(response.code, 401, (method, path))
            self.assertEqual(response.json()["error_description"], NO_SUCH_CLIENT, (method, path))
        response = self.request("GET", self.path, headers=self.rat)
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.json()["error_description"],
            "the registration access token is not valid for this client",
        )

    def test_method_not_allowed(self) -> None:
        response = self.request("POST", self.path, headers=self.rat)
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers["allow"], "GET, PUT, DELETE")


API = "https://api.example.com"
RESOURCE_SERVER = "https://rs.example.com"

#: A client as the operator registered it: every privileged field set.
PRIVILEGED = {
    "scope": "read write",
    "audience": [API, RESOURCE_SERVER],
    "resource_server_uris": [RESOURCE_SERVER],
    "access_token_lifetime": 600,
    "grant_types": ["client_credentials"],
    "token_endpoint_auth_method": "client_secret_basic",
    "dpop_bound_access_tokens": False,
}


class PrivilegeTests(ServerTestCase):
    """
    Issue 9, item 1: a client's registration access token may change its
    descriptive metadata, never what its tokens grant; the master token
    (the operator) may change everything.
    """

    def setUp(self) -> None:
        super().setUp()
        self.client = self.register(client_name="App", **PRIVILEGED)
        self.client_id = self.client["client_id"]
        self.path = f"/client-reg/{self.client_id}"
        self.rat = {"Authorization": f"Bearer {self.client['registration_access_token']}"}
        self.auth = basic(self.client_id, self.client["client_secret"])

    def put(self, headers: dict[str, str], **metadata: Any):  # type: ignore[no-untyped-def]
        return self.request("PUT", self.path, headers=headers, json_body={"client_id": self.client_id, **metadata})

    def registered(self) -> dict[str, Any]:
        return self.request("GET", self.path, headers=MASTER).json()  # type: ignore[no-any-return]

    def assert_refused(self, response, *fields: str) -> None:  # type: ignore[no-untyped-def]
        self.assertEqual(response.code, 400, response.body)
        self.assertEqual(response.json()["error"], "invalid_client_metadata")
        description = response.json()["error_description"]
        for field in fields:
            self.assertIn(field, description)
        self.assertIn("master token", description)

    def test_privileged_fields(self) -> None:
        from ccserver.oauth.mtls import BOUND_TOKENS, SUBJECT_FIELDS
        from ccserver.oauth.registration import PRIVILEGED_FIELDS

        # The RFC 8705 fields: tests/test_mtls.py; federated_identities:
        # tests/test_federation.py.
        self.assertEqual(
            set(PRIVILEGED_FIELDS),
            {*PRIVILEGED, BOUND_TOKENS, *SUBJECT_FIELDS, "federated_identities"},
        )

    def test_the_attack(self) -> None:
        """
        The review's request: wider scope, a new audience, a year-long
        lifetime.  Refused, naming each field; the next token is as before.
        """
        before = self.registered()
        response = self.put(
            self.rat,
            **{**PRIVILEGED, "scope": "read admin superuser", "audience": ["https://payments.internal"], "access_token_lifetime": 31536000},
        )
        self.assert_refused(response, "scope", "audience", "access_token_lifetime")
        self.assertNotIn("resource_server_uris", response.json()["error_description"])
        self.assertEqual(self.registered(), before)
        token = self.token({"grant_type": "client_credentials"}, self.auth)
        self.assertEqual(token.code, 200, token.body)
        self.assertEqual(token.json()["scope"], "read write")
        self.assertEqual(token.json()["expires_in"], 600)
        claims = self.verify(token.json()["access_token"], audience=API)
        self.assertEqual(claims["aud"], [API, RESOURCE_SERVER])

    def test_each_change_refused(self) -> None:
        """
        Any change is refused, narrowing included: the operator owns these.
        """
        changes: list[tuple[str, Any]] = [
            ("scope", "read write admin"),
            ("scope", "read"),
            ("audience", [API, RESOURCE_SERVER, "https://payments.internal"]),
            ("audience", [API]),
            ("resource_server_uris", [ISSUER]),
            ("resource_server_uris", []),
            ("access_token_lifetime", 31536000),
            ("access_token_lifetime", 60),
            ("grant_types", []),
            ("token_endpoint_auth_method", "client_secret_post"),
            ("dpop_bound_access_tokens", True),
        ]
        before = self.registered()
        for field, value in changes:
            response = self.put(self.rat, client_name="App", **{**PRIVILEGED, field: value})
            self.assert_refused(response, field)
            self.assertEqual(self.registered(), before, field)

    def test_leaving_out_a_registered_value_is_a_change(self) -> None:
        """
        RFC 7592 §2.2: a PUT replaces the metadata whole, so a field left out
        goes back to its default; for a field registered with another value
        that is a change, and is refused.
        """
        for field in ("scope", "audience", "resource_server_uris", "access_token_lifetime"):
            metadata = {k: v for k, v in PRIVILEGED.items() if k != field}
            self.assert_refused(self.put(self.rat, **metadata), field)
        self.assert_refused(self.put(self.rat), "scope", "audience", "resource_server_uris", "access_token_lifetime")

    def test_keeping_them_succeeds(self) -> None:
        """
        The same grant written differently is no change: scope values in
        another order or repeated, lists reordered, defaults left out.
        Descriptive metadata and keys (for key rotation) change freely, and
        the privileged fields stay as the operator wrote them.
        """
        response = self.put(
            self.rat,
            client_name="Renamed",
            client_uri="https://app.example.com",
            logo_uri="https://app.example.com/logo.png",
            contacts=["ops@example.com"],
            jwks={"keys": [EC_JWK]},
            scope="write read read",
            audience=[RESOURCE_SERVER, API, API],
            resource_server_uris=[RESOURCE_SERVER],
            access_token_lifetime=600,
        )
        self.assertEqual(response.code, 200, response.body)
        body = self.registered()
        self.assertEqual(body["client_name"], "Renamed")
        self.assertEqual(body["contacts"], ["ops@example.com"])
        self.assertEqual(body["jwks"], {"keys": [EC_JWK]})
        for field, value in PRIVILEGED.items():
            self.assertEqual(body[field], value, field)
        rotated = self.put(self.rat, jwks_uri="https://app.example.com/jwks.json", **PRIVILEGED)
        self.assertEqual(rotated.code, 200, rotated.body)
        self.assertNotIn("jwks", self.registered())

    def test_defaults_left_out_are_kept(self) -> None:
        """
        A client registered with the defaults may leave them out.
        """
        plain = self.register(client_name="Plain", scope="read")
        response = self.request(
            "PUT",
            f"/client-reg/{plain['client_id']}",
            headers={"Authorization": f"Bearer {plain['registration_access_token']}"},
            json_body={"client_id": plain["client_id"], "scope": "read", "client_name": "Plainer"},
        )
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["grant_types"], ["client_credentials"])
        self.assertEqual(response.json()["token_endpoint_auth_method"], "client_secret_basic")

    def test_checked_against_the_stored_record(self) -> None:
        """
        The operator narrows the scope on another instance (straight in the
        store, under this instance's client cache); within the cache's
        lifetime the client PUTs the old scope back: refused, because the
        check reads the stored record.
        """
        self.assertEqual(self.token({"grant_type": "client_credentials"}, self.auth).code, 200)  # cached now
        stored = self.successResultOf(self.store.get_client(self.client_id))
        narrowed = attrs.evolve(stored, metadata={**stored.metadata, "scope": "read"})
        self.assertTrue(self.successResultOf(self.store.replace_client(narrowed)))
        self.assert_refused(self.put(self.rat, client_name="App", **PRIVILEGED), "scope")
        self.assertEqual(self.successResultOf(self.store.get_client(self.client_id)).metadata["scope"], "read")

    def test_master_token_changes_everything(self) -> None:
        response = self.put(
            MASTER,
            scope="read admin",
            audience=["https://payments.internal"],
            resource_server_uris=[ISSUER],
            access_token_lifetime=1200,
            token_endpoint_auth_method="client_secret_post",
        )
        self.assertEqual(response.code, 200, response.body)
        form = {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self.client["client_secret"]}
        token = self.token(form)
        self.assertEqual(token.code, 200, token.body)
        self.assertEqual((set(token.json()["scope"].split()), token.json()["expires_in"]), ({"read", "admin"}, 1200))
        self.assertEqual(self.verify(token.json()["access_token"], "https://payments.internal")["aud"], "https://payments.internal")

    def test_master_token_reads_and_deletes(self) -> None:
        self.assertEqual(self.request("GET", self.path, headers=MASTER).json()["scope"], "read write")
        self.assertEqual(self.request("DELETE", self.path, headers=MASTER).code, 204)
        self.assertEqual(self.request("GET", self.path, headers=self.rat).code, 401)


class BearerNotEchoedTests(ServerTestCase):
    """
    Issue 9, item 7: a malformed bearer header at the registration
    endpoints is answered without repeating the token.
    """

    def test_malformed_bearer_headers(self) -> None:
        client = self.register(client_name="App", scope="read")
        rat = client["registration_access_token"]
        path = f"/client-reg/{client['client_id']}"
        for token in (rat, MASTER_TOKEN):
            headers = [
                token,
                f"Bearer{token}",
                f"Bearer\x0b{token}",
                f"Bearer,{token}",
                f"Bearer {token} {token}",
                f"Basic {token}",
                f"Bearer {token}x",
                f"Bearer\t{token}x",
            ]
            for header in headers:
                # a new minute for each header: the wrong tokens here would
                # otherwise meet the brute-force limit (tests/test_limits.py)
                self.clock.advance(60)
                for method, where in (("GET", path), ("PUT", path), ("DELETE", path), ("POST", "/client-reg")):
                    response = self.request(
                        method, where, headers={"Authorization": header}, json_body={"client_id": client["client_id"]}
                    )
                    self.assertEqual(response.code, 401, (method, header))
                    self.assertEqual(response.json()["error"], "invalid_token")
                    assert_not_echoed(self, response, rat, MASTER_TOKEN, client["client_secret"])

    def test_tab_after_bearer(self) -> None:
        """
        A tab between the scheme and the token is taken for a space, as at
        the token endpoint.
        """
        client = self.register(client_name="App", scope="read")
        path = f"/client-reg/{client['client_id']}"
        response = self.request("GET", path, headers={"Authorization": f"Bearer\t{client['registration_access_token']}"})
        self.assertEqual(response.code, 200, response.body)
        response = self.request("POST", "/client-reg", headers={"Authorization": f"bearer \t{MASTER_TOKEN}\t"}, json_body={})
        self.assertEqual(response.code, 201, response.body)
