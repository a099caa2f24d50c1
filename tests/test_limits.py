"""
Brute-force limits: a slot reserved before each credential check, per
credential and source, within a budget; a cap across the sources not known
for a credential; the master token and each client's registration access
token apart; 429 with Retry-After past a budget; the source from
X-Forwarded-For only through trusted proxies (and a warning when a proxy
nobody trusts sends it); the optional per-client issuance limit.  In
memory, on a Clock; the store primitive and a burst through the limits on
every store are in tests/test_store_contract.py, real processes with
--workers 2 in tests/test_limits_process.py.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from attrs import evolve
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from ccserver.config import Config, LimitsConfig
from ccserver.errors import OAuthError, StoreUnavailable, invalid_client, invalid_request
from ccserver.interfaces import IStore
from ccserver.model import AttemptKeys, AttemptRelease, Reservation
from ccserver.oauth.clientauth import JWT_BEARER
from ccserver.oauth.limits import (
    CLIENT,
    LEASE_MARGIN,
    RECHECK_SECONDS,
    REGISTRATION_ACCESS_TOKEN,
    STORE_RETRY_SECONDS,
    AuthLimits,
)
from ccserver.proxies import trusted_networks
from ccserver.stores.memory import MemoryStore
from ccserver.web import RequestSources, source_address
from tests.helpers import MASTER_TOKEN, Response, ServerTestCase, basic, config_of

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

    def post_form(
        self, path: str, data: bytes, authorization: str | None = None, source: str = ATTACKER
    ) -> Response:
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-For": source}
        if authorization is not None:
            headers["Authorization"] = authorization
        return self.request("POST", path, headers=headers, data=data)

    def attempt(
        self, client: dict[str, Any], *, right: bool = False, source: str = ATTACKER
    ) -> Response:
        secret = client["client_secret"] if right else "wrong-" + client["client_secret"]
        return self.post_form(
            "/token", b"grant_type=client_credentials", basic(client["client_id"], secret), source
        )

    def fail_auth(self, client: dict[str, Any], times: int, source: str = ATTACKER) -> None:
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
        self.fail_auth(self.client, 10)
        self.assertRefused(self.attempt(self.client))
        self.assertRefused(self.attempt(self.client, right=True))

    def test_retry_after_counts_down(self) -> None:
        self.fail_auth(self.client, 10)
        self.clock.advance(45)
        self.assertRefused(self.attempt(self.client, right=True), retry_after=15)

    def test_window_passes(self) -> None:
        self.fail_auth(self.client, 10)
        self.clock.advance(60)
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        # a new window: the budget again
        self.fail_auth(self.client, 10)
        self.assertRefused(self.attempt(self.client))

    def test_failures_spread_over_windows_are_not_refused(self) -> None:
        for _ in range(3):
            self.fail_auth(self.client, 9)
            self.clock.advance(61)
        self.assertEqual(self.attempt(self.client, right=True).code, 200)

    def test_other_source_unaffected(self) -> None:
        self.fail_auth(self.client, 10)
        self.assertEqual(self.attempt(self.client, right=True, source=OTHER).code, 200)
        self.assertEqual(self.attempt(self.client, source=OTHER).code, 401)

    def test_other_client_from_same_source_unaffected(self) -> None:
        self.fail_auth(self.client, 10)
        self.assertRefused(self.attempt(self.client))
        self.assertEqual(self.attempt(self.other_client, right=True).code, 200)
        self.assertEqual(self.attempt(self.other_client).code, 401)

    def test_success_does_not_reset_another_clients_count(self) -> None:
        self.fail_auth(self.client, 9)
        self.assertEqual(self.attempt(self.other_client, right=True).code, 200)
        self.fail_auth(self.client, 1)
        self.assertRefused(self.attempt(self.client))

    def test_success_does_not_reset_the_count(self) -> None:
        """
        A right guess in between does not buy an attacker a new budget.
        """
        self.fail_auth(self.client, 9)
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        self.fail_auth(self.client, 1)
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
        self.fail_auth(nobody, 10)
        self.assertRefused(self.attempt(nobody))

    def test_assertion_counted_for_the_client_it_names(self) -> None:
        """
        An assertion sent without client_id is counted for the client its
        sub names, as the verifier looks that client up: not under one
        budget shared by every such request.
        """
        def junk(sub: str) -> bytes:
            segments = [
                base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")
                for part in ({"alg": "ES256"}, {"iss": sub, "sub": sub})
            ]
            assertion = b".".join([*segments, b"AAAA"]).decode()
            return urlencode(
                {
                    "grant_type": "client_credentials",
                    "client_assertion_type": JWT_BEARER,
                    "client_assertion": assertion,
                }
            ).encode()

        for _ in range(10):
            response = self.post_form("/token", junk(self.client["client_id"]))
            self.assertEqual(response.code, 401, response.body)
        self.assertRefused(self.attempt(self.client, right=True))
        self.assertEqual(self.attempt(self.other_client, right=True).code, 200)

    def test_introspection_and_revocation_count_with_the_token_endpoint(self) -> None:
        self.fail_auth(self.client, 8)
        for path in ("/token/introspect", "/token/revoke"):
            response = self.post_form(path, b"token=x", basic(self.client["client_id"], "wrong"))
            self.assertEqual(response.code, 401)
        self.assertRefused(self.attempt(self.client, right=True))

    def test_other_errors_are_not_counted(self) -> None:
        """
        Only a failed authentication counts: a client's malformed requests
        (here, an unsupported grant type) do not use its budget.
        """
        for _ in range(20):
            response = self.post_form(
                "/token", b"grant_type=password", basic(self.client["client_id"], "wrong")
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

    def read(self, client: dict[str, Any], token: str, source: str = ATTACKER) -> Response:
        return self.request(
            "GET",
            f"/client-reg/{client['client_id']}",
            headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": source},
        )

    def revoke_with(self, token: str, source: str = ATTACKER) -> Response:
        return self.post_form("/token/revoke", b"token=x", f"Bearer {token}", source)

    def test_master_token_counts_at_every_endpoint(self) -> None:
        """
        Wrong master tokens at registration, rotation and revocation share
        one budget per address.
        """
        for _ in range(4):
            self.assertEqual(self.register_with("wrong-master-token-0123456789").code, 401)
            self.assertEqual(self.revoke_with("wrong-master-token-0123456789").code, 401)
        for _ in range(2):
            response = self.request(
                "POST",
                f"/client-reg/{self.client['client_id']}/rotate-secret",
                headers={"Authorization": "Bearer wrong", "X-Forwarded-For": ATTACKER},
            )
            self.assertEqual(response.code, 401, response.body)
        self.assertRefused(self.register_with(MASTER_TOKEN))
        self.assertRefused(self.revoke_with(MASTER_TOKEN))

    def test_registration_token_guesses_leave_the_master_token_alone(self) -> None:
        """
        A client's registration access token has a budget of its own: past
        it, that client's configuration endpoint refuses the address, and
        nothing else does (the master token, other clients' tokens).
        """
        for _ in range(10):
            self.assertEqual(self.read(self.client, "wrong").code, 401)
        self.assertRefused(self.read(self.client, self.client["registration_access_token"]))
        self.assertEqual(self.register_with(MASTER_TOKEN).code, 201)
        self.assertEqual(self.revoke_with(MASTER_TOKEN).code, 200)
        other = self.read(self.other_client, self.other_client["registration_access_token"])
        self.assertEqual(other.code, 200, other.body)
        self.assertEqual(self.attempt(self.client, right=True).code, 200)

    def test_master_token_guesses_leave_registration_tokens_alone(self) -> None:
        for _ in range(10):
            self.assertEqual(self.register_with("wrong-master-token-0123456789").code, 401)
        self.assertRefused(self.register_with(MASTER_TOKEN))
        own = self.read(self.client, self.client["registration_access_token"])
        self.assertEqual(own.code, 200, own.body)
        for _ in range(9):
            self.assertEqual(self.read(self.client, "wrong").code, 401)
        own = self.read(self.client, self.client["registration_access_token"])
        self.assertEqual(own.code, 200, own.body)

    def test_master_token_through_many_client_ids_bounded(self) -> None:
        """
        The master token is accepted at every client's configuration
        endpoint too; tried there, it has one budget per address for all
        of them, so that an attacker who knows many client ids gets no
        more guesses.  Past it, a wrong token there is answered 429 (the
        master token could not be tried), the client's own token still
        works, and so does the master token at registration.
        """
        clients = [self.register(scope="read") for _ in range(11)]
        for client in clients[:10]:
            self.assertEqual(self.read(client, "wrong-master-token-0123456789").code, 401)
        self.assertRefused(self.read(clients[10], "wrong-master-token-0123456789"))
        self.assertRefused(self.read(clients[10], MASTER_TOKEN))
        own = self.read(clients[10], clients[10]["registration_access_token"])
        self.assertEqual(own.code, 200, own.body)
        self.assertEqual(self.register_with(MASTER_TOKEN).code, 201)
        self.clock.advance(60)
        self.assertEqual(self.read(clients[10], MASTER_TOKEN).code, 200)

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
        from ccserver.web import access_line_of

        request = _request("127.0.0.1", [ATTACKER])
        request.site = self.site  # type: ignore[attr-defined]
        request.uri = b"/token"
        request.clientproto = b"HTTP/1.1"
        request.code = 200
        request.sentLength = 0
        line = access_line_of(request, "[ts]")  # type: ignore[arg-type]
        self.assertTrue(line.startswith(f'"{ATTACKER}" '.encode()), line)
        self.site.trusted_proxies = ()
        line = access_line_of(request, "[ts]")  # type: ignore[arg-type]
        self.assertTrue(line.startswith(b'"127.0.0.1" '), line)


class NoRoundTripTests(LimitsTestCase):
    """
    What the limits cost in store round trips.
    """

    def make_store(self) -> IStore:
        self.recording = RecordingStore()
        return self.recording

    def test_success_of_a_cached_client_costs_no_store_call(self) -> None:
        """
        The first success from an address reserves a slot and records the
        address as known; the process keeps the slot, so that the next
        successes of its window cost nothing.
        """
        del self.recording.calls[:]
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        self.assertEqual(self.recording.calls, ["reserve_attempt", "get_client", "release_attempt"])
        del self.recording.calls[:]
        for _ in range(100):
            self.assertEqual(self.attempt(self.client, right=True).code, 200)
        self.assertEqual(self.recording.calls, [])

    def test_kept_slot_ends_with_its_window(self) -> None:
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        self.clock.advance(60 - LEASE_MARGIN - 0.5)
        del self.recording.calls[:]
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        self.assertEqual(self.limit_calls(), [])
        self.clock.advance(0.5)
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        # the window's last seconds: the kept slot is parked for them (its
        # checks take it as it is, still counted in the store): no round
        # trip, where a reservation and a release each once went
        self.assertEqual(self.limit_calls(), [])
        self.clock.advance(LEASE_MARGIN - 0.6)
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        self.assertEqual(self.limit_calls(), [])
        self.clock.advance(0.6)
        del self.recording.calls[:]
        for _ in range(3):
            self.assertEqual(self.attempt(self.client, right=True).code, 200)
        # a new window: one reservation, kept (the address is known already)
        self.assertEqual(self.limit_calls(), ["reserve_attempt"])

    def limit_calls(self) -> list[str]:
        return [call for call in self.recording.calls if call.endswith("_attempt")]

    def test_refusal_remembered(self) -> None:
        """
        A refused address is refused by the process itself for a second,
        then the store is asked again.
        """
        self.fail_auth(self.client, 10)
        self.assertRefused(self.attempt(self.client))
        del self.recording.calls[:]
        self.assertRefused(self.attempt(self.client))
        self.assertRefused(self.attempt(self.client, right=True))
        self.assertEqual(self.recording.calls, [])
        self.clock.advance(RECHECK_SECONDS)
        self.assertRefused(self.attempt(self.client), retry_after=59)
        self.assertEqual(self.recording.calls, ["reserve_attempt"])

    def test_failure_costs_one_reservation(self) -> None:
        del self.recording.calls[:]
        self.fail_auth(self.client, 1)
        self.assertEqual(self.limit_calls(), ["reserve_attempt"])


class LimitOffTests(LimitsTestCase):
    limits = LimitsConfig(failed_auth_per_minute=0, trusted_proxies=("127.0.0.1",))

    def test_no_limit(self) -> None:
        self.fail_auth(self.client, 30)
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
        return config_of(self, text)

    def test_values(self) -> None:
        config = self.load(
            "[limits]\nfailed_auth_per_minute = 5\ntrusted_proxies = ['10.0.0.0/8', '::1']\n"
            "tokens_per_client_per_second = 50\n"
        )
        self.assertEqual(
            config.limits,
            LimitsConfig(
                failed_auth_per_minute=5,
                trusted_proxies=("10.0.0.0/8", "::1"),
                tokens_per_client_per_second=50.0,
            ),
        )
        config = self.load(
            "[limits]\nfailed_auth_per_client_per_minute = 100\nknown_source_seconds = 3600\n"
        )
        self.assertEqual(config.limits.failed_auth_per_client_per_minute, 100)
        self.assertEqual(config.limits.known_source_seconds, 3600)

    def test_defaults(self) -> None:
        limits = Config().limits
        self.assertEqual(limits.failed_auth_per_minute, 10)
        self.assertEqual(limits.failed_auth_per_client_per_minute, 30)
        self.assertEqual(limits.known_source_seconds, 86400)

    def test_mistakes_name_the_key(self) -> None:
        from ccserver.errors import ConfigError

        for text, key in [
            ("failed_auth_per_minute = -1", "[limits] failed_auth_per_minute"),
            (
                "failed_auth_per_client_per_minute = -1",
                "[limits] failed_auth_per_client_per_minute",
            ),
            ("known_source_seconds = 59", "[limits] known_source_seconds"),
            ("trusted_proxies = ['10.0.0.0/33']", "[limits] trusted_proxies"),
            ("trusted_proxies = ['proxy.example.com']", "[limits] trusted_proxies"),
            ("trusted_proxies = [1]", "[limits] trusted_proxies"),
            ("tokens_per_client_per_second = 0", "[limits] tokens_per_client_per_second"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.load(f"[limits]\n{text}\n")
            self.assertTrue(str(caught.exception).startswith(key), str(caught.exception))


class HeldChecks:
    """
    A fake credential check that counts the checks made and stays under
    way until the test settles it, so that a burst's checks are in flight
    together.  A check of the right credential succeeds; any other fails
    with C{error}.
    """

    def __init__(self) -> None:
        self.count = 0
        self.under_way: list[Deferred[None]] = []

    def check(self, right: bool, error: OAuthError | None = None) -> Callable[[], Awaitable[str]]:
        async def check() -> str:
            self.count += 1
            held: Deferred[None] = Deferred()
            self.under_way.append(held)
            await held
            if not right:
                raise error or invalid_client()
            return "client"

        return check

    def settle(self) -> None:
        """
        Let every check under way answer, and those they let start, until
        none is left.
        """
        while self.under_way:
            self.under_way.pop(0).callback(None)


def status(attempt: Awaitable[object]) -> Deferred[int]:
    """
    The HTTP status an attempt is answered with, once it is.
    """

    async def answer() -> int:
        try:
            await attempt
        except OAuthError as error:
            return error.status
        except StoreUnavailable:
            return 503
        return 200

    return ensureDeferred(answer())


class LimiterTestCase(SynchronousTestCase):
    """
    L{AuthLimits} over a memory store, on a Clock, with checks that the
    test settles (L{HeldChecks}).
    """

    #: the limits' cap across addresses (0: none)
    cap = 0

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore()
        self.checks = HeldChecks()
        self.limits = self.make_limits()

    def make_limits(self) -> AuthLimits:
        """
        Limits over this test's store: another call makes another process.
        """
        return AuthLimits(self.store, self.clock.seconds, budget=10, cap=self.cap, known_for=3600)


class ForgettingTests(LimiterTestCase):
    """
    A process forgets the counter of a credential nothing uses any more
    once its kept slots end (a client seen once, since deleted; a secret
    since rotated): it costs memory for a window, not until the table
    holds L{ccserver.oauth.limits.MAX_ENTRIES}.  The soak found them
    piling up (bench/README.md, "Soak").
    """

    def attempt(self, client_id: str) -> Deferred[int]:
        return status(self.limits.client(client_id, ATTACKER, self.checks.check(True)))

    def succeed(self, client_id: str) -> None:
        answer = self.attempt(client_id)
        self.checks.settle()
        self.assertEqual(self.successResultOf(answer), 200)

    def test_unused_counters_dropped_after_their_window(self) -> None:
        for n in range(50):
            self.succeed(f"gone-{n}")
        # each keeps a slot for its client's next check
        self.assertEqual(self.limits.counters(), 50)
        self.clock.advance(60)
        self.succeed("new")
        self.assertEqual(self.limits.counters(), 1)

    def test_counters_in_use_kept(self) -> None:
        """
        A counter with a check under way, or with a slot kept in a window
        not ended, is kept; it goes once its window ends.
        """
        self.succeed("old")
        self.clock.advance(50)
        self.succeed("kept")
        under_way = self.attempt("busy")
        self.clock.advance(10)
        self.succeed("new")
        self.assertEqual(self.limits.counters(), 3)
        self.assertEqual(self.successResultOf(under_way), 200)
        self.clock.advance(60)
        self.succeed("newer")
        # every other window has ended
        self.assertEqual(self.limits.counters(), 1)

    def test_next_check_after_the_drop(self) -> None:
        """
        A client whose counter was dropped starts afresh: its next check
        reserves a slot again, within the budget.
        """
        self.succeed("c")
        self.clock.advance(60)
        self.succeed("other")
        self.assertEqual(self.limits.counters(), 1)
        for _ in range(3):
            self.succeed("c")
        self.assertEqual(self.limits.counters(), 2)


class ReservationTests(LimiterTestCase):
    """
    A slot is reserved before each check, however many arrive at once.
    """

    def burst(
        self, count: int, right_at: int | None = None, limiters: list[AuthLimits] | None = None
    ) -> Counter[int]:
        """
        C{count} attempts at once from one address (the right credential
        at C{right_at}), spread over C{limiters} (processes); the answers'
        statuses once every check is settled.
        """
        limiters = limiters or [self.limits]
        answers = [
            status(limiters[n % len(limiters)].client("c", ATTACKER, self.checks.check(n == right_at)))
            for n in range(count)
        ]
        self.checks.settle()
        return Counter(self.successResultOf(answer) for answer in answers)

    def test_burst_checks_no_more_than_the_budget(self) -> None:
        """
        500 attempts at once, the right one last: exactly 10 checks; the
        right one is refused without being checked.
        """
        self.assertEqual(self.burst(500, right_at=499), {401: 10, 429: 490})
        self.assertEqual(self.checks.count, 10)

    def test_burst_over_two_processes(self) -> None:
        self.assertEqual(
            self.burst(500, right_at=499, limiters=[self.limits, self.make_limits()]),
            {401: 10, 429: 490},
        )
        self.assertEqual(self.checks.count, 10)

    def test_checks_under_way_count(self) -> None:
        """
        A process has at most half the budget of checks of one counter
        under way; the other requests wait, unchecked.  Two processes with
        the budget under way refuse a third's request unchecked, and once
        those checks fail, the waiting requests are refused, unchecked.
        """
        other = self.make_limits()
        answers = [
            status(limits.client("c", ATTACKER, self.checks.check(False)))
            for limits in [self.limits] * 7 + [other] * 5
        ]
        self.assertEqual(self.checks.count, 10)
        third = status(self.make_limits().client("c", ATTACKER, self.checks.check(True)))
        self.assertEqual(self.successResultOf(third), 429)
        self.checks.settle()
        self.assertEqual(self.checks.count, 10)
        self.assertEqual(Counter(self.successResultOf(a) for a in answers), {401: 10, 429: 2})

    def test_right_credential_within_the_budget(self) -> None:
        """
        A success gives its slot back: the right credential among the
        first ten leaves the budget of ten failures whole.
        """
        self.assertEqual(self.burst(500, right_at=0), {200: 1, 401: 10, 429: 489})
        self.assertEqual(self.checks.count, 11)

    def test_refused_unchecked_until_the_window_ends(self) -> None:
        self.burst(10)
        self.clock.advance(30)
        self.assertEqual(self.burst(5, right_at=4), {429: 5})
        self.clock.advance(30)
        self.assertEqual(self.burst(1, right_at=0), {200: 1})
        self.assertEqual(self.checks.count, 11)

    def test_other_errors_give_the_slot_back(self) -> None:
        """
        A check that ends with an error other than a failed
        authentication (a malformed request, a store outage) uses none of
        the budget.
        """
        for error in [invalid_request("malformed"), None]:
            check = self.checks.check(False, error) if error else self.failing_store_check()
            for _ in range(20):
                answer = status(self.limits.client("c", ATTACKER, check))
                self.checks.settle()
                self.assertIn(self.successResultOf(answer), (400, 503))
        self.assertEqual(self.burst(20), {401: 10, 429: 10})

    def failing_store_check(self) -> Callable[[], Awaitable[str]]:
        async def check() -> str:
            raise StoreUnavailable("down")

        return check

    def test_waiting_requests_share_kept_slots(self) -> None:
        """
        A client's own burst is not refused for being many: a process
        reserves up to half the budget, the other requests wait for the
        slots the successes keep, and take them in turn.
        """
        self.store = RecordingStore()
        self.limits = self.make_limits()
        answers = [
            status(self.limits.client("c", ATTACKER, self.checks.check(True))) for _ in range(50)
        ]
        self.checks.settle()
        self.assertEqual(Counter(self.successResultOf(a) for a in answers), {200: 50})
        self.assertEqual(self.store.calls.count("reserve_attempt"), 5)

    def test_known_address_recorded_once_under_a_burst(self) -> None:
        """
        The successes of a burst that come while the write recording the
        address as known is under way do not write it again.
        """
        slow = SlowReleaseStore()
        limits = AuthLimits(slow, self.clock.seconds, budget=10, cap=30)
        answers = [status(limits.client("c", ATTACKER, self.checks.check(True))) for _ in range(50)]
        self.checks.settle()
        # five reservations (half the budget) took a cap slot each, which go
        # back; the address is recorded by the first release only
        self.assertEqual(len(slow.releases), 5)
        self.assertEqual([r.known is not None for r, _ in slow.releases], [True] + [False] * 4)
        for _, answer in slow.releases:
            answer.callback(None)
        self.assertEqual(Counter(self.successResultOf(a) for a in answers), {200: 50})

    def test_store_unavailable_counts_in_the_process(self) -> None:
        """
        When the store does not answer, the process counts on its own
        (the same budget), then tries the store again.
        """
        down = UnavailableStore()
        limits = AuthLimits(down, self.clock.seconds, budget=10, fallback=MemoryStore())
        answers = [status(limits.client("c", ATTACKER, self.checks.check(n == 0))) for n in range(30)]
        self.checks.settle()
        self.assertEqual(
            Counter(self.successResultOf(a) for a in answers), {200: 1, 401: 10, 429: 19}
        )
        self.assertEqual(down.reservations, 1)
        self.clock.advance(STORE_RETRY_SECONDS)
        answer = status(limits.client("d", ATTACKER, self.checks.check(True)))
        self.checks.settle()
        self.assertEqual(self.successResultOf(answer), 200)
        self.assertEqual(down.reservations, 2)

    def test_one_reservation_at_a_time_tries_the_store_again(self) -> None:
        """
        After an outage, one reservation tries the store again (which may
        hang until its timeout) while the others count in the process.
        """
        hung = HungStore()
        limits = AuthLimits(hung, self.clock.seconds, budget=10, fallback=MemoryStore())
        first = status(limits.client("a", ATTACKER, self.checks.check(True)))
        hung.pending.pop().errback(StoreUnavailable("no answer within 5 s"))
        self.checks.settle()
        self.assertEqual(self.successResultOf(first), 200)
        self.clock.advance(STORE_RETRY_SECONDS)
        answers = [
            status(limits.client(name, ATTACKER, self.checks.check(True))) for name in "bcdef"
        ]
        self.assertEqual(len(hung.pending), 1)
        self.checks.settle()
        self.assertEqual([self.successResultOf(a) for a in answers[1:]], [200] * 4)
        hung.pending.pop().callback(Reservation(True, 1, self.clock.seconds() + 60))
        self.checks.settle()
        self.assertEqual(self.successResultOf(answers[0]), 200)
        # the store answered: everyone uses it again
        status(limits.client("g", ATTACKER, self.checks.check(True)))
        self.assertEqual(len(hung.pending), 1)

    def test_known_address_recorded_once_the_store_is_back(self) -> None:
        """
        An address that authenticated while the store was out is known
        in the store at its first success once the store is back.
        """
        flaky = UnavailableStore()
        limits = AuthLimits(flaky, self.clock.seconds, budget=10, fallback=MemoryStore())
        answer = status(limits.client("c", ATTACKER, self.checks.check(True)))
        self.checks.settle()
        self.assertEqual(self.successResultOf(answer), 200)
        flaky.down = False
        self.clock.advance(60)
        answer = status(limits.client("c", ATTACKER, self.checks.check(True)))
        self.checks.settle()
        self.assertEqual(self.successResultOf(answer), 200)
        self.assertIn(limits.keys(CLIENT, "c", ATTACKER).known, flaky.known)

    def test_store_unavailable_without_fallback(self) -> None:
        limits = AuthLimits(UnavailableStore(), self.clock.seconds, budget=10)
        answer = status(limits.client("c", ATTACKER, self.checks.check(True)))
        self.assertEqual(self.successResultOf(answer), 503)
        self.assertEqual(self.checks.count, 0)

    def test_registration_token_refused_master_token_tried(self) -> None:
        """
        At a client's configuration endpoint, a token is tried as the
        client's registration access token and as the master token, each
        within its own budget: with one refused, the other is still tried,
        and a failure is answered with the refusal (the refused one may
        have been right).
        """
        keys = self.limits.keys(REGISTRATION_ACCESS_TOKEN, "X", ATTACKER)
        for _ in range(10):
            self.store.reserve_attempt(keys, self.clock.seconds(), 60)
        tried: list[tuple[bool, bool]] = []

        def attempt(is_master: bool | None) -> Callable[[bool, bool], Awaitable[tuple[str, bool]]]:
            async def check(own: bool, master: bool) -> tuple[str, bool]:
                tried.append((own, master))
                if is_master is None:
                    raise OAuthError("invalid_token", "wrong", status=401)
                return "client", is_master

            return check

        answer = ensureDeferred(self.limits.registration("X", ATTACKER, attempt(True)))
        self.assertEqual(self.successResultOf(answer), ("client", True))
        refused = status(self.limits.registration("X", ATTACKER, attempt(None)))
        self.assertEqual(self.successResultOf(refused), 429)
        self.assertEqual(tried, [(False, True), (False, True)])


class SuccessOnlyTests(LimiterTestCase):
    """
    A client that only ever authenticates rightly is never refused, however
    many of its requests are in flight at once, over however many
    processes, across its windows' ends: the slots its successes keep, or
    use, never fill the budget against it (the benchmark found 429s about
    a minute after start, with --workers 2 on PostgreSQL).
    """

    def burst(self, limiters: list[AuthLimits], count: int = 60) -> list[Deferred[int]]:
        return [
            status(limiters[n % len(limiters)].client("c", ATTACKER, self.checks.check(True)))
            for n in range(count)
        ]

    def answered(self, answers: list[Deferred[int]]) -> Counter[int]:
        self.checks.settle()
        return Counter(self.successResultOf(answer) for answer in answers)

    def across_windows(self, processes: int) -> None:
        limiters = [self.limits] + [self.make_limits() for _ in range(processes - 1)]
        self.assertEqual(self.answered(self.burst(limiters)), {200: 60})
        # checks under way as the kept slots' window is ending, in every
        # process; more requests arrive, then those checks answer
        self.clock.advance(60 - LEASE_MARGIN - 0.5)
        under_way = self.burst(limiters)
        self.clock.advance(1)
        later = self.burst(limiters)
        self.assertEqual(self.answered(under_way + later), {200: 120})
        # a burst in the window's last second, and after it
        self.clock.advance(0.4)
        self.assertEqual(self.answered(self.burst(limiters)), {200: 60})
        self.clock.advance(0.2)
        self.assertEqual(self.answered(self.burst(limiters)), {200: 60})
        for _ in range(3):
            self.clock.advance(20)
            self.assertEqual(self.answered(self.burst(limiters)), {200: 60})

    def test_two_processes_across_windows(self) -> None:
        self.across_windows(2)

    def test_three_processes_across_windows(self) -> None:
        self.across_windows(3)

    def test_three_processes_at_once(self) -> None:
        """
        Three processes' bursts in flight together, none settled before
        the next begins.
        """
        limiters = [self.limits, self.make_limits(), self.make_limits()]
        answers = self.burst(limiters, 300)
        self.assertEqual(self.answered(answers), {200: 300})

    def test_processes_one_after_another(self) -> None:
        """
        Each of three processes serves a burst of the client's in turn,
        then each again: those that came first keep slots, and the last is
        not refused for them.
        """
        limiters = [self.limits, self.make_limits(), self.make_limits()]
        for _ in range(2):
            for limits in limiters:
                self.assertEqual(self.answered(self.burst([limits], 30)), {200: 30})
        self.assertEqual(self.answered(self.burst(limiters, 90)), {200: 90})

    def test_waits_for_a_slot_on_its_way_back(self) -> None:
        """
        A request woken as a success gives its slot back waits until the
        store has it, rather than be refused for the slot: in SQL or Redis,
        the release and the next reservation may reach the store in either
        order.
        """
        late = LateReleaseStore()
        limits = AuthLimits(late, self.clock.seconds, budget=10)
        # the budget's other slots taken by checks under way elsewhere
        keys = limits.keys(CLIENT, "c", ATTACKER)
        for _ in range(9):
            late.reserve_attempt(keys, self.clock.seconds(), 60)
        answers = [status(limits.client("c", ATTACKER, self.checks.check(True))) for _ in range(2)]
        self.checks.settle()
        self.assertEqual(len(late.pending), 1)
        self.assertNoResult(answers[1])
        late.apply()
        self.checks.settle()
        late.apply()
        self.assertEqual([self.successResultOf(a) for a in answers], [200, 200])

    def test_failures_still_bounded_with_successes_kept(self) -> None:
        """
        With a client's successes keeping slots in two processes, an
        attacker at its address gets no more than the budget of failed
        checks in a window.
        """
        limiters = [self.limits, self.make_limits()]
        self.assertEqual(self.answered(self.burst(limiters)), {200: 60})
        failures = [
            status(limiters[n % 2].client("c", ATTACKER, self.checks.check(False)))
            for n in range(100)
        ]
        answers = self.answered(failures)
        self.assertLessEqual(answers[401], 10)
        self.assertEqual(answers[401] + answers[429], 100)


class UnavailableStore(MemoryStore):
    """
    A store whose reservations fail as an unreachable store's do.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reservations = 0
        self.down = True
        #: the known sources released to it while it was up
        self.known: list[str] = []

    def reserve_attempt(self, keys: AttemptKeys, now: float, window: float) -> Deferred[Reservation]:
        self.reservations += 1
        if not self.down:
            return super().reserve_attempt(keys, now, window)
        return fail(StoreUnavailable("redis://store: no answer within 5 s"))

    def release_attempt(self, release: AttemptRelease, now: float) -> Deferred[None]:
        if not self.down and release.known is not None:
            self.known.append(release.known)
        return super().release_attempt(release, now)


class SlowReleaseStore(MemoryStore):
    """
    A store whose releases answer only when the test says.
    """

    def __init__(self) -> None:
        super().__init__()
        self.releases: list[tuple[AttemptRelease, Deferred[None]]] = []

    def release_attempt(self, release: AttemptRelease, now: float) -> Deferred[None]:
        super().release_attempt(release, now)
        answer: Deferred[None] = Deferred()
        self.releases.append((release, answer))
        return answer


class RoundTripStore(MemoryStore):
    """
    A store whose reservations and releases answer only when the test runs
    a round (L{round}): each round, every operation asked for by then, as
    one round trip of a real store would.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[Callable[..., Deferred[Any]], tuple[Any, ...], Deferred[Any]]] = []
        self.calls: Counter[str] = Counter()

    def _later(self, name: str, operation: Callable[..., Deferred[Any]], *args: Any) -> Deferred[Any]:
        self.calls[name] += 1
        answer: Deferred[Any] = Deferred()
        self.pending.append((operation, args, answer))
        return answer

    def reserve_attempt(self, *args: Any) -> Deferred[Reservation]:
        return self._later("reserve", super().reserve_attempt, *args)

    def release_attempt(self, *args: Any) -> Deferred[None]:
        return self._later("release", super().release_attempt, *args)

    def round(self) -> int:
        pending, self.pending = self.pending, []
        for operation, args, answer in pending:
            operation(*args).chainDeferred(answer)
        return len(pending)


class WindowEndTests(SynchronousTestCase):
    """
    In a window's last L{LEASE_MARGIN} seconds, where no slot is kept, a
    busy client's checks do not queue behind one reservation and one
    release each: a successful check hands its reserved slot on to the
    next request waiting (the benchmark's p99 of 1-2 s once a minute on
    SQLite and PostgreSQL, every request of the client in those seconds
    costing two store round trips, one after another).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = RoundTripStore()

    def burst(self, processes: list[AuthLimits], checks: list[Callable[[], Awaitable[str]]]) -> list[Deferred[int]]:
        return [
            status(processes[n % len(processes)].client("c", ATTACKER, check))
            for n, check in enumerate(checks)
        ]

    def rounds(self, answers: list[Deferred[int]]) -> tuple[int, Counter[int]]:
        """
        Store round trips until every answer is in, and the answers.
        """
        rounds = 0
        while not all(answer.called for answer in answers) and self.store.round():
            rounds += 1
        return rounds, Counter(self.successResultOf(answer) for answer in answers)

    def right(self) -> Callable[[], Awaitable[str]]:
        async def check() -> str:
            return "client"

        return check

    def in_margin(self, processes: int) -> tuple[list[AuthLimits], int, Counter[int]]:
        limits = [
            AuthLimits(self.store, self.clock.seconds, budget=10, known_for=3600)
            for _ in range(processes)
        ]
        self.rounds(self.burst(limits, [self.right() for _ in range(48)]))
        self.clock.advance(60 - LEASE_MARGIN + 0.1)
        self.store.calls.clear()
        rounds, answers = self.rounds(self.burst(limits, [self.right() for _ in range(48)]))
        return limits, rounds, answers

    def test_one_process(self) -> None:
        _, rounds, answers = self.in_margin(1)
        self.assertEqual(answers, {200: 48})
        # one reservation (after giving the kept slots back), handed on
        # from check to check: a few round trips, where there were 50
        self.assertLessEqual(rounds, 4)
        self.assertLessEqual(self.store.calls["reserve"], 2)

    def test_three_processes(self) -> None:
        _, rounds, answers = self.in_margin(3)
        self.assertEqual(answers, {200: 48})
        self.assertLessEqual(rounds, 4)

    def test_failure_of_a_handed_slot_counts(self) -> None:
        """
        A check that fails in a slot handed on keeps it counted in the
        store, as a failure in its own reservation would: the budget is
        spent by failures alike.
        """
        checks = HeldChecks()
        limits = AuthLimits(self.store, self.clock.seconds, budget=10, known_for=3600)
        self.clock.advance(60 - LEASE_MARGIN + 0.5)  # the first window's last seconds
        answers = self.burst(
            [limits], [checks.check(True), *(checks.check(False) for _ in range(20))]
        )
        while self.store.pending or checks.under_way:
            self.store.round()
            checks.settle()
        statuses = Counter(self.successResultOf(answer) for answer in answers)
        # the budget still bounds the failures: 10 slots, one of them the
        # success's, handed on to a failure
        self.assertEqual(statuses[200], 1)
        self.assertEqual(statuses[401], 10)
        self.assertEqual(statuses[429], 10)

    def one_by_one(self, processes: list[AuthLimits], count: int, check: Callable[[], Callable[[], Awaitable[str]]], source: str = ATTACKER) -> Counter[int]:
        """
        C{count} requests one after another, each answered before the next
        comes (none waits for another), taking turns among C{processes}.
        """
        answers: Counter[int] = Counter()
        for n in range(count):
            answer = status(processes[n % len(processes)].client("c", source, check()))
            while not answer.called and self.store.round():
                pass
            answers[self.successResultOf(answer)] += 1
        return answers

    def test_one_after_another(self) -> None:
        """
        Requests that come one at a time in a window's last seconds, none
        waiting for another (a steady client's), cost no store round trip:
        each process's kept slots are parked for those seconds, and the
        slot a check used waits for the next.  They once cost a
        reservation and a release each, one after another in the store,
        and every request of the client (and on SQLite every token's
        write) queued behind them: a p99 of hundreds of milliseconds once a
        minute while the purge ran (bench/README.md, the purge row).
        """
        limits = [
            AuthLimits(self.store, self.clock.seconds, budget=10, known_for=3600)
            for _ in range(2)
        ]
        self.assertEqual(self.one_by_one(limits, 4, self.right), {200: 4})
        self.clock.advance(60 - LEASE_MARGIN + 0.1)
        self.store.calls.clear()
        for _ in range(10):
            self.assertEqual(self.one_by_one(limits, 10, self.right), {200: 10})
            self.clock.advance(0.15)
        self.assertEqual(self.store.calls, {})
        # the next window: one reservation each, kept; the parked slots are
        # forgotten with their window, not given back
        self.clock.advance(0.5)
        self.assertEqual(self.one_by_one(limits, 10, self.right), {200: 10})
        self.assertEqual(self.store.calls, {"reserve": 2})

    def test_slot_parked_after_its_reservation(self) -> None:
        """
        A slot reserved in a window's last seconds is parked for the next
        check once its own has succeeded: one reservation for those
        seconds, where there was one for each request.
        """
        first, second = (
            AuthLimits(self.store, self.clock.seconds, budget=10, known_for=3600)
            for _ in range(2)
        )
        self.assertEqual(self.one_by_one([first], 1, self.right), {200: 1})
        self.clock.advance(60 - LEASE_MARGIN + 0.1)
        self.store.calls.clear()
        # a process with no slot kept: it reserves one, once
        self.assertEqual(self.one_by_one([second], 10, self.right), {200: 10})
        self.assertEqual(self.store.calls, {"reserve": 1, "release": 1})  # the known source

    def test_not_parked_with_a_cap_slot(self) -> None:
        """
        A slot that holds a slot of the cap (a source not known for the
        credential) is not parked, lest the cap's slot stay taken until its
        own window ends: it goes back to the store as before.
        """
        limits = AuthLimits(self.store, self.clock.seconds, budget=10, cap=30, known_for=3600)
        self.clock.advance(60 - LEASE_MARGIN + 0.1)
        checks = HeldChecks()
        answer = status(limits.client("c", OTHER, checks.check(False)))
        while not answer.called:
            self.store.round()
            checks.settle()
        self.assertEqual(self.successResultOf(answer), 401)
        self.store.calls.clear()
        answer = status(limits.client("c", ATTACKER, self.right()))
        while not answer.called and self.store.round():
            pass
        self.assertEqual(self.successResultOf(answer), 200)
        # reserved (with a cap slot: the address was not known), then the
        # cap slot given back with the source recorded as known
        self.assertEqual(self.store.calls, {"reserve": 1, "release": 1})
        share = limits._shares.get(("client_auth", "c", ATTACKER))
        self.assertFalse(share is not None and share.handed)

    def test_failures_in_parked_slots_count(self) -> None:
        """
        Failed checks in parked slots keep them counted: guesses in a
        window's last seconds are bounded by the budget as before, a kept
        slot parked counting as one of them.
        """
        limits = AuthLimits(self.store, self.clock.seconds, budget=10, known_for=3600)
        self.assertEqual(self.one_by_one([limits], 1, self.right), {200: 1})
        self.clock.advance(60 - LEASE_MARGIN + 0.1)
        checks = HeldChecks()
        answers = self.burst([limits], [checks.check(False) for _ in range(20)])
        while self.store.pending or checks.under_way:
            self.store.round()
            checks.settle()
        statuses = Counter(self.successResultOf(answer) for answer in answers)
        self.assertEqual(statuses, {401: 10, 429: 10})

    def test_not_outside_the_margin(self) -> None:
        """
        Earlier in the window a slot that is not kept (its process holds
        its share of the budget) goes back to the store as before.
        """
        limits, _, _ = self.in_margin(1)
        self.clock.advance(LEASE_MARGIN)  # the next window
        self.store.calls.clear()
        self.rounds(self.burst(limits, [self.right() for _ in range(4)]))
        self.assertEqual(self.store.calls["release"], 0)


class LateReleaseStore(MemoryStore):
    """
    A store that takes each release only when the test says (L{apply}),
    as if it reached the store after the reservations made meanwhile.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[AttemptRelease, float, Deferred[None]]] = []

    def release_attempt(self, release: AttemptRelease, now: float) -> Deferred[None]:
        answer: Deferred[None] = Deferred()
        self.pending.append((release, now, answer))
        return answer

    def apply(self) -> None:
        while self.pending:
            release, now, answer = self.pending.pop(0)
            super().release_attempt(release, now)
            answer.callback(None)


class HungStore(MemoryStore):
    """
    A store whose reservations answer only when the test says.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Deferred[Reservation]] = []

    def reserve_attempt(self, keys: AttemptKeys, now: float, window: float) -> Deferred[Reservation]:
        answer: Deferred[Reservation] = Deferred()
        self.pending.append(answer)
        return answer


