"""
The webhook grant handler decides token exchanges (RFC 8693) too: what it
sends (the exchange's facts, the verified claims, never a token), what its
answers may say (C{may_act} besides the usual), and what the server still
enforces whatever it answers.  A stubbed service (L{StubTreq}) and a
L{Clock}, as in L{tests.test_webhook}.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.logger import capturedLogs
from zope.interface.verify import verifyObject

from ccserver.errors import OAuthError
from ccserver.handlers.webhook import WebhookHandler, exchange_document, parse_config
from ccserver.interfaces import IClientCredentialsGrantHandler, ITokenExchangeHandler
from ccserver.metrics import Metrics
from ccserver.model import (
    ACCESS_TOKEN_TYPE,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    GrantAuthorization,
    TokenExchangeRequest,
    VerifiedToken,
)
from tests.helpers import ISSUER, ServerTestCase
from tests.test_token_exchange import B_API, C_API, D_API, ExchangeTestCase
from tests.test_webhook import (
    SERVICE,
    WEBHOOK_TOKEN,
    PolicyResource,
    WebhookTestCase,
    logged,
    make_client,
    stubbed_handler,
)

SUBJECT = VerifiedToken(
    ACCESS_TOKEN_TYPE,
    {
        "iss": ISSUER,
        "sub": "client-a",
        "client_id": "client-a",
        "aud": "https://b.example.com",
        "scope": "orders:read orders:write",
        "exp": 1_800_003_600,
        "act": {"sub": "client-x"},
        "tenant": "t1",
    },
)
ACTOR = VerifiedToken(ACCESS_TOKEN_TYPE, {"iss": ISSUER, "sub": "client-1", "client_id": "client-1"})


def make_exchange(**changes: Any) -> TokenExchangeRequest:
    values: dict[str, Any] = {
        "client": make_client(grant_types=[TOKEN_EXCHANGE]),
        "subject": SUBJECT,
        "actor": None,
        "scope": frozenset({"orders:read"}),
        "audience": ("https://c.example.com",),
        "resource": ("https://d.example.com",),
        "requested_token_type": JWT_TOKEN_TYPE,
        "params": {"purpose": "audit"},
        "issuer": ISSUER,
    }
    values.update(changes)
    return TokenExchangeRequest(**values)


class ExchangeRequestTests(WebhookTestCase):
    """
    What the handler sends for an exchange.
    """

    def exchange(self, exchange: TokenExchangeRequest | None = None) -> GrantAuthorization:
        result = self.successResultOf(self.handler.authorize_exchange(exchange or make_exchange()))
        self.assertIsInstance(result, GrantAuthorization)
        return result

    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(ITokenExchangeHandler, self.handler))
        self.assertTrue(verifyObject(IClientCredentialsGrantHandler, self.handler))

    def test_document(self) -> None:
        self.exchange()
        [request] = self.service.requests
        self.assertEqual(request.method, b"POST")
        self.assertEqual(
            request.headers.getRawHeaders(b"authorization"), [f"Bearer {WEBHOOK_TOKEN}".encode()]
        )
        self.assertEqual(
            request.json(),
            {
                "grant_type": TOKEN_EXCHANGE,
                "client_id": "client-1",
                "client": {
                    "client_name": "My House App",
                    "scope": "read write",
                    "grant_types": [TOKEN_EXCHANGE],
                    "token_endpoint_auth_method": "client_secret_basic",
                    "software_id": "house-1",
                },
                "scope": ["orders:read"],
                "resource": ["https://d.example.com"],
                "audience": ["https://c.example.com"],
                "requested_token_type": JWT_TOKEN_TYPE,
                "subject_token": {"token_type": ACCESS_TOKEN_TYPE, "claims": dict(SUBJECT.claims)},
                "actor_token": None,
                "params": {"purpose": "audit"},
                "issuer": ISSUER,
            },
        )

    def test_actor(self) -> None:
        self.exchange(make_exchange(actor=ACTOR, scope=None))
        sent = self.service.requests[0].json()
        self.assertEqual(
            sent["actor_token"], {"token_type": ACCESS_TOKEN_TYPE, "claims": dict(ACTOR.claims)}
        )
        self.assertIsNone(sent["scope"])

    def test_client_fields(self) -> None:
        self.assertEqual(
            exchange_document(make_exchange(), ("client_name",))["client"],
            {"client_name": "My House App"},
        )

    def test_answer(self) -> None:
        self.service.answer = (
            200,
            {
                "scope": ["inventory:read"],
                "access_token": {
                    "lifetime": 60,
                    "audience": ["https://c.example.com"],
                    "claims": {"tenant": "t1"},
                    "may_act": {"sub": "client-d"},
                },
            },
        )
        decision = self.exchange()
        self.assertEqual(decision.scope, {"inventory:read"})
        self.assertEqual((decision.lifetime, decision.audience), (60, ("https://c.example.com",)))
        self.assertEqual(dict(decision.may_act or {}), {"sub": "client-d"})

    def test_denial(self) -> None:
        self.service.answer = (
            400,
            {"error": "invalid_target", "error_description": "not for payments"},
        )
        failure = self.failureResultOf(self.handler.authorize_exchange(make_exchange()), OAuthError)
        self.assertEqual(
            (failure.value.error, failure.value.description), ("invalid_target", "not for payments")
        )

    def test_malformed_may_act(self) -> None:
        for may_act in ({}, {"sub": 1}, {"sub": "x", "iss": None}, ["x"], "x"):
            self.service.answer = (200, {"scope": [], "access_token": {"may_act": may_act}})
            with capturedLogs() as events:
                failure = self.failureResultOf(
                    self.handler.authorize_exchange(make_exchange()), OAuthError
                )
            self.assertEqual(failure.value.status, 503)
            self.assertIn("access_token.may_act", "\n".join(logged(events)))


class ExchangeEndpointTests(ExchangeTestCase):
    """
    The whole token endpoint in memory, over a stubbed service that
    decides the exchanges.
    """

    def make_handler(self) -> IClientCredentialsGrantHandler:
        self.policy = PolicyResource()
        return stubbed_handler(self.policy, self.clock)

    def client_token(self, client: dict[str, Any], **form: str) -> str:
        # A's token, as the service grants it: what A registered, for B
        self.policy.answer = (
            200,
            {"scope": ["orders:read", "orders:write"], "access_token": {"audience": [B_API]}},
        )
        return super().client_token(client, **form)

    def test_service_decides(self) -> None:
        """
        The service maps the scope (it is authoritative, as for client
        credentials); the server still says whose token it is and who acts,
        and ends it with the subject token.
        """
        self.policy.answer = (
            200,
            {
                "scope": ["inventory:read"],
                "access_token": {"lifetime": 86400, "audience": [C_API], "claims": {"via": "policy"}},
            },
        )
        response = self.exchange(self.b, self.a_token, audience=[C_API], scope="orders:read")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["scope"], "inventory:read")
        claims = self.verify(response.json()["access_token"], audience=C_API)
        subject = self.verify(self.a_token, audience=B_API)
        self.assertEqual(claims["sub"], self.a["client_id"])
        self.assertEqual(claims["act"], {"sub": self.b["client_id"]})
        self.assertEqual(claims["exp"], subject["exp"])
        self.assertEqual(claims["via"], "policy")
        sent = self.policy.requests[-1].json()
        self.assertEqual(sent["grant_type"], TOKEN_EXCHANGE)
        self.assertEqual(sent["client_id"], self.b["client_id"])
        self.assertEqual(sent["subject_token"]["claims"]["sub"], self.a["client_id"])
        self.assertEqual(sent["audience"], [C_API])
        body = self.policy.requests[-1].body.decode()
        for secret in (self.a_token, self.b["client_secret"]):
            self.assertNotIn(secret, body)

    def test_reserved_claims(self) -> None:
        """
        The service cannot set sub, act or what a token dies with: no token,
        503, as for any malformed answer.
        """
        for claims in (
            {"sub": "admin"},
            {"act": {"sub": "admin"}},
            {"exchanged_from": []},
            {"may_act": {"sub": "x"}},
        ):
            self.policy.answer = (200, {"scope": ["orders:read"], "access_token": {"claims": claims}})
            with capturedLogs():
                response = self.exchange(self.b, self.a_token)
            self.assertEqual(self.refused(response, "temporarily_unavailable", 503)[:3], "the")

    def test_may_act(self) -> None:
        """
        A service that answers A's token request with a may_act lets the
        party it names exchange the token, though the token is not for it.
        """
        self.policy.answer = (
            200,
            {
                "scope": ["orders:read"],
                "access_token": {"audience": [B_API], "may_act": {"sub": self.d["client_id"]}},
            },
        )
        token = ServerTestCase.token(
            self, {"grant_type": "client_credentials"}, self.auth(self.a)
        ).json()["access_token"]
        self.policy.answer = (200, {"scope": ["orders:read"], "access_token": {"audience": [C_API]}})
        claims = self.verify(self.exchanged(self.d, token), audience=C_API)
        self.assertEqual(claims["act"], {"sub": self.d["client_id"]})
        self.refused(self.exchange(self.c, token, audience=[D_API]), "invalid_request")


class TimedExchangeTests(ExchangeTestCase):
    """
    With --metrics, the webhook is timed: token exchanges stay decided by
    it (the timing wrapper provides what the handler provides), and are
    timed too.
    """

    def make_handler(self) -> IClientCredentialsGrantHandler:
        from prometheus_client import CollectorRegistry

        from ccserver.web import ROUTES, route_template

        self.registry = CollectorRegistry()
        self.policy = PolicyResource(
            answer=(200, {"scope": ["orders:read"], "access_token": {"audience": [B_API]}})
        )
        handler = WebhookHandler(
            parse_config({"url": SERVICE}),
            StubTreq(self.policy),  # type: ignore[arg-type]
            self.clock,
        )
        metrics = Metrics(self.registry, route_template, ROUTES)
        timed: IClientCredentialsGrantHandler = metrics.observe_handler(handler)
        self.assertTrue(ITokenExchangeHandler.providedBy(timed))
        return timed

    def test_timed(self) -> None:
        self.policy.answer = (200, {"scope": ["orders:read"], "access_token": {"audience": [D_API]}})
        self.exchanged(self.b, self.a_token)
        self.assertEqual(len(self.policy.requests), 2)
        self.assertEqual(
            self.registry.get_sample_value("ccserver_webhook_request_duration_seconds_count"), 2
        )
