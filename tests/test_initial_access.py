"""
Initial access tokens (RFC 7591 §3) at C{POST /client-reg}: a client
registered within the token's limits, while it has uses left and has
neither expired nor been revoked; what the audit trail says of it; what the
client so registered may change of itself; the master token's full power;
and the brute-force limits, which count a wrong bearer token against the
initial access tokens and the master token, apart from the master token's
other routes.
"""

from __future__ import annotations

from typing import Any

from ccserver import credentials
from ccserver.model import TOKEN_EXCHANGE, InitialAccessToken
from ccserver.oauth.registration import new_initial_access_token
from tests.helpers import (
    MASTER_TOKEN,
    AuditEvents,
    Response,
    ServerTestCase,
    basic,
)
from tests.test_federation import ACCOUNT, CLUSTER, FederationTestCase
from tests.test_store_contract import make_client

API = "https://api.example/payments"


class InitialAccessTokenTests(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.audit = AuditEvents(self)

    def make(self, **options: Any) -> tuple[str, InitialAccessToken]:
        """
        An initial access token in the store, as C{ccserver
        registration-tokens create} makes one: 10 uses, a day.
        """
        options.setdefault("expires_in", 86400)
        options.setdefault("max_uses", 10)
        token, record = new_initial_access_token(int(self.clock.seconds()), **options)
        self.successResultOf(self.store.add_initial_access_token(record))
        return token, record

    def register_with(self, token: str, **metadata: Any) -> Response:
        return self.request(
            "POST",
            "/client-reg",
            headers={"Authorization": f"Bearer {token}"},
            json_body=metadata,
        )

    def stored(self, record: InitialAccessToken) -> InitialAccessToken:
        found = self.successResultOf(self.store.get_initial_access_token(record.token_digest))
        assert found is not None
        return found

    def test_registers_within_its_limits(self) -> None:
        token, record = self.make(
            scope_limit=["read", "write"],
            audience_limit=[API],
            auth_method_limit=["client_secret_basic", "private_key_jwt"],
            grant_type_limit=["client_credentials"],
            note="payments team",
        )
        response = self.register_with(
            token, client_name="payments", scope="read", audience=[API],
            token_endpoint_auth_method="client_secret_basic",
        )
        self.assertEqual(response.code, 201, response.body)
        client = response.json()
        self.assertEqual(client["scope"], "read")
        self.assertEqual(self.stored(record).uses, 1)
        # the client works like any other
        issued = self.token(
            {"grant_type": "client_credentials"}, basic(client["client_id"], client["client_secret"])
        )
        self.assertEqual(issued.code, 200, issued.body)

    def test_no_limits(self) -> None:
        token, _ = self.make()
        response = self.register_with(token, scope="anything at all")
        self.assertEqual(response.code, 201, response.body)

    def test_beyond_its_limits(self) -> None:
        """
        Each limit refuses with invalid_client_metadata naming the field,
        what is beyond it, and what it allows; nothing is registered and
        no use is counted.
        """
        token, record = self.make(
            scope_limit=["read", "write"],
            audience_limit=[API],
            auth_method_limit=["private_key_jwt", "client_secret_basic"],
            grant_type_limit=["client_credentials"],
        )
        cases = [
            ({"scope": "read admin"}, "scope: admin beyond"),
            ({"audience": ["https://api.example/other"]}, "audience: https://api.example/other"),
            (
                {"resource_server_uris": ["https://api.example/other"]},
                "resource_server_uris: https://api.example/other",
            ),
            (
                {"token_endpoint_auth_method": "client_secret_post"},
                "token_endpoint_auth_method: client_secret_post beyond",
            ),
        ]
        for metadata, description in cases:
            response = self.register_with(token, **metadata)
            self.assertEqual(response.code, 400, response.body)
            self.assertEqual(response.json()["error"], "invalid_client_metadata")
            self.assertIn(description, response.json()["error_description"])
        self.assertIn("(read, write)", self.register_with(token, scope="x").json()["error_description"])
        self.assertEqual(self.stored(record).uses, 0)
        self.assertEqual(self.successResultOf(self.store.list_clients("", 10))[0], [])

    def test_grant_type_limit(self) -> None:
        token, _ = self.make(grant_type_limit=[])
        response = self.register_with(token)
        self.assertEqual(response.code, 400, response.body)
        self.assertIn(
            "grant_types: client_credentials beyond what this initial access token allows (none)",
            response.json()["error_description"],
        )

    def test_grant_type_plugins_within_limits(self) -> None:
        """
        The grant types of plugins (token exchange among the built-in
        ones) are limited as client credentials is.
        """
        token, _ = self.make(grant_type_limit=[TOKEN_EXCHANGE])
        response = self.register_with(token, grant_types=[TOKEN_EXCHANGE])
        self.assertEqual(response.code, 201, response.body)
        self.assertEqual(response.json()["grant_types"], [TOKEN_EXCHANGE])
        response = self.register_with(token, grant_types=[TOKEN_EXCHANGE, "client_credentials"])
        self.assertEqual(response.code, 400, response.body)
        self.assertIn(
            f"grant_types: client_credentials beyond what this initial access token allows "
            f"({TOKEN_EXCHANGE})",
            response.json()["error_description"],
        )

    def test_used_up(self) -> None:
        token, record = self.make(max_uses=2)
        for _ in range(2):
            self.assertEqual(self.register_with(token).code, 201)
        response = self.register_with(token)
        self.assertEqual(response.code, 401)
        self.assertEqual(response.json()["error"], "invalid_token")
        self.assertIn("registered as many clients as it may", response.json()["error_description"])
        self.assertEqual(response.headers["www-authenticate"], 'Bearer realm="ccserver", error="invalid_token"')
        self.assertEqual(self.stored(record).uses, 2)

    def test_expired(self) -> None:
        token, _ = self.make(expires_in=60)
        self.clock.advance(60)
        response = self.register_with(token)
        self.assertEqual(response.code, 401)
        self.assertIn("has expired", response.json()["error_description"])

    def test_revoked(self) -> None:
        token, record = self.make()
        self.successResultOf(
            self.store.revoke_initial_access_token(record.token_id, int(self.clock.seconds()))
        )
        response = self.register_with(token)
        self.assertEqual(response.code, 401)
        self.assertIn("has been revoked", response.json()["error_description"])

    def test_unknown_token(self) -> None:
        response = self.register_with(credentials.new_secret())
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.json()["error_description"], "the bearer token is not valid for registration"
        )

    def test_a_stranger_learns_nothing_of_the_body(self) -> None:
        token, _ = self.make(max_uses=1)
        self.register_with(token)
        response = self.request(
            "POST", "/client-reg", headers={"Authorization": f"Bearer {token}"},
            data=b"{not json",
        )
        self.assertEqual(response.code, 401)

    def test_master_token_keeps_full_power(self) -> None:
        """
        The master token registers beyond any initial access token's
        limits.
        """
        self.make(scope_limit=["read"])
        client = self.register(scope="admin", audience=["https://elsewhere.example"])
        self.assertEqual(client["scope"], "admin")

    def test_client_cannot_change_privileged_fields(self) -> None:
        """
        A client registered with an initial access token gets a
        registration access token like any other: it cannot widen its
        privileged fields (past the token's limits or not); the master
        token can.
        """
        token, _ = self.make(scope_limit=["read", "write"])
        client = self.register_with(token, scope="read").json()
        uri = f"/client-reg/{client['client_id']}"
        own = {"Authorization": f"Bearer {client['registration_access_token']}"}
        body = {"client_id": client["client_id"], "scope": "read write"}
        refused = self.request("PUT", uri, headers=own, json_body=body)
        self.assertEqual(refused.code, 400, refused.body)
        self.assertIn("scope: only the master token", refused.json()["error_description"])
        master = {"Authorization": f"Bearer {MASTER_TOKEN}"}
        changed = self.request("PUT", uri, headers=master, json_body={**body, "scope": "admin"})
        self.assertEqual(changed.code, 200, changed.body)
        self.assertEqual(changed.json()["scope"], "admin")

    def test_audit_trail_names_it(self) -> None:
        token, record = self.make(max_uses=3, scope_limit=["read"])
        client = self.register_with(token, scope="read", client_name="payments").json()
        registered = self.audit.one("client.registered")
        actor = {"type": "initial_access_token", "id": record.token_id}
        self.assertEqual(registered["actor"], actor)
        self.assertEqual(registered["client_id"], client["client_id"])
        self.assertEqual(registered["privileged"]["scope"], "read")
        used = self.audit.one("initial_access_token.used")
        self.assertEqual(
            {k: used[k] for k in ("actor", "initial_access_token_id", "client_id", "uses", "max_uses")},
            {
                "actor": actor,
                "initial_access_token_id": record.token_id,
                "client_id": client["client_id"],
                "uses": 1,
                "max_uses": 3,
            },
        )
        self.register_with(token, scope="admin")
        refused = self.audit.one("registration.refused")
        self.assertEqual(refused["actor"], actor)
        self.assertEqual(refused["error"], "invalid_client_metadata")
        self.assertEqual(refused["initial_access_token_id"], record.token_id)

    def test_audit_trail_says_why_it_no_longer_registers(self) -> None:
        token, record = self.make(max_uses=1, expires_in=60)
        self.register_with(token)
        self.register_with(token)
        self.clock.advance(60)
        self.register_with(token)
        reasons = [e["reason"] for e in self.audit.of("registration.refused")]
        self.assertEqual(reasons, ["used_up", "expired"])
        for event in self.audit.of("registration.refused"):
            self.assertEqual(event["initial_access_token_id"], record.token_id)
            self.assertEqual(event["status"], 401)

    def test_race_lost_after_the_check(self) -> None:
        """
        A token found usable, then used up by another process before this
        registration counts its use: 401, nothing registered.
        """
        token, record = self.make(max_uses=1)
        real = self.store.register_with_initial_access_token

        def raced(*args: Any) -> Any:
            # another process's registration, first
            self.successResultOf(
                real(record.token_digest, make_client("taken-meanwhile"), int(self.clock.seconds()))
            )
            return real(*args)

        self.patch(self.store, "register_with_initial_access_token", raced)
        response = self.register_with(token)
        self.assertEqual(response.code, 401, response.body)
        self.assertIn("registered as many clients", response.json()["error_description"])
        self.assertEqual(self.audit.one("registration.refused")["reason"], "used_up")


