"""
Per-client token rate limits: a client's C{token_rate_limit}, set by the
operator only (the master token, the command), validated, stored, shown;
over the server's default ([limits] tokens_per_client_per_second and
tokens_per_client_burst); counted in a bucket in the store that every
process shares, a few tokens at a time; 429 with Retry-After; counted in
the metrics by client (bounded) and told to the audit trail.  In memory,
on a Clock; the store primitive and the limit over two processes on every
store are in tests/test_store_contract.py, real processes in
tests/test_rate_limits_process.py.
"""

from __future__ import annotations

import math
from typing import Any

from attrs import evolve
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ccserver.config import Config, LimitsConfig
from ccserver.errors import ConfigError, OAuthError, StoreUnavailable
from ccserver.interfaces import IStore
from ccserver.metrics import MAX_CLIENT_LABELS, Metrics, NoMetrics
from ccserver.model import Client, TokenGrant, TokenRateLimit
from ccserver.oauth.limits import SHARE_SECONDS, IssuanceLimit
from ccserver.oauth.registration import register_client
from ccserver.stores.memory import MemoryStore
from ccserver.web import ROUTES, route_template
from tests.helpers import (
    MASTER_TOKEN,
    AuditEvents,
    Response,
    ServerTestCase,
    basic,
    config_of,
)


class CountingStore(MemoryStore):
    """
    A memory store that counts the tokens asked of it, and can hold their
    answers (a slow store), or fail (an unreachable one).
    """

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int] = []
        self.held: list[Deferred[None]] | None = None
        self.down = False

    def take_tokens(
        self, key: str, tokens_per_second: float, burst: int, wanted: int, now: float
    ) -> Deferred[TokenGrant]:
        self.asked.append(wanted)
        if self.down:
            return fail(StoreUnavailable("connection refused"))
        if self.held is None:
            return super().take_tokens(key, tokens_per_second, burst, wanted, now)
        release: Deferred[None] = Deferred()
        self.held.append(release)
        answer = super().take_tokens
        return release.addCallback(lambda _: answer(key, tokens_per_second, burst, wanted, now))


class RateLimitTestCase(ServerTestCase):
    signing_alg = "ES256"
    limits = LimitsConfig()
    store: CountingStore

    def make_store(self) -> IStore:
        return CountingStore()

    def make_metrics(self) -> NoMetrics:
        self.metrics = Metrics(CollectorRegistry(), route_template, ROUTES)
        return self.metrics

    def make_config(self, **tokens: Any) -> Config:
        return evolve(super().make_config(**tokens), limits=self.limits)

    def issue(self, client: dict[str, Any]) -> Response:
        return self.token(
            {"grant_type": "client_credentials"},
            basic(client["client_id"], client["client_secret"]),
        )

    def codes(self, client: dict[str, Any], times: int) -> list[int]:
        return [self.issue(client).code for _ in range(times)]

    def limited_total(self, client_id: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "ccserver_token_rate_limited_total", {"client_id": client_id}
        )
        return value or 0.0


