"""
Prometheus metrics (ccserver.metrics) in memory: what the routes count,
bounded labels, the /metrics resource, and the configuration.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from ccserver.config import Config, load_config
from ccserver.errors import OAuthError, StoreUnavailable
from ccserver.interfaces import IStore
from ccserver.metrics import (
    Metrics,
    NoMetrics,
    metrics_root,
    scrape_registry,
)
from ccserver.model import Client, GrantAuthorization
from ccserver.stores.memory import MemoryStore
from ccserver.tap import Options
from ccserver.web import ROUTES, route_template
from tests.helpers import ServerTestCase, basic, temp_dir


def new_metrics() -> Metrics:
    return Metrics(CollectorRegistry(), route_template, ROUTES)


class FlakyStore(MemoryStore):
    down = False

    def get_client(self, client_id: str) -> Deferred[Client | None]:
        if self.down:
            return fail(StoreUnavailable("connection refused"))
        return super().get_client(client_id)


class MetricsTestCase(ServerTestCase):
    signing_alg = "ES256"

    def make_metrics(self) -> NoMetrics:
        self.metrics = new_metrics()
        return self.metrics

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


class CountedTests(MetricsTestCase):
    store: FlakyStore

    def make_store(self) -> IStore:
        return FlakyStore()

    def test_tokens_issued(self) -> None:
        client = self.register(scope="read")
        for _ in range(3):
            response = self.token(
                {"grant_type": "client_credentials"},
                basic(client["client_id"], client["client_secret"]),
            )
            self.assertEqual(response.code, 200)
        labels = {"format": "jwt", "alg": "ES256", "auth_method": "client_secret_basic"}
        self.assertEqual(self.value("ccserver_tokens_issued_total", **labels), 3)

    def test_auth_method_label(self) -> None:
        client = self.register(scope="read", token_endpoint_auth_method="client_secret_post")
        response = self.token(
            {
                "grant_type": "client_credentials",
                "client_id": client["client_id"],
                "client_secret": client["client_secret"],
            }
        )
        self.assertEqual(response.code, 200)
        labels = {"format": "jwt", "alg": "ES256", "auth_method": "client_secret_post"}
        self.assertEqual(self.value("ccserver_tokens_issued_total", **labels), 1)

    def test_auth_method_label_is_the_method_used(self) -> None:
        """
        A client that named no method and posts its secret is counted as
        client_secret_post, the method it used.
        """
        client = self.register(scope="read")
        form = {
            "grant_type": "client_credentials",
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        }
        self.assertEqual(self.token(form).code, 200)
        labels = {"format": "jwt", "alg": "ES256", "auth_method": "client_secret_post"}
        self.assertEqual(self.value("ccserver_tokens_issued_total", **labels), 1)

    def test_dpop_errors_have_their_own_labels(self) -> None:
        """
        A refused DPoP proof counts as invalid_dpop_proof, not as other.
        """
        client = self.register(scope="read")
        response = self.request(
            "POST",
            "/token",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": basic(client["client_id"], client["client_secret"]),
                "DPoP": "not-a-jwt",
            },
            data=b"grant_type=client_credentials",
        )
        self.assertEqual(response.json()["error"], "invalid_dpop_proof")
        self.assertEqual(self.value("ccserver_token_errors_total", error="invalid_dpop_proof"), 1)
        self.assertEqual(self.value("ccserver_token_errors_total", error="other"), 0)

    def test_token_errors(self) -> None:
        client = self.register(scope="read")
        self.token({"grant_type": "client_credentials"}, basic(client["client_id"], "wrong"))
        self.token({"grant_type": "password"}, basic(client["client_id"], client["client_secret"]))
        self.token({"grant_type": "client_credentials", "scope": "write"},
                   basic(client["client_id"], client["client_secret"]))
        self.assertEqual(self.value("ccserver_token_errors_total", error="invalid_client"), 1)
        self.assertEqual(self.value("ccserver_token_errors_total", error="unsupported_grant_type"), 1)
        self.assertEqual(self.value("ccserver_token_errors_total", error="invalid_scope"), 1)
        self.assertEqual(self.value("ccserver_tokens_issued_total",
                                    format="jwt", alg="ES256", auth_method="client_secret_basic"), 0)

    def test_unknown_error_code_is_other(self) -> None:
        """
        A grant handler may refuse with a code of its own: the label stays
        within a fixed set.
        """
        self.metrics.token_failed("my_very_own_error")
        self.assertEqual(self.value("ccserver_token_errors_total", error="other"), 1)
        self.assertEqual(self.value("ccserver_token_errors_total", error="my_very_own_error"), 0)

    def test_store_errors(self) -> None:
        self.store.down = True
        response = self.token({"grant_type": "client_credentials"}, basic("someone", "secret"))
        self.assertEqual(response.code, 503)
        response = self.request("GET", "/client-reg/someone",
                                headers={"Authorization": "Bearer whatever"})
        self.assertEqual(response.code, 503)
        self.assertEqual(self.value("ccserver_store_errors_total"), 2)
        self.assertEqual(
            self.value("ccserver_token_errors_total", error="temporarily_unavailable"), 1
        )

    def test_registrations(self) -> None:
        client = self.register(scope="read")
        auth = {"Authorization": f"Bearer {client['registration_access_token']}"}
        path = f"/client-reg/{client['client_id']}"
        self.assertEqual(self.request("GET", path, headers=auth).code, 200)
        self.assertEqual(self.request("DELETE", path, headers=auth).code, 204)
        # A refused one is not counted.
        self.request("POST", "/client-reg", headers={"Authorization": "Bearer nope"}, json_body={})
        self.assertEqual(self.value("ccserver_registrations_total", action="create"), 1)
        self.assertEqual(self.value("ccserver_registrations_total", action="read"), 1)
        self.assertEqual(self.value("ccserver_registrations_total", action="delete"), 1)

    def test_http_requests(self) -> None:
        self.metrics.request_finished(b"/token", 200, 0.001)
        self.metrics.request_finished(b"/token", 200, 0.002)
        self.metrics.request_finished(b"/client-reg/abc", 404, 0.003)
        self.metrics.request_finished(b"/wp-admin/x.php", 404, 0.004)
        self.assertEqual(self.value("ccserver_http_requests_total", route="/token", code="200"), 2)
        self.assertEqual(
            self.value(
                "ccserver_http_requests_total", route="/client-reg/{client_id}", code="404"
            ),
            1,
        )
        self.assertEqual(self.value("ccserver_http_requests_total", route="other", code="404"), 1)
        self.assertEqual(
            self.value("ccserver_http_request_duration_seconds_count", route="/token"), 2
        )
        self.assertAlmostEqual(
            self.value("ccserver_http_request_duration_seconds_sum", route="/token"), 0.003
        )
        self.assertEqual(
            self.value("ccserver_http_request_duration_seconds_bucket", route="/token", le="0.001"),
            1,
        )


class OpaqueCountedTests(MetricsTestCase):
    def make_config(self, **tokens: Any) -> Config:
        return super().make_config(format="opaque", **tokens)

    def test_tokens_issued(self) -> None:
        client = self.register(scope="read")
        self.token(
            {"grant_type": "client_credentials"},
            basic(client["client_id"], client["client_secret"]),
        )
        labels = {"format": "opaque", "alg": "none", "auth_method": "client_secret_basic"}
        self.assertEqual(self.value("ccserver_tokens_issued_total", **labels), 1)


class RouteTemplateTests(SynchronousTestCase):
    def test_templates(self) -> None:
        self.assertEqual(route_template(b"/token"), "/token")
        self.assertEqual(route_template(b"/client-reg/x1"), "/client-reg/{client_id}")
        self.assertEqual(route_template(b"/health/ready"), "/health/ready")
        for path in (b"/", b"/token/", b"/client-reg/a/b", b"/metrics", b"/\xff"):
            self.assertIsNone(route_template(path), path)

    def test_every_route_bound(self) -> None:
        self.assertIn("/token", ROUTES)
        self.assertIn("/client-reg/{client_id}", ROUTES)
        self.assertNotIn("other", ROUTES)


class RateLimitedTests(MetricsTestCase):
    def test_refusals_counted(self) -> None:
        """
        Each request a limit refuses (429) is counted under the limit's
        name, through the metrics the site was made with (no global).
        """
        client = self.register(scope="read")
        wrong = basic(client["client_id"], "not-the-secret")
        budget = self.config.limits.failed_auth_per_minute
        codes = [self.token({"grant_type": "client_credentials"}, wrong).code for _ in range(budget + 2)]
        self.assertEqual(codes, [401] * budget + [429, 429])
        self.assertEqual(self.value("ccserver_rate_limited_total", what="client_auth"), 2)


class WebhookTimingTests(SynchronousTestCase):
    def test_timed(self) -> None:
        metrics = new_metrics()
        answer: Deferred[GrantAuthorization] = Deferred()

        class Handler:
            def authorize(self, grant: Any) -> Deferred[GrantAuthorization]:
                return answer

        timed = metrics.observe_handler(Handler())
        decided = timed.authorize(object())
        self.assertNoResult(decided)
        answer.callback(GrantAuthorization(scope=["read"]))
        self.successResultOf(decided)
        count = metrics.registry.get_sample_value(
            "ccserver_webhook_request_duration_seconds_count", {}
        )
        self.assertEqual(count, 1)

    def test_failures_timed_too(self) -> None:
        metrics = new_metrics()

        class Handler:
            def authorize(self, grant: Any) -> Deferred[GrantAuthorization]:
                return fail(OAuthError("invalid_scope", "no"))

        self.failureResultOf(metrics.observe_handler(Handler()).authorize(object()), OAuthError)
        count = metrics.registry.get_sample_value(
            "ccserver_webhook_request_duration_seconds_count", {}
        )
        self.assertEqual(count, 1)


class ExpositionTests(SynchronousTestCase):
    def test_metrics_resource(self) -> None:
        metrics = new_metrics()
        metrics.token_failed("invalid_client")
        treq = StubTreq(metrics_root(scrape_registry(metrics.registry)))
        response = self.successResultOf(treq.get("http://metrics.example/metrics"))
        self.assertEqual(response.code, 200)
        self.assertTrue(
            response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain; version=")
        )
        text = self.successResultOf(response.text())
        self.assertIn('ccserver_token_errors_total{error="invalid_client"} 1.0', text)
        self.assertIn("process_cpu_seconds_total", text)
        self.assertIn("# TYPE ccserver_http_request_duration_seconds histogram", text)

    def test_only_metrics(self) -> None:
        treq = StubTreq(metrics_root(new_metrics().registry))
        response = self.successResultOf(treq.get("http://metrics.example/token"))
        self.assertEqual(response.code, 404)


class ConfigTests(SynchronousTestCase):
    def test_off_by_default(self) -> None:
        self.assertIsNone(load_config({}, {}).metrics.listen)

    def test_command_line(self) -> None:
        options = Options()
        options.parseOptions(["--store", "memory://", "--metrics", "tcp:9108"])
        self.assertEqual(load_config(options.command_line(), {}).metrics.listen, "tcp:9108")

    def test_file(self) -> None:
        path = str(temp_dir(self) / "ccserver.toml")
        with open(path, "w") as f:
            f.write('[metrics]\nlisten = "tcp:9109:interface=127.0.0.1"\n')
        config = load_config({"config": path}, {})
        self.assertEqual(config.metrics.listen, "tcp:9109:interface=127.0.0.1")
        config = load_config({"config": path, "metrics": "tcp:9110"}, {})
        self.assertEqual(config.metrics.listen, "tcp:9110")