class InitialAccessTokenLimitsTests(ServerTestCase):
    """
    The brute-force limits at C{POST /client-reg}: a wrong bearer token
    counts against the initial access tokens' budget (and the master
    token's) from its source; the master token's budget spent elsewhere
    does not stop a real initial access token.
    """

    def setUp(self) -> None:
        super().setUp()
        token, record = new_initial_access_token(
            int(self.clock.seconds()), expires_in=3600, max_uses=10
        )
        self.successResultOf(self.store.add_initial_access_token(record))
        self.token_value = token

    def bearer(self, token: str, path: str = "/client-reg") -> int:
        return self.request(
            "POST", path, headers={"Authorization": f"Bearer {token}"}, json_body={}
        ).code

    def test_wrong_tokens_counted(self) -> None:
        budget = self.config.limits.failed_auth_per_minute
        codes = [self.bearer(f"wrong-{n}") for n in range(budget + 2)]
        self.assertEqual(codes, [401] * budget + [429, 429])
        # the real token, from the same address, is refused unchecked
        self.assertEqual(self.bearer(self.token_value), 429)
        self.clock.advance(61)
        self.assertEqual(self.bearer(self.token_value), 201)

    def test_counted_apart_from_the_master_tokens_other_routes(self) -> None:
        """
        Wrong master tokens at the rotation endpoint spend the master
        token's budget, not the initial access tokens'.
        """
        client = self.register()
        budget = self.config.limits.failed_auth_per_minute
        rotate = f"/client-reg/{client['client_id']}/rotate-secret"
        codes = [self.bearer(f"wrong-{n}", rotate) for n in range(budget + 1)]
        self.assertEqual(codes[-1], 429)
        self.assertEqual(self.bearer(self.token_value), 201)


