"""
GET /health/live and GET /health/ready (ccserver.health), in memory: the
routes with StubTreq, the readiness cache and timeout with a Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ccserver.errors import StoreUnavailable
from ccserver.health import Readiness
from ccserver.interfaces import IStore
from ccserver.keys import KeyEncryptor, Keyring
from ccserver.model import Client
from ccserver.stores.memory import MemoryStore
from tests.helpers import ISSUER, ServerTestCase


class ProbedStore(MemoryStore):
    """
    A memory store whose reads can be made to fail or hang, and counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.answer: str = "ok"
        self.error = "connection refused"

    def get_client(self, client_id: str) -> Deferred[Client | None]:
        self.reads += 1
        if self.answer == "fail":
            return fail(StoreUnavailable(self.error))
        if self.answer == "hang":
            return Deferred()
        return super().get_client(client_id)


class LiveTests(ServerTestCase):
    def test_live(self) -> None:
        response = self.request("GET", "/health/live")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json(), {"status": "ok"})
        self.assertEqual(response.headers["cache-control"], "no-store")

    def test_head(self) -> None:
        self.assertEqual(self.request("HEAD", "/health/live").code, 200)

    def test_other_methods(self) -> None:
        for path in ("/health/live", "/health/ready"):
            response = self.request("POST", path)
            self.assertEqual(response.code, 405)
            self.assertEqual(response.headers["allow"], "GET, HEAD")

    def test_no_metrics_on_public_listener(self) -> None:
        """
        /metrics is served only by the metrics listener: here it is 404.
        """
        response = self.request("GET", "/metrics")
        self.assertEqual(response.code, 404)
        self.assertEqual(response.json()["error"], "not_found")


class ReadyTests(ServerTestCase):
    store: ProbedStore

    def make_store(self) -> IStore:
        return ProbedStore()

    def test_ready(self) -> None:
        response = self.request("GET", "/health/ready")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json(), {"status": "ok"})
        self.assertEqual(response.headers["cache-control"], "no-store")

    def logged(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def test_store_fails(self) -> None:
        """
        The public answer says "store unavailable" and nothing of where the
        store is; the log says why, once.
        """
        events = self.logged()
        self.store.answer = "fail"
        self.store.error = "postgresql://ccserver@db.internal:5433/tokens: connection refused"
        response = self.request("GET", "/health/ready")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.json(), {"status": "unavailable", "reason": "store unavailable"})
        self.assertEqual(response.headers["cache-control"], "no-store")
        for secret in ("db.internal", "5433", "tokens", "refused"):
            self.assertNotIn(secret, response.body.decode())
        self.clock.advance(1)
        self.assertEqual(self.request("GET", "/health/ready").code, 503)
        logged = [formatEvent(e) for e in events if str(e.get("log_namespace")).startswith("ccserver.health")]
        self.assertEqual(len(logged), 1, logged)
        self.assertIn("db.internal:5433/tokens: connection refused", logged[0])
        self.store.answer = "ok"
        self.clock.advance(1)
        self.assertEqual(self.request("GET", "/health/ready").code, 200)
        logged = [formatEvent(e) for e in events if str(e.get("log_namespace")).startswith("ccserver.health")]
        self.assertEqual(len(logged), 2, logged)
        self.assertIn("Ready again", logged[1])

    def test_probe_storm_costs_one_read_a_second(self) -> None:
        for _ in range(50):
            self.assertEqual(self.request("GET", "/health/ready").code, 200)
        self.assertEqual(self.store.reads, 1)
        self.clock.advance(0.5)
        self.request("GET", "/health/ready")
        self.assertEqual(self.store.reads, 1)
        self.clock.advance(0.5)
        self.request("GET", "/health/ready")
        self.assertEqual(self.store.reads, 2)

    def test_recovers(self) -> None:
        self.store.answer = "fail"
        self.assertEqual(self.request("GET", "/health/ready").code, 503)
        self.store.answer = "ok"
        # The failure is kept for a second too.
        self.assertEqual(self.request("GET", "/health/ready").code, 503)
        self.clock.advance(1)
        self.assertEqual(self.request("GET", "/health/ready").code, 200)

    def test_store_hangs(self) -> None:
        """
        A store that does not answer gets [store] timeout seconds; the probes
        that come meanwhile wait for the same read, then all get 503.
        """
        self.store.answer = "hang"
        probes = [self.treq.get(ISSUER + "/health/ready") for _ in range(3)]
        self.clock.advance(self.config.store.timeout - 1)
        for probe in probes:
            self.assertNoResult(probe)
        self.assertEqual(self.store.reads, 1)
        self.clock.advance(1)
        self.treq.flush()
        for probe in probes:
            response = self.successResultOf(probe)
            self.assertEqual(response.code, 503)
            body = self.successResultOf(response.json())
            self.assertEqual(body, {"status": "unavailable", "reason": "store unavailable"})


class ReadinessKeyTests(SynchronousTestCase):
    def test_no_signing_key(self) -> None:
        clock = Clock()
        store = MemoryStore()
        keyring = Keyring(store, KeyEncryptor.ephemeral(), "ES256", 86400, clock.seconds)
        readiness = Readiness(store, keyring, clock, timeout=5)
        not_ready = self.successResultOf(readiness.check())
        assert not_ready is not None
        self.assertEqual(not_ready.reason, "no signing key")
        self.assertIn("no active ES256 signing key", not_ready.detail)

    def test_store_raises(self) -> None:
        clock = Clock()

        class Broken(MemoryStore):
            def get_client(self, client_id: str) -> Any:
                raise RuntimeError("no connection")

        store = Broken()
        keyring = Keyring(store, KeyEncryptor.ephemeral(), "ES256", 86400, clock.seconds)
        not_ready = self.successResultOf(Readiness(store, keyring, clock, 5).check())
        assert not_ready is not None
        self.assertEqual(not_ready.reason, "store unavailable")
        self.assertIn("no connection", not_ready.detail)

    def test_ready_answer_is_none(self) -> None:
        clock = Clock()
        store = MemoryStore()
        keyring = Keyring(store, KeyEncryptor.ephemeral(), "ES256", 86400, clock.seconds)
        self.successResultOf(Deferred.fromCoroutine(keyring.ensure_signing_key()))
        self.assertIsNone(self.successResultOf(Readiness(store, keyring, clock, 5).check()))