class RegistrationTests(RateLimitTestCase):
    def test_set_by_the_master_token(self) -> None:
        client = self.register(scope="read", token_rate_limit={"tokens_per_second": 5, "burst": 20})
        self.assertEqual(client["token_rate_limit"], {"tokens_per_second": 5, "burst": 20})
        stored = self.successResultOf(self.store.get_client(client["client_id"]))
        assert stored is not None
        self.assertEqual(stored.token_rate_limit, TokenRateLimit(5.0, 20))
        self.assertNotIn("token_rate_limit", stored.metadata)
        read = self.request(
            "GET",
            f"/client-reg/{client['client_id']}",
            headers={"Authorization": f"Bearer {client['registration_access_token']}"},
        )
        self.assertEqual(read.json()["token_rate_limit"], {"tokens_per_second": 5, "burst": 20})

    def test_burst_defaults_to_a_second(self) -> None:
        for rate, burst in ((5, 5), (0.5, 1), (2.5, 3)):
            client = self.register(token_rate_limit={"tokens_per_second": rate})
            self.assertEqual(client["token_rate_limit"], {"tokens_per_second": rate, "burst": burst})

    def test_none(self) -> None:
        for body in ({}, {"token_rate_limit": None}):
            client = self.register(scope="read", **body)
            self.assertNotIn("token_rate_limit", client)

    def test_bad_values(self) -> None:
        for value in (
            5,
            "5/s",
            [5],
            {},
            {"tokens_per_second": 0},
            {"tokens_per_second": -1},
            {"tokens_per_second": "5"},
            {"tokens_per_second": True},
            {"tokens_per_second": 1e300},
            {"tokens_per_second": 5, "burst": 0},
            {"tokens_per_second": 5, "burst": 2.5},
            {"tokens_per_second": 5, "burst": 10**7},
            {"tokens_per_second": 5, "rate": 5},
        ):
            response = self.request(
                "POST",
                "/client-reg",
                headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
                json_body={"scope": "read", "token_rate_limit": value},
            )
            self.assertEqual(response.code, 400, value)
            self.assertEqual(response.json()["error"], "invalid_client_metadata")
            self.assertTrue(
                response.json()["error_description"].startswith("token_rate_limit: "), value
            )

    def put(self, client: dict[str, Any], token: str, **changes: Any) -> Response:
        body = {
            k: v
            for k, v in client.items()
            if k not in ("client_secret", "registration_access_token", "registration_client_uri")
        }
        body.update(changes)
        body = {k: v for k, v in body.items() if v is not None}
        return self.request(
            "PUT",
            f"/client-reg/{client['client_id']}",
            headers={"Authorization": f"Bearer {token}"},
            json_body=body,
        )

    def test_changed_by_the_operator_only(self) -> None:
        """
        The master token changes or removes it; the client's own
        registration access token cannot (a change, or leaving it out, is
        refused naming it), but may send it back as it is.
        """
        client = self.register(scope="read", token_rate_limit={"tokens_per_second": 5, "burst": 20})
        token = client["registration_access_token"]
        for changes in (
            {"token_rate_limit": {"tokens_per_second": 500, "burst": 20}},
            {"token_rate_limit": None},
        ):
            refused = self.put(client, token, **changes)
            self.assertEqual(refused.code, 400, refused.body)
            self.assertEqual(refused.json()["error"], "invalid_client_metadata")
            self.assertTrue(refused.json()["error_description"].startswith("token_rate_limit: only"))
        kept = self.put(client, token, client_name="renamed")
        self.assertEqual(kept.code, 200, kept.body)
        self.assertEqual(kept.json()["token_rate_limit"], {"tokens_per_second": 5, "burst": 20})
        changed = self.put(client, MASTER_TOKEN, token_rate_limit={"tokens_per_second": 50})
        self.assertEqual(changed.json()["token_rate_limit"], {"tokens_per_second": 50, "burst": 50})
        removed = self.put(client, MASTER_TOKEN, token_rate_limit=None)
        self.assertEqual(removed.code, 200)
        self.assertNotIn("token_rate_limit", removed.json())

    def test_client_cannot_add_one(self) -> None:
        client = self.register(scope="read")
        refused = self.put(
            client, client["registration_access_token"], token_rate_limit={"tokens_per_second": 9}
        )
        self.assertEqual(refused.code, 400)

    def test_not_with_an_initial_access_token(self) -> None:
        """
        A registration with an initial access token may not give a limit
        (only the operator may), and uses none of the token's uses.
        """
        from ccserver.oauth.registration import new_initial_access_token

        token, record = new_initial_access_token(
            int(self.clock.seconds()), expires_in=3600, max_uses=1
        )
        self.successResultOf(self.store.add_initial_access_token(record))
        for limit in ({"tokens_per_second": 10**5}, None):
            response = self.request(
                "POST",
                "/client-reg",
                headers={"Authorization": f"Bearer {token}"},
                json_body={"scope": "read", "token_rate_limit": limit},
            )
            self.assertEqual(response.code, 400, response.body)
            self.assertEqual(response.json()["error"], "invalid_client_metadata")
            self.assertTrue(
                response.json()["error_description"].startswith(
                    "token_rate_limit: only the master token"
                )
            )
        response = self.request(
            "POST",
            "/client-reg",
            headers={"Authorization": f"Bearer {token}"},
            json_body={"scope": "read"},
        )
        self.assertEqual(response.code, 201, response.body)
        self.assertNotIn("token_rate_limit", response.json())

    def test_audited(self) -> None:
        """
        The registration's audit event shows the limit with the privileged
        fields; an update that changes only the limit names it.
        """
        events = AuditEvents(self)
        client = self.register(scope="read", token_rate_limit={"tokens_per_second": 5})
        registered = events.one("client.registered")
        self.assertEqual(
            registered["privileged"]["token_rate_limit"], {"tokens_per_second": 5, "burst": 5}
        )
        self.put(client, MASTER_TOKEN, token_rate_limit={"tokens_per_second": 6})
        self.assertEqual(events.one("client.updated")["changed_fields"], ["token_rate_limit"])

    def test_not_from_anyone_else(self) -> None:
        """
        A registration that is not the operator's (an initial access
        token's) may not set it.
        """
        failure = self.failureResultOf(
            ensureDeferred(
                register_client(
                    self.store,
                    {"token_rate_limit": {"tokens_per_second": 5}},
                    self.clock.seconds,
                    operator=False,
                )
            ),
            OAuthError,
        )
        self.assertEqual(failure.value.error, "invalid_client_metadata")
        self.assertTrue(failure.value.description.startswith("token_rate_limit: only the master"))


