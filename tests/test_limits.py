"""
Brute-force limits (issue 13): failed authentication counted per client and
source (per source for bearer tokens), 429 with Retry-After past the
budget, the source from X-Forwarded-For only through trusted proxies, and
the optional per-client issuance limit.  In memory, on a Clock; the shared
counters have their contract tests (tests/test_store_contract.py) and a
cross-instance test (tests/test_instances.py).
"""

from __future__ import annotations

from typing import Any

from attrs import evolve
from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from ccserver.config import Config, LimitsConfig
from ccserver.interfaces import IStore
from ccserver.proxies import trusted_networks
from ccserver.stores.memory import MemoryStore
from ccserver.web import source_address
from tests.helpers import MASTER_TOKEN, Response, ServerTestCase, basic

ATTACKER = "203.0.113.7"
OTHER = "198.51.100.20"


class RecordingStore(MemoryStore):
    """
    A memory store that records the name of every call made to it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if callable(value) and not name.startswith("_") and name != "calls":
            self.calls.append(name)
        return value


class LimitsTestCase(ServerTestCase):
    """
    The server behind a trusted proxy at 127.0.0.1 (StubTreq's peer), so
    that a test names each request's source in X-Forwarded-For.
    """

    limits = LimitsConfig(trusted_proxies=("127.0.0.1",))

    def make_config(self, **tokens: Any) -> Config:
        return evolve(super().make_config(**tokens), limits=self.limits)

    def setUp(self) -> None:
        super().setUp()
        self.client = self.register(scope="read")
        self.other_client = self.register(scope="read")

    def attempt(
        self, client: dict[str, Any], *, right: bool = False, source: str = ATTACKER
    ) -> Response:
        secret = client["client_secret"] if right else "wrong-" + client["client_secret"]
        return self.request(
            "POST",
            "/token",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": basic(client["client_id"], secret),
                "X-Forwarded-For": source,
            },
            data=b"grant_type=client_credentials",
        )

    def fail(self, client: dict[str, Any], times: int, source: str = ATTACKER) -> None:
        for _ in range(times):
            self.assertEqual(self.attempt(client, source=source).code, 401)

    def assertRefused(self, response: Response, retry_after: int = 60) -> None:
        self.assertEqual(response.code, 429, response.body)
        self.assertEqual(response.headers["retry-after"], str(retry_after))
        self.assertEqual(response.json()["error"], "invalid_request")
        self.assertIn("too many", response.json()["error_description"])
        self.assertEqual(response.headers["cache-control"], "no-store")


class ClientAuthLimitTests(LimitsTestCase):
    def test_budget_then_429(self) -> None:
        """
        Ten failures in a minute are answered as themselves; past them the
        source gets 429 with Retry-After, even with the right secret: the
        check comes before the credentials', so guessing on is useless.
        """
        self.fail(self.client, 10)
        self.assertRefused(self.attempt(self.client))
        self.assertRefused(self.attempt(self.client, right=True))

    def test_retry_after_counts_down(self) -> None:
        self.fail(self.client, 10)
        self.clock.advance(45)
        self.assertRefused(self.attempt(self.client, right=True), retry_after=15)

    def test_window_passes(self) -> None:
        self.fail(self.client, 10)
        self.clock.advance(60)
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        # a new window: the budget again
        self.fail(self.client, 10)
        self.assertRefused(self.attempt(self.client))

    def test_failures_spread_over_windows_are_not_refused(self) -> None:
        for _ in range(3):
            self.fail(self.client, 9)
            self.clock.advance(61)
        self.assertEqual(self.attempt(self.client, right=True).code, 200)

    def test_other_source_unaffected(self) -> None:
        self.fail(self.client, 10)
        self.assertEqual(self.attempt(self.client, right=True, source=OTHER).code, 200)
        self.assertEqual(self.attempt(self.client, source=OTHER).code, 401)

    def test_other_client_from_same_source_unaffected(self) -> None:
        self.fail(self.client, 10)
        self.assertRefused(self.attempt(self.client))
        self.assertEqual(self.attempt(self.other_client, right=True).code, 200)
        self.assertEqual(self.attempt(self.other_client).code, 401)

    def test_success_does_not_reset_another_clients_count(self) -> None:
        self.fail(self.client, 9)
        self.assertEqual(self.attempt(self.other_client, right=True).code, 200)
        self.fail(self.client, 1)
        self.assertRefused(self.attempt(self.client))

    def test_success_does_not_reset_the_count(self) -> None:
        """
        A right guess in between does not buy an attacker a new budget.
        """
        self.fail(self.client, 9)
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        self.fail(self.client, 1)
        self.assertRefused(self.attempt(self.client))

    def test_spoofed_hops_left_of_the_proxy_ignored(self) -> None:
        """
        Behind a trusted proxy, an attacker who makes up entries of its own
        (left of the one the proxy appended) is still counted as itself.
        """
        for n in range(10):
            self.assertEqual(self.attempt(self.client, source=f"192.0.2.{n}, {ATTACKER}").code, 401)
        self.assertRefused(self.attempt(self.client, right=True, source=f"10.9.9.9, {ATTACKER}"))

    def test_unknown_client_counted(self) -> None:
        nobody = {"client_id": "nobody", "client_secret": "x"}
        self.fail(nobody, 10)
        self.assertRefused(self.attempt(nobody))

    def test_introspection_and_revocation_count_with_the_token_endpoint(self) -> None:
        self.fail(self.client, 8)
        for path in ("/token/introspect", "/token/revoke"):
            response = self.request(
                "POST",
                path,
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Authorization": basic(self.client["client_id"], "wrong"),
                    "X-Forwarded-For": ATTACKER,
                },
                data=b"token=x",
            )
            self.assertEqual(response.code, 401)
        self.assertRefused(self.attempt(self.client, right=True))

    def test_other_errors_are_not_counted(self) -> None:
        """
        Only a failed authentication counts: a client's malformed requests
        (here, an unsupported grant type) do not use its budget.
        """
        for _ in range(20):
            response = self.request(
                "POST",
                "/token",
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Authorization": basic(self.client["client_id"], "wrong"),
                    "X-Forwarded-For": ATTACKER,
                },
                data=b"grant_type=password",
            )
            self.assertEqual(response.code, 400)
        self.assertEqual(self.attempt(self.client, right=True).code, 200)


class BearerLimitTests(LimitsTestCase):
    def register_with(self, token: str, source: str = ATTACKER) -> Response:
        return self.request(
            "POST",
            "/client-reg",
            headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": source},
            json_body={"scope": "read"},
        )

    def test_master_token_budget(self) -> None:
        for _ in range(10):
            self.assertEqual(self.register_with("wrong-master-token-0123456789").code, 401)
        self.assertRefused(self.register_with("wrong-master-token-0123456789"))
        self.assertRefused(self.register_with(MASTER_TOKEN))
        self.assertEqual(self.register_with(MASTER_TOKEN, source=OTHER).code, 201)
        self.clock.advance(60)
        self.assertEqual(self.register_with(MASTER_TOKEN).code, 201)

    def test_registration_tokens_and_revocation_count_per_source(self) -> None:
        """
        Wrong registration access tokens (for any client), and wrong master
        tokens at the registration and revocation endpoints, all count
        against the source.
        """
        path = f"/client-reg/{self.client['client_id']}"
        other_path = f"/client-reg/{self.other_client['client_id']}"
        wrong = {"Authorization": "Bearer wrong", "X-Forwarded-For": ATTACKER}
        for where in (path, other_path) * 3:
            self.assertEqual(self.request("GET", where, headers=wrong).code, 401)
        for _ in range(3):
            response = self.request(
                "POST",
                "/token/revoke",
                headers={**wrong, "Content-Type": "application/x-www-form-urlencoded"},
                data=b"token=x",
            )
            self.assertEqual(response.code, 401)
        self.assertEqual(self.register_with("wrong").code, 401)
        rat = self.client["registration_access_token"]
        right = {"Authorization": f"Bearer {rat}", "X-Forwarded-For": ATTACKER}
        self.assertRefused(self.request("GET", path, headers=right))
        # the token endpoint is another matter
        self.assertEqual(self.attempt(self.client, right=True).code, 200)

    def test_missing_token_not_counted(self) -> None:
        for _ in range(20):
            response = self.request(
                "GET",
                f"/client-reg/{self.client['client_id']}",
                headers={"X-Forwarded-For": ATTACKER},
            )
            self.assertEqual(response.code, 401)
        self.assertEqual(self.register_with(MASTER_TOKEN).code, 201)


class ForwardedForTests(ServerTestCase):
    """
    Without trusted proxies, X-Forwarded-For is nobody's word.
    """

    def test_untrusted_header_ignored(self) -> None:
        client = self.register(scope="read")
        for n in range(10):
            response = self.request(
                "POST",
                "/token",
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Authorization": basic(client["client_id"], "wrong"),
                    "X-Forwarded-For": f"192.0.2.{n}",
                },
                data=b"grant_type=client_credentials",
            )
            self.assertEqual(response.code, 401)
        response = self.request(
            "POST",
            "/token",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": basic(client["client_id"], client["client_secret"]),
                "X-Forwarded-For": "192.0.2.200",
            },
            data=b"grant_type=client_credentials",
        )
        self.assertEqual(response.code, 429)


def _request(peer: str, forwarded: list[str] | None = None) -> DummyRequest:
    request = DummyRequest([b""])
    request.client = IPv4Address("TCP", peer, 4711)
    for value in forwarded or ():
        request.requestHeaders.addRawHeader(b"X-Forwarded-For", value.encode())
    return request


class SourceAddressTests(SynchronousTestCase):
    trusted = trusted_networks(["10.0.0.0/8", "2001:db8::1"])

    def test_peer_without_trusted_proxies(self) -> None:
        self.assertEqual(source_address(_request("192.0.2.1", ["203.0.113.7"])), "192.0.2.1")

    def test_untrusted_peer_header_ignored(self) -> None:
        request = _request("192.0.2.1", ["203.0.113.7"])
        self.assertEqual(source_address(request, self.trusted), "192.0.2.1")

    def test_rightmost_untrusted_hop(self) -> None:
        request = _request("10.0.0.1", ["1.1.1.1, 203.0.113.7, 10.0.0.2"])
        self.assertEqual(source_address(request, self.trusted), "203.0.113.7")

    def test_several_headers_are_one_list(self) -> None:
        request = _request("10.0.0.1", ["1.1.1.1", "203.0.113.7", "10.0.0.2"])
        self.assertEqual(source_address(request, self.trusted), "203.0.113.7")

    def test_ports_and_brackets(self) -> None:
        request = _request("10.0.0.1", ["203.0.113.7:4711"])
        self.assertEqual(source_address(request, self.trusted), "203.0.113.7")
        request = _request("10.0.0.1", ["[2001:db8::7]:4711"])
        self.assertEqual(source_address(request, self.trusted), "2001:db8::7")

    def test_all_trusted(self) -> None:
        request = _request("10.0.0.1", ["10.0.0.3, 2001:db8::1"])
        self.assertEqual(source_address(request, self.trusted), "10.0.0.3")

    def test_no_header_from_trusted_peer(self) -> None:
        self.assertEqual(source_address(_request("10.0.0.1"), self.trusted), "10.0.0.1")

    def test_garbage_hop_stops_at_the_proxy(self) -> None:
        request = _request("10.0.0.1", ['evil" injected, 10.0.0.2'])
        self.assertEqual(source_address(request, self.trusted), "10.0.0.2")

    def test_bad_trusted_proxy(self) -> None:
        with self.assertRaises(ValueError):
            trusted_networks(["10.0.0.0/33"])


class AccessLogSourceTests(LimitsTestCase):
    def test_access_log_names_the_forwarded_source(self) -> None:
        from ccserver.web import _access_log

        request = _request("127.0.0.1", [ATTACKER])
        request.site = self.site  # type: ignore[attr-defined]
        request.uri = b"/token"
        request.clientproto = b"HTTP/1.1"
        request.code = 200
        request.sentLength = 0
        self.assertTrue(_access_log("[ts]", request).startswith(f'"{ATTACKER}" '))  # type: ignore[arg-type]
        self.site.trusted_proxies = ()
        self.assertTrue(_access_log("[ts]", request).startswith('"127.0.0.1" '))  # type: ignore[arg-type]


class NoRoundTripTests(LimitsTestCase):
    def make_store(self) -> IStore:
        self.recording = RecordingStore()
        return self.recording

    def test_success_of_a_cached_client_costs_no_store_call(self) -> None:
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        del self.recording.calls[:]
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        self.assertEqual(self.recording.calls, [])

    def test_refusal_costs_no_store_call(self) -> None:
        self.fail(self.client, 10)
        del self.recording.calls[:]
        self.assertRefused(self.attempt(self.client))
        self.assertEqual(self.recording.calls, [])

    def test_only_failures_write(self) -> None:
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        del self.recording.calls[:]
        self.fail(self.client, 1)
        self.assertEqual(self.recording.calls, ["count_failure"])


class LimitOffTests(LimitsTestCase):
    limits = LimitsConfig(failed_auth_per_minute=0, trusted_proxies=("127.0.0.1",))

    def test_no_limit(self) -> None:
        self.fail(self.client, 30)
        self.assertEqual(self.attempt(self.client, right=True).code, 200)


class IssuanceLimitTests(LimitsTestCase):
    limits = LimitsConfig(tokens_per_client_per_second=2, trusted_proxies=("127.0.0.1",))

    def test_rate(self) -> None:
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        response = self.attempt(self.client, right=True)
        self.assertEqual(response.code, 429, response.body)
        self.assertEqual(response.headers["retry-after"], "1")
        self.assertEqual(response.json()["error"], "invalid_request")
        # other clients have buckets of their own
        self.assertEqual(self.attempt(self.other_client, right=True).code, 200)
        self.clock.advance(0.5)
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        self.assertEqual(self.attempt(self.client, right=True).code, 429)

    def test_off_by_default(self) -> None:
        self.assertIsNone(Config().limits.tokens_per_client_per_second)
        self.assertEqual(Config().limits.failed_auth_per_minute, 10)


class LimitsConfigTests(SynchronousTestCase):
    def load(self, text: str) -> Config:
        from pathlib import Path

        from ccserver.config import load_config
        from tests.helpers import temp_dir

        path = Path(temp_dir(self)) / "ccserver.toml"
        path.write_text(text)
        return load_config({"config": str(path)}, {})

    def test_values(self) -> None:
        config = self.load(
            "[limits]\nfailed_auth_per_minute = 5\ntrusted_proxies = ['10.0.0.0/8', '::1']\n"
            "tokens_per_client_per_second = 50\n"
        )
        self.assertEqual(
            config.limits, LimitsConfig(5, ("10.0.0.0/8", "::1"), 50.0)
        )

    def test_mistakes_name_the_key(self) -> None:
        from ccserver.errors import ConfigError

        for text, key in [
            ("failed_auth_per_minute = -1", "[limits] failed_auth_per_minute"),
            ("trusted_proxies = ['10.0.0.0/33']", "[limits] trusted_proxies"),
            ("trusted_proxies = ['proxy.example.com']", "[limits] trusted_proxies"),
            ("trusted_proxies = [1]", "[limits] trusted_proxies"),
            ("tokens_per_client_per_second = 0", "[limits] tokens_per_client_per_second"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.load(f"[limits]\n{text}\n")
            self.assertTrue(str(caught.exception).startswith(key), str(caught.exception))