class CapTests(LimiterTestCase):
    """
    The cap across sources: distributed guessing is bounded, and cannot
    lock a client out of the addresses it authenticates from.
    """

    cap = 30

    def use_the_cap(self) -> None:
        """
        Strangers' failed checks, one from each of 30 addresses: the cap.
        """
        for n in range(30):
            self.assertEqual(self.attempt(f"198.51.100.{n}"), 401)

    def attempt(self, source: str, right: bool = False, limits: AuthLimits | None = None) -> int:
        answer = status((limits or self.limits).client("c", source, self.checks.check(right)))
        self.checks.settle()
        return self.successResultOf(answer)

    def test_cap_refuses_strangers_unchecked(self) -> None:
        self.assertEqual(self.attempt("192.0.2.1", right=True), 200)
        self.use_the_cap()
        checked = self.checks.count
        self.assertEqual(self.attempt("198.51.100.200", right=True), 429)
        self.assertEqual(self.attempt("198.51.100.0"), 429)
        self.assertEqual(self.checks.count, checked)
        # the known address goes on, its failures counted in its own budget
        self.assertEqual(self.attempt("192.0.2.1", right=True), 200)
        self.assertEqual(self.attempt("192.0.2.1"), 401)
        self.assertEqual(self.attempt("192.0.2.1", right=True), 200)

    def test_cap_refusal_says_so(self) -> None:
        self.use_the_cap()
        answer = self.limits.client("c", "203.0.113.1", self.checks.check(True))
        error = self.failureResultOf(ensureDeferred(answer), OAuthError).value
        self.assertEqual(error.status, 429)
        self.assertIn("from addresses it has not authenticated from recently", error.description)
        self.assertEqual(error.headers["Retry-After"], "60")

    def test_known_source_shared_between_processes(self) -> None:
        other = self.make_limits()
        self.assertEqual(self.attempt("192.0.2.1", right=True, limits=other), 200)
        self.use_the_cap()
        self.assertEqual(self.attempt("192.0.2.1", right=True), 200)
        self.assertEqual(self.attempt("192.0.2.2", right=True, limits=other), 429)

    def test_known_source_expires(self) -> None:
        self.assertEqual(self.attempt("192.0.2.1", right=True), 200)
        self.clock.advance(3600)
        self.use_the_cap()
        self.assertEqual(self.attempt("192.0.2.1", right=True), 429)

    def test_known_source_kept_by_use(self) -> None:
        """
        A source in use stays known: its record is renewed once half of
        it has passed.
        """
        for _ in range(4):
            self.assertEqual(self.attempt("192.0.2.1", right=True), 200)
            self.clock.advance(1900)
        self.use_the_cap()
        self.assertEqual(self.attempt("192.0.2.1", right=True), 200)

    def test_cap_window_ends(self) -> None:
        self.use_the_cap()
        self.assertEqual(self.attempt("203.0.113.1", right=True), 429)
        self.clock.advance(60)
        self.assertEqual(self.attempt("203.0.113.1", right=True), 200)

    def test_success_gives_the_cap_slot_back(self) -> None:
        for n in range(100):
            self.assertEqual(self.attempt(f"198.51.100.{n}", right=True), 200)
        self.assertEqual(self.attempt("203.0.113.1"), 401)

    def test_cap_per_client(self) -> None:
        self.use_the_cap()
        answer = status(self.limits.client("d", "203.0.113.1", self.checks.check(True)))
        self.checks.settle()
        self.assertEqual(self.successResultOf(answer), 200)


