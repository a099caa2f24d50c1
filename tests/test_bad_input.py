"""
Bad input of any shape gets a 4xx OAuth error, never a 500: generated
bodies, headers and metadata against the real app in memory.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import MASTER_TOKEN, ServerTestCase, basic

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
metadata_names = st.sampled_from(
    [
        "client_name", "scope", "grant_types", "response_types", "token_endpoint_auth_method",
        "client_uri", "logo_uri", "contacts", "jwks", "jwks_uri", "redirect_uris", "audience",
        "access_token_lifetime", "resource_server_uris", "software_id", "client_id",
        "client_secret", "application_type", "client_name#en", "software_statement",
    ]
)
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class BadInputTests(ServerTestCase):
    def assert_oauth_error_or_success(self, response: Any, *ok: int) -> None:
        self.assertLess(response.code, 500, response.body)
        if response.code not in ok:
            self.assertGreaterEqual(response.code, 400, response.body)
            body = response.json()
            self.assertIsInstance(body["error"], str)
            self.assertIsInstance(body["error_description"], str)

    @SETTINGS
    @given(st.dictionaries(metadata_names, json_values, max_size=6))
    def test_registration_metadata(self, metadata: dict[str, Any]) -> None:
        response = self.request(
            "POST", "/client-reg", headers={"Authorization": f"Bearer {MASTER_TOKEN}"}, json_body=metadata
        )
        self.assert_oauth_error_or_success(response, 201)

    @SETTINGS
    @given(st.binary(max_size=200), st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""]))
    def test_registration_raw_body(self, body: bytes, content_type: str) -> None:
        response = self.request(
            "POST",
            "/client-reg",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}", "Content-Type": content_type},
            data=body,
        )
        self.assert_oauth_error_or_success(response, 201)

    @SETTINGS
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["grant_type", "scope", "client_id", "client_secret", "resource", "x"]),
                st.text(max_size=30),
            ),
            max_size=6,
        ),
        st.one_of(st.none(), st.text(max_size=60), st.builds(basic, st.text(max_size=20), st.text(max_size=20))),
    )
    def test_token_form(self, pairs: list[tuple[str, str]], authorization: str | None) -> None:
        from urllib.parse import urlencode

        if authorization is not None and not authorization.isascii():
            authorization = None
        if authorization is not None and any(c in authorization for c in "\r\n\x00"):
            authorization = None
        response = self.token(urlencode(pairs).encode(), authorization)
        self.assert_oauth_error_or_success(response, 200)

    @SETTINGS
    @given(st.binary(max_size=200))
    def test_token_raw_body(self, body: bytes) -> None:
        response = self.token(body, basic("someone", "secret"))
        self.assert_oauth_error_or_success(response)

    @SETTINGS
    @given(st.dictionaries(metadata_names, json_values, max_size=6))
    def test_replace_metadata(self, metadata: dict[str, Any]) -> None:
        client = self.register(scope="read")
        response = self.request(
            "PUT",
            f"/client-reg/{client['client_id']}",
            headers={"Authorization": f"Bearer {client['registration_access_token']}"},
            json_body=dict(metadata, client_id=client["client_id"]),
        )
        self.assert_oauth_error_or_success(response, 200)
        # The stored client is the old one or the new one, whole.
        stored = self.request(
            "GET",
            f"/client-reg/{client['client_id']}",
            headers={"Authorization": f"Bearer {client['registration_access_token']}"},
        )
        self.assertEqual(stored.code, 200)
        json.dumps(stored.json())

    @SETTINGS
    @given(st.text(max_size=300))
    def test_introspect_any_token(self, token: str) -> None:
        client = self.register(scope="read")
        from urllib.parse import urlencode

        response = self.request(
            "POST",
            "/token/introspect",
            headers={
                "Authorization": basic(client["client_id"], client["client_secret"]),
                "Content-Type": "application/x-www-form-urlencoded",
            },
            data=urlencode({"token": token}).encode(),
        )
        self.assert_oauth_error_or_success(response, 200)
        if response.code == 200 and token.strip():
            self.assertEqual(response.json(), {"active": False})
