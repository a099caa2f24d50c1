"""
A deleted client's tokens die with it (RFC 7592 §2.3), and the operator may
revoke any token with the master token (RFC 7009 §2.1), for both token
formats.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred

from ccserver import credentials
from ccserver.assembly import make_jwks_fetcher, make_site
from ccserver.config import Config
from ccserver.oauth.tokens import sign_inline
from tests.helpers import MASTER_TOKEN, ServerTestCase, TokenLifecycle

API = "https://api.example.com"

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class DeletionMixin(TokenLifecycle):
    """
    A resource server (C{api}) introspects the tokens of a client (C{alice})
    whose audience it is; alice is then deleted.
    """

    token_format = "jwt"

    def make_config(self, **tokens: Any) -> Config:
        return super().make_config(format=self.token_format, max_lifetime=7200, **tokens)  # type: ignore[misc, no-any-return]

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.api = self.register(client_name="api", resource_server_uris=[API])  # type: ignore[attr-defined]
        self.alice = self.register(client_name="alice", scope="read", audience=[API])  # type: ignore[attr-defined]

    def delete(self, client: dict[str, Any], token: str | None = None) -> None:
        response = self.request(  # type: ignore[attr-defined]
            "DELETE",
            f"/client-reg/{client['client_id']}",
            headers={"Authorization": f"Bearer {token or client['registration_access_token']}"},
        )
        self.assertEqual(response.code, 204, response.body)  # type: ignore[attr-defined]

    def master_revoke(self, token: str, bearer: str = MASTER_TOKEN, **form: str) -> Any:
        body = "&".join(f"{k}={v}" for k, v in {"token": token, **form}.items())
        return self.request(  # type: ignore[attr-defined]
            "POST",
            "/token/revoke",
            headers={"Authorization": f"Bearer {bearer}", **FORM},
            data=body.encode(),
        )

    def active(self, token: str, caller: dict[str, Any] | None = None) -> bool:
        return bool(self.introspect(token, caller or self.api)["active"])

    # deletion

    def test_deleted_clients_tokens_inactive(self) -> None:
        tokens = [self.issue(self.alice) for _ in range(3)]
        for token in tokens:
            self.assertIs(self.active(token), True)  # type: ignore[attr-defined]
        self.delete(self.alice)
        for token in tokens:
            self.assertEqual(self.introspect(token, self.api), {"active": False})  # type: ignore[attr-defined]

    def test_deleted_by_the_master_token(self) -> None:
        token = self.issue(self.alice)
        self.delete(self.alice, MASTER_TOKEN)
        self.assertIs(self.active(token), False)  # type: ignore[attr-defined]

    def test_other_clients_tokens_live_on(self) -> None:
        bob = self.register(client_name="bob", scope="read", audience=[API])  # type: ignore[attr-defined]
        token = self.issue(bob)
        self.issue(self.alice)
        self.delete(self.alice)
        self.assertIs(self.active(token), True)  # type: ignore[attr-defined]

    def test_deleted_client_cannot_get_tokens(self) -> None:
        self.delete(self.alice)
        response = self.token({"grant_type": "client_credentials"}, self.auth(self.alice))  # type: ignore[attr-defined]
        self.assertEqual(response.code, 401)  # type: ignore[attr-defined]

    def test_mark_spares_a_later_client_of_the_same_id(self) -> None:
        """
        The mark compares on C{iat}: were a client id ever used again, the
        new client's tokens (issued after the mark) are not killed.
        """
        record = self.successResultOf(self.store.get_client(self.alice["client_id"]))  # type: ignore[attr-defined]
        old = self.issue(self.alice)
        self.delete(self.alice)
        # past the mark, which covers the client cache's lifetime (5 s)
        self.clock.advance(7)  # type: ignore[attr-defined]
        self.successResultOf(self.store.add_client(record))  # type: ignore[attr-defined]
        new = self.issue(self.alice)
        self.assertIs(self.active(new), True)  # type: ignore[attr-defined]
        self.assertIs(self.active(old), False)  # type: ignore[attr-defined]

    def test_mark_covers_an_instance_with_a_cached_client(self) -> None:
        """
        Another instance that still has the client in its cache may issue it
        a token just after the deletion: the mark covers that one too.
        """
        other_site, other_keyring = make_site(
            self.clock,  # type: ignore[attr-defined]
            self.config,  # type: ignore[attr-defined]
            self.store,  # type: ignore[attr-defined]
            self.make_handler(),  # type: ignore[attr-defined]
            credentials.digest(MASTER_TOKEN),
            self.encryptor,  # type: ignore[attr-defined]
            sign_inline,
            make_jwks_fetcher(self.clock, self.config, self.make_jwks_http()),  # type: ignore[attr-defined]
        )
        here, there = self.treq, StubTreq(other_site.resource)  # type: ignore[attr-defined]
        self.successResultOf(ensureDeferred(other_keyring.ensure_signing_key()))  # type: ignore[attr-defined]
        self.treq = there
        self.issue(self.alice)  # the other instance now has alice in its cache
        self.treq = here
        self.delete(self.alice)
        self.clock.advance(2)  # type: ignore[attr-defined]
        self.treq = there
        late = self.issue(self.alice)
        self.treq = here
        self.assertIs(self.active(late), False)  # type: ignore[attr-defined]

    def test_mark_purged_after_the_longest_lifetime(self) -> None:
        token = self.issue(self.alice)
        self.delete(self.alice)
        # max_lifetime (7200) and the client cache (5 s) later, the mark
        # has done its work: every token it covers has expired
        self.clock.advance(7200 + 5)  # type: ignore[attr-defined]
        now = int(self.clock.seconds())  # type: ignore[attr-defined]
        self.successResultOf(self.store.purge_expired(now))  # type: ignore[attr-defined]
        self.assertIsNotNone(  # type: ignore[attr-defined]
            self.successResultOf(self.store.client_revoked_before(self.alice["client_id"]))  # type: ignore[attr-defined]
        )
        self.clock.advance(2)  # type: ignore[attr-defined]
        self.successResultOf(self.store.purge_expired(now + 2))  # type: ignore[attr-defined]
        self.assertIsNone(  # type: ignore[attr-defined]
            self.successResultOf(self.store.client_revoked_before(self.alice["client_id"]))  # type: ignore[attr-defined]
        )
        self.assertIs(self.active(token), False)  # type: ignore[attr-defined]

    # the master token at the revocation endpoint

    def test_master_token_revokes_any_token(self) -> None:
        token = self.issue(self.alice)
        response = self.master_revoke(token)
        self.assertEqual(response.code, 200, response.body)  # type: ignore[attr-defined]
        self.assertIs(self.active(token), False)  # type: ignore[attr-defined]
        self.assertIs(self.active(token, self.alice), False)  # type: ignore[attr-defined]
        other = self.issue(self.alice)
        self.assertIs(self.active(other), True)  # type: ignore[attr-defined]

    def test_master_token_revokes_unknown_token(self) -> None:
        self.assertEqual(self.master_revoke("nothing-like-a-token").code, 200)  # type: ignore[attr-defined]

    def test_wrong_bearer_token_refused(self) -> None:
        token = self.issue(self.alice)
        for bearer in ("not-the-master-token-0123456789", self.alice["registration_access_token"], ""):
            response = self.master_revoke(token, bearer)
            self.assertEqual(response.code, 401, bearer)  # type: ignore[attr-defined]
            self.assertEqual(response.json()["error"], "invalid_token")  # type: ignore[attr-defined]
            self.assertIn("Bearer", response.headers["www-authenticate"])  # type: ignore[attr-defined]
            if bearer:
                self.assertNotIn(bearer, response.body.decode())  # type: ignore[attr-defined]
        self.assertIs(self.active(token), True)  # type: ignore[attr-defined]

    def test_master_token_with_client_credentials_refused(self) -> None:
        token = self.issue(self.alice)
        response = self.master_revoke(
            token, client_id=self.alice["client_id"], client_secret=self.alice["client_secret"]
        )
        self.assertEqual((response.code, response.json()["error"]), (400, "invalid_request"))  # type: ignore[attr-defined]
        self.assertIs(self.active(token), True)  # type: ignore[attr-defined]

    def test_master_token_not_accepted_for_introspection(self) -> None:
        token = self.issue(self.alice)
        response = self.request(  # type: ignore[attr-defined]
            "POST",
            "/token/introspect",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}", **FORM},
            data=f"token={token}".encode(),
        )
        self.assertEqual(response.code, 401)  # type: ignore[attr-defined]


class JWTDeletionTests(DeletionMixin, ServerTestCase):
    def test_deleted_jwt_still_verifies_offline(self) -> None:
        """
        A resource server that verifies JWTs offline cannot learn of the
        deletion before C{exp}; only introspection can.
        """
        token = self.issue(self.alice)
        self.delete(self.alice)
        self.verify(token, audience=API)
        self.assertIs(self.active(token), False)


class OpaqueDeletionTests(DeletionMixin, ServerTestCase):
    token_format = "opaque"

    def test_deletion_deletes_the_records(self) -> None:
        bob = self.register(client_name="bob", scope="read")
        alices = [self.issue(self.alice), self.issue(self.alice)]
        bobs = self.issue(bob)
        self.assertTrue(all(self.stored(token) for token in [*alices, bobs]))
        self.delete(self.alice)
        self.assertEqual([self.gone(token) for token in alices], [True, True])
        self.assertIsNotNone(self.stored(bobs))

    def test_master_revoke_deletes_the_record(self) -> None:
        token = self.issue(self.alice)
        self.assertIsNotNone(self.stored(token))
        self.master_revoke(token)
        self.assertTrue(self.gone(token))