class WorkloadBindingTests(FederationTestCase):
    """
    On a server that trusts issuers of workload tokens: an initial access
    token registers no client bound to a workload identity (no limit of it
    says which workloads its holder may speak for, and a binding, once
    made, is that workload's); the master token does.
    """

    def test_binding_refused(self) -> None:
        token, record = new_initial_access_token(
            int(self.clock.seconds()), expires_in=3600, max_uses=5
        )
        self.successResultOf(self.store.add_initial_access_token(record))
        audit = AuditEvents(self)
        identity = {"issuer": CLUSTER, "subject": ACCOUNT}
        response = self.request(
            "POST",
            "/client-reg",
            headers={"Authorization": f"Bearer {token}"},
            json_body={"scope": "read", "federated_identities": [identity]},
        )
        self.assertEqual(response.code, 400, response.body)
        self.assertEqual(response.json()["error"], "invalid_client_metadata")
        self.assertIn(
            "federated_identities: an initial access token does not bind clients to workload "
            "identities",
            response.json()["error_description"],
        )
        refused = audit.one("registration.refused")
        self.assertEqual(
            (refused["actor"], refused["error"]),
            ({"type": "initial_access_token", "id": record.token_id}, "invalid_client_metadata"),
        )
        stored = self.successResultOf(self.store.get_initial_access_token(record.token_digest))
        assert stored is not None
        self.assertEqual(stored.uses, 0)
        self.assertEqual(self.successResultOf(self.store.clients_bound_to(CLUSTER, ACCOUNT)), [])
        # the workload is free for the operator to bind
        client = self.bind(identity)
        self.assertEqual(
            self.successResultOf(self.store.clients_bound_to(CLUSTER, ACCOUNT)), [client["client_id"]]
        )
