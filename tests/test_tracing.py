"""
Traces ([tracing]): with it on, one span per request, and under it spans
for client authentication, the store, the grant handler (and the webhook's
request, which carries the W3C trace context), and signing, collected by
the SDK's in-memory exporter; the incoming trace context continued (or
not), sampling; with it off, nothing of tracing on a request's way.  The
OTLP export of a real process is in tests/test_tracing_process.py; the
cost with tracing off, measured, in bench/README.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from ccserver import tracing
from ccserver.config import Config, TracingConfig
from ccserver.errors import ConfigError
from ccserver.handlers.webhook import WebhookHandler, parse_config
from ccserver.interfaces import IClientCredentialsGrantHandler
from ccserver.oauth.clientauth import ClientAuthenticator
from ccserver.outbound import traced_request
from ccserver.tracing import Tracing, display_url
from ccserver.web import BoundedRequest, RootResource
from tests.helpers import MASTER_TOKEN, ServerTestCase, basic, config_of, temp_dir
from tests.test_webhook import SERVICE, WEBHOOK_TOKEN, PolicyResource

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class TracedServerTestCase(ServerTestCase):
    signing_alg = "ES256"
    sampling = 1.0
    trust_incoming = True

    def make_tracing(self) -> Tracing:
        self.exporter = InMemorySpanExporter()
        self.tracing = Tracing.to(
            self.exporter,
            sampling=self.sampling,
            trust_incoming=self.trust_incoming,
            batch=False,
        )
        return self.tracing

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        self.assertEqual(len(found), 1, [s.name for s in self.spans()])
        return found[0]

    def children(self, parent: ReadableSpan) -> list[str]:
        assert parent.context is not None
        return [
            span.name
            for span in self.spans()
            if span.parent is not None and span.parent.span_id == parent.context.span_id
        ]

    def issue(self, client: dict[str, Any], **headers: str) -> Any:
        return self.request(
            "POST",
            "/token",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": basic(client["client_id"], client["client_secret"]),
                **headers,
            },
            data=b"grant_type=client_credentials",
        )


class RequestSpanTests(TracedServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client = self.register(scope="read")
        self.exporter.clear()

    def test_token_request(self) -> None:
        """
        A token request: its span, and under it client authentication
        (and the store lookup of the client, not yet cached), the grant
        handler, and the signature.
        """
        self.assertEqual(self.issue(self.client).code, 200)
        request = self.one("POST /token")
        self.assertEqual(request.kind, SpanKind.SERVER)
        self.assertIsNone(request.parent)
        attributes = dict(request.attributes or {})
        self.assertEqual(attributes["http.request.method"], "POST")
        self.assertEqual(attributes["http.route"], "/token")
        self.assertEqual(attributes["url.path"], "/token")
        self.assertEqual(attributes["http.response.status_code"], 200)
        self.assertEqual(attributes["client.address"], "127.0.0.1")
        self.assertEqual(
            set(self.children(request)), {"client authentication", "grant handler", "sign"}
        )
        authentication = self.one("client authentication")
        self.assertEqual(
            dict(authentication.attributes or {})["oauth.client_id"], self.client["client_id"]
        )
        self.assertIn("store get_client", self.children(authentication))
        sign = self.one("sign")
        self.assertEqual(dict(sign.attributes or {})["jws.alg"], "ES256")
        self.assertEqual(dict(sign.attributes or {})["jws.kid"], self.keyring.current.kid)
        # one trace
        self.assertEqual({s.context.trace_id for s in self.spans() if s.context}, {request.context.trace_id})  # type: ignore[union-attr]

    def test_cached_client_costs_no_store_span(self) -> None:
        self.issue(self.client)
        self.exporter.clear()
        self.issue(self.client)
        self.assertEqual(self.named("store get_client"), [])

    def test_refused_request(self) -> None:
        """
        A refusal: the request's span says the status, the authentication's
        the OAuth error code; neither is a server error.
        """
        response = self.issue({**self.client, "client_secret": "wrong"})
        self.assertEqual(response.code, 401)
        request = self.one("POST /token")
        self.assertEqual(dict(request.attributes or {})["http.response.status_code"], 401)
        self.assertNotEqual(request.status.status_code, StatusCode.ERROR)
        authentication = self.one("client authentication")
        self.assertEqual(dict(authentication.attributes or {})["oauth.error"], "invalid_client")
        self.assertEqual(self.named("grant handler"), [])

    def test_every_route(self) -> None:
        """
        A Klein route's request is a span named by its route template, not
        its path; its store operations are its children.
        """
        self.request(
            "GET",
            f"/client-reg/{self.client['client_id']}?x=secret",
            headers={"Authorization": f"Bearer {self.client['registration_access_token']}"},
        )
        request = self.one("GET /client-reg/{client_id}")
        attributes = dict(request.attributes or {})
        self.assertEqual(attributes["url.path"], f"/client-reg/{self.client['client_id']}")
        self.assertEqual(attributes["http.response.status_code"], 200)
        self.assertIn("store get_client", self.children(request))
        self.request("GET", "/no/such/place")
        self.assertEqual(len(self.named("GET other")), 1)

    def test_registration(self) -> None:
        self.register(scope="write")
        request = self.one("POST /client-reg")
        self.assertIn("store add_client", self.children(request))

    def test_store_failure(self) -> None:
        """
        A store operation that fails is an error on its span.
        """
        from ccserver.errors import StoreUnavailable

        store_span = self.tracing.child("store get_client")
        with self.assertRaises(StoreUnavailable):
            tracing.around(store_span, _raise, StoreUnavailable("down"))
        [span] = self.named("store get_client")
        self.assertEqual(span.status.status_code, StatusCode.ERROR)
        self.assertEqual(dict(span.attributes or {})["error.type"], "StoreUnavailable")

    def test_not_active_between_requests(self) -> None:
        self.issue(self.client)
        self.assertIsNone(tracing.active())


def _raise(error: BaseException) -> None:
    raise error


class IncomingContextTests(TracedServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client = self.register(scope="read")
        self.exporter.clear()

    def test_continued(self) -> None:
        """
        A request that comes with a W3C traceparent (from a proxy, or a
        client) is a span of that trace, under its parent.
        """
        self.issue(self.client, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01")
        request = self.one("POST /token")
        assert request.context is not None and request.parent is not None
        self.assertEqual(f"{request.context.trace_id:032x}", TRACE_ID)
        self.assertEqual(f"{request.parent.span_id:016x}", PARENT_ID)

    def test_not_sampled_upstream(self) -> None:
        self.issue(self.client, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-00")
        self.assertEqual(self.spans(), [])

    def test_malformed_ignored(self) -> None:
        self.assertEqual(self.issue(self.client, traceparent="00-xyz-01").code, 200)
        self.assertIsNone(self.one("POST /token").parent)


class UntrustedContextTests(TracedServerTestCase):
    trust_incoming = False

    def test_new_trace(self) -> None:
        client = self.register(scope="read")
        self.exporter.clear()
        self.issue(client, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-00")
        request = self.one("POST /token")
        assert request.context is not None
        self.assertIsNone(request.parent)
        self.assertNotEqual(f"{request.context.trace_id:032x}", TRACE_ID)


class SamplingTests(TracedServerTestCase):
    sampling = 0.0

    def test_none_kept(self) -> None:
        client = self.register(scope="read")
        self.assertEqual(self.issue(client).code, 200)
        self.assertEqual(self.spans(), [])


class WebhookSpanTests(TracedServerTestCase):
    """
    The webhook handler's request: a CLIENT span under the grant handler's,
    whose W3C trace context goes with the request.
    """

    def make_handler(self) -> IClientCredentialsGrantHandler:
        self.policy = PolicyResource()
        return WebhookHandler(
            parse_config({"url": SERVICE + "?tenant=secret", "token": WEBHOOK_TOKEN}),
            StubTreq(self.policy),  # type: ignore[arg-type]
            self.clock,
        )

    def test_traceparent_sent(self) -> None:
        client = self.register(scope="read")
        self.exporter.clear()
        self.policy.answer = (200, {"scope": ["read"]})
        self.assertEqual(self.issue(client).code, 200)
        handler = self.one("grant handler")
        webhook = self.one("POST")
        request = self.one("POST /token")
        assert handler.parent is not None and webhook.parent is not None
        assert handler.context is not None and webhook.context is not None
        assert request.context is not None
        self.assertEqual(handler.parent.span_id, request.context.span_id)
        self.assertEqual(webhook.parent.span_id, handler.context.span_id)
        self.assertEqual(webhook.kind, SpanKind.CLIENT)
        attributes = dict(webhook.attributes or {})
        self.assertEqual(attributes["url.full"], SERVICE)
        self.assertEqual(attributes["http.response.status_code"], 200)
        [sent] = self.policy.requests
        [traceparent] = sent.headers.getRawHeaders(b"traceparent")
        version, trace_id, parent_id, flags = traceparent.decode().split("-")
        self.assertEqual(
            (version, trace_id, parent_id),
            ("00", f"{request.context.trace_id:032x}", f"{webhook.context.span_id:016x}"),
        )
        self.assertTrue(int(flags, 16) & 1)  # sampled

    def test_webhook_outage(self) -> None:
        """
        A webhook that fails: an error on its span, and on the handler's a
        temporarily_unavailable.
        """
        client = self.register(scope="read")
        self.exporter.clear()
        self.policy.answer = (500, {})
        self.assertEqual(self.issue(client).code, 503)
        self.assertEqual(dict(self.one("POST").attributes or {})["http.response.status_code"], 500)
        self.assertEqual(
            dict(self.one("grant handler").attributes or {})["oauth.error"], "temporarily_unavailable"
        )


class TracingOffTests(ServerTestCase):
    """
    Off (the default): the parts on a request's way are the plain ones,
    and nothing of tracing happens on it.
    """

    def test_plain_parts(self) -> None:
        self.assertIs(type(self.site.resource), RootResource)
        self.assertIs(self.site.requestFactory, BoundedRequest)
        token = self.site.resource.leaves[b"token"]
        endpoint = token._grants._endpoint
        self.assertIs(type(endpoint._authenticator), ClientAuthenticator)
        self.assertNotIn("caller", vars(endpoint._authenticator))
        self.assertNotIn("Traced", type(endpoint.handler).__name__)
        self.assertNotIn("Traced", type(endpoint._minter.tokens).__name__)

    def test_no_traceparent_sent(self) -> None:
        headers = Headers()
        self.assertIsNone(traced_request("POST", SERVICE, headers))
        self.assertFalse(headers.hasHeader(b"traceparent"))

    def test_webhook_without_tracing(self) -> None:
        policy = PolicyResource()
        handler = WebhookHandler(
            parse_config({"url": SERVICE, "token": WEBHOOK_TOKEN}),
            StubTreq(policy),  # type: ignore[arg-type]
            self.clock,
        )
        from tests.test_webhook import make_grant

        self.successResultOf(handler.authorize(make_grant()))
        self.assertFalse(policy.requests[0].headers.hasHeader(b"traceparent"))


class TracedHandlerTests(SynchronousTestCase):
    def test_exchange_and_the_rest(self) -> None:
        """
        A handler that decides token exchanges too has both decisions
        traced; what else it has is its own.
        """
        from ccserver.tracing import traced_handler

        class Handler:
            name = "mine"

            def authorize(self, grant: Any) -> str:
                return "granted"

            def authorize_exchange(self, exchange: Any) -> str:
                return "exchanged"

        exporter = InMemorySpanExporter()
        traced = traced_handler(Handler(), Tracing.to(exporter, batch=False))
        self.assertEqual(self.successResultOf(traced.authorize(None)), "granted")
        self.assertEqual(self.successResultOf(traced.authorize_exchange(None)), "exchanged")
        self.assertEqual(traced.name, "mine")
        self.assertEqual(
            [span.name for span in exporter.get_finished_spans()], ["grant handler"] * 2
        )

        class Plain:
            def authorize(self, grant: Any) -> str:
                return "granted"

        self.assertFalse(hasattr(traced_handler(Plain(), Tracing.to(exporter)), "authorize_exchange"))


class DisplayURLTests(SynchronousTestCase):
    def test_no_secrets(self) -> None:
        self.assertEqual(
            display_url("https://user:pw@decide.example.com:8443/grant?token=x#f"),
            "https://decide.example.com:8443/grant",
        )
        self.assertEqual(display_url("http://[::1]:80/a"), "http://[::1]:80/a")


class TracingConfigTests(SynchronousTestCase):
    def load(self, text: str) -> Config:
        return config_of(self, text)

    def test_off_by_default(self) -> None:
        self.assertEqual(Config().tracing, TracingConfig())
        self.assertFalse(Config().tracing.enabled)
        self.assertFalse(self.load("[tracing]\nendpoint = ''\n").tracing.enabled)

    def test_values(self) -> None:
        config = self.load(
            "[tracing]\nendpoint = 'http://collector:4318/v1/traces'\nservice_name = 'auth'\n"
            "sampling = 0.25\ntrust_incoming = false\ntimeout = 3\n"
        )
        self.assertEqual(
            config.tracing,
            TracingConfig("http://collector:4318/v1/traces", "auth", 0.25, False, 3.0),
        )

    def test_mistakes_name_the_key(self) -> None:
        for text, key in [
            ("endpoint = 'collector:4318'", "[tracing] endpoint"),
            ("endpoint = 'ftp://collector/'", "[tracing] endpoint"),
            ("sampling = 1.5", "[tracing] sampling"),
            ("sampling = -0.1", "[tracing] sampling"),
            ("timeout = 0", "[tracing] timeout"),
            ("service_name = ''", "[tracing] service_name"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.load(f"[tracing]\n{text}\n")
            self.assertTrue(str(caught.exception).startswith(key + ": "), caught.exception)

    @pytest.mark.process
    def test_without_the_packages(self) -> None:
        """
        Tracing on without the OpenTelemetry packages: one line that says
        what to install.
        """
        import subprocess
        import sys

        from tests.process import REPO

        path = Path(temp_dir(self)) / "ccserver.toml"
        path.write_text("[tracing]\nendpoint = 'http://127.0.0.1:4318/v1/traces'\n")
        blocked = (
            "import sys; sys.modules['opentelemetry.sdk.trace'] = None; "
            "sys.modules['opentelemetry.exporter.otlp.proto.http.trace_exporter'] = None; "
        )
        done = subprocess.run(
            [sys.executable, "-c", blocked + "from ccserver.tap import main; "
             f"main(['--store', 'memory://', '--config', {str(path)!r}])"],
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertNotIn("Traceback", done.stderr)
        self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
        self.assertIn("pip install 'ccserver[otel]'", done.stderr)

    def test_example_configuration(self) -> None:
        text = (Path(__file__).resolve().parent.parent / "etc" / "ccserver.toml").read_text()
        self.assertRegex(text, r"(?m)^\[tracing\]$")
        self.assertTrue(re.search(r"(?m)^#endpoint = ", text))


class ShutdownTests(SynchronousTestCase):
    def test_last_spans_exported(self) -> None:
        """
        At a stop, the spans still waiting for their batch are exported.
        """
        exporter = InMemorySpanExporter()
        traced = Tracing.to(exporter)
        traced.child("last").end()
        traced.shutdown()
        self.assertEqual([span.name for span in exporter.get_finished_spans()], ["last"])


del ensureDeferred, MASTER_TOKEN
