"""
The C{webhook} grant handler: an external web service decides each grant.

These unit tests run the handler against a stubbed service (L{StubTreq}
over a Twisted resource) with a L{Clock}, so every branch is exercised
without a network or a sleep.  The end-to-end tests, a real ccserver process
against a real HTTP service, are in L{tests.test_webhook_process}.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, cast

from attrs import define, field
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface.verify import verifyObject

from ccserver.errors import ConfigError, OAuthError
from ccserver.handlers.webhook import (
    DEFAULT_TIMEOUT,
    MAX_ANSWER,
    WebhookConfig,
    WebhookHandler,
    parse_config,
    request_document,
)
from ccserver.interfaces import IClientCredentialsGrantHandler
from ccserver.model import RESERVED_CLAIMS, Client, GrantAuthorization, GrantRequest
from ccserver.plugins.ccserver_builtin import webhook as webhook_factory
from tests.helpers import ISSUER, ServerTestCase, basic

SERVICE = "https://policy.example.com/decide"
WEBHOOK_TOKEN = "webhook-token-Zq8LWm3X"
SECRET_DIGEST = "5e" * 32
RAT_DIGEST = "7a" * 32

#: Stands for "the service never answers" in L{PolicyResource.answer}.
HANG = object()


def make_client(**metadata: Any) -> Client:
    registered = {
        "client_name": "My House App",
        "scope": "read write",
        "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": "client_secret_basic",
        "software_id": "house-1",
    }
    registered.update(metadata)
    return Client(
        client_id="client-1",
        client_id_issued_at=1_800_000_000,
        metadata=registered,
        client_secret_digest=SECRET_DIGEST,
        registration_access_token_digest=RAT_DIGEST,
    )


def make_grant(scope: frozenset[str] | None = frozenset({"read"}), **metadata: Any) -> GrantRequest:
    return GrantRequest(
        client=make_client(**metadata),
        scope=scope,
        params={"tenant": "t1"},
        issuer=ISSUER,
        resource=("https://b.example.com", "https://a.example.com"),
    )


@define
class Recorded:
    method: bytes
    uri: bytes
    headers: Headers
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def body(request: Request) -> bytes:
    assert request.content is not None
    content: bytes = request.content.read()
    return content


@define
class PolicyResource(Resource):
    """
    The stubbed service: records each request, answers with C{answer}: a
    C{(code, document or bytes)} pair, or L{HANG}, or a callable of the
    request that writes the answer itself.
    """

    answer: Any = (200, {"scope": ["read"]})
    requests: list[Recorded] = field(factory=list)
    pending: list[Request] = field(factory=list)
    isLeaf = True

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Request) -> Any:
        self.requests.append(
            Recorded(request.method, request.uri, request.requestHeaders, body(request))
        )
        if self.answer is HANG:
            self.pending.append(request)
            return NOT_DONE_YET
        if callable(self.answer):
            return self.answer(request)
        code, document = self.answer
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        return document if isinstance(document, bytes) else json.dumps(document).encode()


class WebhookTestCase(SynchronousTestCase):
    """
    A handler over a stubbed service, with a L{Clock}.
    """

    config: dict[str, Any] = {"url": SERVICE, "token": WEBHOOK_TOKEN}

    def setUp(self) -> None:
        self.clock = Clock()
        self.service = PolicyResource()
        self.stub: Any = cast(Any, StubTreq(self.service))
        self.handler = WebhookHandler(parse_config(self.config), self.stub, self.clock)

    def decide(self, grant: GrantRequest | None = None) -> GrantAuthorization:
        result = self.successResultOf(self.handler.authorize(grant or make_grant()))
        self.assertIsInstance(result, GrantAuthorization)
        return result

    def refused(self, grant: GrantRequest | None = None) -> OAuthError:
        failure = self.failureResultOf(self.handler.authorize(grant or make_grant()), OAuthError)
        error: OAuthError = failure.value
        return error

    def assert_unavailable(self, answer: Any) -> list[str]:
        """
        With this answer, the grant fails with 503 C{temporarily_unavailable};
        returns what was logged.
        """
        self.service.answer = answer
        with capturedLogs() as events:
            error = self.refused()
        self.assertEqual((error.status, error.error), (503, "temporarily_unavailable"))
        self.assertEqual(error.headers.get("Retry-After"), "1")
        return logged(events)


def logged(events: Sequence[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events]


class ConfigTests(SynchronousTestCase):
    """
    The C{[grant_handler]} table: C{url} required, C{token}, C{timeout},
    C{client_fields}; every mistake names its key.
    """

    def assert_config_error(self, config: dict[str, Any], key: str) -> str:
        with self.assertRaises(ConfigError) as raised:
            parse_config(config)
        message = str(raised.exception)
        self.assertTrue(message.startswith(f"[grant_handler] {key}: "), message)
        return message

    def test_minimal(self) -> None:
        self.assertEqual(
            parse_config({"url": "http://127.0.0.1:9000/decide"}),
            WebhookConfig(url="http://127.0.0.1:9000/decide", timeout=DEFAULT_TIMEOUT),
        )
        self.assertEqual(DEFAULT_TIMEOUT, 2.0)

    def test_every_key(self) -> None:
        config = parse_config(
            {
                "url": SERVICE,
                "token": WEBHOOK_TOKEN,
                "timeout": 0.5,
                "client_fields": ["client_name", "software_id"],
            }
        )
        self.assertEqual(config.url, SERVICE)
        self.assertEqual(config.token, WEBHOOK_TOKEN)
        self.assertEqual(config.timeout, 0.5)
        self.assertEqual(config.client_fields, ("client_name", "software_id"))
        self.assertNotIn(WEBHOOK_TOKEN, repr(config))
        self.assertEqual(parse_config({"url": SERVICE, "timeout": 3}).timeout, 3.0)

    def test_url(self) -> None:
        self.assert_config_error({}, "url")
        for url in (
            42,
            "",
            "/decide",
            "policy.example.com/decide",
            "ftp://policy.example.com/",
            "http://",
            "http://policy.example.com:99999/",
            "https://policy.example.com/#frag",
        ):
            self.assert_config_error({"url": url}, "url")

    def test_url_with_credentials(self) -> None:
        message = self.assert_config_error({"url": "https://me:pw@policy.example.com/"}, "url")
        self.assertNotIn("pw", message)

    def test_token(self) -> None:
        for token in (42, "", "two words", "line\nbreak", ["x"]):
            message = self.assert_config_error({"url": SERVICE, "token": token}, "token")
            if isinstance(token, str) and token:
                self.assertNotIn(token, message)

    def test_timeout(self) -> None:
        for timeout in ("2", 0, -1, True, float("nan"), float("inf"), [2]):
            self.assert_config_error({"url": SERVICE, "timeout": timeout}, "timeout")

    def test_client_fields(self) -> None:
        for fields in ("client_name", [1], [""], {"client_name": True}):
            self.assert_config_error({"url": SERVICE, "client_fields": fields}, "client_fields")
        for secret in ("client_secret", "registration_access_token"):
            message = self.assert_config_error(
                {"url": SERVICE, "client_fields": ["client_name", secret]}, "client_fields"
            )
            self.assertIn(secret, message)

    def test_unknown_key(self) -> None:
        message = self.assert_config_error({"url": SERVICE, "timout": 2}, "timout")
        self.assertIn("url, token, timeout, client_fields", message)

    def test_factory(self) -> None:
        """
        The plugin checks the configuration before it touches the reactor.
        """
        self.assertEqual(webhook_factory.name, "webhook")
        with self.assertRaises(ConfigError) as raised:
            webhook_factory.makeHandler({"url": SERVICE, "timeout": 0}, Clock())
        self.assertTrue(str(raised.exception).startswith("[grant_handler] timeout: "))


class RequestTests(WebhookTestCase):
    """
    What the handler sends: one POST of JSON, with the bearer token.
    """

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IClientCredentialsGrantHandler, self.handler))
        self.assertNotIn(WEBHOOK_TOKEN, repr(self.handler))

    def test_request(self) -> None:
        self.decide()
        [request] = self.service.requests
        self.assertEqual(request.method, b"POST")
        self.assertEqual(request.uri, b"/decide")
        self.assertEqual(
            request.headers.getRawHeaders(b"authorization"), [f"Bearer {WEBHOOK_TOKEN}".encode()]
        )
        self.assertEqual(request.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(
            request.json(),
            {
                "grant_type": "client_credentials",
                "client_id": "client-1",
                "client": {
                    "client_name": "My House App",
                    "scope": "read write",
                    "grant_types": ["client_credentials"],
                    "token_endpoint_auth_method": "client_secret_basic",
                    "software_id": "house-1",
                },
                "scope": ["read"],
                "resource": ["https://b.example.com", "https://a.example.com"],
                "params": {"tenant": "t1"},
                "issuer": ISSUER,
            },
        )

    def test_no_scope_requested(self) -> None:
        self.decide(make_grant(scope=None))
        self.assertIsNone(self.service.requests[0].json()["scope"])

    def test_scope_sorted(self) -> None:
        self.decide(make_grant(scope=frozenset({"write", "admin", "read"})))
        self.assertEqual(self.service.requests[0].json()["scope"], ["admin", "read", "write"])

    def test_never_secrets(self) -> None:
        """
        Neither the client's digests nor a secret that strayed into its
        metadata are ever sent.
        """
        grant = make_grant(client_secret="stray-secret", registration_access_token="stray-rat")
        self.decide(grant)
        body = self.service.requests[0].body
        for secret in (b"stray-secret", b"stray-rat", SECRET_DIGEST.encode(), RAT_DIGEST.encode()):
            self.assertNotIn(secret, body)
        self.assertNotIn("client_secret", self.service.requests[0].json()["client"])

    def test_client_fields(self) -> None:
        self.assertEqual(
            request_document(make_grant(), ("software_id", "contacts"))["client"],
            {"software_id": "house-1"},
        )
        self.assertEqual(request_document(make_grant(), ())["client"], {})

    def test_no_token(self) -> None:
        handler = WebhookHandler(parse_config({"url": SERVICE}), self.stub, self.clock)
        self.successResultOf(handler.authorize(make_grant()))
        self.assertIsNone(self.service.requests[0].headers.getRawHeaders(b"authorization"))


class GrantTests(WebhookTestCase):
    """
    A 200 answer is the decision: the service is authoritative.
    """

    def test_scope_only(self) -> None:
        self.service.answer = (200, {"scope": ["read"]})
        self.assertEqual(self.decide(), GrantAuthorization(scope={"read"}))

    def test_everything(self) -> None:
        self.service.answer = (
            200,
            {
                "scope": ["read", "write"],
                "access_token": {
                    "lifetime": 600,
                    "audience": ["https://api.example.com", "https://b.example.com"],
                    "claims": {"tier": "gold", "tenant": {"id": 7}},
                },
            },
        )
        decision = self.decide()
        self.assertEqual(decision.scope, frozenset({"read", "write"}))
        self.assertEqual(decision.lifetime, 600)
        self.assertEqual(decision.audience, ("https://api.example.com", "https://b.example.com"))
        self.assertEqual(dict(decision.claims), {"tier": "gold", "tenant": {"id": 7}})

    def test_nulls_and_empties_are_defaults(self) -> None:
        self.service.answer = (
            200,
            {"scope": [], "access_token": {"lifetime": None, "audience": [], "claims": None}},
        )
        self.assertEqual(self.decide(), GrantAuthorization(scope=()))
        self.service.answer = (200, {"scope": ["read"], "access_token": None})
        self.assertEqual(self.decide(), GrantAuthorization(scope={"read"}))

    def test_beyond_registration(self) -> None:
        """
        The service may grant what the client did not register or ask for.
        """
        self.service.answer = (200, {"scope": ["admin"]})
        self.assertEqual(self.decide(make_grant(scope=None)).scope, frozenset({"admin"}))

    def test_answer_without_content_type(self) -> None:
        def answer(request: Request) -> bytes:
            return b'{"scope": ["read"]}'

        self.service.answer = answer
        self.assertEqual(self.decide().scope, frozenset({"read"}))


class DenialTests(WebhookTestCase):
    """
    A 4xx answer with an OAuth error denies the grant with that error.
    """

    def test_passed_through(self) -> None:
        self.service.answer = (
            403,
            {"error": "unauthorized_client", "error_description": "suspended until May"},
        )
        error = self.refused()
        self.assertEqual(
            (error.status, error.error, error.description),
            (400, "unauthorized_client", "suspended until May"),
        )
        self.assertEqual(dict(error.headers), {})

    def test_any_4xx(self) -> None:
        for code in (400, 404, 409, 422, 429, 499):
            self.service.answer = (code, {"error": "invalid_scope", "error_description": "no"})
            error = self.refused()
            self.assertEqual((error.status, error.error), (400, "invalid_scope"), code)

    def test_invalid_client(self) -> None:
        self.service.answer = (401, {"error": "invalid_client", "error_description": "revoked"})
        error = self.refused()
        self.assertEqual(
            (error.status, error.error, error.description), (401, "invalid_client", "revoked")
        )
        self.assertEqual(
            error.headers["WWW-Authenticate"], 'Basic realm="ccserver", charset="UTF-8"'
        )

    def test_without_description(self) -> None:
        self.service.answer = (400, {"error": "invalid_scope", "error_uri": "https://x.example/"})
        error = self.refused()
        self.assertEqual(error.error, "invalid_scope")
        self.assertTrue(error.description)

    def test_without_proper_error(self) -> None:
        for answer in (
            (403, b"Forbidden"),
            (403, b""),
            (400, {"error_description": "no code"}),
            (400, {"error": 42}),
            (400, {"error": ""}),
            (400, {"error": 'quote"d'}),
            (400, {"error": "invalid_scope", "error_description": 42}),
            (400, ["invalid_scope"]),
        ):
            lines = self.assert_unavailable(answer)
            self.assertIn("malformed answer", "\n".join(lines), answer)


class UnavailableTests(WebhookTestCase):
    """
    No answer in time, no connection, a 5xx or an answer out of format: 503
    C{temporarily_unavailable}, never a token, and a log line saying why.
    """

    def assert_logged(self, lines: list[str], *fragments: str) -> None:
        text = "\n".join(lines)
        for fragment in fragments:
            self.assertIn(fragment, text)
        self.assertIn("https://policy.example.com/decide", text)
        self.assertIn("client-1", text)
        for secret in (WEBHOOK_TOKEN, SECRET_DIGEST, RAT_DIGEST):
            self.assertNotIn(secret, text)

    def test_5xx(self) -> None:
        for code in (500, 502, 503, 599):
            lines = self.assert_unavailable((code, {"error": "server_error"}))
            self.assert_logged(lines, f"it answered {code}")

    def test_other_codes(self) -> None:
        for code in (201, 204, 302, 304):
            lines = self.assert_unavailable((code, {"scope": ["read"]}))
            self.assert_logged(lines, "malformed answer", f"it answered {code}")

    def test_not_json(self) -> None:
        for body in (b"{not json", b"", b"\xff\xfe", b'{"scope": ["read"]} trailing', b"NaN"):
            lines = self.assert_unavailable((200, body))
            self.assert_logged(lines, "malformed answer", "not JSON")

    def test_repeated_member(self) -> None:
        lines = self.assert_unavailable((200, b'{"scope": ["read"], "scope": ["admin"]}'))
        self.assert_logged(lines, "more than once")

    def test_wrong_types(self) -> None:
        for document, reason in [
            ([], "not a JSON object"),
            ("read", "not a JSON object"),
            ({}, "scope: missing"),
            ({"scope": None}, "scope:"),
            ({"scope": "read write"}, "scope:"),
            ({"scope": [1]}, "scope:"),
            ({"scope": ["read write"]}, "scope:"),
            ({"scope": ['"quoted"']}, "scope:"),
            ({"scope": ["read"], "lifetime": 60}, "'lifetime'"),
            ({"scope": ["read"], "access_token": []}, "access_token:"),
            ({"scope": ["read"], "access_token": {"expires_in": 60}}, "'expires_in'"),
            ({"scope": ["read"], "access_token": {"lifetime": 0}}, "lifetime"),
            ({"scope": ["read"], "access_token": {"lifetime": -5}}, "lifetime"),
            ({"scope": ["read"], "access_token": {"lifetime": 1.5}}, "lifetime"),
            ({"scope": ["read"], "access_token": {"lifetime": "60"}}, "lifetime"),
            ({"scope": ["read"], "access_token": {"lifetime": True}}, "lifetime"),
            ({"scope": ["read"], "access_token": {"audience": "https://a"}}, "audience"),
            ({"scope": ["read"], "access_token": {"audience": [1]}}, "audience"),
            ({"scope": ["read"], "access_token": {"audience": [""]}}, "audience"),
            ({"scope": ["read"], "access_token": {"claims": []}}, "claims"),
            ({"scope": ["read"], "access_token": {"claims": "x"}}, "claims"),
        ]:
            lines = self.assert_unavailable((200, document))
            self.assert_logged(lines, "malformed answer", reason)

    def test_reserved_claims(self) -> None:
        """
        A reserved claim (L{RESERVED_CLAIMS}: one the server sets or vouches
        for) cannot come from the service: that answer is malformed, not a
        silent overwrite.
        """
        for claim in sorted(RESERVED_CLAIMS):
            lines = self.assert_unavailable(
                (200, {"scope": ["read"], "access_token": {"claims": {claim: "x", "ok": 1}}})
            )
            self.assert_logged(lines, "access_token.claims: reserved claims", claim)

    def test_forged_introspection_members(self) -> None:
        """
        A service answering C{active} and C{token_type} claims, which once
        rewrote the introspection answer, is refused as for C{iss}.
        """
        lines = self.assert_unavailable(
            (
                200,
                {
                    "scope": ["read"],
                    "access_token": {"claims": {"active": False, "token_type": "forged"}},
                },
            )
        )
        self.assert_logged(
            lines, "access_token.claims: reserved claims are set by the server only: active, token_type"
        )

    def test_too_long(self) -> None:
        padding = "x" * MAX_ANSWER
        lines = self.assert_unavailable((200, {"scope": ["read"], "padding": padding}))
        self.assert_logged(lines, f"longer than {MAX_ANSWER} bytes")

    def test_timeout_waiting_for_answer(self) -> None:
        """
        No answer within the timeout: 503, and the connection is dropped.
        """
        self.service.answer = HANG
        with capturedLogs() as events:
            decision = self.handler.authorize(make_grant())
            self.clock.advance(DEFAULT_TIMEOUT - 0.01)
            self.assertNoResult(decision)
            self.clock.advance(0.01)
            error = self.failureResultOf(decision, OAuthError).value
        self.assertEqual((error.status, error.error), (503, "temporarily_unavailable"))
        self.assert_logged(logged(events), "no answer within 2s")
        [pending] = self.service.pending
        self.assertEqual(len(self.service.requests), 1)
        lost: list[Failure] = []
        pending.notifyFinish().addErrback(lost.append)
        self.stub.flush()
        self.assertEqual(len(lost), 1)

    def test_timeout_reading_answer(self) -> None:
        """
        The timeout bounds the whole exchange, the body too.
        """

        def slow(request: Request) -> object:
            request.setHeader(b"Content-Length", b"100")
            request.write(b'{"scope": ')
            self.service.pending.append(request)
            return NOT_DONE_YET

        self.service.answer = slow
        with capturedLogs() as events:
            decision = self.handler.authorize(make_grant())
            self.stub.flush()
            self.assertNoResult(decision)
            self.clock.advance(DEFAULT_TIMEOUT)
            error = self.failureResultOf(decision, OAuthError).value
        self.assertEqual(error.status, 503)
        self.assert_logged(logged(events), "no answer within 2s")

    def test_configured_timeout(self) -> None:
        handler = WebhookHandler(
            parse_config({"url": SERVICE, "timeout": 0.25}), self.stub, self.clock
        )
        self.service.answer = HANG
        decision = handler.authorize(make_grant())
        self.clock.advance(0.2)
        self.assertNoResult(decision)
        self.clock.advance(0.05)
        self.assertEqual(self.failureResultOf(decision, OAuthError).value.status, 503)

    def test_refused(self) -> None:
        handler = WebhookHandler(
            parse_config(self.config), FailingHTTP(ConnectionRefusedError), self.clock
        )
        with capturedLogs() as events:
            error = self.failureResultOf(handler.authorize(make_grant()), OAuthError).value
        self.assertEqual((error.status, error.error), (503, "temporarily_unavailable"))
        self.assert_logged(logged(events), "could not connect", "Connection was refused")

    def test_unexpected_error(self) -> None:
        """
        A bug is logged with its traceback, and still a 503, not a token.
        """
        handler = WebhookHandler(
            parse_config(self.config), FailingHTTP(ZeroDivisionError), self.clock
        )
        with capturedLogs() as events:
            error = self.failureResultOf(handler.authorize(make_grant()), OAuthError).value
        self.assertEqual(error.status, 503)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(any(event.get("log_failure") for event in events))

    def test_cancelled_by_caller(self) -> None:
        """
        A cancellation (the client went away) is passed on, not logged as
        the service's fault.
        """
        self.service.answer = HANG
        with capturedLogs() as events:
            decision = self.handler.authorize(make_grant())
            decision.cancel()
            self.failureResultOf(decision)
        self.assertNotIn("could not decide", "\n".join(logged(events)))


class RetryTests(WebhookTestCase):
    """
    A request that failed before any answer (a kept-alive connection the
    service had just closed) is sent once more, time permitting.
    """

    def test_second_attempt_answers(self) -> None:
        http = FailingHTTP(
            lambda: ResponseNeverReceived([Failure(ConnectionDone())]), then=self.stub
        )
        handler = WebhookHandler(parse_config(self.config), http, self.clock)
        self.assertEqual(self.successResultOf(handler.authorize(make_grant())).scope, {"read"})
        self.assertEqual((http.calls, len(self.service.requests)), (2, 1))

    def test_only_once(self) -> None:
        http = FailingHTTP(lambda: ResponseNeverReceived([Failure(ConnectionDone())]))
        handler = WebhookHandler(parse_config(self.config), http, self.clock)
        with capturedLogs() as events:
            error = self.failureResultOf(handler.authorize(make_grant()), OAuthError).value
        self.assertEqual((error.status, http.calls), (503, 2))
        text = "\n".join(logged(events))
        self.assertIn("Asking https://policy.example.com/decide again", text)
        self.assertIn("the exchange failed", text)


@define
class FailingHTTP:
    """
    An HTTP client whose first request fails with C{error()}; later ones go
    to C{then}, or fail the same way.
    """

    error: Callable[[], Exception]
    then: Any = None
    calls: int = 0

    def post(self, url: str, /, **kwargs: Any) -> Deferred[Any]:
        self.calls += 1
        if self.calls > 1 and self.then is not None:
            return self.then.post(url, **kwargs)  # type: ignore[no-any-return]
        return fail(self.error())


def stubbed_handler(policy: PolicyResource, clock: Clock) -> WebhookHandler:
    """
    The webhook handler over the stubbed service C{policy}.
    """
    return WebhookHandler(
        parse_config({"url": SERVICE, "token": WEBHOOK_TOKEN}),
        StubTreq(policy),  # type: ignore[arg-type]
        clock,
    )


class TokenEndpointTests(ServerTestCase):
    """
    The whole token endpoint in memory, over a stubbed service: what the
    client sees.
    """

    def make_handler(self) -> IClientCredentialsGrantHandler:
        self.policy = PolicyResource()
        return stubbed_handler(self.policy, self.clock)

    def setUp(self) -> None:
        super().setUp()
        self.client = self.register(client_name="My House App", scope="read write")
        self.auth = basic(self.client["client_id"], self.client["client_secret"])

    def test_token(self) -> None:
        self.policy.answer = (
            200,
            {
                "scope": ["read", "admin"],
                "access_token": {
                    "lifetime": 120,
                    "audience": ["https://api.example.com"],
                    "claims": {"tier": "gold"},
                },
            },
        )
        response = self.token(
            {
                "grant_type": "client_credentials",
                "scope": "read",
                "tenant": "t1",
                "resource": "https://api.example.com",
            },
            self.auth,
        )
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(
            (response.json()["scope"], response.json()["expires_in"]), ("admin read", 120)
        )
        claims = self.verify(response.json()["access_token"], audience="https://api.example.com")
        self.assertEqual(claims["tier"], "gold")
        self.assertEqual(claims["exp"] - claims["iat"], 120)
        sent = self.policy.requests[0].json()
        self.assertEqual(sent["client_id"], self.client["client_id"])
        self.assertEqual(sent["scope"], ["read"])
        self.assertEqual(sent["params"], {"tenant": "t1"})
        self.assertEqual(sent["resource"], ["https://api.example.com"])
        self.assertEqual(sent["client"]["client_name"], "My House App")
        body = self.policy.requests[0].body.decode()
        for secret in (self.client["client_secret"], self.client["registration_access_token"]):
            self.assertNotIn(secret, body)

    def test_denied(self) -> None:
        self.policy.answer = (403, {"error": "invalid_scope", "error_description": "not today"})
        response = self.token({"grant_type": "client_credentials"}, self.auth)
        self.assertEqual(response.code, 400)
        self.assertEqual(
            response.json(), {"error": "invalid_scope", "error_description": "not today"}
        )
        self.assertNotIn("access_token", response.json())

    def test_invalid_client(self) -> None:
        self.policy.answer = (401, {"error": "invalid_client", "error_description": "revoked"})
        response = self.token({"grant_type": "client_credentials"}, self.auth)
        self.assertEqual((response.code, response.json()["error"]), (401, "invalid_client"))
        self.assertEqual(
            response.headers["www-authenticate"], 'Basic realm="ccserver", charset="UTF-8"'
        )

    def test_reserved_claims(self) -> None:
        """
        The client whose policy service answers reserved claims gets no
        token: 503, as for any malformed answer.
        """
        for claims in (
            {"iss": "https://evil.example.com"},
            {"exp": 4102444800},
            {"active": False, "token_type": "forged"},
            {"cnf": {"jkt": "x"}},
            {"act": {"sub": "admin"}},
        ):
            self.policy.answer = (200, {"scope": ["read"], "access_token": {"claims": claims}})
            with capturedLogs() as events:
                response = self.token({"grant_type": "client_credentials"}, self.auth)
            self.assertEqual(
                (response.code, response.json()["error"]), (503, "temporarily_unavailable")
            )
            self.assertNotIn("access_token", response.json())
            self.assertIn("reserved claims", "\n".join(logged(events)))

    def test_unavailable(self) -> None:
        self.policy.answer = (500, b"oops")
        with capturedLogs():
            response = self.token({"grant_type": "client_credentials"}, self.auth)
        self.assertEqual(
            (response.code, response.json()["error"]), (503, "temporarily_unavailable")
        )
        self.assertEqual(response.headers["retry-after"], "1")
        self.assertEqual(response.headers["cache-control"], "no-store")
        self.assertNotIn("access_token", response.json())