class CapOverHTTPTests(LimitsTestCase):
    """
    The cap as a client meets it, with its default of 30 a minute.
    """

    def test_distributed_guessing(self) -> None:
        self.assertEqual(self.attempt(self.client, right=True, source=OTHER).code, 200)
        for n in range(30):
            self.assertEqual(self.attempt(self.client, source=f"192.0.2.{n}").code, 401)
        response = self.attempt(self.client, right=True, source="192.0.2.200")
        self.assertRefused(response)
        self.assertIn("not authenticated from recently", response.json()["error_description"])
        self.assertEqual(self.attempt(self.client, right=True, source=OTHER).code, 200)
        self.assertEqual(self.attempt(self.other_client, right=True, source="192.0.2.200").code, 200)

    def test_master_token_cap(self) -> None:
        """
        The master token has one cap, whatever the route; the addresses it
        was used from keep working.
        """
        self.assertEqual(self.register(scope="read")["client_id"] != "", True)
        for n in range(30):
            response = self.request(
                "POST",
                "/client-reg",
                headers={"Authorization": "Bearer wrong", "X-Forwarded-For": f"192.0.2.{n}"},
                json_body={},
            )
            self.assertEqual(response.code, 401)
        response = self.request(
            "POST",
            "/client-reg",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}", "X-Forwarded-For": OTHER},
            json_body={},
        )
        self.assertRefused(response)
        self.assertEqual(self.register(scope="read")["scope"], "read")


