"""
What the audit trail hears of the grant types beyond client credentials,
in memory: token exchange (the subject and actor tokens named, never
sent), workload identity federation (C{federated_jwt} client
authentication and the JWT bearer grant: the workload's issuer and
subject, verified, or as a refused token claimed them), and a third
party's grant type plugin, audited without doing anything for it.  Every
event carries the request's real C{grant_type}.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from twisted.internet.defer import Deferred

from ccserver.grants import find_grant_types
from ccserver.model import ACCESS_TOKEN_TYPE, JWT_BEARER_GRANT, TOKEN_EXCHANGE, Client
from ccserver.pluginloader import scan_plugins
from ccserver.stores.memory import MemoryStore
from tests.helpers import ISSUER, AuditEvents, ServerTestCase, basic, temp_dir
from tests.test_federation import ACCOUNT, CLUSTER, JWT_BEARER, FederationTestCase
from tests.test_grant_plugins import (
    BREAK_GLASS,
    GRANT_PLUGIN,
    GRANT_PLUGIN_MODULE,
    RENEW,
    RENEW_PLUGIN,
)
from tests.test_handlers import use_plugin_folder, write_plugins
from tests.test_token_exchange import B_API, C_API, ExchangeTestCase

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def fields(event: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: event.get(name) for name in names}


class NoTokenInEvents:
    """
    A TestCase mixin: no event of the test holds any of the tokens given.
    """

    audit: AuditEvents

    def assert_not_told(self, *tokens: str) -> None:
        text = repr(self.audit.events)
        t: Any = self
        for token in tokens:
            t.assertNotIn(token, text)
            # a JWT's signature alone too
            t.assertNotIn(token.rsplit(".", 1)[-1], text)


class ExchangeEventsTests(NoTokenInEvents, ExchangeTestCase):
    """
    RFC 8693: a token exchange's events name its subject (and actor)
    token by type, C{jti}, C{sub}, issuer and client.
    """

    def setUp(self) -> None:
        super().setUp()
        self.a_claims = self.verify(self.a_token, audience=B_API)
        self.audit = AuditEvents(self)

    def subject_named(self) -> dict[str, str]:
        return {
            "type": ACCESS_TOKEN_TYPE,
            "id": self.a_claims["jti"],
            "subject": self.a["client_id"],
            "issuer": ISSUER,
            "client_id": self.a["client_id"],
        }

    def test_issued(self) -> None:
        token = self.exchanged(self.b, self.a_token, audience=[C_API], scope="orders:read")
        claims = self.verify(token, audience=C_API)
        issued = self.audit.one("token.issued")
        self.assertEqual(
            fields(
                issued, "actor", "client_id", "grant_type", "token_id", "scope", "audience",
                "subject_token", "actor_token", "workload",
            ),
            {
                "actor": {"type": "client", "client_id": self.b["client_id"]},
                "client_id": self.b["client_id"],
                "grant_type": TOKEN_EXCHANGE,
                "token_id": claims["jti"],
                "scope": frozenset({"orders:read"}),
                "audience": (C_API,),
                "subject_token": self.subject_named(),
                "actor_token": None,
                "workload": None,
            },
        )
        self.assert_not_told(self.a_token, token)

    def test_issued_with_an_actor_token(self) -> None:
        self.b_cc()
        actor = self.client_token(self.b)
        actor_claims = self.verify(actor, audience=C_API)
        self.audit.clear()
        token = self.exchanged(
            self.b, self.a_token, audience=[C_API], actor_token=actor, actor_token_type=ACCESS_TOKEN_TYPE
        )
        issued = self.audit.one("token.issued")
        self.assertEqual(issued["subject_token"], self.subject_named())
        self.assertEqual(
            issued["actor_token"],
            {
                "type": ACCESS_TOKEN_TYPE,
                "id": actor_claims["jti"],
                "subject": self.b["client_id"],
                "issuer": ISSUER,
                "client_id": self.b["client_id"],
            },
        )
        self.assert_not_told(self.a_token, actor, token)

    def test_refused_once_the_subject_token_is_known(self) -> None:
        """
        D may not exchange A's token (it is not for D): the refusal names
        D, and the token it presented.
        """
        response = self.exchange(self.d, self.a_token, audience=[C_API])
        self.assertEqual(response.code, 400, response.body)
        refused = self.audit.one("token.refused")
        self.assertEqual(
            fields(refused, "actor", "client_id", "grant_type", "error", "status", "subject_token"),
            {
                "actor": {"type": "client", "client_id": self.d["client_id"]},
                "client_id": self.d["client_id"],
                "grant_type": TOKEN_EXCHANGE,
                "error": "invalid_request",
                "status": 400,
                "subject_token": self.subject_named(),
            },
        )
        self.assertEqual(self.audit.of("token.issued"), [])
        self.assert_not_told(self.a_token)

    def test_refused_subject_token(self) -> None:
        """
        A subject token that does not verify is not named (what it says
        is not known), nor repeated.
        """
        forged = self.a_token[:-4] + "AAAA"
        self.exchange(self.b, forged)
        refused = self.audit.one("token.refused")
        self.assertEqual(
            fields(refused, "client_id", "grant_type", "error", "subject_token"),
            {
                "client_id": self.b["client_id"],
                "grant_type": TOKEN_EXCHANGE,
                "error": "invalid_request",
                "subject_token": None,
            },
        )
        self.assert_not_told(forged)

    def test_refused_before_authentication(self) -> None:
        self.request(
            "POST",
            "/token",
            headers={**FORM, "Authorization": basic(self.b["client_id"], "wrong")},
            data=urlencode(
                {
                    "grant_type": TOKEN_EXCHANGE,
                    "subject_token": self.a_token,
                    "subject_token_type": ACCESS_TOKEN_TYPE,
                }
            ).encode(),
        )
        refused = self.audit.one("token.refused")
        self.assertEqual(
            fields(refused, "actor", "claimed_client_id", "grant_type", "error", "subject_token"),
            {
                "actor": {"type": "unauthenticated"},
                "claimed_client_id": self.b["client_id"],
                "grant_type": TOKEN_EXCHANGE,
                "error": "invalid_client",
                "subject_token": None,
            },
        )
        self.assert_not_told(self.a_token)


class OpaqueExchangeEventsTests(ExchangeEventsTests):
    """
    The same with opaque tokens, named by what introspection says of them.
    """

    token_format = "opaque"

    def verify(self, access_token: str, audience: str = ISSUER) -> dict[str, Any]:
        info = self.introspect(access_token, self.c if audience != B_API else self.b)
        self.assertIs(info["active"], True, info)
        return info


class WorkloadEventsTests(NoTokenInEvents, FederationTestCase):
    """
    A workload's token, as a client assertion (C{federated_jwt}) or the
    JWT bearer grant's assertion: the events name the workload (its
    trusted issuer and subject) and the client bound to it.
    """

    workload = {"issuer": CLUSTER, "subject": ACCOUNT}

    def setUp(self) -> None:
        super().setUp()
        self.client = self.bind()
        self.audit = AuditEvents(self)

    def test_federated_jwt(self) -> None:
        token = self.k8s()
        claims = self.issued_to(self.with_assertion(token, scope="read"), self.client)
        issued = self.audit.one("token.issued")
        self.assertEqual(
            fields(issued, "actor", "client_id", "grant_type", "auth_method", "token_id", "workload"),
            {
                "actor": {"type": "client", "client_id": self.client["client_id"]},
                "client_id": self.client["client_id"],
                "grant_type": "client_credentials",
                "auth_method": "federated_jwt",
                "token_id": claims["jti"],
                "workload": self.workload,
            },
        )
        self.assert_not_told(token)

    def test_jwt_bearer_grant(self) -> None:
        token = self.k8s()
        claims = self.issued_to(self.with_grant(token), self.client)
        issued = self.audit.one("token.issued")
        self.assertEqual(
            fields(issued, "client_id", "grant_type", "auth_method", "token_id", "workload"),
            {
                "client_id": self.client["client_id"],
                "grant_type": JWT_BEARER_GRANT,
                "auth_method": "federated_jwt",
                "token_id": claims["jti"],
                "workload": self.workload,
            },
        )
        self.assert_not_told(token)

    def test_refused_workload_token(self) -> None:
        """
        A workload token that does not verify: who it claimed to be, its
        trusted issuer and subject unverified; no client id, as none was
        named (a workload's C{sub} is no client's).
        """
        token = self.k8s(audience="https://elsewhere.example")
        self.assertEqual(self.with_assertion(token).code, 401)
        refused = self.audit.one("token.refused")
        self.assertEqual(
            fields(
                refused, "actor", "error", "grant_type", "claimed_client_id", "claimed_workload",
                "workload", "client_id",
            ),
            {
                "actor": {"type": "unauthenticated"},
                "error": "invalid_client",
                "grant_type": "client_credentials",
                "claimed_client_id": None,
                "claimed_workload": self.workload,
                "workload": None,
                "client_id": None,
            },
        )
        self.audit.clear()
        # naming its client
        self.with_assertion(token, self.client["client_id"])
        refused = self.audit.one("token.refused")
        self.assertEqual(
            (refused["claimed_client_id"], refused["claimed_workload"]),
            (self.client["client_id"], self.workload),
        )
        self.assert_not_told(token)

    def test_refused_jwt_bearer_grant(self) -> None:
        token = self.k8s(account="nobody")
        self.assertEqual(self.with_grant(token).code, 400)
        refused = self.audit.one("token.refused")
        self.assertEqual(
            fields(refused, "actor", "error", "grant_type", "claimed_workload"),
            {
                "actor": {"type": "unauthenticated"},
                "error": "invalid_grant",
                "grant_type": JWT_BEARER_GRANT,
                "claimed_workload": {
                    "issuer": CLUSTER,
                    "subject": "system:serviceaccount:billing:nobody",
                },
            },
        )
        self.assert_not_told(token)

    def test_untrusted_issuer(self) -> None:
        """
        A token of an issuer no one trusts names no workload: only its
        client id, if the request named one.
        """
        claims = {**self.cluster.claims(now=self.now), "iss": "https://x.example"}
        token = self.cluster.signing.sign(claims)
        self.with_grant(token, self.client["client_id"])
        self.with_assertion(token, self.client["client_id"])
        for refused in self.audit.of("token.refused"):
            self.assertEqual(
                fields(refused, "claimed_client_id", "claimed_workload"),
                {"claimed_client_id": self.client["client_id"], "claimed_workload": None},
            )
        self.assertEqual(len(self.audit.of("token.refused")), 2)

    def test_refused_once_authenticated(self) -> None:
        token = self.k8s()
        self.assertEqual(self.with_assertion(token, scope="admin").code, 400)
        refused = self.audit.one("token.refused")
        self.assertEqual(
            fields(refused, "actor", "client_id", "workload", "claimed_workload", "error"),
            {
                "actor": {"type": "client", "client_id": self.client["client_id"]},
                "client_id": self.client["client_id"],
                "workload": self.workload,
                "claimed_workload": None,
                "error": "invalid_scope",
            },
        )

    def introspection_form(self, token: str, **form: str) -> dict[str, str]:
        return {
            "token": token,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": self.k8s(),
            **form,
        }

    def test_introspection_and_revocation(self) -> None:
        """
        A workload's client at the introspection and revocation endpoints:
        its events name the workload too.
        """
        other = self.register(scope="read")
        theirs = self.token(
            {"grant_type": "client_credentials"}, basic(other["client_id"], other["client_secret"])
        ).json()["access_token"]
        own = self.with_assertion(self.k8s()).json()["access_token"]
        own_jti = self.verify(own)["jti"]
        self.audit.clear()
        self.request(
            "POST", "/token/introspect", headers=FORM, data=urlencode(self.introspection_form(theirs)).encode()
        )
        refused = self.audit.one("introspection.refused")
        self.assertEqual(
            fields(refused, "actor", "reason", "workload"),
            {
                "actor": {"type": "client", "client_id": self.client["client_id"]},
                "reason": "not_permitted",
                "workload": self.workload,
            },
        )
        self.request(
            "POST", "/token/revoke", headers=FORM, data=urlencode(self.introspection_form(theirs)).encode()
        )
        self.assertEqual(self.audit.one("revocation.refused")["workload"], self.workload)
        self.request(
            "POST", "/token/revoke", headers=FORM, data=urlencode(self.introspection_form(own)).encode()
        )
        revoked = self.audit.one("token.revoked")
        self.assertEqual(
            fields(revoked, "actor", "token_id", "client_id", "workload"),
            {
                "actor": {"type": "client", "client_id": self.client["client_id"]},
                "token_id": own_jti,
                "client_id": self.client["client_id"],
                "workload": self.workload,
            },
        )
        # refused before authentication: the workload it claimed
        self.audit.clear()
        stale = self.k8s(audience="https://elsewhere.example")
        self.request(
            "POST",
            "/token/introspect",
            headers=FORM,
            data=urlencode(self.introspection_form(own, client_assertion=stale)).encode(),
        )
        refused = self.audit.one("introspection.refused")
        self.assertEqual(
            fields(refused, "actor", "error", "claimed_workload"),
            {"actor": {"type": "unauthenticated"}, "error": "invalid_client", "claimed_workload": self.workload},
        )

    def test_block_names_the_workload(self) -> None:
        """
        The limits count a workload's failures by its identity: the block
        names the workload, not a client.
        """
        wrong = self.k8s(audience="https://elsewhere.example")
        for _ in range(11):
            self.with_assertion(wrong)
        started = self.audit.one("limits.block_started")
        self.assertEqual(
            fields(started, "credential", "limit", "workload", "client_id"),
            {"credential": "client", "limit": "per_source", "workload": self.workload, "client_id": None},
        )
        self.clock.advance(started["until"] - self.clock.seconds())
        ended = self.audit.one("limits.block_ended")
        self.assertEqual((ended["workload"], ended.get("client_id")), (self.workload, None))


class PluginGrantEventsTests(ServerTestCase):
    """
    A third party's grant type plugins, which do nothing for the audit
    trail: their tokens and refusals are told with their grant type, the
    client they authenticated or identified.
    """

    def setUp(self) -> None:
        use_plugin_folder(
            self,
            write_plugins(
                temp_dir(self), {GRANT_PLUGIN_MODULE: GRANT_PLUGIN, "renew.py": RENEW_PLUGIN}
            ),
        )
        self.found = find_grant_types(scan_plugins())
        super().setUp()
        self.audit = AuditEvents(self)

    def make_grant_types(self) -> Any:
        return self.found

    def test_authenticating_plugin(self) -> None:
        client = self.register(scope="ops", grant_types=[BREAK_GLASS])
        auth = basic(client["client_id"], client["client_secret"])
        response = self.token({"grant_type": BREAK_GLASS, "incident": "INC-42"}, auth)
        claims = self.verify(response.json()["access_token"])
        issued = self.audit.one("token.issued")
        self.assertEqual(
            fields(issued, "actor", "client_id", "grant_type", "token_id", "scope", "auth_method"),
            {
                "actor": {"type": "client", "client_id": client["client_id"]},
                "client_id": client["client_id"],
                "grant_type": BREAK_GLASS,
                "token_id": claims["jti"],
                "scope": frozenset({"ops"}),
                "auth_method": "client_secret_basic",
            },
        )
        self.token({"grant_type": BREAK_GLASS, "incident": "yesterday"}, auth)
        refused = self.audit.one("token.refused")
        self.assertEqual(
            fields(refused, "actor", "client_id", "grant_type", "error"),
            {
                "actor": {"type": "client", "client_id": client["client_id"]},
                "client_id": client["client_id"],
                "grant_type": BREAK_GLASS,
                "error": "invalid_request",
            },
        )

    def test_identifying_plugin(self) -> None:
        """
        A plugin that finds its client from a token (verify_token,
        identify): the client identified is the one told.
        """
        client = self.register(scope="read", grant_types=["client_credentials", RENEW])
        own = self.token(
            {"grant_type": "client_credentials"}, basic(client["client_id"], client["client_secret"])
        ).json()["access_token"]
        self.audit.clear()
        response = self.token({"grant_type": RENEW, "assertion": own})
        self.assertEqual(response.code, 200, response.body)
        issued = self.audit.one("token.issued")
        self.assertEqual((issued["client_id"], issued["grant_type"]), (client["client_id"], RENEW))
        self.assertNotIn(own, repr(self.audit.events))
        # not registered for it: refused, naming the client the token spoke for
        other = self.register(scope="read")
        theirs = self.token(
            {"grant_type": "client_credentials"}, basic(other["client_id"], other["client_secret"])
        ).json()["access_token"]
        self.audit.clear()
        self.token({"grant_type": RENEW, "assertion": theirs})
        refused = self.audit.one("token.refused")
        self.assertEqual(
            fields(refused, "actor", "client_id", "error", "grant_type"),
            {
                "actor": {"type": "client", "client_id": other["client_id"]},
                "client_id": other["client_id"],
                "error": "unauthorized_client",
                "grant_type": RENEW,
            },
        )


class HeldLookups(MemoryStore):
    """
    A memory store whose client lookups, once the test holds them, stay
    under way until it lets them answer: token requests in flight together.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.held: list[tuple[str, Deferred[Client | None]]] = []

    def get_client(self, client_id: str) -> Deferred[Client | None]:
        if not self.hold:
            return super().get_client(client_id)
        answer: Deferred[Client | None] = Deferred()
        self.held.append((client_id, answer))
        return answer

    def answer(self, client_id: str) -> None:
        [found] = [held for held in self.held if held[0] == client_id]
        self.held.remove(found)
        super().get_client(client_id).chainDeferred(found[1])