class EnforcementTests(RateLimitTestCase):
    limits = LimitsConfig(tokens_per_client_per_second=100)

    def test_own_limit(self) -> None:
        """
        The burst at once, then 429 with Retry-After until the bucket has
        a token again; other clients are not affected.
        """
        client = self.register(scope="read", token_rate_limit={"tokens_per_second": 0.5, "burst": 3})
        other = self.register(scope="read")
        self.assertEqual(self.codes(client, 3), [200] * 3)
        refused = self.issue(client)
        self.assertEqual(refused.code, 429, refused.body)
        self.assertEqual(refused.headers["retry-after"], "2")
        self.assertEqual(refused.json()["error"], "invalid_request")
        self.assertIn("0.5 tokens a second", refused.json()["error_description"])
        self.assertEqual(refused.headers["cache-control"], "no-store")
        self.assertEqual(self.codes(other, 20), [200] * 20)
        self.clock.advance(1.9)
        self.assertEqual(self.issue(client).code, 429)
        self.clock.advance(0.1)
        self.assertEqual(self.codes(client, 2), [200, 429])

    def test_default_for_the_others(self) -> None:
        """
        A client without a limit of its own has the server's (100 a second:
        a burst of 100); one with its own has its own, higher or lower.
        """
        plain = self.register(scope="read")
        higher = self.register(scope="read", token_rate_limit={"tokens_per_second": 1000})
        self.assertEqual(self.codes(plain, 101).count(200), 100)
        self.assertEqual(self.codes(higher, 300).count(200), 300)

    def test_unlimited_costs_no_round_trip(self) -> None:
        limit = IssuanceLimit(self.store, None, self.clock.seconds)
        client = Client("c", 0, {}, "", "")
        self.assertIsNone(limit.take(client))
        self.assertEqual(self.store.asked, [])

    def test_few_round_trips(self) -> None:
        """
        A process takes a tenth of a second's worth of tokens at a time:
        1,000 tokens at 1,000 a second cost 10 round trips; a client under
        a limit of 5 a second, one per token.
        """
        fast = self.register(scope="read", token_rate_limit={"tokens_per_second": 1000})
        del self.store.asked[:]
        for _ in range(10):
            self.assertEqual(self.codes(fast, 100), [200] * 100)
            self.clock.advance(SHARE_SECONDS)
        self.assertEqual(self.store.asked, [100] * 10)
        slow = self.register(scope="read", token_rate_limit={"tokens_per_second": 5})
        del self.store.asked[:]
        self.assertEqual(self.codes(slow, 5), [200] * 5)
        self.assertEqual(self.store.asked, [1] * 5)

    def test_refused_client_costs_no_round_trip(self) -> None:
        client = self.register(scope="read", token_rate_limit={"tokens_per_second": 1, "burst": 1})
        self.assertEqual(self.codes(client, 2), [200, 429])
        del self.store.asked[:]
        self.assertEqual(self.codes(client, 50), [429] * 50)
        self.assertEqual(self.store.asked, [])
        self.clock.advance(1)
        self.assertEqual(self.codes(client, 1), [200])

    def test_unspent_tokens_dropped(self) -> None:
        """
        Tokens this process took and did not hand out within
        L{SHARE_SECONDS} are dropped: the next request asks the store.
        """
        client = self.register(scope="read", token_rate_limit={"tokens_per_second": 100})
        del self.store.asked[:]
        self.assertEqual(self.codes(client, 3), [200] * 3)
        self.assertEqual(self.store.asked, [10])
        self.clock.advance(SHARE_SECONDS)
        self.assertEqual(self.codes(client, 1), [200])
        self.assertEqual(self.store.asked, [10, 10])

    def test_burst_in_flight(self) -> None:
        """
        50 requests of one client in flight while the store is slow: one
        round trip for the first, one for the 49 that came while it was
        under way (as many as the burst, 20, asked for them); the burst let
        through, the rest refused.
        """
        client = self.register(scope="read", token_rate_limit={"tokens_per_second": 1, "burst": 20})
        del self.store.asked[:]
        self.store.held = []
        from urllib.parse import urlencode

        pending = [
            self.treq.request(
                "POST",
                "https://as.example.com/token",
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Authorization": basic(client["client_id"], client["client_secret"]),
                },
                data=urlencode({"grant_type": "client_credentials"}).encode(),
            )
            for _ in range(50)
        ]
        self.assertEqual(len(self.store.held), 1)
        for request in pending:
            self.assertNoResult(request)
        while self.store.held:
            self.store.held.pop().callback(None)
            self.treq.flush()
        self.treq.flush()
        codes = [self.successResultOf(d).code for d in pending]
        self.assertEqual(self.store.asked, [1, 20])
        self.assertEqual((codes.count(200), codes.count(429)), (20, 30))

    def test_store_outage(self) -> None:
        """
        While the store cannot be reached, the process counts on its own
        (a bucket of its own), and says so once.
        """
        client = self.register(scope="read", token_rate_limit={"tokens_per_second": 1, "burst": 5})
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.store.down = True
        self.assertEqual(self.codes(client, 6), [200] * 5 + [429])
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("count in this process alone", warnings[0]["log_format"])

    def test_counted_by_client(self) -> None:
        client = self.register(scope="read", token_rate_limit={"tokens_per_second": 1, "burst": 1})
        self.codes(client, 4)
        self.assertEqual(self.limited_total(client["client_id"]), 3)
        self.assertEqual(
            self.metrics.registry.get_sample_value(
                "ccserver_rate_limited_total", {"what": "token_issuance"}
            ),
            3,
        )

    def test_audited_once_per_block(self) -> None:
        """
        The audit trail is told when a client's requests begin to be
        refused, not at each refusal; again after one got through.
        """
        audit_events = AuditEvents(self)
        client = self.register(scope="read", token_rate_limit={"tokens_per_second": 0.5, "burst": 1})
        self.codes(client, 5)
        event = audit_events.one("limits.rate_limited")
        self.assertEqual(
            event,
            {
                "type": "limits.rate_limited",
                "actor": {"type": "client", "client_id": client["client_id"]},
                "client_id": client["client_id"],
                "tokens_per_second": 0.5,
                "burst": 1,
                "until": math.ceil(self.clock.seconds() + 2),
            },
        )
        self.clock.advance(2)
        self.codes(client, 3)
        self.assertEqual(len(audit_events.of("limits.rate_limited")), 2)