class ForwardedWarningTests(ServerTestCase):
    """
    A proxy nobody trusts sends X-Forwarded-For or Forwarded: one warning
    per process names the setting.
    """

    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def warnings(self) -> list[str]:
        return [
            formatEvent(event)
            for event in self.events
            if event.get("log_level") == LogLevel.warn and "trusted_proxies" in formatEvent(event)
        ]

    def post(self, path: str, header: str, value: str) -> int:
        response = self.request(
            "POST",
            path,
            headers={"Content-Type": "application/x-www-form-urlencoded", header: value},
            data=b"grant_type=client_credentials",
        )
        return response.code

    def test_warned_once(self) -> None:
        for path in ("/token", "/token/introspect", "/token", "/client-reg"):
            self.post(path, "X-Forwarded-For", "192.0.2.1")
            self.post(path, "Forwarded", "for=192.0.2.1")
        warnings = self.warnings()
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("A request from 127.0.0.1 carries X-Forwarded-For or Forwarded", warnings[0])
        self.assertIn("add its address to [limits] trusted_proxies", warnings[0])

    def test_forwarded_warns(self) -> None:
        self.post("/client-reg", "Forwarded", "for=192.0.2.1;proto=https")
        self.assertEqual(len(self.warnings()), 1)

    def test_no_header_no_warning(self) -> None:
        self.post("/token", "X-Other", "1")
        self.assertEqual(self.warnings(), [])


class TrustedProxyNoWarningTests(LimitsTestCase):
    def test_trusted_proxy_not_warned_about(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.assertEqual(self.attempt(self.client, right=True).code, 200)
        self.assertEqual([e for e in events if "trusted_proxies" in formatEvent(e)], [])

    def test_other_untrusted_peer_warned_about(self) -> None:
        """
        With trusted proxies set, another peer's header is warned about.
        """
        sources = RequestSources(trusted_networks(["10.0.0.0/8"]))
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.assertEqual(sources(_request("10.0.0.1", ["192.0.2.1"])), "192.0.2.1")
        self.assertEqual([e for e in events if "trusted_proxies" in formatEvent(e)], [])
        self.assertEqual(sources(_request("192.0.2.9", ["192.0.2.1"])), "192.0.2.9")
        self.assertEqual(sources(_request("192.0.2.9", ["192.0.2.1"])), "192.0.2.9")
        warned = [e for e in events if "trusted_proxies" in formatEvent(e)]
        self.assertEqual(len(warned), 1)
        self.assertIn("192.0.2.9", formatEvent(warned[0]))