class InterleavedAttemptsTests(ServerTestCase):
    """
    Token requests in flight together: what each one's steps learn (its
    client, once authenticated) is told with its own event, never another's
    (each request's L{TokenAttempt} lives in its own context).
    """

    def make_store(self) -> HeldLookups:
        return HeldLookups()

    def test_each_refusal_names_its_own_client(self) -> None:
        store = self.store
        assert isinstance(store, HeldLookups)
        audit_events = AuditEvents(self)
        clients = [self.register(scope="read") for _ in range(3)]
        # past the client cache: every authentication asks the store
        self.clock.advance(self.config.store.client_cache_seconds + 1)
        store.hold = True
        audit_events.clear()
        answers = []
        for client in clients:
            # a scope it was not registered for: refused once authenticated
            answers.append(
                self.treq.request(
                    "POST",
                    ISSUER + "/token",
                    data=urlencode({"grant_type": "client_credentials", "scope": "admin"}).encode(),
                    headers={
                        "Content-Type": "application/x-www-form-urlencoded",
                        "Authorization": basic(client["client_id"], client["client_secret"]),
                    },
                )
            )
        self.assertEqual(
            sorted(held[0] for held in store.held), sorted(c["client_id"] for c in clients)
        )
        # answered in another order than asked
        for client in (clients[1], clients[2], clients[0]):
            store.answer(client["client_id"])
        self.treq.flush()
        self.assertEqual([self.successResultOf(a).code for a in answers], [400, 400, 400])
        refused = audit_events.of("token.refused")
        self.assertEqual(
            [(e.get("client_id"), e["actor"], e["error"]) for e in refused],
            [
                (c["client_id"], {"type": "client", "client_id": c["client_id"]}, "invalid_scope")
                for c in (clients[1], clients[2], clients[0])
            ],
        )