class MetricLabelTests(SynchronousTestCase):
    def test_bounded(self) -> None:
        """
        The first L{MAX_CLIENT_LABELS} clients refused are named; the
        others are counted together.
        """
        metrics = Metrics(CollectorRegistry(), route_template, ROUTES)
        for n in range(MAX_CLIENT_LABELS + 50):
            metrics.client_rate_limited(f"client-{n}")
            metrics.client_rate_limited(f"client-{n}")
        samples = [
            sample
            for family in metrics.registry.collect()
            if family.name == "ccserver_token_rate_limited"
            for sample in family.samples
            if sample.name.endswith("_total")
        ]
        self.assertEqual(len(samples), MAX_CLIENT_LABELS + 1)
        by_label = {s.labels["client_id"]: s.value for s in samples}
        self.assertEqual(by_label["client-0"], 2)
        self.assertEqual(by_label["other"], 100)


class LimitTableTests(SynchronousTestCase):
    def test_bounded(self) -> None:
        """
        The clients a process holds tokens for are a bounded table: those
        it holds none for are forgotten first (what it held is dropped).
        """
        from ccserver.oauth import limits

        clock = Clock()
        clock.advance(1_800_000_000)
        self.patch(limits, "MAX_ENTRIES", 10)
        limit = IssuanceLimit(MemoryStore(), TokenRateLimit.of(1000), clock.seconds)
        for n in range(25):
            waiting = limit.take(Client(f"c{n}", 0, {}, "", ""))
            assert waiting is not None
            self.successResultOf(waiting)
            clock.advance(SHARE_SECONDS)
        self.assertLessEqual(len(limit._allowances), 10)


