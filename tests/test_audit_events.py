"""
What the audit trail hears of each security-relevant action at the HTTP
endpoints (in memory): registration and client configuration, the token
endpoint, revocation and introspection, the brute-force blocks, and the
first signing key; each event with its actor and source.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ccserver import audit
from ccserver.errors import invalid_client
from ccserver.keys import KeyEncryptor, Keyring, audit_key_events
from ccserver.model import IssuedToken
from ccserver.oauth.grants import binding
from ccserver.oauth.limits import AuthLimits
from ccserver.services import StoreService
from ccserver.stores.memory import MemoryStore
from tests.helpers import MASTER_TOKEN, AuditEvents, ServerTestCase, basic
from tests.test_dpop import Key

MASTER = {"Authorization": f"Bearer {MASTER_TOKEN}"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class AuditTestCase(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.audit = AuditEvents(self)

    def fields(self, event: dict[str, Any], *names: str) -> dict[str, Any]:
        return {name: event.get(name) for name in names}

    def form(self, path: str, data: dict[str, str], auth: str | None = None) -> Any:
        from urllib.parse import urlencode

        headers = dict(FORM)
        if auth is not None:
            headers["Authorization"] = auth
        return self.request("POST", path, headers=headers, data=urlencode(data).encode())


class RegistrationEventsTests(AuditTestCase):
    def test_registered_by_the_master_token(self) -> None:
        client = self.register(client_name="billing", scope="read write", audience=["https://api.example"])
        event = self.audit.one("client.registered")
        self.assertEqual(event["actor"], {"type": "master_token"})
        self.assertIn("source", event)
        self.assertEqual(event["client_id"], client["client_id"])
        self.assertEqual(event["client_name"], "billing")
        self.assertEqual(
            event["privileged"],
            {
                "scope": "read write",
                "audience": ["https://api.example"],
                "grant_types": ["client_credentials"],
                "token_endpoint_auth_method": "client_secret_basic",
            },
        )

    def test_read_update_delete_by_its_own_token(self) -> None:
        client = self.register(client_name="billing", scope="read")
        uri = f"/client-reg/{client['client_id']}"
        own = {"Authorization": f"Bearer {client['registration_access_token']}"}
        actor = {"type": "registration_access_token", "client_id": client["client_id"]}
        self.request("GET", uri, headers=own)
        self.assertEqual(self.audit.one("client.read")["actor"], actor)
        body = {"client_id": client["client_id"], "scope": "read", "client_name": "invoices",
                "contacts": ["ops@example.com"]}
        self.assertEqual(self.request("PUT", uri, headers=own, json_body=body).code, 200)
        updated = self.audit.one("client.updated")
        self.assertEqual(updated["actor"], actor)
        self.assertEqual(updated["changed_fields"], ["client_name", "contacts"])
        self.assertEqual(self.request("DELETE", uri, headers=own).code, 204)
        self.assertEqual(self.audit.one("client.deleted")["actor"], actor)
        self.assertEqual(self.audit.one("client.deleted")["client_id"], client["client_id"])

    def test_master_token_manages(self) -> None:
        client = self.register()
        uri = f"/client-reg/{client['client_id']}"
        self.request("GET", uri, headers=MASTER)
        self.assertEqual(self.audit.one("client.read")["actor"], {"type": "master_token"})
        response = self.request("POST", uri + "/rotate-secret", headers=MASTER)
        self.assertEqual(response.code, 200)
        rotated = self.audit.one("client.secret_rotated")
        self.assertEqual(rotated["actor"], {"type": "master_token"})
        self.assertEqual(
            rotated["previous_secret_expires_at"], response.json()["previous_secret_expires_at"]
        )

    def test_refusals(self) -> None:
        client = self.register(scope="read")
        uri = f"/client-reg/{client['client_id']}"
        self.request("GET", uri, headers={"Authorization": "Bearer wrong"})
        refused = self.audit.one("registration.refused")
        self.assertEqual(
            self.fields(refused, "actor", "action", "error", "status", "client_id"),
            {
                "actor": {"type": "unauthenticated"},
                "action": "read",
                "error": "invalid_token",
                "status": 401,
                "client_id": client["client_id"],
            },
        )
        self.audit.clear()
        own = {"Authorization": f"Bearer {client['registration_access_token']}"}
        self.request("PUT", uri, headers=own, json_body={"client_id": client["client_id"], "scope": "admin"})
        refused = self.audit.one("registration.refused")
        self.assertEqual(
            self.fields(refused, "actor", "action", "error", "status"),
            {
                "actor": {"type": "registration_access_token", "client_id": client["client_id"]},
                "action": "update",
                "error": "invalid_client_metadata",
                "status": 400,
            },
        )
        self.audit.clear()
        self.request("POST", "/client-reg", headers={"Authorization": "Bearer nope"}, json_body={})
        self.request("POST", uri + "/rotate-secret", headers={"Authorization": "Bearer nope"})
        self.request("DELETE", "/client-reg/nobody", headers=MASTER)
        self.assertEqual(
            [(e["action"], e["status"]) for e in self.audit.of("registration.refused")],
            [("register", 401), ("rotate_secret", 401), ("delete", 401)],
        )


class TokenEventsTests(AuditTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client = self.register(scope="read write", audience=["https://api.example"])
        self.auth = basic(self.client["client_id"], self.client["client_secret"])

    def test_issued(self) -> None:
        response = self.token({"grant_type": "client_credentials", "scope": "write read"}, self.auth)
        claims = self.verify(response.json()["access_token"], "https://api.example")
        issued = self.audit.one("token.issued")
        self.assertEqual(issued["actor"], {"type": "client", "client_id": self.client["client_id"]})
        self.assertEqual(
            self.fields(
                issued, "client_id", "grant_type", "scope", "audience", "token_id", "token_format",
                "expires_at", "binding", "auth_method",
            ),
            {
                "client_id": self.client["client_id"],
                "grant_type": "client_credentials",
                "scope": frozenset({"read", "write"}),
                "audience": ("https://api.example",),
                "token_id": claims["jti"],
                "token_format": "jwt",
                "expires_at": claims["exp"],
                "binding": "bearer",
                "auth_method": "client_secret_basic",
            },
        )
        self.assertIn("source", issued)

    def test_dpop_bound(self) -> None:
        key = Key()
        response = self.request(
            "POST",
            "/token",
            headers={**FORM, "Authorization": self.auth, "DPoP": key.proof(self.clock.seconds())},
            data=b"grant_type=client_credentials",
        )
        self.assertEqual(response.code, 200, response.body)
        issued = self.audit.one("token.issued")
        self.assertEqual((issued["binding"], issued["jkt"]), ("dpop", key.jkt))

    def test_binding_names(self) -> None:
        token = IssuedToken("t", 1, frozenset())
        from attrs import evolve

        self.assertEqual(
            [
                binding(token),
                binding(evolve(token, jkt="j")),
                binding(evolve(token, x5t_s256="x")),
                binding(evolve(token, jkt="j", x5t_s256="x")),
            ],
            ["bearer", "dpop", "mtls", "dpop+mtls"],
        )

    def test_refused_before_authentication(self) -> None:
        self.token({"grant_type": "client_credentials"}, basic(self.client["client_id"], "wrong"))
        refused = self.audit.one("token.refused")
        self.assertEqual(
            self.fields(refused, "actor", "error", "status", "claimed_client_id", "client_id", "grant_type"),
            {
                "actor": {"type": "unauthenticated"},
                "error": "invalid_client",
                "status": 401,
                "claimed_client_id": self.client["client_id"],
                "client_id": None,
                "grant_type": "client_credentials",
            },
        )
        self.audit.clear()
        self.form("/token", {"grant_type": "password", "client_id": "someone"})
        refused = self.audit.one("token.refused")
        self.assertEqual(
            self.fields(refused, "error", "claimed_client_id", "grant_type"),
            {"error": "unsupported_grant_type", "claimed_client_id": "someone", "grant_type": "password"},
        )

    def test_refused_after_authentication(self) -> None:
        self.token({"grant_type": "client_credentials", "scope": "admin"}, self.auth)
        refused = self.audit.one("token.refused")
        self.assertEqual(
            self.fields(refused, "actor", "error", "status", "client_id", "claimed_client_id"),
            {
                "actor": {"type": "client", "client_id": self.client["client_id"]},
                "error": "invalid_scope",
                "status": 400,
                "client_id": self.client["client_id"],
                "claimed_client_id": None,
            },
        )
        self.assertEqual(self.audit.of("token.issued"), [])


class RevocationIntrospectionEventsTests(AuditTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.owner = self.register(scope="read")
        self.other = self.register(scope="read")
        self.owner_auth = basic(self.owner["client_id"], self.owner["client_secret"])
        self.other_auth = basic(self.other["client_id"], self.other["client_secret"])
        self.access_token = self.token({"grant_type": "client_credentials"}, self.owner_auth).json()[
            "access_token"
        ]
        self.jti = self.verify(self.access_token)["jti"]
        self.audit.clear()

    def test_revoked_by_its_client(self) -> None:
        self.form("/token/revoke", {"token": self.access_token}, self.owner_auth)
        revoked = self.audit.one("token.revoked")
        self.assertEqual(
            self.fields(revoked, "actor", "token_id", "client_id", "token_format"),
            {
                "actor": {"type": "client", "client_id": self.owner["client_id"]},
                "token_id": self.jti,
                "client_id": self.owner["client_id"],
                "token_format": "jwt",
            },
        )

    def test_revoked_with_the_master_token(self) -> None:
        self.form("/token/revoke", {"token": self.access_token}, f"Bearer {MASTER_TOKEN}")
        self.assertEqual(self.audit.one("token.revoked")["actor"], {"type": "master_token"})

    def test_another_clients_token(self) -> None:
        response = self.form("/token/revoke", {"token": self.access_token}, self.other_auth)
        self.assertEqual(response.code, 200)
        refused = self.audit.one("revocation.refused")
        self.assertEqual(
            self.fields(refused, "actor", "status", "reason", "token_id"),
            {
                "actor": {"type": "client", "client_id": self.other["client_id"]},
                "status": 200,
                "reason": "not_owner",
                "token_id": self.jti,
            },
        )
        self.assertEqual(self.audit.of("token.revoked"), [])

    def test_revocation_refused(self) -> None:
        self.form("/token/revoke", {"token": self.access_token}, "Bearer not-the-master")
        self.form("/token/revoke", {"token": "x"}, basic(self.owner["client_id"], "wrong"))
        self.assertEqual(
            [(e["error"], e["status"], e.get("claimed_client_id")) for e in self.audit.of("revocation.refused")],
            [("invalid_token", 401, None), ("invalid_client", 401, self.owner["client_id"])],
        )

    def test_introspection_not_permitted(self) -> None:
        response = self.form("/token/introspect", {"token": self.access_token}, self.other_auth)
        self.assertEqual(response.json(), {"active": False})
        refused = self.audit.one("introspection.refused")
        self.assertEqual(
            self.fields(refused, "actor", "status", "reason", "token_id", "token_client_id"),
            {
                "actor": {"type": "client", "client_id": self.other["client_id"]},
                "status": 200,
                "reason": "not_permitted",
                "token_id": self.jti,
                "token_client_id": self.owner["client_id"],
            },
        )

    def test_introspection_allowed_and_unknown_are_not_told(self) -> None:
        self.form("/token/introspect", {"token": self.access_token}, self.owner_auth)
        self.form("/token/introspect", {"token": "unknown"}, self.other_auth)
        self.assertEqual(self.audit.events, [])

    def test_introspection_refused(self) -> None:
        self.form("/token/introspect", {"token": self.access_token}, basic("nobody", "x"))
        refused = self.audit.one("introspection.refused")
        self.assertEqual(
            self.fields(refused, "actor", "error", "status", "claimed_client_id"),
            {
                "actor": {"type": "unauthenticated"},
                "error": "invalid_client",
                "status": 401,
                "claimed_client_id": "nobody",
            },
        )


class BlockEventsTests(AuditTestCase):
    def test_block_started_once_and_ended(self) -> None:
        """
        The first refusal of a window starts a block, told once however
        many refusals follow; its window's end is told too.
        """
        client = self.register()
        budget = self.config.limits.failed_auth_per_minute
        wrong = basic(client["client_id"], "wrong")
        codes = [self.token({"grant_type": "client_credentials"}, wrong).code for _ in range(budget + 3)]
        self.assertEqual(codes[-3:], [429] * 3)
        started = self.audit.one("limits.block_started")
        self.assertEqual(
            self.fields(started, "actor", "credential", "limit", "client_id"),
            {
                "actor": {"type": "unauthenticated"},
                "credential": "client",
                "limit": "per_source",
                "client_id": client["client_id"],
            },
        )
        self.assertGreater(started["until"], self.clock.seconds())
        self.assertLessEqual(started["until"], self.clock.seconds() + 61)
        self.assertEqual(self.audit.of("limits.block_ended"), [])
        self.clock.advance(started["until"] - self.clock.seconds())
        ended = self.audit.one("limits.block_ended")
        self.assertEqual(ended["actor"], {"type": "server"})
        self.assertEqual(
            self.fields(ended, "credential", "limit", "until", "client_id", "source"),
            self.fields(started, "credential", "limit", "until", "client_id", "source"),
        )
        # a new block in the next window is told again
        for _ in range(budget + 1):
            self.token({"grant_type": "client_credentials"}, wrong)
        self.assertEqual(len(self.audit.of("limits.block_started")), 2)

    def test_master_token_block(self) -> None:
        budget = self.config.limits.failed_auth_per_minute
        for n in range(budget + 1):
            self.request("POST", "/client-reg", headers={"Authorization": f"Bearer wrong-{n}"}, json_body={})
        credentials = sorted(e["credential"] for e in self.audit.of("limits.block_started"))
        self.assertEqual(credentials, ["initial_access_token", "master_token"])
        for event in self.audit.of("limits.block_started"):
            self.assertNotIn("client_id", event)


class CapBlockTests(SynchronousTestCase):
    def test_cap_block(self) -> None:
        """
        The cap across sources blocks once for every source it refuses.
        """
        collected = AuditEvents(self)
        clock = Clock()
        clock.advance(time.time())
        limits = AuthLimits(MemoryStore(), clock.seconds, budget=10, cap=2, clock=clock)

        async def fail() -> None:
            raise invalid_client()

        for n in range(5):
            d = ensureDeferred(limits.client("c1", f"198.51.100.{n}", fail))
            self.failureResultOf(d)
        [started] = collected.of("limits.block_started")
        self.assertEqual(
            (started["limit"], started["credential"], started["source"]), ("cap", "client", "198.51.100.2")
        )
        clock.advance(61)
        self.assertEqual(len(collected.of("limits.block_ended")), 1)


class FirstKeyEventTests(SynchronousTestCase):
    def test_first_key(self) -> None:
        collected = AuditEvents(self)
        clock = Clock()
        store = MemoryStore()
        # as the composition root makes it: its events the server's
        keyring = Keyring(
            store, KeyEncryptor.ephemeral(), "ES256", 3600, clock.seconds,
            audit_key_events(audit.SERVER),
        )
        service = StoreService(store, keyring, lambda failure: None)
        service.startService()
        [key] = self.successResultOf(store.list_keys())
        created = collected.one("key.created")
        self.assertEqual(
            (created["actor"], created["kid"], created["alg"], created["active_from"]),
            ({"type": "server"}, key.kid, "ES256", key.active_from),
        )
        self.successResultOf(service.stopService())
        # a restart with a key made nothing
        StoreService(store, keyring, lambda failure: None).startService()
        self.assertEqual(len(collected.of("key.created")), 1)