class DefaultConfigTests(SynchronousTestCase):
    def load(self, text: str) -> Config:
        return config_of(self, text)

    def test_burst(self) -> None:
        config = self.load("[limits]\ntokens_per_client_per_second = 10\ntokens_per_client_burst = 50\n")
        self.assertEqual(config.limits.tokens_per_client_burst, 50)
        self.assertIsNone(Config().limits.tokens_per_client_burst)

    def test_mistakes(self) -> None:
        for text, key in [
            ("tokens_per_client_burst = 0\ntokens_per_client_per_second = 1", "tokens_per_client_burst"),
            ("tokens_per_client_burst = 5", "tokens_per_client_burst"),
            ("tokens_per_client_per_second = 2e6", "tokens_per_client_per_second"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.load(f"[limits]\n{text}\n")
            self.assertTrue(str(caught.exception).startswith(f"[limits] {key}: "), caught.exception)


class KeyIdArgumentTests(SynchronousTestCase):
    def test_kid_starting_with_a_dash(self) -> None:
        """
        C{ccserver keys retire KID} takes a key id that begins with C{-}
        (one thumbprint in sixty-four does) as the key id, not an option:
        argparse refused it ("unrecognized arguments"), and the key could
        not be retired without a C{--}.
        """
        from ccserver.admin import _parser, protect_identifier

        for argv in (
            ["keys", "retire", "-YZSZqprUUIzdJ96NPFikt5o7VOJWWIFvdKcnTD77nE"],
            ["--store", "sqlite:///x.db", "keys", "retire", "-YZ"],
            ["keys", "retire", "--", "-YZ"],
        ):
            arguments = _parser().parse_args(protect_identifier(argv))
            self.assertTrue(arguments.kid.startswith("-YZ"), arguments)
        self.assertIsNone(_parser().parse_args(protect_identifier(["keys", "retire"])).kid)
        self.assertEqual(protect_identifier(["keys", "list"]), ["keys", "list"])
        self.assertEqual(protect_identifier(["keys", "retire", "--help"]), ["keys", "retire", "--help"])


class ClientIdArgumentTests(SynchronousTestCase):
    def test_client_id_starting_with_a_dash(self) -> None:
        from ccserver.admin import _parser, protect_identifier

        for argv in (
            ["clients", "set-rate-limit", "-abc", "--token-rate-limit", "5:10"],
            ["clients", "set-rate-limit", "--token-rate-limit", "5:10", "-abc"],
            ["clients", "set-rate-limit", "--token-rate-limit=5:10", "-abc"],
        ):
            arguments = _parser().parse_args(protect_identifier(argv))
            self.assertEqual((arguments.client_id, arguments.token_rate_limit), ("-abc", "5:10"))
        arguments = _parser().parse_args(
            protect_identifier(["clients", "set-rate-limit", "-abc", "--off"])
        )
        self.assertEqual((arguments.client_id, arguments.off), ("-abc", True))
